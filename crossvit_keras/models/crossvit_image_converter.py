"""The image converter of CrossViT's presets: timm's evaluation transform of the released weights.

    converter = crossvit_keras.CrossViTImageConverter.from_preset("crossvit_15_dagger_408")
    converter(uint8_images)   # (B, 408, 408, 3): shorter side to 408 / 1.0 (bicubic), centre crop, normalised

Unlike keras-hub's default converter (a resize of the whole image), this resizes the shorter side to
image_size / crop_pct and takes the central crop, as timm evaluates, with timm's pretrained
configuration per variant (crossvit_keras.configs.PRETRAINED_CFGS: crop_pct 1.0 for the 408 models,
0.875 otherwise; bicubic; ImageNet mean and std). The transform is crossvit_keras.transforms.eval_transform,
the one the SavedModel export runs too: keras.ops on the current backend, TensorFlow ops inside tf.data.
"""

import keras
import numpy as np
from keras_hub.layers import ImageConverter
from keras_hub.src.utils.tensor_utils import in_tf_function

from crossvit_keras import configs, transforms
from crossvit_keras.layers.base import register
from crossvit_keras.models import crossvit_presets
from crossvit_keras.models.crossvit_backbone import CrossViTBackbone


@register
class CrossViTImageConverter(ImageConverter):
    """Raw RGB images in [0, 255] ([H, W, 3] or [B, H, W, 3], any size and dtype) -> the backbone's
    input (B, image_size, image_size, 3) float32.

    Args:
        image_size: int or (int, int) square size, the model's input (240 or 408 for the variants).
        crop_pct: the central crop's share of the resized shorter side (timm's crop_pct).
        mean, std: per-channel ImageNet statistics of pixels in [0, 1].
        interpolation: the resize's ("bicubic", as timm; antialiased like PIL)."""

    backbone_cls = CrossViTBackbone

    def __init__(
        self,
        image_size=configs.IMAGE_SIZES_240[0],
        crop_pct=configs.DEFAULT_CROP_PCT,
        mean=configs.IMAGENET_MEAN,
        std=configs.IMAGENET_STD,
        interpolation="bicubic",
        **kwargs,
    ):
        if isinstance(image_size, (tuple, list)):
            if len(image_size) != 2 or image_size[0] != image_size[1]:
                raise ValueError(f"CrossViT takes square images; image_size must be one int, got {image_size}.")
            image_size = image_size[0]
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
        for key in ("scale", "offset", "antialias", "crop_to_aspect_ratio"):  # set by mean, std and timm's transform
            kwargs.pop(key, None)
        scale, offset = transforms.normalization(mean, std)
        super().__init__(
            image_size=(int(image_size),) * 2,
            scale=[float(s) for s in scale],
            offset=[float(o) for o in offset],
            crop_to_aspect_ratio=False,
            interpolation=interpolation,
            antialias=True,
            **kwargs,
        )
        self.crop_pct = float(crop_pct)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def _call_python(self, inputs):
        if isinstance(inputs, (list, tuple)):  # images of different sizes
            try:
                inputs = np.stack([np.asarray(x) for x in inputs])
            except ValueError:
                return keras.ops.stack([self._call_python(x) for x in inputs])
        return transforms.eval_transform(
            inputs,
            self.image_size[0],
            self.crop_pct,
            self.mean,
            self.std,
            self.interpolation,
            backend="tensorflow" if in_tf_function() else None,
        )

    @classmethod
    def from_preset(cls, preset, **kwargs):
        if crossvit_presets.is_variant(preset):
            return cls(**{**crossvit_presets.converter_config(preset), **kwargs})
        return super().from_preset(preset, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("scale", "offset", "antialias", "crop_to_aspect_ratio"):
            config.pop(key, None)
        config.update({"image_size": self.image_size[0], "crop_pct": self.crop_pct, "mean": self.mean, "std": self.std})
        return config
