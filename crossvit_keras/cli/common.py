"""What the subcommands share: the model arguments and their one loader, and the `error:` line."""

import json


def add_model_arguments(parser, checkpoint_help=None):
    """--model (a .keras file, or a variant name with --checkpoint), --checkpoint, --model-overrides."""
    parser.add_argument("--model", required=True, help="a .keras file, or a variant name (e.g. crossvit_15_240)")
    parser.add_argument(
        "--checkpoint",
        help=checkpoint_help
        or "with a variant name: a released timm / official checkpoint (.safetensors, .pth) or a hub id "
        "(e.g. timm/crossvit_15_240.in1k)",
    )
    parser.add_argument(
        "--model-overrides", type=json.loads, default=None, help="with --checkpoint: create_model overrides (JSON)"
    )


def load_model_from_args(args, num_classes=None):
    """crossvit_keras.load_model for the arguments of add_model_arguments (ModelLoadError: one line)."""
    from crossvit_keras.factory import load_model

    return load_model(args.model, args.checkpoint, num_classes=num_classes, **(args.model_overrides or {}))
