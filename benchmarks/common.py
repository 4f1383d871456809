"""What the benchmark scripts of this folder share (not a benchmark itself): the training recipe,
random inputs, the CPU-time and peak-memory probes, the worker processes and their protocol, the
Keras and timm runners of one case, the alternating rounds of `measure_case`, the flags and the
report printer.

The scripts import it plainly (`import common`: Python puts a script's folder on sys.path). It
imports only the standard library at module level: the timm workers run the scripts with the
reference interpreter (`--reference-python`, torch and timm, no TensorFlow), and the package is
imported only inside the functions that run on the Keras side.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RECIPE = {"learning_rate": 5e-4, "weight_decay": 0.05, "drop_path_rate": 0.1}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # crossvit_keras.data.preprocessing's (not importable in the timm worker)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_REFERENCE_PYTHON = os.path.join("~", ".cache", "crossvit-reference", "bin", "python")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # put on the Keras workers' PYTHONPATH


# ---------------------------------------------------------------------------------------------
# Model arithmetic (crossvit_keras.ablations.count_macs counts the multiply-accumulates).


def macs_table(names):
    """Markdown rows: params and GMACs per variant against timm's (each must agree within 1%)."""
    import crossvit_keras
    from crossvit_keras import configs
    from crossvit_keras.ablations import count_macs

    rows, ok = [], True
    for name in names:
        config = configs.resolve_config(name)
        params = crossvit_keras.create_model(name).count_params()
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
    """The Keras side of one case of speed.py; `run()` times `steps` batches and returns seconds.

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
            from crossvit_keras.export.saved_model import export_saved_model

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
    """The training application's recipe (crossvit_keras.training.run: AdamW without weight decay on
    biases, norms, CLS tokens and position embeddings; soft-target cross-entropy; top-1/top-5
    metrics) at the base learning rate."""
    from crossvit_keras.training.run import build_optimizer, compile_model

    optimizer = build_optimizer(model, "adamw", RECIPE["learning_rate"], RECIPE["weight_decay"])
    compile_model(model, optimizer, model.num_classes, jit_compile, steps_per_execution=1)


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


def script_command(python, script, *args):
    """The command line that runs one of this folder's scripts by its path with `python`. The
    script's folder comes first on the child's sys.path (so `import common` works there too)."""
    return [python, os.path.abspath(script), *map(str, args)]


def keras_env(env=None):
    """The environment of a Keras worker: the repository on PYTHONPATH, TensorFlow's C++ logs quiet."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}


class Worker:
    """A worker process seen from the parent: `python SCRIPT --worker KIND SPEC`, where SCRIPT's
    `__main__` passes the two to `worker_main` (with its runners)."""

    def __init__(self, kind, spec, python, script, env=None):
        self.kind = kind
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            script_command(python, script, "--worker", kind, json.dumps(spec)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=keras_env(env) if kind.startswith("keras") else {**os.environ, **(env or {})},
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


def worker_argv(argv=None):
    """(kind, spec) when the command line is `--worker KIND SPEC`, else None."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--worker":
        return argv[1], json.loads(argv[2])
    return None


# ---------------------------------------------------------------------------------------------
# The parent: CPU time, foreign load, alternating rounds.


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


def measure_case(spec, args, case_label, workers):
    """Runs one case: its workers ({"keras": Worker, "timm": Worker} already started), alternating
    rounds. Returns a result dict.

    A round in which other processes used more than `args.max_foreign_load` cores is repeated
    (at most `args.retries` times per case); the rounds kept and their foreign load are reported."""
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


# ---------------------------------------------------------------------------------------------
# Reports.


def fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


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


# ---------------------------------------------------------------------------------------------
# Flags.


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


def add_model_argument(parser):
    parser.add_argument("--model", default="crossvit_15_240", help="variant (timm name); default crossvit_15_240")


def add_rounds_arguments(parser):
    """The flags of `measure_case`'s alternating rounds (speed.py, gpu.py)."""
    parser.add_argument("--rounds", type=positive, default=5, help="timed rounds per case (default 5)")
    parser.add_argument("--steps", type=positive, default=2, help="batches per round (default 2)")
    parser.add_argument("--warmup", type=positive, default=1, help="untimed rounds first (default 1)")
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


def add_threads_argument(parser):
    parser.add_argument(
        "--threads", type=positive, default=len(os.sched_getaffinity(0)), help="intra-op threads of both frameworks"
    )


def add_reference_arguments(parser, flag=True):
    """--reference-python (the interpreter of timm's side) and, with `flag`, --reference."""
    if flag:
        parser.add_argument("--reference", action="store_true", help="also run timm's model, alternating rounds")
    parser.add_argument(
        "--reference-python",
        default=os.environ.get("CROSSVIT_REFERENCE_PYTHON", DEFAULT_REFERENCE_PYTHON),
        help="python with torch and timm (default $CROSSVIT_REFERENCE_PYTHON or the reference venv's)",
    )


def add_keras_env_argument(parser):
    parser.add_argument("--keras-env", type=parse_env, action="append", default=[], help="KEY=VALUE for Keras workers")


def add_json_argument(parser):
    parser.add_argument("--json", help="also write the results to this JSON file")
