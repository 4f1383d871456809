"""Image preprocessing shared by training, evaluation, prediction and the SavedModel export.

The model takes NHWC float images normalised with the ImageNet mean and standard deviation
(the tensor timm takes, transposed). These functions turn RGB values in [0, 255] into that
tensor with TensorFlow ops only, so they run in tf.data and inside an exported graph.
"""

import numpy as np
import tensorflow as tf

from crossvit_keras import transforms
from crossvit_keras.configs import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from crossvit_keras.transforms import eval_resize_size  # noqa: F401  (its home before crossvit_keras.transforms)


def normalize(images):
    """RGB in [0, 255] (any float or integer dtype) -> float32 normalised with ImageNet mean/std."""
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def fixed_size_normalizer(shape):
    """`normalize` for images of one known shape (H, W, 3), also applied to batches (B, H, W, 3),
    as x * scale + offset with the per-channel constants spread over the whole image. The same
    numbers (to float rounding), faster: TensorFlow's generic per-channel broadcast is slow (one
    240 px image 1.6 ms against 0.7 ms, a batch of 32 42 ms against 10 ms, on one core here)."""
    scale, offset = (tf.constant(np.broadcast_to(v, shape)) for v in transforms.normalization())

    def normalize_fixed(images):
        return tf.cast(images, tf.float32) * scale + offset

    return normalize_fixed


# Of an image more than MAX_ASPECT_RATIO times as long as it is wide (or wide as long), the
# evaluation transform keeps the middle: its work is bounded for any shape (crossvit_keras.transforms).
MAX_ASPECT_RATIO = transforms.MAX_ASPECT_RATIO


def middle(images, max_aspect_ratio=MAX_ASPECT_RATIO):
    """The middle of an [H, W, C] or [B, H, W, C] image's long side, at most max_aspect_ratio times its
    short side (the whole image when it is no longer); TensorFlow ops."""
    return transforms.middle(images, max_aspect_ratio, backend="tensorflow")


def eval_transform(images, image_size, crop_pct=DEFAULT_CROP_PCT):
    """The evaluation transform of timm and DeiT: resize the shorter side to image_size / crop_pct
    (bicubic), centre crop image_size, normalise. Input: RGB in [0, 255], [H, W, 3] or [B, H, W, 3].
    TensorFlow ops whatever the Keras backend (for tf.data and exported graphs); the keras-hub image
    converter runs the same code (crossvit_keras.transforms) on the current backend. An image more
    than MAX_ASPECT_RATIO times as long as it is wide (or wide as long) is first cut to its `middle`."""
    return transforms.eval_transform(images, image_size, crop_pct, backend="tensorflow")
