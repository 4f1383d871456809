"""Training and evaluation data with tf.data: DeiT-layout image folders and tensorflow-datasets.

    dataset = open_dataset("IMNET", "path/to/imagenet")        # DIR/train/<class>/*, DIR/val/<class>/*
    dataset = open_dataset("cifar10", tfds_data_dir)            # any tfds image classification dataset
    train = train_dataset(dataset.train, image_size=240, batch_size=64, num_classes=dataset.num_classes)
    val = eval_dataset(dataset.val, image_size=240, batch_size=96, num_classes=dataset.num_classes)

An unreadable or corrupt image never stops an epoch: training skips it, evaluation gives it weight 0;
either way it is logged with its path and counted in `UNREADABLE.count`.

Benchmark of the training augmentation (img/s of wall time, and per core = per CPU-second):

    python -m crossvit_keras.data --bench
"""

import argparse
import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable

import tensorflow as tf

from crossvit_keras import augment
from crossvit_keras.preprocessing import eval_transform

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# --data-set names for a DeiT-layout folder; everything else is a tensorflow-datasets name.
FOLDER_DATASETS = ("IMNET", "folder")
# DeiT's / the official code's --data-set names for datasets that tensorflow-datasets provides.
TFDS_ALIASES = {"CIFAR10": "cifar10", "CIFAR100": "cifar100", "IMNET_TFDS": "imagenet2012"}
# Shuffle buffer for datasets whose records hold the encoded images (tfds), not file names.
BYTES_SHUFFLE_BUFFER = 8192
# A 1 x 1 black PNG: what the evaluation padding decodes.
_BLANK_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    b"\x00\x00\x00\x0cIDATx\x9cc```\x00\x00\x00\x04\x00\x01\xf6\x178U\x00\x00\x00\x00IEND\xaeB`\x82"
)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: `records(shuffle, seed)` gives a tf.data.Dataset of (name, source, label) with
    `source` a file path (`read_files`) or the encoded image bytes; `name` identifies the image in logs."""

    records: Callable
    size: int
    read_files: bool
    description: str


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    class_names: list
    train: Split | None
    val: Split | None

    @property
    def num_classes(self):
        return len(self.class_names)


class UnreadableImages:
    """Counts and logs the images the pipelines skip (thread-safe: tf.data calls it from its threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def report(self, name):
        name = name.numpy().decode("utf-8", "replace") if hasattr(name, "numpy") else str(name)
        with self._lock:
            self.count += 1
            count = self.count
        logger.warning("skipped unreadable or corrupt image %s (%d skipped so far)", name, count)


UNREADABLE = UnreadableImages()


# ----------------------------------------------------------------------------- sources


def scan_image_folder(root):
    """DIR/<class>/**/<image> -> (paths, labels, class_names): classes are the sorted sub-folder
    names (torchvision's ImageFolder, as DeiT uses); files are those with an image extension."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class folders: put each class's images in {root}/<class name>/.")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = []
        for directory, subdirs, files in os.walk(os.path.join(root, name), followlinks=True):
            subdirs.sort()
            found += [os.path.join(directory, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise ValueError(
                f"Class folder {os.path.join(root, name)} has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                "add images or remove the folder."
            )
        paths += found
        labels += [label] * len(found)
    return paths, labels, classes


def _folder_split(paths, labels, description):
    def records(shuffle=False, seed=None):
        dataset = tf.data.Dataset.from_tensor_slices((paths, paths, tf.constant(labels, tf.int64)))
        if shuffle:  # all file names: a full shuffle, different every epoch
            dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        return dataset

    return Split(records, len(paths), True, description)


def folder_dataset(data_path, splits=("train", "val")):
    """DeiT's IMNET layout: DATA_PATH/train/<class>/* and DATA_PATH/val/<class>/*."""
    if not data_path:
        raise ValueError("--data-set IMNET needs --data-path DIR with DIR/train/<class>/* and DIR/val/<class>/*.")
    if not os.path.isdir(data_path):
        raise ValueError(f"--data-path {data_path} is not a directory.")
    for split in splits:
        if not os.path.isdir(os.path.join(data_path, split)):
            raise ValueError(
                f"{data_path} has no {split}/ folder: --data-set IMNET expects {data_path}/train/<class>/* "
                f"and {data_path}/val/<class>/* (DeiT's layout)."
            )
    found = {split: scan_image_folder(os.path.join(data_path, split)) for split in splits}
    class_names = next(iter(found.values()))[2]
    for split, (_, _, names) in found.items():
        if names != class_names:
            missing = sorted(set(class_names) - set(names))
            extra = sorted(set(names) - set(class_names))
            raise ValueError(
                f"{data_path}/{split} has other class folders than {data_path}/{splits[0]}: "
                f"missing {missing[:5]}, extra {extra[:5]}; both splits need the same classes."
            )
    made = {
        split: _folder_split(paths, labels, f"{len(paths)} images in {os.path.join(data_path, split)}")
        for split, (paths, labels, _) in found.items()
    }
    return Dataset(os.path.basename(os.path.normpath(data_path)), class_names, made.get("train"), made.get("val"))


def tfds_dataset(name, data_dir=None, manual_dir=None, splits=("train", "val")):
    """A tensorflow-datasets image classification dataset (features `image` and a ClassLabel
    `label`), prepared on first use. imagenet2012 needs the ILSVRC tars in `manual_dir`
    (default: DATA_DIR/downloads/manual)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset {name!r}: use --data-set IMNET (an image folder), CIFAR10, CIFAR100 "
            "or a tensorflow-datasets image classification name (e.g. imagenet2012, oxford_flowers102)."
        ) from None
    features = builder.info.features
    names = set(features.keys()) if hasattr(features, "keys") else set()
    label = features["label"] if "label" in names else None
    if "image" not in names or not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(f"tfds dataset {name!r} is not an image classification dataset (needs `image` and `label`).")
    if not builder.is_prepared():
        logger.info("preparing tfds dataset %s in %s (once)", name, builder.data_dir)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:  # noqa: BLE001 - any failure to prepare becomes one clear line
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"Cannot prepare tfds dataset {name!r} in {builder.data_dir}: {first[:300]} "
                "(imagenet2012 needs the ILSVRC2012 tars in --tfds-manual-dir; others need internet once)."
            ) from None
    available = builder.info.splits
    split_names = {"train": "train", "val": "validation" if "validation" in available else "test"}
    made = {}
    for split in splits:
        tfds_split = split_names[split]
        if tfds_split not in available:
            raise ValueError(f"tfds dataset {name!r} has no {tfds_split!r} split (it has {sorted(available)}).")

        def records(shuffle=False, seed=None, tfds_split=tfds_split):
            read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed)
            dataset = builder.as_dataset(
                split=tfds_split,
                shuffle_files=shuffle,
                decoders={"image": tfds.decode.SkipDecoding()},
                read_config=read_config,
            )
            dataset = dataset.map(lambda ex: (ex["tfds_id"], ex["image"], ex["label"]))
            if shuffle:
                dataset = dataset.shuffle(BYTES_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
            return dataset

        size = available[tfds_split].num_examples
        made[split] = Split(records, size, False, f"{size} images in tfds {name}:{tfds_split}")
    return Dataset(name, list(label.names), made.get("train"), made.get("val"))


def open_dataset(data_set, data_path=None, manual_dir=None, splits=("train", "val")):
    """--data-set and --data-path as DeiT names them: IMNET (or `folder`) is an image folder at
    data_path; CIFAR10 / CIFAR100 and any other name are tensorflow-datasets (data_path = data_dir)."""
    if data_set in FOLDER_DATASETS:
        return folder_dataset(data_path, splits)
    return tfds_dataset(TFDS_ALIASES.get(data_set, data_set), data_path or None, manual_dir, splits)


# ----------------------------------------------------------------------------- pipelines


def _read_safely(split, decode, fallback):
    """(name, source, label, ...) -> (..., image, ok): `decode(contents)` in a one-element dataset
    whose errors are dropped, so that a corrupt image gives (fallback, False) instead of an error."""

    def safe(name, source, label, *rest):
        def load(source):
            if split.read_files:  # an empty name is evaluation padding: a blank image, never read
                contents = tf.cond(source == "", lambda: tf.constant(_BLANK_PNG), lambda: tf.io.read_file(source))
            else:
                contents = source
            return decode(contents), True

        decoded = tf.data.Dataset.from_tensors(source).map(load).ignore_errors()
        failed = tf.data.Dataset.from_tensors((fallback, False))
        image_and_ok = decoded.concatenate(failed).take(1)
        return image_and_ok.map(lambda image, ok: (name, label, *rest, image, ok))

    return safe


def _report_if_unreadable(name, ok):
    def report():
        tf.py_function(UNREADABLE.report, [name], [])
        return tf.constant(False)

    return tf.cond(ok, lambda: tf.constant(True), report)


def _shard(dataset, input_context):
    if input_context is not None and input_context.num_input_pipelines > 1:
        return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return dataset


def _options(threads=None):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # we shard
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return options


def train_dataset(
    split,
    image_size,
    batch_size,
    num_classes,
    *,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    hflip=0.5,
    aa="rand-m9-mstd0.5-inc1",
    reprob=0.25,
    mixup=None,
    repeated_aug=1,
    input_context=None,
    seed=None,
    threads=None,
):
    """The endless, shuffled training stream of (images [B, S, S, 3] normalised, targets [B, K]).

    batch_size is this pipeline's batch (per replica under tf.distribute). mixup: a
    augment.MixupCutmix (its label smoothing also applies when it mixes nothing); None gives plain
    one-hot targets. repeated_aug > 1 repeats each image that many times in a row with different
    augmentations (DeiT's repeated augmentation). Shards by `input_context` before decoding."""
    mixup = mixup or augment.MixupCutmix(num_classes, 0.0, 0.0, label_smoothing=0.0)
    records = _shard(split.records(shuffle=True, seed=seed), input_context).repeat()
    if repeated_aug > 1:
        records = records.flat_map(lambda *r: tf.data.Dataset.from_tensors(r).repeat(repeated_aug))
    decode = _read_safely(
        split,
        lambda contents: augment.decode_random_crop(contents, image_size, scale, ratio),
        tf.zeros([image_size, image_size, 3]),
    )
    transform = augment.train_image_transform(image_size, scale, ratio, hflip, aa, reprob, seed=seed)
    in_order = repeated_aug > 1  # keeps an image's copies in a row, so they share a batch
    dataset = (
        records.interleave(decode, cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE, deterministic=in_order)
        .filter(lambda name, label, image, ok: _report_if_unreadable(name, ok))
        .map(lambda name, label, image, ok: (transform(image), label), tf.data.AUTOTUNE, deterministic=in_order)
        .batch(batch_size, drop_remainder=True)
        .map(mixup, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset.with_options(_options(threads))


def padded_size(size, global_batch):
    """The evaluation set's size rounded up to whole global batches (the padding has weight 0)."""
    return math.ceil(size / global_batch) * global_batch


def eval_dataset(
    split, image_size, batch_size, num_classes, *, global_batch=None, input_context=None, crop_pct=None, repeat=False
):
    """(images, one-hot labels, weights) in file order, every image once, in whole batches: the set
    is padded to whole global batches with weight-0 images, so all replicas and workers run the same
    steps; unreadable images also get weight 0 (and are logged). Metrics weighted by them are exact.
    repeat=True repeats the passes endlessly (for Keras' fit with validation_steps)."""
    global_batch = global_batch or batch_size
    total = padded_size(split.size, global_batch)
    pads = total - split.size
    records = split.records(shuffle=False).map(lambda name, source, label: (name, source, label, True))
    padding = tf.data.Dataset.from_tensors(
        (tf.constant("padding"), tf.constant("" if split.read_files else _BLANK_PNG), tf.constant(0, tf.int64), False)
    ).repeat(pads)
    records = _shard(records.concatenate(padding), input_context)
    pipelines = input_context.num_input_pipelines if input_context is not None else 1

    def decode(contents):
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    def finish(name, label, valid, image, ok):
        ok = tf.cond(valid, lambda: _report_if_unreadable(name, ok), lambda: tf.constant(False))  # padding: 0
        kwargs = {} if crop_pct is None else {"crop_pct": crop_pct}
        image = tf.ensure_shape(eval_transform(image, image_size, **kwargs), [image_size, image_size, 3])
        return image, tf.one_hot(label, num_classes), tf.cast(ok, tf.float32)

    dataset = (
        records.interleave(
            _read_safely(split, decode, tf.zeros([1, 1, 3], tf.uint8)),
            cycle_length=16,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .apply(tf.data.experimental.assert_cardinality(total // pipelines))
        .map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
    )
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())


# ----------------------------------------------------------------------------- benchmark


def make_benchmark_folder(root, num_images=64, size=(500, 375), classes=4, quality=90):
    """A DeiT-layout folder of JPEGs of about ImageNet's typical size (500 x 375), cut from
    scikit-image's sample photographs. Returns root."""
    import numpy as np
    from PIL import Image
    from skimage import data as samples

    photos = [getattr(samples, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    rng = np.random.default_rng(0)
    width, height = size
    for split in ("train", "val"):
        for i in range(num_images):
            photo = Image.fromarray(photos[i % len(photos)])
            scale = max(width / photo.width, height / photo.height) * rng.uniform(1.0, 1.3)
            photo = photo.resize((math.ceil(photo.width * scale), math.ceil(photo.height * scale)), Image.BICUBIC)
            left = rng.integers(0, photo.width - width + 1)
            top = rng.integers(0, photo.height - height + 1)
            directory = os.path.join(root, split, f"class_{i % classes}")
            os.makedirs(directory, exist_ok=True)
            photo.crop((left, top, left + width, top + height)).save(
                os.path.join(directory, f"{i:05d}.jpg"), quality=quality
            )
    return root


def benchmark_train_pipeline(
    data_path, image_size=240, batch_size=32, batches=20, threads=1, aa="rand-m9-mstd0.5-inc1"
):
    """Speed of the full training pipeline (read, decode+crop, flip, RandAugment, normalise,
    random erasing, MixUp/CutMix) with `threads` tf.data threads, after a warm-up: returns
    (images per second of wall time, images per CPU-second of this process = img/s per core)."""
    import time

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


def main(argv=None):
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m crossvit_keras.data", description="Benchmark the training augmentation pipeline."
    )
    parser.add_argument("--bench", action="store_true", help="measure img/s of the training pipeline")
    parser.add_argument("--data-path", help="a DeiT-layout folder (default: JPEGs made from skimage samples)")
    parser.add_argument("--input-size", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--aa", default="rand-m9-mstd0.5-inc1")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        data_path = args.data_path or make_benchmark_folder(scratch)
        for threads in args.threads:
            rate, per_core = benchmark_train_pipeline(
                data_path, args.input_size, args.batch_size, args.batches, threads, args.aa
            )
            print(
                f"training pipeline, {args.input_size} px crops, aa={args.aa}, {threads} tf.data thread(s): "
                f"{rate:.1f} img/s wall, {per_core:.1f} img/s per core (images / process CPU-seconds)",
                flush=True,
            )


if __name__ == "__main__":
    main()
