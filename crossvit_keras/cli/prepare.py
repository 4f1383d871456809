"""`crossvit-keras prepare`: an image folder or a tensorflow-datasets dataset as sharded TFRecord
files of JPEGs at a bounded size (crossvit_keras.data.shards), to train from with
`--data-set shards --data-path OUTPUT`.

    crossvit-keras prepare --data-path /data/imagenet --output /data/imagenet-shards
    crossvit-keras prepare --data-set imagenet2012 --data-path ~/tensorflow_datasets --output shards/

Exit status: 0 done (or prepared already), 2 bad input (one `error:` line), 130 interrupted (run
the same command again to continue).
"""

import argparse
import sys

from crossvit_keras.data.shards import DEFAULT_QUALITY, DEFAULT_SHARD_SIZE, DEFAULT_SHORTER_SIDE


def build_parser(prog="crossvit-keras prepare"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write an image folder or a tfds dataset as sharded TFRecords of JPEGs at a bounded size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-set", default="IMNET", help="IMNET (image folder), CIFAR10, CIFAR100 or a tfds name")
    p.add_argument("--data-path", help="IMNET: DIR with train/ and val/; tfds: its data_dir")
    p.add_argument("--tfds-manual-dir", help="imagenet2012: the folder with the ILSVRC2012 tars")
    p.add_argument("--output", required=True, help="the folder to write the shards and shards.json to")
    p.add_argument(
        "--shorter-side",
        type=int,
        default=DEFAULT_SHORTER_SIDE,
        help="larger images are reduced to this shorter side (enough for 240 training and 384 fine-tuning)",
    )
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality of re-encoded images")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard file")
    p.add_argument("--splits", nargs="+", choices=("train", "val"), default=["train", "val"])
    return p


def main(argv=None, prog="crossvit-keras prepare"):
    """Runs the command line; returns the process exit code."""
    from crossvit_keras.logs import setup_logging

    args = build_parser(prog).parse_args(argv)
    setup_logging()
    from crossvit_keras.data.shards import prepare_shards

    try:
        metadata = prepare_shards(
            args.data_set,
            args.data_path,
            args.output,
            shorter_side=args.shorter_side,
            quality=args.quality,
            shard_size=args.shard_size,
            splits=tuple(args.splits),
            manual_dir=args.tfds_manual_dir,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    sizes = ", ".join(
        f"{split} {info['size']} images in {len(info['files'])} shards" for split, info in metadata["splits"].items()
    )
    print(f"{args.output}: {sizes}; train with --data-set shards --data-path {args.output}")
    return 0
