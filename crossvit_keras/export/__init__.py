"""Export: a TensorFlow SavedModel for TF Serving with the evaluation transform in its graph
(`saved_model`), and ONNX, OpenVINO and LiteRT files (`formats`)."""

from crossvit_keras.export.saved_model import export_saved_model

__all__ = ["export_saved_model"]
