"""CrossViT as keras-hub models: a Backbone (features, per stage and as spatial maps), an
ImageClassifier (the two branch heads and their mean), the image converter and preprocessor of
timm's evaluation transform, and the 11 variants as presets.

    classifier = crossvit_keras.CrossViTImageClassifier.from_preset("crossvit_15_240")
    classifier.predict(uint8_images)          # any size: the preset's preprocessing runs first
    classifier.save_to_preset("my_crossvit")  # keras_hub.models.ImageClassifier.from_preset("my_crossvit")

Nothing here imports TensorFlow: the classes run on every Keras backend.
"""

from crossvit_keras.models.crossvit_backbone import CrossViTBackbone, TokensToMap
from crossvit_keras.models.crossvit_image_classifier import CrossViTImageClassifier
from crossvit_keras.models.crossvit_image_classifier_preprocessor import CrossViTImageClassifierPreprocessor
from crossvit_keras.models.crossvit_image_converter import CrossViTImageConverter
from crossvit_keras.models.crossvit_presets import PRESETS

__all__ = [
    "PRESETS",
    "CrossViTBackbone",
    "CrossViTImageClassifier",
    "CrossViTImageClassifierPreprocessor",
    "CrossViTImageConverter",
    "TokensToMap",
]
