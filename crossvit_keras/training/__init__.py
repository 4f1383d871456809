"""Training: a run of DeiT's recipe (paper Table 9) under tf.distribute, driven by a `TrainConfig`.

    from crossvit_keras.training import TrainConfig, train
    metrics = train(TrainConfig(data_path="/data/imagenet", strategy="mirrored"))

`config` (the configuration), `run` (the run: strategy, data, model, callbacks, artefacts),
`recipe` (optimizer, model to train, compile), `accumulation` (gradient accumulation),
`evaluation` (ensemble and per-branch metrics), `callbacks` (checkpoints, logs, resume, the
weights' EMA evaluation), `distribute` (strategies), `optimizers` (AdamW with a fused step, timm's
SGD, layer-wise learning-rate scales), `schedules` (warm-up + cosine), `compat` (Keras
workarounds, applied only where needed), `plotting` (training curves).
"""

import importlib

# name -> the module that defines it; imported on first use, so that importing one of this
# package's modules (optimizers, schedules: what `import crossvit_keras` registers) stays light.
_EXPORTS = {
    "TrainConfig": "config",
    "build_optimizer": "recipe",
    "compile_model": "recipe",
    "model_label": "recipe",
    "no_weight_decay_variables": "recipe",
    "training_model": "recipe",
    "transfer_weights": "recipe",
    "FINAL_MODEL": "run",
    "Run": "run",
    "evaluate": "run",
    "train": "run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"crossvit_keras.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'crossvit_keras.training' has no attribute {name!r}")
