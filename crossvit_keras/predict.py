"""Classify image files with a .keras model and print the top classes:

    python -m crossvit_keras.predict --model crossvit_15.keras cat.jpg dog.png

Each image goes through the evaluation transform (crossvit_keras.preprocessing.eval_transform), as
in the exported SavedModel. Class names come from --class-names FILE, or are ImageNet's for a
1000-class model. A file that cannot be read or decoded is reported by name and the others go on
(the exit status is then 1).
"""

import argparse
import os
import re
import sys
import zipfile

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from crossvit_keras import image_header
from crossvit_keras.export import (
    DEFAULT_MAX_PIXELS,
    TOP_K,
    load_keras_model,
    model_image_size,
    model_num_classes,
    resolve_class_names,
)
from crossvit_keras.preprocessing import DEFAULT_CROP_PCT, eval_transform


def check_header(path, data, max_pixels=DEFAULT_MAX_PIXELS):
    """Raises ValueError naming the file if its bytes (a string tensor) are not a JPEG, PNG, GIF, BMP
    or WebP image, have a damaged header, more than `max_pixels` pixels or no end: the checks of the
    SavedModel's `serving_bytes`, from the header (crossvit_keras.image_header), nothing decoded."""
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


def load_model(path):
    """load_keras_model, with a missing, damaged or foreign file (a directory, truncated, not a zip,
    not a Keras model) reported in one line (ValueError)."""
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "not found"
        raise ValueError(f"Model file {path} {what}; give a .keras file saved with model.save().")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        size = os.path.getsize(path)
        raise ValueError(
            f"cannot load the model {path}: it is not a .keras file (not a zip archive, {size} bytes: truncated or "
            "another format); give a complete .keras file saved with model.save()."
        )
    try:
        return load_keras_model(path)
    except Exception as error:  # zipfile, h5py and Keras raise many types for a damaged file
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise ValueError(
            f"cannot load the model {path} ({type(error).__name__}: {reason}); "
            "give a complete .keras file saved with model.save()."
        ) from None


def format_top_k(probabilities, class_names=None, top_k=TOP_K):
    """Lines '  1. 0.8123  281 tabby, tabby cat' for the top_k classes, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    lines = []
    for rank, index in enumerate(order, start=1):
        name = f"  {class_names[index]}" if class_names is not None else ""
        lines.append(f"  {rank}. {probabilities[index]:.4f}  {index:>4d}{name}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m crossvit_keras.predict",
        description="Print the top classes of images with a .keras image classifier.",
    )
    parser.add_argument("--model", required=True, help="a .keras model file")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    parser.add_argument(
        "--class-names",
        help="text file, one class name per line (default: ImageNet names for 1000 classes)",
    )
    parser.add_argument("--top-k", type=int, default=TOP_K, help="classes to print per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    parser.add_argument("--crop-pct", type=float, default=DEFAULT_CROP_PCT, help="evaluation crop (0.875)")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are refused, undecoded"
    )
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be >= 1.")
    try:
        model = load_model(args.model)
        class_names, note = resolve_class_names(args.class_names, model_num_classes(model))
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{args.model}: {note}")
    failed = 0
    results = predict_files(model, args.images, args.batch_size, args.crop_pct, args.max_pixels)
    with tqdm(total=len(args.images), unit="image", disable=None, file=sys.stderr) as bar:
        for path, probabilities, error in results:
            bar.update()
            if error is not None:
                failed += 1
                tqdm.write(f"error: {error}", file=sys.stderr)
                continue
            tqdm.write("\n".join([path, *format_top_k(probabilities, class_names, args.top_k)]))
    if failed:
        print(f"{failed} of {len(args.images)} images could not be read.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
