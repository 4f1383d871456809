"""The preprocessor of CrossViTImageClassifier: raw images -> the backbone's input, in fit, predict
and evaluate (keras-hub runs it in the input pipeline), labels passed through."""

from keras_hub.models import ImageClassifierPreprocessor

from crossvit_keras.layers.base import register
from crossvit_keras.models import crossvit_presets
from crossvit_keras.models.crossvit_backbone import CrossViTBackbone
from crossvit_keras.models.crossvit_image_converter import CrossViTImageConverter


@register
class CrossViTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """`x, y, sample_weight` -> `(converted x, y, sample_weight)`: the `CrossViTImageConverter`
    (timm's evaluation transform of the variant) on the images."""

    backbone_cls = CrossViTBackbone
    image_converter_cls = CrossViTImageConverter

    @classmethod
    def from_preset(cls, preset, **kwargs):
        if crossvit_presets.is_variant(preset):
            converter = CrossViTImageConverter.from_preset(preset)
            return cls(image_converter=converter, **kwargs)
        return super().from_preset(preset, **kwargs)
