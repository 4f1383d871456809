"""Speed and memory of a CrossViT variant, optionally side by side with timm's (PyTorch) model.

    python benchmarks/speed.py --model crossvit_15_240 --batch-size 32 --train-batch-size 16
    python benchmarks/speed.py --model crossvit_15_240 --reference   # + timm, alternating

(from the repository root; `--help` lists the flags). For every case (task x dtype x XLA) one
worker process builds the model, warms it up and then times rounds of `--steps` batches; with
`--reference` a second worker runs timm's same variant in the PyTorch reference interpreter
(`--reference-python`) and the two take turns, round by round (ABBA order), so that load from
other processes hits both alike. Reported: median img/s over the rounds, the median of the
per-round ratios Keras / timm, and the peak resident memory (VmHWM) of each worker process, which
includes its framework's runtime. Before the cases, the variant's params and GMACs against timm's.

Tasks: `predict` (model.predict on random normalised images), `savedmodel` (the serving_default
signature of crossvit_keras.export.saved_model.export_saved_model, which also runs the evaluation
transform on RGB input), `fit` (model.fit with the training recipe: AdamW lr 5e-4, weight decay
0.05, soft-target cross-entropy on one-hot labels, drop path 0.1). timm's side: eval forward under
torch.inference_mode for predict and savedmodel, a train step with torch.optim.AdamW and timm's
SoftTargetCrossEntropy for fit; mixed_bfloat16 there is torch.autocast(bfloat16). The deployment
runtimes (ONNX, OpenVINO, LiteRT, timm exported) are deploy.py's.

This file imports only the standard library and `common` at module level: the timm worker runs it
(`python benchmarks/speed.py --worker timm SPEC`) in the reference interpreter, without TensorFlow.
"""

import argparse
import os
import sys

import common

TASKS = ("predict", "savedmodel", "fit")
DTYPES = ("float32", "mixed_bfloat16")
XLA_MODES = ("default", "off", "on")  # default: what model.compile() picks (Keras: off on CPU-only hosts)


def result_row(result):
    infos, median = result["infos"], result["median"]
    xla = result["xla"] if result["task"] != "savedmodel" else "as exported"
    if "xla" in infos["keras"]:
        xla = f"{xla} ({'on' if infos['keras']['xla'] else 'off'})"
    timm_rss = infos["timm"]["peak_rss_mb"] if "timm" in infos else None
    fmt = common.fmt
    cells = [
        result["task"],
        result["dtype"],
        xla,
        result["batch_size"],
        fmt(median["keras"]),
        fmt(median.get("timm")),
        fmt(result.get("ratio")),
        fmt(result.get("whole_call_ratio")),
        fmt(infos["keras"]["peak_rss_mb"], ".0f"),
        fmt(timm_rss, ".0f"),
        fmt(max(result["teardown_seconds"]["keras"]), ".1f"),
        fmt(max(result["foreign_load"])),
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


REPORT_HEADER = (
    "| task | dtype | XLA | batch | Keras img/s | timm img/s | ratio Keras/timm | ratio, whole calls "
    "| Keras peak RSS MiB "
    "| timm peak RSS MiB | Keras call teardown s (max) | max other load (cores) |"
)


def report(results, args):
    lines = [
        f"### {args.model}, {args.threads} threads, {args.rounds} rounds of {args.steps} batches "
        f"after {args.warmup} warm-up",
        "",
        REPORT_HEADER,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *map(result_row, results),
    ]
    if results:
        versions = {kind: info["version"] for kind, info in results[0]["infos"].items()}
        lines += ["", "Versions: " + "; ".join(versions.values()) + f". CPU: {common.cpu_name()}."]
    return lines


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python benchmarks/speed.py",
        description="Inference and training speed and peak memory of a CrossViT variant; with --reference "
        "side by side with timm's, alternating rounds. (Deployment runtimes: benchmarks/deploy.py.)",
    )
    common.add_model_argument(parser)
    parser.add_argument("--batch-size", type=common.positive, default=32, help="inference batch size (default 32)")
    parser.add_argument("--train-batch-size", type=common.positive, default=16, help="training batch size (default 16)")
    parser.add_argument("--tasks", type=common.parse_list(TASKS), default=list(TASKS), help="predict,savedmodel,fit")
    parser.add_argument("--dtypes", type=common.parse_list(DTYPES), default=list(DTYPES), help="float32,mixed_bfloat16")
    parser.add_argument(
        "--xla",
        type=common.parse_list(XLA_MODES),
        default=["off", "on"],
        help="jit_compile of predict/fit: default (model.compile's choice), off, on; default off,on",
    )
    common.add_rounds_arguments(parser)
    common.add_threads_argument(parser)
    parser.add_argument(
        "--inter-op-threads", type=common.positive, help="TensorFlow's inter-op threads (default: TF's)"
    )
    common.add_reference_arguments(parser)
    common.add_keras_env_argument(parser)
    common.add_json_argument(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.keras_env = dict(args.keras_env)
    from crossvit_keras import configs

    args.model = configs.canonical_name(args.model)
    if args.reference:
        args.reference_python = os.path.expanduser(args.reference_python)
        if not os.access(args.reference_python, os.X_OK):
            raise SystemExit(
                f"--reference needs a python with torch and timm; {args.reference_python} is not executable. "
                "Create the reference venv (benchmarks/README.md) or pass --reference-python PATH."
            )
    try:
        import crossvit_keras.export.saved_model  # noqa: F401
    except ImportError:
        if "savedmodel" in args.tasks:
            common.log("crossvit_keras.export.saved_model is not importable: skipping the savedmodel task")
            args.tasks = [t for t in args.tasks if t != "savedmodel"]

    macs_lines, _ = common.macs_table([args.model])
    print("\n".join(macs_lines) + "\n", flush=True)
    cases = []
    for task in args.tasks:
        for dtype in args.dtypes:
            for xla in args.xla if task != "savedmodel" else ["default"]:
                cases.append((task, dtype, xla))
    results = []
    for index, (task, dtype, xla) in enumerate(cases, 1):
        batch = args.train_batch_size if task == "fit" else args.batch_size
        spec = {
            "model": args.model,
            "task": task,
            "dtype": dtype,
            "xla": xla,
            "batch_size": batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": args.threads,
            "inter_op_threads": args.inter_op_threads,
        }
        label = f"[{index}/{len(cases)}] {task} {dtype} xla={xla} batch {batch}"
        common.log(f"{label}: building and warming up")
        workers = {"keras": common.Worker("keras", spec, sys.executable, __file__, env=args.keras_env)}
        if args.reference:
            workers["timm"] = common.Worker("timm", spec, args.reference_python, __file__)
        try:
            results.append(common.measure_case(spec, args, label, workers))
        except RuntimeError as error:
            common.log(f"{label}: FAILED, skipped: {error}")
    lines = report(results, args)
    common.print_report(lines, results, args.json)
    return 0


if __name__ == "__main__":
    worker = common.worker_argv()
    if worker:
        common.worker_main(*worker)
    else:
        sys.exit(main())
