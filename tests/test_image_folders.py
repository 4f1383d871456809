"""Image folders with real symbolic links and file names that are not UTF-8: each image counted
once, loops and repeats skipped by name, links out of the split or across classes refused, and a
training stream that reads every file and skips an image over the pixel limit with its reason."""

import logging
import os
import sys

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from crossvit_keras import data

sys.path.insert(0, os.path.join(REPO, "tools"))
from serving_load_test import png_bomb  # noqa: E402


@pytest.fixture(autouse=True)
def propagate(monkeypatch):
    """caplog listens on the root logger; the package's logger stops propagating there once
    setup_logging has run (an earlier test's command line in this process)."""
    monkeypatch.setattr(logging.getLogger("crossvit_keras"), "propagate", True)


@pytest.fixture
def folder(tmp_path):
    """train/ and val/ with 2 classes of 3 PNGs each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in range(2):
            os.makedirs(tmp_path / split / f"c{label}")
            for i in range(3):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / f"c{label}" / f"{i}.png")
    return tmp_path


def test_loops_and_repeated_links_are_counted_once(folder, caplog):
    train = folder / "train"
    os.symlink("..", train / "c0" / "loop")  # to the split's folder
    os.symlink(".", train / "c1" / "self")
    os.makedirs(train / "c1" / "sub")
    os.symlink("../..", train / "c1" / "sub" / "up")  # to the split's folder, from deeper
    os.symlink("0.png", train / "c1" / "again.png")
    os.symlink("/nonexistent.png", train / "c1" / "broken.png")
    with caplog.at_level(logging.WARNING, logger="crossvit_keras.data.datasets"):
        paths, labels, classes = data.scan_image_folder(str(train))
    assert classes == ["c0", "c1"] and labels == [0, 0, 0, 1, 1, 1]
    assert [os.path.basename(p) for p in paths] == ["0.png", "1.png", "2.png"] * 2
    text = caplog.text
    assert "skipped 4 link(s) to a folder or image already counted" in text
    assert "c0/loop" in text and "c1/again.png" in text and "and 1 more" in text
    assert "skipped 1 broken link(s)" in text and "c1/broken.png" in text
    dataset = data.open_dataset("IMNET", str(folder))
    assert dataset.train.size == 6


def test_a_link_to_a_folder_elsewhere_is_followed_once(folder):
    train = folder / "train"
    os.makedirs(train / ".store" / "extra")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(train / ".store" / "extra" / "x.png")
    os.symlink(train / ".store" / "extra", train / "c0" / "extra")  # inside the split: followed
    os.symlink(train / ".store" / "extra", train / "c0" / "extra2")  # the same folder again: skipped
    paths, labels, _ = data.scan_image_folder(str(train))
    assert len(paths) == 7 and labels.count(0) == 4


@pytest.mark.parametrize(
    "target, message",
    [
        (lambda root: root / "val" / "c0", r"train/c1/link leads to .*val/c0, outside .*train: links must stay"),
        (lambda root: root / "train" / "c0", r"train/c1/link in class 'c1' is .*train/c0, also in class 'c0'"),
        (lambda root: root / "train" / "c0" / "1.png", r"train/c1/link in class 'c1' is .*c0/1.png, also in"),
    ],
    ids=["outside the split", "another class's folder", "another class's image"],
)
def test_links_outside_the_split_or_across_classes_are_refused(folder, target, message):
    os.symlink(target(folder), folder / "train" / "c1" / ("link.png" if "png" in str(target(folder)) else "link"))
    with pytest.raises(ValueError, match=message.replace("link in", "link(.png)? in")):
        data.open_dataset("IMNET", str(folder))


def test_a_class_folder_that_is_a_link_to_another_class_is_refused(folder):
    os.symlink(folder / "train" / "c0", folder / "train" / "c2")
    os.makedirs(folder / "val" / "c2")
    with pytest.raises(ValueError, match=r"train/c2 in class 'c2' is .*train/c0, also in class 'c0'"):
        data.open_dataset("IMNET", str(folder))


def test_file_names_that_are_not_utf8_are_read(folder, caplog):
    """A Latin-1 name (b'caf\\xe9.png') is a valid Linux file name but not UTF-8: it is kept,
    read by the pipelines (paths are bytes there), and shown as its bytes when skipped."""
    for split in ("train", "val"):
        good = os.path.join(os.fsencode(folder / split / "c0"), b"caf\xe9.png")
        Image.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(good, format="PNG")
    bad = os.path.join(os.fsencode(folder / "val" / "c1"), b"\xff\xfe.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not an image")
    dataset = data.open_dataset("IMNET", str(folder))
    assert dataset.train.size == 7 and dataset.val.size == 8
    names = [n for n, _, _ in dataset.val.records().as_numpy_iterator()]
    assert os.path.join(os.fsencode(folder / "val" / "c0"), b"caf\xe9.png") in names
    before = data.UNREADABLE.count
    with caplog.at_level(logging.WARNING, logger="crossvit_keras.data.pipeline"):
        batches = list(data.eval_dataset(dataset.val, 16, 8, 2).as_numpy_iterator())
    weights = np.concatenate([w for _, _, w in batches])
    assert weights.sum() == 7  # the good Latin-1 name read; the corrupt one has weight 0
    assert data.UNREADABLE.count - before == 1
    assert r"c1/\xff\xfe.png" in caplog.text  # named by its bytes
    images, _ = next(iter(data.train_dataset(dataset.train, 16, 7, 2, aa="none", reprob=0, seed=0)))
    assert images.shape == (7, 16, 16, 3)


def test_a_class_name_that_is_not_utf8_is_refused_naming_its_bytes(folder):
    for split in ("train", "val"):
        os.makedirs(os.path.join(os.fsencode(folder / split), b"caf\xe9"))
    with pytest.raises(ValueError, match=r"Class folder b'.*train/caf\\xe9' has a name that is not UTF-8: rename it"):
        data.open_dataset("IMNET", str(folder))


def test_the_training_stream_skips_an_image_over_the_pixel_limit_with_its_reason(folder, caplog):
    (folder / "train" / "c1" / "bomb.png").write_bytes(png_bomb(20000, 20000))  # 49 kB, 1.2 GB decoded
    dataset = data.open_dataset("IMNET", str(folder))
    before = data.UNREADABLE.count
    with caplog.at_level(logging.WARNING, logger="crossvit_keras.data.pipeline"):
        stream = data.train_dataset(dataset.train, 16, 7, 2, aa="none", reprob=0, seed=0)
        images, _ = next(iter(stream))  # all 6 good images and a repeat: the bomb went by at least once
    assert images.shape == (7, 16, 16, 3)
    assert data.UNREADABLE.count - before >= 1
    message = "bomb.png: a PNG image of 20000 x 20000 pixels, more than the 40000000 the input pipelines take; use"
    assert message in caplog.text
