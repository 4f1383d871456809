"""Where the images come from: DeiT-layout image folders and tensorflow-datasets.

    dataset = open_dataset("IMNET", "path/to/imagenet")        # DIR/train/<class>/*, DIR/val/<class>/*
    dataset = open_dataset("cifar10", tfds_data_dir)            # any tfds image classification dataset

A `Dataset` has class names and a `Split` per split; `crossvit_keras.data.pipeline` turns a split
into batches.
"""

import dataclasses
import json
import logging
import os
from collections.abc import Callable

import tensorflow as tf

from crossvit_keras.logs import first_line

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# --data-set names for a DeiT-layout folder; everything else is a tensorflow-datasets name.
FOLDER_DATASETS = ("IMNET", "folder")
# --data-set name for the TFRecord shards that `crossvit-keras prepare` writes (crossvit_keras.data.shards).
SHARDS_DATASET = "shards"
METADATA = "shards.json"
FORMAT = "crossvit-keras-shards-1"
# DeiT's / the official code's --data-set names for datasets that tensorflow-datasets provides.
TFDS_ALIASES = {"CIFAR10": "cifar10", "CIFAR100": "cifar100", "IMNET_TFDS": "imagenet2012"}
# Shuffle buffer for datasets whose records hold the encoded images (tfds), not file names.
BYTES_SHUFFLE_BUFFER = 8192


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: `records(shuffle, seed)` gives a tf.data.Dataset of (name, source, label) with
    `source` a file path (`read_files`) or the encoded image bytes; `name` identifies the image in logs.
    `shards_by_file`: records(shuffle, seed, input_context) gives each input pipeline its own files."""

    records: Callable
    size: int
    read_files: bool
    description: str
    shards_by_file: bool = False


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    class_names: list
    train: Split | None
    val: Split | None

    @property
    def num_classes(self):
        return len(self.class_names)


def printable(path):
    """A file name (str or bytes) for a message: as it is when it is UTF-8, else as its bytes
    (b'train/cat/caf\\xe9.jpg')."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return repr(raw)


def scan_image_folder(root):
    """DIR/<class>/**/<image> -> (paths, labels, class_names): classes are the sorted sub-folder
    names (torchvision's ImageFolder, as DeiT uses); files are those with an image extension, in
    os.walk's order.

    Links are followed and each image is counted once: a folder or image reached again (a loop, or
    a second link to it) is skipped with a warning naming the links; a link that leads outside
    `root`, or that puts one image or folder in two classes, is a ValueError naming it. File names
    that are not UTF-8 are kept (the pipelines read paths as bytes; messages show them as bytes); a
    class folder's name must be UTF-8 (class names are written into the model's files)."""
    real_root = os.path.realpath(root)
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class folders: put each class's images in {root}/<class name>/.")
    for name in classes:
        if printable(name) != name:
            raise ValueError(
                f"Class folder {printable(os.path.join(root, name))} has a name that is not UTF-8: rename it "
                "(class names are written into the model's files)."
            )
    owners = {}  # real path of every folder and image scanned -> its class

    def first_visit(path, real, label, link=True):
        """Whether `real` (path's real path) is reached for the first time; a ValueError if it is outside
        root or in another class. link=False: a plain file in a folder already checked."""
        if link and os.path.commonpath([real, real_root]) != real_root:
            raise ValueError(
                f"{printable(path)} leads to {printable(real)}, outside {printable(root)}: links must stay inside the "
                "split's folder (so that no image is counted twice or shared between splits); copy the files "
                "in, or hard-link them (cp -al)."
            )
        if real == real_root:  # a link back to the split's folder: a loop
            return False
        if real not in owners:
            owners[real] = label
            return True
        if owners[real] != label:
            raise ValueError(
                f"{printable(path)} in class {classes[label]!r} is {printable(real)}, also in class "
                f"{classes[owners[real]]!r}: an image can have one label only; remove the link."
            )
        return False

    repeated, broken = [], []
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = []
        top = os.path.join(root, name)
        stack = [(top, os.path.realpath(top))]
        while stack:  # os.walk(followlinks=True)'s order: a folder's images, then its sub-folders in turn
            directory, real_directory = stack.pop()
            if not first_visit(directory, real_directory, label):
                repeated.append(directory)
                continue
            subdirs = []
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                link = entry.is_symlink()
                real = os.path.realpath(entry.path) if link else os.path.join(real_directory, entry.name)
                if entry.is_dir():
                    subdirs.append((entry.path, real))
                elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                elif not entry.is_file():
                    broken.append(entry.path)
                elif first_visit(entry.path, real, label, link):
                    found.append(entry.path)
                else:
                    repeated.append(entry.path)
            stack.extend(reversed(subdirs))
        if not found:
            raise ValueError(
                f"Class folder {os.path.join(root, name)} has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                "add images or remove the folder."
            )
        paths += found
        labels += [label] * len(found)
    for what, names in (
        ("link(s) to a folder or image already counted (a loop or a repeat)", repeated),
        ("broken link(s)", broken),
    ):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            shown = ", ".join(printable(n) for n in names[:3])
            logger.warning("%s: skipped %d %s: %s%s", root, len(names), what, shown, more)
    return paths, labels, classes


