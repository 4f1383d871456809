"""`crossvit-keras visualize`: pictures of what a CrossViT computes for one image: the patch-token
features of both branches (paper Fig. 5) or each fusion stage's CLS cross-attention
(crossvit_keras.visualize).

    crossvit-keras visualize features --model crossvit_15.keras cat.jpg --output features.png
    crossvit-keras visualize attention --model crossvit_15_240 --checkpoint model.safetensors cat.jpg
"""

import argparse
import sys

from crossvit_keras.cli.common import add_model_arguments, load_model_from_args
from crossvit_keras.visualize import CHANNELS, load_image, plot_attention, plot_features


def build_parser(prog="crossvit-keras visualize"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Draw a CrossViT's patch-token features (paper Fig. 5) or its cross-attention maps for an image.",
    )
    parser.add_argument("kind", choices=("features", "attention"), help="what to draw")
    parser.add_argument("image", metavar="IMAGE", help="an image file (JPEG, PNG, GIF, BMP, WebP)")
    add_model_arguments(parser)
    parser.add_argument("--output", default=None, help="PNG to write (default: KIND.png)")
    parser.add_argument("--channels", type=int, default=CHANNELS, help="features: channels per branch (36)")
    parser.add_argument("--seed", type=int, default=0, help="features: seed of the channel choice")
    return parser


def main(argv=None, prog="crossvit-keras visualize"):
    args = build_parser(prog).parse_args(argv)
    output = args.output or f"{args.kind}.png"
    try:
        if args.channels < 1:
            raise ValueError(f"--channels must be >= 1, got {args.channels}.")
        model = load_model_from_args(args)
        images, shown = load_image(args.image, model.image_size)
        if args.kind == "features":
            plot_features(model, images, shown, output, args.channels, args.seed)
        else:
            plot_attention(model, images, shown, output)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0
