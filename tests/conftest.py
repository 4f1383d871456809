import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Where torch is installed (the opt-in live parity tests against timm), it must be imported before
# TensorFlow: the other order crashed the process here. CI has no torch and skips this.
if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401

    if importlib.util.find_spec("timm") is not None:
        import timm  # noqa: F401  (it loads triton, which crashes after TensorFlow too)
