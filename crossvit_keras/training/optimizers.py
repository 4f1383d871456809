"""The recipe's optimizers, registered for `.keras` checkpoints (`import crossvit_keras` registers
them): AdamW (DeiT's recipe) and SGDL2 (the paper's transfer runs, as timm's `--opt sgd`), both
with per-variable learning-rate scales (`lr_scales`; timm's layer-wise decay: `layer_decay_scales`)."""

import re

import keras

from crossvit_keras.layers.base import register


def layer_decay_scales(model, layer_decay):
    """timm's `param_groups_layer_decay` for a CrossViT, as `lr_scales` patterns: timm's CrossViT
    `group_matcher` gives layer 0 to the patch embeddings, CLS tokens and position embeddings,
    layer i + 1 to stage i (both branches' encoders and the fusion of one multi-scale block), the
    final LayerNorms the last stage's layer and the heads layer S + 1 (S stages); layer l's
    learning rate is scaled by layer_decay ** (S + 1 - l): 1 for the heads, layer_decay ** (S + 1)
    for the embeddings. Returns {} for layer_decay None or 1."""
    if layer_decay is None or layer_decay == 1:
        return {}
    if not 0 < layer_decay <= 1:
        raise ValueError(f"--layer-decay must be in (0, 1], got {layer_decay}.")
    stages = {int(m[1]) for m in (re.match(r"stage_(\d+)/", v.path) for v in model.weights) if m}
    if not stages:
        raise ValueError(f"--layer-decay: {model.name} has no stage_<i>/ weights; it is not a CrossViT.")
    last = max(stages) + 1  # S: the heads' layer is S + 1
    scales = {r"(patch_embed|embed)_\d+/": layer_decay ** (last + 1)}
    scales.update({f"stage_{i}/": layer_decay ** (last - i) for i in range(last)})
    scales[r"head/norm_\d+/"] = layer_decay  # timm: the final norms join the last stage's group
    return scales


def lr_scale(path, lr_scales):
    """The learning-rate scale of the variable at `path`: that of the first pattern of `lr_scales`
    it matches (re.match), else 1."""
    return next((float(scale) for pattern, scale in lr_scales.items() if re.match(pattern, path)), 1.0)


class LearningRateScales:
    """Per-variable learning-rate scales for a Keras optimizer (a mixin before it): `lr_scales`
    maps path patterns to scales (`lr_scale`); a variable's update, and its decoupled weight
    decay, use the learning rate times its scale, as timm's per-group `lr_scale` does. Serialised
    in get_config; resolved by variable path when the optimizer is built."""

    def __init__(self, *args, lr_scales=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_scales = {str(k): float(v) for k, v in (lr_scales or {}).items()}

    def build(self, variables):
        super().build(variables)
        self._lr_scale_values = tuple(lr_scale(getattr(v, "path", v.name), self.lr_scales) for v in variables)

    def scaled_learning_rate(self, learning_rate, variable):
        """`learning_rate` times `variable`'s scale (any copy of a variable the optimizer was built with)."""
        if not self.lr_scales:
            return learning_rate
        scale = self._lr_scale_values[self._get_variable_index(variable)]
        return learning_rate if scale == 1 else learning_rate * scale

    def get_config(self):
        return {**super().get_config(), "lr_scales": dict(self.lr_scales)}


@register
class AdamW(LearningRateScales, keras.optimizers.AdamW):
    """keras.optimizers.AdamW, the same arithmetic (decoupled weight decay, then
    m += (g - m)(1 - beta_1), v += (g^2 - v)(1 - beta_2),
    w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + epsilon)), with the Adam step on
    TensorFlow as one fused kernel per variable (ResourceApplyAdam) where Keras' update_step runs
    about 20 small ops. For crossvit_15_240 (340 variables) on the 2-core test CPU that took the
    optimizer from 9,786 ops and 0.16 s of kernel time per training step to 2,995 ops and 0.09 s
    (tools/profile_ops.py --task fit --by-layer). Other backends, amsgrad and sparse gradients take
    Keras' update_step. The weight decay is applied in update_step, variable by variable, with
    the variable's learning rate (`lr_scales`)."""

    def _apply_weight_decay(self, variables):
        pass  # in update_step, with each variable's scaled learning rate

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = self.scaled_learning_rate(learning_rate, variable)
        if self.weight_decay and self._use_weight_decay(variable):
            decay = keras.ops.cast(learning_rate, variable.dtype) * keras.ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, variable * decay)
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (of this device's copy inside a
    tf.distribute update)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value  # the tf.Variable
    return variable.handle


@register
class SGDL2(LearningRateScales, keras.optimizers.SGD):
    """PyTorch's SGD as timm's `--opt sgd` builds it: nesterov momentum and weight decay added
    to the gradient (L2, before the momentum), except for the variables excluded with
    `exclude_from_weight_decay`. (keras.optimizers.SGD's weight_decay is decoupled.)"""

    def __init__(self, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 and self._use_weight_decay(variable):
            gradient = gradient + keras.ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, self.scaled_learning_rate(learning_rate, variable))

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}
