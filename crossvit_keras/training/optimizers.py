"""The recipe's optimizers, registered for `.keras` checkpoints (`import crossvit_keras` registers
them): AdamW (DeiT's recipe) and SGDL2 (the paper's transfer runs, as timm's `--opt sgd`)."""

import keras

from crossvit_keras.layers.base import register


@register
class AdamW(keras.optimizers.AdamW):
    """keras.optimizers.AdamW, the same arithmetic (decoupled weight decay, then
    m += (g - m)(1 - beta_1), v += (g^2 - v)(1 - beta_2),
    w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + epsilon)), with the Adam step on
    TensorFlow as one fused kernel per variable (ResourceApplyAdam) where Keras' update_step runs
    about 20 small ops. For crossvit_15_240 (340 variables) on the 2-core test CPU that took the
    optimizer from 9,786 ops and 0.16 s of kernel time per training step to 2,995 ops and 0.09 s
    (tools/profile_ops.py --task fit --by-layer). Other backends, amsgrad and sparse gradients take
    Keras' update_step."""

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow" or self.amsgrad or isinstance(gradient, tf.IndexedSlices):
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
class SGDL2(keras.optimizers.SGD):
    """PyTorch's SGD as timm's `--opt sgd` builds it: nesterov momentum and weight decay added
    to the gradient (L2, before the momentum), except for the variables excluded with
    `exclude_from_weight_decay`. (keras.optimizers.SGD's weight_decay is decoupled.)"""

    def __init__(self, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 and self._use_weight_decay(variable):
            gradient = gradient + keras.ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}
