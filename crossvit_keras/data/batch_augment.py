"""DeiT's per-image augmentations after the crop, vectorised over a batch of uint8 images:
timm's RandAugment (`rand-m9-mstd0.5-inc1`), random erasing, Mixup/CutMix and normalisation.

    augment = BatchAugment("rand-m9-mstd0.5-inc1", reprob=0.25, mixup=MixupCutmix(1000))
    images, targets = augment(uint8_images, smoothed_one_hot_targets)  # [B, S, S, 3], [B, 1000]

The same object runs in tf.data on the host (`static_shapes=False`: each op computes only the
images that drew it, through tf.dynamic_partition) and on the accelerator inside the compiled
training step (`static_shapes=True`: fixed shapes and XLA-compilable ops; every op runs on the whole
batch and a select keeps the images that drew it). `augment_on_device(model, augment)` installs it
as the first stage of a Keras model's train step.

The random choices follow timm's code per image: RandAugment draws `num_layers` ops uniformly with
replacement from timm's 15 "increasing" ops, applies each with probability `prob`, with a magnitude
N(m, mstd) clipped to [0, 10] and a random sign where timm negates; the ops compute on integer
pixel values as PIL does (truncating like PIL's blend and lookup tables). One difference: the
geometric ops (rotate, shear, translate) interpolate bilinearly, timm's bicubically.
"""

import math

import numpy as np
import tensorflow as tf

from crossvit_keras.data.augment import ATTEMPTS, parse_rand_augment, smooth_one_hot
from crossvit_keras.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD

# timm's _RAND_INCREASING_TRANSFORMS, in its order.
OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# timm's fill colour for the geometric ops: the ImageNet mean in [0, 255], rounded.
FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)


def _per_image(values):
    return values[:, None, None, None]


def _select(condition, x, y):
    """tf.where for a condition of x's shape or of its batch only [B]: TensorFlow's Select. tf.where
    (SelectV2, which broadcasts) takes six times as long on the CPU, even for equal shapes."""
    return tf.raw_ops.Select(condition=condition, x=x, y=y)


def _pixels(images):
    """Rounded and clipped to [0, 255]: what PIL's uint8 images hold after each op."""
    return tf.clip_by_value(tf.round(images), 0.0, 255.0)


def _blend(degenerate, images, factor):
    """PIL's Image.blend(degenerate, images, factor): truncated to an integer and clipped."""
    return tf.clip_by_value(tf.floor(degenerate + _per_image(factor) * (images - degenerate)), 0.0, 255.0)


