"""The evaluation transform of timm and DeiT, written once for every place that needs it: the
keras-hub image converter (on any Keras backend), the tf.data pipelines and the SavedModel's graph.

    keep the `middle` of an image more than 8 times as long as it is wide (or wide as long),
    resize the shorter side to image_size / crop_pct (bicubic, antialiased like PIL), clip to
    [0, 255], centre crop image_size x image_size, normalise: x * (1 / (255 std)) - mean / std

Input: RGB in [0, 255] (any dtype), [H, W, 3] or [B, H, W, 3]; output float32. The sizes are
computed in float32 as TensorFlow does, with Python numbers when the image size is static (JAX,
PyTorch, tf.data with known shapes) and with tensors when it is not (a TensorFlow graph taking
images of any size): both give the same sizes.
"""

import functools
import math

import numpy as np
from keras.src.utils.backend_utils import DynamicBackend

from crossvit_keras.configs import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD


def eval_resize_size(image_size, crop_pct=DEFAULT_CROP_PCT):
    """The shorter-side size before the centre crop, as timm computes it (floor)."""
    return int(math.floor(image_size / crop_pct))


def normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(scale, offset), float32 per channel: normalised = pixels * scale + offset."""
    std = np.asarray(std, np.float32)
    return (1.0 / (255.0 * std)).astype(np.float32), (-np.asarray(mean, np.float32) / std).astype(np.float32)


# The transform scales the shorter side up or down to image_size / crop_pct, so its tensors grow with
# the longer side: a 1 x 60000 image would become 274 x 16.4 million pixels (54 GB of float32). Of an
# image whose long side is more than MAX_ASPECT_RATIO times its short side, only the middle
# MAX_ASPECT_RATIO x short pixels of the long side are kept before resizing (the centre crop keeps the
# middle crop_pct x short of them anyway): the work is bounded for any shape, and images up to this
# aspect ratio are transformed exactly as timm does.
MAX_ASPECT_RATIO = 8


def _height_width(images, ops):
    """(height, width): Python ints where the shape is static, scalar tensors where it is not."""
    static, shape = tuple(images.shape), ops.core.shape(images)
    return tuple(static[i] if static[i] is not None else shape[i] for i in (-3, -2))


def middle(images, max_aspect_ratio=MAX_ASPECT_RATIO, backend=None):
    """The middle of an [H, W, C] or [B, H, W, C] image's long side, at most max_aspect_ratio times
    its short side (the whole image when it is no longer)."""
    ops = DynamicBackend(backend)
    height, width = _height_width(images, ops)
    if isinstance(height, int) and isinstance(width, int):
        longest = max_aspect_ratio * min(height, width)
        keep_height, keep_width = min(height, longest), min(width, longest)
    else:
        longest = max_aspect_ratio * ops.numpy.minimum(height, width)
        keep_height, keep_width = ops.numpy.minimum(height, longest), ops.numpy.minimum(width, longest)
    top, left = (height - keep_height) // 2, (width - keep_width) // 2
    return images[..., top : top + keep_height, left : left + keep_width, :]


def _resized_shape(height, width, size, ops):
    """(height, width) with the shorter side `size`, the longer side floor(side * size / shorter)
    in float32; the shorter side gets exactly `size` (the float product could fall one short)."""
    if isinstance(height, int) and isinstance(width, int):
        h, w = np.float32(height), np.float32(width)
        short = min(h, w)
        new_height = size if h <= w else int(np.floor(h * np.float32(size) / short))
        new_width = size if w < h else int(np.floor(w * np.float32(size) / short))
        return new_height, new_width
    h, w = ops.core.cast(height, "float32"), ops.core.cast(width, "float32")
    short = ops.numpy.minimum(h, w)
    new_height = ops.core.cast(ops.numpy.floor(h * float(size) / short), "int32")
    new_width = ops.core.cast(ops.numpy.floor(w * float(size) / short), "int32")
    return ops.numpy.where(h <= w, size, new_height), ops.numpy.where(w < h, size, new_width)


def _crop_start(length, size, ops):
    """timm's centre-crop offset: round((length - size) / 2), rounding half to even."""
    if isinstance(length, int):
        return int(np.round(np.float32(length - size) / np.float32(2.0)))
    return ops.core.cast(ops.numpy.round(ops.core.cast(length - size, "float32") / 2.0), "int32")


def eval_transform(
    images,
    image_size,
    crop_pct=DEFAULT_CROP_PCT,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bicubic",
    backend=None,
):
    """RGB images in [0, 255] -> the model's input (see the module docstring).

    backend: the Keras backend whose ops run the transform; None is the current one, "tensorflow"
    runs it on TensorFlow tensors whatever the Keras backend (in tf.data or a TensorFlow graph)."""
    ops = DynamicBackend(backend)
    images = ops.core.cast(middle(images, backend=backend), "float32")
    height, width = _height_width(images, ops)
    size = eval_resize_size(image_size, crop_pct)
    new_height, new_width = _resized_shape(height, width, size, ops)
    images = ops.image.resize(
        images, (new_height, new_width), interpolation=interpolation, antialias=True, data_format="channels_last"
    )
    images = ops.numpy.clip(images, 0.0, 255.0)  # bicubic overshoots
    top, left = _crop_start(new_height, image_size, ops), _crop_start(new_width, image_size, ops)
    images = images[..., top : top + image_size, left : left + image_size, :]
    scale, offset = _normalization_maps(image_size, tuple(mean), tuple(std))
    return images * ops.core.convert_to_tensor(scale) + ops.core.convert_to_tensor(offset)


@functools.lru_cache(maxsize=8)
def _normalization_maps(image_size, mean, std):
    """The per-channel constants spread over the whole crop: the same numbers as a per-channel
    broadcast, and faster on TensorFlow (one 240 px image 0.7 ms against 1.6 ms on one core). Made
    contiguous: a tensor made from np.broadcast_to's view reads past its 3 values."""
    return tuple(
        np.ascontiguousarray(np.broadcast_to(v, (image_size, image_size, 3))) for v in normalization(mean, std)
    )
