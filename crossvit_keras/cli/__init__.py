"""The command line: `crossvit-keras SUBCOMMAND ...` (or `python -m crossvit_keras SUBCOMMAND ...`).

Each subcommand is a module of this package with `main(argv, prog)` returning the exit status;
`crossvit-keras SUBCOMMAND --help` lists its flags.
"""

import importlib
import sys

# name: (module, one-line description)
SUBCOMMANDS = {
    "train": ("train", "train a CrossViT with DeiT's recipe under tf.distribute (recipes/imagenet.py)"),
    "eval": ("train", "evaluate a .keras model, a checkpoint or the hub's weights on a validation set"),
    "convert": ("convert", "convert a released timm / official checkpoint (file or hub) to a .keras file"),
    "export": ("export", "export to a SavedModel for TF Serving, or to ONNX, OpenVINO or LiteRT"),
    "predict": ("predict", "print the top classes of image files"),
    "visualize": ("visualize", "draw the patch-token features (Fig. 5) or the cross-attention maps of an image"),
    "prepare": ("prepare", "write an image folder or a tfds dataset as TFRecord shards of bounded-size JPEGs"),
    "data-service": ("data_service", "start a tf.data service dispatcher or worker that runs the training input"),
}


def usage(prog="crossvit-keras"):
    from crossvit_keras.version import __version__

    width = max(map(len, SUBCOMMANDS))
    lines = [
        f"usage: {prog} {{{','.join(SUBCOMMANDS)}}} ...",
        "",
        f"CrossViT in Keras {__version__}: Chen, Fan, Panda, CrossViT: Cross-Attention Multi-Scale Vision Transformer.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {about}" for name, (_, about) in SUBCOMMANDS.items()),
        "",
        f"'{prog} SUBCOMMAND --help' lists a subcommand's flags; '{prog} --version' prints the version.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None, prog="crossvit-keras"):
    """Runs one subcommand; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage(prog))
        return 0 if argv else 2
    if argv[0] == "--version":
        from crossvit_keras.version import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"error: unknown subcommand {name!r}; choose one of {', '.join(SUBCOMMANDS)}.\n")
        return 2
    module = importlib.import_module(f"crossvit_keras.cli.{SUBCOMMANDS[name][0]}")
    kwargs = {"evaluate_only": True} if name == "eval" else {}
    try:
        return module.main(rest, prog=f"{prog} {name}", **kwargs) or 0
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


def console_script():
    """The `crossvit-keras` entry point."""
    sys.exit(main())
