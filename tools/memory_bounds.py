"""How much the peak memory grows when an image built to pass a width x height check goes through
each path that decodes or transforms images: the SavedModel's two signatures, predict, visualize,
and the evaluation and training pipelines (a tiny 48 px CrossViT). Prints one JSON line: for each
step, how many MiB its resident memory peaked above the level before it (Linux); the bounds are
checked by tests/test_bounds.py.

    python3 tools/memory_bounds.py                # the bounded paths
    python3 tools/memory_bounds.py --unbounded    # also the resize without the bound (about 1 GB)

The images: PNGs of 1 x 30000 and 30000 x 1 pixels (a few kB), a float batch of two 1 x 30000
images, a 1 x 1,000,000 PNG (the longest side TensorFlow's PNG decoder takes), a 6666 x 6000 PNG
(40 MP, the default limit: the largest image decoded), a 600-byte JPEG declaring 20000 x 20000
pixels (in the image folder: skipped undecoded). Each step first runs on a
normal image, so that tracing and TensorFlow's memory pools are counted there.
"""

import argparse
import functools
import io
import json
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tools"), os.path.join(REPO, "tests")]

from serving_load_test import encode, png_bomb  # noqa: E402


def jpeg_declaring(width, height):
    """A real 8 x 8 JPEG whose frame header (SOF0) declares width x height pixels."""
    encoded = bytearray(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = encoded.index(b"\xff\xc0")
    encoded[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(encoded)


def animated_webp():
    from PIL import Image

    frames = [Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def _status(field):
    """A /proc/self/status value in kB (VmRSS: resident now, VmHWM: peak since the last reset)."""
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def grown(fn):
    """MiB the process's resident memory peaked above its level before fn ran (Linux: the peak is
    reset through /proc/self/clear_refs first, so that earlier peaks do not hide this one)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    fn()
    return round((_status("VmHWM") - before) / 1024, 1)


def main(unbounded=False):
    from helpers import tiny_model

    from crossvit_keras import data, inference, transforms, visualize
    from crossvit_keras.export.saved_model import export_saved_model

    root = tempfile.mkdtemp()
    normal, wide, tall = encode(np.zeros((40, 50, 3), np.uint8), "PNG"), png_bomb(30000, 1), png_bomb(1, 30000)
    huge = jpeg_declaring(20000, 20000)
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, split, "c0"))
        for name, contents in (("a.png", normal), ("b.png", wide), ("c.png", tall), ("d.jpg", huge)):
            with open(os.path.join(root, split, "c0", name), "wb") as f:
                f.write(contents)
    with open(os.path.join(root, "animated.webp"), "wb") as f:
        f.write(animated_webp())
    files = [os.path.join(root, "val", "c0", name) for name in ("b.png", "c.png")]
    model = tiny_model(num_classes=3)  # 48 px
    loaded = tf.saved_model.load(export_saved_model(model, os.path.join(root, "m", "1")))
    serve, serve_bytes = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]
    dataset = data.open_dataset("IMNET", root)

    def val():
        return list(data.eval_dataset(dataset.val, 48, 4, 1).as_numpy_iterator())

    def train():
        return next(iter(data.train_dataset(dataset.train, 48, 3, 1, aa="none", reprob=0, seed=0)))

    serve_bytes(image_bytes=tf.constant([normal]))
    serve(images=tf.zeros([1, 40, 50, 3]))
    list(inference.predict_files(model, [os.path.join(root, "val", "c0", "a.png")]))
    visualize.load_image(os.path.join(root, "val", "c0", "a.png"), 48)
    result = {
        "serving_bytes": grown(lambda: serve_bytes(image_bytes=tf.constant([wide, tall]))),
        "serving_default": grown(lambda: serve(images=tf.zeros([2, 1, 30000, 3]))),
        "predict": grown(lambda: list(inference.predict_files(model, files))),
        "visualize": grown(lambda: [visualize.load_image(path, 48) for path in files]),
        "eval pipeline": grown(val),
        "train pipeline": grown(train),
        "serving_bytes 1 x 1,000,000": grown(lambda: serve_bytes(image_bytes=tf.constant([png_bomb(1, 1_000_000)]))),
        "serving_bytes 6666 x 6000": grown(lambda: serve_bytes(image_bytes=tf.constant([png_bomb(6666, 6000)]))),
        "eval weights": float(sum(w.sum() for _, _, w in val())),
        "empty batch": [
            serve(images=tf.zeros([0, 40, 50, 3]))["probabilities"].shape.as_list(),
            serve_bytes(image_bytes=tf.zeros([0], tf.string))["probabilities"].shape.as_list(),
        ],
        "predict animated": list(inference.predict_files(model, [os.path.join(root, "animated.webp")]))[0][2],
    }
    try:
        serve_bytes(image_bytes=tf.constant([normal, animated_webp()]))
    except tf.errors.InvalidArgumentError as error:
        result["serving animated"] = [line for line in error.message.splitlines() if "assertion failed" in line][0]
    if unbounded:  # what the transform did without the bound: resize the whole long side
        image = tf.zeros([1, 30000, 3], tf.uint8)
        size = transforms.eval_resize_size(48)
        resize = functools.partial(tf.image.resize, method="bicubic", antialias=True)
        result["unbounded resize 1 x 30000"] = grown(lambda: resize(tf.cast(image, tf.float32), [size, 30000 * size]))
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unbounded", action="store_true", help="also measure the resize without the bound")
    main(parser.parse_args().unbounded)
