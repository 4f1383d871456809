"""`crossvit-keras convert`: a released CrossViT checkpoint (timm's .safetensors or .pth, the
official .pth; a local file or from the hub) to a `.keras` file.

    crossvit-keras convert --model crossvit_15_240 --output crossvit_15.keras   # timm's hub weights
    crossvit-keras convert --model crossvit_15_240 --checkpoint model.safetensors --output crossvit_15.keras
"""

import argparse


def main(argv=None, prog="crossvit-keras convert"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a released CrossViT checkpoint (timm .safetensors or .pth, official .pth) to .keras.",
    )
    parser.add_argument("--model", required=True, help="variant, e.g. crossvit_15_240 (paper names work too)")
    parser.add_argument(
        "--checkpoint", default=None, help=".safetensors, .pth, .pt or .bin file, or a hub id (default: timm's weights)"
    )
    parser.add_argument("--output", required=True, help="the .keras file to write")
    parser.add_argument("--num-classes", type=int, default=None, help="default: the checkpoint's (new heads if not)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the variant's (pos_embed resized)")
    args = parser.parse_args(argv)
    from crossvit_keras import configs
    from crossvit_keras.logs import setup_logging

    setup_logging()  # this package's lines on stdout (not the root logger's: huggingface_hub logs itself)
    try:
        from crossvit_keras.weights import hub
        from crossvit_keras.weights.convert import convert

        configs.canonical_name(args.model)
        if not args.output.endswith(".keras"):
            raise ValueError(f"The output must be a .keras file, got {args.output}.")
        checkpoint = hub.checkpoint_path(args.model, args.checkpoint or True)  # downloads if not a file
        convert(args.model, checkpoint, args.output, args.num_classes, args.image_size)
    except (ValueError, OSError, ImportError) as error:
        if isinstance(error, OSError) and error.strerror:  # e.g. a read-only or full output directory
            error = f"cannot convert {args.checkpoint or args.model} to {args.output}: {error.strerror}"
        parser.exit(1, f"error: {error}\n")
    return 0
