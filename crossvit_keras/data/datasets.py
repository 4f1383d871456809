"""Where the images come from: DeiT-layout image folders and tensorflow-datasets.

    dataset = open_dataset("IMNET", "path/to/imagenet")        # DIR/train/<class>/*, DIR/val/<class>/*
    dataset = open_dataset("cifar10", tfds_data_dir)            # any tfds image classification dataset

A `Dataset` has class names and a `Split` per split; `crossvit_keras.data.pipeline` turns a split
into batches.
"""

import dataclasses
import logging
import os
from collections.abc import Callable

import tensorflow as tf

from crossvit_keras.logs import first_line

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# --data-set names for a DeiT-layout folder; everything else is a tensorflow-datasets name.
FOLDER_DATASETS = ("IMNET", "folder")
# DeiT's / the official code's --data-set names for datasets that tensorflow-datasets provides.
TFDS_ALIASES = {"CIFAR10": "cifar10", "CIFAR100": "cifar100", "IMNET_TFDS": "imagenet2012"}
# Shuffle buffer for datasets whose records hold the encoded images (tfds), not file names.
BYTES_SHUFFLE_BUFFER = 8192


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
            first = first_line(error)
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