def _folder_split(paths, labels, description):
    def records(shuffle=False, seed=None):
        names = tf.constant([os.fsencode(path) for path in paths])  # bytes: names need not be UTF-8
        dataset = tf.data.Dataset.from_tensor_slices((names, names, tf.constant(labels, tf.int64)))
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


_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "name": tf.io.FixedLenFeature([], tf.string),
}


def read_shards_metadata(directory):
    path = os.path.join(directory, METADATA)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a crossvit-keras shards file (format {metadata.get('format')!r}).")
    return metadata


def _parse(serialized):
    example = tf.io.parse_single_example(serialized, _FEATURES)
    return example["name"], example["image"], example["label"]


def _shards_split(directory, files, size, description):
    paths = [os.path.join(directory, name) for name in files]

    def records(shuffle=False, seed=None, input_context=None):
        """(name, JPEG bytes, label); training (shuffle=True) reads the files in a new order each
        epoch, 16 at a time, through a shuffle buffer; else the records are in the split's order.
        With an `input_context` of several input pipelines each reads its own files (or its own
        records, if there are fewer files than pipelines)."""
        pipelines = input_context.num_input_pipelines if input_context is not None else 1
        by_file = pipelines > 1 and len(paths) >= pipelines
        names = tf.data.Dataset.from_tensor_slices(paths)
        if by_file:
            names = names.shard(pipelines, input_context.input_pipeline_id)
        if shuffle:
            names = names.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        if shuffle:
            dataset = names.interleave(
                tf.data.TFRecordDataset, cycle_length=min(16, len(paths)), num_parallel_calls=tf.data.AUTOTUNE
            )
        else:  # the files one after another: the split's order
            dataset = names.flat_map(tf.data.TFRecordDataset)
        if pipelines > 1 and not by_file:
            dataset = dataset.shard(pipelines, input_context.input_pipeline_id)
        dataset = dataset.map(_parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
        if shuffle:
            dataset = dataset.shuffle(BYTES_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        return dataset

    return Split(records, size, False, description, shards_by_file=True)


def shards_dataset(data_path, splits=("train", "val")):
    """The Dataset that `prepare_shards` wrote to data_path (--data-set shards)."""
    if not data_path or not os.path.isdir(data_path):
        raise ValueError(
            f"--data-set shards needs --data-path DIR written by `crossvit-keras prepare`, got {data_path}."
        )
    metadata = read_shards_metadata(data_path)
    if metadata is None:
        raise ValueError(
            f"{data_path} has no {METADATA}: write it with `crossvit-keras prepare ... --output {data_path}`."
        )
    if not metadata.get("complete"):
        raise ValueError(
            f"{data_path} is only partly prepared: rerun the `crossvit-keras prepare` command to finish it."
        )
    made = {}
    for split in splits:
        if split not in metadata["splits"]:
            raise ValueError(f"{data_path} has no {split} shards (it has {sorted(metadata['splits'])}).")
        info = metadata["splits"][split]
        missing = [name for name in info["files"] if not os.path.isfile(os.path.join(data_path, name))]
        if missing:
            raise ValueError(f"{data_path} misses {len(missing)} shard files ({missing[0]}, ...): prepare it again.")
        description = f"{info['size']} images in {len(info['files'])} shards in {data_path}"
        made[split] = _shards_split(data_path, info["files"], info["size"], description)
    return Dataset(
        os.path.basename(os.path.normpath(data_path)), metadata["class_names"], made.get("train"), made.get("val")
    )


def open_dataset(data_set, data_path=None, manual_dir=None, splits=("train", "val")):
    """--data-set and --data-path as DeiT names them: IMNET (or `folder`) is an image folder at
    data_path; CIFAR10 / CIFAR100 and any other name are tensorflow-datasets (data_path = data_dir);
    `shards` is a folder written by `crossvit-keras prepare`."""
    if data_set == SHARDS_DATASET:
        return shards_dataset(data_path, splits)
    if data_set in FOLDER_DATASETS and data_path and os.path.isfile(os.path.join(data_path, "shards.json")):
        raise ValueError(f"{data_path} holds prepared shards (shards.json): use --data-set shards.")
    if data_set in FOLDER_DATASETS:
        return folder_dataset(data_path, splits)
    return tfds_dataset(TFDS_ALIASES.get(data_set, data_set), data_path or None, manual_dir, splits)
