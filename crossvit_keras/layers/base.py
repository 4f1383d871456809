"""What every CrossViT layer shares: registration for `.keras` saving; LayerNorm, GELU, Dense and
drop path as the paper and timm use them; the common parts of the attention layers and blocks."""

import math
import numbers

import keras
from keras import ops

register = keras.saving.register_keras_serializable(package="crossvit_keras")


def check_positive_integer(layer, name, value):
    """A ValueError naming `name` unless `value` is an integer >= 1 (sizes, widths, heads, depths)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{type(layer).__name__}: {name} must be a positive integer, got {value!r}.")


def check_branches(layer, name, values):
    """A ValueError naming `name` unless `values` is two positive integers, one per branch."""
    values = tuple(values)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ValueError(
            f"{type(layer).__name__}: {name} must be two positive integers (one per branch), got {values!r}."
        )


def check_rate(layer, name, value):
    """A ValueError naming `name` unless `value` is a dropout or drop-path rate, a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{type(layer).__name__}: {name} must be a number in [0, 1), got {value!r}.")


LAYER_NORM_EPSILON = 1e-6  # timm's and the official code's partial(nn.LayerNorm, eps=1e-6)


def layer_norm(name, dtype):
    return LayerNorm(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)


def backward_copy(output):
    """The values of a custom-gradient function's `output`, for its backward pass to read: the same
    buffer (ops.stop_gradient), not the returned tensor itself. Under PyTorch a backward holding its
    function's own output makes a reference cycle through the autograd graph (output -> graph node
    -> backward -> output) that is never freed: every training step's activations leaked. (Keras
    calls the backward as `grad(upstream)` on TensorFlow and JAX, `grad(*inputs, upstream=...)` on
    PyTorch: the functions below take both.)"""
    return ops.stop_gradient(output)


def _normalize(x, epsilon):
    """(x - mean) / sqrt(var + epsilon) over the last axis, with its gradient written out:
    dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + epsilon), a few fused-size ops where
    TensorFlow's autodiff of the composed forward takes about three times as many."""

    @ops.custom_gradient
    def normalize(x):
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        inv = ops.rsqrt(ops.mean(ops.square(centered), axis=-1, keepdims=True) + epsilon)
        normed = centered * inv
        x_hat = backward_copy(normed)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream  # PyTorch: grad(x, upstream=...)
            mean_upstream = ops.mean(upstream, axis=-1, keepdims=True)
            mean_projection = ops.mean(upstream * x_hat, axis=-1, keepdims=True)
            return inv * (upstream - mean_upstream - x_hat * mean_projection)

        return normed, grad

    return normalize(x)


