"""XLA under MirroredStrategy over two logical CPUs (crossvit_keras.training.compat.MirroredXLA): the same
seeded run with and without XLA gives the same per-step losses; the recipe with --jit-compile on
trains, is killed and resumes, and its SavedModel has no XLA ops."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO
from test_training import ENV, RECIPE, TINY, make_folder, run_until_first_checkpoint

XLA_LOG = "Compiled cluster using XLA"  # TensorFlow's INFO line, logged once per process
XLA_ENV = {**ENV, "TF_CPP_MIN_LOG_LEVEL": "0"}

SAME_RUN = r"""
import json, sys
import crossvit_keras
from crossvit_keras import training
from crossvit_keras.training import distribute
distribute.configure_cpu_devices(2)
import keras, numpy as np, tensorflow as tf
sys.path.insert(0, "tests")
from helpers import tiny_model

policy, jit = sys.argv[1], sys.argv[2] == "on"
keras.config.set_dtype_policy(policy)
keras.utils.set_random_seed(0)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.standard_normal((24, 48, 48, 3)).astype("float32")
y = np.eye(5, dtype="float32")[np.arange(24) % 5]
weights = rng.uniform(0.5, 1.5, 24).astype("float32")
with strategy.scope():
    model = tiny_model()
    optimizer = training.build_optimizer(model, "adamw", 1e-3, 0.05, clip_grad=0.5)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    training.compile_model(model, optimizer, 5, jit, 1)
losses = []
record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
model.fit(x, y, sample_weight=weights, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[record])
evaluation = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
predictions = model.predict(x[:8], batch_size=4, verbose=0)
print(json.dumps({"jit": bool(model.jit_compile), "losses": losses, "eval": evaluation,
                  "predictions": predictions.tolist()}))
"""


def same_run(policy, jit):
    command = [sys.executable, "-c", SAME_RUN, policy, jit]
    result = subprocess.run(command, cwd=REPO, env=XLA_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), XLA_LOG in result.stderr


@pytest.mark.parametrize(
    "policy, atol", [("float32", 1e-5), pytest.param("mixed_float16", 1e-3, marks=pytest.mark.slow)]
)
def test_same_losses_with_and_without_xla_under_mirrored(policy, atol):
    """6 steps (AdamW with global_clipnorm, sample weights; under mixed_float16 Keras'
    LossScaleOptimizer), then evaluate and predict: the same numbers with XLA as without."""
    import numpy as np

    plain, plain_xla = same_run(policy, "off")
    xla, compiled = same_run(policy, "on")
    assert not plain["jit"] and not plain_xla
    assert xla["jit"] and compiled
    assert len(xla["losses"]) == 6
    np.testing.assert_allclose(xla["losses"], plain["losses"], atol=atol, rtol=0)
    for key in ("loss", "top1", "top5"):
        np.testing.assert_allclose(xla["eval"][key], plain["eval"][key], atol=atol, err_msg=key)
    np.testing.assert_allclose(xla["predictions"], plain["predictions"], atol=atol)


def test_jit_auto_is_on_for_gpu_replicas_only():

    from crossvit_keras.training import distribute

    class Extended:
        def __init__(self, devices):
            self.worker_devices = devices

    class Strategy:
        def __init__(self, devices):
            self.extended = Extended(devices)

    assert distribute.replicas_are_gpus(Strategy(["/job:localhost/replica:0/task:0/device:GPU:0", "/gpu:1"]))
    assert not distribute.replicas_are_gpus(Strategy(["/job:localhost/replica:0/task:0/device:CPU:0"]))
    import tensorflow as tf

    assert distribute.distribution_settings("auto", 1, tf.distribute.get_strategy()) == ("auto", 1)


def saved_model_ops(path):
    """Every op type in a SavedModel's graph and function library, and the XLA attributes seen."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    ops, attrs = set(), set()
    for meta in saved.meta_graphs:
        nodes = list(meta.graph_def.node)
        functions = list(meta.graph_def.library.function)
        for function in functions:
            nodes += list(function.node_def)
            attrs |= {a for a in function.attr if "xla" in a.lower()}
        for node in nodes:
            ops.add(node.op)
            attrs |= {a for a in node.attr if "xla" in a.lower()}
    return ops, attrs


@pytest.mark.slow
def test_recipe_with_xla_under_mirrored_is_killed_resumes_and_exports_without_xla(tmp_path):
    """--strategy mirrored --cpu-devices 2 --jit-compile on, 3 epochs of 2 steps: killed (SIGKILL)
    once its first checkpoint exists, run again, it continues; the SavedModel has no XLA op."""
    out = tmp_path / "run"
    command = [sys.executable, RECIPE, "--data-path", make_folder(tmp_path / "images"), "--output_dir", str(out)]
    command += [*TINY, "--batch-size", "4", "--epochs", "3", "--warmup-epochs", "1", "--aa", "none"]
    command += ["--strategy", "mirrored", "--cpu-devices", "2", "--jit-compile", "on", "--verbose", "2"]
    killed_at = run_until_first_checkpoint(command, out, tmp_path / "first.log", XLA_ENV)
    assert XLA_LOG in killed_at
    second = subprocess.run(command, cwd=REPO, env=XLA_ENV, capture_output=True, text=True, timeout=400)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert "resuming from" in output and XLA_LOG in output and "Epoch 3/3" in output
    assert json.loads((out / "config.json").read_text())["jit_compile"] is True
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert json.loads((out / "results.json").read_text())["optimizer_step"] == 6
    ops, attrs = saved_model_ops(out / "saved_model" / "1")
    assert "Conv2D" in ops or "MatMul" in ops or "BatchMatMulV2" in ops  # the model's graph is there
    assert not {op for op in ops if "xla" in op.lower()}, ops
    assert not attrs, attrs
