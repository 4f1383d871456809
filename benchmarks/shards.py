"""Decode cost of prepared shards against the original files: images per CPU-second of reading
and decoding the training crop (tf.io.read_file or the TFRecord shards, then the pipeline's
decode-and-crop of a random resized crop to --input-size), with one tf.data thread.

    python benchmarks/shards.py                                   # held-out photographs, 300-900 px
    python benchmarks/shards.py --data-path path/to/imagenet --images 2000 --json shards.json

(from the repository root). Without --data-path it makes a DeiT-layout folder of JPEGs with
ImageNet's spread of sizes and compression (crossvit_keras.data.samples.make_photo_folder) in a
temporary directory. It prepares the shards (`crossvit-keras prepare`, timed), then reads both
sources in alternating rounds in this one process and reports the median per source.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import common


def decode_rate(split, image_size, limit):
    """(images per CPU-second, per wall second) of read + decode_random_crop over `limit` images."""
    import tensorflow as tf

    from crossvit_keras.data import augment

    def decode(name, source, label):
        contents = tf.io.read_file(source) if split.read_files else source
        return augment.decode_random_crop(contents, image_size), label

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    dataset = split.records(shuffle=False).take(limit).map(decode, num_parallel_calls=1).with_options(options)
    count = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in dataset:
        count += 1
    return count / (time.process_time() - cpu_start), count / (time.perf_counter() - start)


def folder_bytes(paths):
    return sum(os.path.getsize(path) for path in paths)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python benchmarks/shards.py", description="Decode cost of prepared shards vs the original files."
    )
    parser.add_argument("--data-path", help="a DeiT-layout folder (default: held-out photographs, 300-900 px)")
    parser.add_argument("--images", type=int, default=256, help="images to read per round (and to make)")
    parser.add_argument("--input-size", type=int, default=240)
    parser.add_argument("--shorter-side", type=int, help="the shards' bound (default: crossvit-keras prepare's)")
    parser.add_argument("--rounds", type=int, default=3)
    common.add_json_argument(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from crossvit_keras.data import open_dataset
    from crossvit_keras.data.samples import make_photo_folder
    from crossvit_keras.data.shards import DEFAULT_SHORTER_SIDE, prepare_shards

    shorter_side = args.shorter_side or DEFAULT_SHORTER_SIDE
    with tempfile.TemporaryDirectory() as temporary:
        data_path = args.data_path or make_photo_folder(os.path.join(temporary, "photos"), num_images=args.images)
        files = open_dataset("IMNET", data_path, splits=("train",)).train
        output = os.path.join(temporary, "shards")
        start, cpu_start = time.perf_counter(), time.process_time()
        metadata = prepare_shards("IMNET", data_path, output, shorter_side=shorter_side, splits=("train",))
        prepare_wall, prepare_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        shards = open_dataset("shards", output, splits=("train",)).train
        limit = min(args.images, files.size)
        paths = [source.decode() for _, source, _ in files.records().take(limit).as_numpy_iterator()]
        sizes = {
            "files": folder_bytes(paths) / limit,
            "shards": folder_bytes([os.path.join(output, f) for f in metadata["splits"]["train"]["files"]])
            / shards.size,
        }
        rates = {"files": [], "shards": []}
        decode_rate(files, args.input_size, 8), decode_rate(shards, args.input_size, 8)  # warm-up: tracing
        for index in range(args.rounds):
            for name, split in (("files", files), ("shards", shards)):
                rates[name].append(decode_rate(split, args.input_size, limit))
            common.log(
                f"round {index + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1][0]:.0f}" for k, v in rates.items())
            )
    median = {name: [statistics.median(r[i] for r in values) for i in (0, 1)] for name, values in rates.items()}
    results = {
        "cpu": common.cpu_name(),
        "images": limit,
        "input_size": args.input_size,
        "shorter_side": shorter_side,
        "prepare_img_per_s": files.size / prepare_wall,
        "prepare_img_per_core_s": files.size / prepare_cpu,
        **{f"{name}_img_per_core_s": value[0] for name, value in median.items()},
        **{f"{name}_img_per_s": value[1] for name, value in median.items()},
        **{f"{name}_kb_per_image": value / 1e3 for name, value in sizes.items()},
    }
    source = (
        args.data_path or f"{limit} held-out photographs (shorter side 300-600 px, longer up to 900, quality 75-95)"
    )
    lines = [
        f"### Decode cost, {source}, crop to {args.input_size}, one tf.data thread; {common.cpu_name()}",
        "",
        "| source | img per CPU-second | img/s | kB per image |",
        "|---|---:|---:|---:|",
        *(
            f"| {label} | {median[name][0]:.0f} | {median[name][1]:.0f} | {sizes[name] / 1e3:.0f} |"
            for name, label in (("files", "original files"), ("shards", f"shards, shorter side {shorter_side}"))
        ),
        "",
        f"shards / files: {median['shards'][0] / median['files'][0]:.2f}x per CPU-second; preparing the shards: "
        f"{results['prepare_img_per_core_s']:.0f} img per CPU-second.",
    ]
    common.print_report(lines, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
