"""Speed of the training input pipeline against timm's, side by side in one run: images per
CPU-second of the process (per core) and per second of wall time, with DeiT's whole recipe (decode,
random resized crop, flip, RandAugment rand-m9-mstd0.5-inc1, normalisation, random erasing 0.25,
Mixup 0.8 / CutMix 1.0 with label smoothing 0.1).

    python benchmarks/input_pipeline.py --threads 1 --batches 20 --timm-python PYTHON --json out.json
    python benchmarks/input_pipeline.py --data-path path/to/imagenet --aug-device host --json host.json
    python benchmarks/input_pipeline.py --data-path path/to/shards --shards --aug-device accelerator

(from the repository root; `--help` lists the flags). Modes (--aug-device): `host`, the whole recipe
in tf.data; `accelerator`, what the host does when the batch augmentations run in the training
step (read, decode the crop, flip, uint8). `--threads N` gives tf.data a private pool of N threads
and TensorFlow's intra-op pool N threads (each op's share of the cores, as torch.set_num_threads
gives timm's). `--timm-python PYTHON` also times timm's pipeline
(its create_transform with the same recipe, then its Mixup, in one process with one thread) with
that interpreter, which needs torch and timm (`pip install torch timm`). Without --data-path the
images are photographs of ImageNet's spread of sizes and compression (crossvit_keras.data.
make_photo_folder: sides 300-900 px, JPEG quality 75-95) in a temporary folder. Each measurement:
3 warm-up batches, then --batches batches; --rounds repeats every measurement in turn (the median
is reported), so that a change in the machine's load hits all pipelines alike.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

TIMM_PIPELINE = r"""
import glob, json, os, sys, time
import torch
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform

# Pillow >= 10 refuses posterize(img, 0), which timm's PosterizeIncreasing asks for at magnitude 10
# (m9 with mstd0.5 reaches it); older Pillow returned black, as crossvit_keras does.
_posterize = ImageOps.posterize
ImageOps.posterize = lambda img, bits: _posterize(img, bits) if bits >= 1 else img.point(lambda _: 0)

root, size, batch_size, batches, aa = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(1)
files = sorted(glob.glob(os.path.join(root, "*", "*")))
classes = sorted({os.path.basename(os.path.dirname(f)) for f in files})
labels = [classes.index(os.path.basename(os.path.dirname(f))) for f in files]
transform = create_transform(size, is_training=True, auto_augment=None if aa == "none" else aa,
                             interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1)
mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=len(classes))
order = torch.randperm(len(files)).tolist()
position = 0

def batch():
    global position
    images, targets = [], []
    for _ in range(batch_size):
        i = order[position % len(order)]
        position += 1
        with open(files[i], "rb") as f:
            images.append(transform(Image.open(f).convert("RGB")))
        targets.append(labels[i])
    return mixup(torch.stack(images), torch.tensor(targets))

for _ in range(3):
    batch()
start, cpu = time.perf_counter(), time.process_time()
for _ in range(batches):
    batch()
