"""Speed and memory of a CrossViT variant, optionally side by side with timm's (PyTorch) model.

    python -m crossvit_keras.bench --model crossvit_15_240 --batch-size 32 --train-batch-size 16
    python -m crossvit_keras.bench --model crossvit_15_240 --reference   # + timm, alternating
    python -m crossvit_keras.bench --macs                                 # params and GMACs of all variants
    python -m crossvit_keras.bench --fusion-scaling   # one fusion's time and memory, 240..960 px (fusion_scaling.py)
    python -m crossvit_keras.bench --gpu              # multi-GPU training and inference img/s (bench_gpu.py)

For every case (task x dtype x XLA) one worker process builds the model, warms it up and then
times rounds of `--steps` batches; with `--reference` a second worker runs timm's same variant in
the PyTorch reference interpreter (`--reference-python`) and the two take turns, round by round
(ABBA order), so that load from other processes hits both alike. Reported: median img/s over the
rounds, the median of the per-round ratios Keras / timm, and the peak resident memory (VmHWM) of
each worker process, which includes its framework's runtime.

Tasks: `predict` (model.predict on random normalised images), `savedmodel` (the serving_default
signature of crossvit_keras.export.export_saved_model, which also runs the evaluation transform on
RGB input), `fit` (model.fit with the training recipe: AdamW lr 5e-4, weight decay 0.05,
soft-target cross-entropy on one-hot labels, drop path 0.1). timm's side: eval forward under
torch.inference_mode for predict and savedmodel, a train step with torch.optim.AdamW and
timm's SoftTargetCrossEntropy for fit; mixed_bfloat16 there is torch.autocast(bfloat16).

This file imports only the standard library at module level: the timm worker runs it as a script
(`python -P bench.py --worker timm SPEC`) in an environment without TensorFlow.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

DEPLOY_TASKS = tuple("onnx onnx_int8 openvino openvino_fp16 litert litert_fp16 litert_int8 timm timm_onnx".split())
TASKS = ("predict", "savedmodel", "fit", *DEPLOY_TASKS)  # any of DEPLOY_TASKS: crossvit_keras/bench_deploy.py
DTYPES = ("float32", "mixed_bfloat16")
XLA_MODES = ("default", "off", "on")  # default: what model.compile() picks (Keras: off on CPU-only hosts)
RECIPE = {"learning_rate": 5e-4, "weight_decay": 0.05, "drop_path_rate": 0.1}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # crossvit_keras.preprocessing's (not importable in the timm worker)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_REFERENCE_PYTHON = os.path.join("~", ".cache", "crossvit-reference", "bin", "python")


# ---------------------------------------------------------------------------------------------
# Model arithmetic: multiply-accumulates per image, counted like timm's table (matmuls and convs;
# not the norms, activations, softmax or the 4-tap bicubic resize).


def count_macs(config):
    """Multiply-accumulates of one forward pass of one image, from `configs.resolve_config`."""
    from crossvit_keras.ablations import fusion_macs  # the fusions of Table 6 (V: cross-attention)
    from crossvit_keras.layers.embedding import MULTI_CONV_STEMS

    tokens, macs = [], 0
    for size, patch, dim in zip(config["image_sizes"], config["patch_sizes"], config["embed_dims"], strict=True):
        stem = MULTI_CONV_STEMS[patch] if config["multi_conv"] else ((patch, patch, 0, 1),)
        channels = 3
        for kernel, stride, pad, width in stem:
            size = (size + 2 * pad - kernel) // stride + 1
            macs += size * size * kernel * kernel * channels * (dim // width)
            channels = dim // width
        tokens.append(int(config.get("cls_token", True)) + size * size)
    dims = config["embed_dims"]
    for depth in config["depths"]:
        for b in range(2):  # N transformer blocks in the small branch, M in the large one
            t, d, hidden = tokens[b], dims[b], int(dims[b] * config["mlp_ratios"][b])
            macs += depth[b] * (4 * t * d * d + 2 * t * d * hidden + 2 * t * t * d)  # qkv+proj, MLP, attention
    return macs + fusion_macs(config, tokens) + sum(dims) * config["num_classes"]


def macs_table(names):
    """Markdown rows: params and GMACs per variant against timm's (each must agree within 1%)."""
    from crossvit_keras import configs, create_model

    rows, ok = [], True
    for name in names:
        config = configs.resolve_config(name)
        params = create_model(name).count_params()
        gmacs = count_macs(config) / 1e9
        timm_params, timm_gmacs = configs.TIMM_FIGURES[name]
        agree = abs(params / timm_params - 1) <= 0.01 and abs(gmacs / timm_gmacs - 1) <= 0.01
        ok &= agree
        rows.append(
            f"| {name} | {params:,} | {timm_params:,} | {gmacs:.2f} | {timm_gmacs:.2f} | "
            f"{100 * (gmacs / timm_gmacs - 1):+.1f}% | {'yes' if agree else 'NO'} |"
        )
    header = [
        "| model | params | timm params | GMACs | timm GMACs | GMACs diff | within 1% |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    return header + rows, ok


# ---------------------------------------------------------------------------------------------
# Workers: one process per framework and case; JSON lines on stdin/stdout.


def peak_rss_mb():
    """Peak resident set size of this process in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_images(np, batch, size, normalised=True, channels_first=False):
    """Uniform random RGB images, ImageNet-normalised (the model's input) or in [0, 255]."""
    images = np.random.default_rng(0).uniform(0.0, 1.0, (batch, size, size, 3)).astype("float32")
    if normalised:
        images = (images - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    else:
        images *= 255.0
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)) if channels_first else images


def one_hot_labels(np, batch, classes=1000):
    return np.eye(classes, dtype="float32")[np.arange(batch) % classes]


class KerasRunner:
    """The Keras side of one case; `run()` times `steps` batches and returns seconds.

    predict and fit are timed from the callbacks' on_*_begin to on_*_end, the loop over the
    batches: with TensorFlow 2.21 the end of a predict/fit call on NumPy data also waits for
    tf.data's autotuning thread to wake up (an upstream quirk of up to the call's own length),
    which is reported separately as `teardown_seconds`."""

    def __init__(self, spec):
        import keras
        import numpy as np
        import tensorflow as tf

        import crossvit_keras

        threads = spec["threads"]
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        if spec.get("inter_op_threads"):
            tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op_threads"])
        task, batch, steps = spec["task"], spec["batch_size"], spec["steps"]
        overrides = {"drop_path_rate": RECIPE["drop_path_rate"]} if task == "fit" else {}
        model = crossvit_keras.create_model(spec["model"], dtype=spec["dtype"], **overrides)
        size = model.image_size
        jit = {"default": "auto", "off": False, "on": True}[spec["xla"]]
        from tensorflow.python.util import _pywrap_util_port

        onednn = "oneDNN on" if _pywrap_util_port.IsMklEnabled() else "oneDNN off"
        self.info = {
            "params": model.count_params(),
            "version": f"keras {keras.__version__}, tf {tf.__version__} ({onednn})",
        }
        self.marks = {}
        Clock = clock_callback(keras, self.marks)
        if task == "predict":
            model.compile(jit_compile=jit)
            images = random_images(np, batch * steps, size)
            self._run = lambda: model.predict(images, batch_size=batch, verbose=0, callbacks=[Clock()])
        elif task == "savedmodel":
            from crossvit_keras.export import export_saved_model

            self._scratch = tempfile.TemporaryDirectory(prefix="crossvit-bench-")
            serve = tf.saved_model.load(export_saved_model(model, os.path.join(self._scratch.name, "1")))
            serve = serve.signatures["serving_default"]
            images = tf.constant(random_images(np, batch, size, normalised=False))
            self._run = lambda: [serve(images=images)["probabilities"].numpy() for _ in range(steps)]
        else:
            compile_for_training(model, jit)
            images, labels = random_images(np, batch * steps, size), one_hot_labels(np, batch * steps)
            self._run = lambda: model.fit(
                images, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[Clock()]
            )
        if task != "savedmodel":
            self.info["xla"] = bool(model.jit_compile)

    def run(self):
        self.marks.clear()
        start = time.perf_counter()
        self._run()
        end = time.perf_counter()
        if not self.marks:
            return end - start, 0.0
        return self.marks["end"] - self.marks["begin"], end - start - (self.marks["end"] - self.marks["begin"])


def clock_callback(keras, marks):
    """A callback class that marks the begin and end of the loop over the batches of predict/fit."""

    class Clock(keras.callbacks.Callback):
        def on_predict_begin(self, logs=None):
            marks["begin"] = time.perf_counter()

        on_train_begin = on_predict_begin

        def on_predict_end(self, logs=None):
            marks["end"] = time.perf_counter()

        on_train_end = on_predict_end

    return Clock


def compile_for_training(model, jit_compile="auto"):
    """The training application's recipe (crossvit_keras.training: AdamW without weight decay on
    biases, norms, CLS tokens and position embeddings; soft-target cross-entropy; top-1/top-5
    metrics) at the base learning rate."""
    from crossvit_keras import training

    optimizer = training.build_optimizer(model, "adamw", RECIPE["learning_rate"], RECIPE["weight_decay"])
    training.compile_model(model, optimizer, model.num_classes, jit_compile, steps_per_execution=1)


class TimmRunner:
    """timm's side of one case (eager PyTorch, as timm's users run it)."""

    def __init__(self, spec):
        import numpy as np
        import timm
        import torch
        from timm.loss import SoftTargetCrossEntropy

        torch.set_num_threads(spec["threads"])
        task, batch, steps = spec["task"], spec["batch_size"], spec["steps"]
        train = task == "fit"
        model = timm.create_model(spec["model"], drop_path_rate=RECIPE["drop_path_rate"] if train else 0.0)
        size = model.default_cfg["input_size"][-1]
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["dtype"] == "mixed_bfloat16")
        batches = torch.from_numpy(random_images(np, batch * steps, size, channels_first=True)).split(batch)
        self.info = {
            "params": sum(p.numel() for p in model.parameters()),
            "version": f"timm {timm.__version__}, torch {torch.__version__}",
        }
        if train:
            model.train()
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=RECIPE["learning_rate"], weight_decay=RECIPE["weight_decay"]
            )
            loss_fn = SoftTargetCrossEntropy()
            labels = torch.from_numpy(one_hot_labels(np, batch * steps)).split(batch)

            def run():
                for x, y in zip(batches, labels, strict=True):
                    with autocast:
                        loss = loss_fn(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        else:
            model.eval()

            def run():
                with torch.inference_mode(), autocast:
                    for x in batches:
                        model(x).float().numpy()

        self._run = run

    def run(self):
        start = time.perf_counter()
        self._run()
        return time.perf_counter() - start, 0.0


def worker_main(kind, spec, runners=None):
    """Builds the runner, warms it up, then answers {"op": "run"} with timings until {"op": "stop"}."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the frameworks print goes to stderr, not into the protocol

    def reply(**message):
        protocol.write(json.dumps(message) + "\n")

    try:
        runner = (runners or {"keras": KerasRunner, "timm": TimmRunner})[kind](spec)
        warmup = [sum(runner.run()) for _ in range(spec["warmup"])]
        reply(ready=True, warmup_seconds=warmup, peak_rss_mb=peak_rss_mb(), **runner.info)
        for line in sys.stdin:
            if json.loads(line)["op"] != "run":
                break
            cpu = cpu_seconds()
            seconds, teardown = runner.run()
            reply(
                seconds=seconds, teardown_seconds=teardown, cpu_seconds=cpu_seconds() - cpu, peak_rss_mb=peak_rss_mb()
            )
    except Exception as error:  # the parent shows it; the traceback is in the worker's log
        reply(error=f"{type(error).__name__}: {error}")
        raise


class Worker:
    """A worker process seen from the parent."""

    def __init__(self, kind, spec, python, env=None, module="bench"):
        """`module`: the file of this package whose `--worker KIND SPEC` entry runs the worker."""
        self.kind = kind
        self.log = tempfile.TemporaryFile(mode="w+")
        if kind.startswith("keras"):
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            argv = [python, "-m", f"crossvit_keras.{module}"]
            path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
            env = {"PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        else:  # -P: no script directory on sys.path, so crossvit_keras' modules shadow nothing
            argv = [python, "-P", os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{module}.py")]
        self.proc = subprocess.Popen(
            [*argv, "--worker", kind, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.info = None

    def _reply(self):
        line = self.proc.stdout.readline()
        message = json.loads(line) if line.strip() else {"error": "the process exited"}
        if "error" in message:
            self.close()
            self.log.seek(0)
            tail = "".join(self.log.readlines()[-15:])
            raise RuntimeError(f"{self.kind} worker failed: {message['error']}\n{tail}")
        return message

    def ready(self):
        self.info = self._reply()
        return self.info

    def run(self):
        self.proc.stdin.write(json.dumps({"op": "run"}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The parent: cases, alternating rounds, report.


def log(message):
    print(message, file=sys.stderr, flush=True)


def cpu_seconds(pid="self"):
    """CPU time (user + system, all threads) a process has used, from /proc; 0.0 where it is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu_seconds():
    """CPU time the machine's processors were busy: user, nice, system, irq, softirq, and steal (the
    time a virtual machine's processors were running other guests: noise that no process shows)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class ForeignLoad:
    """Cores used by processes other than this benchmark, between `start()` and `stop()`: the noise
    in a round. (The load average is no measure of it: it counts the benchmark's own threads.)"""

    def __init__(self, pids):
        self.pids = ["self", *pids]

    def _sample(self):
        return time.perf_counter(), machine_cpu_seconds() - sum(cpu_seconds(pid) for pid in self.pids)

    def start(self):
        self._start = self._sample()

    def stop(self):
        (t0, c0), (t1, c1) = self._start, self._sample()
        return max(0.0, (c1 - c0) / (t1 - t0))

    def wait_for_quiet(self, threshold, patience):
        """Sleeps (up to `patience` seconds) until one second passes with foreign load <= threshold."""
        deadline = time.perf_counter() + patience
        while time.perf_counter() < deadline:
            self.start()
            time.sleep(1.0)
            if self.stop() <= threshold:
                return True
        return False


def measure_case(spec, args, case_label, workers=None):
    """Runs one case: Keras (and timm) workers, alternating rounds. Returns a result dict.

    A round in which other processes used more than `args.max_foreign_load` cores is repeated
    (at most `args.retries` times per case); the rounds kept and their foreign load are reported.
    `workers`: {"keras": Worker, "timm": Worker} already started (default: this module's)."""
    if workers is None:
        workers = {"keras": Worker("keras", spec, sys.executable, env=args.keras_env)}
        if args.reference:
            workers["timm"] = Worker("timm", spec, args.reference_python)
    try:
        infos = {kind: worker.ready() for kind, worker in workers.items()}
        foreign = ForeignLoad([worker.proc.pid for worker in workers.values()])
        rates = {kind: [] for kind in workers}
        teardowns = {kind: [] for kind in workers}
        whole_rates = {kind: [] for kind in workers}
        loads, retries, order = [], args.retries, list(workers)
        while len(loads) < args.rounds:
            foreign.wait_for_quiet(args.max_foreign_load, args.patience)
            rate, teardown, whole, noise = {}, {}, {}, []
            for kind in order if len(loads) % 2 == 0 else order[::-1]:
                foreign.start()
                message = workers[kind].run()
                noise.append(foreign.stop())
                rate[kind] = spec["batch_size"] * spec["steps"] / message["seconds"]
                teardown[kind] = message["teardown_seconds"]
                whole[kind] = spec["batch_size"] * spec["steps"] / (message["seconds"] + message["teardown_seconds"])
                infos[kind]["peak_rss_mb"] = message["peak_rss_mb"]
            line = ", ".join(f"{kind} {value:.2f} img/s" for kind, value in rate.items())
            status = (
                f"{case_label} round {len(loads) + 1}/{args.rounds}: {line} (other processes: {max(noise):.2f} cores"
            )
            if max(noise) > args.max_foreign_load and retries > 0:
                retries -= 1
                log(f"  {status}; busy machine, repeating)")
                continue
            for kind, value in rate.items():
                rates[kind].append(value)
                teardowns[kind].append(teardown[kind])
                whole_rates[kind].append(whole[kind])
            loads.append(max(noise))
            log(f"  {status})")
    finally:
        for worker in workers.values():
            worker.close()
    result = {**spec, "infos": infos, "rates": rates, "teardown_seconds": teardowns, "foreign_load": loads}
    result["median"] = {kind: statistics.median(values) for kind, values in rates.items()}
    result["whole_call_rates"] = whole_rates
    if "timm" in rates:
        result["ratio"] = statistics.median(k / t for k, t in zip(rates["keras"], rates["timm"], strict=True))
        result["whole_call_ratio"] = statistics.median(
            k / t for k, t in zip(whole_rates["keras"], whole_rates["timm"], strict=True)
        )
    return result


def fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def result_row(result):
    infos, median = result["infos"], result["median"]
    xla = result["xla"] if result["task"] != "savedmodel" else "as exported"
    if "xla" in infos["keras"]:
        xla = f"{xla} ({'on' if infos['keras']['xla'] else 'off'})"
    timm_rss = infos["timm"]["peak_rss_mb"] if "timm" in infos else None
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
        lines += ["", "Versions: " + "; ".join(versions.values()) + f". CPU: {cpu_name()}."]
    return lines


def print_report(lines, results, json_path=None):
    """Prints the report's lines and, with `--json PATH`, writes the results there (atomically)."""
    print("\n".join(lines))
    if json_path:
        tmp = f"{json_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, json_path)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x {len(names)}"
    except (OSError, IndexError):
        import platform

        return platform.processor() or platform.machine()


def parse_list(choices):
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated), got {text!r}")
        return values

    return parse


def parse_env(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m crossvit_keras.bench",
        description="Inference and training speed and peak memory of a CrossViT variant; with --reference "
        "side by side with timm's, alternating rounds.",
    )
    parser.add_argument("--model", default="crossvit_15_240", help="variant (timm name); default crossvit_15_240")
    parser.add_argument("--batch-size", type=positive, default=32, help="inference batch size (default 32)")
    parser.add_argument("--train-batch-size", type=positive, default=16, help="training batch size (default 16)")
    parser.add_argument("--tasks", type=parse_list(TASKS), default=list(TASKS[:3]), help="predict,savedmodel,fit")
    parser.add_argument("--dtypes", type=parse_list(DTYPES), default=list(DTYPES), help="float32,mixed_bfloat16")
    parser.add_argument(
        "--xla",
        type=parse_list(XLA_MODES),
        default=["off", "on"],
        help="jit_compile of predict/fit: default (model.compile's choice), off, on; default off,on",
    )
    parser.add_argument("--rounds", type=positive, default=5, help="timed rounds per case (default 5)")
    parser.add_argument("--steps", type=positive, default=2, help="batches per round (default 2)")
    parser.add_argument("--warmup", type=positive, default=1, help="untimed rounds first (default 1)")
    parser.add_argument(
        "--threads", type=positive, default=len(os.sched_getaffinity(0)), help="intra-op threads of both frameworks"
    )
    parser.add_argument("--inter-op-threads", type=positive, help="TensorFlow's inter-op threads (default: TF's)")
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.25,
        help="repeat a round in which other processes used more CPU cores than this (default 0.25)",
    )
    parser.add_argument("--retries", type=int, default=10, help="repeated rounds allowed per case (default 10)")
    parser.add_argument(
        "--patience", type=float, default=60.0, help="seconds to wait for a quiet machine before a round (default 60)"
    )
    parser.add_argument("--reference", action="store_true", help="also run timm's model, alternating rounds")
    parser.add_argument(
        "--reference-python",
        default=os.environ.get("CROSSVIT_REFERENCE_PYTHON", DEFAULT_REFERENCE_PYTHON),
        help="python with torch and timm (default $CROSSVIT_REFERENCE_PYTHON or the reference venv's)",
    )
    parser.add_argument("--keras-env", type=parse_env, action="append", default=[], help="KEY=VALUE for Keras workers")
    parser.add_argument("--macs", action="store_true", help="only print params and GMACs of all variants vs timm")
    parser.add_argument("--json", help="also write the results to this JSON file")
    from crossvit_keras import bench_gpu, fusion_scaling

    fusion_scaling.add_arguments(parser)
    bench_gpu.add_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.keras_env = dict(args.keras_env)
    from crossvit_keras import configs

    if args.fusion_scaling:
        from crossvit_keras import fusion_scaling

        return fusion_scaling.run(args)
    if args.gpu:
        from crossvit_keras import bench_gpu

        return bench_gpu.run(args)
    if args.macs:
        lines, ok = macs_table(list(configs.VARIANTS))
        print("\n".join(lines) + "\n", flush=True)
        from crossvit_keras import ablations

        ablation_lines, ablations_ok = ablations.tables(log)  # Tables 6 and 7 of the paper
        print("\n".join(ablation_lines))
        return 0 if ok and ablations_ok else 1
    args.model = configs.canonical_name(args.model)
    if args.reference:
        args.reference_python = os.path.expanduser(args.reference_python)
        if not os.access(args.reference_python, os.X_OK):
            raise SystemExit(
                f"--reference needs a python with torch and timm; {args.reference_python} is not executable. "
                "Create the reference venv or pass --reference-python PATH."
            )
    if set(args.tasks) & set(DEPLOY_TASKS):  # deployment runtimes side by side: crossvit_keras/bench_deploy.py
        return __import__("crossvit_keras.bench_deploy").bench_deploy.run(args)
    try:
        import crossvit_keras.export  # noqa: F401
    except ImportError:
        if "savedmodel" in args.tasks:
            log("crossvit_keras.export is not importable: skipping the savedmodel task")
            args.tasks = [t for t in args.tasks if t != "savedmodel"]

    macs_lines, _ = macs_table([args.model])
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
        log(f"{label}: building and warming up")
        try:
            results.append(measure_case(spec, args, label))
        except RuntimeError as error:
            log(f"{label}: FAILED, skipped: {error}")
    lines = report(results, args)
    print_report(lines, results, args.json)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit(main())
