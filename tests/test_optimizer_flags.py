"""The recipe's fine-tuning and large-batch flags: gradient accumulation (--grad-accum-steps), the
weights' exponential moving average (--model-ema) and timm's layer-wise learning-rate decay
(--layer-decay), each on a tiny model, and all three in the recipe under MirroredStrategy."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import REPO, run_python, tiny_model

from crossvit_keras import training
from crossvit_keras.cli import train as recipe
from crossvit_keras.training import callbacks
from crossvit_keras.training.optimizers import SGDL2, AdamW, layer_decay_scales, lr_scale
from crossvit_keras.weights.convert import config_from_timm, keras_path

FIXTURE = os.path.join(REPO, "tests", "fixtures", "layer_decay_timm.json")


def deterministic_model(seed=0, **overrides):
    """A tiny CrossViT without dropout or stochastic depth; one stage (fast to trace) by default."""
    keras.utils.set_random_seed(seed)
    return tiny_model(num_classes=5, **{"drop_rate": 0.0, "drop_path_rate": 0.0, "depths": ((1, 1, 1),), **overrides})


def batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((size, 48, 48, 3)).astype("float32")
    return images, keras.utils.to_categorical(rng.integers(0, 5, size), 5)


def compiled(model, grad_accum_steps=1, jit_compile=False, opt="adamw", **optimizer_args):
    optimizer = training.build_optimizer(model, opt, 1e-3 if opt == "adamw" else 0.1, 0.05, **optimizer_args)
    return training.compile_model(model, optimizer, 5, jit_compile, 1, grad_accum_steps)


# ----------------------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_accumulated_update_equals_the_large_batch_update(jit_compile):
    """Batch 8 as 4 micro-batches of 2 makes the same first update (and loss) as batch 8 at once:
    one optimizer step, the same weights within float32 round-off. (timm's SGD, whose update is
    linear in the gradient: AdamW's first update is about lr * sign(gradient), where the round-off
    of gradients near zero shows.)"""
    images, labels = batch(8)
    results = []
    for steps in (1, 4):
        model = compiled(deterministic_model(), steps, jit_compile, opt="sgd")
        logs = model.train_on_batch(images, labels, return_dict=True)
        assert int(model.optimizer.iterations.numpy()) == 1
        results.append((logs, [v.numpy() for v in model.trainable_variables]))
    (large_logs, large), (accumulated_logs, accumulated) = results
    assert accumulated_logs["loss"] == pytest.approx(large_logs["loss"], rel=1e-5)
    assert accumulated_logs["top1"] == pytest.approx(large_logs["top1"])
    still = []
    for a, b, w in zip(accumulated, large, deterministic_model().trainable_variables, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=w.path)
        still += [w.path] if np.allclose(b, w.numpy()) else []
    # every variable moved but the key biases of the cross-attention (softmax ignores them: zero gradient)
    assert all(path.endswith("/wk/bias") for path in still), still


def test_grad_accum_steps_must_be_positive():
    with pytest.raises(ValueError, match="--grad-accum-steps must be >= 1"):
        training.TrainConfig(grad_accum_steps=0).checked()


# ----------------------------------------------------------------------------- EMA


def test_ema_follows_kerass_formula_and_resumes_from_the_checkpoint(tmp_path):
    """Keras' use_ema: the first update copies the weights (no warm-up), then after every update
    ema = m * ema + (1 - m) * weights (timm's ModelEmaV3 given the update count); with
    accumulation, once per update. The checkpoint holds the moving average and resume restores it."""
    momentum = 0.9
    images, labels = batch(8)
    model = compiled(deterministic_model(), 2, model_ema_decay=momentum)
    model.run_eagerly = True  # (fast: the traced step is tested above)
    expected = None
    for seed in range(3):
        images, labels = batch(8, seed)
        model.train_on_batch(images, labels)
        weights = [v.numpy() for v in model.trainable_variables]
        if expected is None:  # the first update copies the weights
            expected = weights
        else:
            expected = [momentum * e + (1 - momentum) * w for e, w in zip(expected, weights, strict=True)]
    assert int(model.optimizer.iterations.numpy()) == 3
    average = model.optimizer._model_variables_moving_average
    for e, a in zip(expected, average, strict=True):
        np.testing.assert_allclose(a.numpy(), e, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(a.numpy(), w.numpy()) for a, w in zip(average, model.trainable_variables, strict=True))

    callbacks.save_checkpoint(model, str(tmp_path))
    fresh = compiled(deterministic_model(seed=1), 2, model_ema_decay=momentum)
    callbacks.load_checkpoint(fresh, str(tmp_path / callbacks.CHECKPOINT), steps_per_epoch=3)
    for a, b in zip(average, fresh.optimizer._model_variables_moving_average, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_ema_evaluation_swaps_in_the_average_and_puts_the_raw_weights_back_exactly():
    model = compiled(deterministic_model(), model_ema_decay=0.5)
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for a in model.optimizer._model_variables_moving_average:  # an average unlike the weights
        a.assign(rng.standard_normal(a.shape).astype("float32"))
    raw = [v.numpy() for v in model.trainable_variables]
    average = [a.numpy() for a in model.optimizer._model_variables_moving_average]
    seen = []
    callback = callbacks.ema_evaluation(
        lambda: seen.append([v.numpy() for v in model.trainable_variables]) or {"loss": 1.0, "top1": 0.5, "top5": 1.0}
    )
    callback.set_model(model)
    callback.on_train_begin()
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs == {"val_loss_ema": 1.0, "val_top1_ema": 0.5, "val_top5_ema": 1.0}
    for during, a, after, r in zip(seen[0], average, model.trainable_variables, raw, strict=True):
        np.testing.assert_array_equal(during, a)
        np.testing.assert_array_equal(after.numpy(), r)
    model.optimizer.finalize_variable_values(model.trainable_variables)  # what fit does at its end
    callback.restore_raw_weights()
    for after, r in zip(model.trainable_variables, raw, strict=True):
        np.testing.assert_array_equal(after.numpy(), r)


# ----------------------------------------------------------------------------- layer decay


def keras_paths(timm_names, model):
    """timm parameter name -> this package's variable path (crossvit_keras.weights.convert's mapping)."""
    paths = {v.path for v in model.weights}
    result = {}
    for name in timm_names:
        prefix, leaf = keras_path(name)
        if leaf is None:
            result[name] = prefix
            continue
        leaves = [
            p
            for p in (f"{prefix}/{k}" for k in {"weight": ("kernel", "gamma"), "bias": ("bias", "beta")}[leaf])
            if p in paths
        ]
        assert len(leaves) == 1, (name, leaves)
        result[name] = leaves[0]
    return result


@pytest.mark.parametrize("name", ["parity_reduced", "parity_reduced_mixed", "parity_reduced_multiconv"])
def test_layer_decay_scales_are_timms(name):
    """Every variable's learning-rate scale is the one timm's param_groups_layer_decay gives its
    parameter (tests/fixtures/layer_decay_timm.json, tools/make_layer_decay_fixture.py), and so is
    its weight decay (the recipe's no-weight-decay rule)."""
    import crossvit_keras

    fixture = json.load(open(FIXTURE))
    timm_model = fixture["models"][name]
    model = crossvit_keras.CrossViT(**config_from_timm(**timm_model["kwargs"]))
    scales = layer_decay_scales(model, fixture["layer_decay"])
    paths = keras_paths(timm_model["params"], model)
    assert sorted(paths.values()) == sorted(v.path for v in model.trainable_variables)
    no_decay = {v.path for v in training.no_weight_decay_variables(model)}
    for timm_name, (scale, weight_decay) in timm_model["params"].items():
        assert lr_scale(paths[timm_name], scales) == pytest.approx(scale, rel=1e-12), timm_name
        assert (paths[timm_name] not in no_decay) == (weight_decay > 0), timm_name


@pytest.mark.parametrize("cls", [AdamW, SGDL2])
def test_an_update_applies_each_variables_scale(cls):
    """One step of AdamW (decoupled decay, Adam) and of timm's SGD (L2, nesterov) with layer
    decay 0.5 moves each variable as the unscaled optimizer would with the learning rate x its
    scale; the scales survive serialisation."""

    model = deterministic_model(depths=((1, 1, 1), (1, 1, 1)))  # two stages
    scales = layer_decay_scales(model, 0.5)
    variables = model.trainable_variables
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(v.shape).astype("float32") for v in variables]
    start = [v.numpy() for v in variables]
    lr, decay, momentum = 0.01, 0.1, 0.9
    args = {"weight_decay": decay} if cls is AdamW else {"l2": decay, "momentum": momentum, "nesterov": True}
    optimizer = cls(learning_rate=lr, lr_scales=scales, **args)
    optimizer.apply(grads, variables)
    assert sorted({lr_scale(v.path, scales) for v in variables}) == [0.5**3, 0.5**2, 0.5, 1.0]
    for v, g, w in zip(variables, grads, start, strict=True):
        scaled = lr * lr_scale(v.path, scales)
        if cls is AdamW:  # step 1: m_hat = g, v_hat = g^2
            expected = w * (1 - scaled * decay) - scaled * g / (np.abs(g) + 1e-7 / np.sqrt(1 - 0.999))
        else:  # step 1: buffer = g + l2 w; nesterov: w -= lr (g' + momentum buffer)
            expected = w - scaled * (1 + momentum) * (g + decay * w)
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=v.path)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(clone) is cls and clone.lr_scales == scales and clone.get_config() == optimizer.get_config()


