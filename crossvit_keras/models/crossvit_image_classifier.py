"""CrossViT as a keras-hub ImageClassifier: the backbone, then LayerNorm and a linear head on each
branch's CLS token, logits = the mean of the two heads' (paper Sec. 3.3).

    classifier = crossvit_keras.CrossViTImageClassifier.from_preset("crossvit_15_240")
    classifier.predict(uint8_images_of_any_size)     # the preset's preprocessing runs first

The head is `crossvit_keras.model.ClassifierHead`, named "head" as in `crossvit_keras.CrossViT`:
the weights of both have the same paths, and the strict timm converter loads either.
"""

import keras
from keras_hub.models import ImageClassifier
from keras_hub.src.models.task import Task

from crossvit_keras.layers.base import register
from crossvit_keras.model import ClassifierHead
from crossvit_keras.models import crossvit_presets
from crossvit_keras.models.crossvit_backbone import CrossViTBackbone
from crossvit_keras.models.crossvit_image_classifier_preprocessor import CrossViTImageClassifierPreprocessor


@register
class CrossViTImageClassifier(ImageClassifier):
    """CrossViT image classification: a `CrossViTBackbone`, the two branch heads and their mean.

    Args:
        backbone: a `crossvit_keras.CrossViTBackbone`.
        num_classes: int, the number of classes (>= 1).
        preprocessor: None, or a `CrossViTImageClassifierPreprocessor` (raw images in `fit`,
            `predict` and `evaluate`).
        activation: None (logits), or an activation applied to the mean of the heads, e.g. "softmax".
        dropout: dropout on the CLS features before the heads (timm's drop_rate).
        head_dtype: the heads' dtype policy (default: the backbone's). The output is float32.

    `from_preset("crossvit_15_240")` (any of the 11 variants; paper and official names too) builds
    the variant with timm's ImageNet-1k weights (`load_weights=False`: fresh; `num_classes=N`: fresh
    heads for fine-tuning); `from_preset(dir)` loads a `save_to_preset` directory, or keras-hub's
    hf:// and kaggle:// handles of one. Each branch's logits: `crossvit_keras.branch_logits(classifier)`."""

    backbone_cls = CrossViTBackbone
    preprocessor_cls = CrossViTImageClassifierPreprocessor
    presets = crossvit_presets.PRESETS

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        activation=None,
        dropout=0.0,
        head_dtype=None,
        name="crossvit_image_classifier",
        **kwargs,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}; for features use the backbone.")
        head_dtype = head_dtype or backbone.dtype_policy
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.head = ClassifierHead(
            backbone.embed_dims, num_classes, dropout, backbone.cls_token, name="head", dtype=head_dtype
        )
        # Logits in float32 under mixed precision (and the optional activation), as crossvit_keras.CrossViT.
        self.output_activation = keras.layers.Activation(activation or "linear", dtype="float32", name="logits")

        # === Functional model ===
        inputs = self.backbone.input
        outputs = self.output_activation(self.head(self.backbone(inputs)))
        Task.__init__(self, inputs=inputs, outputs=outputs, name=name, **kwargs)  # skips ImageClassifier's pooling head

        # === Config ===
        self.num_classes = num_classes
        self.activation = activation
        self.dropout = dropout

    @property
    def image_size(self):
        """The input size (the small branch's)."""
        return self.backbone.image_size

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        if crossvit_presets.is_variant(preset):
            return crossvit_presets.load_classifier(cls, preset, load_weights, **kwargs)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    def get_config(self):
        config = Task.get_config(self)  # backbone and preprocessor
        config.update({"num_classes": self.num_classes, "activation": self.activation, "dropout": self.dropout})
        return config
