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
    model_image_size,
)


def check_header(path, data, max_pixels=DEFAULT_MAX_PIXELS):
    """Raises ValueError naming the file if its bytes (a string tensor) are not a JPEG, PNG, GIF, BMP
    or WebP image, have a damaged header, more than `max_pixels` pixels or no end: the checks of the
    SavedModel's `serving_bytes`, from the header (crossvit_keras.data.image_header), nothing decoded."""
    size = int(tf.strings.length(data))
    if size == 0:
        raise ValueError(f"cannot read {path}: the file is empty")
    code, height, width, complete = (t.numpy() for t in image_header.read_header(data))
    kind = image_header.FORMATS[code]
    start = image_header.hex_prefix(data).numpy().decode("ascii")
    if code == image_header.UNKNOWN:
        reason = f"not a JPEG, PNG, GIF, BMP or WebP image ({size} bytes, starting {start} in hex)"
    elif height <= 0 or width <= 0:
        reason = f"a {kind} image whose header is damaged or cut short ({size} bytes)"
    elif height * width > max_pixels:
        reason = f"a {kind} image of {width} x {height} pixels, more than --max-pixels {max_pixels}"
    elif not complete:
        reason = f"a truncated {kind} image ({size} bytes; its end is missing)"
    else:
        return
    raise ValueError(f"cannot read {path}: {reason}")


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


def predict_files(model, paths, batch_size=32, crop_pct=DEFAULT_CROP_PCT, max_pixels=DEFAULT_MAX_PIXELS):
    """Yield (path, probabilities or None, error message or None) for each file, in order."""
    image_size = model_image_size(model)
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
