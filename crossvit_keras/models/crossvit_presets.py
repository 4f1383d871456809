"""The 11 CrossViT variants as keras-hub presets, by timm name (paper and official names too):

    crossvit_keras.CrossViTImageClassifier.from_preset("crossvit_15_240")
    crossvit_keras.CrossViTBackbone.from_preset("crossvit_9_dagger_240", load_weights=False)

A preset here is metadata: the architecture comes from crossvit_keras.configs, the preprocessing
from timm's pretrained configuration of the variant (configs.PRETRAINED_CFGS), and the weights are
timm's ImageNet-1k checkpoint on the Hugging Face hub (`timm/<variant>.in1k`), downloaded, cached
and converted strictly by crossvit_keras.weights.hub (HF_HUB_OFFLINE, HF_HUB_CACHE apply). A
`save_to_preset` directory, or keras-hub's hf:// and kaggle:// handles of one, load through keras-hub.
"""

import os

from crossvit_keras import configs

_PAPER_NAMES = {
    "crossvit_tiny_240": "CrossViT-Ti",
    "crossvit_small_240": "CrossViT-S",
    "crossvit_base_240": "CrossViT-B",
    "crossvit_9_240": "CrossViT-9",
    "crossvit_15_240": "CrossViT-15",
    "crossvit_18_240": "CrossViT-18",
    "crossvit_9_dagger_240": "CrossViT-9†",
    "crossvit_15_dagger_240": "CrossViT-15†",
    "crossvit_18_dagger_240": "CrossViT-18†",
    "crossvit_15_dagger_408": "CrossViT-15†@384",
    "crossvit_18_dagger_408": "CrossViT-18†@384",
}

# keras-hub's preset metadata layout ({"metadata": {...}}), with the weights' hub id.
PRESETS = {
    name: {
        "metadata": {
            "description": (
                f"{_PAPER_NAMES[name]} (Chen et al., ICCV 2021), {configs.PRETRAINED_CFGS[name]['input_size']} px, "
                "ImageNet-1k weights of timm."
            ),
            "params": configs.TIMM_FIGURES[name][0],
            "path": "crossvit",
        },
        "hf_hub_id": f"timm/{name}.in1k",
    }
    for name in configs.VARIANTS
}

# Constructor arguments of CrossViT that belong to its head, not to the backbone.
_HEAD_ARGS = ("num_classes", "drop_rate")


def is_variant(preset):
    """Whether `preset` names a variant (and is not a local directory of that name)."""
    if not isinstance(preset, str) or os.path.exists(preset):
        return False
    return configs.ALIASES.get(preset, preset) in configs.VARIANTS


def backbone_config(name, **overrides):
    """CrossViTBackbone's arguments for a variant (create_model's overrides apply)."""
    config = configs.resolve_config(name, **overrides)
    return {k: v for k, v in config.items() if k not in _HEAD_ARGS}


def converter_config(name):
    """CrossViTImageConverter's arguments: timm's evaluation transform of the variant's weights."""
    cfg = configs.PRETRAINED_CFGS[configs.canonical_name(name)]
    return {
        "image_size": cfg["input_size"],
        "crop_pct": cfg["crop_pct"],
        "mean": cfg["mean"],
        "std": cfg["std"],
        "interpolation": cfg["interpolation"],
    }


def pretrained_weights(name, log=None):
    """{Keras weight path: array} of the variant's ImageNet-1k weights: timm's checkpoint through the
    hub download, cache and strict converter (crossvit_keras.weights.hub)."""
    from crossvit_keras.weights import hub

    model = hub.load_pretrained(name, True, num_classes=None, log=log)
    return {w.path: w.numpy() for w in model.weights}


def load_backbone(cls, preset, load_weights=True, **kwargs):
    """A variant's backbone; kwargs: `dtype`, `name`, `trainable` and create_model's overrides."""
    from crossvit_keras.weights import convert

    name = configs.canonical_name(preset)
    keras_kwargs = {k: kwargs.pop(k) for k in ("name", "trainable") if k in kwargs}
    backbone = cls(**backbone_config(name, **kwargs), **keras_kwargs)
    if load_weights:
        weights = pretrained_weights(name)
        convert.assign_weights(backbone, {p: v for p, v in weights.items() if not p.startswith("head/")})
    return backbone


def load_classifier(cls, preset, load_weights=True, num_classes=None, preprocessor=None, **kwargs):
    """A variant's classifier with the variant's preprocessor. num_classes=None: the checkpoint's
    1000 ImageNet classes; another count gets fresh heads (for fine-tuning, logged). Other kwargs go
    to the backbone (dtype, create_model's overrides such as image_size)."""
    from crossvit_keras.weights import convert

    name = configs.canonical_name(preset)
    head = {k: kwargs.pop(k) for k in ("activation", "dropout", "head_dtype", "name") if k in kwargs}
    backbone = cls.backbone_cls.from_preset(name, load_weights=False, **kwargs)
    if preprocessor is None:  # the variant's transform, at the backbone's input size (an image_size override)
        converter = cls.preprocessor_cls.image_converter_cls(
            **{**converter_config(name), "image_size": backbone.image_size}
        )
        preprocessor = cls.preprocessor_cls(image_converter=converter)
    classifier = cls(backbone, num_classes or 1000, preprocessor=preprocessor, **{"name": name, **head})
    if load_weights:
        convert.assign_weights(classifier, pretrained_weights(name))
    return classifier
