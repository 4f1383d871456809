"""The 11 variants as presets: from_preset gets timm's ImageNet weights through the hub download,
cache and strict converter, here from a hub cache laid out offline with the committed timm parity
fixture of crossvit_9_240 (timm's logits for a seeded random checkpoint), under TensorFlow and JAX."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from test_convert import assert_parity, golden, save_safetensors

from crossvit_keras import CrossViTBackbone, CrossViTImageClassifier, CrossViTImageConverter, configs
from crossvit_keras.export.saved_model import model_crop_pct
from crossvit_keras.models import PRESETS, crossvit_presets

NAME = "crossvit_9_240"


def test_every_variant_is_a_preset():
    assert list(PRESETS) == list(configs.VARIANTS)
    assert CrossViTImageClassifier.presets is PRESETS and CrossViTBackbone.presets is PRESETS
    for name, preset in PRESETS.items():
        assert preset["hf_hub_id"] == f"timm/{name}.in1k"
        assert preset["metadata"]["params"] == configs.TIMM_FIGURES[name][0]
    assert crossvit_presets.is_variant("crossvit_15") and crossvit_presets.is_variant("crossvit_15_dagger_384")
    assert not crossvit_presets.is_variant("hf://someone/crossvit") and not crossvit_presets.is_variant("resnet_50")


def test_export_crop_follows_the_variant():
    class Named:
        def __init__(self, name):
            self.name = name

    assert model_crop_pct(Named("crossvit_15_dagger_408")) == 1.0
    assert model_crop_pct(Named("crossvit_15_240")) == 0.875 and model_crop_pct(Named("my_model")) == 0.875


def test_model_classes_do_not_import_tensorflow():
    """The keras-hub classes and the transform run on every Keras backend."""
    folder = os.path.join(REPO, "crossvit_keras")
    files = [os.path.join(folder, "transforms.py")]
    files += [
        os.path.join(folder, "models", f) for f in os.listdir(os.path.join(folder, "models")) if f.endswith(".py")
    ]
    for path in files:
        source = open(path, encoding="utf-8").read()
        assert "import tensorflow" not in source and "from tensorflow" not in source, path
        assert "crossvit_keras.data" not in source and "crossvit_keras.training" not in source, path


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A hub cache holding the fixture's checkpoint as timm/crossvit_9_240.in1k, as hf_hub_download leaves it."""
    fixture, state_dict, images = golden(NAME)
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / f"models--timm--{NAME}.in1k"
    commit = "2" * 40
    (repo / "blobs").mkdir(parents=True)
    staged = save_safetensors(state_dict, cache / "staged.safetensors")
    sha256 = hashlib.sha256(staged.read_bytes()).hexdigest()
    os.replace(staged, repo / "blobs" / sha256)
    (repo / "snapshots" / commit).mkdir(parents=True)
    os.symlink(f"../../blobs/{sha256}", repo / "snapshots" / commit / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache, fixture, images


@pytest.fixture
def offline(hub_cache, monkeypatch):
    from huggingface_hub import constants

    cache = str(hub_cache[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    return hub_cache


def test_from_preset_gives_timms_logits(offline):
    cache, fixture, images = offline
    classifier = CrossViTImageClassifier.from_preset(NAME)
    assert_parity(classifier(images), fixture["logits"])
    assert classifier.preprocessor.image_converter.crop_pct == 0.875 and classifier.num_classes == 1000
    converted = list((cache / f"models--timm--{NAME}.in1k" / "crossvit_keras").glob("*.keras"))
    assert len(converted) == 1  # the hub module's cached conversion
    backbone = CrossViTBackbone.from_preset("crossvit_9")  # a paper name; from the cache
    for a, e in zip(backbone(images), classifier.backbone(images), strict=True):
        np.testing.assert_array_equal(a, e)


JAX_CHECK = """
import json, sys
import numpy as np
import keras
import crossvit_keras
assert keras.backend.backend() == "jax", keras.backend.backend()
images, raw = np.load(sys.argv[1]), np.load(sys.argv[2])
classifier = crossvit_keras.CrossViTImageClassifier.from_preset("crossvit_9_240")
converter = crossvit_keras.CrossViTImageConverter.from_preset("crossvit_9_240")
np.save(sys.argv[3], np.asarray(classifier(images)))
np.save(sys.argv[4], np.asarray(converter(raw)))
"""


@pytest.mark.slow  # a fresh process importing TensorFlow and JAX, then crossvit_9 on JAX: ~30 s of CPU
def test_from_preset_under_jax(offline, tmp_path):
    cache, fixture, images = offline
    raw = np.random.default_rng(0).integers(0, 256, (2, 300, 260, 3)).astype("uint8")
    paths = [tmp_path / f"{n}.npy" for n in ("images", "raw", "logits", "converted")]
    np.save(paths[0], images)
    np.save(paths[1], raw)
    env = {**os.environ, "KERAS_BACKEND": "jax", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": REPO}
    result = subprocess.run(
        [sys.executable, "-c", JAX_CHECK, *map(str, paths)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_parity(np.load(paths[2]), fixture["logits"])
    expected = CrossViTImageConverter.from_preset(NAME)(raw)
    np.testing.assert_allclose(np.load(paths[3]), expected, atol=1e-4)  # JAX's resize against TensorFlow's
