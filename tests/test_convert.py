"""The weight converter: numerical parity with timm, strictness, resolution and head changes.

The golden files in tests/fixtures were made by tools/make_fixtures.py with torch + timm: timm
models whose weights are `random_state_dict(shapes, seed)` (every tensor perturbed), run on
`random_images`. The tests rebuild the same weights from the seed, write them as a checkpoint,
convert, and compare the logits."""

import glob
import hashlib
import json
import os
import pickle
import sys

import keras
import numpy as np
import pytest
from helpers import REPO, run_python

import crossvit_keras
from crossvit_keras.weights.convert import CheckpointError, config_from_timm, convert, load_checkpoint, load_weights

sys.path.insert(0, os.path.join(REPO, "tools"))
from fixture_weights import random_images, random_state_dict, shapes_from_json  # noqa: E402

FIXTURES = os.path.join(REPO, "tests", "fixtures")
PARITY = sorted(os.path.basename(p)[7:-4] for p in glob.glob(os.path.join(FIXTURES, "parity_*.npz")))
TIMM = json.load(open(os.path.join(FIXTURES, "timm_reference.json")))["variants"]


def golden(name):
    """The fixture, its regenerated timm state dict and its images."""
    fixture = dict(np.load(os.path.join(FIXTURES, f"parity_{name}.npz")))
    seed = int(fixture["seed"])
    state_dict = random_state_dict(shapes_from_json(fixture["state_dict_shapes_json"]), seed)
    images = fixture.get("images")
    if images is None:
        images = random_images(*fixture["images_shape"][:3], seed)
    assert hashlib.sha256(images.tobytes()).hexdigest() == str(fixture["images_sha256"])
    return fixture, state_dict, images


def keras_model_for(fixture):
    kwargs = json.loads(str(fixture["kwargs_json"]))
    if "model_name" in fixture:
        return crossvit_keras.create_model(str(fixture["model_name"]), num_classes=kwargs["num_classes"])
    return crossvit_keras.CrossViT(**config_from_timm(**kwargs))


def save_safetensors(state_dict, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path))
    return path


def assert_parity(actual, expected):
    """The issue's bar: max |diff| <= 1e-4 x max |logit| in float32."""
    actual = keras.ops.convert_to_numpy(actual)
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("name", PARITY)
def test_logits_equal_timm(name, tmp_path):
    fixture, state_dict, images = golden(name)
    model = keras_model_for(fixture)
    assert model.count_params() == sum(v.size for v in state_dict.values())
    assert load_weights(model, save_safetensors(state_dict, tmp_path / "w.safetensors")) == []
    assert_parity(model.predict(images, verbose=0), fixture["logits"])
    head = model.get_layer("head")
    tokens = keras.Model(model.input, head.input)(images)  # each branch's tokens after the encoder
    pre_logits = np.concatenate([head.norms[b](tokens[b][:, 0]) for b in range(2)], axis=-1)
    assert_parity(pre_logits, fixture["pre_logits"])
    for b in range(2):
        if f"features_{b}" in fixture:  # timm's forward_features: all tokens after the final LayerNorm
            assert_parity(head.norms[b](tokens[b]), fixture[f"features_{b}"])
    if "scaled_image_1" in fixture:
        assert_parity(model.get_layer("resize_1")(images), fixture["scaled_image_1"])


def test_official_key_names_and_wrapped_state_dicts_load(tmp_path):
    fixture, state_dict, images = golden("reduced")
    renamed = {
        k.replace("pos_embed_", "pos_embed.").replace("cls_token_", "cls_token."): v for k, v in state_dict.items()
    }
    official = {"model": {f"module.{k}": v for k, v in renamed.items()}}
    assert "module.pos_embed.0" in official["model"]
    model = keras_model_for(fixture)
    load_weights(model, official)
    assert_parity(model(images), fixture["logits"])


def test_every_timm_key_of_every_variant_has_its_own_keras_weight():
    from crossvit_keras.weights.convert import keras_path

    for name, variant in TIMM.items():
        mapped = [keras_path(key) for key in variant["state_dict"]]
        assert all(prefix for prefix, _ in mapped), name
        assert len(set(mapped)) == len(mapped), name


@pytest.fixture(scope="module")
def reduced():
    fixture, state_dict, images = golden("reduced")
    return fixture, state_dict, images


def test_missing_unexpected_and_misshaped_keys_are_all_listed(reduced):
    fixture, state_dict, _ = reduced
    broken = dict(state_dict)
    del broken["blocks.0.fusion.1.attn.wk.bias"]
    broken["blocks.0.extra.weight"] = np.zeros(3, "float32")
    broken["blocks.1.projs.0.2.weight"] = np.zeros((5, 5), "float32")
    model = keras_model_for(fixture)
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(CheckpointError) as error:
        load_weights(model, broken)
    message = str(error.value)
    assert "stage_0/fusion/cross_attn_1_0/attn/wk/bias" in message
    assert "blocks.0.extra.weight" in message
    assert "blocks.1.projs.0.2.weight (5, 5)" in message
    # Nothing was half-loaded.
    for weight, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)


