"""`crossvit-keras predict`: classify image files and print the top classes.

    crossvit-keras predict --model crossvit_15.keras cat.jpg dog.png

Each image goes through the evaluation transform, as in the exported SavedModel
(crossvit_keras.inference). Class names come from --class-names FILE, or are ImageNet's for a
1000-class model. A file that cannot be read or decoded is reported by name and the others go on
(the exit status is then 1).
"""

import argparse
import sys

from tqdm import tqdm

from crossvit_keras.cli.common import add_model_arguments, load_model_from_args
from crossvit_keras.export.saved_model import DEFAULT_MAX_PIXELS, TOP_K, model_num_classes, resolve_class_names
from crossvit_keras.inference import format_top_k, predict_files


def main(argv=None, prog="crossvit-keras predict"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print the top classes of images with a CrossViT (a .keras file, or a variant with a checkpoint).",
    )
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    parser.add_argument(
        "--class-names",
        help="text file, one class name per line (default: ImageNet names for 1000 classes)",
    )
    parser.add_argument("--top-k", type=int, default=TOP_K, help="classes to print per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    parser.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        help="evaluation crop (default: the variant's: 1.0 at 408 px, else 0.875)",
    )
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are refused, undecoded"
    )
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be >= 1.")
    try:
        model = load_model_from_args(args)
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
