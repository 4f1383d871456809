"""Multi-GPU training and inference speed: the one command a GPU host runs.

    python benchmarks/gpu.py                                 # every GPU count 1, 2, 4, ... up to all
    python benchmarks/gpu.py --gpu-counts 1,8 --json gpu.json

(from the repository root; `--help` lists the flags). For each GPU count n, dtype (float32,
mixed_bfloat16, mixed_float16) and XLA (off, on): one worker process trains `--model` (default
crossvit_15_240, the paper's Table 2 model) with the recipe's compile (AdamW, soft-target
cross-entropy, drop path 0.1; Keras wraps the optimizer in a LossScaleOptimizer under
mixed_float16) under `tf.distribute.MirroredStrategy` over the first n GPUs, at the paper's
per-GPU batch of 128, on one synthetic global batch repeated by tf.data (the input pipeline is not
measured), and reports training img/s; inference is `model.predict` at batch 64 per GPU (the
paper's Table 2 setting: CrossViT-15 at 640 img/s on one V100). XLA on under MirroredStrategy uses
the per-replica split of `crossvit_keras.training.compat.MirroredXLA`.

Does the input pipeline starve the GPUs? Training (`fit`) is measured once per `--gpu-inputs`:
`synthetic` (the batch above), and the real training pipeline (crossvit_keras.data.train_dataset
with DeiT's augmentation: random resized crop, flip, RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25, Mixup 0.8 / CutMix 1.0, smoothing 0.1) reading a folder of JPEGs (`--data-path`,
default: held-out photographs with ImageNet's spread of sizes made in a temporary folder) with the
batch augmentations on the host (`host`) or in the training step on the device (`accelerator`),
and reading prepared shards of that folder (`shards`, written by `crossvit-keras prepare` to a
temporary folder, augmentations on the device). Every fit case keeps one iterator over its data
across the rounds (as Keras' fit does across epochs), and the report gives each real input's
img/s over the synthetic one's on the same devices: near 1.0 the pipeline keeps up; well below,
it starves them (more CPU cores, prepared shards, the accelerator mode, or tf.data service workers).

With `--reference` and a reference python whose torch sees CUDA, timm's same variant runs side by
side on one GPU (eager, torch.autocast for the mixed dtypes with a GradScaler for float16, timed
with torch.cuda.synchronize), in alternating rounds; timm has no XLA, so its figure is the same
for both XLA rows. Multi-GPU timm (DistributedDataParallel under torchrun) is not run.

Without a GPU it says so and measures the CPU as one device with a small batch (`--gpu-batch-size`,
default 128 on GPUs and 4 on the CPU), so the command is tested on CPU-only machines.

Like speed.py, this file imports only the standard library and `common` at module level: the timm
worker runs it (`python benchmarks/gpu.py --worker timm-gpu SPEC`) without TensorFlow.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import common

DTYPES = ("float32", "mixed_bfloat16", "mixed_float16")
TASKS = ("fit", "predict")
INPUTS = ("synthetic", "host", "accelerator", "shards")  # what fit trains on (predict: synthetic)
CLASSES = 1000  # the model's head, whatever the folder's classes (their labels are below 1000)
PAPER_INFERENCE = "the paper (Table 2): crossvit_15 inference 640 img/s on one V100 at batch 64"
GPU_BATCH = {"fit": 128, "predict": 64}  # per GPU: the paper's training recipe and Table 2
CPU_BATCH = 4


class KerasGpuRunner:
    """One case on n GPUs (or the CPU when n is 0) under MirroredStrategy; `run()` times `steps`
    batches of the global batch with the same clock as common.KerasRunner."""

    def __init__(self, spec):
        import keras
        import numpy as np
        import tensorflow as tf

        import crossvit_keras

        gpus = tf.config.list_logical_devices("GPU")[: spec["gpus"]]
        devices = [d.name for d in gpus] if spec["gpus"] else ["/cpu:0"]
        strategy = tf.distribute.MirroredStrategy(devices)
        task, batch, steps = spec["task"], spec["batch_size"], spec["steps"]
        jit = {"off": False, "on": True}[spec["xla"]]
        with strategy.scope():
            overrides = {"drop_path_rate": common.RECIPE["drop_path_rate"]} if task == "fit" else {}
            model = crossvit_keras.create_model(spec["model"], dtype=spec["dtype"], **overrides)
            if task == "fit":
                common.compile_for_training(model, jit)
            else:
                model.compile(jit_compile=jit)
        size = model.image_size
        self.marks = {}
        clock = common.clock_callback(keras, self.marks)
        if task == "fit":
            # one step on synthetic (normalised float) images builds the optimizer and the metrics
            synthetic = training_data(strategy, {**spec, "input": "synthetic"}, size, model)
            model.fit(synthetic, steps_per_epoch=1, epochs=1, verbose=0)
            data = training_data(strategy, spec, size, model)
            model.make_train_function(force=True)  # with the device augmentations if installed
            iterator = iter(data)  # one pipeline for all rounds, as fit keeps it across epochs

            def run():
                self.marks["begin"] = time.perf_counter()
                for _ in range(steps):
                    logs = model.train_function(iterator)
                float(logs["loss"])  # waits for the last step
                self.marks["end"] = time.perf_counter()

            self._run = run
        else:
            data = tf.data.Dataset.from_tensors(common.random_images(np, batch, size)).repeat()
            data = data.prefetch(tf.data.AUTOTUNE)
            self._run = lambda: model.predict(data, steps=steps, verbose=0, callbacks=[clock()])
        self.info = {
            "params": model.count_params(),
            "version": f"keras {keras.__version__}, tf {tf.__version__}",
            "devices": devices,
            "xla": bool(model.jit_compile),
        }

    run = common.KerasRunner.run


def training_data(strategy, spec, image_size, model):
    """The fit case's distributed data: one synthetic global batch repeated, or the training
    pipeline over spec["data_path"] (a folder) or spec["shards_path"] (prepared shards); with
    input "accelerator" or "shards" the batch augmentations become the first stage of the
    model's train step."""
    import numpy as np
    import tensorflow as tf

    batch, kind = spec["batch_size"], spec["input"]
    if kind == "synthetic":
        images, labels = common.random_images(np, batch, image_size), common.one_hot_labels(np, batch, CLASSES)
        data = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(tf.data.AUTOTUNE)
        return strategy.experimental_distribute_dataset(data)
    from crossvit_keras import data as pipelines

    on_device = kind in ("accelerator", "shards")
    source = ("shards", spec["shards_path"]) if kind == "shards" else ("IMNET", spec["data_path"])
    split = pipelines.open_dataset(*source, splits=("train",)).train
    mixup = pipelines.augment.MixupCutmix(CLASSES)  # DeiT's: Mixup 0.8, CutMix 1.0, smoothing 0.1
    if on_device:
        pipelines.augment_on_device(model, pipelines.device_augment(image_size, mixup=mixup))

    def make(context):
        per_replica = context.get_per_replica_batch_size(batch)
        aug_device = "accelerator" if on_device else "host"
        return pipelines.train_dataset(
            split, image_size, per_replica, CLASSES, mixup=mixup, input_context=context, aug_device=aug_device
        )

    return strategy.distribute_datasets_from_function(make)


