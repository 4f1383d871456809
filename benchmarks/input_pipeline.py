"""Speed of the training input pipeline: read, decode+crop, flip, RandAugment, normalise, random
erasing, MixUp/CutMix, in images per second of wall time and per core (per CPU-second).

    python benchmarks/input_pipeline.py                          # sample JPEGs, 1 and all tf.data threads
    python benchmarks/input_pipeline.py --data-path path/to/imagenet --threads 1 2 4

(from the repository root; `--help` lists the flags). Without --data-path it times a DeiT-layout
folder of JPEGs of about ImageNet's typical size (500 x 375), cut from scikit-image's sample
photographs (crossvit_keras.data.make_sample_folder) in a temporary directory. For each
--threads value: a warm-up of 3 batches (tracing, thread start), then --batches batches.
"""

import argparse
import logging
import os
import sys
import tempfile
import time


def benchmark_train_pipeline(
    data_path, image_size=240, batch_size=32, batches=20, threads=1, aa="rand-m9-mstd0.5-inc1"
):
    """Speed of the full training pipeline (read, decode+crop, flip, RandAugment, normalise,
    random erasing, MixUp/CutMix) with `threads` tf.data threads, after a warm-up: returns
    (images per second of wall time, images per CPU-second of this process = img/s per core)."""
    from crossvit_keras.data import augment, open_dataset, train_dataset

    dataset = open_dataset("IMNET", data_path, splits=("train",))
    mixup = augment.MixupCutmix(dataset.num_classes)
    stream = train_dataset(
        dataset.train, image_size, batch_size, dataset.num_classes, aa=aa, mixup=mixup, threads=threads
    )
    iterator = iter(stream)
    for _ in range(3):  # warm-up: tracing, thread start
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        images, _ = next(iterator)
    images.numpy()
    count = batches * batch_size
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu_start)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python benchmarks/input_pipeline.py", description="Benchmark the training augmentation pipeline."
    )
    parser.add_argument("--data-path", help="a DeiT-layout folder (default: JPEGs made from skimage samples)")
    parser.add_argument("--input-size", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--aa", default="rand-m9-mstd0.5-inc1")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from crossvit_keras.data import make_sample_folder

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        data_path = args.data_path or make_sample_folder(scratch)
        for threads in args.threads:
            rate, per_core = benchmark_train_pipeline(
                data_path, args.input_size, args.batch_size, args.batches, threads, args.aa
            )
            print(
                f"training pipeline, {args.input_size} px crops, aa={args.aa}, {threads} tf.data thread(s): "
                f"{rate:.1f} img/s wall, {per_core:.1f} img/s per core (images / process CPU-seconds)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
