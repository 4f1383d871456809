import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# What `import crossvit_keras` sets before TensorFlow loads (see crossvit_keras/__init__.py), set
# here for the whole session and every subprocess, whichever module imports TensorFlow first.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Where torch is installed (the opt-in live parity tests against timm), it must be imported before
# TensorFlow: the other order crashed the process here. CI has no torch and skips this.
if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401

    if importlib.util.find_spec("timm") is not None:
        import timm  # noqa: F401  (it loads triton, which crashes after TensorFlow too)
