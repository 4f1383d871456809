"""The training augmentations: timm's boxes and fall-backs, shapes, value ranges, label sums."""

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from crossvit_keras.data import augment
from crossvit_keras.data.preprocessing import fixed_size_normalizer, normalize


def encoded(shape=(60, 80, 3), fmt="JPEG", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def test_random_resized_crop_box_stays_inside_with_timm_area_and_ratio():
    tf.random.set_seed(0)
    for _ in range(200):
        top, left, h, w = augment.random_resized_crop_box(300, 400, (0.08, 1.0), (3 / 4, 4 / 3)).numpy()
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 0.08 * 120000 * 0.9 <= h * w <= 120000
        if h * w < 0.9 * 120000:  # not the fall-back: the ratio is within range (up to rounding)
            assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_random_resized_crop_box_falls_back_to_timm_centre_crop():
    # a 10 x 100 strip: no box of >= 90% of the area with ratio in [3/4, 4/3] fits, so timm's fall-back:
    # full height, width round(10 * 4/3) = 13, centred
    top, left, h, w = augment.random_resized_crop_box(10, 100, (0.9, 1.0), (3 / 4, 4 / 3)).numpy()
    assert (top, left, h, w) == (0, (100 - 13) // 2, 10, 13)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_random_crop_shape_and_range(fmt):
    crop = augment.decode_random_crop(tf.constant(encoded(fmt=fmt)), 48)
    assert crop.shape == (48, 48, 3) and crop.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(crop)) and float(tf.reduce_max(crop)) <= 255.0


def test_random_flip_flips_or_not():
    image = tf.reshape(tf.range(12, dtype=tf.float32), (2, 2, 3))
    np.testing.assert_array_equal(augment.random_flip(image, 1.0), image.numpy()[:, ::-1])
    np.testing.assert_array_equal(augment.random_flip(image, 0.0), image.numpy())


def test_parse_rand_augment_reads_timm_strings():
    assert augment.parse_rand_augment("rand-m9-mstd0.5-inc1") == {
        "num_layers": 2,
        "magnitude": 9.0,
        "magnitude_std": 0.5,
        "prob": 0.5,
    }
    assert augment.parse_rand_augment("rand-m7-n3-p0.8")["num_layers"] == 3
    assert augment.parse_rand_augment("none") is None and augment.parse_rand_augment("") is None
    for bad in ("v0", "rand-m11", "rand-x3", "rand-inc0"):
        with pytest.raises(ValueError, match="--aa"):
            augment.parse_rand_augment(bad)


def test_random_erasing_fills_one_box_with_noise():
    tf.random.set_seed(1)
    image = tf.fill((40, 50, 3), 7.0)
    for _ in range(20):
        erased = augment.random_erasing(image, probability=1.0).numpy()
        changed = np.any(erased != 7.0, axis=-1)
        rows, cols = np.nonzero(changed)
        assert changed.any()
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all(), "the erased pixels form one rectangle"
        assert 0.02 * 2000 * 0.8 <= box.size <= 2000 / 3 * 1.2
        assert abs(float(erased[changed].std()) - 1.0) < 0.3  # N(0, 1) pixels
    np.testing.assert_array_equal(augment.random_erasing(image, probability=0.0), image.numpy())


def test_decode_crop_flip_gives_uint8():
    crop = augment.decode_crop_flip(tf.constant(encoded()), 48)
    assert crop.shape == (48, 48, 3) and crop.dtype == tf.uint8


def _smooth(shape, seed=0):
    coarse = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize(shape[::-1], Image.BICUBIC))


@pytest.mark.parametrize("crop", [(70, 50), (24, 24), (11, 17), (96, 96), (96, 30)])
def test_device_resize_is_pils_antialiased_bicubic(crop):
    """resize_crops on a canvas = TensorFlow's antialiased bicubic resize of the crop (to float
    rounding) = PIL's (up to PIL's rounding and clipping to uint8 between its two passes)."""
    from crossvit_keras.data import batch_augment

    pixels = _smooth(crop)
    canvas = np.zeros((1, 96, 96, 3), np.uint8)
    canvas[0, : crop[0], : crop[1]] = pixels
    out = batch_augment.resize_crops(tf.constant(canvas), tf.constant([crop]), 24)[0].numpy()
    pil = np.asarray(Image.fromarray(pixels).resize((24, 24), Image.BICUBIC))
    assert np.abs(out - pil).mean() < 0.3
    tf_resized = tf.image.resize(pixels, [24, 24], "bicubic", antialias=True).numpy()
    assert np.abs(out - np.clip(np.round(tf_resized), 0, 255)).max() <= 1


