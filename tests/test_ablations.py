"""The paper's ablations (Tables 6 and 7, no CLS token): exact parameter counts, the MAC count
against an independent count of the traced graph and against the paper, the new options'
round trip and forward pass."""

import json
import os

import keras
import numpy as np
import pytest
from helpers import REPO, assert_layer_roundtrip, random_inputs, tiny_model

import crossvit_keras
from crossvit_keras import ablations, configs
from crossvit_keras.layers import FUSIONS, CrossAttentionFusion

# crossvit_small_240 with each override, 1000 classes: model.count_params(), and the paper's count
# (without the 2 position embeddings). B: f and g are identities (3 stages x 4 x 148,224 fewer).
# no_cls: 2 CLS tokens and their 2 position entries fewer (2 x (192 + 384)); the paper gives no count.
PARAMS = {
    "A": (26_883_920, 26_657_552),
    "B": (31_633_232, 31_403_600),
    "C": (28_190_864, 28_038_224),
    "D": (29_078_480, 28_925_840),
    "E": (31_308_176, 31_155_536),
    "no_cls": (26_855_120, 26_703_056),
}


def test_every_ablation_is_pinned_and_in_the_paper_table():
    assert sorted(ablations.ABLATIONS) == sorted(PARAMS)
    assert set(ablations.ABLATIONS) <= set(ablations.PAPER_TABLE7)
    assert sorted(ablations.PAPER_TABLE6) == sorted(FUSIONS)


# Building a CrossViT-S takes ~4 s here: the new options (B, no_cls) run by default, the pure
# patch_sizes / depths overrides (A, C, D, E; their GMACs are checked below) with `-m slow`.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[] if n in ("B", "no_cls") else pytest.mark.slow) for n in PARAMS]
)
def test_parameter_count(name):
    params, paper_params = PARAMS[name]
    model = ablations.create_ablation(name)
    assert (model.count_params(), ablations.paper_params(model)) == (params, paper_params)
    paper_m = ablations.PAPER_TABLE7[name][0]
    if paper_m is not None:
        assert abs(paper_params / 1e6 - paper_m) <= ablations.PARAMS_TOLERANCE_M


def test_unknown_ablation():
    with pytest.raises(ValueError, match="Unknown ablation 'Z'; choose one of A, B, C, D, E, no_cls"):
        ablations.create_ablation("Z")


@pytest.mark.parametrize("name", ["A", "B", "C", "D", "E"])
def test_gmacs_match_table_7(name):
    gmacs = ablations.count_macs(configs.resolve_config(ablations.BASE, **ablations.ABLATIONS[name])) / 1e9
    assert abs(gmacs - ablations.PAPER_TABLE7[name][1]) <= ablations.GMACS_TOLERANCE


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_gmacs_match_table_6(fusion):
    gmacs = ablations.count_macs(configs.resolve_config(ablations.BASE, fusion=fusion)) / 1e9
    assert abs(gmacs - ablations.PAPER_TABLE6[fusion][1]) <= ablations.GMACS_TOLERANCE


# Tiny models (unequal widths and token counts): every fusion and option; L = 2 in one stage.
TRACED_CASES = [
    {"fusion": "none"},
    {"fusion": "class_token"},
    {"fusion": "pairwise"},
    {"fusion": "all_attention", "depths": ((1, 2, 2),)},
    {"depths": ((1, 2, 2), (2, 2, 1))},  # cross-attention
    {"cls_token": False},
    {"embed_dims": (32, 32), "identity_projections": True},
]


@pytest.mark.parametrize("overrides", TRACED_CASES, ids=str)
def test_analytic_macs_equal_the_traced_graph(overrides):
    overrides = {**configs.TEST_OVERRIDES, **overrides}
    model = crossvit_keras.create_model("crossvit_tiny_240", num_classes=5, **overrides)
    expected = ablations.count_macs(configs.resolve_config("crossvit_tiny_240", num_classes=5, **overrides))
    assert ablations.traced_macs(model) == expected


def test_identity_projections_only_between_equal_widths():
    equal = CrossAttentionFusion((16, 16), (2, 2), identity_projections=True)
    assert_layer_roundtrip(equal, [(2, 5, 16), (2, 3, 16)])
    assert not equal.projs[0].weights and not equal.revert_projs[1].weights
    unequal = CrossAttentionFusion((8, 16), (2, 2), identity_projections=True)
    unequal([np.zeros((1, 5, 8), "float32"), np.zeros((1, 3, 16), "float32")])
    assert unequal.projs[0].weights  # different widths: f and g stay learned


def test_without_cls_token_the_mean_patch_token_is_the_cls_token():
    layer = CrossAttentionFusion((8, 12), (2, 3), cls_token=False)
    x = random_inputs([(2, 16, 8), (2, 4, 12)])
    y = [keras.ops.convert_to_numpy(t) for t in assert_layer_roundtrip(layer, [(2, 16, 8), (2, 4, 12)])]
    for i in range(2):
        j = 1 - i
        query = layer.projs[i](x[i].mean(axis=1, keepdims=True))
        fused = layer.revert_projs[i](layer.fusion[i][0](keras.ops.concatenate([query, x[j]], axis=1)))
        np.testing.assert_allclose(y[i].mean(axis=1, keepdims=True), fused, atol=1e-5)  # g_i(y) is the new mean
        np.testing.assert_allclose(
            y[i] - x[i],
            np.broadcast_to(y[i].mean(1, keepdims=True) - x[i].mean(1, keepdims=True), x[i].shape),
            atol=1e-5,
        )


