"""The two ways to a model: `create_model` (a variant, fresh or with released weights) and
`load_model` (a `.keras` file, or a variant with a checkpoint file or hub id). Every command line
loads its model through `load_model`."""

import os
import re
import traceback
import zipfile

from crossvit_keras import configs
from crossvit_keras.logs import first_line
from crossvit_keras.model import build_model

_PACKAGE = os.path.dirname(os.path.abspath(__file__))  # its checks' errors name the bad argument


class ModelLoadError(ValueError):
    """A model cannot be loaded; the message is one line saying what is wrong and what to pass."""


def list_models():
    """The 11 CrossViT variants, under timm's names."""
    return list(configs.VARIANTS)


def create_model(name, num_classes=1000, pretrained=False, **overrides):
    """A CrossViT variant by timm, paper or official name, e.g. `create_model("crossvit_15")`.

    pretrained: True (the variant's ImageNet-1k weights from timm's hub repository), a hub id
    ("timm/crossvit_15_240.in1k") or a checkpoint path; see crossvit_keras.weights.hub. With
    weights, num_classes=None keeps the checkpoint's classes; another count gets fresh heads.

    Overrides: image_size (the small branch's input; the large branch follows the variant's ratio),
    image_sizes, embed_dims, depths, num_heads, mlp_ratios, multi_conv, qkv_bias, drop_rate,
    attn_drop_rate, proj_drop_rate, drop_path_rate, fusion, cls_token, identity_projections (the
    ablations of crossvit_keras.ablations), remat (recompute the blocks' activations in the
    backward pass: less memory, slower training steps), dtype. num_classes=0 gives features."""
    if pretrained:
        from crossvit_keras.weights import hub

        return hub.load_pretrained(name, pretrained, num_classes=num_classes, **overrides)
    return build_model(name, num_classes=num_classes, **overrides)


def load_model(model, checkpoint=None, num_classes=None, **overrides):
    """A model from `model`, a `.keras` file (saved with `model.save`; loaded without its
    optimizer), or a variant name with `checkpoint`: a released timm / official checkpoint file
    (.safetensors, .pth, .pt, .bin), a hub id, or True for the variant's ImageNet-1k weights on
    the hub. With a checkpoint, num_classes=None keeps its classes and `overrides` go to
    `create_model` (e.g. image_size; position embeddings are resized, and logged).

    Raises ModelLoadError, a ValueError of one line that says what is wrong and what to pass."""
    model = os.fspath(model)
    if checkpoint is None or checkpoint is False:
        if overrides:
            raise ModelLoadError(
                f"{model}: overrides ({', '.join(overrides)}) apply to a variant with a checkpoint, "
                "not to a .keras file."
            )
        return _load_keras_file(model)
    if model.endswith(".keras") or os.path.isfile(model):
        raise ModelLoadError(f"{model} is a file: a checkpoint goes with a variant name (e.g. crossvit_15_240).")
    try:
        configs.canonical_name(model)
        return create_model(model, num_classes=num_classes, pretrained=checkpoint, **overrides)
    except (ValueError, OSError) as error:  # CheckpointError, HubError, a bad override, an unreadable file
        raise ModelLoadError(first_line(error)) from None


def _load_keras_file(path):
    import keras  # the package's classes are registered: importing this module imported crossvit_keras

    give = "give a .keras file saved with model.save(), or a variant name with a checkpoint"
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise ModelLoadError(f"{path} is a directory; {give}.")
        if path in configs.ALIASES or path in configs.VARIANTS:
            raise ModelLoadError(
                f"{path} is a variant: give its weights too, a checkpoint file or hub id (--checkpoint)."
            )
        raise ModelLoadError(f"model file {path} not found; {give}.")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        size = os.path.getsize(path)
        raise ModelLoadError(
            f"cannot load the model {path}: it is not a .keras file (not a zip archive, {size} bytes: truncated "
            f"or another format); {give}."
        )
    try:
        return keras.saving.load_model(path, compile=False)  # no optimizer needed (nor its schedule class)
    except Exception as error:  # zipfile, h5py and Keras raise many types for a damaged file
        raise ModelLoadError(f"cannot load the model {path}: {_load_problem(error)}.") from None


def _load_problem(error):
    """What is wrong with a .keras file that did not load, and what to give instead, in a few words."""
    give = "give a complete .keras file saved with model.save()"
    message = first_line(error).rstrip(".")
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", message)
    if unknown:
        return (
            f"its config names {unknown.group(1)!r}, a class unknown here (a model of another package, or of "
            "another version of this one); give a .keras file of a CrossViT saved with model.save()"
        )
    missing = re.search(r"no item named '([^']+)' in the archive", message)
    if isinstance(error, KeyError) and missing:
        return f"it is a zip archive without {missing.group(1)} (not a .keras file, or a damaged one); {give}"
    frames = traceback.extract_tb(error.__traceback__)
    if isinstance(error, ValueError) and frames and frames[-1].filename.startswith(_PACKAGE):
        # raised by the model's or a layer's checks of its constructor arguments
        return f"its config is invalid ({message}); {give}"
    if len(message) > 200:
        message = message[:200] + "..."
    return f"{type(error).__name__}: {message}; {give}"