class TimmGpuRunner:
    """timm's side on one CUDA GPU, eager, as timm's users train and run it."""

    def __init__(self, spec):
        import numpy as np
        import timm
        import torch
        from timm.loss import SoftTargetCrossEntropy

        self.torch = torch
        task, batch, steps = spec["task"], spec["batch_size"], spec["steps"]
        train = task == "fit"
        device = torch.device("cuda:0")
        drop_path = common.RECIPE["drop_path_rate"] if train else 0.0
        model = timm.create_model(spec["model"], drop_path_rate=drop_path).to(device)
        size = model.default_cfg["input_size"][-1]
        dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(spec["dtype"])
        autocast = torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None)
        x = torch.from_numpy(common.random_images(np, batch, size, channels_first=True)).to(device)
        self.info = {
            "params": sum(p.numel() for p in model.parameters()),
            "version": f"timm {timm.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name(0)}",
        }
        if train:
            model.train()
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=common.RECIPE["learning_rate"], weight_decay=common.RECIPE["weight_decay"]
            )
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            loss_fn = SoftTargetCrossEntropy()
            y = torch.from_numpy(common.one_hot_labels(np, batch)).to(device)

            def run():
                for _ in range(steps):
                    with autocast:
                        loss = loss_fn(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
        else:
            model.eval()

            def run():
                with torch.inference_mode(), autocast:
                    for _ in range(steps):
                        model(x)

        self._run = run

    def run(self):
        self.torch.cuda.synchronize()
        start = time.perf_counter()
        self._run()
        self.torch.cuda.synchronize()
        return time.perf_counter() - start, 0.0


RUNNERS = {"keras-gpu": KerasGpuRunner, "timm-gpu": TimmGpuRunner}


# ---------------------------------------------------------------------------------------------
# The parent.


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu.py",
        description="Multi-GPU training and inference img/s per GPU count under MirroredStrategy; with "
        "--reference timm's on one GPU. Without a GPU it measures the CPU as one device.",
    )
    common.add_model_argument(parser)
    parser.add_argument("--gpu-counts", help="comma-separated GPU counts (default 1, 2, 4, ... up to all GPUs)")
    parser.add_argument("--gpu-dtypes", default=",".join(DTYPES), help="default float32,mixed_bfloat16,mixed_float16")
    parser.add_argument("--gpu-tasks", default=",".join(TASKS), help="fit,predict (default both)")
    parser.add_argument("--gpu-xla", default="off,on", help="off,on (default both)")
    parser.add_argument("--gpu-batch-size", type=int, help="per-device batch (default fit 128, predict 64; CPU 4)")
    parser.add_argument(
        "--gpu-inputs",
        default=",".join(INPUTS),
        help="what fit trains on: synthetic, host, accelerator, shards (default all; predict: synthetic)",
    )
    parser.add_argument(
        "--data-path", help="a DeiT-layout folder of JPEGs for the real inputs (default: held-out photographs)"
    )
    parser.add_argument("--images", type=int, default=512, help="photographs to make without --data-path")
    common.add_rounds_arguments(parser)
    common.add_reference_arguments(parser)
    common.add_keras_env_argument(parser)
    common.add_json_argument(parser)
    return parser


