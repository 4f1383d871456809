"""The paper's experiments as code: each branch's logits and accuracy on its own."""

import json
import os

import keras
import numpy as np
import pytest
from helpers import random_inputs, tiny_model
from test_bench import benchmark
from test_training import TINY, make_folder

import crossvit_keras
from crossvit_keras.cli import train as recipe


def test_branch_logits_share_the_weights_and_their_mean_is_the_models_output():
    model = tiny_model(num_classes=4)
    branches = crossvit_keras.branch_logits(model)
    images = random_inputs((3, 48, 48, 3))
    small, large = (keras.ops.convert_to_numpy(x) for x in branches(images))
    assert small.shape == large.shape == (3, 4) and not np.allclose(small, large)
    np.testing.assert_allclose((small + large) / 2, keras.ops.convert_to_numpy(model(images)), atol=1e-6)
    assert {id(w) for w in branches.weights} == {id(w) for w in model.weights}  # views, not copies
    head = model.get_layer("head").heads[0]
    head.kernel.assign(head.kernel * 2)  # the branch model follows the model's weights
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(branches(images)[0]), 2 * small - head.bias.numpy(), atol=1e-5
    )
    with pytest.raises(ValueError, match="num_classes=0"):
        crossvit_keras.branch_logits(tiny_model(num_classes=0))


def test_branch_logits_under_mixed_precision_are_float32():
    model = tiny_model(num_classes=4, dtype="mixed_bfloat16")
    small, large = crossvit_keras.branch_logits(model)(random_inputs((2, 48, 48, 3)))
    assert small.dtype == large.dtype == "float32"


def test_evaluation_reports_each_branch_and_writes_it_to_every_json(tmp_path, capsys):
    images = make_folder(tmp_path / "images", images=8)
    out = tmp_path / "run"
    common = ["--data-path", images, "--output_dir", str(out), *TINY, "--batch-size", "4", "--verbose", "0"]
    train = ["--epochs", "2", "--warmup-epochs", "0", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0"]
    assert recipe.main(common + train) == 0
    keys = ("val_top1", "val_top5", "val_top1_small_branch", "val_top1_large_branch")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    for record in (*records, results):
        assert all(0 <= record[k] <= 1 for k in keys), record
    assert results["val_top1_small_branch"] == records[-1]["val_top1_small_branch"]
    assert recipe.main(common + ["--eval"]) == 0
    evaluation = json.loads((out / "eval.json").read_text())
    assert all(0 <= evaluation[k] <= 1 for k in keys) and evaluation["val_top1"] == pytest.approx(results["val_top1"])
    assert evaluation["val_top1_large_branch"] == pytest.approx(results["val_top1_large_branch"])
    assert "one branch alone: small" in capsys.readouterr().out
    assert os.path.exists(out / "model.keras")


# ----------------------------------------------------------------------------- benchmarks/fusion_scaling.py


def test_growth_exponent_is_the_log_log_slope():
    growth_exponent = benchmark("fusion_scaling").growth_exponent

    assert growth_exponent([100, 200, 400], [3.0, 12.0, 48.0]) == pytest.approx(2.0)
    assert growth_exponent([100, 1000], [5.0, 50.0]) == pytest.approx(1.0)


def test_fusion_scaling_command_runs_on_small_images(tmp_path, capsys):
    fusion_scaling = benchmark("fusion_scaling")

    out = tmp_path / "scaling"
    argv = ["--scaling-fusions", "cross_attention", "--scaling-sizes", "48,96"]
    assert fusion_scaling.main([*argv, "--scaling-repeats", "1", "--scaling-output", str(out)]) == 0
    results = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["tokens"] for r in results["results"]] == [[17, 10], [65, 37]]
    for r in results["results"]:
        assert r["forward_s"] > 0 and r["train_step_s"] > 0 and r["train_step_mib"] > 0, r
    assert "cross_attention" in results["exponents"] and (tmp_path / "scaling.png").stat().st_size > 0
    assert "| cross_attention | 96 | 65 + 37 |" in (tmp_path / "scaling.md").read_text()
    assert fusion_scaling.main(["--scaling-fusions", "no_such_fusion"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown fusion(s) ['no_such_fusion']")


def test_the_recipe_compiles_with_the_xla_split():
    """Under MirroredStrategy with XLA the recipe trains and evaluates through models compiled by
    training.compile_model and evaluation.compile_evaluation_model: both get the per-replica split."""
    from crossvit_keras.training import compile_model, evaluation

    model = compile_model(tiny_model(), "adam", 5)
    evaluator = evaluation.compile_evaluation_model(evaluation.evaluation_model(tiny_model()), 5)
    for compiled in (model, evaluator):
        assert compiled._split_xla_steps and compiled.make_train_function.__name__ == "<lambda>"
