"""The large branch's input resize, exact to PyTorch's bicubic interpolation.

CrossViT feeds one image to both branches; the large-patch branch sees it resized (240 -> 224, or
408 -> 384) with `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`: the cubic
convolution kernel with a = -0.75, no antialiasing, source indices clamped at the borders.
`tf.image.resize` uses a = -0.5 and does not match, so the resize is written here as two fixed
interpolation matrices, one per axis, applied with two matmuls.
"""

import keras
import numpy as np
from keras import ops

from crossvit_keras.layers.base import check_positive_integer, register

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient


def _cubic_weights(t):
    """The four cubic-convolution weights for taps at offsets -1, 0, 1, 2 from floor(src)."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size, out_size):
    """(out_size, in_size) float64 matrix M with M @ signal == PyTorch's 1-D bicubic resize."""
    # PyTorch computes the source coordinate in float32, scale * (i + 0.5) - 0.5 rounded once (a
    # fused multiply-add); not clamped at 0 for cubic. Doing the same matches it to ~1e-6.
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
    first = np.floor(src)
    weights = _cubic_weights(src - first)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for tap in range(4):
        index = np.clip(first.astype(np.int64) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), index), weights[:, tap])
    return matrix


@register
class BicubicResize(keras.layers.Layer):
    """Resizes NHWC images to `size` = (height, width) exactly as PyTorch's bicubic does."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        if len(size) != 2:
            raise ValueError(f"BicubicResize: size must be (height, width), got {size!r}.")
        for value in size:
            check_positive_integer(self, "size", value)
        self.size = tuple(int(s) for s in size)

    def build(self, input_shape):
        _, height, width, _ = tuple(input_shape)
        if height is None or width is None:
            raise ValueError(f"BicubicResize needs static image sizes, got input shape {input_shape}.")
        # Constants, not weights: they follow from the shapes alone.
        self._rows = bicubic_matrix(height, self.size[0]).astype("float32")  # (out_h, in_h)
        self._cols = bicubic_matrix(width, self.size[1]).T.astype("float32")  # (in_w, out_w)

    def call(self, images):
        rows = ops.cast(self._rows, images.dtype)
        cols = ops.cast(self._cols, images.dtype)
        # Two products over the last axis, each one plain matrix product (a batched matmul that
        # broadcasts a matrix over 4-D images is ~10x slower on CPU).
        # Width: (B, H, W, C) -> (B, H, C, W) @ (W, w) -> (B, H, C, w).
        x = ops.matmul(ops.transpose(images, (0, 1, 3, 2)), cols)
        # Height: (B, w, C, H) @ (H, h) -> (B, w, C, h) -> (B, h, w, C).
        x = ops.matmul(ops.transpose(x, (0, 3, 2, 1)), ops.transpose(rows))
        return ops.transpose(x, (0, 3, 1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}
