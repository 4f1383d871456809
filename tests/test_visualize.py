"""The visualisation commands (paper Fig. 5 and the cross-attention maps) on a real photograph,
from a .keras file and from a converted checkpoint."""

import json
import os
import sys

import keras
import numpy as np
import pytest
from helpers import REPO, random_inputs, tiny_model
from PIL import Image

import crossvit_keras
from crossvit_keras import visualize
from crossvit_keras.cli import visualize as visualize_cli

sys.path.insert(0, os.path.join(REPO, "tools"))
from fixture_weights import random_state_dict, shapes_from_json  # noqa: E402


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """scikit-image's photograph of Chelsea the cat (451 x 300), as a JPEG file."""
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=90)
    return str(path)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    tiny_model(num_classes=5).save(path)
    return str(path)


def assert_png(path, min_size=(400, 200)):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # something was drawn


@pytest.mark.parametrize("kind", ["features", "attention"])
def test_command_draws_a_png_from_a_keras_file(kind, photo, keras_file, tmp_path, capsys):
    output = tmp_path / f"{kind}.png"
    assert visualize_cli.main([kind, "--model", keras_file, photo, "--output", str(output)]) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    assert_png(output)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # written atomically


def test_command_draws_from_a_converted_checkpoint(photo, tmp_path):
    from safetensors.numpy import save_file

    fixture = np.load(os.path.join(REPO, "tests", "fixtures", "parity_reduced.npz"))
    state_dict = random_state_dict(shapes_from_json(fixture["state_dict_shapes_json"]), int(fixture["seed"]))
    checkpoint = tmp_path / "model.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(checkpoint))
    overrides = json.dumps(crossvit_keras.configs.TEST_OVERRIDES)
    output = tmp_path / "attention.png"
    argv = ["attention", photo, "--model", "crossvit_tiny_240", "--checkpoint", str(checkpoint)]
    assert visualize_cli.main([*argv, "--model-overrides", overrides, "--output", str(output)]) == 0
    assert_png(output)


def test_probes_are_the_models_own_tensors():
    model = tiny_model(num_classes=5)
    images = random_inputs((2, 48, 48, 3))
    tokens = visualize.feature_model(model)(images)
    assert [tuple(t.shape) for t in tokens] == [(2, 17, 16), (2, 5, 32)]
    np.testing.assert_allclose(  # the head on the probed tokens gives the model's logits
        keras.ops.convert_to_numpy(model.get_layer("head")(tokens)),
        keras.ops.convert_to_numpy(model(images)),
        atol=1e-6,
    )
    maps = [keras.ops.convert_to_numpy(m) for m in visualize.attention_model(model)(images)]
    # 2 stages x 2 branches: the small CLS over 1 + 4 large patches, the large CLS over 1 + 16 small ones
    assert [m.shape for m in maps] == [(2, 2, 5), (2, 2, 17)] * 2
    for m in maps:
        np.testing.assert_allclose(m.sum(axis=-1), 1.0, rtol=1e-5)


def test_bad_input_is_one_line(photo, keras_file, tmp_path, capsys):
    for argv, message in (
        (["features", "--model", keras_file, str(tmp_path / "missing.jpg")], "cannot read"),
        (["features", "--model", "crossvit_9_240", photo], "--checkpoint"),
        (["attention", "--model", str(tmp_path / "none.keras"), photo], "not found"),
    ):
        assert visualize_cli.main([*argv, "--output", str(tmp_path / "x.png")]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error
    assert not os.path.exists(tmp_path / "x.png")
