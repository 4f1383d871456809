"""LoRA fine-tuning (Hu et al., 2021) of a CrossViT with Keras' own `Dense.enable_lora`:

    model = crossvit_keras.create_model("crossvit_15_240", num_classes=10, pretrained=True)
    crossvit_keras.tuning.enable_lora(model, rank=8)  # then compile and fit as usual
    model.save("lora.keras")  # the LoRA updates merged into the kernels: a plain CrossViT file

The backbone is frozen; every attention projection (self-attention's qkv and proj, the
cross-attention's wq, wk, wv and proj) and both MLP layers (fc1, fc2) learn a low-rank update
W + (alpha / rank) A B of their frozen kernel W; the classifier head (its LayerNorms and linear
layers) is trained fully. `merge_lora` gives the plain model with the updates merged, for export."""

import math

import keras

from crossvit_keras.layers.base import Attention
from crossvit_keras.layers.transformer import MLP
from crossvit_keras.model import CrossViT


def lora_layers(model):
    """The Dense layers LoRA adapts: the attention layers' projections and the MLPs' two layers."""
    return [
        dense
        for layer in model._flatten_layers()
        if isinstance(layer, (Attention, MLP))
        for dense in layer._flatten_layers(include_self=False)
        if isinstance(dense, keras.layers.Dense)
    ]


def trainable_parameters(model):
    """The number of trainable parameters (Keras' `count_params` counts them all)."""
    return sum(math.prod(variable.shape) for variable in model.trainable_variables)


def enable_lora(model, rank, alpha=None):
    """Freezes `model` (a built CrossViT) but its classifier head and adds LoRA of `rank` (scale
    alpha / rank; alpha defaults to rank) to the projections of `lora_layers`. Returns the model;
    its trainable weights are then the LoRA matrices and the head. Call before `compile`."""
    if not isinstance(model, CrossViT):
        raise ValueError(f"enable_lora needs a CrossViT, got a {type(model).__name__}.")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}.")
    if not model.num_classes:
        raise ValueError("enable_lora needs a model with a classifier head (num_classes > 0).")
    layers = lora_layers(model)
    if any(layer.lora_enabled for layer in layers):
        raise ValueError(f"{model.name} already has LoRA enabled.")
    model.trainable = True
    head = model.get_layer("head")
    head_variables = {id(v) for v in head.weights}
    for variable in model.weights:
        variable.trainable = id(variable) in head_variables
    for layer in layers:
        layer.enable_lora(rank, lora_alpha=alpha)  # new trainable A (he_uniform) and B (zeros)
    return model


def merge_lora(model):
    """A new CrossViT, every weight trainable, with each LoRA update merged into its kernel
    (W + alpha / rank A B): the model to export or deploy. `model.save` writes the same merged
    weights (Keras' `Dense` merges them when it saves)."""
    merged = CrossViT.from_config(model.get_config())
    values = {variable.path: variable for variable in model.weights}
    for layer in lora_layers(model):
        if layer.lora_enabled:
            values[layer._kernel.path] = layer.kernel  # W + alpha / rank A B
    for variable in merged.weights:
        variable.assign(values[variable.path])
    return merged


def restart_lora(model):
    """Continues the adaptation after weights were loaded into a LoRA model (resuming from a
    checkpoint): Keras loads the saved, merged kernels into the frozen kernels and zeroes both LoRA
    matrices, which would then get no gradient. A is drawn afresh and B zeroed (as `enable_lora`
    starts), so the model's function is unchanged."""
    for layer in lora_layers(model):
        if layer.lora_enabled:
            layer.lora_kernel_a.assign(keras.initializers.HeUniform()(layer.lora_kernel_a.shape))
            layer.lora_kernel_b.assign(keras.ops.zeros(layer.lora_kernel_b.shape))