@register
class LayerNorm(keras.layers.LayerNormalization):
    """Keras' LayerNormalization over the last axis (same weights, config and float32 compute
    under mixed precision), with the normalisation's gradient written out (`_normalize`): the
    same numbers, a faster training step (about 9% for crossvit_15_240 on the 2-core CPU, with
    the GELU's below)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # What CrossViT uses (timm's nn.LayerNorm). build() turns axis -1 into [-1], which a
        # reloaded config passes back.
        if self.axis not in (-1, [-1]) or self.rms_scaling or not (self.center and self.scale):
            raise ValueError(
                "LayerNorm normalises the last axis with a scale and an offset (axis=-1, center=True, "
                f"scale=True, rms_scaling=False); got axis={self.axis}, center={self.center}, "
                f"scale={self.scale}, rms_scaling={self.rms_scaling}. Use keras.layers.LayerNormalization."
            )

    def call(self, x):
        y = _normalize(ops.cast(x, "float32"), self.epsilon) * self.gamma + self.beta
        return ops.cast(y, self.compute_dtype)


_SQRT_HALF = 0.5**0.5
_INV_SQRT_2PI = (2.0 * math.pi) ** -0.5


@ops.custom_gradient
def gelu(x):
    """Exact (erf) GELU as torch.nn.GELU() computes it, x * Phi(x) with Phi(x) = 0.5 * (1 + erf(x /
    sqrt(2))), and its derivative Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi) written out. Written as
    0.5 * x * (1 + erf(x / sqrt(2))) (the same float numbers as x * Phi(x): a product by 0.5 is
    exact), the pattern the LiteRT converter maps to its builtin GELU (x * Phi(x) needs the Flex
    delegate for erf; keras.ops.gelu's erfc is not supported by tf2onnx)."""

    erf = ops.erf(x * _SQRT_HALF)  # once: the backward pass reuses it

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream  # PyTorch: grad(x, upstream=...)
        return upstream * (0.5 * (1.0 + erf) + x * ops.exp(-0.5 * ops.square(x)) * _INV_SQRT_2PI)

    return 0.5 * x * (1.0 + erf), grad


@ops.custom_gradient
def attention(q, k, v):
    """softmax(q k^T) v over the last two axes (q already scaled), with its gradient written out
    as flash attention's backward computes it: with O the output and dP = dO v^T, the scores'
    gradient is P * (dP - rowsum(dO * O)), where autodiff's softmax gradient reduces dP * P over
    the (N, N) scores: one full-size pass and a reduction less per head (a crossvit_15_240
    training step ~3% faster on the 2-core test CPU)."""
    scores = ops.softmax(ops.matmul(q, ops.swapaxes(k, -1, -2)))
    out = ops.matmul(scores, v)
    o = backward_copy(out)

    def grad(*args, upstream=None):
        d_out = args[0] if upstream is None else upstream  # PyTorch: grad(q, k, v, upstream=...)
        d_scores = ops.matmul(d_out, ops.swapaxes(v, -1, -2))
        d_logits = scores * (d_scores - ops.sum(d_out * o, axis=-1, keepdims=True))
        d_q = ops.matmul(d_logits, k)
        d_k = ops.matmul(ops.swapaxes(d_logits, -1, -2), q)
        d_v = ops.matmul(ops.swapaxes(scores, -1, -2), d_out)
        return d_q, d_k, d_v

    return out, grad


def dense(units, name, dtype, use_bias=True):
    """A Dense layer initialised as timm initialises nn.Linear: truncated normal (std 0.02), zero bias."""
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name=name,
        dtype=dtype,
    )


def per_token(layer, x):
    """Applies a Dense `layer` to the tokens of x (B, N, D) as rows of one 2-D matrix: a plain 2-D
    matmul, which TensorFlow's oneDNN rewrite fuses with the bias (and a following GELU); the same
    numbers as Keras' (B, N, D) tensordot, which leaves the bias as a separate pass."""
    y = layer(ops.reshape(x, (-1, x.shape[-1])))
    return ops.reshape(y, (*ops.shape(x)[:-1], y.shape[-1]))


@register
class DropPath(keras.layers.Layer):
    """Stochastic depth (timm's `DropPath`): in training, drops a sample's whole residual branch
    with probability `rate` and scales the kept ones by 1 / (1 - rate). One multiply by a per-sample
    (B, 1, ..., 1) factor, forward and backward, where a Dropout with a shared noise shape makes
    two full-size passes (scale, then select) each way."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        check_rate(self, "rate", rate)
        self.rate = rate
        self.seed = seed

    def build(self, input_shape):
        if self.rate > 0:
            self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        kept = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator))  # 1 with probability keep
        return x * ops.cast(kept / keep, x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


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
        check_positive_integer(self, "dim", dim)
        check_positive_integer(self, "num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"{type(self).__name__}: num_heads={num_heads} does not divide the width dim={dim}.")
        check_rate(self, "attn_drop_rate", attn_drop_rate)
        check_rate(self, "proj_drop_rate", proj_drop_rate)
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
        check_positive_integer(self, "dim", dim)
        check_positive_integer(self, "num_heads", num_heads)
        check_rate(self, "drop_path_rate", drop_path_rate)
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
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=dtype)

    def get_config(self):
        return {**super().get_config(), **attention_arguments(self), "drop_path_rate": self.drop_path_rate}
