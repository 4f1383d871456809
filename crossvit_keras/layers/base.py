"""What every CrossViT layer shares: registration for `.keras` saving, and LayerNorm / GELU
as the paper and timm use them."""

import keras

register = keras.saving.register_keras_serializable(package="crossvit_keras")

LAYER_NORM_EPSILON = 1e-6  # timm's and the official code's partial(nn.LayerNorm, eps=1e-6)


def layer_norm(name, dtype):
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)


def gelu(x):
    """Exact (erf) GELU, as torch.nn.GELU()."""
    # x * 0.5 erfc(-x / sqrt(2)): what tf.nn.gelu(approximate=False) computes, bit for bit, with
    # one elementwise pass over the (large) MLP activations fewer.
    return x * (0.5 * keras.ops.erfc(x * -(0.5**0.5)))


def dense(units, name, dtype, use_bias=True):
    """A Dense layer initialised as timm initialises nn.Linear: truncated normal (std 0.02), zero bias."""
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name=name,
        dtype=dtype,
    )
