"""Faults and bad input: the recipe keeps its last two checkpoints, resumes
past a damaged one at the right epoch and optimizer step, refuses a resume of another model,
dataset or batch size, and a full or unwritable output directory, in one line each; the convert and
predict commands refuse bad files (empty, truncated, another model's, a directory, a pickle with
code) in one line each and write nothing."""

import errno
import io
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from helpers import REPO
from test_training import TINY, make_folder, weights_h5

from crossvit_keras import data
from crossvit_keras.cli import train as recipe_cli
from crossvit_keras.training import callbacks
from crossvit_keras.training import run as training_run

# 8 training images, batches of 4: 2 steps per epoch; no augmentation, to keep it fast.
FAST = ["--batch-size", "4", "--warmup-epochs", "0", "--aa", "none", "--mixup", "0", "--cutmix", "0", "--verbose", "2"]


def recipe(out, images, *flags):
    """The recipe in this process, without its SavedModel export (tests/test_export.py has it)."""
    return recipe_cli.main(
        ["--data-path", str(images), "--output_dir", str(out), "--no-saved-model", *TINY, *FAST, *flags]
    )


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
    error = one_error(capsys, recipe(tmp_path / "new", images, "--resume", str(out / callbacks.CHECKPOINT)))
    assert f"no usable checkpoint to resume from ({out / callbacks.CHECKPOINT}: BadZipFile" in error, error
    assert "pass --resume a good checkpoint, or leave it out to start afresh" in error


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
        images = data.make_sample_folder(str(tmp_path / "images"), num_images=8, size=(64, 48), classes=classes)
    error = one_error(capsys, recipe(out, images, "--epochs", "3", *flags))
    assert change in error and "config.json" in error, error
    assert iterations(out / callbacks.CHECKPOINT) == 4


def test_a_damaged_config_json_is_one_line(two_epochs, tmp_path, capsys):
    source, images = two_epochs
    out = tmp_path / "run"
    shutil.copytree(source, out)
    (out / "config.json").write_text('{"model": ')
    error = one_error(capsys, recipe(out, images, "--epochs", "2"))
    assert "config.json is damaged" in error and "delete it to resume anyway" in error, error


def test_a_full_disk_or_unwritable_directory_fails_before_training(two_epochs, tmp_path, capsys, monkeypatch):
    _, images = two_epochs
    (tmp_path / "file").write_text("in the way")
    error = one_error(capsys, recipe(tmp_path / "file" / "run", images, "--epochs", "1"))
    assert "cannot write to" in error and "choose another output directory" in error, error
    monkeypatch.setattr(callbacks, "free_bytes", lambda directory: 10_000)
    error = one_error(capsys, recipe(tmp_path / "run", images, "--epochs", "1"))
    assert "MB free; this run needs about" in error and "free some space" in error, error
    assert not (tmp_path / "run" / callbacks.CHECKPOINT).exists()


@pytest.mark.parametrize(
    "failure",
    [
        callbacks.CheckpointWriteError("cannot write the checkpoint x: No space left on device; ..."),
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.keras"),
    ],
)
def test_a_failure_while_training_or_writing_is_one_line_and_exit_status_1(failure, capsys, monkeypatch):
    class Run:
        def __init__(self, args):
            pass

        def prepare_train(self):
            def fail():
                raise failure

            return fail

        def remove_unused_output(self):
            return []

    monkeypatch.setattr(training_run, "Run", Run)
    error = one_error(capsys, recipe_cli.main([]), expected=1)
    assert "No space left on device" in error, error


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


# ----------------------------------------------------------------------------- Ctrl-C, and failed runs' directories

# TensorFlow's own log lines on stderr (C++ logging before absl is set up)
TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")


