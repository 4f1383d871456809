"""Prepared shards: `crossvit-keras prepare` writes an image folder as TFRecord shards of JPEGs at
a bounded size with the class names, atomically and resumably; the recipe's pipelines read them,
each input pipeline its own files."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from crossvit_keras import data
from crossvit_keras.cli import prepare
from crossvit_keras.data import shards


def write_image(path, width, height, fmt="JPEG", seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/: 6 images in 2 classes (one large JPEG, one PNG, one corrupt file); val/: 2 images."""
    root = tmp_path_factory.mktemp("images")
    for i in range(5):
        write_image(str(root / "train" / f"c{i % 2}" / f"{i}.jpg"), 40 + 4 * i, 36, seed=i)
    write_image(str(root / "train" / "c1" / "large.jpg"), 120, 90)  # shorter side 90 > 48: reduced
    write_image(str(root / "train" / "c0" / "small.png"), 30, 20, fmt="PNG")
    (root / "train" / "c0" / "corrupt.jpg").write_bytes(b"not an image")
    for i in range(2):
        write_image(str(root / "val" / f"c{i}" / f"{i}.jpg"), 40, 30, seed=10 + i)
    return str(root)


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("shards"))
    metadata = shards.prepare_shards("IMNET", folder, output, shorter_side=48, shard_size=4, progress=False)
    return output, metadata


def read(path):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_shards_hold_bounded_jpegs_labels_and_class_names(folder, prepared):
    output, metadata = prepared
    assert metadata["complete"] and metadata["class_names"] == ["c0", "c1"]
    train, val = metadata["splits"]["train"], metadata["splits"]["val"]
    assert train["files"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert train["size"] == 7 and val["size"] == 2  # the corrupt file is skipped
    with open(os.path.join(output, "shards.json")) as f:
        assert json.load(f) == metadata
    assert not [name for name in os.listdir(output) if name.startswith(".partial-")]
    examples = [e for name in train["files"] for e in read(os.path.join(output, name))]
    names = set()
    for example in examples:
        feature = example.features.feature
        name = feature["name"].bytes_list.value[0].decode()
        contents = feature["image"].bytes_list.value[0]
        names.add(name)
        assert feature["label"].int64_list.value[0] == int(name.split("/")[1][1])
        assert contents[:2] == b"\xff\xd8"  # every image is a JPEG
        image = Image.open(io.BytesIO(contents))
        assert min(image.size) <= 48
        if name == "train/c1/large.jpg":
            assert image.size == (64, 48)
        elif name.endswith(".jpg"):  # small JPEGs are kept byte for byte
            with open(os.path.join(folder, name), "rb") as f:
                assert f.read() == contents
    assert len(names) == 7 and "train/c0/corrupt.jpg" not in names
    val_names = [
        e.features.feature["name"].bytes_list.value[0].decode() for e in read(os.path.join(output, val["files"][0]))
    ]
    assert val_names == ["val/c0/0.jpg", "val/c1/1.jpg"]  # the validation split in its order


def test_a_rerun_keeps_finished_shards_and_writes_the_missing_ones(folder, prepared, tmp_path):
    output, metadata = prepared
    copy = str(tmp_path / "copy")
    os.makedirs(copy)
    for name in os.listdir(output):
        with open(os.path.join(output, name), "rb") as src, open(os.path.join(copy, name), "wb") as dst:
            dst.write(src.read())
    # as after an interrupted run: metadata not complete, the last shard missing
    os.remove(os.path.join(copy, "train-00001-of-00002.tfrecord"))
    with open(os.path.join(copy, "shards.json"), "w") as f:
        json.dump({**metadata, "complete": False}, f)
    kept = os.stat(os.path.join(copy, "train-00000-of-00002.tfrecord")).st_mtime_ns
    with pytest.raises(ValueError, match="only partly prepared"):
        data.open_dataset("shards", copy)
    again = shards.prepare_shards("IMNET", folder, copy, shorter_side=48, shard_size=4, progress=False)
    assert again == metadata
    assert os.stat(os.path.join(copy, "train-00000-of-00002.tfrecord")).st_mtime_ns == kept
    with pytest.raises(ValueError, match="other settings"):
        shards.prepare_shards("IMNET", folder, copy, shorter_side=64, shard_size=4, progress=False)


def test_each_input_pipeline_reads_its_own_files(prepared):
    output, metadata = prepared
    dataset = data.open_dataset("shards", output)
    assert dataset.class_names == ["c0", "c1"] and dataset.train.size == 7

    def names(pipelines, index):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=index)
        records = dataset.train.records(shuffle=True, seed=1, input_context=context)
        return sorted(name.decode() for name, _, _ in records.as_numpy_iterator())

    first, second = names(2, 0), names(2, 1)
    assert [len(first), len(second)] == metadata["splits"]["train"]["sizes"] and not set(first) & set(second)
    assert sorted(first + second) == names(1, 0)
    images, targets = next(iter(data.train_dataset(dataset.train, 32, 2, dataset.num_classes, aa="none")))
    assert images.shape == (2, 32, 32, 3) and targets.shape == (2, 2)
    val = data.eval_dataset(dataset.val, 32, 2, dataset.num_classes)
    assert [w.tolist() for _, _, w in val.as_numpy_iterator()] == [[1.0, 1.0]]


def test_prepare_command_and_its_errors(folder, tmp_path, capsys):
    output = str(tmp_path / "out")
    assert prepare.main(["--data-path", folder, "--output", output, "--shard-size", "8", "--splits", "val"]) == 0
    assert "val 2 images in 1 shards" in capsys.readouterr().out
    assert data.open_dataset("shards", output, splits=("val",)).val.size == 2
    assert prepare.main(["--data-path", folder, "--output", output, "--shorter-side", "8"]) == 2
    assert "--shorter-side must be at least 32" in capsys.readouterr().err
    with pytest.raises(ValueError, match="use --data-set shards"):
        data.open_dataset("IMNET", output)
    with pytest.raises(ValueError, match="has no shards.json"):
        data.open_dataset("shards", folder)