def _gray(images):
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, in 16-bit fixed point), [n, H, W, 1]."""
    weights = tf.constant([[19595.0], [38470.0], [7471.0]])
    luma = tf.reshape(tf.matmul(tf.reshape(images, [-1, 3]), weights), tf.concat([tf.shape(images)[:-1], [1]], 0))
    return tf.floor((luma + 32768.0) / 65536.0)


def _per_channel(values, images):
    """A per-channel constant spread over one image's (static) shape: TensorFlow's per-channel
    broadcast is about 3x slower than a broadcast over the batch only."""
    if images.shape[1:].is_fully_defined():
        return tf.constant(np.broadcast_to(np.asarray(values, np.float32), images.shape[1:]))
    return tf.constant(values, tf.float32)


def auto_contrast(images, magnitude, sign):
    shape = tf.shape(images)
    pixels = tf.reshape(images, [shape[0], -1, 3])  # reductions over one axis: twice as fast
    low = tf.reduce_min(pixels, axis=1)[:, None, None, :]
    high = tf.reduce_max(pixels, axis=1)[:, None, None, :]
    # a channel of one value stays as it is: scale 1 from 0
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
    offset = 1e-3 - tf.where(high > low, low, 0.0) * scale
    return tf.clip_by_value(tf.floor(images * scale + offset), 0.0, 255.0)


def equalize(images, magnitude, sign):
    """PIL's ImageOps.equalize, per image and channel (histograms by segment sums, which XLA compiles)."""
    shape = tf.shape(images)
    n, pixels = shape[0], shape[1] * shape[2]
    values = tf.cast(images, tf.int32)
    bins = (tf.range(n)[:, None, None, None] * 3 + tf.range(3)) * 256 + values
    histogram = tf.reshape(tf.math.unsorted_segment_sum(tf.ones_like(bins), bins, n * 3 * 256), [n, 3, 256])
    last = 255 - tf.argmax(tf.reverse(histogram, [-1]) > 0, axis=-1, output_type=tf.int32)
    last_count = tf.gather(histogram, last, batch_dims=2)
    step = (pixels - last_count) // 255
    lut = (step[..., None] // 2 + tf.cumsum(histogram, axis=-1, exclusive=True)) // tf.maximum(step, 1)[..., None]
    lut = tf.where(step[..., None] > 0, tf.minimum(lut, 255), tf.range(256))
    return tf.cast(tf.gather(tf.reshape(lut, [-1]), bins), images.dtype)


def invert(images, magnitude, sign):
    return 255.0 - images


def posterize(images, magnitude, sign):
    bits = 4.0 - tf.floor(magnitude / 10.0 * 4.0)
    step = _per_image(tf.pow(2.0, 8.0 - bits))
    return tf.floor(images / step) * step


def solarize(images, magnitude, sign):
    threshold = _per_image(256.0 - tf.minimum(256.0, tf.floor(magnitude / 10.0 * 256.0)))
    return _select(images >= threshold, 255.0 - images, images)


def solarize_add(images, magnitude, sign):
    add = _per_image(tf.minimum(128.0, tf.floor(magnitude / 10.0 * 110.0)))
    return _select(images < 128.0, tf.minimum(255.0, images + add), images)


def _enhance_factor(magnitude, sign):
    return tf.maximum(0.1, 1.0 + sign * magnitude / 10.0 * 0.9)


def color(images, magnitude, sign):
    return _blend(_gray(images), images, _enhance_factor(magnitude, sign))


def contrast(images, magnitude, sign):
    mean = tf.floor(tf.reduce_mean(_gray(images), axis=[1, 2, 3], keepdims=True) + 0.5)
    return _blend(mean, images, _enhance_factor(magnitude, sign))


def brightness(images, magnitude, sign):
    return _blend(0.0, images, _enhance_factor(magnitude, sign))


def sharpness(images, magnitude, sign):
    """PIL's ImageEnhance.Sharpness: a blend with the SMOOTH-filtered image (its border unfiltered)."""
    rows = images[:, :-2] + images[:, 1:-1] + images[:, 2:]
    center = images[:, 1:-1, 1:-1]
    smooth = tf.round((rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:] + 4.0 * center) / 13.0)  # 1 1 1 / 1 5 1
    smooth = tf.pad(smooth - center, [[0, 0], [1, 1], [1, 1], [0, 0]]) + images
    return _blend(smooth, images, _enhance_factor(magnitude, sign))


def affine_transforms(op, magnitude, sign, height, width):
    """Per image, the affine map from output to input pixel indices (TensorFlow's 8-number projective
    form) of timm's rotate / shear / translate for the ops drawn (identity for the others). PIL's
    maps act on continuous coordinates (pixel centres at +0.5); TensorFlow's on indices."""
    level = sign * magnitude / 10.0
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    angle = -level * 30.0 * math.pi / 180.0  # PIL's rotate(degrees) maps back by -degrees
    shear = level * 0.3
    zero, one = tf.zeros_like(level), tf.ones_like(level)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = width / 2.0, height / 2.0

    def choose(name):
        return tf.equal(op, OPS.index(name))

    a = tf.where(choose("Rotate"), cos, one)
    b = tf.where(choose("Rotate"), sin, tf.where(choose("ShearX"), shear, zero))
    d = tf.where(choose("Rotate"), -sin, tf.where(choose("ShearY"), shear, zero))
    e = tf.where(choose("Rotate"), cos, one)
    c = tf.where(
        choose("Rotate"), cx - cos * cx - sin * cy, tf.where(choose("TranslateXRel"), level * 0.45 * width, zero)
    )
    f = tf.where(
        choose("Rotate"), cy + sin * cx - cos * cy, tf.where(choose("TranslateYRel"), level * 0.45 * height, zero)
    )
    # continuous (x + 0.5) -> index coordinates
    c = c + 0.5 * a + 0.5 * b - 0.5
    f = f + 0.5 * d + 0.5 * e - 0.5
    return tf.stack([a, b, c, d, e, f, zero, zero], axis=1)


