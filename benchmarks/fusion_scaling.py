"""The paper's efficiency claim, measured (Sec. 3.3: "cross-attention only requires linear time for
both computational and memory complexity instead of quadratic time otherwise"):

    python benchmarks/fusion_scaling.py
    python benchmarks/fusion_scaling.py --scaling-repeats 3 --scaling-output tools/results/fusion_scaling

(from the repository root; `--help` lists the flags) times one fusion module of CrossViT-S
(widths 192 / 384, 6 heads, L = 1) on its own, a forward pass and a training step (forward and the
gradients of a loss with respect to the module's weights and its input tokens; no optimizer
update, which does not depend on the tokens), and measures the peak memory TensorFlow's allocator
holds for it, as the image grows (240 to 960 px: 401 + 197 to 6,401 + 3,137 tokens). It fits the
growth exponent p of cost ~ tokens^p by least squares on the log-log points (all sizes, and the
two largest, where fixed costs matter least) and writes a Markdown table, a JSON file and a PNG
plot.

Every (fusion, size) runs in a fresh worker process with TensorFlow's BFC allocator on the CPU
(TF_CPU_ALLOCATOR_USE_BFC=true, which keeps allocation statistics; read when TensorFlow loads), so
that the peaks are this module's alone and a size that does not fit in memory fails on its own.
The memory is the allocator's peak during one call minus what it held before (inputs and weights
excluded); oneDNN's scratch memory that does not go through TensorFlow's allocator is not in it.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import common

DEFAULT_FUSIONS = ("cross_attention", "all_attention")
DEFAULT_SIZES = (240, 360, 480, 720, 960)
MODEL = "crossvit_small_240"  # the model of the paper's Table 6


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python benchmarks/fusion_scaling.py",
        description="Time and peak memory of one CrossViT-S fusion module as the token count grows "
        "(240 to 960 px); fits the growth exponents; writes OUTPUT.md, OUTPUT.json and OUTPUT.png.",
    )
    parser.add_argument("--scaling-fusions", default=",".join(DEFAULT_FUSIONS), help="comma-separated fusions")
    parser.add_argument(
        "--scaling-sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated image sizes (px)"
    )
    parser.add_argument("--scaling-batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--scaling-repeats", type=int, default=5, help="timed calls per case; median (default 5)")
    parser.add_argument(
        "--scaling-output", default="fusion_scaling", help="writes OUTPUT.md, OUTPUT.json and OUTPUT.png"
    )
    return parser


# ----------------------------------------------------------------------------- worker (one case)


def token_counts(size, model=MODEL):
    """(small-branch tokens, large-branch tokens), CLS included, at image size `size`."""
    from crossvit_keras import configs

    config = configs.resolve_config(model, image_size=size)
    return tuple(1 + (s // p) ** 2 for s, p in zip(config["image_sizes"], config["patch_sizes"], strict=True))


def measure(fusion, size, batch=1, repeats=5, model=MODEL):
    """{forward_s, train_step_s (medians), forward_mib, train_step_mib (allocator peaks)} of one
    fusion module of `model` on random tokens of an image of `size` px."""
    import keras
    import numpy as np
    import tensorflow as tf

    from crossvit_keras import configs
    from crossvit_keras.layers import FUSIONS

    config = configs.resolve_config(model, image_size=size)
    dims, heads = config["embed_dims"], config["num_heads"]
    layer = FUSIONS[fusion](dims, heads, 1, name="fusion")
    rng = np.random.default_rng(0)
    tokens = [
        tf.constant(rng.standard_normal((batch, n, d)).astype("float32"))
        for n, d in zip(token_counts(size, model), dims, strict=True)
    ]
    layer.build([t.shape for t in tokens])

    @tf.function
    def forward(xs):
        return layer(xs, training=False)

    @tf.function
    def train_step(xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            outputs = layer(xs, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in outputs])
        return (
            tape.gradient(loss, [*layer.trainable_variables, *xs])
            if layer.trainable_variables
            else tape.gradient(loss, xs)
        )

    result = {"fusion": fusion, "image_size": size, "batch": batch, "tokens": list(token_counts(size, model))}
    result["parameters"] = int(sum(np.prod(v.shape) for v in layer.weights))
    for name, function in (("forward", forward), ("train_step", train_step)):
        for _ in range(2):  # trace, then warm up
            keras.tree.map_structure(lambda t: t.numpy(), function(tokens))
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            keras.tree.map_structure(lambda t: t.numpy(), function(tokens))
            seconds.append(time.perf_counter() - start)
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        result[f"{name}_s"] = statistics.median(seconds)
        result[f"{name}_mib"] = (peak - before) / 2**20
    return result


def worker(spec):
    print("RESULT " + json.dumps(measure(**spec)), flush=True)


def run_case(spec, timeout=1800):
    """measure(**spec) in a fresh process with the BFC allocator (`python fusion_scaling.py --worker
    SPEC`); None (and why) if it failed."""
    env = common.keras_env({"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"})
    argv = common.script_command(sys.executable, __file__, "--worker", json.dumps(spec))
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :]), None
    reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return None, f"exit status {done.returncode}: {reason}"


# ----------------------------------------------------------------------------- fits, table, plot

QUANTITIES = (
    ("forward_s", "forward (s)"),
    ("train_step_s", "training step (s)"),
    ("forward_mib", "forward peak (MiB)"),
    ("train_step_mib", "training step peak (MiB)"),
)


def growth_exponent(tokens, values):
    """p of values ~ tokens^p: the least-squares slope of log(values) on log(tokens)."""
    points = [(math.log(t), math.log(v)) for t, v in zip(tokens, values, strict=True) if v > 0]
    if len(points) < 2:
        return float("nan")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def exponents(results):
    """{fusion: {quantity: (p over all sizes, p over the two largest)}}."""
    fits = {}
    for fusion in dict.fromkeys(r["fusion"] for r in results):
        rows = sorted((r for r in results if r["fusion"] == fusion), key=lambda r: sum(r["tokens"]))
        tokens = [sum(r["tokens"]) for r in rows]
        fits[fusion] = {
            key: (
                growth_exponent(tokens, [r[key] for r in rows]),
                growth_exponent(tokens[-2:], [r[key] for r in rows[-2:]]),
            )
            for key, _ in QUANTITIES
        }
    return fits


def markdown(results, fits):
    lines = [
        "| fusion | image | tokens (small + large) | forward ms | training step ms | forward MiB | training step MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['fusion']} | {r['image_size']} | {r['tokens'][0]:,} + {r['tokens'][1]:,} | "
            f"{1e3 * r['forward_s']:.1f} | {1e3 * r['train_step_s']:.1f} | "
            f"{r['forward_mib']:.1f} | {r['train_step_mib']:.1f} |"
        )
    lines += [
        "",
        "| fusion | " + " | ".join(label for _, label in QUANTITIES) + " |",
        "|---|" + "---:|" * len(QUANTITIES),
    ]
    for fusion, fit in fits.items():
        lines.append(f"| {fusion} | " + " | ".join(f"{fit[k][0]:.2f} ({fit[k][1]:.2f})" for k, _ in QUANTITIES) + " |")
    lines.append("")
    lines.append("Growth exponents p of cost ~ tokens^p: least squares over all sizes (over the two largest).")
    return lines


def plot(results, fits, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from crossvit_keras.atomic import atomic_path

    figure, axes = plt.subplots(1, len(QUANTITIES), figsize=(3.6 * len(QUANTITIES), 3.4))
    for axis, (key, label) in zip(axes, QUANTITIES, strict=True):
        for fusion, fit in fits.items():
            rows = sorted((r for r in results if r["fusion"] == fusion), key=lambda r: sum(r["tokens"]))
            tokens = [sum(r["tokens"]) for r in rows]
            axis.loglog(tokens, [r[key] for r in rows], marker="o", label=f"{fusion} (p = {fit[key][0]:.2f})")
        rows = [r for r in results if r[key] > 0]
        if rows:  # slopes 1 and 2 through the smallest point, for reference
            t0 = min(sum(r["tokens"]) for r in rows)
            v0 = min(r[key] for r in rows if sum(r["tokens"]) == t0)
            t1 = max(sum(r["tokens"]) for r in rows)
            for slope, style in ((1, ":"), (2, "--")):
                axis.loglog(
                    [t0, t1], [v0, v0 * (t1 / t0) ** slope], "k" + style, linewidth=0.8, label=f"~ tokens^{slope}"
                )
        axis.set_xlabel("tokens (both branches)")
        axis.set_title(label, fontsize=10)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    figure.suptitle("One fusion module of CrossViT-S on its own, 240 -> 960 px", fontsize=10)
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=80)
    finally:
        plt.close(figure)
    return path


def main(argv=None):
    """Every (fusion, size) case, then the table, exponents, JSON and PNG."""
    args = build_parser().parse_args(argv)
    from crossvit_keras.atomic import atomic_path
    from crossvit_keras.layers import FUSIONS

    fusions = [f for f in args.scaling_fusions.split(",") if f]
    unknown = [f for f in fusions if f not in FUSIONS]
    try:
        sizes = [int(s) for s in args.scaling_sizes.split(",") if s]
    except ValueError:
        sizes = []
    if unknown or len(sizes) < 2 or min(sizes) < 16 or args.scaling_batch < 1 or args.scaling_repeats < 1:
        problem = (
            f"unknown fusion(s) {unknown}; choose from {sorted(FUSIONS)}"
            if unknown
            else ("--scaling-sizes needs at least two image sizes >= 16, --scaling-batch and --scaling-repeats >= 1")
        )
        print(f"error: {problem}", file=sys.stderr)
        return 2
    results = []
    cases = [(f, s) for f in fusions for s in sizes]
    for index, (fusion, size) in enumerate(cases, 1):
        spec = {"fusion": fusion, "size": size, "batch": args.scaling_batch, "repeats": args.scaling_repeats}
        start = time.perf_counter()
        result, error = run_case(spec)
        status = (
            error or f"forward {1e3 * result['forward_s']:.1f} ms, training step {1e3 * result['train_step_s']:.1f} ms"
        )
        print(f"[{index}/{len(cases)}] {fusion} {size} px: {status} ({time.perf_counter() - start:.0f} s)", flush=True)
        if result:
            results.append(result)
    fits = exponents(results)
    lines = markdown(results, fits)
    print("\n".join(lines))
    with atomic_path(f"{args.scaling_output}.md") as temporary, open(temporary, "w") as f:
        f.write("\n".join(lines) + "\n")
    with atomic_path(f"{args.scaling_output}.json") as temporary, open(temporary, "w") as f:
        json.dump({"results": results, "exponents": fits}, f, indent=1)
    print(f"wrote {args.scaling_output}.md, .json and {plot(results, fits, f'{args.scaling_output}.png')}")
    return 0 if len(results) == len(cases) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
