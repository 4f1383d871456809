"""The training and evaluation input pipelines with tf.data.

    dataset = open_dataset("IMNET", "path/to/imagenet")
    train = train_dataset(dataset.train, image_size=240, batch_size=64, num_classes=dataset.num_classes)
    val = eval_dataset(dataset.val, image_size=240, batch_size=96, num_classes=dataset.num_classes)

An unreadable or corrupt image never stops an epoch: training skips it (and reports it when its
group of GROUP images has been decoded), evaluation gives it weight 0;
either way it is logged with its path and counted in `UNREADABLE.count`. So is an image of more
pixels than serving takes (image_header.DEFAULT_MAX_PIXELS, read from its header: never decoded).
"""

import logging
import math
import sys
import threading

import tensorflow as tf

from crossvit_keras.data import augment, batch_augment, image_header
from crossvit_keras.data.datasets import printable
from crossvit_keras.data.preprocessing import eval_transform

logger = logging.getLogger(__name__)

# A 1 x 1 black PNG: what the evaluation padding decodes.
_BLANK_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    b"\x00\x00\x00\x0cIDATx\x9cc```\x00\x00\x00\x04\x00\x01\xf6\x178U\x00\x00\x00\x00IEND\xaeB`\x82"
)


CORRUPT = "unreadable or corrupt"


