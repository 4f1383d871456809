"""Keras' weight quantization of CrossViT (`model.quantize("int8" | "float8")`) against float32 and
against the ONNX Runtime int8 export (crossvit_keras.export.formats), side by side in one run.

    python recipes/quickstart.py   # the trained model on scikit-learn's digits (runs/quickstart)
    python benchmarks/quantize.py --trained runs/quickstart/model.keras --digits runs/quickstart/digits/val

1. Accuracy: the trained model (the quickstart's, on its held-out digits) in float32, quantized by
   Keras (int8, float8) and exported to ONNX (float32, int8: onnxruntime's dynamic quantization):
   top-1, top-1 agreement with float32, the largest logit change relative to the largest logit.
   The int8 model also goes through a .keras round trip and its SavedModel export (the logits of
   both must equal the in-memory quantized model's).
2. Photographs: scikit-image's sample photos through a `--variant` with random weights (no
   pretrained weights are used): only how far quantization moves the logits, and the top-1
   agreement of a random model, whose logits are nearly tied (a weak measure).
3. Speed: the variant's inference on a batch of `--batch` images, each runtime timed in turn in the
   same rounds: process CPU time per image (both cores) and wall time per image (medians). Keras
   runs a traced tf.function (no XLA); ONNX Runtime its CPU provider with its default threads.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

KERAS_MODES = ("int8", "float8")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GRAY_PHOTOS = ("camera", "coins", "moon")


def build_parser():
    parser = argparse.ArgumentParser(prog="python benchmarks/quantize.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trained", help="a trained .keras CrossViT (e.g. runs/quickstart/model.keras)")
    parser.add_argument("--digits", help="its held-out images: a folder of <class>/<image>.png")
    parser.add_argument("--crop-pct", type=float, default=0.875, help="evaluation crop of --trained")
    parser.add_argument("--variant", default="crossvit_9_240", help="the variant for photographs and speed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    return parser


def quantized(model_path_or_model, mode):
    """A fresh copy of the model, quantized by Keras (mode None: float32)."""
    import crossvit_keras

    if isinstance(model_path_or_model, str):
        model = crossvit_keras.load_model(model_path_or_model)
    else:
        model = crossvit_keras.CrossViT.from_config(model_path_or_model.get_config())
        model.set_weights(model_path_or_model.get_weights())
    if mode:
        with warnings.catch_warnings():  # Keras names each layer type it does not quantize
            warnings.simplefilter("ignore")
            model.quantize(mode)
    return model


def onnx_runtime(model, scratch, quantize):
    from crossvit_keras.export import formats

    path = os.path.join(scratch, f"model-{quantize}.onnx")
    formats.export_format(model, path, "onnx", quantize, overwrite=True)
    return formats.load_runtime(path)


def compare(name, logits, reference, labels=None):
    import numpy as np

    row = {
        "runtime": name,
        "agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
        "max_change": float(np.abs(logits - reference).max() / np.abs(reference).max()),
    }
    if labels is not None:
        row["top1"] = float(np.mean(logits.argmax(-1) == labels))
    return row


def print_rows(title, rows, with_top1):
    print(f"\n{title}")
    print(f"{'runtime':22} {'top-1':>7} {'agrees with float32':>20} {'max |logit change| / max |logit|':>34}")
    for row in rows:
        top1 = f"{100 * row['top1']:6.1f}%" if with_top1 else "      -"
        print(f"{row['runtime']:22} {top1:>7} {100 * row['agreement']:19.1f}% {row['max_change']:34.4f}")


def digits_accuracy(args, scratch):
    import keras
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    import crossvit_keras
    from crossvit_keras.data.preprocessing import eval_transform

    float_model = crossvit_keras.load_model(args.trained)
    classes = sorted(os.listdir(args.digits), key=lambda c: (len(c), c))
    files = [
        (os.path.join(args.digits, c, name), label)
        for label, c in enumerate(classes)
        for name in sorted(os.listdir(os.path.join(args.digits, c)))
    ]
    raw = np.stack([np.asarray(Image.open(path).convert("RGB"), np.float32) for path, _ in files])
    labels = np.array([label for _, label in files])
    images = eval_transform(raw, float_model.image_size, args.crop_pct).numpy()
    reference = float_model.predict(images, batch_size=64, verbose=0)
    rows = [compare("Keras float32", reference, reference, labels)]
    for mode in KERAS_MODES:
        model = quantized(args.trained, mode)
        logits = model.predict(images, batch_size=64, verbose=0)
        rows.append(compare(f"Keras {mode}", logits, reference, labels))
        path = os.path.join(scratch, f"{mode}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        same = np.array_equal(reloaded.predict(images, batch_size=64, verbose=0), logits)
        rows[-1]["keras_round_trip_equal"] = bool(same)
        if mode == "int8":
            export = os.path.join(scratch, "saved_model", "1")
            crossvit_keras.export_saved_model(model, export, overwrite=True, crop_pct=args.crop_pct)
            serve = tf.saved_model.load(export).signatures["serving_default"]
            probabilities = serve(images=tf.constant(raw))["probabilities"].numpy()
            expected = tf.nn.softmax(logits).numpy()
            rows[-1]["saved_model_max_diff"] = float(np.abs(probabilities - expected).max())
    for quantize in ("none", "int8"):
        run = onnx_runtime(float_model, scratch, quantize)
        logits = np.concatenate([run(images[i : i + 64]) for i in range(0, len(images), 64)])
        rows.append(compare(f"ONNX Runtime {'float32' if quantize == 'none' else quantize}", logits, reference, labels))
    print_rows(f"{args.trained}: {len(images)} held-out images of {args.digits}", rows, True)
    for row in rows:
        if "keras_round_trip_equal" in row:
            print(f"{row['runtime']}: .keras round trip gives the same logits: {row['keras_round_trip_equal']}")
        if "saved_model_max_diff" in row:
            difference = row["saved_model_max_diff"]
            print(f"{row['runtime']}: SavedModel probabilities differ from Keras' by at most {difference:.2e}")


def photographs(model):
    import numpy as np
    import skimage.data

    from crossvit_keras.data.preprocessing import eval_transform

    images = []
    for name in PHOTOS + GRAY_PHOTOS:
        image = getattr(skimage.data, name)()
        image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
        images.append(eval_transform(image.astype(np.float32), model.image_size).numpy())
    return np.stack(images)


def speed_and_photos(args, scratch):
    import numpy as np
    import tensorflow as tf

    import crossvit_keras

    float_model = crossvit_keras.create_model(args.variant)
    photos = photographs(float_model)
    reference = float_model.predict(photos, verbose=0)
    runtimes = {"Keras float32": float_model}
    runtimes |= {f"Keras {mode}": quantized(float_model, mode) for mode in KERAS_MODES}
    functions = {}
    for name, model in runtimes.items():
        functions[name] = tf.function(lambda x, model=model: model(x, training=False))
    functions["ONNX Runtime float32"] = onnx_runtime(float_model, scratch, "none")
    functions["ONNX Runtime int8"] = onnx_runtime(float_model, scratch, "int8")
    rows = [compare(name, np.asarray(run(photos)), reference) for name, run in functions.items()]
    print_rows(f"{args.variant} with random weights on {len(photos)} scikit-image photographs", rows, False)

    batch = common.random_images(np, args.batch, float_model.image_size)
    timings = {name: ([], []) for name in functions}
    for run in functions.values():  # warm up (traces)
        np.asarray(run(batch))
    for _ in range(args.rounds):
        for name, run in functions.items():
            cpu, wall = time.process_time(), time.perf_counter()
            np.asarray(run(batch))
            timings[name][0].append((time.process_time() - cpu) / args.batch)
            timings[name][1].append((time.perf_counter() - wall) / args.batch)
    print(f"\n{args.variant} inference, batch {args.batch}, median of {args.rounds} rounds ({common.cpu_name()})")
    print(f"{'runtime':22} {'CPU ms / image':>15} {'wall ms / image':>16}")
    for name, (cpu, wall) in timings.items():
        print(f"{name:22} {1000 * statistics.median(cpu):15.1f} {1000 * statistics.median(wall):16.1f}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    import crossvit_keras  # noqa: F401  (before TensorFlow: its settings, quiet start)

    with tempfile.TemporaryDirectory() as scratch:
        if args.trained:
            if not args.digits:
                raise SystemExit("--trained needs --digits (its held-out image folder)")
            digits_accuracy(args, scratch)
        speed_and_photos(args, scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
