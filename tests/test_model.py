"""The CrossViT family: exact parameter counts, shapes, saving, gradients, precision, bad input."""

import os

import keras
import numpy as np
import pytest
from helpers import REPO, random_inputs, run_python, tiny_model

import crossvit_keras
from crossvit_keras import configs
from crossvit_keras.model import drop_path_schedule

# timm 1.0.31, sum(p.numel()) with 1000 classes (tests/fixtures/timm_reference.json).
TIMM_PARAMS = {
    "crossvit_tiny_240": 7_014_800,
    "crossvit_small_240": 26_856_272,
    "crossvit_base_240": 105_025_232,
    "crossvit_9_240": 8_553_296,
    "crossvit_15_240": 27_528_464,
    "crossvit_18_240": 43_271_408,
    "crossvit_9_dagger_240": 8_776_592,
    "crossvit_15_dagger_240": 28_209_008,
    "crossvit_18_dagger_240": 44_266_976,
    "crossvit_15_dagger_408": 28_500_080,
    "crossvit_18_dagger_408": 44_606_560,
}


def test_list_models_is_the_eleven_timm_variants():
    assert crossvit_keras.list_models() == list(TIMM_PARAMS)


@pytest.mark.parametrize("name", list(TIMM_PARAMS))
def test_variant_parameter_count_and_output_shape(name):
    model = crossvit_keras.create_model(name)
    assert model.count_params() == TIMM_PARAMS[name]
    size = 408 if name.endswith("_408") else 240
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 1000)
    assert model.name == name
    # Weights are all trainable: no hidden state travels with a checkpoint.
    assert len(model.trainable_weights) == len(model.weights)


@pytest.mark.parametrize(
    "alias, name",
    [
        ("crossvit_15", "crossvit_15_240"),
        ("crossvit_15_224", "crossvit_15_240"),
        ("crossvit_tiny", "crossvit_tiny_240"),
        ("crossvit_9_dagger", "crossvit_9_dagger_240"),
        ("crossvit_15_dagger", "crossvit_15_dagger_240"),
        ("crossvit_15_dagger_384", "crossvit_15_dagger_408"),
        ("crossvit_18_dagger_384", "crossvit_18_dagger_408"),
    ],
)
def test_aliases_are_the_same_architecture(alias, name):
    assert configs.canonical_name(alias) == name
    assert configs.resolve_config(alias) == configs.resolve_config(name)


def test_alias_builds_with_the_exact_parameter_count():
    assert crossvit_keras.create_model("crossvit_9").count_params() == TIMM_PARAMS["crossvit_9_240"]


def test_every_variant_and_alias_is_covered():
    assert set(configs.ALIASES.values()) == set(TIMM_PARAMS)
    assert len(configs.ALIASES) == 9 + 9 + 2  # short names, official *_224, official *_384


def test_features_without_head():
    model = crossvit_keras.create_model("crossvit_9_240", num_classes=0)
    assert model.output_shape == (None, 128 + 256)
    assert model.count_params() == TIMM_PARAMS["crossvit_9_240"] - (128 + 256 + 2) * 1000


def test_image_size_override_follows_the_variant_ratio():
    assert configs.resolve_config("crossvit_15_240", image_size=408)["image_sizes"] == (408, 384)
    assert configs.resolve_config("crossvit_15_dagger_408", image_size=240)["image_sizes"] == (240, 224)
    model = crossvit_keras.create_model("crossvit_9_240", image_size=192, num_classes=10)
    assert model.input_shape == (None, 192, 192, 3)
    assert model.image_sizes == (192, 176)
    assert model.get_layer("embed_1").num_patches == 11 * 11


def test_drop_path_schedule_is_timms():
    # timm: linspace(0, rate, sum(M)) split into stages of max(N, M) blocks; fusion takes the last.
    schedule = drop_path_schedule(((1, 5, 1),) * 3, 0.1)
    expected = np.linspace(0, 0.1, 15).reshape(3, 5)
    np.testing.assert_allclose(np.array(schedule), expected)
    model = tiny_model(drop_path_rate=0.3)
    stage = model.get_layer("stage_1")
    assert stage.blocks[1][1].drop_path.rate == pytest.approx(0.3)
    assert stage.fusion.fusion[0][0].drop_path.rate == pytest.approx(0.3)


def test_drop_path_schedule_with_more_small_than_large_blocks():
    """A stage with N > M (an ablation timm's schedule cannot build) gets max(N, M) + L' rates."""
    schedule = drop_path_schedule(((1, 2, 2), (2, 1, 1)), 0.5)
    assert [len(stage) for stage in schedule] == [4, 2]
    np.testing.assert_allclose(schedule[0] + schedule[1], np.linspace(0, 0.5, 6))
    model = tiny_model(depths=((1, 2, 2), (2, 1, 1)), drop_path_rate=0.5)
    assert model(random_inputs((1, 48, 48, 3))).shape == (1, model.num_classes)


def test_tiny_forward_is_deterministic_at_inference():
    model = tiny_model()
    x = random_inputs((3, 48, 48, 3))
    logits = model.predict(x, verbose=0)
    assert logits.shape == (3, 5) and logits.dtype == np.float32
    np.testing.assert_allclose(model(x, training=False), logits, atol=1e-5)


