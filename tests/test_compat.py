"""crossvit_keras.training.compat: the Keras bugs it mends are still there, and with the mends two
MultiWorkerMirroredStrategy workers on loopback train the recipe in sync."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
from helpers import REPO
from test_training import ENV, RECIPE, TINY, make_folder, weights_h5

from crossvit_keras.training import compat

# The Keras releases in which the two bugs were seen (and the mends checked).
KNOWN_BROKEN = ("3.15.1",)


def test_the_mended_keras_bugs_are_still_there():
    """Fails when Keras changes the mended functions: then re-check whether compat.py is still
    needed (run test_two_workers_train_in_sync without apply_multi_worker_fixes) and delete it."""
    assert keras.__version__ in KNOWN_BROKEN, (
        f"Keras {keras.__version__} is not one of {KNOWN_BROKEN}: check whether crossvit_keras/compat.py "
        "is still needed for MultiWorkerMirroredStrategy and update KNOWN_BROKEN or delete it."
    )
    assert compat.multi_worker_bugs() == ["_maybe_symbolic_build", "reduce_per_replica"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_in_sync(tmp_path):
    """Two worker processes (TF_CONFIG on 127.0.0.1), one short epoch of the recipe: both finish,
    report the same evaluation, and end with identical weights and optimizer state."""
    images = make_folder(tmp_path / "images")
    out = tmp_path / "run"
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    command = [sys.executable, RECIPE, "--data-path", images, "--output_dir", str(out), *TINY]
    command += ["--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0", "--aa", "none"]
    command += ["--strategy", "multi_worker_mirrored", "--verbose", "2"]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**ENV, "TF_CONFIG": json.dumps(config)}
        processes.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=400)[0])
        finally:
            process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
        assert "compat: patched Keras for MultiWorkerMirroredStrategy" in output
        assert "replicas in sync: 2" in output
    finals = [[line.split("] ", 1)[1] for line in o.splitlines() if " top-1 " in line] for o in outputs]
    assert finals[0] and finals[0] == finals[1]
    assert json.loads((out / "config.json").read_text())["replicas_in_sync"] == 2
    chief, other = weights_h5(out / "checkpoint.keras"), weights_h5(out / "worker_1" / "checkpoint.keras")
    assert chief.keys() == other.keys()
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    assert (out / "model.keras").exists() and not os.path.exists(out / "worker_1" / "model.keras")


def test_keras_still_compiles_the_cross_replica_step_with_xla():
    """compat.split_xla_steps exists because Keras 3.15's trainer wraps `strategy.run` in
    tf.function(jit_compile=True). When this fails, Keras compiles per replica itself: delete
    split_xla_steps (and its calls in the recipe's compile) and this test."""
    from crossvit_keras.training import compat

    assert compat.mirrored_xla_bug()
