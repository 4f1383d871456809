"""Pretrained weights through huggingface_hub's real code path, without network.

Each test lays out a hub cache as huggingface_hub writes it,

    models--timm--crossvit_tiny_240.in1k/refs/main                      (the commit hash)
    models--timm--crossvit_tiny_240.in1k/snapshots/<commit>/model.safetensors -> ../../blobs/<sha256>
    models--timm--crossvit_tiny_240.in1k/blobs/<sha256>

holding the weights of the committed parity fixture `reduced` (timm's logits for a reduced CrossViT,
tools/make_fixtures.py), and turns the hub off (HF_HUB_OFFLINE=1, HF_HUB_CACHE). The reduced
architecture is not a variant: in-process the tests give create_model its architecture as
overrides of crossvit_tiny_240 (whose hub id is used); in the convert command's subprocess, which
takes no architecture flags, the table entry of crossvit_tiny_240 is replaced by the reduced one.

huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE once, when it is imported
(huggingface_hub.constants): the in-process tests patch those constants as well as the environment;
the subprocesses get the environment before the import.
"""

import hashlib
import json
import logging
import os
import sys

import keras
import numpy as np
import pytest
from helpers import REPO
from test_convert import assert_parity, golden, save_safetensors

import crossvit_keras
from crossvit_keras import data, training
from crossvit_keras.cli import train as recipe
from crossvit_keras.weights import hub
from crossvit_keras.weights.convert import config_from_timm

COMMIT = "1" * 40
HUB_ID = "timm/crossvit_tiny_240.in1k"
REPO_FOLDER = "models--timm--crossvit_tiny_240.in1k"


@pytest.fixture(scope="module")
def reduced():
    fixture, state_dict, images = golden("reduced")
    config = config_from_timm(**json.loads(str(fixture["kwargs_json"])))
    return fixture, state_dict, images, config


def architecture(config):
    """The reduced fixture's architecture as create_model overrides (its class count apart)."""
    return {k: v for k, v in config.items() if k != "num_classes"}