def test_layer_decay_off_and_bad_values():
    model = deterministic_model()
    assert set(layer_decay_scales(model, 0.5).values()) == {0.25, 0.5}  # one stage: embeddings, stage and norms
    assert layer_decay_scales(model, None) == {} and layer_decay_scales(model, 1.0) == {}
    with pytest.raises(ValueError, match="--layer-decay must be in"):
        training.TrainConfig(layer_decay=1.5).checked()
    with pytest.raises(ValueError, match="--model-ema-decay must be in"):
        training.TrainConfig(model_ema=True, model_ema_decay=1.0).checked()


def test_flags_parse_into_the_config():
    args = recipe.build_parser().parse_args(
        ["--grad-accum-steps", "4", "--model-ema", "--model-ema-decay", "0.99996", "--layer-decay", "0.65"]
    )
    config = recipe.config_from_args(args)
    assert (config.grad_accum_steps, config.model_ema, config.model_ema_decay) == (4, True, 0.99996)
    assert config.layer_decay == 0.65 and config.model_ema_export
    assert not recipe.config_from_args(recipe.build_parser().parse_args(["--no-model-ema-export"])).model_ema_export
    defaults = recipe.config_from_args(recipe.build_parser().parse_args([]))
    assert (defaults.grad_accum_steps, defaults.model_ema, defaults.model_ema_decay, defaults.layer_decay) == (
        1,
        False,
        0.9998,
        None,
    )