def test_every_trainable_weight_gets_a_finite_gradient():
    import tensorflow as tf

    model = tiny_model(drop_path_rate=0.1)
    x = random_inputs((4, 48, 48, 3))
    labels = np.array([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    grads = tape.gradient(loss, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads, strict=True):
        assert grad is not None, weight.path
        grad = keras.ops.convert_to_numpy(grad)
        assert np.all(np.isfinite(grad)), weight.path
        assert np.any(grad != 0), weight.path


def test_keras_file_roundtrip_in_a_fresh_process(tmp_path):
    model = tiny_model(drop_path_rate=0.1)
    x = random_inputs((2, 48, 48, 3))
    path = tmp_path / "tiny.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, keras, numpy as np, crossvit_keras\n"
        "model = keras.models.load_model(sys.argv[1])\n"  # safe_mode on, no custom_objects
        "assert type(model).__name__ == 'CrossViT', type(model)\n"
        "np.save(sys.argv[2], model.predict(np.load(sys.argv[3]), verbose=0))\n"
        "print(model.get_config()['depths'])\n"
    )
    out = run_python(code, path, tmp_path / "y.npy", tmp_path / "x.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model.predict(x, verbose=0))
    assert "(1, 2, 1)" in out or "[1, 2, 1]" in out


def test_import_turns_on_onednn_unless_the_environment_says_otherwise():
    code = (
        "import os, sys\n"
        "os.environ.pop('TF_ENABLE_ONEDNN_OPTS', None)\n"
        "if sys.argv[1] != 'unset':\n"
        "    os.environ['TF_ENABLE_ONEDNN_OPTS'] = sys.argv[1]\n"
        "import crossvit_keras\n"
        "from tensorflow.python.util import _pywrap_util_port\n"
        "print('oneDNN', _pywrap_util_port.IsMklEnabled())\n"
    )
    assert "oneDNN True" in run_python(code, "unset")
    assert "oneDNN False" in run_python(code, "0")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_runs_with_float32_logits(policy):
    model = tiny_model(dtype=policy)
    x = random_inputs((2, 48, 48, 3))
    logits = model(x)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(logits))
    compute = "bfloat16" if policy == "mixed_bfloat16" else "float16"
    assert model.get_layer("stage_0").compute_dtype == compute
    assert model.get_layer("stage_0").variable_dtype == "float32"
    float32 = tiny_model()
    float32.set_weights(model.get_weights())
    np.testing.assert_allclose(logits, float32(x), atol=0.1)
    # The policy survives a config round trip.
    clone = crossvit_keras.CrossViT.from_config(model.get_config())
    assert clone.get_layer("stage_0").compute_dtype == compute


def test_global_mixed_precision_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_model()
        assert model.get_layer("stage_0").compute_dtype == "bfloat16"
        assert keras.backend.standardize_dtype(model(random_inputs((1, 48, 48, 3))).dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_resize_equals_pytorch_bicubic():
    """Fixture made with torch.nn.functional.interpolate(bicubic, align_corners=False) by
    tools/make_fixtures.py."""
    fixture = np.load(os.path.join(REPO, "tests", "fixtures", "bicubic_resize.npz"))
    cases = sorted(k[3:] for k in fixture.files if k.startswith("in_"))
    assert cases
    for case in cases:
        x, expected = fixture[f"in_{case}"], fixture[f"out_{case}"]
        layer = crossvit_keras.layers.BicubicResize(expected.shape[1:3])
        np.testing.assert_allclose(layer(x), expected, atol=1e-5 * np.abs(expected).max())


def test_resize_is_not_tensorflows_bicubic():
    """Guards the reason the resize exists: tf.image.resize (a = -0.5) differs from PyTorch's."""
    import tensorflow as tf

    x = random_inputs((1, 240, 240, 3))
    ours = crossvit_keras.layers.BicubicResize((224, 224))(x)
    theirs = tf.image.resize(x, (224, 224), method="bicubic")
    assert np.abs(ours - theirs).max() > 1e-2


BAD_INPUTS = [
    (np.zeros((48, 48, 3), "float32"), "rank|expected shape"),
    (np.zeros((1, 48, 48, 4), "float32"), "channels|expected shape"),
    (np.zeros((1, 48, 48, 3), "uint8"), "float images"),
    (np.zeros((1, 32, 32, 3), "float32"), "expected shape|expects images"),
]


@pytest.mark.parametrize("images, message", BAD_INPUTS)
def test_bad_batches_raise_a_clear_value_error(images, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(images)


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("crossvit_16_240", {}, "Valid names: crossvit_tiny_240"),
        ("crossvit_15_240", {"num_heads": (5, 5)}, "must divide"),
        ("crossvit_15_240", {"image_size": 10}, "positive multiple of its patch size"),
        ("crossvit_15_240", {"image_size": 250}, "multiple of its patch size"),
        ("crossvit_15_240", {"depths": ((1, 2),)}, "triples"),
        ("crossvit_15_240", {"embed_dims": (192,)}, "one value per branch"),
        ("crossvit_15_240", {"fusion": "concat"}, "Unknown fusion"),
        ("crossvit_15_240", {"widths": 3}, "Unknown override"),
    ],
)
def test_impossible_models_fail_at_construction(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        crossvit_keras.create_model(name, **overrides)


def test_architecture_defaults_are_crossvits():
    import inspect

    from crossvit_keras import configs
    from crossvit_keras.model import CrossViT

    parameters = inspect.signature(CrossViT.__init__).parameters
    assert {k: parameters[k].default for k in configs.ARCHITECTURE_DEFAULTS} == configs.ARCHITECTURE_DEFAULTS
    assert set(configs.ARCHITECTURE) <= set(parameters)


def test_importing_the_package_registers_the_recipes_schedule():
    """A trained model.keras holds the recipe's optimizer and its WarmupCosine schedule:
    keras.models.load_model must find both after `import crossvit_keras` alone (a fresh process)."""
    run_python(
        "import crossvit_keras, keras; get = keras.saving.get_registered_object; "
        "assert get('crossvit_keras>WarmupCosine') and get('crossvit_keras>AdamW')"
    )