def test_ctrl_c_after_a_checkpoint_is_one_line_with_the_command_that_resumes(two_epochs, tmp_path):
    _, images = two_epochs
    out = tmp_path / "run"
    argv = ["--data-path", str(images), "--output_dir", str(out), *TINY, *FAST, "--epochs", "50", "--no-saved-model"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "crossvit_keras", "train", *argv], cwd=REPO, env=env, stdout=stdout, stderr=stderr
        )
        deadline = time.monotonic() + 600
        while not (out / callbacks.CHECKPOINT).exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=600)
    err = [line for line in (tmp_path / "stderr").read_text().splitlines() if not TF_LOG.match(line)]
    assert code == 130 and len(err) == 1, (code, err, (tmp_path / "stdout").read_text()[-2000:])
    expected = (
        rf"interrupted; the last checkpoint is {re.escape(str(out / callbacks.CHECKPOINT))} \(\d+ epochs? done\); "
        rf"resume from it with: python -m crossvit_keras train {re.escape(shlex.join(argv))}"
    )
    assert re.fullmatch(expected, err[0]), err[0]
    assert (out / callbacks.CHECKPOINT).exists() and (out / "config.json").exists()


def test_ctrl_c_before_the_first_checkpoint_leaves_no_output_directory(two_epochs, tmp_path, capsys, monkeypatch):
    _, images = two_epochs

    def interrupted(model, directory):  # Ctrl-C while the first checkpoint is being written
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks, "save_checkpoint", interrupted)
    out = tmp_path / "new" / "run"
    capsys.readouterr()
    assert recipe(out, images, "--epochs", "2") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "interrupted before the first checkpoint, nothing to resume; start again with: crossvit-keras train "
        f"--data-path {images} --output_dir {out} "
    ), err
    assert not (tmp_path / "new").exists()  # the run's directory and the parent it made for it: gone


def test_a_run_that_fails_before_writing_anything_useful_leaves_no_directory(two_epochs, tmp_path, capsys):
    _, images = two_epochs
    one_error(capsys, recipe(tmp_path / "run", tmp_path / "no_images", "--epochs", "1"))  # a wrong --data-path
    one_error(capsys, recipe(tmp_path / "run", images, "--epochs", "1", "--batch-size", "64"))  # < one batch
    assert os.listdir(tmp_path) == []


def test_a_ctrl_c_python_would_drop_is_delivered_again():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")

    class DropsIt:
        def __del__(self):  # as a garbage-collection callback can: Python prints it and goes on
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), recipe_cli._interrupts_delivered():
        DropsIt()
        time.sleep(1)


# ----------------------------------------------------------------------------- convert and predict on bad files


