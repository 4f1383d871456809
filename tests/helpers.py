"""Shared test helpers: one round-trip check used for every layer, a tiny model, subprocess runs."""

import os
import subprocess
import sys

import keras
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(num_classes=5, **overrides):
    import crossvit_keras

    return crossvit_keras.create_model(
        "crossvit_tiny_240", num_classes=num_classes, **{**crossvit_keras.configs.TEST_OVERRIDES, **overrides}
    )


def random_inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(shapes, list):
        return [rng.standard_normal(s).astype("float32") for s in shapes]
    return rng.standard_normal(shapes).astype("float32")


def assert_layer_roundtrip(layer, input_shapes, call_kwargs=None):
    """The layer rebuilds exactly from its config: same config, same weights layout, same outputs,
    through get_config/from_config and through Keras' own serialize/deserialize (what .keras uses).
    Returns the layer's outputs."""
    call_kwargs = call_kwargs or {}
    inputs = random_inputs(input_shapes)
    expected = layer(inputs, **call_kwargs)
    config = layer.get_config()
    for clone in (
        layer.__class__.from_config(config),
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)),
    ):
        assert type(clone) is type(layer)
        assert clone.get_config() == config
        clone(inputs, **call_kwargs)  # builds it
        assert [w.path for w in clone.weights] == [w.path for w in layer.weights]
        clone.set_weights(layer.get_weights())
        actual = clone(inputs, **call_kwargs)
        for a, e in zip(keras.tree.flatten(actual), keras.tree.flatten(expected), strict=True):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(e), atol=1e-6)
    return expected


def run_python(code, *args, timeout=600, env=None):
    """Runs Python code in a fresh process from the repository root; returns stdout."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout
