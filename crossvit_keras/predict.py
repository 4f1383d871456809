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

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from crossvit_keras.export import (
    TOP_K,
    load_keras_model,
    model_image_size,
    model_num_classes,
    resolve_class_names,
)
from crossvit_keras.preprocessing import DEFAULT_CROP_PCT, eval_transform


def load_image(path, image_size, crop_pct=DEFAULT_CROP_PCT):
    """An image file (JPEG, PNG, GIF, BMP, WebP) -> the model's input [size, size, 3], decoded as the
    SavedModel's `serving_bytes` signature decodes it. Raises ValueError naming the file."""
    if not os.path.isfile(path):
        reason = "it is a directory" if os.path.isdir(path) else "no such file"
        raise ValueError(f"cannot read {path}: {reason}")
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        # TensorFlow's message without its "{{function_node ...}}" prefix and "[Op:...]" suffix.
        reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message).strip()
        raise ValueError(f"cannot read {path}: {reason}") from None
    return eval_transform(image, image_size, crop_pct)


def predict_files(model, paths, batch_size=32, crop_pct=DEFAULT_CROP_PCT):
    """Yield (path, probabilities or None, error message or None) for each file, in order."""
    image_size = model_image_size(model)
    batch = []

    def run(batch):
        logits = model(tf.stack([image for _, image in batch]), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy()
        return [(path, p, None) for (path, _), p in zip(batch, probabilities, strict=True)]

    for path in paths:
        try:
            batch.append((path, load_image(path, image_size, crop_pct)))
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
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be >= 1.")
    try:
        model = load_keras_model(args.model)
        class_names, note = resolve_class_names(args.class_names, model_num_classes(model))
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{args.model}: {note}")
    failed = 0
    results = predict_files(model, args.images, args.batch_size, args.crop_pct)
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
