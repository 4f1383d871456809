"""The training and evaluation input pipelines with tf.data.

    dataset = open_dataset("IMNET", "path/to/imagenet")
    train = train_dataset(dataset.train, image_size=240, batch_size=64, num_classes=dataset.num_classes)
    val = eval_dataset(dataset.val, image_size=240, batch_size=96, num_classes=dataset.num_classes)

An unreadable or corrupt image never stops an epoch: training skips it, evaluation gives it weight 0;
either way it is logged with its path and counted in `UNREADABLE.count`.
"""

import logging
import math
import threading

import tensorflow as tf

from crossvit_keras.data import augment
from crossvit_keras.data.preprocessing import eval_transform

logger = logging.getLogger(__name__)

# A 1 x 1 black PNG: what the evaluation padding decodes.
_BLANK_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    b"\x00\x00\x00\x0cIDATx\x9cc```\x00\x00\x00\x04\x00\x01\xf6\x178U\x00\x00\x00\x00IEND\xaeB`\x82"
)


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
