"""`crossvit-keras export`: a CrossViT to a TensorFlow SavedModel for TF Serving, or to ONNX,
OpenVINO or LiteRT (crossvit_keras.export).

    crossvit-keras export --model crossvit_15.keras --output models/crossvit_15/1
    crossvit-keras export --model crossvit_15.keras --output crossvit_15.onnx --format onnx --quantize int8
"""

import argparse

from crossvit_keras.cli.common import add_model_arguments, load_model_from_args
from crossvit_keras.export.saved_model import (
    BYTES_SIGNATURE,
    DEFAULT_MAX_PIXELS,
    IMAGES_SIGNATURE,
    TOP_K,
    export_saved_model,
    model_num_classes,
    resolve_class_names,
)


def main(argv=None, prog="crossvit-keras export"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a CrossViT (a .keras file, or a variant with a checkpoint) to a SavedModel for TF Serving "
        "(signatures serving_default: float images, serving_bytes: encoded images).",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--output", required=True, help="SavedModel directory, a numbered version: models/crossvit_15/1"
    )
    parser.add_argument(
        "--format",
        choices=["saved_model", "onnx", "openvino", "litert"],
        default="saved_model",
        help="saved_model (default, for TF Serving) or a file taking normalised images, returning logits "
        "(crossvit_keras.export.formats)",
    )
    parser.add_argument("--quantize", choices=["none", "float16", "int8"], default="none", help="not for saved_model")
    parser.add_argument(
        "--class-names",
        help="text file, one class name per line (default: ImageNet names for 1000 classes)",
    )
    parser.add_argument("--top-k", type=int, default=TOP_K, help="number of top classes returned (default 5)")
    parser.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        help="evaluation crop (default: the variant's: 1.0 at 408 px, else 0.875)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"serving_bytes refuses larger images, undecoded (default {DEFAULT_MAX_PIXELS:,})",
    )
    args = parser.parse_args(argv)
    try:
        if args.format != "saved_model":  # ONNX, OpenVINO, LiteRT: crossvit_keras/export/formats.py
            from crossvit_keras.export.formats import check_options, export_format

            check_options(args.format, args.quantize, args.output)
            path = export_format(load_model_from_args(args), args.output, args.format, args.quantize, args.overwrite)
            print(f"Exported {args.model} to {path} ({args.format}, quantize {args.quantize}).")
            return 0
        if args.quantize != "none":
            raise ValueError("--quantize is for --format onnx, openvino or litert, not saved_model")
        model = load_model_from_args(args)
        names, note = resolve_class_names(args.class_names, model_num_classes(model))
        path = export_saved_model(
            model,
            args.output,
            names,
            top_k=args.top_k,
            crop_pct=args.crop_pct,
            overwrite=args.overwrite,
            max_pixels=args.max_pixels,
        )
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Exported {args.model} to {path} ({note}).")
    print(f"Signatures: {IMAGES_SIGNATURE} (input `images`), {BYTES_SIGNATURE} (input `image_bytes`).")
    return 0
