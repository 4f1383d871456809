"""Checks `model.quantize(mode)` and the quantized `.keras` round trip on every CrossViT variant
(random weights; no hub access needed): quantize, save, load with crossvit_keras.load_model, and
compare the reloaded logits with the quantized model's. One line per variant.

    python tools/quantize_all_variants.py [--mode int8] [--variants crossvit_9_240 ...]
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/quantize_all_variants.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="int8", choices=("int8", "float8", "int4"))
    parser.add_argument("--variants", nargs="*", help="default: all 11")
    args = parser.parse_args(argv)

    import crossvit_keras

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants or crossvit_keras.list_models():
            start = time.perf_counter()
            model = crossvit_keras.create_model(name)
            x = np.random.default_rng(0).standard_normal((1, model.image_size, model.image_size, 3)).astype("float32")
            reference = np.asarray(model(x))
            with warnings.catch_warnings():  # Keras names each layer type it does not quantize
                warnings.simplefilter("ignore")
                model.quantize(args.mode)
            quantized = np.asarray(model(x))
            path = os.path.join(tmp, f"{name}.keras")
            model.save(path)
            reloaded = np.asarray(crossvit_keras.load_model(path)(x))
            same = np.array_equal(reloaded, quantized)
            failures += not same
            change = np.abs(quantized - reference).max() / np.abs(reference).max()
            print(
                f"{name:24} {args.mode}: reloaded logits {'identical' if same else 'DIFFER'}; "
                f"max |quantized - float32| / max |float32| = {change:.3f}; {time.perf_counter() - start:.0f} s",
                flush=True,
            )
            os.remove(path)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
