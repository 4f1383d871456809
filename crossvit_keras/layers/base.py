"""What every CrossViT layer shares: registration for `.keras` saving; LayerNorm, GELU, Dense and
drop path as the paper and timm use them; the common parts of the attention layers and blocks."""

import keras

register = keras.saving.register_keras_serializable(package="crossvit_keras")

LAYER_NORM_EPSILON = 1e-6  # timm's and the official code's partial(nn.LayerNorm, eps=1e-6)


def layer_norm(name, dtype):
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)


def gelu(x):
    """Exact (erf) GELU, written as torch.nn.GELU() computes it: x * 0.5 * (1 + erf(x / sqrt(2))).
    In this form, after a 2-D Dense, TensorFlow's oneDNN graph rewrite fuses the matmul, bias and
    GELU into one kernel."""
    return 0.5 * x * (1.0 + keras.ops.erf(x * (0.5**0.5)))


def dense(units, name, dtype, use_bias=True):
    """A Dense layer initialised as timm initialises nn.Linear: truncated normal (std 0.02), zero bias."""
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name=name,
        dtype=dtype,
    )


def drop_path(rate, name, dtype):
    """Stochastic depth: drops a sample's whole residual branch, scaling the kept ones by
    1 / (1 - rate); a Dropout whose noise is shared by all tokens and channels of a sample."""
    return keras.layers.Dropout(rate, noise_shape=(None, 1, 1), name=name, dtype=dtype)


ATTENTION_ARGUMENTS = ("dim", "num_heads", "qkv_bias", "attn_drop_rate", "proj_drop_rate")


def attention_arguments(layer):
    """The constructor arguments an attention layer and its block share, as stored on `layer`."""
    return {name: getattr(layer, name) for name in ATTENTION_ARGUMENTS}


class Attention(keras.layers.Layer):
    """What self- and cross-attention share (timm's `Attention` / `CrossAttention`): the heads,
    the 1/sqrt(head_dim) scale, the output projection and both dropouts. Subclasses add the query,
    key and value projections and `call`."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop_rate=0.0, proj_drop_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide the width dim={dim}.")
        self.dim = dim
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attn_drop_rate = attn_drop_rate
        self.proj_drop_rate = proj_drop_rate
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = keras.layers.Dropout(attn_drop_rate, name="attn_drop", dtype=self.dtype_policy)
        self.proj = dense(dim, "proj", self.dtype_policy)
        self.proj_drop = keras.layers.Dropout(proj_drop_rate, name="proj_drop", dtype=self.dtype_policy)

    def get_config(self):
        return {**super().get_config(), **attention_arguments(self)}


class ResidualAttentionBlock(keras.layers.Layer):
    """What the encoder block and the cross-attention block share: x + DropPath(attention(LayerNorm(x))),
    with the attention layer `attention_class` named "attn" as in timm."""

    attention_class = None

    def __init__(
        self, dim, num_heads, qkv_bias=True, attn_drop_rate=0.0, proj_drop_rate=0.0, drop_path_rate=0.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.dim = dim
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attn_drop_rate = attn_drop_rate
        self.proj_drop_rate = proj_drop_rate
        self.drop_path_rate = drop_path_rate
        dtype = self.dtype_policy
        self.norm1 = layer_norm("norm1", dtype)
        self.attn = self.attention_class(
            dim, num_heads, qkv_bias, attn_drop_rate, proj_drop_rate, name="attn", dtype=dtype
        )
        self.drop_path = drop_path(drop_path_rate, "drop_path", dtype)

    def get_config(self):
        return {**super().get_config(), **attention_arguments(self), "drop_path_rate": self.drop_path_rate}
