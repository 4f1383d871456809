"""Training: the schedule, weight decay, fine-tuning, bad input (one line before any training), the
recipe under MirroredStrategy over two logical CPUs killed and resumed, and a real learning run."""

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from helpers import REPO, run_python, tiny_model

from crossvit_keras import data, training
from crossvit_keras.cli import train as recipe
from crossvit_keras.logs import setup_logging
from crossvit_keras.training import callbacks
from crossvit_keras.training.schedules import WarmupCosine

RECIPE = os.path.join(REPO, "recipes", "imagenet.py")
# A one-stage tiny CrossViT (fast to trace) with both branches and the fusion.
TINY = [
    "--model",
    "crossvit_tiny_240",
    "--model-overrides",
    json.dumps(
        {
            "image_sizes": [48, 32],
            "embed_dims": [16, 32],
            "depths": [[1, 1, 1]],
            "num_heads": [2, 2],
            "mlp_ratios": [2, 2],
        }
    ),
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}


def make_folder(root, images=16):
    return data.make_sample_folder(str(root), num_images=images, size=(64, 48), classes=3)


# ----------------------------------------------------------------------------- schedule, optimizer


def test_warmup_cosine_is_timms_schedule_per_step():
    schedule = WarmupCosine(1e-3, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    assert schedule.value(0) == pytest.approx(1e-6)
    assert schedule.value(5) == pytest.approx(1e-6 + 5 * (1e-3 - 1e-6) / 10)
    cosine = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 10 / 100))
    assert schedule.value(10) == pytest.approx(cosine)
    assert schedule.value(100) == pytest.approx(1e-5) and schedule.value(150) == pytest.approx(1e-5)
    for step in (0, 3, 9, 10, 55, 99, 100, 120):
        assert float(schedule(step)) == pytest.approx(schedule.value(step), rel=1e-5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(clone, WarmupCosine) and clone.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(1e-3, total_steps=10, warmup_steps=11)


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_no_weight_decay_on_biases_norms_cls_tokens_and_position_embeddings(opt):
    model = tiny_model(num_classes=3)
    excluded = training.no_weight_decay_variables(model)
    paths = {v.path for v in excluded}
    assert any("cls_token" in p for p in paths) and any("pos_embed" in p for p in paths)
    assert all(len(v.shape) <= 1 or "cls_token" in v.path or "pos_embed" in v.path for v in excluded)
    assert {v.path for v in model.trainable_variables if len(v.shape) <= 1} <= paths
    optimizer = training.build_optimizer(model, opt, 0.1, 0.5)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    optimizer.apply([keras.ops.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    for v in model.trainable_variables:
        unchanged = np.array_equal(v.numpy(), before[v.path])
        assert unchanged == (v.path in paths or not before[v.path].any()), v.path
    kernel = next(v for v in model.trainable_variables if v.path.endswith("kernel") and before[v.path].any())
    factor = 1 - 0.1 * 0.5 if opt == "adamw" else 1 - 0.1 * 0.5 * (1 + 0.9)  # decoupled vs nesterov L2
    np.testing.assert_allclose(kernel.numpy(), before[kernel.path] * factor, rtol=1e-5)


def _apply_with(optimizer, variables):
    def apply(grads):
        optimizer.apply(grads, variables)

    return apply


def test_fused_adamw_is_keras_adamw():
    """crossvit_keras' AdamW (TensorFlow's fused ResourceApplyAdam) follows keras.optimizers.AdamW
    step by step, eager and in a tf.function whose graph has the fused kernel; it round-trips
    through Keras serialisation."""
    import tensorflow as tf

    from crossvit_keras.training.optimizers import AdamW

    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype("float32") for s in ((7, 5), (5,), (3, 2, 4))]
    grads = [[rng.standard_normal(w.shape).astype("float32") for w in start] for _ in range(4)]
    results = []
    for cls in (keras.optimizers.AdamW, AdamW):
        variables = [keras.Variable(w, name=f"w{i}") for i, w in enumerate(start)]
        optimizer = cls(0.01, weight_decay=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-8)
        optimizer.exclude_from_weight_decay(var_list=variables[1:2])
        optimizer.apply(grads[0], variables)
        step = tf.function(_apply_with(optimizer, variables))
        for g in grads[1:]:
            step(g)
        results.append([v.numpy() for v in variables])
    for keras_weights, fused_weights in zip(*results, strict=True):
        np.testing.assert_allclose(fused_weights, keras_weights, rtol=1e-6, atol=1e-7)
    ops = {op.type for op in step.get_concrete_function(grads[1]).graph.get_operations()}
    assert "ResourceApplyAdam" in ops
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(clone) is AdamW and clone.get_config() == optimizer.get_config()


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_compiled_keras_file_reloads_its_optimizer_in_a_fresh_process(tmp_path, opt):
    model = tiny_model(num_classes=3)
    training.compile_model(model, training.build_optimizer(model, opt, 0.1, 0.5), 3, False, 1)
    model.optimizer.build(model.trainable_variables)
    path = tmp_path / "compiled.keras"
    model.save(path)
    code = "import sys, keras, crossvit_keras\nprint(type(keras.models.load_model(sys.argv[1]).optimizer).__name__)\n"
    assert run_python(code, path).split()[-1] == type(model.optimizer).__name__


def test_finetune_from_keras_file_keeps_weights_and_makes_a_new_head(tmp_path):
    source = tiny_model(num_classes=5)
    path = str(tmp_path / "source.keras")
    source.save(path)
    args = recipe.build_parser().parse_args(["--finetune", path, "--input-size", "96", "--drop-path", "0.2"])
    model = training.training_model(recipe.config_from_args(args), num_classes=3)
    assert model.output_shape == (None, 3) and model.image_size == 96 and model.drop_path_rate == 0.2
    old = {w.path: w.numpy() for w in source.weights}
    for weight in model.weights:
        if weight.path.startswith("head/head_") or weight.path.endswith("pos_embed"):
            continue
        np.testing.assert_array_equal(weight.numpy(), old[weight.path], err_msg=weight.path)
    pos = next(w for w in model.weights if w.path.endswith("pos_embed"))
    assert pos.shape[1] == 1 + (96 // 12) ** 2


def test_nan_loss_stops_training_with_a_clear_message(tmp_path):
    _, _, StopOnNaN = callbacks.callback_classes()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 2), "float32")
    x[5] = np.nan  # the second batch of 4
    with pytest.raises(callbacks.NonFiniteLoss, match=r"loss became nan in epoch 1 \(step 2\).*Lower --lr"):
        model.fit(x, np.ones((8, 1)), batch_size=4, epochs=2, callbacks=[StopOnNaN()], verbose=0, shuffle=False)


# ----------------------------------------------------------------------------- bad input


def bad_input(tmp_path, capsys, *flags):
    code = recipe.main(["--output_dir", str(tmp_path / "out"), *TINY, *flags])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("error: "), error
    assert not os.path.exists(tmp_path / "out" / callbacks.CHECKPOINT)
    return error[0]


def test_bad_input_is_one_line_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no train/ folder" in bad_input(tmp_path, capsys, "--data-path", str(empty))
    for split in ("train", "val"):
        (empty / split / "cat").mkdir(parents=True)
    assert "has no images" in bad_input(tmp_path, capsys, "--data-path", str(empty))
    assert "Unknown dataset 'no_such_dataset'" in bad_input(tmp_path, capsys, "--data-set", "no_such_dataset")
    images = make_folder(tmp_path / "images", images=6)
    assert "Unknown CrossViT model" in bad_input(tmp_path, capsys, "--data-path", images, "--model", "crossvit_99")
    assert "is odd" in bad_input(tmp_path, capsys, "--data-path", images, "--batch-size", "3")
    assert "fewer than one global batch" in bad_input(tmp_path, capsys, "--data-path", images, "--batch-size", "8")


def test_multi_worker_without_tf_config_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    images = make_folder(tmp_path / "images", images=6)
    message = bad_input(tmp_path, capsys, "--data-path", images, "--strategy", "multi_worker_mirrored")
    assert "needs TF_CONFIG" in message


# ----------------------------------------------------------------------------- the recipe, killed and resumed


def weights_h5(path):
    """The arrays of a .keras file's weights (model and optimizer), by name."""
    import h5py

    arrays = {}
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as f, h5py.File(f, "r") as h5:
        h5.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def run_until_first_checkpoint(command, out, log_path, env):
    """Runs the recipe, kills it (SIGKILL) as soon as its first checkpoint exists; returns its output."""
    with open(log_path, "w") as log:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not (out / callbacks.CHECKPOINT).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = log_path.read_text()
    assert (out / callbacks.CHECKPOINT).exists(), killed_at[-3000:]
    return killed_at


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    """The recipe under MirroredStrategy over 2 logical CPUs, 4 epochs of 2 steps: killed (SIGKILL)
    as soon as its first epoch's checkpoint exists, then run again with the same command."""
    root = tmp_path_factory.mktemp("mirrored")
    out = root / "run"
    command = [sys.executable, RECIPE, "--data-path", make_folder(root / "images"), "--output_dir", str(out), *TINY]
    command += ["--batch-size", "4", "--epochs", "4", "--warmup-epochs", "1", "--lr", "1e-3", "--unscale-lr"]
    command += ["--strategy", "mirrored", "--cpu-devices", "2", "--verbose", "2"]
    killed_at = run_until_first_checkpoint(command, out, root / "first.log", ENV)
    second = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, killed_at, second.stdout


def test_mirrored_recipe_writes_every_artefact(mirrored_run):
    out, first, second = mirrored_run
    assert "replicas in sync: 2 (MirroredStrategy" in first and "replicas in sync: 2" in second
    config = json.loads((out / "config.json").read_text())
    assert config["replicas_in_sync"] == 2 and config["global_batch_size"] == 8 and config["steps_per_epoch"] == 2
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and [r["step"] for r in records] == [2, 4, 6, 8]
    for record in records:
        assert record["replicas"] == 2 and record["images_per_second"] > 0 and 0 < record["lr"] <= 1e-3
        for key in ("loss", "top1", "top5", "val_loss", "val_top1", "val_top5"):
            assert math.isfinite(record[key]), key
    for name in ("checkpoint.keras", "model.keras", "training_curves.png", "results.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "saved_model" / "1" / "saved_model.pb").exists()
    assert any(files for _, _, files in os.walk(out / "tensorboard"))
    results = json.loads((out / "results.json").read_text())
    assert results["replicas_in_sync"] == 2 and results["optimizer_step"] == 8
    assert re.search(r"top-1 [\d.]+%  top-5 [\d.]+%", second)
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no half-written files


def test_killed_run_resumes_from_its_last_epoch(mirrored_run):
    out, _, second = mirrored_run
    match = re.search(r"resuming from \S+: (\d+) epoch\(s\) done, optimizer step (\d+)", second)
    assert match, second[-2000:]
    epochs, step = int(match.group(1)), int(match.group(2))
    assert 1 <= epochs < 4 and step == 2 * epochs
    assert f"Epoch {epochs + 1}/4" in second and f"Epoch {epochs}/4" not in second
    final = weights_h5(out / "model.keras")
    iterations = [v for k, v in final.items() if k.startswith("optimizer") and np.ndim(v) == 0 and v.dtype.kind == "i"]
    assert 8 in [int(v) for v in iterations]  # the optimizer's step count continued: 4 epochs x 2 steps


# ----------------------------------------------------------------------------- learning on real data


def test_quickstart_learns_digits(tmp_path):
    """A small CrossViT trained for 8 epochs on scikit-learn's digits is far above chance (10%).
    (6 epochs gave 76% alone but 59.7% once in a full suite run: tf.data's batch order varies.)"""
    out = tmp_path / "quickstart"
    command = [sys.executable, os.path.join(REPO, "recipes", "quickstart.py"), "--output-dir", str(out)]
    command += ["--epochs", "8", "--warmup-epochs", "1"]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["val_images"] == 360
    assert evaluation["val_top1"] > 0.6, evaluation
    assert "Quickstart: CrossViT reached" in result.stdout


def test_parser_defaults_are_the_papers():
    args = recipe.build_parser().parse_args([])
    assert (args.model, args.epochs, args.lr, args.weight_decay, args.warmup_epochs) == (
        "crossvit_15_240",
        300,
        5e-4,
        0.05,
        30,
    )
    assert (args.aa, args.reprob, args.mixup, args.cutmix, args.smoothing, args.drop_path) == (
        "rand-m9-mstd0.5-inc1",
        0.25,
        0.8,
        1.0,
        0.1,
        0.1,
    )
    assert tuple(args.scale) == (0.08, 1.0) and args.hflip == 0.5 and isinstance(args, argparse.Namespace)


def test_log_lines_go_to_the_current_stdout_not_a_closed_one(monkeypatch):
    import io
    import logging

    setup_logging()
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    logging.getLogger("crossvit_keras.test").info("one")
    first.close()  # as pytest's capture does between tests
    monkeypatch.setattr(sys, "stdout", second)
    logging.getLogger("crossvit_keras.test").info("two")
    assert second.getvalue().endswith("two\n")
