"""CrossViT in Keras 3: `create_model("crossvit_15_240")`, `list_models()`, and the layers."""

import os

# TensorFlow's oneDNN CPU kernels. TensorFlow turns them on by itself only on x86 CPUs with
# AVX-512 VNNI / BF16 / AMX; on this project's AVX2 test CPU they made CrossViT inference about
# 1.1x and training about 1.35x faster (README, "Benchmark against timm"). The switch is read once,
# when TensorFlow loads: it takes effect when crossvit_keras is imported before TensorFlow (our
# command lines do), or when the environment sets it. TF_ENABLE_ONEDNN_OPTS=0 opts out.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from crossvit_keras import ablations, configs, layers, optimizers  # noqa: E402
from crossvit_keras.branches import branch_logits  # noqa: E402
from crossvit_keras.export import export_saved_model  # noqa: E402
from crossvit_keras.model import CrossViT, create_model, list_models  # noqa: E402

__all__ = [
    "CrossViT",
    "ablations",
    "branch_logits",
    "configs",
    "create_model",
    "export_saved_model",
    "layers",
    "list_models",
    "optimizers",
]
__version__ = "0.1.0"
