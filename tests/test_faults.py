"""Faults and bad input (issue 15, items 3 and 5): the recipe keeps its last two checkpoints, resumes
past a damaged one at the right epoch and optimizer step, refuses a resume of another model,
dataset or batch size, and a full or unwritable output directory, in one line each."""

import errno
import json
import os
import shutil
import zipfile

import keras
import numpy as np
import pytest
from test_training import TINY, make_folder, weights_h5

from crossvit_keras import callbacks, data, training

# 8 training images, batches of 4: 2 steps per epoch; no augmentation, to keep it fast.
FAST = ["--batch-size", "4", "--warmup-epochs", "0", "--aa", "none", "--mixup", "0", "--cutmix", "0", "--verbose", "2"]


def recipe(out, images, *flags):
    """The recipe in this process, without its SavedModel export (tests/test_export.py has it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "export_savedmodel", lambda *args: False)
        return training.main(["--data-path", str(images), "--output_dir", str(out), *TINY, *FAST, *flags])


def iterations(path):
    """The optimizer step count stored in a .keras file."""
    values = [int(v) for k, v in weights_h5(path).items() if k.startswith("optimizer") and np.ndim(v) == 0]
    return max(values)


def one_error(capsys, code, expected=2):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == expected and len(lines) == 1 and lines[0].startswith("error: "), (code, lines)
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The recipe run for 2 epochs of 2 steps: checkpoint.keras (step 4) and checkpoint-previous.keras (step 2)."""
    root = tmp_path_factory.mktemp("faults")
    images = make_folder(root / "images", images=8)
    assert recipe(root / "run", images, "--epochs", "2") == 0
    return root / "run", images


def test_the_last_two_checkpoints_are_kept(two_epochs):
    out, _ = two_epochs
    assert iterations(out / callbacks.CHECKPOINT) == 4 and iterations(out / callbacks.PREVIOUS) == 2
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_a_damaged_checkpoint_is_one_line_and_the_run_resumes_from_the_previous(two_epochs, tmp_path, capsys):
    source, images = two_epochs
    out = tmp_path / "run"
    shutil.copytree(source, out)
    data = (out / callbacks.CHECKPOINT).read_bytes()
    (out / callbacks.CHECKPOINT).write_bytes(data[: len(data) // 2])  # truncated: no zip directory
    capsys.readouterr()
    assert recipe(out, images, "--epochs", "2") == 0
    stdout = capsys.readouterr().out
    damaged = [line for line in stdout.splitlines() if "cannot resume from" in line]
    assert len(damaged) == 1 and callbacks.CHECKPOINT in damaged[0] and "BadZipFile" in damaged[0], damaged
    assert f"trying {out / callbacks.PREVIOUS}" in damaged[0]
    assert f"resuming from {out / callbacks.PREVIOUS}: 1 epoch(s) done, optimizer step 2" in stdout
    assert "Epoch 2/2" in stdout and "Epoch 1/2" not in stdout  # epoch 2 redone, epoch 1 not
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 2), (2, 4)]
    assert iterations(out / "model.keras") == 4 and iterations(out / callbacks.CHECKPOINT) == 4
    assert iterations(out / callbacks.PREVIOUS) == 2  # the good one kept, the damaged one set aside:
    assert (out / f"{callbacks.CHECKPOINT}.damaged").read_bytes() == data[: len(data) // 2]
    assert f"moved the damaged {out / callbacks.CHECKPOINT} to" in stdout


def test_no_usable_checkpoint_is_one_error_line_with_the_fix(two_epochs, tmp_path, capsys):
    source, images = two_epochs
    out = tmp_path / "run"
    shutil.copytree(source, out)
    (out / callbacks.CHECKPOINT).write_bytes(b"not a zip file")
    with zipfile.ZipFile(out / callbacks.PREVIOUS, "w") as archive:  # a zip with the wrong contents
        archive.writestr("notes.txt", "hello")
    error = one_error(capsys, recipe(out, images, "--epochs", "3"))
    assert "no usable checkpoint" in error and "BadZipFile" in error and "model.weights.h5" in error, error
    assert "delete the checkpoint files" in error and "--resume FILE" in error
    assert (out / callbacks.CHECKPOINT).read_bytes() == b"not a zip file"  # nothing replaced


WIDER = json.dumps({**json.loads(TINY[3]), "embed_dims": [16, 48]})


@pytest.mark.parametrize(
    "change, flags, classes",
    [
        ("--batch-size is 2 here, 4", ["--batch-size", "2"], 3),
        ('--model is "crossvit_9_240" here, "crossvit_tiny_240"', ["--model", "crossvit_9_240"], 3),
        ("the model's embed_dims is [16, 48] here, [16, 32]", ["--model-overrides", WIDER], 3),
        ("the class count is 4 here, 3", [], 4),
    ],
)
def test_resuming_another_model_dataset_or_batch_size_is_refused(two_epochs, tmp_path, capsys, change, flags, classes):
    source, images = two_epochs
    out = tmp_path / "run"
    shutil.copytree(source, out)
    if classes != 3:
        images = data.make_benchmark_folder(str(tmp_path / "images"), num_images=8, size=(64, 48), classes=classes)
    error = one_error(capsys, recipe(out, images, "--epochs", "3", *flags))
    assert change in error and "config.json" in error, error
    assert iterations(out / callbacks.CHECKPOINT) == 4


def test_a_full_disk_or_unwritable_directory_fails_before_training(two_epochs, tmp_path, capsys, monkeypatch):
    _, images = two_epochs
    (tmp_path / "file").write_text("in the way")
    error = one_error(capsys, recipe(tmp_path / "file" / "run", images, "--epochs", "1"))
    assert "cannot write to" in error and "choose another output directory" in error, error
    monkeypatch.setattr(callbacks, "free_bytes", lambda directory: 10_000)
    error = one_error(capsys, recipe(tmp_path / "run", images, "--epochs", "1"))
    assert "MB free; this run needs about" in error and "free some space" in error, error
    assert not (tmp_path / "run" / callbacks.CHECKPOINT).exists()


def test_a_failed_save_keeps_both_checkpoints(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("adamw", "mse")
    for _ in range(3):  # three epochs of one step: step 3 newest, step 2 previous
        model.fit(np.ones((4, 2)), np.ones((4, 1)), batch_size=4, verbose=0)
        callbacks.save_checkpoint(model, tmp_path)
    assert iterations(tmp_path / callbacks.CHECKPOINT) == 3 and iterations(tmp_path / callbacks.PREVIOUS) == 2
    before = {name: (tmp_path / name).read_bytes() for name in (callbacks.CHECKPOINT, callbacks.PREVIOUS)}

    def full_disk(path):
        with open(path, "wb") as f:
            f.write(b"PK half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    model.save = full_disk
    with pytest.raises(callbacks.CheckpointWriteError, match="No space left on device; .* kept, unchanged; free"):
        callbacks.save_checkpoint(model, tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path)) == sorted(before)  # no half-written file left behind
