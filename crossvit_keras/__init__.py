"""CrossViT in Keras 3: `create_model("crossvit_15_240")`, `list_models()`, and the layers."""

from crossvit_keras import configs, layers
from crossvit_keras.export import export_saved_model
from crossvit_keras.model import CrossViT, create_model, list_models

__all__ = ["CrossViT", "configs", "create_model", "export_saved_model", "layers", "list_models"]
__version__ = "0.1.0"
