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

from crossvit_keras.atomic import save_model
from crossvit_keras.cli import export as export_cli
from crossvit_keras.data.preprocessing import eval_transform
from crossvit_keras.export import formats as export_formats
from crossvit_keras.weights.convert import load_weights


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The reduced fixture's model with its timm weights saved as a .keras file, three photographs
    preprocessed for it and its logits for them."""
    fixture, state_dict, _ = golden("reduced")
    model = keras_model_for(fixture)
    directory = tmp_path_factory.mktemp("model")
    assert load_weights(model, save_safetensors(state_dict, directory / "w.safetensors")) == []
    save_model(model, directory / "m.keras")
    photos = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee()]
    images = np.stack([eval_transform(photo, model.image_size).numpy() for photo in photos])
    return model, str(directory / "m.keras"), images, model.predict(images, verbose=0)


def run_export(keras_file, fmt, output, *options):
    assert export_cli.main(["--model", keras_file, "--format", fmt, "--output", str(output), *options]) == 0
    assert not [f for f in os.listdir(output.parent) if f.startswith(".")]  # no temporary left
    return export_formats.load_runtime(output)


@pytest.mark.parametrize("fmt", export_formats.FORMATS)
def test_float32_exports_equal_keras_on_photographs_at_any_batch_size(fmt, converted, tmp_path):
    _, keras_file, images, expected = converted
    output = tmp_path / "out" / f"m{export_formats.SUFFIXES[fmt]}"
    run = run_export(keras_file, fmt, output)
    assert_parity(run(images), expected)
    assert_parity(run(images[:1]), expected[:1])
    if fmt == "litert":
        ops = export_formats.litert_op_names(output)
        assert "GELU" in ops and not [op for op in ops if op.startswith("Flex")], ops
    if fmt == "openvino":
        assert sorted(os.listdir(output.parent)) == ["m.bin", "m.xml"]


@pytest.mark.parametrize(
    "fmt,quantize",
    [
        pytest.param("onnx", "int8", marks=pytest.mark.slow),
        pytest.param("openvino", "float16", marks=pytest.mark.slow),
        pytest.param("litert", "float16", marks=pytest.mark.slow),
        ("litert", "int8"),
    ],
)
def test_quantized_exports_run(fmt, quantize, converted, tmp_path):
    _, keras_file, images, expected = converted
    logits = run_export(keras_file, fmt, tmp_path / f"m{export_formats.SUFFIXES[fmt]}", "--quantize", quantize)(images)
    assert logits.shape == expected.shape and np.isfinite(logits).all()
    # float16 weights stay close; int8 of these random tiny weights only roughly
    tolerance = 0.05 if quantize == "float16" else 0.5
    assert np.abs(logits - expected).max() <= tolerance * np.abs(expected).max()


def test_bad_options_are_one_line_errors_and_write_nothing(converted, tmp_path, capsys):
    _, keras_file, _, _ = converted
    (tmp_path / "taken.onnx").write_bytes(b"")
    for args, message in [
        (["--format", "onnx", "--output", str(tmp_path / "taken.onnx")], "exists"),
        (["--format", "onnx", "--output", str(tmp_path / "m.tflite")], "must be a .onnx file"),
        (["--format", "onnx", "--quantize", "float16", "--output", str(tmp_path / "m.onnx")], "not available"),
        (["--quantize", "int8", "--output", str(tmp_path / "saved")], "not saved_model"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            export_cli.main(["--model", keras_file, *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == ["taken.onnx"]


def test_a_missing_package_names_the_install_command(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model", "m.keras", "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err == "error: the onnx format needs onnxruntime: pip install -r requirements-deploy.txt\n"
    )
    assert os.listdir(tmp_path) == []
