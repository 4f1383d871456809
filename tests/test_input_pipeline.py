"""The batch augmentations (crossvit_keras.data.batch_augment) on the host and on the accelerator:
timm's distributions (RandAugment's op choices, magnitudes and signs, the share of erased images,
the Mixup/CutMix lambdas), the ops against PIL's, both pipeline modes, and the accelerator mode
training under MirroredStrategy over two logical CPUs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO
from PIL import Image, ImageEnhance, ImageOps
from scipy import stats
from test_training import ENV, RECIPE, TINY, make_folder

from crossvit_keras import data
from crossvit_keras.data import augment, batch_augment
from crossvit_keras.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD


def test_rand_augment_choices_follow_timm():
    """timm's RandAugment: op uniform over its 15 ops (with replacement), applied with p=0.5,
    magnitude N(9, 0.5) clipped to [0, 10], sign - with probability 1/2."""
    tf.random.set_seed(0)
    ra = batch_augment.RandAugment.from_string("rand-m9-mstd0.5-inc1")
    assert (ra.num_layers, ra.magnitude, ra.magnitude_std, ra.prob) == (2, 9.0, 0.5, 0.5)
    op, magnitude, sign = (t.numpy() for t in ra.sample(30000))
    counts = np.bincount(op, minlength=16)
    assert stats.binomtest(counts[15], 30000, 0.5).pvalue > 1e-3  # not applied
    assert stats.chisquare(counts[:15]).pvalue > 1e-3  # uniform over the 15 ops
    assert 0 <= magnitude.min() and magnitude.max() <= 10
    expected = np.clip(np.random.default_rng(0).normal(9, 0.5, 30000), 0, 10)
    assert stats.ks_2samp(magnitude, expected).pvalue > 1e-3
    assert stats.binomtest(int((sign < 0).sum()), 30000, 0.5).pvalue > 1e-3


def _image(seed=0, size=(40, 48)):
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).resize(size[::-1], Image.BICUBIC)
    return np.asarray(smooth)


# timm's ops (timm.data.auto_augment) in PIL, at magnitude 7 with sign +1 / -1
def _pil_ops(sign):
    level = 7.0
    factor = max(0.1, 1.0 + sign * level / 10 * 0.9)

    def solarize_add(img):
        add = min(128, int(level / 10 * 110))
        return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)

    return {
        "AutoContrast": ImageOps.autocontrast,
        "Equalize": ImageOps.equalize,
        "Invert": ImageOps.invert,
        "PosterizeIncreasing": lambda img: ImageOps.posterize(img, 4 - int(level / 10 * 4)),
        "SolarizeIncreasing": lambda img: ImageOps.solarize(img, 256 - min(256, int(level / 10 * 256))),
        "SolarizeAdd": solarize_add,
        "ColorIncreasing": lambda img: ImageEnhance.Color(img).enhance(factor),
        "ContrastIncreasing": lambda img: ImageEnhance.Contrast(img).enhance(factor),
        "BrightnessIncreasing": lambda img: ImageEnhance.Brightness(img).enhance(factor),
        "SharpnessIncreasing": lambda img: ImageEnhance.Sharpness(img).enhance(factor),
        "ShearX": lambda img: img.transform(img.size, Image.AFFINE, (1, sign * 0.21, 0, 0, 1, 0), **_AFFINE),
        "ShearY": lambda img: img.transform(img.size, Image.AFFINE, (1, 0, 0, sign * 0.21, 1, 0), **_AFFINE),
        "TranslateXRel": lambda img: img.transform(
            img.size, Image.AFFINE, (1, 0, sign * 0.315 * img.size[0], 0, 1, 0), **_AFFINE
        ),
        "TranslateYRel": lambda img: img.transform(
            img.size, Image.AFFINE, (1, 0, 0, 0, 1, sign * 0.315 * img.size[1]), **_AFFINE
        ),
        "Rotate": lambda img: img.rotate(sign * 21.0, **_AFFINE),
    }


_AFFINE = {"resample": Image.BILINEAR, "fillcolor": batch_augment.FILL}


@pytest.mark.parametrize("static_shapes", [False, True])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ops_match_pil(static_shapes, sign):
    """Every op, at one magnitude, on the host and the accelerator paths, against timm's PIL op (the
    geometric ones with PIL's bilinear): pixel ops within 1 level, geometric ones within a few on average."""
    images = np.stack([_image(0), _image(1)])
    ra = batch_augment.RandAugment(static_shapes=static_shapes)
    for name, pil_op in _pil_ops(sign).items():
        op = tf.fill([2], batch_augment.OPS.index(name))
        ours = ra.apply(tf.constant(images, tf.float32), op, tf.fill([2], 7.0), tf.fill([2], sign)).numpy()
        theirs = np.stack([np.asarray(pil_op(Image.fromarray(image))) for image in images]).astype(np.float32)
        difference = np.abs(ours - theirs)
        if name in batch_augment.GEOMETRIC:
            inner = difference[:, 2:-2, 2:-2]
            assert inner.mean() < 4.0 and np.quantile(inner, 0.9) < 8, name
        else:
            assert difference.max() <= 1.0 and difference.mean() < 0.3, (name, difference.max(), difference.mean())


