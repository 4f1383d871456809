"""The training augmentations of DeiT and the paper (Table 9), in TensorFlow ops for tf.data.

Per image (timm's `transforms_imagenet_train`, in this order):
  random_resized_crop -> random_flip -> RandAugment -> normalize -> random_erasing
Per batch: MixupCutmix, which also turns the integer labels into smoothed one-hot targets.

This module has the per-image steps up to the flip (`decode_random_crop`, `random_flip`, on the
host) and the random choices of the rest; RandAugment, random erasing, Mixup/CutMix and the
normalisation run vectorised over a batch (crossvit_keras.data.batch_augment), in tf.data or on
the accelerator. The random choices follow timm's code (same ranges, same rounding, same
fall-backs); only the random numbers differ.
"""

import math
import re

import tensorflow as tf

# timm's RandomResizedCropAndInterpolation and RandomErasing try this many random boxes.
ATTEMPTS = 10


def _first_true(mask):
    """Index of the first True in a 1-D bool tensor (0 if there is none) and whether there is one."""
    return tf.argmax(tf.cast(mask, tf.int32), output_type=tf.int32), tf.reduce_any(mask)


def _randint(low, high):
    """A random int32 in [low, high], both ends included (Python's random.randint)."""
    return tf.random.uniform([], low, high + 1, dtype=tf.int32)