def count_gpus():
    """Physical GPUs TensorFlow sees (listing them configures no logical device)."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def torch_has_cuda(python):
    code = "import torch, timm; print(torch.cuda.is_available())"
    try:
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except OSError:
        return False
    return result.returncode == 0 and result.stdout.strip().endswith("True")


def gpu_counts(text, available):
    if text:
        counts = sorted({int(v) for v in text.split(",") if v.strip()})
        bad = [n for n in counts if n < 1 or n > available]
        if bad:
            raise ValueError(f"--gpu-counts {text}: this machine has {available} GPU(s); choose counts from 1 to it")
        return counts
    counts, n = [], 1
    while n <= available:
        counts.append(n)
        n *= 2
    return counts if counts[-1] == available else [*counts, available]


def choices(text, allowed, flag):
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"{flag} {text}: choose from {', '.join(allowed)} (comma-separated)")
    return values


def row(result):
    n, rates = result["gpus"], result["median"]
    keras_rate, timm_rate = rates["keras"], rates.get("timm")
    per_device = keras_rate / max(n, 1)
    cells = [
        n or "CPU",
        result["task"],
        result["input"],
        result["dtype"],
        f"{result['xla']} ({'on' if result['infos']['keras']['xla'] else 'off'})",
        result["batch_size"],
        f"{keras_rate:.1f}",
        f"{per_device:.1f}",
        "-" if timm_rate is None else f"{timm_rate:.1f}",
        "-" if timm_rate is None else f"{keras_rate / timm_rate:.2f}",
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def starvation_lines(results, on_gpus=True):
    """Each real input's img/s over the synthetic data's in the same setting (GPUs, dtype, XLA);
    for `accelerator` and `shards` the step also runs the batch augmentations."""
    synthetic = {
        (r["gpus"], r["dtype"], r["xla"]): r["median"]["keras"]
        for r in results
        if r["task"] == "fit" and r["input"] == "synthetic"
    }
    lines = []
    for r in results:
        key = (r["gpus"], r["dtype"], r["xla"])
        if r["task"] != "fit" or r["input"] == "synthetic" or key not in synthetic:
            continue
        ratio = r["median"]["keras"] / synthetic[key]
        r["real_over_synthetic"] = ratio
        verdict = "keeps up" if ratio >= 0.9 else "starves the device"
        lines.append(
            f"- {key[0] or 'CPU'} x {key[1]} xla={key[2]}: {r['input']} pipeline {r['median']['keras']:.1f} img/s = "
            f"{ratio:.2f} x synthetic" + (f": the input pipeline {verdict}" if on_gpus else "")
        )
    if lines and not on_gpus:
        lines.append("(no GPU: the pipeline and the model share the CPU's cores, so these ratios are no GPU figure)")
    return ["", "Real input / synthetic (fit):", *lines] if lines else []


def prepare_inputs(args, inputs, scratch):
    """The folder of JPEGs (args.data_path or held-out photographs) and, for `shards`, its shards."""
    paths = {"data_path": args.data_path, "shards_path": None}
    if not set(inputs) - {"synthetic"}:
        return paths
    if not args.data_path:
        from crossvit_keras.data.samples import make_photo_folder

        common.log(f"making {args.images} held-out photographs (300-900 px) in {scratch}")
        paths["data_path"] = make_photo_folder(os.path.join(scratch, "photos"), num_images=args.images)
    if "shards" in inputs:
        from crossvit_keras.data.shards import prepare_shards

        paths["shards_path"] = os.path.join(scratch, "shards")
        common.log(f"preparing shards of {paths['data_path']} in {paths['shards_path']}")
        prepare_shards("IMNET", paths["data_path"], paths["shards_path"], splits=("train",))
    return paths


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.keras_env = dict(args.keras_env)
    args.reference_python = os.path.expanduser(args.reference_python)
    from crossvit_keras import configs

    model = configs.canonical_name(args.model)
    try:
        dtypes = choices(args.gpu_dtypes, DTYPES, "--gpu-dtypes")
        tasks = choices(args.gpu_tasks, TASKS, "--gpu-tasks")
        xla_modes = choices(args.gpu_xla, ("off", "on"), "--gpu-xla")
        inputs = choices(args.gpu_inputs, INPUTS, "--gpu-inputs")
        available = count_gpus()
        counts = gpu_counts(args.gpu_counts, available) if available else [0]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not available:
        common.log(f"no GPU found: measuring the CPU as one device ({common.cpu_name()}), not a GPU figure")
        dtypes = [d for d in dtypes if d != "mixed_float16"]  # float16 matmuls have no fast CPU kernels
    reference = args.reference and available and torch_has_cuda(args.reference_python)
    if args.reference and not reference:
        common.log("--reference: timm runs only on a GPU here (torch with CUDA); skipped")
    fit_inputs = inputs if "fit" in tasks else []
    cases = [
        (n, t, d, x, i)
        for n in counts
        for t in tasks
        for d in dtypes
        for x in xla_modes
        for i in (fit_inputs if t == "fit" else ["synthetic"])
    ]
    scratch = tempfile.TemporaryDirectory(prefix="crossvit-gpu-bench-")
    paths = prepare_inputs(args, fit_inputs, scratch.name)
    results = []
    for index, (n, task, dtype, xla, source) in enumerate(cases, 1):
        per_device = args.gpu_batch_size or (GPU_BATCH[task] if n else CPU_BATCH)
        spec = {
            "model": model,
            "gpus": n,
            "task": task,
            "input": source,
            **paths,
            "dtype": dtype,
            "xla": xla,
            "batch_size": per_device * max(n, 1),
            "steps": args.steps,
            "warmup": args.warmup,
        }
        label = f"[{index}/{len(cases)}] {n or 'CPU'} x {task} {source} {dtype} xla={xla} batch {spec['batch_size']}"
        common.log(f"{label}: building and warming up")
        workers = {"keras": common.Worker("keras-gpu", spec, sys.executable, __file__, env=args.keras_env)}
        if reference and n == 1 and source == "synthetic":
            workers["timm"] = common.Worker("timm-gpu", spec, args.reference_python, __file__)
        try:
            results.append({**common.measure_case(spec, args, label, workers=workers), "gpus": n})
        except RuntimeError as error:
            common.log(f"{label}: FAILED, skipped: {error}")
    where = f"{available} GPU(s)" if available else f"no GPU: the CPU ({common.cpu_name()})"
    lines = [
        f"### {model} under MirroredStrategy, {where}; {args.rounds} rounds of {args.steps} batches "
        f"after {args.warmup} warm-up",
        "",
        "| GPUs | task | input | dtype | XLA | global batch | Keras img/s | per device | timm img/s (1 GPU) "
        "| Keras/timm |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
        *map(row, results),
        *starvation_lines(results, on_gpus=bool(available)),
        "",
        f"For comparison, {PAPER_INFERENCE}.",
    ]
    scratch.cleanup()
    if results:
        versions = {kind: info["version"] for kind, info in results[0]["infos"].items()}
        lines.append("Versions: " + "; ".join(versions.values()) + ".")
    common.print_report(lines, results, args.json)
    return 0 if len(results) == len(cases) else 1


if __name__ == "__main__":
    worker = common.worker_argv()
    if worker:
        common.worker_main(*worker, runners=RUNNERS)
    else:
        sys.exit(main())
