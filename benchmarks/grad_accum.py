"""Gradient accumulation (`--grad-accum-steps`): peak memory and CPU time of one training update
of the same batch, made in one pass or as N micro-batches, each case in a fresh process (so that
its peak resident memory is its own). Random images and labels, AdamW, no XLA.

    python benchmarks/grad_accum.py --model crossvit_9_240 --batch 32 --steps 1,4
"""

import argparse
import json
import subprocess
import sys


def measure(model_name, batch, steps, updates):
    """One case, in this process: {steps, micro_batch, cpu_seconds_per_update, peak_rss_mb}."""
    import common
    import keras
    import numpy as np

    import crossvit_keras
    from crossvit_keras import training

    keras.utils.set_random_seed(0)
    model = crossvit_keras.create_model(model_name, num_classes=10)
    optimizer = training.build_optimizer(model, "adamw", 1e-4, 0.05)
    training.compile_model(model, optimizer, 10, False, 1, steps)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, model.image_size, model.image_size, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, batch), 10)
    model.train_on_batch(images, labels)  # traces
    start = common.cpu_seconds()
    for _ in range(updates):
        model.train_on_batch(images, labels)
    seconds = (common.cpu_seconds() - start) / updates
    return {
        "steps": steps,
        "micro_batch": batch // steps,
        "cpu_seconds_per_update": round(seconds, 2),
        "peak_rss_mb": round(common.peak_rss_mb()),
    }


def main():
    p = argparse.ArgumentParser(prog="python benchmarks/grad_accum.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="crossvit_9_240")
    p.add_argument("--batch", type=int, default=32, help="images per update")
    p.add_argument("--steps", default="1,4", help="accumulation steps to compare (each divides --batch)")
    p.add_argument("--updates", type=int, default=3, help="timed updates per case (after one that traces)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args.model, args.batch, args.worker, args.updates)))
        return
    steps = [int(s) for s in args.steps.split(",")]
    if any(args.batch % s for s in steps):
        p.error(f"every --steps value must divide --batch {args.batch}")
    print(f"{args.model}, {args.batch} images per update")
    print("steps  micro-batch  CPU s/update  peak RSS MB")
    for s in steps:
        command = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch)]
        command += ["--updates", str(args.updates), "--worker", str(s)]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        micro, seconds, peak = result["micro_batch"], result["cpu_seconds_per_update"], result["peak_rss_mb"]
        print(f"{s:5d}  {micro:11d}  {seconds:12.2f}  {peak:11d}")


if __name__ == "__main__":
    main()
