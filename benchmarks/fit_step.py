"""Cost of one `model.fit` training step on the current Keras backend: process CPU seconds and
wall seconds per step, with the recipe's compile (AdamW lr 5e-4, weight decay 0.05, soft-target
cross-entropy, drop path 0.1) on random images.

    python benchmarks/fit_step.py --model crossvit_9_240 --batch-size 16 --steps 6 --rounds 2
    KERAS_BACKEND=jax python benchmarks/fit_step.py --model crossvit_9_240

Process CPU time counts every thread of the process and is less sensitive to other processes'
load than wall time; compare two code versions by running them in turns.
"""

import argparse
import json
import resource
import time

import numpy as np

import crossvit_keras
from crossvit_keras.training.recipe import build_optimizer, compile_model


def main(name="crossvit_15_240", batch=16, steps=10, rounds=3):
    import keras

    keras.utils.set_random_seed(0)
    model = crossvit_keras.create_model(name, num_classes=1000, drop_path_rate=0.1)
    compile_model(model, build_optimizer(model, "adamw", 5e-4, 0.05), 1000)
    size = model.input_shape[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, size, size, 3)).astype("float32")
    y = np.eye(1000, dtype="float32")[rng.integers(0, 1000, batch * steps)]
    model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, verbose=0)  # warm-up: tracing, compiling
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        model.fit(x, y, batch_size=batch, verbose=0)
        cpu.append(round((time.process_time() - c0) / steps, 3))
        wall.append(round((time.perf_counter() - w0) / steps, 3))
    result = {
        "model": name,
        "batch": batch,
        "backend": keras.backend.backend(),
        "cpu_s_per_step": cpu,
        "wall_s_per_step": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python benchmarks/fit_step.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="crossvit_15_240")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.model, args.batch_size, args.steps, args.rounds)
