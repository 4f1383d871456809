"""Every Keras backend: on JAX and PyTorch the model computes what it computes on TensorFlow.

Keras reads KERAS_BACKEND once, when it loads, so each backend runs `worker` in its own process.
On JAX and PyTorch the worker makes TensorFlow unimportable first: the model path must not need it.
It then
- gives the timm parity fixtures' logits (tests/fixtures; TensorFlow's are test_convert.py's);
- computes the loss and gradients of the `reduced` fixture's model (timm's weights) on one batch,
  with the backend's own autodiff, and trains it for a few steps with `model.fit` under the
  recipe's compile (AdamW, soft-target cross-entropy);
- trains on and records the resident memory after warm-up steps and after more steps.
The tests compare each backend's results with TensorFlow's. PyTorch runs where torch is installed;
the two 240-pixel parity fixtures run with `-m slow`.
"""

import functools
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
import pytest
from helpers import run_python

BACKENDS = [
    "tensorflow",
    "jax",
    pytest.param("torch", marks=pytest.mark.skipif(not importlib.util.find_spec("torch"), reason="needs torch")),
]
OTHER_BACKENDS = BACKENDS[1:]
SMALL_FIXTURES = ["reduced", "reduced_mixed", "reduced_multiconv"]
FULL_FIXTURES = ["crossvit_9_240", "crossvit_9_dagger_240"]
BATCH, FIT_STEPS, WARMUP_STEPS, MEMORY_STEPS = 32, 3, 10, 30
# One thread: for this tiny model PyTorch's thread pool mostly waits on a busy 2-core machine. JAX:
# XLA's CPU compiler without its costly passes (the model's compiles took most of the time).
ENV = {
    "OMP_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
}