def _bilinear_warp(images, transforms):
    """ImageProjectiveTransformV3 (affine, bilinear, constant fill 0) in gathers XLA compiles."""
    shape = tf.shape(images)
    n, height, width = shape[0], shape[1], shape[2]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    t = transforms[:, :, None, None]
    in_x = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    in_y = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    x0, y0 = tf.floor(in_x), tf.floor(in_y)
    flat = tf.reshape(images, [-1, 3])
    base = tf.range(n)[:, None, None] * height * width
    last_x, last_y = tf.cast(width - 1, tf.float32), tf.cast(height - 1, tf.float32)
    out = tf.zeros_like(images)
    for dy in (0.0, 1.0):
        for dx in (0.0, 1.0):
            x, y = x0 + dx, y0 + dy
            weight = (1.0 - tf.abs(in_x - x)) * (1.0 - tf.abs(in_y - y))
            inside = (x >= 0) & (x <= last_x) & (y >= 0) & (y <= last_y)
            index = base + tf.cast(tf.clip_by_value(y, 0.0, last_y), tf.int32) * width
            index += tf.cast(tf.clip_by_value(x, 0.0, last_x), tf.int32)
            out += tf.where(inside[..., None], tf.gather(flat, index) * weight[..., None], 0.0)
    return out


def warp(images, transforms, static_shapes=False):
    """Affine warp (bilinear) with timm's fill colour; XLA-compilable if static_shapes."""
    # bilinear interpolation is linear: warping (x - fill) with fill 0 fills `fill`
    fill = _per_channel(FILL, images)
    if static_shapes:
        return _pixels(_bilinear_warp(images - fill, transforms) + fill)
    shape = tf.shape(images)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images - fill,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.round(warped + fill)  # within [0, 255]: bilinear weights are convex


PIXEL_OPS = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "PosterizeIncreasing": posterize,
    "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add,
    "ColorIncreasing": color,
    "ContrastIncreasing": contrast,
    "BrightnessIncreasing": brightness,
    "SharpnessIncreasing": sharpness,
}


class RandAugment:
    """timm's RandAugment with its "increasing" ops (inc1), on a batch [B, H, W, 3] of pixel values
    in [0, 255] (uint8, or float: rounded) -> pixel values (integers) in [0, 255]: uint8 on the
    host when given uint8 (as PIL holds them), else float32.

    Per image and layer, as timm's RandAugment/AugmentOp: an op drawn uniformly from OPS (with
    replacement), applied with probability `prob`, magnitude ~ N(magnitude, magnitude_std) clipped
    to [0, 10], sign -1 with probability 1/2 (for the ops timm negates)."""

    def __init__(self, num_layers=2, magnitude=10.0, magnitude_std=0.0, prob=0.5, static_shapes=False):
        self.num_layers = num_layers
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.prob = prob
        self.static_shapes = static_shapes

    @classmethod
    def from_string(cls, config, static_shapes=False):
        """timm's config string ('rand-m9-mstd0.5-inc1'); None for 'none' or ''."""
        args = parse_rand_augment(config)
        if args is None:
            return None
        return cls(**args, static_shapes=static_shapes)

    def sample(self, batch):
        """One layer's random choices for `batch` images: (op index, or len(OPS) for none; magnitude; sign)."""
        op = tf.random.uniform([batch], 0, len(OPS), dtype=tf.int32)
        applied = tf.random.uniform([batch]) <= self.prob
        noise = tf.random.normal([batch]) if self.magnitude_std > 0 else tf.zeros([batch])
        magnitude = tf.clip_by_value(self.magnitude + self.magnitude_std * noise, 0.0, 10.0)
        sign = tf.where(tf.random.uniform([batch]) > 0.5, -1.0, 1.0)
        return tf.where(applied, op, len(OPS)), magnitude, sign

    def apply(self, images, op, magnitude, sign):
        """One layer with given choices (from `sample`)."""
        if self.static_shapes:
            return self._apply_all(images, op, magnitude, sign)
        return self._apply_partitioned(images, op, magnitude, sign)

    def __call__(self, images):
        if self.static_shapes:
            images = tf.cast(images, tf.float32)
        for _ in range(self.num_layers):
            images = self.apply(images, *self.sample(tf.shape(images)[0]))
        return images

    def _apply_all(self, images, op, magnitude, sign):
        shape = tf.shape(images)
        geometric = tf.reduce_any(tf.equal(op[:, None], [OPS.index(name) for name in GEOMETRIC]), axis=1)
        out = tf.where(
            _per_image(geometric),
            warp(images, affine_transforms(op, magnitude, sign, shape[1], shape[2]), static_shapes=True),
            images,
        )
        for name, function in PIXEL_OPS.items():
            chosen = _per_image(tf.equal(op, OPS.index(name)))
            out = tf.where(chosen, function(images, magnitude, sign), out)
        return out

    def _apply_partitioned(self, images, op, magnitude, sign):
        # held between the ops as PIL holds them, uint8: a quarter of float32's memory traffic
        dtype = images.dtype
        if dtype != tf.uint8:
            images = tf.cast(_pixels(tf.cast(images, tf.float32)), tf.uint8)
        # branches: one per pixel op, one for all geometric ops (one warp), one for no op
        branch_of_op = [len(PIXEL_OPS) if name in GEOMETRIC else list(PIXEL_OPS).index(name) for name in OPS]
        branch = tf.gather(tf.constant(branch_of_op + [len(PIXEL_OPS) + 1]), op)
        parts = len(PIXEL_OPS) + 2
        indices = tf.dynamic_partition(tf.range(tf.shape(images)[0]), branch, parts)
        image_parts = tf.dynamic_partition(images, branch, parts)
        magnitudes = tf.dynamic_partition(magnitude, branch, parts)
        signs = tf.dynamic_partition(sign, branch, parts)
        ops = tf.dynamic_partition(op, branch, parts)
        parts = [tf.cast(part, tf.float32) for part in image_parts[:-1]]  # each op's result: integers
        outputs = [function(parts[i], magnitudes[i], signs[i]) for i, function in enumerate(PIXEL_OPS.values())]
        g = len(PIXEL_OPS)
        shape = tf.shape(images)
        transforms = affine_transforms(ops[g], magnitudes[g], signs[g], shape[1], shape[2])
        outputs.append(warp(parts[g], transforms))
        outputs = [tf.cast(output, tf.uint8) for output in outputs] + [image_parts[g + 1]]
        images = tf.reshape(tf.dynamic_stitch(indices, outputs), shape)
        return images if dtype == tf.uint8 else tf.cast(images, dtype)


