"""Inference speed of the deployment runtimes side by side: batch 1 latency and batch throughput.

    python benchmarks/deploy.py --model crossvit_9_240 --tasks predict,savedmodel,onnx,openvino,litert,timm,timm_onnx

(from the repository root; `--help` lists the flags). Tasks: `predict` (Keras model.predict),
`savedmodel` (its serving_default signature, 0-255 input with the evaluation transform in the
graph), `onnx`, `openvino`, `litert` (crossvit_keras.export.formats, float32) and their quantized
variants `onnx_int8`, `openvino_fp16`, `litert_fp16`, `litert_int8`; timm's model eager (`timm`,
torch.inference_mode, in the reference interpreter --reference-python) and exported with
torch.onnx (`timm_onnx`: the reference interpreter exports, ONNX Runtime runs it here). The models
have random weights (speed does not depend on them). One worker process per task, one after the
other: it exports, warms up, then times `--rounds` batches of --batch-size (throughput, the median)
and 20 calls of batch 1 (latency p50 and p95), with every runtime's intra-op threads set to
--threads. Reported with the cores other processes used meanwhile (the machine is shared) and each
worker's peak RSS. A timm task is skipped when --reference-python is not executable.

This file imports only the standard library and `common` at module level: the timm worker runs it
(`python benchmarks/deploy.py --worker SPEC`) in the reference interpreter, without TensorFlow.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common

LATENCY_CALLS = 20
QUANTIZED = {"onnx_int8": ("onnx", "int8"), "openvino_fp16": ("openvino", "float16")}
QUANTIZED |= {"litert_fp16": ("litert", "float16"), "litert_int8": ("litert", "int8")}
TIMM_TASKS = ("timm", "timm_onnx")
TASKS = ("predict", "savedmodel", *"onnx onnx_int8 openvino openvino_fp16 litert litert_fp16 litert_int8".split())
TASKS += TIMM_TASKS
DEFAULT_TASKS = ("predict", "savedmodel", "onnx", "openvino", "litert", "timm", "timm_onnx")


def keras_runner(task, spec, scratch):
    """(function images -> logits, image size, RGB 0-255 input?) for one of our tasks."""
    import tensorflow as tf

    import crossvit_keras
    from crossvit_keras.export import formats as export_formats

    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    model = crossvit_keras.create_model(spec["model"])
    size = model.image_size
    if task == "predict":
        return (lambda x: model.predict(x, batch_size=len(x), verbose=0)), size, False
    if task == "savedmodel":
        from crossvit_keras.export.saved_model import export_saved_model

        serve = tf.saved_model.load(export_saved_model(model, os.path.join(scratch, "1")))
        serve = serve.signatures["serving_default"]
        return (lambda x: serve(images=tf.constant(x))["probabilities"].numpy()), size, True
    fmt, quantize = QUANTIZED.get(task, (task, "none"))
    path = export_formats.export_format(model, os.path.join(scratch, "m" + export_formats.SUFFIXES[fmt]), fmt, quantize)
    return export_formats.load_runtime(path, threads=spec["threads"]), size, False


def timm_onnx_runner(spec, scratch):
    """timm's model exported by torch.onnx in the reference interpreter, run by ONNX Runtime."""
    from crossvit_keras.export import formats as export_formats

    path = os.path.join(scratch, "timm.onnx")
    worker = {**spec, "task": "timm_export", "output": path}
    subprocess.run(
        common.script_command(spec["reference_python"], __file__, "--worker", json.dumps(worker)), check=True
    )
    return export_formats.load_runtime(path, threads=spec["threads"])