@pytest.mark.parametrize("static_shapes", [False, True])
def test_ops_leave_unchosen_images(static_shapes):
    images = tf.constant(np.stack([_image(2), _image(3), _image(4)]), tf.float32)
    ra = batch_augment.RandAugment(static_shapes=static_shapes)
    none = tf.fill([3], len(batch_augment.OPS))
    np.testing.assert_array_equal(ra.apply(images, none, tf.fill([3], 9.0), tf.ones([3])), images)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_erasing_share_and_boxes_follow_timm(static_shapes):
    """timm's RandomErasing(0.25, pixel mode): a quarter of the images get one box of 2%-33% of the
    area, filled with values that normalise to N(0, 1) (the whole batch stage, without Mixup)."""
    tf.random.set_seed(1)
    stage = batch_augment.BatchAugment(aa="none", reprob=0.25, static_shapes=static_shapes)
    images = tf.fill([2000, 24, 32, 3], tf.constant(100, tf.uint8))
    out, _ = stage(images, tf.zeros([2000, 2]))
    out = out.numpy()
    plain = (100 / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    changed = np.any(np.abs(out - plain) > 1e-5, axis=-1)
    hit = changed.any(axis=(1, 2))
    assert stats.binomtest(int(hit.sum()), 2000, 0.25).pvalue > 1e-3
    for image in changed[hit][:50]:
        rows, cols = np.nonzero(image)
        box = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and 0.02 * 768 * 0.7 <= box.size <= 768 / 3 * 1.3
    assert abs(out[changed].mean()) < 0.05 and abs(out[changed].std() - 1.0) < 0.05


def test_mixup_cutmix_lambdas_follow_timm():
    """timm's Mixup (mode batch, switch 0.5): half the batches CutMix with lambda ~ Beta(1, 1), the
    others Mixup with lambda ~ Beta(0.8, 0.8) (before CutMix's area correction)."""
    tf.random.set_seed(2)
    mixer = augment.MixupCutmix(10, mixup_alpha=0.8, cutmix_alpha=1.0)
    params = tf.function(lambda _: mixer.params())
    drawn = [params(i) for i in tf.range(1500)]
    lam = np.array([float(a) for a, _ in drawn])
    cutmix = np.array([bool(b) for _, b in drawn])
    assert stats.binomtest(int(cutmix.sum()), 1500, 0.5).pvalue > 1e-3
    assert stats.kstest(lam[cutmix], stats.beta(1.0, 1.0).cdf).pvalue > 1e-3
    assert stats.kstest(lam[~cutmix], stats.beta(0.8, 0.8).cdf).pvalue > 1e-3


@pytest.mark.parametrize("static_shapes", [False, True])
def test_batch_stage_mixes_images_and_targets_alike(static_shapes):
    tf.random.set_seed(3)
    stage = batch_augment.BatchAugment(aa="none", reprob=0.0, mixup=augment.MixupCutmix(8), static_shapes=static_shapes)
    images = tf.cast(tf.reshape(tf.range(8), (8, 1, 1, 1)) * tf.ones((8, 12, 16, 3), tf.int32) * 30, tf.uint8)
    targets = augment.smooth_one_hot(tf.range(8), 8, 0.1)
    for _ in range(5):
        out, mixed = (t.numpy() for t in stage(images, targets))
        np.testing.assert_allclose(mixed.sum(1), 1.0, rtol=1e-5)
        pixels = out[0, ..., 0] * IMAGENET_STD[0] * 255 + IMAGENET_MEAN[0] * 255  # image 0 and 7
        share_of_7 = float(np.mean(pixels / 210.0))
        lam = (mixed[0, 0] - 0.1 / 8) / 0.9
        assert abs((1 - lam) - share_of_7) < 1e-3


@pytest.mark.parametrize("aug_device", ["host", "accelerator"])
def test_train_dataset_modes(tmp_path, aug_device):
    folder = data.make_photo_folder(str(tmp_path), num_images=8, classes=2, sides=(60, 160))
    dataset = data.open_dataset("IMNET", folder, splits=("train",))
    mixup = augment.MixupCutmix(2)
    stream = data.train_dataset(dataset.train, 32, 4, 2, mixup=mixup, aug_device=aug_device, threads=1)
    images, targets = next(iter(stream))
    assert targets.shape == (4, 2)
    np.testing.assert_allclose(targets.numpy().sum(1), 1.0, rtol=1e-5)
    if aug_device == "host":
        assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
    else:
        canvases, crop_sizes = images  # the crops, not yet resized, at the top left of 64 x 64 canvases
        assert canvases.shape == (4, 64, 64, 3) and canvases.dtype == tf.uint8
        sizes = crop_sizes.numpy()
        assert sizes.shape == (4, 2) and (sizes >= 1).all() and (sizes <= 64).all()
        for canvas, (h, w) in zip(canvases.numpy(), sizes, strict=True):
            assert not canvas[h:].any() and not canvas[:, w:].any()  # zero outside the crop
        np.testing.assert_allclose(np.unique(targets), [0.05, 0.95], rtol=1e-6)  # smoothed, not mixed
        out, mixed = data.device_augment(32, mixup=mixup)(images, targets)
        assert out.dtype == tf.float32 and out.shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="aug_device"):
        data.train_dataset(dataset.train, 32, 4, 2, aug_device="gpu")


