"""Fixes for Keras bugs that training meets, each guarded and applied only where it is needed.
All are in Keras' TensorFlow trainer: only TensorFlow training code imports this module (the
recipe's compile on that backend, the evaluation, the multi-worker strategy), never the model.

A. XLA under MirroredStrategy / MultiWorkerMirroredStrategy (`split_xla_steps`, below).

B. MultiWorkerMirroredStrategy (`apply_multi_worker_fixes`).

`model.fit` under tf.distribute.MultiWorkerMirroredStrategy fails in Keras 3.15 in two private
functions of keras.src.backend.tensorflow.trainer (two workers on loopback, one CPU each):

1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from the first batch after
   `strategy.reduce("MEAN", batch, axis=None)`, which fails for per-replica input batches
   ("Attempt to convert a value (PerReplica...) to a Tensor"). Building needs only the batch's
   shapes, so one replica's batch (`experimental_local_results(batch)[0]`) does.
2. `reduce_per_replica` reduces the (scalar) metric results with `strategy.reduce("MEAN", v,
   axis=0)`; a scalar has no axis 0. Reducing across replicas only (`axis=None`) is the mean meant.

`apply_multi_worker_fixes()` patches both, and only while the installed Keras still contains the
faulty code (`multi_worker_bugs()` reads its source); tests/test_compat.py fails once a Keras
release no longer needs them, so that this module can then be deleted.
"""

import inspect
import logging

import tensorflow as tf

logger = logging.getLogger(__name__)

_original = {}  # Keras' own functions, kept before any patch


def _trainer_module():
    from keras.src.backend.tensorflow import trainer

    if not _original:
        _original["build"] = trainer.TensorFlowTrainer._maybe_symbolic_build
        _original["reduce"] = trainer.reduce_per_replica
    return trainer


def multi_worker_bugs():
    """The names of the faulty functions in the installed Keras (read from its source, unpatched)."""
    _trainer_module()
    found = []
    try:
        build_source = inspect.getsource(_original["build"])
        reduce_source = inspect.getsource(_original["reduce"])
    except (OSError, TypeError):  # no source files: cannot tell, assume the bugs are there
        return ["_maybe_symbolic_build", "reduce_per_replica"]
    if "distribute_strategy.reduce(" in build_source:
        found.append("_maybe_symbolic_build")
    if 'strategy.reduce("MEAN", v, axis=0)' in reduce_source:
        found.append("reduce_per_replica")
    return found