class Code:
    """A pickle that would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def bad_checkpoints(root):
    """{name: path} of files the converter must refuse in one line."""
    from safetensors.numpy import save_file

    root.mkdir()
    save_file({"encoder.layer.0.weight": np.zeros((4, 4), "float32")}, root / "other_model.safetensors")
    good = (root / "other_model.safetensors").read_bytes()
    files = {"empty.safetensors": b"", "truncated.safetensors": good[: len(good) // 2], "empty.pth": b""}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):  # GLOBAL, STACK_GLOBAL
        files[f"code_protocol_{protocol}.pth"] = pickle.dumps({"w": Code(root / "marker")}, protocol)
    archive = io.BytesIO()  # torch's zip layout, its data.pkl running code
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Code(root / "marker"), 2))
    files["code_in_zip.pth"] = archive.getvalue()
    files["truncated_zip.pth"] = archive.getvalue()[:40]
    for name, content in files.items():
        (root / name).write_bytes(content)
    (root / "directory.safetensors").mkdir()
    return {path.name: path for path in root.iterdir()}


EXPECTED_CONVERT = {
    "other_model.safetensors": "do not fit model 'crossvit_tiny_240'. 1 unexpected checkpoint tensor(s): encoder",
    "empty.safetensors": "is empty (0 bytes)",
    "truncated.safetensors": "not a readable .safetensors checkpoint (truncated?)",
    "empty.pth": "is empty (0 bytes)",
    "code_protocol_2.pth": "refused: its pickle calls posix.system",
    f"code_protocol_{pickle.HIGHEST_PROTOCOL}.pth": "refused: its pickle calls posix.system",
    "code_in_zip.pth": "refused: its pickle calls posix.system",
    "truncated_zip.pth": "is not a PyTorch checkpoint, or is truncated",
    "directory.safetensors": "is a directory, not a checkpoint file",
}


def test_convert_refuses_bad_files_in_one_line_and_writes_nothing(tmp_path, capsys):
    from crossvit_keras.cli import convert

    files = bad_checkpoints(tmp_path / "bad")
    assert sorted(files) == sorted(EXPECTED_CONVERT)
    for name, path in files.items():
        output = tmp_path / "out" / "model.keras"
        with pytest.raises(SystemExit) as exit_info:
            convert.main(["--model", "crossvit_tiny_240", "--checkpoint", str(path), "--output", str(output)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (name, lines)
        assert EXPECTED_CONVERT[name] in lines[0], (name, lines[0])
        assert not (tmp_path / "out").exists(), name
    assert not (tmp_path / "bad" / "marker").exists()  # no pickle ran its code
    (tmp_path / "folder.keras").mkdir()
    with pytest.raises(SystemExit):
        convert.main(
            [
                "--model",
                "crossvit_tiny_240",
                "--checkpoint",
                str(files["other_model.safetensors"]),
                "--output",
                str(tmp_path / "folder.keras"),
            ]
        )
    assert "error: The output" in capsys.readouterr().err and not os.listdir(tmp_path / "folder.keras")


def test_predict_refuses_bad_model_files_and_reports_bad_images_in_one_line_each(tmp_path, capsys):
    import tensorflow as tf
    from helpers import tiny_model
    from skimage import data as samples

    from crossvit_keras.cli import predict

    tiny_model(num_classes=3).save(tmp_path / "model.keras")
    model = (tmp_path / "model.keras").read_bytes()
    (tmp_path / "empty.keras").write_bytes(b"")
    (tmp_path / "truncated.keras").write_bytes(model[: len(model) // 2])
    (tmp_path / "folder.keras").mkdir()
    with zipfile.ZipFile(tmp_path / "wrong.keras", "w") as archive:
        archive.writestr("notes.txt", "a zip, not a Keras model")
    png = tf.io.encode_png(samples.chelsea()).numpy()
    jpeg = tf.io.encode_jpeg(samples.coffee()).numpy()
    (tmp_path / "cat.png").write_bytes(png)
    images = {
        "notes.jpg": (b"hello, not an image", "not an encoded JPEG, PNG, GIF, BMP or WebP image (19 bytes"),
        "empty.png": (b"", "the file is empty"),
        "cut.png": (png[: len(png) // 2], "a truncated PNG image"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "a truncated JPEG image"),
    }
    for name, (content, _) in images.items():
        (tmp_path / name).write_bytes(content)
    for name, expected in [
        ("empty.keras", "not a .keras file (not a zip archive, 0 bytes"),
        ("truncated.keras", "not a .keras file (not a zip archive"),
        ("notes.jpg", "not a .keras file (not a zip archive"),
        ("folder.keras", "is a directory"),
        ("wrong.keras", "cannot load the model"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            predict.main(["--model", str(tmp_path / name), str(tmp_path / "cat.png")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, lines)
        assert expected in lines[0], lines[0]
    paths = [str(tmp_path / name) for name in images]
    assert predict.main(["--model", str(tmp_path / "model.keras"), str(tmp_path / "cat.png"), *paths]) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(images) and f"{len(images)} of {len(images) + 1} images could not be read." in err
    for line, (name, (_, expected)) in zip(errors, images.items(), strict=True):
        assert line.startswith(f"error: cannot read {tmp_path / name}: ") and expected in line, line
    assert str(tmp_path / "cat.png") in out  # the good image was classified
    assert predict.main(["--model", str(tmp_path / "model.keras"), "--max-pixels", "1000", str(tmp_path / "cat.png")])
    assert "a PNG image of 451 x 300 pixels, more than the 1000 allowed (--max-pixels)" in capsys.readouterr().err
    assert "Traceback" not in out + err
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["model.keras", "empty.keras", "truncated.keras", "folder.keras", "wrong.keras", "cat.png", *images]
    )  # nothing written