def lay_out_cache(cache, state_dict, commit=COMMIT):
    """A hub cache with the state dict as model.safetensors at `commit`, as hf_hub_download leaves it."""
    repo = cache / REPO_FOLDER
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    staged = save_safetensors(state_dict, cache / "staged.safetensors")
    sha256 = hashlib.sha256(staged.read_bytes()).hexdigest()
    os.replace(staged, repo / "blobs" / sha256)
    (repo / "snapshots" / commit).mkdir(parents=True)
    os.symlink(f"../../blobs/{sha256}", repo / "snapshots" / commit / "model.safetensors")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # huggingface_hub writes it without a newline
    return repo


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty hub cache, the hub switched off (environment and huggingface_hub's constants)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hub_log():
    """The lines crossvit_keras.weights.hub logs (caught here whether or not the package's handler is set up)."""
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    hub_logger = logging.getLogger("crossvit_keras.weights.hub")
    hub_logger.addHandler(handler)
    level = hub_logger.level
    hub_logger.setLevel(logging.INFO)
    yield lines
    hub_logger.removeHandler(handler)
    hub_logger.setLevel(level)


def converted_files(repo):
    folder = repo / hub.CACHE_FOLDER
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_pretrained_true_gives_timms_logits_and_the_second_call_loads_the_cached_conversion(offline, reduced, hub_log):
    fixture, state_dict, images, config = reduced
    repo = lay_out_cache(offline, state_dict)
    model = crossvit_keras.create_model("crossvit_tiny", pretrained=True, num_classes=7, **architecture(config))
    assert_parity(model(images), fixture["logits"])
    assert hub_log[0].startswith("converting ") and "model.safetensors" in hub_log[0]
    assert hub_log[1].startswith("wrote ")
    (cached,) = converted_files(repo)  # one .keras, no temporary left beside it
    assert cached.startswith("crossvit_tiny_240-48px-111111111111-") and cached.endswith(".keras")
    from huggingface_hub import scan_cache_dir

    scan = scan_cache_dir(offline)  # huggingface_hub still reads the cache as its own
    assert not scan.warnings and [r.repo_id for r in scan.repos] == [HUB_ID]
    assert [f.file_name for r in scan.repos for rev in r.revisions for f in rev.files] == ["model.safetensors"]

    hub_log.clear()
    again = crossvit_keras.create_model("crossvit_tiny_240", pretrained=HUB_ID, num_classes=7, **architecture(config))
    assert hub_log == [f"loading the converted {repo / hub.CACHE_FOLDER / cached}"]  # no conversion
    assert_parity(again(images), fixture["logits"])

    # Another revision (refs/main moved to a new commit): converted again, into its own file.
    lay_out_cache(offline, state_dict, commit="2" * 40)
    hub_log.clear()
    crossvit_keras.create_model("crossvit_tiny_240", pretrained=True, num_classes=7, **architecture(config))
    assert hub_log[0].startswith("converting ")
    assert len(converted_files(repo)) == 2


def test_an_unreadable_cached_conversion_is_converted_again(offline, reduced, hub_log):
    fixture, state_dict, images, config = reduced
    repo = lay_out_cache(offline, state_dict)
    folder = repo / hub.CACHE_FOLDER
    folder.mkdir()
    name = os.path.basename(hub.cache_path("crossvit_tiny_240", hub.download(HUB_ID), architecture(config)))
    (folder / name).write_bytes(b"not a zip file")
    model = crossvit_keras.create_model("crossvit_tiny_240", pretrained=True, num_classes=7, **architecture(config))
    assert hub_log[0].startswith("loading the converted") and "converting again" in hub_log[1]
    assert_parity(model(images), fixture["logits"])
    assert converted_files(repo) == [name]


def test_the_cache_key_follows_the_configuration_and_the_dtype_policy(offline, reduced):
    _, state_dict, _, config = reduced
    lay_out_cache(offline, state_dict)
    checkpoint = hub.download(HUB_ID)
    plain = hub.cache_path("crossvit_tiny_240", checkpoint, architecture(config))
    assert hub.cache_path("crossvit_tiny", checkpoint, architecture(config)) == plain
    other = hub.cache_path("crossvit_tiny_240", checkpoint, {**architecture(config), "drop_path_rate": 0.1})
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = hub.cache_path("crossvit_tiny_240", checkpoint, architecture(config))
    finally:
        keras.config.set_dtype_policy(policy)
    assert len({plain, other, mixed}) == 3


def test_pretrained_with_other_classes_and_size_resizes_and_keeps_fresh_heads(offline, reduced, hub_log):
    fixture, state_dict, images, config = reduced
    lay_out_cache(offline, state_dict)
    # the recipe's --pretrained: a new head for the dataset's 3 classes, position embeddings for 96 px
    overrides = {**architecture(config), "image_sizes": [96, 64]}
    args = recipe.build_parser().parse_args(
        ["--pretrained", "--model", "crossvit_tiny_240", "--model-overrides", json.dumps(overrides)]
    )
    model = training.training_model(recipe.config_from_args(args), num_classes=3)
    assert model.output_shape == (None, 3) and model.image_size == 96
    assert sum("position embedding resized" in line for line in hub_log) == 2
    assert any("heads not loaded: the checkpoint has 7 classes, the model 3" in line for line in hub_log)
    cls_token = model.get_layer("embed_0").cls_token.numpy()
    np.testing.assert_array_equal(cls_token, state_dict["cls_token_0"])


def test_a_local_checkpoint_path_loads_without_the_hub(offline, reduced, tmp_path):
    fixture, state_dict, images, config = reduced
    path = save_safetensors(state_dict, tmp_path / "official.safetensors")
    model = crossvit_keras.create_model(
        "crossvit_tiny_240", pretrained=str(path), num_classes=None, **architecture(config)
    )
    assert_parity(model(images), fixture["logits"])
    assert sorted(os.listdir(tmp_path)) == ["hub", "official.safetensors"]  # nothing written beside it


def test_offline_with_an_empty_cache_is_one_clear_error_and_writes_nothing(offline, capsys, tmp_path):
    with pytest.raises(hub.HubError) as error:
        crossvit_keras.create_model("crossvit_15", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    for part in (
        "model.safetensors",
        "timm/crossvit_15_240.in1k",
        "HF_HUB_OFFLINE=1",
        "pretrained=PATH",
        "HF_HUB_CACHE",
    ):
        assert part in message, part
    # The convert command: one `error:` line, exit code 1, no output file.
    output = tmp_path / "out" / "crossvit_15.keras"
    with pytest.raises(SystemExit) as exit_code:
        from crossvit_keras.cli.convert import main

        main(["--model", "crossvit_15_240", "--output", str(output)])
    assert exit_code.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot get model.safetensors of timm/crossvit_15_240.in1k")
    assert not output.parent.exists()
    assert not [name for _, _, files in os.walk(offline) for name in files]


def test_unknown_pretrained_values_say_what_is_accepted():
    with pytest.raises(ValueError, match="neither a checkpoint file"):
        crossvit_keras.create_model("crossvit_9", pretrained="imagenet")
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        crossvit_keras.create_model("crossvit_9", pretrained="missing.pth")
    assert [hub.hub_id(name) for name in ("crossvit_15", "crossvit_18_dagger_384")] == [
        "timm/crossvit_15_240.in1k",
        "timm/crossvit_18_dagger_408.in1k",
    ]


def test_convert_command_without_checkpoint_downloads(tmp_path, reduced):
    """In a fresh process (huggingface_hub reads the environment), with TensorFlow's default log
    level: the command line also shows that nothing but its own lines is printed (part 6)."""
    import subprocess

    fixture, state_dict, images, config = reduced
    cache = tmp_path / "hub"
    lay_out_cache(cache, state_dict)
    variant = {**crossvit_keras.configs.VARIANTS["crossvit_tiny_240"], **architecture(config)}
    code = (
        "import json, sys; from crossvit_keras import configs; from crossvit_keras.cli import convert\n"
        "configs.VARIANTS['crossvit_tiny_240'] = json.loads(sys.argv[1]); convert.main(sys.argv[2:])"
    )
    output = tmp_path / "out" / "crossvit_tiny.keras"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CROSSVIT_KERAS_TF_LOGS")}
    env.update(PYTHONPATH=REPO, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    command = [sys.executable, "-c", code, json.dumps(variant), "--model", "crossvit_tiny", "--output", output]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr == ""  # no TensorFlow start-up lines (and no `failed call to cuInit`)
    assert "converting" not in result.stdout and f"wrote {output}" in result.stdout
    assert os.listdir(output.parent) == ["crossvit_tiny.keras"]
    assert_parity(keras.models.load_model(output)(images), fixture["logits"])


def test_recipe_eval_pretrained_evaluates_the_hub_weights(offline, reduced, tmp_path, capsys):
    fixture, state_dict, images, config = reduced
    lay_out_cache(offline, state_dict)
    folder = data.make_sample_folder(str(tmp_path / "images"), num_images=7, size=(64, 48), classes=7)
    args = [
        "--eval",
        "--pretrained",
        "--model",
        "crossvit_tiny_240",
        "--model-overrides",
        json.dumps(architecture(config)),
    ]
    args += ["--data-path", folder, "--batch-size", "4", "--verbose", "0", "--output_dir", str(tmp_path / "run")]
    assert recipe.main(args) == 0
    out = capsys.readouterr().out
    assert "converting " in out and "top-1" in out
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["model"] == "crossvit_tiny_240 --pretrained True" and result["val_images"] == 7


# ----------------------------------------------------------------------------- what a newcomer sees (part 6)


def test_full_tensorflow_logs_and_a_users_own_level_are_kept(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    monkeypatch.setenv("CROSSVIT_KERAS_TF_LOGS", "1")
    with crossvit_keras._quiet_tensorflow_start():
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    monkeypatch.delenv("CROSSVIT_KERAS_TF_LOGS")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    with crossvit_keras._quiet_tensorflow_start():
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


class _Terminal:
    def isatty(self):
        return True

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def test_progress_bars_on_a_terminal_plain_lines_otherwise(monkeypatch):
    def resolved(argv):
        return recipe.config_from_args(recipe.build_parser().parse_args(argv)).checked().verbose

    assert resolved([]) == 2  # pytest's captured stdout is not a terminal
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert resolved([]) == 1
    assert resolved(["--verbose", "0"]) == 0


def test_a_modified_variant_is_named_as_what_it_is(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO, "recipes"))
    from quickstart import IMAGE_SIZE, MODEL_OVERRIDES

    model = crossvit_keras.create_model(
        "crossvit_tiny_240", num_classes=10, image_size=IMAGE_SIZE, **json.loads(MODEL_OVERRIDES)
    )
    assert training.model_label(model) == (
        "crossvit_tiny_240 (modified: image_sizes=(48,48) embed_dims=(64,128) depths=((1,3,1),) num_heads=(4,4) "
        "mlp_ratios=(2,2))"
    )
    assert training.model_label(crossvit_keras.create_model("crossvit_9", num_classes=3, drop_path_rate=0.1)) == (
        "crossvit_9_240"
    )