def _first_replica(strategy, values):
    return tf.nest.map_structure(
        lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
        values,
    )


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Keras 3.15's TensorFlowTrainer._maybe_symbolic_build, building from one replica's batch."""
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            data_batch = _first_replica(self.distribute_strategy, next(it))
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def apply_multi_worker_fixes():
    """Patches Keras for MultiWorkerMirroredStrategy (idempotent); returns the fixes applied."""
    trainer = _trainer_module()
    bugs = multi_worker_bugs()
    if getattr(trainer, "_crossvit_keras_patched", False) or not bugs:
        return []
    if "_maybe_symbolic_build" in bugs:
        trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    if "reduce_per_replica" in bugs:
        original = _original["reduce"]

        def reduce_per_replica(values, strategy, reduction):
            mean = reduction == "mean" or (reduction == "auto" and not isinstance(strategy, tf.distribute.TPUStrategy))
            if mean and trainer._collective_all_reduce_multi_worker(strategy):
                return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
            return original(values, strategy, reduction)

        trainer.reduce_per_replica = reduce_per_replica
    trainer._crossvit_keras_patched = True
    logger.info("compat: patched Keras for MultiWorkerMirroredStrategy: %s", ", ".join(bugs))
    return bugs


# ----------------------------------------------------------------------------- A. XLA under MirroredStrategy
#
# Keras 3.15's TensorFlow trainer (`TensorFlowTrainer._make_function`) compiles `one_step_on_data`,
# which calls `strategy.run(train_step)` and reduces across replicas, with
# `tf.function(jit_compile=True)`: XLA then compiles the cross-replica step on one device and fails
# with "Trying to access resource .../replica_1/... located in device CPU:1 from device CPU:0"
# (fit and evaluate; predict compiles inside the replica and works). `split_xla_steps` splits the step
# instead: XLA compiles each replica's forward, loss and gradients (in the replica context, on the
# replica's device), and Keras' own code outside it does the rest: the gradient all-reduce and the
# optimizer's update (loss scaling, global_clipnorm, the fused AdamW), the loss tracker and metrics.


def mirrored_xla_bug():
    """Whether the installed Keras compiles the cross-replica step with XLA (read from its source)."""
    from keras.src.backend.tensorflow import trainer

    try:
        source = inspect.getsource(trainer.TensorFlowTrainer._make_function)
    except (OSError, TypeError):  # no source files: cannot tell, assume the bug is there
        return True
    return "distribute_strategy.run(" in source and "jit_compile=self.jit_compile" in source


def _split_applies(model):
    strategy = model.distribute_strategy
    return (
        bool(model.jit_compile)
        and not model.run_eagerly
        and isinstance(strategy, tf.distribute.MirroredStrategy | tf.distribute.MultiWorkerMirroredStrategy)
        and mirrored_xla_bug()
    )


def split_xla_steps(model):
    """Installs on `model` (any keras.Model, its class unchanged) the per-replica XLA steps:
    `jit_compile=True` under MirroredStrategy and MultiWorkerMirroredStrategy then compiles each
    replica's forward, loss and gradients with XLA; the gradient all-reduce, the optimizer's
    update and the metrics run outside the compiled function, as in Keras' train_step. Elsewhere
    (other strategies, jit_compile off, a Keras without the bug) the steps are Keras' own.
    Idempotent; returns the model. The recipe's compile (crossvit_keras.training.compile_model)
    calls it."""
    if getattr(model, "_split_xla_steps", False):
        return model
    cls = type(model)

    def make_split_function(make, force):
        # Keras reads jit_compile when it builds the function: off for the cross-replica step, and
        # the flag the steps below read says whether to compile each replica's part instead.
        model._replica_xla = _split_applies(model)
        if not model._replica_xla:
            return make(model, force)
        model._jit_compile = False
        try:
            return make(model, force)
        finally:
            model._jit_compile = True

    model.make_train_function = lambda force=False: make_split_function(cls.make_train_function, force)
    model.make_test_function = lambda force=False: make_split_function(cls.make_test_function, force)
    model.train_step = lambda data: _train_step(model, data) if model._replica_xla else cls.train_step(model, data)
    model.test_step = lambda data: _test_step(model, data) if model._replica_xla else cls.test_step(model, data)
    model._replica_xla = False
    model._split_xla_steps = True
    return model


def _train_step(self, data):
    from keras.src.losses.loss import unscale_loss_for_distribution
    from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight

    x, y, sample_weight = unpack_x_y_sample_weight(data)
    variables = self.trainable_weights

    @tf.function(jit_compile=True)
    def loss_and_gradients(x, y, sample_weight):
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled = self.optimizer.scale_loss(loss) if self.optimizer is not None else loss
        return y_pred, loss, tape.gradient(scaled, variables)

    y_pred, loss, gradients = loss_and_gradients(x, y, sample_weight)
    self._loss_tracker.update_state(
        unscale_loss_for_distribution(loss), sample_weight=tf.shape(tf.nest.flatten(x)[0])[0]
    )
    self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _test_step(self, data):
    from keras.src.losses.loss import unscale_loss_for_distribution
    from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight

    x, y, sample_weight = unpack_x_y_sample_weight(data)

    @tf.function(jit_compile=True)
    def predictions_and_loss(x, y, sample_weight):
        y_pred = self(x, training=False)
        return y_pred, self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)

    y_pred, loss = predictions_and_loss(x, y, sample_weight)
    self._loss_tracker.update_state(
        unscale_loss_for_distribution(loss), sample_weight=tf.shape(tf.nest.flatten(x)[0])[0]
    )
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