def test_decode_crop_unresized_is_the_host_crop_before_its_resize():
    """A crop that fits the canvas (2 x size) is decoded at full size, the host path's crop before
    its resize; a larger one is decoded at 1/2 (or 1/4, 1/8) of its size by the JPEG decoder's DCT
    scaling."""
    from crossvit_keras.data import batch_augment

    contents = tf.constant(encoded((120, 160, 3)))
    for seed in range(6):
        tf.random.set_seed(seed)
        box = augment.random_resized_crop_box(120, 160).numpy()
        tf.random.set_seed(seed)
        crop = augment.decode_crop_unresized(contents, 48, hflip=0.0)
        tf.random.set_seed(seed)
        host = augment.decode_random_crop(contents, 48).numpy()
        assert crop.dtype == tf.uint8
        if max(box[2:]) <= 96:
            assert crop.shape[:2] == tuple(box[2:])
            canvas = tf.image.pad_to_bounding_box(crop, 0, 0, 96, 96)
            device = batch_augment.resize_crops(canvas[None], tf.shape(crop)[None, :2], 48)[0].numpy()
            assert np.abs(device - np.round(host)).max() <= 1
        else:
            assert crop.shape[:2] == tuple((box[2:] + 1) // 2)
    tf.random.set_seed(0)
    crop = augment.decode_crop_unresized(tf.constant(encoded((200, 100, 3), fmt="PNG")), 24, (0.9, 1.0))
    assert max(crop.shape[:2]) == 48  # other formats: resized to fit the canvas


def test_smoothed_one_hot_is_timms():
    targets = augment.smooth_one_hot(tf.constant([2, 0]), 4, 0.1).numpy()
    np.testing.assert_allclose(targets[0], [0.025, 0.025, 0.925, 0.025])
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)


def batch(size=8, classes=10):
    images = tf.reshape(tf.range(size, dtype=tf.float32), (size, 1, 1, 1)) * tf.ones((size, 12, 16, 3))
    return images, tf.range(size) % classes


def test_mixup_pairs_the_flipped_batch_with_matching_targets():
    tf.random.set_seed(2)
    images, labels = batch()
    mix = augment.MixupCutmix(10, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    mixed, targets = mix(images, labels)
    mixed, targets = mixed.numpy(), targets.numpy()
    assert mixed.shape == (8, 12, 16, 3) and targets.shape == (8, 10)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    lam = targets[0, 0]  # image 0 (label 0) mixed with image 7 (label 7)
    np.testing.assert_allclose(targets[0, 7], 1 - lam, rtol=1e-5)
    np.testing.assert_allclose(mixed[0], lam * 0 + (1 - lam) * 7, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[3], lam * 3 + (1 - lam) * 4, rtol=1e-5)


def test_cutmix_target_weights_equal_the_pasted_area():
    tf.random.set_seed(3)
    images, labels = batch()
    mix = augment.MixupCutmix(10, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)
    for _ in range(10):
        mixed, targets = mix(images, labels)
        mixed, targets = mixed.numpy(), targets.numpy()
        np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
        pasted = np.mean(mixed[0, ..., 0] == 7.0)  # image 0 gets its box from image 7
        off = 0.1 / 10
        lam = (targets[0, 0] - off) / (1 - 0.1)
        np.testing.assert_allclose(1 - lam, pasted, atol=1e-5)


def test_mix_probability_and_switch():
    images, labels = batch()
    off = augment.MixupCutmix(10, prob=0.0, label_smoothing=0.1)
    mixed, targets = off(images, labels)
    np.testing.assert_array_equal(mixed, images.numpy())
    np.testing.assert_allclose(targets, augment.smooth_one_hot(labels, 10, 0.1))
    assert not augment.MixupCutmix(10, mixup_alpha=0.0, cutmix_alpha=0.0).active
    tf.random.set_seed(4)
    both = augment.MixupCutmix(10, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.0)
    kinds = set()
    for _ in range(20):
        mixed = both(images, labels)[0].numpy()[0, ..., 0]
        kinds.add("cutmix" if set(np.unique(mixed)) <= {0.0, 7.0} else "mixup")
    assert kinds == {"cutmix", "mixup"}
    with pytest.raises(ValueError, match="prob"):
        augment.MixupCutmix(10, prob=1.5)


def test_beta_sampler_mean():
    tf.random.set_seed(5)
    samples = [float(augment._sample_beta(0.8)) for _ in range(300)]
    assert abs(np.mean(samples) - 0.5) < 0.06 and min(samples) >= 0 and max(samples) <= 1
    assert math.isfinite(sum(samples))


def test_fixed_size_normalizer_equals_normalize():
    images = tf.random.uniform([2, 9, 7, 3], 0, 255, seed=3)
    expected = normalize(images)
    for shape, x in (((2, 9, 7, 3), images), ((9, 7, 3), images[1])):
        actual = fixed_size_normalizer(shape)(x)
        np.testing.assert_allclose(actual, expected if len(shape) == 4 else expected[1], rtol=1e-5, atol=1e-5)