# ----------------------------------------------------------------------------- under MirroredStrategy

MIRRORED_STEP = """
import sys
import numpy as np
import tensorflow as tf
from crossvit_keras.training.distribute import configure_cpu_devices

configure_cpu_devices(2)
sys.path.insert(0, "tests")
from test_optimizer_flags import batch, compiled, deterministic_model

images, labels = batch(8)
data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():  # 2 replicas x 2 micro-batches of 2
    mirrored = compiled(deterministic_model(), 2, opt="sgd", model_ema_decay=0.5)
mirrored.fit(data, epochs=1, verbose=0)
single = compiled(deterministic_model(), 1, opt="sgd", model_ema_decay=0.5)  # one batch of 8
single.fit(data, epochs=1, verbose=0)
for m in (mirrored, single):
    assert int(m.optimizer.iterations.numpy()) == 1
    m.optimizer._overwrite_model_variables_with_average_value(m.trainable_variables)  # (fit did: EMA = weights)
for a, b in zip(mirrored.trainable_variables, single.trainable_variables, strict=True):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
print("same update")
"""


@pytest.mark.slow
def test_accumulation_under_mirrored_strategy_is_the_large_batch_update():
    """2 replicas x 2 micro-batches of 2 under MirroredStrategy (2 logical CPUs): the update of
    one batch of 8 on one device."""
    assert "same update" in run_python(MIRRORED_STEP)


@pytest.mark.slow
def test_recipe_with_every_flag_under_mirrored_strategy_resumes(tmp_path):
    """The recipe under MirroredStrategy (2 logical CPUs) with --grad-accum-steps 2 --model-ema
    --layer-decay: config.json records the effective batch and its learning rate, log.jsonl the
    EMA weights' validation beside the raw weights', model.keras holds the EMA weights (those of
    the last checkpoint's optimizer); a rerun with more epochs resumes the optimizer state."""
    from crossvit_keras import data

    images = data.make_sample_folder(str(tmp_path / "images"), num_images=16, size=(64, 48), classes=3)
    out = tmp_path / "run"
    tiny = {"image_sizes": [48, 32], "embed_dims": [16, 32], "depths": [[1, 1, 1]], "num_heads": [2, 2]}
    command = [sys.executable, os.path.join(REPO, "recipes", "imagenet.py"), "--data-path", images]
    command += ["--output_dir", str(out), "--model", "crossvit_tiny_240", "--model-overrides", json.dumps(tiny)]
    command += ["--batch-size", "4", "--warmup-epochs", "1", "--strategy", "mirrored", "--cpu-devices", "2"]
    command += ["--verbose", "2", "--no-saved-model", "--grad-accum-steps", "2", "--model-ema"]
    command += ["--model-ema-decay", "0.9", "--layer-decay", "0.75"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    for epochs in (2, 3):
        run = subprocess.run(command + ["--epochs", str(epochs)], cwd=REPO, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "resuming from" in run.stdout and "2 epoch(s) done, optimizer step 2" in run.stdout
    assert "global batch 16 = 4 per replica x 2 replicas x 2 accumulated micro-batches" in run.stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["global_batch_size"], config["effective_batch_size"], config["steps_per_epoch"]) == (8, 16, 1)
    assert config["scaled_lr"] == pytest.approx(5e-4 * 16 / 512)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0 <= r["val_top1_ema"] <= 1 and r["val_loss_ema"] > 0 for r in records)
    results = json.loads((out / "results.json").read_text())
    assert results["exported_weights"] == "ema" and results["optimizer_step"] == 3
    checkpoint = keras.models.load_model(out / callbacks.CHECKPOINT)
    final = keras.models.load_model(out / "model.keras")
    assert checkpoint.optimizer.lr_scales and int(checkpoint.optimizer.iterations.numpy()) == 3
    average = checkpoint.optimizer._model_variables_moving_average
    for a, w in zip(average, final.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), w.numpy())
