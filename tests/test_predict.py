"""The prediction command: top-k classes with names and probabilities equal to the Keras model's,
unreadable files reported by name while the others go on, ImageNet names offline."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_model
from skimage import data

from crossvit_keras.cli import predict
from crossvit_keras.data.preprocessing import eval_transform
from crossvit_keras.export import saved_model as export

NAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]
LINE = re.compile(r"^\s+(\d)\. (\d\.\d{4})\s+(\d+)(?:  (.*))?$")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 6-class .keras model, its class names file, and image files: PNG, JPEG, broken, missing."""
    root = tmp_path_factory.mktemp("predict")
    keras.utils.set_random_seed(3)
    model = tiny_model(num_classes=len(NAMES))
    head = model.get_layer("head")
    for dense in head.heads:  # sharper probabilities, so the order of the classes is clear
        dense.kernel.assign(dense.kernel * 30.0)
    model.save(root / "model.keras")
    (root / "names.txt").write_text("\n".join(NAMES) + "\n")
    (root / "cat.png").write_bytes(tf.io.encode_png(data.chelsea()).numpy())
    (root / "coffee.jpg").write_bytes(tf.io.encode_jpeg(data.coffee()).numpy())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root, model


def expected_probabilities(model, path):
    image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    logits = model(eval_transform(image[None], model.image_size))
    return tf.nn.softmax(logits).numpy()[0]


def parse(stdout):
    """{image: [(rank, probability, index, name)]} from the command's output."""
    results, current = {}, None
    for line in stdout.splitlines()[1:]:
        match = LINE.match(line)
        if match:
            rank, probability, index, name = match.groups()
            results[current].append((int(rank), float(probability), int(index), name))
        else:
            current = line
            results[current] = []
    return results


def test_prints_top_k_names_and_probabilities_and_goes_on_after_bad_files(files, capsys):
    root, model = files
    images = [root / "cat.png", root / "broken.jpg", root / "missing.png", root, root / "coffee.jpg"]
    args = ["--model", str(root / "model.keras"), "--class-names", str(root / "names.txt"), "--batch-size", "1"]
    assert predict.main([*args, *map(str, images)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].endswith(f"class names from {root / 'names.txt'}")
    results = parse(out)
    assert list(results) == [str(root / "cat.png"), str(root / "coffee.jpg")]
    seen = []
    for image, lines in results.items():
        expected = expected_probabilities(model, image)
        order = np.argsort(-expected)[:5]
        assert [index for _, _, index, _ in lines] == list(order)
        assert [rank for rank, *_ in lines] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([p for _, p, _, _ in lines], expected[order], atol=6e-5)
        assert [name for *_, name in lines] == [NAMES[i] for i in order]
        seen.append(expected)
    assert np.abs(seen[0] - seen[1]).max() > 1e-3  # the images really went through the model
    assert f"error: cannot read {root / 'broken.jpg'}: " in err
    assert f"error: cannot read {root / 'missing.png'}: no such file" in err
    assert f"error: cannot read {root}: it is a directory" in err
    assert "3 of 5 images could not be read." in err


def test_same_results_in_one_batch_and_with_top_k(files, capsys):
    root, model = files
    paths = [str(root / "cat.png"), str(root / "coffee.jpg")]
    assert predict.main(["--model", str(root / "model.keras"), "--top-k", "2", *paths]) == 0
    out = capsys.readouterr().out
    assert "no class names for 6 classes (pass --class-names FILE)" in out.splitlines()[0]
    results = parse(out)
    for path in paths:
        expected = expected_probabilities(model, path)
        assert [(index, name) for _, _, index, name in results[path]] == [(i, None) for i in np.argsort(-expected)[:2]]


def test_imagenet_class_names_are_available_offline():
    names = export.imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench, Tinca tinca"
    assert names[281] == "tabby, tabby cat"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_a_1000_class_model_gets_imagenet_names_or_says_they_are_missing(tmp_path, capsys, monkeypatch):
    model = tiny_model(num_classes=1000)
    model.save(tmp_path / "model.keras")
    image = tmp_path / "cat.png"
    image.write_bytes(tf.io.encode_png(data.chelsea()[::4, ::4]).numpy())
    args = ["--model", str(tmp_path / "model.keras"), str(image)]
    assert predict.main(args) == 0
    out = capsys.readouterr().out
    assert "ImageNet-1k class names" in out.splitlines()[0]
    lines = parse(out)[str(image)]
    assert [name for *_, name in lines] == [export.imagenet_class_names()[index] for _, _, index, _ in lines]

    monkeypatch.setattr(export, "imagenet_class_names", lambda: None)
    assert predict.main(args) == 0
    out = capsys.readouterr().out
    assert "ImageNet names are not available offline" in out.splitlines()[0]
    assert all(name is None for *_, name in parse(out)[str(image)])


def test_bad_model_or_class_names_exit_with_a_message(files, tmp_path, capsys):
    root, _ = files
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--model", str(tmp_path / "nothing.keras"), str(root / "cat.png")])
    assert exit_info.value.code == 2
    assert "not found; give a .keras file" in capsys.readouterr().err
    (tmp_path / "names.txt").write_text("a\nb\n")
    with pytest.raises(SystemExit):
        predict.main(["--model", str(root / "model.keras"), "--class-names", str(tmp_path / "names.txt"), "x.png"])
    assert "has 2 names but the model has 6 classes" in capsys.readouterr().err
