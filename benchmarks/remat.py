"""Peak training memory and step time of a CrossViT with and without activation rematerialisation
(`create_model(..., remat=True)`, the recipe's --remat), batch by batch.

    python benchmarks/remat.py --model crossvit_18_dagger_408 --batches 1 2 4
    python benchmarks/remat.py --batches 4 8 --remat-batches 16 32 --steps 1   # each mode near a 6 GiB budget

Each mode (without, with remat) runs in a fresh worker process with TensorFlow's BFC allocator on
the CPU (TF_CPU_ALLOCATOR_USE_BFC=true, as benchmarks/fusion_scaling.py), the batch sizes one after
the other in increasing order. One training step: forward, cross-entropy, gradients, an AdamW update (a traced
tf.function, without XLA). The optimizer's slots are made and the step traced for each batch size
first; then the allocator's statistics are reset and the steps measured (the first step's
one-time work is in its time): "step peak" is the allocator's peak
during them minus what it held before (weights, optimizer slots and inputs excluded: the
activations and gradients), "allocator peak" the peak itself, "process peak" the worker's peak
resident memory so far (VmHWM; it includes TensorFlow's own code and oneDNN's scratch). Step time is the
worker's CPU time per step (both cores) and the wall time; the machine may be shared. The batch
that fits a memory budget (--budget-gib of allocator peak) follows from the linear fit
allocator peak = a + b x batch of each mode.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(prog="python benchmarks/remat.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="crossvit_18_dagger_408")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--remat-batches", type=int, nargs="+", help="the batches with remat (default: --batches); larger ones fit"
    )
    parser.add_argument("--steps", type=int, default=2, help="measured steps per batch size (the first included)")
    parser.add_argument("--budget-gib", type=float, default=6.0, help="the memory budget the fitted batches fit")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def measure(model, batches, remat, steps):
    """One result per batch size, in this process (batches in increasing order: the process peak,
    VmHWM, is then the largest batch's)."""
    import keras
    import numpy as np
    import tensorflow as tf

    import crossvit_keras

    net = crossvit_keras.create_model(model, num_classes=1000, remat=remat)
    optimizer = keras.optimizers.AdamW(1e-4)
    rng = np.random.default_rng(0)

    @tf.function(reduce_retracing=False)
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = net(images, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        optimizer.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
        return loss

    optimizer.build(net.trainable_variables)  # the slots, before any measurement
    results = []
    for batch in sorted(batches):
        images = tf.constant(rng.standard_normal((batch, net.image_size, net.image_size, 3)).astype("float32"))
        labels = tf.constant(rng.integers(0, 1000, batch))
        step.get_concrete_function(images, labels)  # traced, not run
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(steps):
            step(images, labels).numpy()
        cpu, wall = (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        result = {
            "model": model,
            "batch": batch,
            "remat": remat,
            "step_peak_mib": (peak - before) / 2**20,
            "allocator_peak_mib": peak / 2**20,
            "process_peak_mib": common.peak_rss_mb(),
            "step_cpu_s": cpu,
            "step_wall_s": wall,
        }
        print("RESULT " + json.dumps(result), flush=True)
        results.append(result)
    return results


def run_case(spec, timeout=7200):
    """measure(**spec) in a fresh process with the BFC allocator; (results, error or None)."""
    env = common.keras_env({"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"})
    argv = common.script_command(sys.executable, __file__, "--worker", json.dumps(spec))
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout} s"
    results = [json.loads(line[len("RESULT ") :]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    error = None
    if done.returncode:
        error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return results, error


def fit(results, key):
    """(a, b) of key = a + b x batch, least squares over the measured batches."""
    import numpy as np

    batches = np.array([r["batch"] for r in results], float)
    values = np.array([r[key] for r in results], float)
    if len(set(batches)) < 2:
        return None
    b, a = np.polyfit(batches, values, 1)
    return a, b


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        measure(**json.loads(args.worker))
        return 0
    print(f"{args.model}, training step (AdamW, float32, no XLA) on {common.cpu_name()}", flush=True)
    header = "remat  batch  step peak MiB  allocator peak MiB  process peak MiB  step CPU s  step wall s"
    print(header, flush=True)
    results = []
    for remat in (False, True):
        batches = args.remat_batches if remat and args.remat_batches else args.batches
        measured, error = run_case({"model": args.model, "batches": batches, "remat": remat, "steps": args.steps})
        for result in measured:
            print(
                f"{str(remat):5}  {result['batch']:5}  {result['step_peak_mib']:13.0f}  "
                f"{result['allocator_peak_mib']:18.0f}  {result['process_peak_mib']:16.0f}  "
                f"{result['step_cpu_s']:10.1f}  {result['step_wall_s']:11.1f}",
                flush=True,
            )
        if error:
            print(f"{str(remat):5}  failed after {len(measured)} batch sizes: {error}", flush=True)
        results += measured
    budget = args.budget_gib * 1024
    summary = {}
    for remat in (False, True):
        mode = [r for r in results if r["remat"] is remat]
        allocator, step = fit(mode, "allocator_peak_mib"), fit(mode, "step_peak_mib")
        if allocator and step:
            (a, b), batch = allocator, int((budget - allocator[0]) // allocator[1])
            summary[str(remat)] = {"step_mib_per_image": step[1], "allocator_mib_fixed": a, "batch_in_budget": batch}
            print(
                f"remat={remat}: {step[1]:.0f} MiB of step peak per image; allocator peak {a:.0f} + {b:.0f} MiB "
                f"x batch "
                f"-> batch {batch} within {args.budget_gib:g} GiB",
                flush=True,
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"cpu": common.cpu_name(), "results": results, "fit": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