@pytest.mark.slow
def test_device_augment_compiles_with_xla():
    canvases = tf.constant(np.stack([_image(2), _image(3)]), tf.uint8)  # 40 x 48
    compiled = tf.function(data.device_augment(24, mixup=augment.MixupCutmix(4)), jit_compile=True)
    out, targets = compiled((canvases, tf.constant([[40, 48], [20, 30]])), tf.one_hot([0, 3], 4))
    assert out.shape == (2, 24, 24, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(targets.numpy().sum(1), 1.0, rtol=1e-5)


def test_accelerator_stage_trains_a_small_model():
    """augment_on_device: the train step takes uint8 canvases with their crops' sizes and smoothed
    targets, and runs the resize and the batch augmentations itself (the recipe's CrossViT under
    MirroredStrategy and XLA: the slow tests)."""
    import keras

    from crossvit_keras import training

    keras.utils.set_random_seed(0)
    # under a strategy Keras builds the metrics from the first batch: the augmentation's inputs
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        images = keras.Input((24, 24, 3), name="images")  # named, as CrossViT's
        model = keras.Model(images, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(images)))
        training.compile_model(model, keras.optimizers.AdamW(1e-3), 5, jit_compile=False)
        seen = []
        model.train_step = (lambda step: lambda batch: (seen.append(batch[0].dtype), step(batch))[1])(model.train_step)
        data.augment_on_device(model, data.device_augment(24, mixup=augment.MixupCutmix(5)))
    rng = np.random.default_rng(0)
    canvases = rng.integers(0, 256, (8, 48, 48, 3), dtype=np.uint8)
    crop_sizes = rng.integers(10, 49, (8, 2)).astype(np.int32)
    targets = augment.smooth_one_hot(np.arange(8) % 5, 5, 0.1).numpy()
    history = model.fit((canvases, crop_sizes), targets, batch_size=4, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    assert seen and all(dtype == tf.float32 for dtype in seen)  # the model's step got augmented float images


@pytest.mark.slow
def test_accelerator_mode_trains_under_mirrored_strategy(tmp_path):
    """The recipe with --aug-device accelerator under MirroredStrategy over two logical CPUs, with
    XLA: the augmentations run in each replica's step; training and evaluation finish."""
    out = tmp_path / "run"
    command = [sys.executable, RECIPE, "--data-path", make_folder(tmp_path / "images", 8), "--output_dir", str(out)]
    command += [*TINY, "--batch-size", "2", "--epochs", "1", "--warmup-epochs", "0", "--aug-device", "accelerator"]
    command += ["--strategy", "mirrored", "--cpu-devices", "2", "--jit-compile", "on", "--verbose", "2"]
    command += ["--no-saved-model"]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["aug_device"] == "accelerator" and config["replicas_in_sync"] == 2
    results = json.loads((out / "results.json").read_text())
    assert np.isfinite(results["loss"])
