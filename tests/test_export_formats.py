"""ONNX, OpenVINO and LiteRT exports: the logits of a converted checkpoint (the "reduced" parity
fixture's timm weights) on real photographs equal Keras', at batch 1 and 3; LiteRT runs with builtin
ops only; the quantized variants run; the command line writes only complete files and names the
install command of a missing package."""

import importlib.util
import os

import numpy as np
import pytest
import skimage.data
from test_convert import assert_parity, golden, keras_model_for, save_safetensors

from crossvit_keras import export, export_formats
from crossvit_keras.atomic import save_model
from crossvit_keras.convert import load_weights
from crossvit_keras.preprocessing import eval_transform


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The reduced fixture's model with its timm weights, and three photographs preprocessed for it."""
    fixture, state_dict, _ = golden("reduced")
    model = keras_model_for(fixture)
    assert load_weights(model, save_safetensors(state_dict, tmp_path_factory.mktemp("w") / "w.safetensors")) == []
    photos = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee()]
    images = np.stack([eval_transform(photo, model.image_size).numpy() for photo in photos])
    return model, images, model.predict(images, verbose=0)


@pytest.mark.parametrize("fmt", export_formats.FORMATS)
def test_float32_exports_equal_keras_on_photographs_at_any_batch_size(fmt, converted, tmp_path):
    model, images, expected = converted
    path = export_formats.export_format(model, tmp_path / f"m{export_formats.SUFFIXES[fmt]}", fmt)
    run = export_formats.load_runtime(path)
    assert_parity(run(images), expected)
    assert_parity(run(images[:1]), expected[:1])
    if fmt == "litert":
        ops = export_formats.litert_op_names(path)
        assert "GELU" in ops and not [op for op in ops if op.startswith("Flex")], ops
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary left


@pytest.mark.parametrize(
    "fmt,quantize", [("onnx", "int8"), ("openvino", "float16"), ("litert", "float16"), ("litert", "int8")]
)
def test_quantized_exports_run(fmt, quantize, converted, tmp_path):
    model, images, expected = converted
    path = export_formats.export_format(model, tmp_path / f"m{export_formats.SUFFIXES[fmt]}", fmt, quantize)
    logits = export_formats.load_runtime(path)(images)
    assert logits.shape == expected.shape and np.isfinite(logits).all()
    # float16 weights stay close; int8 of these random tiny weights only roughly
    tolerance = 0.05 if quantize == "float16" else 0.5
    assert np.abs(logits - expected).max() <= tolerance * np.abs(expected).max()


def test_command_line_exports_and_refuses_bad_options(converted, tmp_path, capsys):
    model, images, expected = converted
    save_model(model, tmp_path / "m.keras")
    output = tmp_path / "out" / "m.tflite"
    assert export.main(["--model", str(tmp_path / "m.keras"), "--format", "litert", "--output", str(output)]) == 0
    assert_parity(export_formats.load_runtime(output)(images), expected)
    for args, message in [
        (["--format", "litert", "--output", str(output)], "exists"),
        (["--format", "onnx", "--output", str(tmp_path / "m.tflite")], "must be a .onnx file"),
        (["--format", "onnx", "--quantize", "float16", "--output", str(tmp_path / "m.onnx")], "not available"),
        (["--quantize", "int8", "--output", str(tmp_path / "saved")], "not saved_model"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            export.main(["--model", str(tmp_path / "m.keras"), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["m.keras", "out"] and os.listdir(output.parent) == ["m.tflite"]


def test_a_missing_package_names_the_install_command(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--model", "m.keras", "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err == "error: the onnx format needs onnxruntime: pip install -r requirements-deploy.txt\n"
    )
    assert os.listdir(tmp_path) == []