count = batches * batch_size
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"img_per_s": count / wall, "img_per_core_s": count / cpu}))
"""


def open_train_split(data_path, shards):
    from crossvit_keras import data

    return data.open_dataset("shards" if shards else "IMNET", data_path, splits=("train",))


class OwnPipeline:
    """crossvit_keras.data.train_dataset in one mode, made once, timed as often as asked."""

    def __init__(self, dataset, aug_device, image_size, batch_size, threads, aa):
        import tensorflow as tf

        from crossvit_keras.data import augment, train_dataset

        self.tf = tf

        mixup = augment.MixupCutmix(dataset.num_classes)
        stream = train_dataset(
            dataset.train,
            image_size,
            batch_size,
            dataset.num_classes,
            aa=aa,
            mixup=mixup,
            threads=threads,
            aug_device=aug_device,
        )
        self.stream = stream
        self.batch_size = batch_size

    def measure(self, batches):
        # A fresh iterator each time, dropped after: no other pipeline's threads refill their
        # buffers while this one is timed (process CPU time counts every thread).
        iterator = iter(self.stream)
        for _ in range(3):  # warm-up: thread start, the buffers filled
            next(iterator)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            images, _ = next(iterator)
        self.tf.nest.flatten(images)[0].numpy()  # accelerator mode: (canvases, crop sizes)
        count = batches * self.batch_size
        result = {
            "img_per_s": count / (time.perf_counter() - start),
            "img_per_core_s": count / (time.process_time() - cpu),
        }
        del iterator
        gc.collect()
        return result


def measure_timm(python, folder, image_size, batch_size, batches, aa):
    command = [python, "-c", TIMM_PIPELINE, folder, str(image_size), str(batch_size), str(batches), aa]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise SystemExit(
            f"--timm-python {python}: timm's pipeline failed (it needs `pip install torch timm`):\n"
            + result.stderr[-2000:]
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python benchmarks/input_pipeline.py",
        description="Benchmark the training input pipeline (per CPU-second and per wall second), optionally "
        "side by side with timm's (--timm-python; needs `pip install torch timm`).",
    )
    parser.add_argument("--data-path", help="a DeiT-layout folder (default: generated photographs, 300-900 px)")
    parser.add_argument("--shards", action="store_true", help="--data-path holds prepared TFRecord shards")
    parser.add_argument("--aug-device", nargs="+", choices=("host", "accelerator"), default=["host", "accelerator"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="tf.data's private pool and TensorFlow's intra-op pool, as torch.set_num_threads (timm: one thread)",
    )
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=240)
    parser.add_argument("--aa", default="rand-m9-mstd0.5-inc1")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every measurement, in turn; report medians")
    parser.add_argument("--images", type=int, default=256, help="generated photographs (without --data-path)")
    parser.add_argument("--timm-python", help="a Python with torch and timm: also time timm's pipeline")
    parser.add_argument("--json", help="write the results to this file")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    # the threads each op may split over, as torch.set_num_threads(1) gives timm: TensorFlow's kernels
    # otherwise split over its intra-op pool (all cores), whatever tf.data's own pool
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from crossvit_keras.data import make_photo_folder

    with tempfile.TemporaryDirectory() as scratch:
        if args.data_path:
            data_path = args.data_path
        elif args.shards:
            raise SystemExit("--shards needs --data-path: a folder written by `crossvit-keras prepare`.")
        else:
            print(f"writing {args.images} photographs to a temporary folder ...", flush=True)
            data_path = make_photo_folder(scratch, num_images=args.images)
        dataset = open_train_split(data_path, args.shards)
        pipelines = {
            mode: OwnPipeline(dataset, mode, args.input_size, args.batch_size, args.threads, args.aa)
            for mode in args.aug_device
        }
        measured = {name: [] for name in [*pipelines, *(["timm"] if args.timm_python else [])]}
        for _ in range(args.rounds):
            for mode, pipeline in pipelines.items():
                measured[mode].append(pipeline.measure(args.batches))
            if args.timm_python:
                if args.shards:
                    raise SystemExit("--timm-python reads image folders; give it with a folder, not --shards.")
                train = os.path.join(data_path, "train")
                measured["timm"].append(
                    measure_timm(args.timm_python, train, args.input_size, args.batch_size, args.batches, args.aa)
                )
    results = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("img_per_core_s", "img_per_s")}
        for name, runs in measured.items()
    }
    report = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "command": "python benchmarks/input_pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "rounds": args.rounds,
        "input_size": args.input_size,
        "aa": args.aa,
        **results[args.aug_device[0]],  # the first mode's figures at the top level
        "results": results,
    }
    for name, result in results.items():
        line = f"{name:12s} {result['img_per_core_s']:7.1f} img per CPU-second  {result['img_per_s']:7.1f} img/s wall"
        if "timm" in results and name != "timm":
            ratio = result["img_per_core_s"] / results["timm"]["img_per_core_s"]
            report.setdefault("vs_timm_per_core", {})[name] = ratio
            line += f"  ({ratio:.2f}x timm's per core)"
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
