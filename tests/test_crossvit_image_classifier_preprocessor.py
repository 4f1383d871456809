"""CrossViTImageClassifierPreprocessor: images converted, labels and sample weights passed through,
eagerly and in tf.data; the variants' presets."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from crossvit_keras import CrossViTImageClassifierPreprocessor, CrossViTImageConverter
from crossvit_keras.data.preprocessing import eval_transform


def test_images_converted_labels_passed_through():
    preprocessor = CrossViTImageClassifierPreprocessor(CrossViTImageConverter(image_size=48))
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3)).astype("uint8")
    labels, weights = np.array([1, 3]), np.array([0.5, 1.0], "float32")
    x, y, w = preprocessor(images, labels, weights)
    np.testing.assert_array_equal(x, eval_transform(images, 48))
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(w, weights)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2).map(preprocessor)
    x, y = next(iter(dataset))
    np.testing.assert_array_equal(x, eval_transform(images, 48))
    np.testing.assert_array_equal(y, labels)


def test_presets_and_config():
    preprocessor = CrossViTImageClassifierPreprocessor.from_preset("crossvit_18_dagger_408")
    assert preprocessor.image_converter.crop_pct == 1.0 and preprocessor.image_converter.image_size == (408, 408)
    assert isinstance(preprocessor, keras_hub.models.ImageClassifierPreprocessor)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(preprocessor))
    assert type(clone) is CrossViTImageClassifierPreprocessor
    assert clone.image_converter.get_config() == preprocessor.image_converter.get_config()
