"""tf.data service on loopback: one dispatcher and two workers (one a `crossvit-keras data-service
worker` process) run the training pipeline, its batches arrive, and the recipe trains through it."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO

from crossvit_keras import data
from crossvit_keras.cli import data_service
from crossvit_keras.cli import train as recipe
from crossvit_keras.data import service
from crossvit_keras.training import TrainConfig

TINY = [
    "--model",
    "crossvit_tiny_240",
    "--model-overrides",
    json.dumps({"image_sizes": [48, 32], "embed_dims": [16, 32], "depths": [[1, 1, 1]], "num_heads": [2, 2]}),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return data.make_sample_folder(str(tmp_path_factory.mktemp("images")), num_images=8, size=(64, 48), classes=2)


@pytest.fixture(scope="module")
def loopback():
    """A dispatcher and a worker in this process, and a second worker started by the command line."""
    dispatcher = service.start_dispatcher()
    port = dispatcher.target.rsplit(":", 1)[1]
    worker = service.start_worker(f"127.0.0.1:{port}", host="127.0.0.1")
    command = [sys.executable, "-m", "crossvit_keras", "data-service", "worker"]
    command += ["--dispatcher", f"127.0.0.1:{port}", "--port", "0", "--host", "127.0.0.1"]
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "tf.data service worker on port any free" in process.stdout.readline()  # its one line
        deadline = time.time() + 120
        while dispatcher._num_workers() < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert dispatcher._num_workers() == 2
        yield f"grpc://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=60)
        del worker


def test_training_batches_arrive_from_the_workers(folder, loopback):
    dataset = data.open_dataset("IMNET", folder, splits=("train",))
    with service.unseeded(restore_seed=0):
        stream = data.train_dataset(dataset.train, 32, 4, dataset.num_classes, remote=True)
    batches = list(service.distribute(stream, loopback, "batches").take(6).as_numpy_iterator())
    assert [(images.shape, targets.shape) for images, targets in batches] == [((4, 32, 32, 3), (4, 2))] * 6
    assert np.isfinite(np.stack([images for images, _ in batches])).all()
    assert len({float(images.sum()) for images, _ in batches}) == 6


def test_the_recipe_trains_through_the_data_service(folder, loopback, tmp_path):
    out = tmp_path / "run"
    flags = ["--data-path", folder, "--data-service", loopback, "--output_dir", str(out), *TINY]
    flags += ["--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0", "--no-saved-model", "--verbose", "0"]
    flags += ["--aa", "none"]  # RandAugment through the service: the test above
    assert recipe.main(flags) == 0
    with open(out / "log.jsonl") as f:
        (epoch,) = [json.loads(line) for line in f]
    assert np.isfinite(epoch["loss"])
    with open(out / "config.json") as f:
        assert json.load(f)["data_service"] == loopback


def test_the_commands_and_a_bad_address(monkeypatch, capsys):
    served = []
    monkeypatch.setattr(service, "serve", lambda server, description: served.append(description))
    assert data_service.main(["dispatcher", "--port", "0"]) == 130
    assert served[0].startswith("tf.data service dispatcher at grpc://localhost:")
    assert service.service_address("host:5050") == "grpc://host:5050"
    with pytest.raises(ValueError, match="grpc://HOST:PORT"):
        TrainConfig(data_service="http://host").checked()