def timm_main(spec):
    import numpy as np
    import timm
    import torch

    torch.set_num_threads(spec["threads"])
    model = timm.create_model(spec["model"]).eval()
    size = model.default_cfg["input_size"][-1]
    if spec["task"] == "timm_export":  # the legacy (TorchScript) exporter, dynamic batch
        example = torch.from_numpy(common.random_images(np, 1, size, channels_first=True))
        axes = {"images": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(
            model, (example,), spec["output"], dynamo=False, input_names=["images"], output_names=["logits"],
            dynamic_axes=axes, opset_version=17,
        )  # fmt: skip
        return None

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return measure(run, size, spec, channels_first=True, version=f"timm {timm.__version__}, torch {torch.__version__}")


def measure(run, size, spec, raw=False, channels_first=False, version=""):
    """Warms up, then times batches of spec["batch_size"] and single images; returns the numbers."""
    import numpy as np

    big = common.random_images(np, spec["batch_size"], size, normalised=not raw, channels_first=channels_first)
    one = big[:1].copy()
    start_cpu, start_machine, start = common.cpu_seconds(), common.machine_cpu_seconds(), time.perf_counter()
    run(big)
    rates = []
    for _ in range(spec["rounds"]):
        t = time.perf_counter()
        run(big)
        rates.append(len(big) / (time.perf_counter() - t))
    for _ in range(3):
        run(one)
    latencies = []
    for _ in range(LATENCY_CALLS):
        t = time.perf_counter()
        run(one)
        latencies.append(1000 * (time.perf_counter() - t))
    busy = common.machine_cpu_seconds() - start_machine - (common.cpu_seconds() - start_cpu)
    quantiles = statistics.quantiles(latencies, n=20, method="inclusive")  # 5% steps: [9] p50, [18] p95
    return {
        "throughput": statistics.median(rates),
        "rates": rates,
        "p50_ms": quantiles[9],
        "p95_ms": quantiles[18],
        "foreign_cores": max(0.0, busy / (time.perf_counter() - start)),
        "peak_rss_mb": common.peak_rss_mb(),
        "version": version,
    }


def worker_main(spec):
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the frameworks print goes to stderr
    task = spec["task"]
    if task in ("timm", "timm_export"):
        result = timm_main(spec)
    else:
        with tempfile.TemporaryDirectory(prefix="crossvit-bench-deploy-") as scratch:
            if task == "timm_onnx":
                import onnxruntime

                run, size = timm_onnx_runner(spec, scratch), int(spec["model"].rsplit("_", 1)[1])
                version = f"timm via torch.onnx, onnxruntime {onnxruntime.__version__}"
                result = measure(run, size, spec, channels_first=True, version=version)
            else:
                run, size, raw = keras_runner(task, spec, scratch)
                result = measure(run, size, spec, raw=raw, version=_version(task))
    if result is not None:
        protocol.write(json.dumps(result) + "\n")


def _version(task):
    import keras
    import tensorflow as tf

    fmt = QUANTIZED.get(task, (task,))[0]
    versions = {"onnx": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}
    if fmt in versions:
        import importlib.metadata

        package = versions[fmt]
        return f"{package} {importlib.metadata.version(package.replace('_', '-'))}"
    return f"keras {keras.__version__}, tf {tf.__version__}"


def run(args):
    """The parent: one worker per task, one after the other; prints a markdown table."""
    results = []
    for task in args.tasks:
        spec = {
            "model": args.model,
            "task": task,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "threads": args.threads,
            "reference_python": os.path.expanduser(args.reference_python),
        }
        python = spec["reference_python"] if task == "timm" else sys.executable
        if task in TIMM_TASKS and not os.access(spec["reference_python"], os.X_OK):
            common.log(f"{task}: skipped, {spec['reference_python']} is not executable (--reference-python)")
            continue
        common.log(f"{args.model} {task}: exporting, warming up and timing")
        started = time.perf_counter()
        with tempfile.TemporaryFile(mode="w+") as log:
            done = subprocess.run(
                common.script_command(python, __file__, "--worker", json.dumps(spec)),
                stdout=subprocess.PIPE,
                stderr=log,
                env=common.keras_env(),
            )
            if done.returncode != 0:
                log.seek(0)
                common.log(f"{task}: FAILED, skipped:\n" + "".join(log.readlines()[-10:]))
                continue
        result = {**spec, **json.loads(done.stdout.strip().splitlines()[-1])}
        result["worker_seconds"] = time.perf_counter() - started
        common.log(
            f"  {task}: {result['throughput']:.2f} img/s at batch {args.batch_size}, batch 1 p50 "
            f"{result['p50_ms']:.0f} ms ({result['worker_seconds']:.0f} s, other processes "
            f"{result['foreign_cores']:.2f} cores)"
        )
        results.append(result)
    lines = report(results, args, common.cpu_name())
    common.print_report(lines, results, args.json)
    return 0


def report(results, args, cpu):
    timm = next((r["throughput"] for r in results if r["task"] == "timm"), None)
    lines = [
        f"### {args.model}: batch 1 latency ({LATENCY_CALLS} calls) and batch {args.batch_size} throughput "
        f"(median of {args.rounds}), {args.threads} threads",
        "",
        f"| task | runtime | batch 1 p50 ms | batch 1 p95 ms | batch {args.batch_size} img/s | vs timm eager "
        "| peak RSS MiB | other processes (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = f"{r['throughput'] / timm:.2f}x" if timm else "-"
        lines.append(
            f"| {r['task']} | {r['version']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['throughput']:.2f} | {ratio} "
            f"| {r['peak_rss_mb']:.0f} | {r['foreign_cores']:.2f} |"
        )
    return lines + ["", f"CPU: {cpu}."]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python benchmarks/deploy.py",
        description="Batch 1 latency and batch throughput of the deployment runtimes (Keras, SavedModel, "
        "ONNX, OpenVINO, LiteRT, timm eager and exported), one worker process per task.",
    )
    common.add_model_argument(parser)
    parser.add_argument("--batch-size", type=common.positive, default=32, help="throughput batch size (default 32)")
    parser.add_argument(
        "--tasks",
        type=common.parse_list(TASKS),
        default=list(DEFAULT_TASKS),
        help=f"comma-separated, of {','.join(TASKS)} (default {','.join(DEFAULT_TASKS)})",
    )
    parser.add_argument("--rounds", type=common.positive, default=5, help="timed batches per task (default 5)")
    common.add_threads_argument(parser)
    common.add_reference_arguments(parser, flag=False)
    common.add_json_argument(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from crossvit_keras import configs

    args.model = configs.canonical_name(args.model)
    return run(args)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