class UnreadableImages:
    """Counts and logs the images the pipelines skip (thread-safe: tf.data calls it from its threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self.first = []  # the first five, "name (why)"

    def report(self, name, problem=CORRUPT):
        name, problem = (printable(x.numpy() if hasattr(x, "numpy") else x) for x in (name, problem))
        with self._lock:
            self.count += 1
            count = self.count
            if len(self.first) < 5:
                self.first.append(f"{name} ({problem})")
        logger.warning("skipped image %s: %s (%d skipped so far)", name, problem, count)


UNREADABLE = UnreadableImages()

# Where the batch augmentations run: tf.data on the host, or the training step on the accelerator.
AUG_DEVICES = ("host", "accelerator")


# Training decodes in groups of this many records: one group's decoding errors are isolated
# together, which costs far less per image than isolating each image (evaluation does that).
GROUP = 32
_END_OF_GROUP = "\0end of group"


def _loader(split, decode, fallback, max_pixels=image_header.DEFAULT_MAX_PIXELS):
    """source -> (image, problem): `decode(contents)` and "" for a good image; (fallback, why) for
    one of more than `max_pixels` pixels or an animated WebP (image_header.size_problem, from the
    header: the serving limit), undecoded. A corrupt image raises, for ignore_errors to drop."""

    def load(source):
        if split.read_files:  # an empty name is evaluation padding: a blank image, never read
            contents = tf.cond(source == "", lambda: tf.constant(_BLANK_PNG), lambda: tf.io.read_file(source))
        else:
            contents = source
        problem = image_header.size_problem(contents, max_pixels)
        return tf.cond(tf.equal(problem, ""), lambda: decode(contents), lambda: fallback), problem

    return load


def _read_each_safely(split, decode, fallback):
    """For interleave: (name, source, label, ...) -> a one-element dataset of (name, label, ...,
    image, problem): a corrupt image gives (fallback, "unreadable or corrupt") in its place."""
    load = _loader(split, decode, fallback)

    def safe(name, source, label, *rest):
        decoded = tf.data.Dataset.from_tensors(source).map(load).ignore_errors()
        failed = tf.data.Dataset.from_tensors((fallback, tf.constant(CORRUPT)))
        image_and_ok = decoded.concatenate(failed).take(1)
        return image_and_ok.map(lambda image, problem: (name, label, *rest, image, problem))

    return safe


def _read_good(records, split, decode, fallback, *, deterministic, remote=False):
    """(name, source, label) -> (label, image) of the good images only, the others reported by
    name (see _report_if_unreadable). Decoding errors are dropped by tf.data's ignore_errors, a
    group of GROUP records at a time; the group's last element names the records that gave
    nothing, and its filter reports them."""
    load = _loader(split, decode, fallback)

    def decode_group(names, sources, labels):
        count = tf.shape(names)[0]
        good = tf.data.Dataset.from_tensor_slices((tf.range(count), names, sources, labels))
        good = good.map(lambda index, name, source, label: (index, name, label, *load(source))).ignore_errors()
        end = tf.data.Dataset.from_tensors((count, names[0], labels[0], fallback, tf.constant(_END_OF_GROUP)))

        def track(seen, element):  # which records came through; at the end, the names of the others
            index, *element = element
            seen = seen | tf.equal(tf.range(count), index)
            lost = tf.cond(
                tf.equal(index, count), lambda: tf.boolean_mask(names, ~seen), lambda: tf.zeros([0], tf.string)
            )
            return seen, (lost, *element)

        return good.concatenate(end).scan(tf.zeros([count], tf.bool), track)

    def keep(lost, name, label, image, problem):
        return tf.cond(
            tf.equal(problem, _END_OF_GROUP),
            lambda: _report_lost(lost, remote),
            lambda: _report_if_unreadable(name, problem, remote),
        )

    groups = records.batch(GROUP).interleave(
        decode_group,
        cycle_length=tf.data.AUTOTUNE,
        block_length=GROUP,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    return groups.filter(keep).map(lambda lost, name, label, image, problem: (label, image))


def _report_lost(names, remote=False):
    """Reports the images that failed to decode; False (the end of a group is no image)."""

    def report():
        if remote:
            tf.print("skipped images", names, CORRUPT, output_stream=sys.stderr)
        else:
            tf.py_function(lambda names: [UNREADABLE.report(name) for name in names.numpy()], [names], [])
        return tf.constant(False)

    return tf.cond(tf.size(names) > 0, report, lambda: tf.constant(False))


def _report_if_unreadable(name, problem, remote=False):
    """Whether the image is good (its problem is ""); reports it if not."""

    def report():
        if remote:  # on a tf.data service worker, which cannot call back into this process: its log
            tf.print("skipped image", name, problem, output_stream=sys.stderr)
        else:
            tf.py_function(UNREADABLE.report, [name, problem], [])
        return tf.constant(False)

    return tf.cond(tf.equal(problem, ""), lambda: tf.constant(True), report)


def _shard(dataset, input_context):
    if input_context is not None and input_context.num_input_pipelines > 1:
        return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return dataset


def _options(threads=None):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # we shard
    if threads:  # a fixed pool, used whole: no autotuning, which times every element (5% of the CPU at 1 thread)
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        options.autotune.enabled = False
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
    remote=False,
    aug_device="host",
):
    """The endless, shuffled training stream of (images [B, S, S, 3] normalised, targets [B, K]).

    aug_device="host" (default): the whole recipe runs here, in tf.data. aug_device="accelerator":
    the host only reads, decodes the crop and flips (augment.decode_crop_unresized); the stream holds
    ((canvases uint8 [B, 2S, 2S, 3], crop sizes int32 [B, 2]), smoothed one-hot targets [B, K]),
    and the resize, RandAugment, random erasing, Mixup/CutMix and the normalisation are left to the
    training step: `batch_augment.augment_on_device(model, device_augment(S, aa, reprob, mixup))`
    after compile (crossvit_keras.training does it for --aug-device accelerator).

    batch_size is this pipeline's batch (per replica under tf.distribute). mixup: a
    augment.MixupCutmix (its label smoothing also applies when it mixes nothing); None gives plain
    one-hot targets. repeated_aug > 1 repeats each image that many times in a row with different
    augmentations (DeiT's repeated augmentation). Shards by `input_context` before decoding.
    remote=True: for tf.data service workers (unreadable images go to their log, not UNREADABLE).
    threads=N: a private pool of N threads, each op single-threaded, without tf.data's autotuning
    (None: tf.data's shared pool, autotuned)."""
    if aug_device not in AUG_DEVICES:
        raise ValueError(f"aug_device must be one of {', '.join(AUG_DEVICES)}, got {aug_device!r}.")
    mixup = mixup or augment.MixupCutmix(num_classes, 0.0, 0.0, label_smoothing=0.0)
    if split.shards_by_file:  # prepared shards: each input pipeline reads its own files
        records = split.records(shuffle=True, seed=seed, input_context=input_context).repeat()
    else:
        records = _shard(split.records(shuffle=True, seed=seed), input_context).repeat()
    if repeated_aug > 1:
        records = records.flat_map(lambda *r: tf.data.Dataset.from_tensors(r).repeat(repeated_aug))
    on_host = aug_device == "host"
    if on_host:
        fallback = tf.zeros([image_size, image_size, 3], tf.uint8)

        def decode(contents):
            return augment.decode_crop_flip(contents, image_size, scale, ratio, hflip)

        augment_batch = batch_augment.BatchAugment(aa, reprob, mixup)
    else:
        fallback = tf.zeros([1, 1, 3], tf.uint8)

        def decode(contents):
            return augment.decode_crop_unresized(contents, image_size, scale, ratio, hflip)

    def finish_batch(labels, images, *crop_sizes):
        targets = batch_augment.smoothed_targets(labels, num_classes, mixup)
        return augment_batch(images, targets) if on_host else ((images, crop_sizes[0]), targets)

    in_order = repeated_aug > 1  # keeps an image's copies in a row, so they share a batch
    dataset = _read_good(records, split, decode, fallback, deterministic=in_order, remote=remote)
    if on_host:
        dataset = dataset.batch(batch_size, drop_remainder=True)
    else:  # the crops at the top left of 2S x 2S canvases (tf.data pads as it batches: no copy per image)
        canvas = [2 * image_size, 2 * image_size, 3]
        dataset = dataset.map(lambda label, image: (label, image, tf.shape(image)[:2])).padded_batch(
            batch_size, padded_shapes=([], canvas, [2]), drop_remainder=True
        )
    dataset = dataset.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(_options(threads))


def device_augment(image_size, aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=None):
    """The batch stage `train_dataset(..., aug_device="accelerator")` leaves to the training step:
    ((canvases, crop sizes), targets) -> (images [B, S, S, 3] normalised, targets): the resize
    (batch_augment.resize_crops), RandAugment, random erasing, Mixup/CutMix and normalisation,
    with fixed shapes and ops XLA compiles. Install it with
    batch_augment.augment_on_device(model, device_augment(...))."""
    return batch_augment.DeviceAugment(image_size, aa, reprob, mixup)


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
            _read_each_safely(split, decode, tf.zeros([1, 1, 3], tf.uint8)),
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