# Run on JAX and PyTorch before Keras loads: TensorFlow (also tf_keras, tensorflow_text) then
# looks uninstalled: `import tensorflow` raises ImportError, importlib.util.find_spec gives None.
# keras-hub imports TensorFlow when it finds it, for its tf.data preprocessing, and works without it.
BLOCK_TENSORFLOW = """
import sys

sys.modules.update(dict.fromkeys(["tensorflow", "tensorflow_text", "tf_keras"]))
"""


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(out_path, fixtures):
    """Runs in the backend's process (see the module's docstring); writes its results to out_path (.npz)."""
    import gc

    import keras
    from test_convert import golden, keras_model_for

    from crossvit_keras.training.recipe import build_optimizer, compile_model
    from crossvit_keras.weights.convert import load_weights

    results = {"backend": keras.backend.backend()}
    for name in fixtures:
        fixture, state_dict, images = golden(name)
        model = keras_model_for(fixture)
        load_weights(model, state_dict)
        results[f"logits_{name}"] = keras.ops.convert_to_numpy(model(images))
        results[f"expected_{name}"] = fixture["logits"]

    fixture, state_dict, _ = golden("reduced")
    model = keras_model_for(fixture)
    load_weights(model, state_dict)
    classes, size = model.output_shape[-1], model.input_shape[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * (WARMUP_STEPS + MEMORY_STEPS), size, size, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, len(x))]
    optimizer = build_optimizer(model, "adamw", 1e-3, 0.05)
    compile_model(model, optimizer, classes)
    # The first step's gradients, as fit computed them: after one step, AdamW's first moment is
    # (1 - beta_1) * gradient.
    losses = model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, verbose=0).history["loss"]
    for v in model.trainable_variables:
        momentum = optimizer._momentums[optimizer._get_variable_index(v)]
        results[f"gradient:{v.path}"] = keras.ops.convert_to_numpy(momentum) / (1 - optimizer.beta_1)
    losses += model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=FIT_STEPS - 1, verbose=0).history["loss"]
    results["fit_losses"] = np.array(losses)

    class Memory(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 in (WARMUP_STEPS, WARMUP_STEPS + MEMORY_STEPS):
                gc.collect()
                results[f"rss_mb_{batch + 1}"] = rss_mb()

    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[Memory()])
    results["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
    results["modules"] = np.array(sorted(m for m in sys.modules if m.startswith("crossvit_keras")))
    np.savez(out_path, **results)


@functools.cache
def backend_results(backend, slow=False):
    descriptor, out_path = tempfile.mkstemp(suffix=f"_{backend}.npz")
    os.close(descriptor)
    fixtures = [] if backend == "tensorflow" else SMALL_FIXTURES + (FULL_FIXTURES if slow else [])
    code = (BLOCK_TENSORFLOW if backend != "tensorflow" else "") + (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import test_backends\n"
        f"test_backends.worker({out_path!r}, {fixtures!r})\n"
    )
    try:
        run_python(code, env={**ENV, "KERAS_BACKEND": backend})
        with np.load(out_path) as data:
            return dict(data)
    finally:
        if os.path.exists(out_path):
            os.remove(out_path)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_model_path_runs_without_tensorflow(backend):
    results = backend_results(backend)
    assert str(results["backend"]) == backend
    assert not results["tensorflow_imported"]
    modules = set(results["modules"].tolist())
    assert "crossvit_keras.training.compat" not in modules
    assert not any(m.startswith(("crossvit_keras.data", "crossvit_keras.export")) for m in modules), modules


def assert_parity(results, names):
    for name in names:
        actual, expected = results[f"logits_{name}"], results[f"expected_{name}"]
        error = np.abs(actual - expected).max() / np.abs(expected).max()
        print(
            json.dumps({"backend": str(results["backend"]), "fixture": name, "max_diff_over_max_logit": float(error)})
        )
        assert error <= 1e-4, name


@pytest.mark.parametrize("backend", OTHER_BACKENDS)  # TensorFlow's: tests/test_convert.py
def test_logits_equal_timm(backend):
    assert_parity(backend_results(backend), SMALL_FIXTURES)


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_logits_equal_timm_240(backend):
    assert_parity(backend_results(backend, slow=True), FULL_FIXTURES)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_fit_gradients_equal_tensorflow(backend):
    results, reference = backend_results(backend), backend_results("tensorflow")
    names = [k for k in reference if k.startswith("gradient:")]
    assert names and sorted(names) == sorted(k for k in results if k.startswith("gradient:"))
    largest, worst = max(np.abs(reference[name]).max() for name in names), 0.0
    for name in names:
        expected, error = reference[name], np.abs(results[name] - reference[name]).max()
        if "/attn/wk/bias" in name:  # zero: softmax over the keys is invariant to q . bias
            assert max(np.abs(expected).max(), error) <= 1e-6 * largest, name
        else:
            assert error <= 1e-4 * np.abs(expected).max(), name
            worst = max(worst, error / np.abs(expected).max())
    print(json.dumps({"backend": backend, "gradients_max_relative_diff": float(worst)}))


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_fit_losses_equal_tensorflow(backend):
    results, reference = backend_results(backend), backend_results("tensorflow")
    assert len(reference["fit_losses"]) == FIT_STEPS
    losses = {
        "backend": backend,
        "fit_losses": results["fit_losses"].tolist(),
        "tensorflow": reference["fit_losses"].tolist(),
    }
    print(json.dumps(losses))
    np.testing.assert_allclose(results["fit_losses"], reference["fit_losses"], rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_memory_is_flat(backend):
    results = backend_results(backend)
    warm, later = float(results[f"rss_mb_{WARMUP_STEPS}"]), float(results[f"rss_mb_{WARMUP_STEPS + MEMORY_STEPS}"])
    print(json.dumps({"backend": backend, "rss_mb_after_warmup": warm, "rss_mb_later": later}))
    assert later - warm < 32, f"resident memory grew {later - warm:.0f} MiB in {MEMORY_STEPS} training steps"
