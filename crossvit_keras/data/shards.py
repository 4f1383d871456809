"""Prepared shards: an image folder or a tensorflow-datasets dataset as sharded TFRecord files of
JPEGs at a bounded size, which train faster than the original files (fewer, larger reads; no
decoding of 2000-pixel photographs only to crop 240 pixels out of them).

    prepare_shards("IMNET", "/data/imagenet", "/data/imagenet-shards")   # or crossvit-keras prepare
    dataset = open_dataset("shards", "/data/imagenet-shards")   # crossvit_keras.data.datasets reads them

OUTPUT/shards.json holds the class names, the settings and each split's files and sizes;
OUTPUT/<split>-<index>-of-<count>.tfrecord hold tf.train.Examples with `image` (JPEG bytes),
`label` (int64) and `name` (the source file or tfds id). An image whose shorter side is above
`shorter_side` is resized (antialiased bicubic) to it and re-encoded; a JPEG at most that size is
kept byte for byte; other formats are re-encoded. The training split is written in a fixed
random order (each shard holds all classes), the validation split in its order.

Every shard is written beside its place and renamed when complete, so a reader never sees half
of one; a run that stops (Ctrl-C, a full disk) continues where it stopped when run again with
the same arguments.
"""

import json
import logging
import os

import tensorflow as tf

from crossvit_keras.atomic import atomic_path, check_writable
from crossvit_keras.data import image_header
from crossvit_keras.data.datasets import (  # the reader lives with the other sources
    FORMAT,
    METADATA,
    SHARDS_DATASET,
    open_dataset,
    read_shards_metadata,
)

logger = logging.getLogger(__name__)

# 448 = 384 / sqrt(4/3 * 0.54): the mean random resized crop (area 0.54 of a 4:3 photograph) of the
# paper's 384 fine-tuning is not upsampled, and 384's centre crop is never; ImageNet's typical
# photograph (500 x 375) is kept as is, only the larger ones are reduced.
DEFAULT_SHORTER_SIDE = 448
DEFAULT_QUALITY = 90  # re-encoding quality (PIL's / FFCV's usual 90)
DEFAULT_SHARD_SIZE = 1024  # images per shard: ImageNet's train split in 1,252 files of ~100 MB
SEED = 0  # the training split's fixed writing order


def bounded_jpeg(contents, shorter_side, quality=DEFAULT_QUALITY):
    """Encoded image bytes -> JPEG bytes whose shorter side is at most `shorter_side`: a JPEG that
    small is returned unchanged, anything else is decoded, reduced (antialiased bicubic, never
    enlarged) and encoded at `quality`."""

    def reencode():
        # a decompression bomb is refused from its header, before decoding (skipped and logged)
        problem = image_header.size_problem(contents)
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(problem, ""), [problem])]):
            image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        shape = tf.shape(image)[:2]
        scale = tf.minimum(1.0, shorter_side / tf.cast(tf.reduce_min(shape), tf.float32))
        size = tf.maximum(1, tf.cast(tf.round(tf.cast(shape, tf.float32) * scale), tf.int32))
        image = tf.cond(
            scale < 1.0,
            lambda: tf.cast(
                tf.round(tf.clip_by_value(tf.image.resize(image, size, "bicubic", antialias=True), 0, 255)), tf.uint8
            ),
            lambda: image,
        )
        return tf.io.encode_jpeg(image, quality=quality)

    def small_jpeg():
        return tf.reduce_min(tf.image.extract_jpeg_shape(contents)[:2]) <= shorter_side

    keep = tf.cond(tf.io.is_jpeg(contents), small_jpeg, lambda: tf.constant(False))
    return tf.cond(keep, lambda: contents, reencode)


def _example(name, image, label):
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _split_records(split, shuffle, root):
    """The split's (name, source, label) in writing order: a folder's files (named relative to
    `root`) in a fixed random order for training (tfds writes its splits shuffled already), else in
    their order."""
    if not split.read_files:
        return split.records(shuffle=False)
    import numpy as np

    names, sources, labels = zip(*split.records(shuffle=False).as_numpy_iterator(), strict=True)
    names = [os.path.relpath(os.fsdecode(name), root) for name in names]
    order = np.random.default_rng(SEED).permutation(len(names)) if shuffle else np.arange(len(names))
    return tf.data.Dataset.from_tensor_slices(
        (np.array(names, object)[order], np.array(sources, object)[order], np.array(labels, np.int64)[order])
    )


def _shard_name(split, index, count):
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _write_metadata(directory, metadata):
    with atomic_path(os.path.join(directory, METADATA)) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1)


def prepare_shards(
    data_set,
    data_path,
    output_dir,
    *,
    shorter_side=DEFAULT_SHORTER_SIDE,
    quality=DEFAULT_QUALITY,
    shard_size=DEFAULT_SHARD_SIZE,
    splits=("train", "val"),
    manual_dir=None,
    progress=True,
):
    """Writes `open_dataset(data_set, data_path)`'s splits to `output_dir` as sharded TFRecords of
    JPEGs whose shorter side is at most `shorter_side`, with OUTPUT_DIR/shards.json. Shards that
    exist already (an earlier, interrupted run with the same settings) are kept. Returns the
    metadata. Unreadable images are skipped (logged) and not counted in the sizes."""
    from tqdm import tqdm

    if shorter_side < 32:
        raise ValueError(f"--shorter-side must be at least 32 pixels, got {shorter_side}.")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be in [1, 100], got {quality}.")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}.")
    if data_set == SHARDS_DATASET:
        raise ValueError("--data-set shards is already prepared; give the original image folder or tfds dataset.")
    dataset = open_dataset(data_set, data_path, manual_dir, splits)
    check_writable(output_dir)
    settings = {"source": f"{data_set}:{data_path or ''}", "shorter_side": shorter_side, "quality": quality}
    settings["shard_size"] = shard_size
    settings["images"] = {split: getattr(dataset, split).size for split in splits}
    old = read_shards_metadata(output_dir)
    if old is not None and old["settings"] != settings:
        raise ValueError(
            f"{output_dir} holds shards made with other settings ({old['settings']}); "
            "choose another output directory or remove it."
        )
    metadata = {"format": FORMAT, "settings": settings, "class_names": dataset.class_names, "splits": {}}
    if old is not None and old.get("complete"):
        logger.info("%s is prepared already (%s)", output_dir, METADATA)
        return old
    # the shards an earlier run finished, with their sizes
    done = {}
    for info in (old or {}).get("splits", {}).values():
        done.update(zip(info["files"], info["sizes"], strict=True))
    for split_name in splits:
        split = getattr(dataset, split_name)
        count = max(1, -(-split.size // shard_size))
        files = [_shard_name(split_name, index, count) for index in range(count)]
        sizes = {}
        for name in files:
            path = os.path.join(output_dir, name)
            if os.path.isfile(path):  # written by an earlier run (counted, if it stopped before noting it)
                sizes[name] = done[name] if name in done else sum(1 for _ in tf.data.TFRecordDataset(path))
        todo = [index for index, name in enumerate(files) if name not in sizes]
        bar = tqdm(total=split.size, unit="image", desc=f"{split_name} shards", disable=None if progress else True)
        with bar:
            bar.update(sum(min(shard_size, split.size - i * shard_size) for i in range(count) if i not in todo))
            records = _split_records(split, split_name == "train", data_path or "")
            for index, written in _write_shards(records, split.read_files, todo, files, output_dir, settings, bar):
                sizes[files[index]] = written
                bar.update(min(shard_size, split.size - index * shard_size) - written)  # the skipped ones
                info = {"files": files, "sizes": [sizes.get(name, 0) for name in files]}
                _write_metadata(output_dir, {**metadata, "splits": {**metadata["splits"], split_name: info}})
        info = {"files": files, "sizes": [sizes[name] for name in files]}
        metadata["splits"][split_name] = {**info, "size": sum(info["sizes"])}
        skipped = split.size - metadata["splits"][split_name]["size"]
        if skipped:
            logger.warning("%s: skipped %d unreadable images of %d", split_name, skipped, split.size)
    metadata["complete"] = True
    _write_metadata(output_dir, metadata)
    return metadata


def _write_shards(records, read_files, todo, files, output_dir, settings, bar):
    """Writes the shards numbered `todo` (ascending), each atomically, from one ordered pass over
    `records`; yields (index, images written) after each."""
    shard_size, shorter_side, quality = settings["shard_size"], settings["shorter_side"], settings["quality"]
    wanted = tf.constant(todo or [-1], tf.int64)

    def convert(index, record):
        name, source, label = record
        contents = tf.io.read_file(source) if read_files else source
        return index // shard_size, name, bounded_jpeg(contents, shorter_side, quality), label

    converted = (
        records.enumerate()
        .filter(lambda index, record: tf.reduce_any(tf.equal(index // shard_size, wanted)))
        .map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors(log_warning=True)  # an unreadable image is logged and left out
        .prefetch(tf.data.AUTOTUNE)
    )
    stream = converted.as_numpy_iterator()
    pending = next(stream, None)
    for index in todo:
        written = 0
        with (
            atomic_path(os.path.join(output_dir, files[index])) as temporary,
            tf.io.TFRecordWriter(temporary) as writer,
        ):
            while pending is not None and pending[0] == index:
                _, name, image, label = pending
                writer.write(_example(name, image, int(label)))
                written += 1
                bar.update(1)
                pending = next(stream, None)
        yield index, written