def random_resized_crop_box(height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """timm's RandomResizedCropAndInterpolation.get_params: (top, left, crop_height, crop_width).

    Ten tries of an area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`;
    the first box that fits is placed uniformly; if none fits, a centre crop clamped to `ratio`."""
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    area = tf.cast(height * width, tf.float32)
    target_area = area * tf.random.uniform([ATTEMPTS], scale[0], scale[1])
    aspect = tf.exp(tf.random.uniform([ATTEMPTS], math.log(ratio[0]), math.log(ratio[1])))
    crop_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    index, found = _first_true(fits)

    def random_box():
        h, w = crop_h[index], crop_w[index]
        return tf.stack([_randint(0, height - h), _randint(0, width - w), h, w])

    def central_box():
        in_ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
        h_narrow = tf.cast(tf.round(tf.cast(width, tf.float32) / min(ratio)), tf.int32)
        w_wide = tf.cast(tf.round(tf.cast(height, tf.float32) * max(ratio)), tf.int32)
        h = tf.where(in_ratio < min(ratio), h_narrow, height)
        w = tf.where(in_ratio > max(ratio), w_wide, width)
        return tf.stack([(height - h) // 2, (width - w) // 2, h, w])

    return tf.cond(found, random_box, central_box)


def _decode_whole_and_crop(contents, scale, ratio):
    """A non-JPEG image decoded whole, then its random resized crop's box cut out."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    shape = tf.shape(image)
    top, left, h, w = tf.unstack(random_resized_crop_box(shape[0], shape[1], scale, ratio))
    return image[top : top + h, left : left + w]


def decode_random_crop(contents, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Encoded image bytes -> a random resized crop, float32 [size, size, 3], RGB in [0, 255].

    JPEGs decode only the crop window (tf.image.decode_and_crop_jpeg, the fast path for ImageNet);
    other formats are decoded whole, then cropped. The crop is resized with an antialiased bicubic
    (PIL's, as timm uses) and clipped to [0, 255], since bicubic overshoots (PIL's uint8 images
    saturate the same way)."""

    def jpeg():
        shape = tf.image.extract_jpeg_shape(contents)
        box = random_resized_crop_box(shape[0], shape[1], scale, ratio)
        return tf.image.decode_and_crop_jpeg(contents, box, channels=3)

    crop = tf.cond(tf.io.is_jpeg(contents), jpeg, lambda: _decode_whole_and_crop(contents, scale, ratio))
    crop = tf.image.resize(crop, [size, size], method="bicubic", antialias=True)
    return tf.clip_by_value(crop, 0.0, 255.0)


def decode_crop_flip(contents, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5):
    """The host's per-image work: encoded bytes -> random resized crop, random horizontal flip,
    uint8 [size, size, 3] (rounded, as PIL's images are)."""
    return random_flip(tf.cast(tf.round(decode_random_crop(contents, size, scale, ratio)), tf.uint8), hflip)


def decode_crop_unresized(contents, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5):
    """The host's per-image work when the resize runs on the accelerator: encoded bytes -> the
    random resized crop's box, decoded and randomly flipped, not yet resized: uint8 [h, w, 3] with
    h, w <= 2 * size (the pipeline pads a batch of them to 2 * size squares, their canvases;
    batch_augment.resize_crops resizes them on the device, as decode_random_crop does here).

    A crop wider or taller than the canvas is decoded at 1/2, 1/4 or 1/8 of its size by the JPEG
    decoder's DCT scaling (the first that fits); other formats, and the rare crop that still does
    not fit, are resized to fit (antialiased bicubic, keeping the aspect ratio)."""
    canvas = 2 * size

    def jpeg():
        shape = tf.image.extract_jpeg_shape(contents)
        top, left, h, w = tf.unstack(random_resized_crop_box(shape[0], shape[1], scale, ratio))
        longer = tf.maximum(h, w)
        # the smallest of the decoder's scalings 1, 1/2, 1/4, 1/8 that brings the crop into the canvas
        step = tf.reduce_sum(tf.cast(longer > canvas * tf.constant([1, 2, 4]), tf.int32))

        def decode_scaled(factor):
            """The crop decoded at 1/factor: its window in the scaled image's pixels."""
            scaled_h, scaled_w = -(-shape[0] // factor), -(-shape[1] // factor)
            top_s, left_s = top // factor, left // factor
            h_s = tf.clip_by_value((h + factor // 2) // factor, 1, scaled_h - top_s)
            w_s = tf.clip_by_value((w + factor // 2) // factor, 1, scaled_w - left_s)
            return tf.image.decode_and_crop_jpeg(
                contents, tf.stack([top_s, left_s, h_s, w_s]), channels=3, ratio=factor
            )

        return tf.switch_case(step, [lambda factor=factor: decode_scaled(factor) for factor in (1, 2, 4, 8)])

    crop = tf.cond(tf.io.is_jpeg(contents), jpeg, lambda: _decode_whole_and_crop(contents, scale, ratio))
    return random_flip(_fit_canvas(crop, canvas), hflip)


def _fit_canvas(crop, canvas):
    """A crop larger than canvas x canvas, resized (antialiased bicubic, keeping its aspect ratio) to fit."""
    shape = tf.shape(crop)[:2]

    def shrink():
        factor = canvas / tf.cast(tf.reduce_max(shape), tf.float32)
        new = tf.maximum(1, tf.cast(tf.round(tf.cast(shape, tf.float32) * factor), tf.int32))
        resized = tf.image.resize(crop, tf.minimum(new, canvas), method="bicubic", antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)

    return tf.cond(tf.reduce_max(shape) > canvas, shrink, lambda: crop)


def random_flip(image, probability=0.5):
    """Horizontal flip of an [H, W, C] image with the given probability."""
    if probability <= 0:
        return image
    flip = tf.random.uniform([]) < probability
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def parse_rand_augment(config):
    """timm's RandAugment string (e.g. 'rand-m9-mstd0.5-inc1') -> its arguments in timm's units
    {num_layers, magnitude, magnitude_std, prob}, or None for '' / 'none'.

    m: magnitude, 0-10 (default 10); mstd: standard deviation of the magnitude noise (default 0);
    n: ops per image (default 2); p: probability of applying each chosen op (default 0.5);
    inc1: timm's "increasing" ops, whose strength grows with the magnitude (the only set implemented)."""
    if config is None or config.strip().lower() in ("", "none"):
        return None
    parts = config.strip().split("-")
    if parts[0] != "rand":
        raise ValueError(
            f"--aa {config!r}: only RandAugment strings like 'rand-m9-mstd0.5-inc1' (or 'none') are supported."
        )
    args = {"num_layers": 2, "magnitude": 10.0, "magnitude_std": 0.0, "prob": 0.5}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|inc|m|n|p)(\d+(?:\.\d*)?)", part)
        if not match:
            raise ValueError(
                f"--aa {config!r}: unknown section {part!r}; use m<0-10>, n<int>, mstd<float>, p<0-1>, inc1."
            )
        key, value = match.group(1), float(match.group(2))
        if key == "m":
            if value > 10:
                raise ValueError(f"--aa {config!r}: magnitude m must be in 0..10, got {value:g}.")
            args["magnitude"] = value
        elif key == "mstd":
            args["magnitude_std"] = value
        elif key == "n":
            args["num_layers"] = int(value)
        elif key == "p":
            if value > 1:
                raise ValueError(f"--aa {config!r}: probability p must be in [0, 1], got {value:g}.")
            args["prob"] = value
        elif key == "inc" and value != 1:
            raise ValueError(f"--aa {config!r}: only inc1 (timm's increasing ops) is available.")
    return args


def random_erasing(image, probability=0.25, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    """timm's RandomErasing(mode='pixel', max_count=1) on a normalised [H, W, C] image.

    With the given probability: ten tries of a box of area fraction uniform in [min_area, max_area]
    and log-uniform aspect ratio in [min_aspect, 1 / min_aspect]; the first box strictly inside the
    image is placed uniformly and filled with per-pixel, per-channel N(0, 1) noise."""
    if probability <= 0:
        return image
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float32)
    target_area = area * tf.random.uniform([ATTEMPTS], min_area, max_area)
    aspect = tf.exp(tf.random.uniform([ATTEMPTS], math.log(min_aspect), math.log(1 / min_aspect)))
    box_h = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    index, found = _first_true((box_w < width) & (box_h < height))

    def erase():
        h, w = box_h[index], box_w[index]
        top, left = _randint(0, height - h), _randint(0, width - w)
        rows = tf.range(height)[:, None, None]
        cols = tf.range(width)[None, :, None]
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        return tf.where(inside, tf.random.normal(shape, dtype=image.dtype), image)

    apply = (tf.random.uniform([]) < probability) & found
    return tf.cond(apply, erase, lambda: image)


def smooth_one_hot(labels, num_classes, smoothing=0.0):
    """timm's one_hot with label smoothing: off = smoothing / K, on = 1 - smoothing + off."""
    off = smoothing / num_classes
    return tf.one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)


def sample_gamma(alpha, shape, attempts=16):
    """Gamma(alpha, 1) samples by Marsaglia and Tsang's method with `attempts` proposals drawn at once
    (the first accepted is kept; all rejected has probability below 0.05 ** attempts), in ops that
    XLA compiles (tf.random.gamma has no XLA kernel). alpha < 1: Gamma(alpha + 1) * U ** (1 / alpha)."""
    boost = alpha < 1
    d = (alpha + 1.0 if boost else alpha) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    x = tf.random.normal([*shape, attempts])
    v = (1.0 + c * x) ** 3
    log_u = tf.math.log(tf.random.uniform([*shape, attempts]))
    accepted = (v > 0) & (log_u < 0.5 * x * x + d - d * v + d * tf.math.log(tf.maximum(v, 1e-30)))
    first = tf.argmax(tf.cast(accepted, tf.int32), axis=-1, output_type=tf.int32)
    samples = tf.gather(d * v, first, batch_dims=len(shape))
    if boost:
        samples *= tf.random.uniform(shape) ** (1.0 / alpha)
    return samples


def _sample_beta(alpha):
    """Beta(alpha, alpha) from two gammas."""
    x, y = tf.unstack(sample_gamma(alpha, [2]))
    return x / (x + y)


class MixupCutmix:
    """timm's Mixup in mode 'batch' (what DeiT and the paper use), in TensorFlow for tf.data.

    Per batch, with probability `prob`: CutMix (probability `switch_prob` when both are on,
    lambda ~ Beta(cutmix_alpha)) or MixUp (lambda ~ Beta(mixup_alpha)), pairing image i with image
    B-1-i (the batch flipped). CutMix's lambda is corrected to the box's real area. Targets are
    lam * smooth(y) + (1 - lam) * smooth(flip(y)). An alpha of 0 turns that mix off; both 0 gives
    smoothed one-hot labels only.

    keras-cv's MixUp and CutMix are not used: they draw one lambda per sample and pair through a
    random permutation, and have neither `prob`, `switch_prob` nor label smoothing."""

    def __init__(self, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1):
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {value}.")
        for name, value in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    @property
    def active(self):
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def params(self):
        """(lam, use_cutmix) for one batch: timm's Mixup._params_per_batch."""
        mix = tf.random.uniform([]) < self.prob
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = tf.random.uniform([]) < self.switch_prob
            lam = tf.cond(use_cutmix, lambda: _sample_beta(self.cutmix_alpha), lambda: _sample_beta(self.mixup_alpha))
        elif self.mixup_alpha > 0:
            use_cutmix, lam = tf.constant(False), _sample_beta(self.mixup_alpha)
        else:
            use_cutmix, lam = tf.constant(True), _sample_beta(self.cutmix_alpha)
        return tf.where(mix, lam, 1.0), use_cutmix & mix

    @staticmethod
    def cutmix_box(height, width, lam):
        """timm's rand_bbox + cutmix_bbox_and_lam(correct_lam=True): (top, bottom, left, right, lam)."""
        cut = tf.sqrt(1.0 - lam)
        cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
        cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
        cy = tf.random.uniform([], 0, height, dtype=tf.int32)
        cx = tf.random.uniform([], 0, width, dtype=tf.int32)
        top = tf.clip_by_value(cy - cut_h // 2, 0, height)
        bottom = tf.clip_by_value(cy + cut_h // 2, 0, height)
        left = tf.clip_by_value(cx - cut_w // 2, 0, width)
        right = tf.clip_by_value(cx + cut_w // 2, 0, width)
        lam = 1.0 - tf.cast((bottom - top) * (right - left), tf.float32) / tf.cast(height * width, tf.float32)
        return top, bottom, left, right, lam

    def __call__(self, images, labels):
        """images [B, H, W, C] float, labels [B] int -> (mixed images, soft targets [B, K] float32)."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if not self.active:
            return images, targets
        lam, use_cutmix = self.params()
        flipped = tf.reverse(images, axis=[0])

        def cutmix():
            shape = tf.shape(images)
            top, bottom, left, right, box_lam = self.cutmix_box(shape[1], shape[2], lam)
            rows = tf.range(shape[1])[None, :, None, None]
            cols = tf.range(shape[2])[None, None, :, None]
            inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
            return tf.where(inside, flipped, images), box_lam

        def mixup():
            return images * lam + flipped * (1.0 - lam), lam

        images, lam = tf.cond(use_cutmix, cutmix, mixup)
        targets = targets * lam + tf.reverse(targets, axis=[0]) * (1.0 - lam)
        return images, targets
