"""Classify image files with a model (`crossvit-keras predict` prints the top classes):

    for path, probabilities, error in predict_files(model, ["cat.jpg", "dog.png"]): ...

Each image goes through the evaluation transform (crossvit_keras.data.preprocessing.eval_transform), as
in the exported SavedModel. Class names come from --class-names FILE, or are ImageNet's for a
1000-class model. A file that cannot be read or decoded is reported by name and the others go on
(the exit status is then 1).
"""

import os
import re

import numpy as np
import tensorflow as tf

from crossvit_keras.data import image_header
from crossvit_keras.data.preprocessing import DEFAULT_CROP_PCT, eval_transform
from crossvit_keras.export.saved_model import (
    DEFAULT_MAX_PIXELS,
    TOP_K,
    model_crop_pct,
    model_image_size,
)


def check_header(path, data, max_pixels=DEFAULT_MAX_PIXELS):
    """Raises ValueError naming the file if its bytes (a string tensor) are refused before decoding:
    not a JPEG, PNG, GIF, BMP or WebP image, a damaged header, more than `max_pixels` pixels, an
    animated WebP or no end. The checks and words of the SavedModel's `serving_bytes`
    (crossvit_keras.data.image_header.problem); nothing is decoded."""
    if int(tf.strings.length(data)) == 0:
        raise ValueError(f"cannot read {path}: the file is empty")
    problem = image_header.problem(data, max_pixels).numpy().decode("ascii")
    if problem:
        raise ValueError(f"cannot read {path}: {problem}")


def load_image(path, image_size, crop_pct=DEFAULT_CROP_PCT, max_pixels=DEFAULT_MAX_PIXELS):
    """An image file (JPEG, PNG, GIF, BMP, WebP) -> the model's input [size, size, 3], checked and
    decoded as the SavedModel's `serving_bytes` signature does. Raises ValueError naming the file."""
    if not os.path.isfile(path):
        reason = "it is a directory" if os.path.isdir(path) else "no such file"
        raise ValueError(f"cannot read {path}: {reason}")
    try:
        data = tf.io.read_file(path)
        check_header(path, data, max_pixels)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        # TensorFlow's message without its "{{function_node ...}}" prefix and "[Op:...]" suffix.
        reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message).strip()
        raise ValueError(f"cannot read {path}: {reason}") from None
    return eval_transform(image, image_size, crop_pct)


def predict_files(model, paths, batch_size=32, crop_pct=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Yield (path, probabilities or None, error message or None) for each file, in order.
    crop_pct: None takes the model's (model_crop_pct: 1.0 for the 408 variants, else 0.875)."""
    image_size = model_image_size(model)
    crop_pct = model_crop_pct(model) if crop_pct is None else crop_pct
    batch = []

    def run(batch):
        logits = model(tf.stack([image for _, image in batch]), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy()
        return [(path, p, None) for (path, _), p in zip(batch, probabilities, strict=True)]

    for path in paths:
        try:
            batch.append((path, load_image(path, image_size, crop_pct, max_pixels)))
        except ValueError as error:
            yield from run(batch) if batch else ()
            batch = []
            yield path, None, str(error)
            continue
        if len(batch) == batch_size:
            yield from run(batch)
            batch = []
    if batch:
        yield from run(batch)


def format_top_k(probabilities, class_names=None, top_k=TOP_K):
    """Lines '  1. 0.8123  281 tabby, tabby cat' for the top_k classes, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    lines = []
    for rank, index in enumerate(order, start=1):
        name = f"  {class_names[index]}" if class_names is not None else ""
        lines.append(f"  {rank}. {probabilities[index]:.4f}  {index:>4d}{name}")
    return lines
