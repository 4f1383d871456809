"""Datasets: DeiT-layout folders with their checks, the training and evaluation pipelines, skipped
corrupt images, padding and sharding."""

import os

import numpy as np
import pytest
import tensorflow as tf

from crossvit_keras import data
from crossvit_keras.data import augment


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 4 JPEGs per split, plus one corrupt file in each split."""
    root = str(tmp_path_factory.mktemp("images"))
    data.make_sample_folder(root, num_images=12, size=(64, 48), classes=3)
    with open(os.path.join(root, "train", "class_1", "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    with open(os.path.join(root, "val", "class_2", "truncated.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n\x00\x00")
    return root


def test_folder_dataset_classes_and_sizes(folder):
    dataset = data.open_dataset("IMNET", folder)
    assert dataset.class_names == ["class_0", "class_1", "class_2"] and dataset.num_classes == 3
    assert dataset.train.size == 13 and dataset.val.size == 13
    names = [n.decode() for n, _, _ in dataset.val.records().as_numpy_iterator()]
    labels = [int(label) for _, _, label in dataset.val.records().as_numpy_iterator()]
    assert labels == sorted(labels) and all(f"class_{label}" in n for n, label in zip(names, labels, strict=True))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: os.makedirs(os.path.join(root, "train", "a")), "has no val/ folder"),
        (lambda root: [os.makedirs(os.path.join(root, s, "a")) for s in ("train", "val")], "has no images"),
        (lambda root: [os.makedirs(os.path.join(root, s)) for s in ("train", "val")], "has no class folders"),
    ],
)
def test_folder_errors_say_what_to_fix(tmp_path, make, message):
    make(str(tmp_path))
    with pytest.raises(ValueError, match=message):
        data.open_dataset("IMNET", str(tmp_path))


def test_mismatched_classes_and_missing_paths(tmp_path, folder):
    for split, name in (("train", "cat"), ("val", "dog")):
        os.makedirs(tmp_path / split / name)
        (tmp_path / split / name / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="other class folders"):
        data.open_dataset("IMNET", str(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        data.open_dataset("IMNET", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="needs --data-path"):
        data.open_dataset("IMNET", None)


def test_unknown_tfds_dataset():
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset'"):
        data.open_dataset("no_such_dataset", None)


def test_train_pipeline_skips_and_counts_corrupt_images(folder):
    dataset = data.open_dataset("IMNET", folder)
    before = data.UNREADABLE.count
    mixup = augment.MixupCutmix(3, label_smoothing=0.1)
    stream = data.train_dataset(dataset.train, 32, 4, 3, mixup=mixup, seed=0)
    # a group's unreadable images are reported when the group ends: 128 images, ten passes over 13
    batches = list(stream.take(32).as_numpy_iterator())
    for images, targets in batches:
        assert images.shape == (4, 32, 32, 3) and images.dtype == np.float32
        assert np.isfinite(images).all()
        assert targets.shape == (4, 3)
        np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)
        assert targets.min() >= 0.1 / 3 - 1e-6  # smoothed
    assert data.UNREADABLE.count - before >= 2  # the corrupt file, once per pass


def test_repeated_augmentation_repeats_each_image(folder):
    dataset = data.open_dataset("IMNET", folder)
    stream = data.train_dataset(dataset.train, 16, 6, 3, aa="none", reprob=0, repeated_aug=3, seed=0)
    images, targets = next(iter(stream))
    labels = np.argmax(targets.numpy(), 1)
    # 2 images x 3 copies (a corrupt image's 3 copies are skipped together), each copy cropped anew
    assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1
    assert not np.allclose(images[0], images[1])


def test_eval_pipeline_pads_weights_and_shards(folder):
    dataset = data.open_dataset("IMNET", folder)
    before = data.UNREADABLE.count
    val = data.eval_dataset(dataset.val, 32, 4, 3, global_batch=8)
    assert int(val.cardinality()) == data.padded_size(13, 8) // 4 == 4
    batches = list(val.as_numpy_iterator())
    weights = np.concatenate([w for _, _, w in batches])
    labels = np.concatenate([np.argmax(y, 1) for _, y, _ in batches])
    assert len(weights) == 16 and weights.sum() == 12  # 13 files, one unreadable, 3 padding
    assert data.UNREADABLE.count - before == 1
    assert list(labels[:12]) == sorted(labels[:12])
    images = np.concatenate([x for x, _, _ in batches])
    assert images.shape == (16, 32, 32, 3) and np.isfinite(images).all()

    # two input pipelines (workers): equal, disjoint halves of the padded set
    halves = []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index, num_replicas_in_sync=2)
        shard = list(data.eval_dataset(dataset.val, 32, 4, 3, global_batch=8, input_context=context))
        assert len(shard) == 2
        halves.append(sum(float(w.numpy().sum()) for _, _, w in shard))
    assert sum(halves) == 12


def test_tfds_dataset_prepared_offline(tmp_path):
    """A tensorflow-datasets image classification dataset by name: prepared into --data-path (its
    data_dir), encoded images decoded by the same pipelines; 'test' serves as val without 'validation'."""
    import tensorflow_datasets as tfds

    class CrossvitTestImages(tfds.core.GeneratorBasedBuilder):  # registered under its snake_case name
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(num_classes=3),
            }
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(10), "test": self._generate_examples(5)}

        def _generate_examples(self, count):
            rng = np.random.default_rng(count)
            for i in range(count):
                yield i, {"image": rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8), "label": i % 3}

    dataset = data.open_dataset("crossvit_test_images", str(tmp_path))
    assert (dataset.num_classes, dataset.train.size, dataset.val.size) == (3, 10, 5)
    images, targets = next(iter(data.train_dataset(dataset.train, 24, 4, 3, aa="none", seed=0)))
    assert images.shape == (4, 24, 24, 3) and targets.shape == (4, 3)
    batches = list(data.eval_dataset(dataset.val, 24, 2, 3).as_numpy_iterator())
    assert len(batches) == 3 and sum(w.sum() for _, _, w in batches) == 5
