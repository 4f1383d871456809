"""The SavedModel export for TF Serving: same predictions as the Keras model on real images, both
signatures, TensorFlow alone (no keras, no crossvit_keras) and saved_model_cli (TF Serving's
SignatureDef path), bad input failing in the graph with a clear message, atomic writes.

The exported model is a converted checkpoint: the reduced timm fixture's state dict (the one
tests/test_convert.py checks against timm's logits), written as safetensors and loaded by the
converter."""

import json
import os
import resource
import stat
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO, tiny_model
from skimage import data

import crossvit_keras
from crossvit_keras.cli import export as export_cli
from crossvit_keras.data.preprocessing import eval_transform
from crossvit_keras.export import saved_model as export
from crossvit_keras.export.saved_model import export_saved_model
from crossvit_keras.weights.convert import config_from_timm, load_weights

sys.path.insert(0, os.path.join(REPO, "tools"))
from fixture_weights import random_state_dict, shapes_from_json  # noqa: E402
from serving_load_test import encode, png_bomb  # noqa: E402
from serving_load_test import run as load_test  # noqa: E402

CLASS_NAMES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
OUTPUTS = {"probabilities", "top_k_indices", "top_k_probabilities", "top_k_names"}


def real_images():
    """skimage's sample photographs, uint8 RGB of different sizes and aspect ratios."""
    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}


def keras_probabilities(model, image):
    """softmax(model(eval_transform(image))) for one uint8 [H, W, 3] image."""
    logits = model(eval_transform(image[None].astype("float32"), model.image_size), training=False)
    return tf.nn.softmax(tf.cast(logits, tf.float32)).numpy()[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from safetensors.numpy import save_file

    fixture = np.load(os.path.join(REPO, "tests", "fixtures", "parity_reduced.npz"))
    state_dict = random_state_dict(shapes_from_json(fixture["state_dict_shapes_json"]), int(fixture["seed"]))
    checkpoint = str(tmp_path_factory.mktemp("checkpoint") / "reduced.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, checkpoint)
    model = crossvit_keras.CrossViT(**config_from_timm(**json.loads(str(fixture["kwargs_json"]))))
    load_weights(model, checkpoint)
    logits = model(fixture["images"]).numpy()  # the converted model is timm's (test_convert's bar)
    assert np.abs(logits - fixture["logits"]).max() <= 1e-4 * np.abs(fixture["logits"]).max()
    return model


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):
    path = tmp_path_factory.mktemp("serving") / "models" / "reduced" / "1"
    assert export_saved_model(converted, path, CLASS_NAMES) == str(path)
    return str(path)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def png(image):
    return tf.io.encode_png(image).numpy()


def test_signatures_inputs_and_outputs(exported, loaded):
    assert os.listdir(os.path.dirname(exported)) == ["1"]  # no temporary directory left beside it
    signatures = loaded.signatures
    assert set(signatures) == {"serving_default", "serving_bytes"}
    images = signatures["serving_default"].structured_input_signature[1]
    assert list(images) == ["images"] and images["images"].dtype == tf.float32
    image_bytes = signatures["serving_bytes"].structured_input_signature[1]
    assert list(image_bytes) == ["image_bytes"] and image_bytes["image_bytes"].dtype == tf.string
    for signature in signatures.values():
        outputs = signature.structured_outputs
        assert set(outputs) == OUTPUTS
        assert outputs["probabilities"].dtype == tf.float32
        assert outputs["probabilities"].shape.as_list() == [None, len(CLASS_NAMES)]
        assert outputs["top_k_indices"].shape.as_list() == [None, 5]


def test_same_predictions_as_the_keras_model_on_real_images(converted, loaded):
    serve = loaded.signatures["serving_default"]
    serve_bytes = loaded.signatures["serving_bytes"]
    images = real_images()
    expected = {name: keras_probabilities(converted, image) for name, image in images.items()}
    # The images differ enough for the comparison to mean something.
    assert len({int(p.argmax()) for p in expected.values()}) > 1
    for name, image in images.items():
        out = serve(images=tf.constant(image[None], tf.float32))
        np.testing.assert_allclose(out["probabilities"].numpy()[0], expected[name], atol=1e-5)
        order = np.argsort(-expected[name])[:5]
        np.testing.assert_array_equal(out["top_k_indices"].numpy()[0], order)
        np.testing.assert_allclose(out["top_k_probabilities"].numpy()[0], expected[name][order], atol=1e-5)
        assert [n.decode() for n in out["top_k_names"].numpy()[0]] == [CLASS_NAMES[i] for i in order]
    # Encoded images of different sizes in one batch; PNG is lossless, so the same pixels.
    out = serve_bytes(image_bytes=tf.constant([png(image) for image in images.values()]))
    np.testing.assert_allclose(out["probabilities"].numpy(), np.stack(list(expected.values())), atol=1e-5)
    # A JPEG is decoded as tf.io.decode_jpeg does; a grayscale PNG becomes RGB.
    jpeg = tf.io.encode_jpeg(images["chelsea"], quality=90).numpy()
    gray = data.camera()
    out = serve_bytes(image_bytes=tf.constant([jpeg, png(gray[..., None])]))
    np.testing.assert_allclose(
        out["probabilities"].numpy(),
        [
            keras_probabilities(converted, tf.io.decode_jpeg(jpeg).numpy()),
            keras_probabilities(converted, np.repeat(gray[..., None], 3, axis=-1)),
        ],
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "shape, message",
    [
        ((300, 400, 3), r"must be a batch of RGB images, rank 4 \[batch, height, width, 3\]; got shape \[300 400 3\]"),
        ((1, 30, 40, 4), r"must have 3 channels \(RGB\) in the last axis; got shape \[1 30 40 4\]"),
        ((2, 0, 40, 3), r"must be at least 1 x 1 pixels"),
    ],
)
def test_bad_images_fail_in_the_graph_naming_the_problem(loaded, shape, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](images=tf.zeros(shape))


def test_bytes_that_are_not_an_image_fail_naming_the_element(loaded):
    serve_bytes = loaded.signatures["serving_bytes"]
    good = png(data.chelsea())
    for batch, index in (([good, b"hello, world"], 1), ([b""], 0)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"image_bytes\[{index}\] is not an encoded JPEG"):
            serve_bytes(image_bytes=tf.constant(batch))
    with pytest.raises(tf.errors.InvalidArgumentError, match="PNG"):  # an image's magic, then garbage
        serve_bytes(image_bytes=tf.constant([good[:40]]))


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(loaded):
    serve_bytes = loaded.signatures["serving_bytes"]
    good, bomb = png(data.chelsea()), png_bomb(20000, 20000)  # 49 kB; 1.2 GB decoded as RGB
    serve_bytes(image_bytes=tf.constant([good]))  # warm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    message = r"image_bytes\[1\] is a PNG image of 20000 x 20000 pixels, more than the 40000000 this model takes"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve_bytes(image_bytes=tf.constant([good, bomb]))
    assert time.perf_counter() - start < 5  # decoding it took 11.6 s
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024 < 100  # MiB; decoding: > 1200


def test_non_finite_pixels_are_refused(loaded):
    images = np.full((3, 20, 30, 3), 128.0, "float32")
    for value in (np.nan, np.inf, -np.inf):
        images[2, 4, 5, 1] = value
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"images\[2\] has NaN or infinite values"):
            loaded.signatures["serving_default"](images=tf.constant(images))


