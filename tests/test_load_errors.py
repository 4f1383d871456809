"""Invalid model configurations and damaged .keras files: create_model and every layer raise a
ValueError naming the argument and the values it takes; a .keras file that is not a zip, names an
unknown class or holds an invalid value (a zero patch size) is one `error:` line through every
command that takes one (export, the recipe's --finetune and --eval --resume, predict), and a
failed run leaves no output directory behind."""

import json
import os
import re
import zipfile

import pytest
from helpers import tiny_model
from test_training import TINY, make_folder

import crossvit_keras
from crossvit_keras import configs, layers
from crossvit_keras.cli import export as export_cli
from crossvit_keras.cli import predict as predict_cli
from crossvit_keras.cli import train as recipe_cli

FAST = ["--batch-size", "4", "--warmup-epochs", "0", "--aa", "none", "--mixup", "0", "--cutmix", "0", "--verbose", "2"]

# ----------------------------------------------------------------------------- create_model and the layers


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"patch_sizes": (0, 16)}, "patch_sizes must be two positive integers (one per branch), got (0, 16)"),
        ({"patch_sizes": (-12, 16)}, "patch_sizes must be two positive integers"),
        ({"embed_dims": (0, 32)}, "embed_dims must be two positive integers"),
        ({"embed_dims": (-16, 32)}, "embed_dims must be two positive integers"),
        ({"num_heads": (0, 2)}, "num_heads must be two positive integers"),
        ({"image_sizes": (48, 0)}, "image_sizes must be two positive integers"),
        ({"mlp_ratios": (0, 2)}, "mlp_ratios must be two positive numbers"),
        ({"mlp_ratios": (-1.0, 2)}, "mlp_ratios must be two positive numbers"),
        ({"mlp_ratios": (0.01, 2)}, "MLP width int(embed_dim x ratio) >= 1"),
        ({"drop_rate": 1.5}, "drop_rate must be a number in [0, 1), got 1.5"),
        ({"attn_drop_rate": 1.0}, "attn_drop_rate must be a number in [0, 1)"),
        ({"proj_drop_rate": -0.1}, "proj_drop_rate must be a number in [0, 1)"),
        ({"drop_path_rate": 1.0}, "drop_path_rate must be a number in [0, 1)"),
        ({"qkv_bias": "yes"}, "qkv_bias must be True or False"),
        ({"depths": ((1, 1, 0),)}, "depths must be K >= 1 triples"),
    ],
)
def test_invalid_configurations_name_the_argument_and_its_values(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        crossvit_keras.create_model("crossvit_tiny_240", num_classes=3, **{**configs.TEST_OVERRIDES, **overrides})


def test_a_negative_class_count_is_refused():
    with pytest.raises(ValueError, match=re.escape("num_classes must be an integer >= 0 (0 = no head), got -1")):
        crossvit_keras.create_model("crossvit_tiny_240", num_classes=-1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: layers.PatchEmbedding(0, 16), "PatchEmbedding: patch_size must be a positive integer, got 0"),
        (lambda: layers.PatchEmbedding(12, -16), "PatchEmbedding: dim must be a positive integer, got -16"),
        (lambda: layers.ClassTokenPositionEmbedding(0, 16), "num_patches must be a positive integer"),
        (lambda: layers.MultiHeadSelfAttention(16, 0), "num_heads must be a positive integer, got 0"),
        (lambda: layers.MultiHeadCrossAttention(0, 2), "dim must be a positive integer, got 0"),
        (lambda: layers.MultiHeadSelfAttention(16, 2, attn_drop_rate=1.0), "attn_drop_rate must be a number in [0, 1)"),
        (lambda: layers.MLP(16, 0), "MLP: hidden_dim must be a positive integer, got 0"),
        (lambda: layers.MLP(16, 32, drop_rate=2), "MLP: drop_rate must be a number in [0, 1), got 2"),
        (lambda: layers.TransformerBlock(16, 2, 0), "TransformerBlock: mlp_ratio must be a positive number"),
        (lambda: layers.TransformerBlock(0, 2), "TransformerBlock: dim must be a positive integer, got 0"),
        (lambda: layers.TransformerBlock(16, 2, drop_path_rate=1.0), "drop_path_rate must be a number in [0, 1)"),
        (lambda: layers.Projection(0), "Projection: dim_out must be a positive integer, got 0"),
        (lambda: layers.CrossAttentionFusion((16, 0), (2, 2)), "dims must be two positive integers"),
        (lambda: layers.CrossAttentionFusion((16, 32), (2, 2), depth=0), "depth must be a positive integer"),
        (lambda: layers.PairwiseFusion((16, 32), (0, 2)), "PairwiseFusion: num_heads must be two positive integers"),
        (lambda: layers.MultiScaleEncoder((16, 32), (1, 1, 0), (2, 2), (2, 2), (0.0,)), "depth must be (N, M, L)"),
        (lambda: layers.MultiScaleEncoder((16, 32), (1, 2, 1), (2, 2), (2, 2), (0.0,)), "one rate per block"),
        (lambda: layers.BicubicResize((0, 32)), "BicubicResize: size must be a positive integer, got 0"),
        (lambda: layers.DropPath(-0.5), "DropPath: rate must be a number in [0, 1), got -0.5"),
    ],
)
def test_layers_name_the_invalid_argument(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


# ----------------------------------------------------------------------------- damaged .keras files


def _rewrite_config(source, target, change):
    """A copy of the .keras file `source` whose config.json is change(config)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            content = old.read(item.filename)
            if item.filename == "config.json":
                content = json.dumps(change(json.loads(content))).encode()
            new.writestr(item, content)
    return target


def _unknown_class(config):
    return {**config, "class_name": "NoSuchModel", "registered_name": "crossvit_keras>NoSuchModel"}


def _zero_patch(config):
    return {**config, "config": {**config["config"], "patch_sizes": [0, 16]}}


def _negative_ratio(config):
    return {**config, "config": {**config["config"], "mlp_ratios": [-2.0, 2.0]}}


# file name: (how it is made, what the one line says)
DAMAGED = {
    "not_a_zip.keras": (None, "it is not a .keras file (not a zip archive, 14 bytes"),
    "no_config.keras": (None, "it is a zip archive without config.json (not a .keras file, or a damaged one)"),
    "unknown_class.keras": (_unknown_class, "its config names 'NoSuchModel', a class unknown here"),
    "zero_patch.keras": (
        _zero_patch,
        "its config is invalid (patch_sizes must be two positive integers (one per branch), got (0, 16))",
    ),
    "negative_ratio.keras": (_negative_ratio, "its config is invalid (mlp_ratios must be two positive numbers"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """{name: path} of the DAMAGED files, beside the good model.keras (3 classes) and an image folder."""
    root = tmp_path_factory.mktemp("load_errors")
    good = root / "model.keras"
    tiny_model(num_classes=3, **json.loads(TINY[3])).save(good)
    (root / "not_a_zip.keras").write_bytes(b"hello, no zip.")
    with zipfile.ZipFile(root / "no_config.keras", "w") as archive:
        archive.writestr("notes.txt", "a zip, not a Keras model")
    for name, (change, _) in DAMAGED.items():
        if change is not None:
            _rewrite_config(good, root / name, change)
    make_folder(root / "images", images=8)
    return root


def one_line(text):
    lines = [line for line in text.strip().splitlines() if not line.startswith("[")]  # log lines start with a time
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("name", list(DAMAGED))
def test_load_model_says_what_is_wrong_in_one_line(damaged, name):
    with pytest.raises(crossvit_keras.ModelLoadError) as info:
        crossvit_keras.load_model(damaged / name)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(f"cannot load the model {damaged / name}: ") and DAMAGED[name][1] in message, message
    assert "give a" in message  # what to pass instead


@pytest.mark.parametrize("name", list(DAMAGED))
def test_every_command_taking_a_keras_file_refuses_it_in_one_line(damaged, name, capsys):
    path, expected = damaged / name, DAMAGED[name][1]
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model", str(path), "--output", str(damaged / "export" / "1")])
    assert exit_info.value.code == 2 and expected in one_line(capsys.readouterr().err)
    assert not (damaged / "export").exists()

    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["--model", str(path), str(damaged / "images" / "val" / "class_0" / "00000.jpg")])
    assert exit_info.value.code == 2 and expected in one_line(capsys.readouterr().err)

    images, out = str(damaged / "images"), damaged / "run"
    common = ["--data-path", images, "--output_dir", str(out), *TINY, *FAST]
    for flags in (["--finetune", str(path), "--epochs", "1"], ["--eval", "--resume", str(path)]):
        assert recipe_cli.main([*common, *flags]) == 2, flags
        captured = capsys.readouterr()
        assert expected in one_line(captured.err), flags
        assert not out.exists(), flags  # the run made its output directory, and removed it


def test_a_failed_run_removes_only_the_directory_it_created(damaged, tmp_path, capsys):
    images, bad = str(damaged / "images"), str(damaged / "zero_patch.keras")
    nested = tmp_path / "new" / "runs" / "x"
    assert recipe_cli.main(["--data-path", images, "--output_dir", str(nested), *TINY, *FAST, "--finetune", bad]) == 2
    assert os.listdir(tmp_path) == []  # new/runs/x and the parents it made: gone
    kept = tmp_path / "kept"
    kept.mkdir()
    assert recipe_cli.main(["--data-path", images, "--output_dir", str(kept), *TINY, *FAST, "--finetune", bad]) == 2
    assert kept.is_dir() and os.listdir(kept) == []  # it was there before the run: kept
    (kept / "notes.txt").write_text("mine")
    assert recipe_cli.main(["--data-path", images, "--output_dir", str(kept), *TINY, *FAST, "--finetune", bad]) == 2
    assert os.listdir(kept) == ["notes.txt"]
    capsys.readouterr()
