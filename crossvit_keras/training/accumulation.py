"""Gradient accumulation (`--grad-accum-steps N`), big_vision's way: each training step takes N
micro-batches per replica, runs forward and backward on them one after the other (a
tf.while_loop, one micro-batch's activations in memory at a time) and makes one optimizer update
with the mean gradient, which is the gradient of the whole batch. Nothing runs between the
micro-batches but the model, so it works under every tf.distribute strategy (the gradients are
all-reduced once per update, by the optimizer as usual) and with XLA; the optimizer's step count,
the learning-rate schedule and the weights' EMA count updates, and a checkpoint is never
between two micro-batches.

Keras' own `gradient_accumulation_steps` (an optimizer argument) is not used: in Keras 3.15
under MirroredStrategy its update is a `tf.cond` around the optimizer's cross-replica update,
and `model.fit` fails with "`merge_call` called while defining a new graph or a tf.function";
its learning-rate schedule also counts micro-batches, and its EMA moves at every micro-batch."""

import tensorflow as tf


def accumulate_gradients(model, steps):
    """Installs on the compiled `model` (its class unchanged) a training step that splits each
    (per-replica) batch into `steps` micro-batches and updates once with their mean gradient;
    the batch size must be a multiple of `steps`. steps=1 leaves the model as it is. Under
    MirroredStrategy with XLA (crossvit_keras.training.compat.split_xla_steps) the loop is
    compiled per replica. Returns the model."""
    if steps < 1:
        raise ValueError(f"--grad-accum-steps must be >= 1, got {steps}.")
    if steps > 1:
        model.train_step = lambda data: _train_step(model, data, steps)
    model.grad_accum_steps = steps
    return model


def _split(tensor, steps):
    """[steps * b, ...] -> [steps, b, ...]."""
    shape = [tf.shape(tensor)[i] if d is None else d for i, d in enumerate(tensor.shape)]
    return tf.reshape(tensor, [steps, -1, *shape[1:]])


def _mean_gradients(model, x, y, sample_weight, steps):
    """The micro-batches' mean loss and mean gradients, and the predictions of the whole batch."""
    variables = model.trainable_variables
    parts = tf.nest.map_structure(lambda t: None if t is None else _split(t, steps), (x, y, sample_weight))

    def body(i, gradients, loss_sum, predictions):
        x_i, y_i, w_i = tf.nest.map_structure(lambda t: None if t is None else t[i], parts)
        with tf.GradientTape() as tape:
            y_pred = model(x_i, training=True)
            loss = model._compute_loss(x=x_i, y=y_i, y_pred=y_pred, sample_weight=w_i, training=True)
            scaled = model.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        gradients = [a + tf.cast(g, a.dtype) for a, g in zip(gradients, grads, strict=True)]
        return i + 1, gradients, loss_sum + tf.cast(loss, "float32"), predictions.write(i, tf.cast(y_pred, "float32"))

    zeros = [tf.zeros(v.shape, v.dtype) for v in variables]
    start = (tf.constant(0), zeros, tf.constant(0.0), tf.TensorArray("float32", size=steps))
    _, gradients, loss_sum, predictions = tf.while_loop(
        lambda i, *_: i < steps, body, start, parallel_iterations=1, maximum_iterations=steps
    )
    y_pred = predictions.stack()
    y_pred = tf.reshape(y_pred, [-1, *y_pred.shape[2:]])
    return loss_sum / steps, [g / steps for g in gradients], y_pred


def _train_step(model, data, steps):
    """Keras' TensorFlow train_step, with the batch's gradients summed over micro-batches."""
    from keras.src.losses.loss import unscale_loss_for_distribution
    from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight

    x, y, sample_weight = unpack_x_y_sample_weight(data)
    variables = model.trainable_variables

    def mean_gradients(x, y, sample_weight):
        return _mean_gradients(model, x, y, sample_weight, steps)

    if getattr(model, "_replica_xla", False):  # split_xla_steps: compile each replica's part
        mean_gradients = tf.function(mean_gradients, jit_compile=True)
    loss, gradients, y_pred = mean_gradients(x, y, sample_weight)
    batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
    model._loss_tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=batch_size)
    model.optimizer.apply_gradients(zip(gradients, variables, strict=True))
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