def erasing_boxes(batch, height, width, probability=0.25, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    """timm's RandomErasing(mode='pixel', max_count=1) choices per image: (erased [B] bool, top, left,
    h, w [B] int32). Per image, with `probability`: ten tries of a box of area fraction uniform in
    [min_area, max_area] and log-uniform aspect ratio in [min_aspect, 1 / min_aspect]; the first
    strictly inside the image is placed uniformly; none fits: no erasing."""
    area = tf.cast(height * width, tf.float32)
    target_area = area * tf.random.uniform([batch, ATTEMPTS], min_area, max_area)
    aspect = tf.exp(tf.random.uniform([batch, ATTEMPTS], math.log(min_aspect), math.log(1 / min_aspect)))
    box_h = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (box_w < width) & (box_h < height)
    index = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    h, w = tf.gather(box_h, index, batch_dims=1), tf.gather(box_w, index, batch_dims=1)
    top = tf.cast(tf.floor(tf.random.uniform([batch]) * tf.cast(height - h + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(tf.random.uniform([batch]) * tf.cast(width - w + 1, tf.float32)), tf.int32)
    erased = (tf.random.uniform([batch]) < probability) & tf.reduce_any(fits, axis=1)
    return erased, top, left, h, w


class BatchAugment:
    """RandAugment, random erasing, Mixup/CutMix and normalisation of a batch: (images [B, S, S, 3]
    uint8 or float pixel values, targets [B, K] smoothed one-hot) -> (normalised float32 images,
    mixed targets), as timm's per-image transform (RandAugment, normalise, random erasing) and its
    batch Mixup. Erased pixels are N(0, 1) after normalisation; normalisation comes last (it is
    affine, so mixing then normalising is normalising then mixing) to touch each pixel once."""

    def __init__(self, aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=None, static_shapes=False):
        if not 0 <= reprob <= 1:
            raise ValueError(f"reprob must be in [0, 1], got {reprob}.")
        self.rand_augment = RandAugment.from_string(aa, static_shapes=static_shapes)
        self.reprob = reprob
        self.mixup = mixup
        self.static_shapes = static_shapes

    def erasing(self, batch, height, width):
        """Random erasing's choices for a batch: (boxes [B, 4] of top, left, height, width, with height
        0 where an image is not erased; starts [B]; noise [N, 3] N(0, 1) values): image b's box takes
        noise[starts[b]:] row by row. On the host N is the boxes' total area rounded up to one of a few
        sizes (XLA compiles the batch stage once per size); on the accelerator, B * H * W. None
        without erasing (reprob 0)."""
        if self.reprob <= 0:
            return None
        erased, top, left, h, w = erasing_boxes(batch, height, width, self.reprob)
        h = tf.where(erased, h, 0)
        if self.static_shapes:
            starts, size = tf.range(batch) * height * width, batch * height * width
        else:
            areas = h * w
            starts, size = tf.cumsum(areas, exclusive=True), _noise_size(tf.reduce_sum(areas))
        return tf.stack([top, left, h, w], axis=1), starts, tf.random.normal([size, 3])

    def mixing(self, height, width):
        """Mixup/CutMix's choices for a batch: (lam, use_cutmix, CutMix's box: top, bottom, left, right)."""
        mixup = self.mixup
        if mixup is None or not mixup.active:
            return tf.constant(1.0), tf.constant(False), tf.zeros([4], tf.int32)
        lam, use_cutmix = mixup.params()
        *box, box_lam = mixup.cutmix_box(height, width, lam)
        return tf.where(use_cutmix, box_lam, lam), use_cutmix, tf.stack(box)

    def __call__(self, images, targets):
        shape = images.shape
        if self.rand_augment is not None:
            images = tf.ensure_shape(self.rand_augment(images), shape)
        batch, height, width = tf.unstack(tf.shape(images)[:3])
        erasing = self.erasing(batch, height, width)
        lam, use_cutmix, box = self.mixing(height, width)
        # on the host XLA fuses the erasing, the mixing and the normalisation into one loop over the
        # batch (TensorFlow's ops would take seven); on the accelerator it is part of the train step
        finish = _erase_mix_and_normalize if self.static_shapes else _erase_mix_and_normalize_compiled
        images = finish(images, erasing, lam, use_cutmix, box)
        targets = tf.cast(targets, tf.float32)
        return images, targets * lam + tf.reverse(targets, axis=[0]) * (1.0 - lam)


# The sizes of the host's erasing noise: steps of 2^(1/4) from 1024 values (at most 19% unused).
_NOISE_SIZES = sorted({math.ceil(1024 * 2 ** (k / 4) / 64) * 64 for k in range(84)})  # int32


def _noise_size(count):
    sizes = tf.constant(_NOISE_SIZES, tf.int32)
    return tf.gather(sizes, tf.searchsorted(sizes, count[None])[0])


def _bicubic_weights(in_sizes, in_extent, out_size):
    """PIL's antialiased bicubic resize (a = -0.5, support widened by the downscale factor) as
    matrices [B, out_size, in_extent]: row i weighs the input pixels of output pixel i; pixels at
    or past in_sizes[b] (the canvas' padding) get weight 0, and each row sums to 1."""
    in_sizes = tf.cast(in_sizes, tf.float32)[:, None, None]
    scale = in_sizes / out_size
    support = tf.maximum(scale, 1.0)  # the kernel's widening: 1 when upscaling
    center = (tf.range(out_size, dtype=tf.float32)[None, :, None] + 0.5) * scale
    pixel = tf.range(in_extent, dtype=tf.float32)[None, None, :]
    x = tf.abs(pixel + 0.5 - center) / support
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0  # |x| < 1
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a  # 1 <= |x| < 2
    weights = tf.where(x < 1.0, near, tf.where(x < 2.0, far, 0.0))
    weights = tf.where(pixel < in_sizes, weights, 0.0)
    return weights / tf.reduce_sum(weights, axis=2, keepdims=True)


def resize_crops(canvases, crop_sizes, size):
    """Each image's crop (the top-left crop_sizes[b] = (h, w) of its uint8 canvas [B, C, C, 3]),
    resized to float32 [B, size, size, 3] pixel values with PIL's antialiased bicubic (as timm's
    RandomResizedCrop), rounded and clipped as PIL's uint8 images. Two batched matrix products with
    per-image weights: fixed shapes, for the accelerator (XLA compiles it)."""
    extent = canvases.shape[1]
    rows = _bicubic_weights(crop_sizes[:, 0], extent, size)  # [B, size, C]
    cols = _bicubic_weights(crop_sizes[:, 1], canvases.shape[2], size)
    images = tf.cast(canvases, tf.float32)
    images = tf.einsum("bih,bhwc->biwc", rows, images)
    images = tf.einsum("bjw,biwc->bijc", cols, images)
    return _pixels(images)


class DeviceAugment:
    """The accelerator's part of the recipe: ((canvases uint8 [B, C, C, 3], crop sizes [B, 2]),
    targets) -> resize_crops to image_size, then a BatchAugment with static shapes."""

    def __init__(self, image_size, aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=None):
        self.image_size = image_size
        self.batch_augment = BatchAugment(aa, reprob, mixup, static_shapes=True)

    def __call__(self, crops, targets):
        canvases, crop_sizes = crops
        return self.batch_augment(resize_crops(canvases, crop_sizes, self.image_size), targets)


def erase_boxes(images, boxes, starts, noise):
    """images [B, H, W, 3] pixel values -> float32 with each image's box (BatchAugment.erasing) filled
    with pixel values that normalise to its noise."""
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    top, left, h, w = (v[:, None, None] for v in tf.unstack(boxes, axis=1))
    rows = tf.range(shape[1])[None, :, None]
    cols = tf.range(shape[2])[None, None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    index = tf.where(inside, starts[:, None, None] + (rows - top) * w + (cols - left), 0)
    pixels = np.float32(IMAGENET_MEAN) * 255.0 + np.float32(IMAGENET_STD) * 255.0 * tf.gather(noise, index)
    return tf.where(inside[..., None], pixels, images)


def _mix_and_normalize(images, lam, use_cutmix, box):
    """images [B, H, W, 3] pixel values -> normalised: with CutMix (use_cutmix), the box (top,
    bottom, left, right) of image i from image B-1-i; else lam * image i + (1 - lam) * image B-1-i."""
    std = np.asarray(IMAGENET_STD, np.float32)
    size = images.shape[1:] if images.shape[1:].is_fully_defined() else [1, 1, 3]
    # constants of the image's shape: TensorFlow's per-channel broadcast is slow
    scale = tf.constant(np.broadcast_to(1.0 / (255.0 * std), size))
    offset = tf.constant(np.broadcast_to(-np.asarray(IMAGENET_MEAN, np.float32) / std, size))
    partners = tf.reverse(images, axis=[0])
    shape = tf.shape(images)
    rows = tf.range(shape[1])[None, :, None, None]
    cols = tf.range(shape[2])[None, None, :, None]
    inside = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])
    mixed = tf.where(use_cutmix, tf.where(inside, partners, images), lam * images + (1.0 - lam) * partners)
    return mixed * scale + offset


def _erase_mix_and_normalize(images, erasing, lam, use_cutmix, box):
    images = tf.cast(images, tf.float32) if erasing is None else erase_boxes(images, *erasing)
    return _mix_and_normalize(images, lam, use_cutmix, box)


_erase_mix_and_normalize_compiled = tf.function(_erase_mix_and_normalize, jit_compile=True)


def smoothed_targets(labels, num_classes, mixup=None):
    """The targets the batch stage expects: one-hot with the Mixup's label smoothing (if any)."""
    return smooth_one_hot(labels, num_classes, mixup.label_smoothing if mixup is not None else 0.0)


def augment_on_device(model, augment):
    """Makes `augment` ((inputs, targets) -> (images, targets), e.g. device_augment's
    DeviceAugment) the first stage of `model`'s train step: it runs on each replica's device,
    inside the compiled step (with XLA where the step is compiled). Wraps the train step the model
    has (Keras' own or one installed on the instance, as crossvit_keras.training's XLA split does);
    call it after compile (under the strategy's scope, if any). Evaluation is unchanged. Returns
    the model.

    Under a tf.distribute strategy Keras builds the loss and the metrics by running the model on
    the first batch's inputs, which here are the augmentation's (canvases and crop sizes), not the
    model's: they are built here instead, on one blank image."""
    step = model.train_step

    def train_step(data):
        inputs, targets = data[0], data[1]
        return step(augment(inputs, targets))

    model.train_step = train_step
    images = tf.zeros([1, *model.inputs[0].shape[1:]], model.inputs[0].dtype)
    predictions = model(images, training=False)
    targets = tf.zeros_like(predictions)
    model.compute_loss(images, targets, predictions)
    model.compute_metrics(images, targets, predictions, sample_weight=None)
    model.reset_metrics()
    return model
