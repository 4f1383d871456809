"""CrossViTImageClassifier: CrossViT's logits from the same weights, save_to_preset reloaded by
keras-hub's generic classes, raw images in (the preset's preprocessing in predict and fit) agreeing
with the SavedModel's serving_default."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from helpers import random_inputs, tiny_model

import crossvit_keras
from crossvit_keras import (
    CrossViTBackbone,
    CrossViTImageClassifier,
    CrossViTImageClassifierPreprocessor,
    CrossViTImageConverter,
    configs,
)
from crossvit_keras.data.preprocessing import eval_transform
from crossvit_keras.models import crossvit_presets

NUM_CLASSES = 5


def tiny_classifier(crop_pct=0.875, **kwargs):
    backbone = CrossViTBackbone(**crossvit_presets.backbone_config("crossvit_tiny_240", **configs.TEST_OVERRIDES))
    converter = CrossViTImageConverter(image_size=48, crop_pct=crop_pct)
    preprocessor = CrossViTImageClassifierPreprocessor(converter)
    return CrossViTImageClassifier(backbone, NUM_CLASSES, preprocessor=preprocessor, **kwargs)


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return tiny_classifier()


@pytest.fixture(scope="module")
def raw_images():
    """uint8 photographs-to-be of a size the model does not take (70 x 90)."""
    return np.random.default_rng(0).integers(0, 256, (3, 70, 90, 3)).astype("uint8")


def test_logits_are_crossvits(classifier):
    model = tiny_model(NUM_CLASSES)
    weights = {w.path: w for w in classifier.weights}
    assert sorted(weights) == sorted(w.path for w in model.weights)
    model.set_weights([weights[w.path].numpy() for w in model.weights])
    images = random_inputs((2, 48, 48, 3))
    np.testing.assert_array_equal(classifier(images), model(images))
    small, large = crossvit_keras.branch_logits(classifier)(images)
    np.testing.assert_allclose((small + large) / 2, classifier(images), atol=1e-6)
    assert classifier.count_params() == model.count_params() and classifier.image_size == 48


def test_config_roundtrip(classifier):
    config = classifier.get_config()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(classifier))
    assert type(clone) is CrossViTImageClassifier and clone.get_config() == config
    assert type(clone.preprocessor.image_converter) is CrossViTImageConverter
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        CrossViTImageClassifier(classifier.backbone, 0)


def test_save_to_preset_reloads_through_keras_hub(classifier, raw_images, tmp_path):
    preset = str(tmp_path / "preset")
    classifier.save_to_preset(preset)
    images = random_inputs((2, 48, 48, 3))
    loaded = keras_hub.models.ImageClassifier.from_preset(preset)  # the generic class finds ours
    assert type(loaded) is CrossViTImageClassifier and loaded.get_config() == classifier.get_config()
    np.testing.assert_array_equal(loaded(images), classifier(images))
    np.testing.assert_array_equal(loaded.preprocessor(raw_images), classifier.preprocessor(raw_images))
    backbone = CrossViTBackbone.from_preset(preset)
    for a, e in zip(backbone(images), classifier.backbone(images), strict=True):
        np.testing.assert_array_equal(a, e)
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    assert type(converter) is CrossViTImageConverter and converter.crop_pct == 0.875


def test_raw_images_in_predict_agree_with_the_saved_model(classifier, raw_images, tmp_path):
    logits = classifier.predict(raw_images, verbose=0)  # the preprocessor runs in predict's input pipeline
    np.testing.assert_allclose(logits, classifier(eval_transform(raw_images, 48)), atol=1e-5)
    path = crossvit_keras.export_saved_model(classifier, tmp_path / "1")  # crop_pct: the preprocessor's
    serve = tf.saved_model.load(path).signatures["serving_default"]
    probabilities = serve(images=tf.constant(raw_images, tf.float32))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, tf.nn.softmax(logits).numpy(), atol=1e-5)


def test_fit_on_raw_images(raw_images):
    keras.utils.set_random_seed(0)
    classifier = tiny_classifier()
    classifier.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)  # keras-hub's loss and metrics
    history = classifier.fit(raw_images, np.array([0, 1, 2]), batch_size=3, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
