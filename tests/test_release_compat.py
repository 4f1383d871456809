"""`.keras` files saved by release 0.1.0 (commit 78f8a18) still load, as `crossvit_keras.CrossViT`,
with the logits that release computed; a recipe checkpoint's optimizer (the registered AdamW), its
WarmupCosine schedule and its state come back too. The fixture (tests/fixtures/release_0.1.0/) was
written by tools/make_release_fixture.py run against the release's own checkout (its docstring has
the command).

Public API only (`import crossvit_keras`, `keras`): the classes are found through their registered
Keras names ("crossvit_keras>CrossViT", "crossvit_keras>AdamW", "crossvit_keras>WarmupCosine"),
which the .keras files carry and which must keep resolving whatever module defines them."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import crossvit_keras

FIXTURE = Path(__file__).parent / "fixtures" / "release_0.1.0"
STEMS = ("model", "model_multiconv")


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURE / "expected.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays["meta"] = json.loads(arrays.pop("meta_json").item())
    arrays["versions"] = json.loads(arrays.pop("versions_json").item())
    return arrays


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list | tuple) else value


def _check_logits(model, stem, expected):
    images, reference = expected["images"], expected[f"logits_{stem}"]
    logits = np.asarray(model(images, training=False), dtype="float32")
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(
        logits,
        reference,
        rtol=0,
        atol=1e-5 * scale,
        err_msg=f"{stem}.keras: logits differ from those of the release that saved it ({expected['versions']})",
    )


@pytest.mark.parametrize("compile", [True, False], ids=["compile", "no_compile"])
@pytest.mark.parametrize("stem", STEMS)
def test_release_file_loads_with_the_release_logits(stem, compile, expected):
    meta = expected["meta"][stem]
    model = keras.models.load_model(FIXTURE / f"{stem}.keras", compile=compile)
    assert isinstance(model, crossvit_keras.CrossViT), type(model)
    config = model.get_config()
    for key, value in meta["overrides"].items():
        assert _tupled(config[key]) == _tupled(value), (key, config[key], value)
    assert model.count_params() == meta["params"]
    _check_logits(model, stem, expected)
    if not (compile and meta["compiled"]):
        assert getattr(model, "optimizer", None) is None  # Keras sets it only in compile()
        return
    optimizer = model.optimizer
    assert keras.saving.get_registered_name(type(optimizer)) == meta["optimizer"] == "crossvit_keras>AdamW"
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert int(optimizer.iterations.numpy()) == meta["iterations"]  # the optimizer's state was restored
    schedule = optimizer.get_config()["learning_rate"]  # the restored schedule, serialised again
    assert isinstance(schedule, dict), schedule
    assert schedule["registered_name"] == meta["schedule"] == "crossvit_keras>WarmupCosine"
    assert schedule["class_name"] == "WarmupCosine"
    assert schedule["config"] == meta["schedule_config"]
    for key in ("weight_decay", "beta_1", "beta_2", "epsilon"):
        assert optimizer.get_config()[key] == pytest.approx(meta["optimizer_config"][key]), key
    # the learning rate at the restored step, by the schedule's formula (step 1, in the warm-up)
    s = meta["schedule_config"]
    step = meta["iterations"]
    assert step < s["warmup_steps"]
    want = s["warmup_lr"] + step * (s["base_lr"] - s["warmup_lr"]) / s["warmup_steps"]
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(want, rel=1e-6)


@pytest.mark.slow  # about 5 s (tracing the train step), the rest of this file about 3 s
def test_release_checkpoint_resumes_training(expected):
    """A recipe checkpoint of the release trains on: one more step from its restored state."""
    model = keras.models.load_model(FIXTURE / "model.keras")
    images = expected["images"]
    labels = keras.utils.to_categorical(np.arange(len(images)) % model.num_classes, model.num_classes)
    model.train_on_batch(images, labels.astype("float32"))
    assert int(model.optimizer.iterations.numpy()) == expected["meta"]["model"]["iterations"] + 1
    logits = np.asarray(model(images, training=False))
    assert np.isfinite(logits).all()
    assert not np.allclose(logits, expected["logits_model"])
