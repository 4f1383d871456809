"""CrossViT in Keras 3: `create_model("crossvit_15_240")`, `load_model(...)`, `list_models()`, the
model class and its layers. Importing the package registers its Keras classes (layers, model,
optimizers, schedule), so that `keras.models.load_model` opens the `.keras` files it writes."""

import contextlib
import os
import sys

# TensorFlow's oneDNN CPU kernels. TensorFlow turns them on by itself only on x86 CPUs with
# AVX-512 VNNI / BF16 / AMX; on this project's AVX2 test CPU they made CrossViT inference about
# 1.1x and training about 1.35x faster (README, "Benchmark against timm"). The switch is read once,
# when TensorFlow loads: it takes effect when crossvit_keras is imported before TensorFlow (our
# command lines do), or when the environment sets it. TF_ENABLE_ONEDNN_OPTS=0 opts out.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


@contextlib.contextmanager
def _quiet_tensorflow_start():
    """TensorFlow's start-up chatter silenced, unless the user set TF_CPP_MIN_LOG_LEVEL or asked for
    the full logs with CROSSVIT_KERAS_TF_LOGS=1. In TF 2.21, TF_CPP_MIN_LOG_LEVEL=3 drops the C++
    log lines once TensorFlow is loaded (level 2 still prints the E-level `failed call to cuInit`
    of every CPU-only machine), but absl writes the lines logged while TensorFlow loads (oneDNN,
    CUDA drivers, CPU instructions) to stderr before any setting applies; so stderr (file
    descriptor 2) goes to /dev/null while TensorFlow is imported. A failed import still raises."""
    if os.environ.get("CROSSVIT_KERAS_TF_LOGS", "0") not in ("", "0") or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" in sys.modules:
        yield
        return
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):  # no stderr (a GUI process, a closed descriptor)
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_tensorflow_start():
    import keras  # noqa: E402, F401  (loads TensorFlow on its backend)
    import keras_hub  # noqa: E402, F401  (loads TensorFlow where installed, on every backend, for tf.data)

from crossvit_keras import ablations, configs, layers, tuning  # noqa: E402
from crossvit_keras.branches import branch_logits  # noqa: E402
from crossvit_keras.factory import ModelLoadError, create_model, list_models, load_model  # noqa: E402
from crossvit_keras.model import CrossViT  # noqa: E402
from crossvit_keras.models import (  # noqa: E402  (keras-hub classes)
    CrossViTBackbone,
    CrossViTImageClassifier,
    CrossViTImageClassifierPreprocessor,
    CrossViTImageConverter,
)
from crossvit_keras.training import optimizers, schedules  # noqa: E402, F401  (register AdamW, SGDL2, WarmupCosine)
from crossvit_keras.version import __version__  # noqa: E402

__all__ = [
    "CrossViT",
    "CrossViTBackbone",
    "CrossViTImageClassifier",
    "CrossViTImageClassifierPreprocessor",
    "CrossViTImageConverter",
    "ModelLoadError",
    "__version__",
    "ablations",
    "branch_logits",
    "configs",
    "create_model",
    "export_saved_model",
    "layers",
    "list_models",
    "load_model",
    "tuning",
]


def __getattr__(name):
    if name == "export_saved_model":  # imported on first use: the export needs more of TensorFlow
        from crossvit_keras.export import export_saved_model

        return export_saved_model
    raise AttributeError(f"module 'crossvit_keras' has no attribute {name!r}")
