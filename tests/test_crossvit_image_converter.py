"""CrossViTImageConverter: timm's evaluation transform per variant (crop_pct 1.0 for the 408 models),
the same numbers as the tf.data / SavedModel transform, eagerly and inside tf.data."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from crossvit_keras import CrossViTImageConverter, configs
from crossvit_keras.data.preprocessing import eval_transform


@pytest.mark.parametrize("name", list(configs.VARIANTS))
def test_presets_carry_timms_pretrained_configuration(name):
    converter = CrossViTImageConverter.from_preset(name)
    size = 408 if name.endswith("_408") else 240
    # timm 1.0.31, crossvit.py default_cfgs: crop_pct=1.0 for the two 408 models, else _cfg's 0.875
    assert converter.image_size == (size, size) and converter.crop_pct == (1.0 if size == 408 else 0.875)
    assert converter.interpolation == "bicubic"
    assert converter.mean == configs.IMAGENET_MEAN and converter.std == configs.IMAGENET_STD
    assert configs.default_crop_pct(name) == converter.crop_pct


def test_same_numbers_as_the_exported_transform():
    rng = np.random.default_rng(0)
    converter = CrossViTImageConverter(image_size=48, crop_pct=0.875)
    for shape in ((2, 70, 90, 3), (2, 90, 70, 3), (1, 48, 48, 3), (1, 13, 200, 3)):
        images = rng.integers(0, 256, shape).astype("uint8")
        expected = eval_transform(images, 48).numpy()
        np.testing.assert_array_equal(converter(images), expected)
        np.testing.assert_array_equal(converter(images[0]), expected[0])  # unbatched
    # in tf.data (keras-hub's input pipeline), and images of different sizes in a list
    images = [rng.integers(0, 256, s).astype("uint8") for s in ((60, 50, 3), (48, 100, 3))]
    dataset = tf.data.Dataset.from_tensors(images[0]).map(converter)
    np.testing.assert_array_equal(next(iter(dataset)), eval_transform(images[0], 48))
    np.testing.assert_array_equal(converter(images), np.stack([eval_transform(x, 48) for x in images]))


def test_crop_pct_one_crops_without_margin():
    images = np.random.default_rng(1).integers(0, 256, (1, 48, 48, 3)).astype("uint8")
    converted = keras.ops.convert_to_numpy(CrossViTImageConverter(48, crop_pct=1.0)(images))
    mean, std = np.asarray(configs.IMAGENET_MEAN), np.asarray(configs.IMAGENET_STD)
    np.testing.assert_allclose(converted, (images / 255.0 - mean) / std, atol=1e-5)  # no resize, no crop


def test_config_roundtrip():
    converter = CrossViTImageConverter.from_preset("crossvit_15_dagger_408")
    config = converter.get_config()
    for clone in (
        CrossViTImageConverter.from_config(config),
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(converter)),
    ):
        assert type(clone) is CrossViTImageConverter and clone.get_config() == config
    assert isinstance(converter, keras_hub.layers.ImageConverter)
    with pytest.raises(ValueError, match="crop_pct"):
        CrossViTImageConverter(48, crop_pct=1.5)
    with pytest.raises(ValueError, match="square"):
        CrossViTImageConverter((48, 64))