def test_options_need_the_cross_attention():
    with pytest.raises(ValueError, match="need fusion='cross_attention'"):
        tiny_model(fusion="pairwise", cls_token=False)


@pytest.mark.parametrize("overrides", [{"cls_token": False}, {"embed_dims": (32, 32), "identity_projections": True}])
def test_keras_file_roundtrip_forward_and_gradients(tmp_path, overrides):
    import tensorflow as tf

    model = tiny_model(**overrides)
    images = random_inputs((2, 48, 48, 3))
    expected = keras.ops.convert_to_numpy(model(images))
    assert expected.shape == (2, 5) and np.isfinite(expected).all()
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(np.arange(2), model(images, training=True), True)
    grads = tape.gradient(loss, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads, strict=True):
        assert grad is not None and np.all(np.isfinite(grad)), weight.path
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert {k: loaded.get_config()[k] for k in overrides} == overrides
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, atol=1e-5)
    small, large = crossvit_keras.branch_logits(loaded)(images)
    np.testing.assert_allclose((small + large) / 2, expected, atol=1e-5)


def test_no_cls_model_under_mixed_precision_and_visualize_refuses_it():
    from crossvit_keras import visualize

    model = tiny_model(cls_token=False, dtype="mixed_bfloat16")
    logits = keras.ops.convert_to_numpy(model(random_inputs((2, 48, 48, 3))))
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    with pytest.raises(ValueError, match="has no CLS tokens"):
        visualize.feature_model(model)


def test_default_model_is_unchanged():
    config = tiny_model().get_config()
    assert config["cls_token"] is True and config["identity_projections"] is False
    fusion = tiny_model().get_layer("stage_0").fusion
    assert type(fusion) is CrossAttentionFusion and all(type(p).__name__ == "Projection" for p in fusion.projs)


# ----------------------------------------------------------------------------- recipes/fusion_ablation.py

TINY = {
    "embed_dims": [16, 32],
    "depths": [[1, 1, 1]],
    "num_heads": [2, 2],
    "mlp_ratios": [2, 2],
}
TINY_RECIPE = ["--model-overrides", json.dumps(TINY)]


def _fusion_ablation():
    import importlib
    import sys

    sys.path.insert(0, os.path.join(REPO, "recipes"))
    try:
        return importlib.import_module("fusion_ablation")
    finally:
        sys.path.remove(os.path.join(REPO, "recipes"))


def test_fusion_ablation_recipe_writes_table_6(tmp_path, capsys):
    """One fusion (each costs a training run: ~30 s on the shared 2-core machine), one step on a tiny
    model; then --eval's JSON of it."""
    from crossvit_keras import data
    from crossvit_keras.cli import train as recipe

    images = data.make_sample_folder(str(tmp_path / "images"), num_images=16, size=(64, 48), classes=3)
    out = tmp_path / "out"
    argv = ["--output-dir", str(out), "--fusions", "class_token", "--epochs", "1", "--batch-size", "16"]
    assert _fusion_ablation().main([*argv, "--data-path", images, *TINY_RECIPE]) == 0
    stdout = capsys.readouterr().out
    assert "[1/1] fusion=class_token: training 1 epoch(s)" in stdout and "[1/1] fusion=class_token: top-1" in stdout
    summary = json.loads((out / "fusion_ablation.json").read_text())
    assert list(summary["fusions"]) == ["class_token"] and summary["epochs"] == 1
    for fusion, row in summary["fusions"].items():
        model = keras.models.load_model(out / fusion / "model.keras", compile=False)
        assert row["params"] == model.count_params() and model.fusion == fusion
        assert row["gmacs"] == ablations.count_macs(model.get_config()) / 1e9
        for key in ("top1", "top1_small_branch", "top1_large_branch"):
            assert 0 <= row[key] <= 1
        assert not (out / fusion / "saved_model").exists()  # --no-saved-model
    table = (out / "fusion_ablation.md").read_text()
    assert "| class_token |" in table and "small branch alone" in table
    assert not [p for p in out.rglob(".partial-*")]
    # Issue 11 part 2's names, in results.json and in --eval's JSON (beside the val_* ones).
    names = {"top1", "top5", "top1_small_branch", "top1_large_branch"}
    assert names <= set(json.loads((out / "class_token" / "results.json").read_text()))
    model_path = str(out / "class_token" / "model.keras")
    evaluation = ["--eval", "--resume", model_path, "--data-path", images, "--output_dir", str(out / "eval")]
    assert recipe.main([*evaluation, "--batch-size", "16", "--verbose", "0"]) == 0
    result = json.loads((out / "eval" / "eval.json").read_text())
    assert names <= set(result) and result["top1"] == result["val_top1"]


def test_fusion_ablation_bad_fusion_is_one_line(tmp_path, capsys):
    assert _fusion_ablation().main(["--output-dir", str(tmp_path), "--fusions", "none,concat"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        "error: --fusions 'none,concat': choose from none, all_attention, class_token, pairwise, "
        "cross_attention (comma-separated)"
    ]
    assert not list(tmp_path.iterdir())
