"""Fixes for Keras bugs that training meets, each guarded and applied only where it is needed.

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
