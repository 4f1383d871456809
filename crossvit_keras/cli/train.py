"""`crossvit-keras train` / `crossvit-keras eval` (and `recipes/imagenet.py`): DeiT's recipe
(paper Table 9) under tf.distribute, from flags with the names and defaults of DeiT's and the
official CrossViT's main.py (and timm's train.py for --scale, --ratio, --hflip).

    crossvit-keras train --data-set IMNET --data-path /data/imagenet --strategy mirrored
    crossvit-keras eval --data-path /data/imagenet --model crossvit_15_240 --pretrained

Exit status: 0 done, 1 a NaN loss or a failed write during training, 2 bad input (one `error:`
line, before anything is trained), 130 interrupted (Ctrl-C: one line saying where the last
checkpoint is and the command that resumes from it). A run that fails or is interrupted before
its first checkpoint removes the output directory it created.
"""

import _thread
import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
import threading

from crossvit_keras.training.config import PRECISIONS, TrainConfig
from crossvit_keras.training.distribute import STRATEGIES

DESCRIPTION = "Train or evaluate CrossViT with DeiT's recipe (paper Table 9) under tf.distribute."


def build_parser(prog="crossvit-keras train", description=DESCRIPTION):
    """The recipe's flags, with TrainConfig's names (dashes for underscores) and defaults."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--batch-size", type=int, help="batch size per replica")
    p.add_argument("--epochs", type=int)
    g = p.add_argument_group("model")
    g.add_argument("--model", help="timm, paper or official name, e.g. crossvit_15")
    g.add_argument("--input-size", type=int, help="small branch's input size (default: the variant's)")
    g.add_argument("--drop", type=float, help="dropout before the heads")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate")
    fusions = ("none", "all_attention", "class_token", "pairwise", "cross_attention")
    g.add_argument("--fusion", choices=fusions, help="paper Table 6 (default: the variant's)")
    g.add_argument("--model-overrides", type=json.loads, help="JSON dict of create_model overrides")
    g.add_argument("--remat", action="store_true", help="recompute the blocks' activations in the backward pass")
    g.add_argument(
        "--lora-rank", type=int, help="LoRA of this rank on the attention and MLP projections, backbone frozen; 0: off"
    )
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--opt", choices=("adamw", "sgd"), help="sgd: timm's (nesterov, L2 decay)")
    g.add_argument("--opt-eps", type=float)
    g.add_argument("--opt-betas", type=float, nargs=2, help="default 0.9 0.999")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--clip-grad", type=float, help="clip the global gradient norm")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--sched", choices=("cosine",))
    g.add_argument("--lr", type=float, help="for a global batch of 512; scaled linearly")
    g.add_argument("--unscale-lr", action="store_true", help="use --lr as is, not scaled by global batch / 512")
    g.add_argument("--warmup-lr", type=float)
    g.add_argument("--min-lr", type=float)
    g.add_argument("--warmup-epochs", type=int)
    g = p.add_argument_group("fine-tuning and large batches")
    g.add_argument(
        "--grad-accum-steps",
        type=int,
        help="N: each update averages N micro-batches of --batch-size per replica (the batch of N x more devices; "
        "--lr is scaled by the effective batch)",
    )
    g.add_argument("--model-ema", action="store_true", help="keep an exponential moving average of the weights")
    g.add_argument("--model-ema-decay", type=float, help="its decay per update (DeiT: 0.99996)")
    g.add_argument(
        "--model-ema-export", action="store_true", help="with --model-ema: export the EMA weights (the default)"
    )
    g.add_argument(
        "--no-model-ema-export", action="store_false", dest="model_ema_export", help="export the raw weights"
    )
    g.add_argument("--layer-decay", type=float, help="layer-wise lr decay (timm's; e.g. 0.75 for fine-tuning)")
    g = p.add_argument_group("augmentation")
    g.add_argument("--aa", help="RandAugment config (timm's), or none")
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("--train-interpolation", choices=("bicubic",))
    g.add_argument("--repeated-aug", action="store_true", help="default: on for crossvit_18*")
    g.add_argument("--no-repeated-aug", action="store_false", dest="repeated_aug")
    g.add_argument("--reprob", type=float, help="random erasing probability")
    g.add_argument(
        "--aug-device",
        choices=("auto", "host", "accelerator"),
        help="where RandAugment, random erasing, Mixup/CutMix and normalisation run: host (tf.data), "
        "accelerator (batched in the training step; the host only decodes, crops, resizes, flips), "
        "auto (default: accelerator when the replicas are GPUs or TPUs, else host)",
    )
    g.add_argument("--remode", choices=("pixel",))
    g.add_argument("--recount", type=int, choices=(1,))
    g.add_argument("--scale", type=float, nargs=2, help="random resized crop area range")
    g.add_argument("--ratio", type=float, nargs=2, help="random resized crop aspect range")
    g.add_argument("--hflip", type=float, help="horizontal flip probability")
    g.add_argument("--crop-pct", type=float, help="evaluation centre crop fraction (224/256)")
    g.add_argument("--mixup", type=float, help="mixup alpha; 0 turns it off")
    g.add_argument("--cutmix", type=float, help="cutmix alpha; 0 turns it off")
    g.add_argument("--mixup-prob", type=float)
    g.add_argument("--mixup-switch-prob", type=float)
    g.add_argument("--mixup-mode", choices=("batch",))
    g = p.add_argument_group("data and output")
    g.add_argument(
        "--data-set", help="IMNET (image folder), CIFAR10, CIFAR100, a tfds name, or shards (crossvit-keras prepare)"
    )
    g.add_argument("--data-path", help="IMNET: DIR with train/ and val/; tfds: its data_dir; shards: their folder")
    g.add_argument("--tfds-manual-dir", help="imagenet2012: the folder with the ILSVRC2012 tars")
    g.add_argument("--output_dir", "--output-dir", help="default: runs/<model>")
    g.add_argument("--seed", type=int)
    g.add_argument("--resume", help="a checkpoint.keras to continue from; with --eval: the model")
    g.add_argument("--finetune", help="a .keras model or a released checkpoint; new head")
    g.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        help="start from (--eval: evaluate) the ImageNet-1k weights on the hub; or a hub id / checkpoint",
    )
    g.add_argument("--eval", action="store_true", help="only evaluate (--resume FILE, or OUTPUT_DIR/model.keras)")
    g.add_argument("--no-saved-model", action="store_true", help="do not export saved_model/1/ after training")
    g = p.add_argument_group("distribution and speed")
    g.add_argument("--strategy", choices=STRATEGIES)
    g.add_argument("--tpu", help="TPU name or address for --strategy tpu ('' = local)")
    g.add_argument("--mixed-precision", choices=tuple(PRECISIONS))
    g.add_argument(
        "--jit-compile",
        choices=("auto", "on", "off"),
        help="XLA; auto: Keras' choice, and under mirrored strategies on when the replicas are GPUs",
    )
    g.add_argument("--steps-per-execution", type=int)
    g.add_argument("--cpu-devices", type=int, help="split the CPU into N logical devices (testing)")
    g.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        help="Keras progress: 1 = bar, 2 = one line per epoch (default: 1 on a terminal, else 2)",
    )
    g = p.add_argument_group("prepared data and scale-out")
    g.add_argument(
        "--data-service",
        help="grpc://HOST:PORT of a tf.data service dispatcher (crossvit-keras data-service): its workers "
        "run the training input pipeline",
    )
    p.set_defaults(**dataclasses.asdict(TrainConfig()))
    return p


def config_from_args(args):
    """The parsed flags as a TrainConfig."""
    return TrainConfig(**vars(args))


def main(argv=None, prog="crossvit-keras train", evaluate_only=False):
    """Runs the command line; returns the process exit code."""
    from crossvit_keras.logs import setup_logging

    argv = sys.argv[1:] if argv is None else list(argv)
    description = "Evaluate a CrossViT on a validation set." if evaluate_only else DESCRIPTION
    args = build_parser(prog, description).parse_args(argv)
    if evaluate_only:
        args.eval = True
    config = config_from_args(args)
    setup_logging()
    run = None
    try:
        with _interrupts_delivered():
            try:  # every check happens here, before any training: a mistake is one line
                from crossvit_keras.training.callbacks import CheckpointWriteError, NonFiniteLoss
                from crossvit_keras.training.distribute import configure_cpu_devices
                from crossvit_keras.training.run import Run

                if config.cpu_devices:
                    configure_cpu_devices(config.cpu_devices)
                run = Run(config)
                job = run.prepare_eval() if config.eval else run.prepare_train()
            except (ValueError, FileNotFoundError) as error:
                return _failed(run, 2, f"error: {error}")
            try:
                job()
            except (NonFiniteLoss, CheckpointWriteError) as error:
                return _failed(run, 1, f"error: {error}")
            except OSError as error:  # writing model.keras or a JSON file after training (a full disk, ...)
                return _failed(run, 1, f"error: {error}; the checkpoints are kept: rerun the same command to finish.")
    except KeyboardInterrupt:
        return _failed(run, 130, lambda: _interrupted(run, config, f"{prog} {shlex.join(argv)}"))
    except BaseException:
        if run is not None:
            run.remove_unused_output()
        raise
    return 0


def _failed(run, code, message):
    """Removes the output directory of a run that wrote nothing useful in it, prints the one line
    `message` (or what it returns) on stderr, returns `code`."""
    if run is not None:
        run.remove_unused_output()
    print(message() if callable(message) else message, file=sys.stderr, flush=True)
    return code


def _interrupted(run, config, command):
    """The line after Ctrl-C: where the last checkpoint is and the command that resumes from it."""
    from crossvit_keras.training.callbacks import checkpoint_files
    from crossvit_keras.training.run import output_directory

    if config.eval:
        return f"interrupted: the evaluation stopped, nothing written; rerun it with: {command}"
    if run is not None:
        last = run.last_checkpoint()
    else:  # stopped while setting up
        last = next(((path, None) for path in checkpoint_files(output_directory(config))), None)
    if last is None:
        return f"interrupted before the first checkpoint, nothing to resume; start again with: {command}"
    path, epochs = last
    done = "" if epochs is None else f" ({epochs} epoch{'s' if epochs != 1 else ''} done)"
    return f"interrupted; the last checkpoint is {path}{done}; resume from it with: {command}"


@contextlib.contextmanager
def _interrupts_delivered():
    """Ctrl-C's KeyboardInterrupt, delivered even where Python drops it: raised inside a
    garbage-collection callback (jax, which Keras imports, installs one) or a __del__ method, it
    is printed as "Exception ignored" and lost, and training went on. Such a one is raised again
    in the main thread a moment later, in the code that was running."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if issubclass(unraisable.exc_type, KeyboardInterrupt):  # from another thread: here, it would be dropped again
            resend = threading.Timer(0.01, _thread.interrupt_main)
            resend.daemon = True
            resend.start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
