"""Quickstart: train and evaluate a small CrossViT end to end on real data, nothing downloaded.

    python recipes/quickstart.py

The data are scikit-learn's handwritten digits (1,797 scans of 8 x 8 pixels, 10 classes), written
out as a DeiT-layout image folder (train/<digit>/*.png and val/<digit>/*.png, a fixed stratified
80/20 split), upscaled to 48 x 48 RGB. A CrossViT with both branches and the cross-attention fusion
of the paper, made small (widths 64/128, one multi-scale encoder), is trained with recipes/imagenet.py's
code (crossvit_keras.training) and the trained model is evaluated again from its saved file.
Every artefact of a training run is written to --output-dir (default runs/quickstart).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

IMAGE_SIZE = 48
MODEL_OVERRIDES = '{"embed_dims": [64, 128], "depths": [[1, 3, 1]], "num_heads": [4, 4], "mlp_ratios": [2, 2]}'


def write_digits_folder(root, image_size=IMAGE_SIZE, val_fraction=0.2, seed=0):
    """scikit-learn's digits as root/{train,val}/<digit>/<index>.png, RGB, image_size px (bicubic).
    Returns (train count, val count); an existing complete folder is kept."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, val = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=digits.target)
    marker = os.path.join(root, ".complete")
    if not os.path.exists(marker):
        for split, chosen in (("train", train), ("val", val)):
            for index in chosen:
                directory = os.path.join(root, split, str(digits.target[index]))
                os.makedirs(directory, exist_ok=True)
                pixels = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
                image = Image.fromarray(pixels).resize((image_size, image_size), Image.BICUBIC).convert("RGB")
                image.save(os.path.join(directory, f"{index:04d}.png"))
        open(marker, "w").close()
    return len(train), len(val)


def training_flags(epochs):
    """recipes/imagenet.py's flags for the small model on the digits (also recipes/fusion_ablation.py's)."""
    return [
        "--input-size", str(IMAGE_SIZE),
        "--model-overrides", MODEL_OVERRIDES,
        "--epochs", str(epochs),
        "--warmup-epochs", str(min(3, epochs)),
        "--lr", "2e-3", "--unscale-lr", "--min-lr", "1e-5", "--weight-decay", "0.05",
        "--drop-path", "0.0",
        "--aa", "none", "--hflip", "0", "--scale", "0.6", "1.0", "--reprob", "0",
        "--mixup", "0", "--cutmix", "0", "--smoothing", "0.1",
    ]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=os.path.join("runs", "quickstart"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strategy", default="default", help="as recipes/imagenet.py's --strategy")
    args, extra = parser.parse_known_args(argv)  # anything else goes to recipes/imagenet.py's flags

    from crossvit_keras.cli import train
    from crossvit_keras.training.run import FINAL_MODEL

    start = time.perf_counter()
    data_path = os.path.join(args.output_dir, "digits")
    train_count, val_count = write_digits_folder(data_path)
    print(f"digits: {train_count} training and {val_count} validation images (48 x 48 RGB) in {data_path}")
    common = ["--data-set", "IMNET", "--data-path", data_path, "--output_dir", args.output_dir]
    common += ["--strategy", args.strategy, "--model", "crossvit_tiny_240", "--batch-size", str(args.batch_size)]
    code = train.main(common + training_flags(args.epochs) + ["--verbose", "2"] + extra, prog="recipes/imagenet.py")
    if code:
        return code
    model_path = os.path.join(args.output_dir, FINAL_MODEL)
    print(f"evaluating the saved model {model_path} again (--eval):")
    code = train.main(common + ["--eval", "--resume", model_path, "--verbose", "0"] + extra, prog="recipes/imagenet.py")
    if code:
        return code
    import json

    with open(os.path.join(args.output_dir, "eval.json"), encoding="utf-8") as f:
        result = json.load(f)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"Quickstart: CrossViT reached {100 * result['val_top1']:.1f}% top-1 "
        f"({100 * result['val_top5']:.1f}% top-5) on {val_count} held-out digits in {minutes:.1f} min; "
        f"artefacts in {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