def test_a_checkpoint_of_another_variant_names_it(tmp_path):
    shapes = {k: tuple(v) for k, v in TIMM["crossvit_9_240"]["state_dict"].items()}
    state_dict = {k: np.zeros(s, "float32") for k, s in shapes.items()}
    model = crossvit_keras.create_model("crossvit_tiny_240")
    with pytest.raises(CheckpointError, match="crossvit_9_240"):
        load_weights(model, state_dict)


def test_other_class_count_keeps_fresh_heads_and_loads_the_rest(reduced):
    fixture, state_dict, images = reduced
    reference = keras_model_for(fixture)
    load_weights(reference, state_dict)
    config = config_from_timm(**{**json.loads(str(fixture["kwargs_json"])), "num_classes": 3})
    model = crossvit_keras.CrossViT(**config)
    fresh = model.get_layer("head").heads[0].kernel.numpy().copy()
    messages = load_weights(model, state_dict)
    assert any("heads not loaded" in m and "7 classes" in m for m in messages)
    np.testing.assert_array_equal(model.get_layer("head").heads[0].kernel.numpy(), fresh)
    np.testing.assert_array_equal(
        model.get_layer("stage_1").fusion.projs[0].fc.kernel.numpy(),
        reference.get_layer("stage_1").fusion.projs[0].fc.kernel.numpy(),
    )
    assert model(images).shape == (2, 3)


def test_other_resolution_resizes_position_embeddings(reduced):
    fixture, state_dict, images = reduced
    config = config_from_timm(**json.loads(str(fixture["kwargs_json"])))
    model = crossvit_keras.CrossViT(**{**config, "image_sizes": (96, 64)})  # grids 4 -> 8 and 2 -> 4
    messages = load_weights(model, state_dict)
    assert len(messages) == 2 and all("resized" in m for m in messages)
    pos = model.get_layer("embed_0").pos_embed.numpy()
    np.testing.assert_array_equal(pos[:, 0], state_dict["pos_embed_0"][:, 0])  # CLS position kept
    grid = state_dict["pos_embed_0"][0, 1:].reshape(4, 4, -1)
    # Bicubic upsampling by 2 keeps the mean of the grid within the kernel's overshoot.
    assert pos.shape == (1, 65, 16)
    np.testing.assert_allclose(pos[0, 1:].reshape(8, 8, -1).mean((0, 1)), grid.mean((0, 1)), atol=0.1)
    assert np.all(np.isfinite(model(np.zeros((1, 96, 96, 3), "float32"))))


def test_command_line_writes_a_loadable_keras_file(tmp_path):
    fixture, state_dict, images = golden("crossvit_9_240")
    checkpoint = save_safetensors(state_dict, tmp_path / "model.safetensors")
    output = tmp_path / "out" / "crossvit_9.keras"
    run_python(
        "from crossvit_keras.cli.convert import main; main()",
        "--model",
        "crossvit_9",
        "--checkpoint",
        checkpoint,
        "--output",
        output,
    )
    assert os.listdir(output.parent) == ["crossvit_9.keras"]  # no temporary left behind
    model = keras.models.load_model(output)
    assert model.name == "crossvit_9_240"
    assert_parity(model.predict(images, verbose=0), fixture["logits"])


def test_truncated_and_foreign_files_fail_clearly_and_write_nothing(tmp_path, reduced):
    _, state_dict, _ = reduced
    checkpoint = save_safetensors(state_dict, tmp_path / "w.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(text)
    output = tmp_path / "never.keras"
    with pytest.raises(CheckpointError):
        convert("crossvit_tiny_240", truncated, output)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "truncated.safetensors", "w.safetensors"]


def test_pth_without_torch_names_the_install_command(tmp_path, monkeypatch):
    path = tmp_path / "crossvit_15_224.pth"
    path.write_bytes(pickle.dumps({}))  # a pickle of no code: torch is needed to read it
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        load_checkpoint(path)


def test_converted_model_keeps_working_after_a_save(tmp_path, reduced):
    fixture, state_dict, images = reduced
    model = keras_model_for(fixture)
    load_weights(model, state_dict)
    model.save(tmp_path / "m.keras")
    assert_parity(keras.models.load_model(tmp_path / "m.keras")(images), fixture["logits"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TIMM))
def test_live_parity_with_timm(name):
    """Opt-in (`pytest -m slow` in an environment with torch and timm): every variant, live."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    reference = timm.create_model(name).eval()
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    state_dict = random_state_dict(shapes, 0)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    size = reference.img_size[0]
    images = random_images(2, size, size, 0)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    model = crossvit_keras.create_model(name)
    load_weights(model, state_dict)
    assert_parity(model.predict(images, verbose=0), expected)