def test_messages_quote_bytes_in_hex_so_that_clients_can_read_them(loaded, exported, tmp_path):
    junk = b"\x80\xff\xfe\x00 not UTF-8 \xc3\x28"
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([png(data.chelsea()), junk]))
    assert "image_bytes[1] is not an encoded JPEG, PNG, GIF, BMP or WebP image (17 bytes, starting " in str(error.value)
    assert "80 ff fe 00 20 6e 6f 74 20 55 54 46 2d 38 20 c3 in hex)" in error.value.message
    # TF Serving's REST API puts the message in JSON; saved_model_cli (TensorFlow's Python client)
    # raised UnicodeDecodeError formatting the raw bytes.
    np.save(tmp_path / "junk.npy", np.array([junk]))
    run = ["run", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_bytes"]
    result = run_isolated(SAVED_MODEL_CLI, *run, "--inputs", "image_bytes=junk.npy", cwd=tmp_path)
    assert result.returncode != 0 and "UnicodeDecodeError" not in result.stderr
    assert "image_bytes[0] is not an encoded JPEG" in result.stderr and "starting 80 ff fe 00" in result.stderr


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP"])
def test_a_truncated_image_names_its_index(loaded, fmt):
    encoded = encode(data.chelsea(), fmt)
    batch = [png(data.coffee()), png(data.coffee()), encoded[: len(encoded) * 3 // 4]]
    name = "WebP" if fmt == "WEBP" else fmt
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"image_bytes\[2\] is a truncated {name} image"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant(batch))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[0\] is a JPEG image whose header"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([encode(data.chelsea(), "JPEG")[:300]]))


def test_load_of_good_and_bad_requests_from_several_threads(exported):
    """A small bounded run of tools/serving_load_test.py (the README's numbers come from a longer one)."""
    stats = load_test(exported, threads=3, requests=40, seconds=60, log=lambda line: None)
    assert stats["wrong"] == [] and stats["requests"] == 40 and stats["good"] > 0 and stats["bad"] > 0
    assert stats["rss_growth_second_half_mib"] < 200


# Runs in `python -I` (no PYTHONPATH, no user site, no current directory on the path) with keras,
# tf_keras and crossvit_keras made unimportable (the package itself is installed where the tests
# run: `pip install -e .`), so that any import of them fails.
BLOCK_KERAS = """
import importlib, sys
for name in ("keras", "tf_keras", "crossvit_keras"):
    sys.modules[name] = None
try:
    importlib.import_module("crossvit_keras")
except ImportError:
    pass
else:
    raise AssertionError("crossvit_keras is importable")
"""


def run_isolated(code, *args, cwd, env=None):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, **(env or {})}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.run(
        [sys.executable, "-I", "-c", BLOCK_KERAS + code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


# TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1, the README's setting for a serving process, lets oneDNN keep
# its reordered weights between calls; the probabilities must not change.
@pytest.mark.parametrize("serving_env", [{}, {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}], ids=["default", "frozen"])
def test_loads_and_runs_with_tensorflow_alone(converted, exported, tmp_path, serving_env):
    images = real_images()
    np.save(tmp_path / "chelsea.npy", images["chelsea"][None].astype("float32"))
    (tmp_path / "coffee.png").write_bytes(png(images["coffee"]))
    code = """
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
for _ in range(2):  # the second call runs on the weights oneDNN kept from the first
    out = model.signatures["serving_default"](images=tf.constant(np.load("chelsea.npy")))
np.save("default.npy", out["probabilities"].numpy())
out = model.signatures["serving_bytes"](image_bytes=tf.constant([open("coffee.png", "rb").read()]))
np.save("bytes.npy", out["probabilities"].numpy())
try:
    model.signatures["serving_default"](images=tf.zeros([1, 8, 8, 1]))
except tf.errors.InvalidArgumentError as error:
    print("bad input:", error.message)
assert not any(m == "keras" or m.startswith(("keras.", "crossvit_keras")) for m in sys.modules if sys.modules[m])
"""
    result = run_isolated(code, exported, cwd=tmp_path, env=serving_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "must have 3 channels (RGB)" in result.stdout
    np.testing.assert_allclose(
        np.load(tmp_path / "default.npy")[0], keras_probabilities(converted, images["chelsea"]), atol=1e-5
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "bytes.npy")[0], keras_probabilities(converted, images["coffee"]), atol=1e-5
    )


SAVED_MODEL_CLI = """
from tensorflow.python.tools.saved_model_cli import main  # the `saved_model_cli` console script
sys.argv = ["saved_model_cli", *sys.argv[1:]]
sys.exit(main())
"""


def test_saved_model_cli_runs_both_signature_defs(converted, exported, tmp_path):
    image = data.chelsea()[::6, ::6]  # a small real image, given inline as TF Serving's JSON would be
    literal = json.dumps(image.astype(float)[None].tolist())
    run = ["run", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_default"]
    result = run_isolated(SAVED_MODEL_CLI, *run, "--input_exprs", f"images={literal}", "--outdir", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = keras_probabilities(converted, image)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "probabilities.npy")[0], expected, atol=1e-5)
    assert np.load(tmp_path / "out" / "top_k_indices.npy")[0, 0] == expected.argmax()
    names = np.load(tmp_path / "out" / "top_k_names.npy", allow_pickle=True)[0]
    assert names[0].decode() == CLASS_NAMES[expected.argmax()]

    # serving_bytes, as TF Serving's REST API feeds it after decoding {"b64": ...}.
    jpeg = tf.io.encode_jpeg(data.astronaut()).numpy()
    np.save(tmp_path / "bytes.npy", np.array([jpeg]))  # dtype S: no pickle; a JPEG ends in FFD9, not NUL
    run_bytes = [*run[:-1], "serving_bytes", "--inputs", "image_bytes=bytes.npy", "--outdir", "out_bytes"]
    result = run_isolated(SAVED_MODEL_CLI, *run_bytes, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = keras_probabilities(converted, tf.io.decode_jpeg(jpeg).numpy())
    np.testing.assert_allclose(np.load(tmp_path / "out_bytes" / "probabilities.npy")[0], expected, atol=1e-5)

    result = run_isolated(SAVED_MODEL_CLI, *run, "--input_exprs", "images=[[[1.0, 2.0, 3.0]]]", cwd=tmp_path)
    assert result.returncode != 0
    assert "InvalidArgumentError" in result.stderr
    assert "must be a batch of RGB images, rank 4 [batch, height, width, 3]; got shape [1 1 3]" in result.stderr


def test_export_command_mixed_precision_imagenet_names(tmp_path, capsys):
    """A 1000-class mixed_float16 .keras file through the command: float32 outputs that agree with
    the Keras model, ImageNet class names by default, and an existing version is not overwritten."""
    keras.utils.set_random_seed(1)
    model = tiny_model(num_classes=1000, dtype="mixed_float16")
    model.save(tmp_path / "tiny.keras")
    output = str(tmp_path / "models" / "tiny" / "1")
    assert export_cli.main(["--model", str(tmp_path / "tiny.keras"), "--output", output]) == 0
    assert "ImageNet-1k class names" in capsys.readouterr().out
    image = data.coffee()
    out = tf.saved_model.load(output).signatures["serving_default"](images=tf.constant(image[None], tf.float32))
    assert out["probabilities"].dtype == tf.float32
    expected = keras_probabilities(model, image)
    np.testing.assert_allclose(out["probabilities"].numpy()[0], expected, atol=1e-4)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(), 1.0, atol=1e-5)
    names = export.imagenet_class_names()
    indices = out["top_k_indices"].numpy()[0]
    assert [n.decode() for n in out["top_k_names"].numpy()[0]] == [names[i] for i in indices]

    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model", str(tmp_path / "tiny.keras"), "--output", output])
    assert exit_info.value.code == 2
    assert "exists; export to a new version directory" in capsys.readouterr().err


def small_classifier(num_classes=3):
    """A plain Keras classifier (not a CrossViT): the export takes any (batch, size, size, 3) model."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def test_overwrite_replaces_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "models" / "small" / "1"
    model = small_classifier()
    export_saved_model(model, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755  # the umask's (022), not mkdtemp's 0700
    assert stat.S_IMODE(os.stat(path / "saved_model.pb").st_mode) == 0o644
    first = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert "top_k_names" not in first.structured_outputs  # no class names given
    assert first.structured_outputs["top_k_indices"].shape.as_list() == [None, 3]  # top_k <= classes
    model.layers[-1].bias.assign([0.0, 0.0, 50.0])
    export_saved_model(model, path, ["a", "b", "c"], overwrite=True)
    out = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.ones([1, 20, 30, 3]))
    assert out["top_k_names"].numpy()[0, 0] == b"c"
    assert os.listdir(path.parent) == ["1"]

    def fail(obj, export_dir, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, tmp_path / "models" / "small" / "2")
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, path, overwrite=True)
    assert os.listdir(path.parent) == ["1"]
    out = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.ones([1, 20, 30, 3]))
    assert out["top_k_names"].numpy()[0, 0] == b"c"  # the previous export is intact


def test_max_pixels_is_set_at_export(tmp_path, capsys):
    model = small_classifier()
    model.save(tmp_path / "small.keras")
    output = tmp_path / "models" / "small" / "1"
    argv = ["--model", str(tmp_path / "small.keras"), "--output", str(output), "--max-pixels", "1000"]
    assert export_cli.main(argv) == 0
    serve_bytes = tf.saved_model.load(str(output)).signatures["serving_bytes"]
    serve_bytes(image_bytes=tf.constant([png(np.zeros((25, 40, 3), np.uint8))]))  # 1000 pixels
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        encoded = encode(np.zeros((25, 41, 3), np.uint8), fmt)
        with pytest.raises(tf.errors.InvalidArgumentError, match="41 x 25 pixels, more than the 1000 this model takes"):
            serve_bytes(image_bytes=tf.constant([encoded]))


def test_bad_arguments_are_refused_before_writing(tmp_path):
    model = small_classifier()
    with pytest.raises(ValueError, match="2 class names given for a model with 3 classes"):
        export_saved_model(model, tmp_path / "1", ["a", "b"])
    with pytest.raises(ValueError, match="no classification head"):
        export_saved_model(tiny_model(num_classes=0), tmp_path / "1")
    flat = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"taking \(batch, size, size, 3\) images"):
        export_saved_model(flat, tmp_path / "1")
    (tmp_path / "names.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        export.read_class_names(tmp_path / "names.txt")
    assert os.listdir(tmp_path) == ["names.txt"]
