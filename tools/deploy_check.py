"""Exactness and quantization of the ONNX, OpenVINO and LiteRT exports (crossvit_keras.export.formats).

    python tools/deploy_check.py --variant crossvit_15_240            # float32, random weights, photographs
    python tools/deploy_check.py --model runs/quickstart/model.keras --data runs/quickstart/digits/val

With --variant: max |logit - Keras'| / max |logit| of each float32 export on scikit-image's photographs.
With --model and --data (a class-folder directory, e.g. the quickstart's digits validation set): for every
export and quantization, top-1 agreement with the Keras model and top-1 accuracy, against Keras'.
"""

import argparse
import glob
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import crossvit_keras  # noqa: E402
from crossvit_keras.data.preprocessing import eval_transform  # noqa: E402
from crossvit_keras.export import formats as export_formats  # noqa: E402

VARIANTS = [(fmt, q) for fmt in export_formats.FORMATS for q in export_formats.SUPPORTED[fmt]]


def photographs(size):
    import skimage.data

    photos = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee(), skimage.data.rocket()]
    return np.stack([eval_transform(photo, size).numpy() for photo in photos])


def folder(path, size):
    """Images and labels of a class-folder directory (classes in sorted order)."""
    classes = sorted(os.listdir(path))
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted(glob.glob(os.path.join(path, name, "*"))):
            image = tf.io.decode_image(tf.io.read_file(file), channels=3, expand_animations=False)
            images.append(eval_transform(image, size).numpy())
            labels.append(label)
    return np.stack(images), np.array(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", help="a CrossViT variant with random weights (float32 exactness)")
    parser.add_argument("--model", help="a trained .keras model")
    parser.add_argument("--data", help="its held-out class-folder directory")
    args = parser.parse_args()
    model = crossvit_keras.create_model(args.variant) if args.variant else crossvit_keras.load_model(args.model)
    size = model.image_size
    if args.variant:
        images, labels, variants = photographs(size), None, [(fmt, "none") for fmt in export_formats.FORMATS]
    else:
        (images, labels), variants = folder(args.data, size), VARIANTS
    expected = model.predict(images, batch_size=32, verbose=0)
    top1 = expected.argmax(1)
    if labels is not None:
        print(f"Keras float32: top-1 accuracy {100 * (top1 == labels).mean():.2f}% on {len(labels)} images")
    for fmt, quantize in variants:
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "m" + export_formats.SUFFIXES[fmt])
            export_formats.export_format(model, path, fmt, quantize)
            run = export_formats.load_runtime(path)
            logits = np.concatenate([run(images[i : i + 32]) for i in range(0, len(images), 32)])
        diff = np.abs(logits - expected).max() / np.abs(expected).max()
        line = f"{fmt} {quantize}: max |diff| / max |logit| {diff:.2e}"
        if labels is not None:
            agree, accuracy = (logits.argmax(1) == top1).mean(), (logits.argmax(1) == labels).mean()
            line += f", top-1 agreement with Keras {100 * agree:.2f}%, accuracy {100 * accuracy:.2f}%"
        print(line, flush=True)


if __name__ == "__main__":
    main()
