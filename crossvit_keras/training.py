"""Training and evaluation of CrossViT under tf.distribute with DeiT's recipe (paper Table 9).

The library behind `recipes/imagenet.py`: `main(argv)` runs a whole command line; the pieces
(`build_parser`, `build_optimizer`, `no_weight_decay_variables`; the strategies in
crossvit_keras.distribute, the callbacks and checkpoint files in crossvit_keras.callbacks) are
usable on their own.

    python recipes/imagenet.py --data-set IMNET --data-path /data/imagenet --strategy mirrored

Flags keep the names and defaults of DeiT's and the official CrossViT's main.py (and timm's
train.py for --scale, --ratio, --hflip), with the paper's values. An output directory gets:

    config.json          the resolved configuration (replicas in sync, global batch, scaled lr, ...)
    log.jsonl            one JSON line per epoch: loss, top1, top5, val_* (with val_top1_small_branch and
                         val_top1_large_branch: each branch's head alone), lr, images_per_second, ...
    tensorboard/         TensorBoard logs
    checkpoint.keras     model + optimizer after the last finished epoch; a new run with the same
                         --output_dir continues from it (the optimizer step count included)
    checkpoint-previous.keras  the epoch before's, resumed from if checkpoint.keras is damaged
    model.keras          the final model
    saved_model/1/       the SavedModel for TF Serving (crossvit_keras.export)
    training_curves.png  loss, accuracy and learning rate per epoch
    results.json         the final evaluation: top1, top5, loss, top1_small_branch, top1_large_branch (each
                         branch's head alone), the same under val_* names, val_images, fit_seconds, ...
"""

import argparse
import json
import logging
import os
import sys
import time

from crossvit_keras import configs
from crossvit_keras.atomic import check_writable, save_model
from crossvit_keras.branches import BRANCH_METRICS
from crossvit_keras.callbacks import (
    CHECKPOINT,  # noqa: F401  (training.CHECKPOINT, as before the split)
    LOG,
    CheckpointWriteError,
    NonFiniteLoss,
    callback_classes,
    check_same_run,
    check_space,
    checkpoint_files,
    optimizer_step,
    read_config,
    resume,
    write_json,
)
from crossvit_keras.distribute import (
    STRATEGIES,
    configure_cpu_devices,
    describe_strategy,
    distribution_settings,
    is_chief,
    make_strategy,
    worker_index,
)

logger = logging.getLogger("crossvit_keras.training")

PRECISIONS = {"none": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
FINAL_MODEL = "model.keras"
# DeiT's RASampler repeats each image this many times.
REPEATS = 3
BRANCH_VAL_METRICS = tuple(f"val_{name}" for name in BRANCH_METRICS)


# ----------------------------------------------------------------------------- command line


def build_parser():
    p = argparse.ArgumentParser(
        prog="recipes/imagenet.py",
        description="Train or evaluate CrossViT with DeiT's recipe (paper Table 9) under tf.distribute.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--batch-size", type=int, default=64, help="batch size per replica")
    p.add_argument("--epochs", type=int, default=300)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="crossvit_15_240", help="timm, paper or official name, e.g. crossvit_15")
    g.add_argument("--input-size", type=int, default=None, help="small branch's input size (default: the variant's)")
    g.add_argument("--drop", type=float, default=0.0, help="dropout before the heads")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    fusions = ("none", "all_attention", "class_token", "pairwise", "cross_attention")
    g.add_argument("--fusion", default=None, choices=fusions, help="paper Table 6 (default: the variant's)")
    g.add_argument("--model-overrides", type=json.loads, default=None, help="JSON dict of create_model overrides")
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--opt", default="adamw", choices=("adamw", "sgd"), help="sgd: timm's (nesterov, L2 decay)")
    g.add_argument("--opt-eps", type=float, default=1e-8)
    g.add_argument("--opt-betas", type=float, nargs=2, default=None, help="default 0.9 0.999")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the global gradient norm")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--sched", default="cosine", choices=("cosine",))
    g.add_argument("--lr", type=float, default=5e-4, help="for a global batch of 512; scaled linearly")
    g.add_argument("--unscale-lr", action="store_true", help="use --lr as is, not scaled by global batch / 512")
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--warmup-epochs", type=int, default=30)
    g = p.add_argument_group("augmentation")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="RandAugment config (timm's), or none")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--train-interpolation", default="bicubic", choices=("bicubic",))
    g.add_argument("--repeated-aug", action="store_true", default=None, help="default: on for crossvit_18*")
    g.add_argument("--no-repeated-aug", action="store_false", dest="repeated_aug")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--remode", default="pixel", choices=("pixel",))
    g.add_argument("--recount", type=int, default=1, choices=(1,))
    g.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), help="random resized crop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), help="random resized crop aspect range")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--crop-pct", type=float, default=0.875, help="evaluation centre crop fraction (224/256)")
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha; 0 turns it off")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha; 0 turns it off")
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--mixup-mode", default="batch", choices=("batch",))
    g = p.add_argument_group("data and output")
    g.add_argument("--data-set", default="IMNET", help="IMNET (image folder), CIFAR10, CIFAR100 or a tfds name")
    g.add_argument("--data-path", default=None, help="IMNET: DIR with train/ and val/; tfds: its data_dir")
    g.add_argument("--tfds-manual-dir", default=None, help="imagenet2012: the folder with the ILSVRC2012 tars")
    g.add_argument("--output_dir", "--output-dir", default="", help="default: runs/<model>")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", default="", help="a checkpoint.keras to continue from; with --eval: the model")
    g.add_argument("--finetune", default="", help="a .keras model or a released checkpoint; new head")
    g.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=False,
        help="start from (--eval: evaluate) the ImageNet-1k weights on the hub; or a hub id / checkpoint",
    )
    g.add_argument("--eval", action="store_true", help="only evaluate (--resume FILE, or OUTPUT_DIR/model.keras)")
    g.add_argument("--no-saved-model", action="store_true", help="do not export saved_model/1/ after training")
    g = p.add_argument_group("distribution and speed")
    g.add_argument("--strategy", default="default", choices=STRATEGIES)
    g.add_argument("--tpu", default="", help="TPU name or address for --strategy tpu ('' = local)")
    g.add_argument("--mixed-precision", default="none", choices=tuple(PRECISIONS))
    g.add_argument(
        "--jit-compile",
        default="auto",
        choices=("auto", "on", "off"),
        help="XLA; auto: Keras' choice, and under mirrored strategies on when the replicas are GPUs",
    )
    g.add_argument("--steps-per-execution", type=int, default=1)
    g.add_argument("--cpu-devices", type=int, default=0, help="split the CPU into N logical devices (testing)")
    g.add_argument(
        "--verbose",
        type=int,
        default=None,
        choices=(0, 1, 2),
        help="Keras progress: 1 = bar, 2 = one line per epoch (default: 1 on a terminal, else 2)",
    )
    return p


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged, not the stream of the first call (a
    replaced and closed stdout, as under pytest's capture or a redirecting caller, would raise)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def setup_logging():
    """This package's log lines on stdout, once."""
    root = logging.getLogger("crossvit_keras")
    if not any(getattr(h, "_crossvit_keras", False) for h in root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        handler._crossvit_keras = True
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


# ----------------------------------------------------------------------------- model and optimizer


def no_weight_decay_variables(model):
    """timm's rule (DeiT, CrossViT): no weight decay on 1-D variables (biases, LayerNorm gamma and
    beta) nor on the CLS tokens and position embeddings (the model's no_weight_decay set)."""
    return [v for v in model.trainable_variables if len(v.shape) <= 1 or "cls_token" in v.path or "pos_embed" in v.path]


def build_optimizer(model, opt, learning_rate, weight_decay, *, momentum=0.9, eps=1e-8, betas=None, clip_grad=None):
    """AdamW (DeiT) or SGD (the paper's transfer runs), without weight decay where timm has none."""
    from crossvit_keras.optimizers import SGDL2, AdamW

    if opt == "adamw":
        beta_1, beta_2 = betas or (0.9, 0.999)
        optimizer = AdamW(
            learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=eps,
            global_clipnorm=clip_grad,
        )
    elif opt == "sgd":
        optimizer = SGDL2(
            l2=weight_decay, learning_rate=learning_rate, momentum=momentum, nesterov=True, global_clipnorm=clip_grad
        )
    else:
        raise ValueError(f"Unknown --opt {opt!r}; choose adamw or sgd.")
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


def transfer_weights(source, target, log=None):
    """Copies `source`'s weights into `target` by path (crossvit_keras.convert.assign_weights):
    position embeddings of another length are resized (bicubic), heads of another class count stay
    fresh; anything else that does not fit is an error listing every problem."""
    import numpy as np

    from crossvit_keras.convert import assign_weights

    return assign_weights(target, {w.path: np.asarray(w.numpy()) for w in source.weights}, log=log or logger.info)


def build_model(args, num_classes):
    """The CrossViT to train (call under strategy.scope()): a new one, or --finetune's weights with
    a new head (a .keras model, or a released timm / official checkpoint via crossvit_keras.convert)."""
    import keras

    import crossvit_keras
    from crossvit_keras import convert

    overrides = {"drop_rate": args.drop, "drop_path_rate": args.drop_path, **(args.model_overrides or {})}
    if args.input_size:
        overrides["image_size"] = args.input_size
    if args.fusion:
        overrides["fusion"] = args.fusion
    if args.pretrained:  # the hub's weights, converted (cached), new heads for the dataset's classes
        return crossvit_keras.create_model(args.model, num_classes=num_classes, pretrained=args.pretrained, **overrides)
    if not args.finetune:
        return crossvit_keras.create_model(args.model, num_classes=num_classes, **overrides)
    if args.finetune.endswith(".keras"):
        source = keras.models.load_model(args.finetune, compile=False)
        if not isinstance(source, crossvit_keras.CrossViT):
            raise ValueError(f"--finetune {args.finetune} is a {type(source).__name__}, not a CrossViT.")
        config = {**source.get_config(), "num_classes": num_classes, "dtype": None}
        config.update({k: v for k, v in overrides.items() if k in ("drop_rate", "drop_path_rate")})
        if args.input_size and args.input_size != source.image_size:
            config["image_sizes"] = configs.scaled_image_sizes(source.image_sizes, source.patch_sizes, args.input_size)
        model = crossvit_keras.CrossViT.from_config(config)
        transfer_weights(source, model)
        logger.info("--finetune: weights of %s loaded (%s)", args.finetune, source.name)
        return model
    model = crossvit_keras.create_model(args.model, num_classes=num_classes, **overrides)
    convert.load_weights(model, args.finetune, log=logger.info)
    logger.info("--finetune: released checkpoint %s loaded into %s", args.finetune, model.name)
    return model


def model_label(model):
    """The model's name for logs and plots: its variant, and what differs from that variant, e.g.
    "crossvit_tiny_240 (modified: embed_dims=(64,128) depths=((1,3,1),) ...)" for the quickstart's model."""
    variant = configs.VARIANTS.get(model.name)
    if variant is None:
        return model.name
    variant = {**configs.ARCHITECTURE_DEFAULTS, **variant}
    config = model.get_config()

    def plain(value):
        if isinstance(value, (list, tuple)):
            return tuple(plain(v) for v in value)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    changed = [k for k in configs.ARCHITECTURE if plain(config[k]) != plain(variant[k])]
    changes = [f"{k}={config[k]}".replace(" ", "") for k in changed]
    return f"{model.name} (modified: {' '.join(changes)})" if changes else model.name


def compile_model(model, optimizer, num_classes, jit_compile, steps_per_execution):
    import keras

    model.compile(
        optimizer=optimizer,
        # soft targets (MixUp/CutMix, smoothing); the evaluation's weights exclude padding and bad images
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[
            # the exact mean loss over the real images (Keras' own loss tracker weights every batch
            # by its size, padding included); it replaces val_loss in the logs
            keras.metrics.CategoricalCrossentropy(from_logits=True, name="ce"),
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


# ----------------------------------------------------------------------------- runs


def _mixup(args, num_classes):
    from crossvit_keras.augment import MixupCutmix

    return MixupCutmix(
        num_classes,
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        label_smoothing=args.smoothing,
    )


def check_args(args):
    """The cheap checks, before TensorFlow does anything: one clear line per mistake."""
    from crossvit_keras import augment

    args.model = configs.canonical_name(args.model)
    if args.verbose is None:  # progress bars on a terminal, plain lines in a log file or CI
        args.verbose = 1 if sys.stdout.isatty() else 2
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.eval:
        return
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}.")
    if not 0 <= args.warmup_epochs <= args.epochs:
        raise ValueError(f"--warmup-epochs must be in [0, --epochs={args.epochs}], got {args.warmup_epochs}.")
    if not 0 < args.scale[0] <= args.scale[1] <= 1:
        raise ValueError(f"--scale must be two area fractions 0 < min <= max <= 1, got {list(args.scale)}.")
    if not 0 < args.ratio[0] <= args.ratio[1]:
        raise ValueError(f"--ratio must be two aspect ratios 0 < min <= max, got {list(args.ratio)}.")
    augment.parse_rand_augment(args.aa)
    if _mixup(args, 2).active and args.batch_size % 2:
        raise ValueError(
            f"--batch-size {args.batch_size} is odd: MixUp/CutMix pair each image with another of the "
            "per-replica batch (timm requires an even batch); use an even --batch-size or --mixup 0 --cutmix 0."
        )
    if args.steps_per_execution < 1:
        raise ValueError(f"--steps-per-execution must be >= 1, got {args.steps_per_execution}.")
    if args.pretrained and args.finetune:
        raise ValueError("give --pretrained (the hub's weights) or --finetune FILE, not both.")
    for flag, path in (("--finetune", args.finetune), ("--resume", args.resume)):
        if path and not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: no such file.")


class Run:
    """Everything a training or evaluation run needs, prepared and checked before any training."""

    _evaluation = (None, None)

    def __init__(self, args):
        import keras
        import tensorflow as tf

        from crossvit_keras import data

        check_args(args)
        self.args = args
        self.strategy = make_strategy(args.strategy, args.tpu)
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = is_chief(self.strategy)
        logger.info("replicas in sync: %d (%s)", self.replicas, describe_strategy(self.strategy))
        keras.utils.set_random_seed(args.seed + worker_index(self.strategy))
        if PRECISIONS[args.mixed_precision]:
            keras.config.set_dtype_policy(PRECISIONS[args.mixed_precision])

        splits = ("val",) if args.eval else ("train", "val")
        self.dataset = data.open_dataset(args.data_set, args.data_path, args.tfds_manual_dir, splits)
        self.num_classes = self.dataset.num_classes
        self.global_batch = args.batch_size * self.replicas
        self.eval_batch = max(1, int(1.5 * args.batch_size))  # DeiT's validation batch
        self.val_steps = data.padded_size(self.dataset.val.size, self.eval_batch * self.replicas) // (
            self.eval_batch * self.replicas
        )
        self.output_dir = args.output_dir or os.path.join("runs", args.model)
        # every multi-worker process keeps its own checkpoint; only the chief writes the shared files
        index = worker_index(self.strategy)
        self.work_dir = self.output_dir if self.chief else os.path.join(self.output_dir, f"worker_{index}")
        for directory in {self.output_dir, self.work_dir}:
            check_writable(directory)  # a read-only or full output directory fails here, before training
        self.jit_compile, self.steps_per_execution = distribution_settings(args, self.strategy)
        self.tf = tf

    # --- data

    def _distribute(self, make):
        return self.strategy.distribute_datasets_from_function(make)

    def val_data(self, image_size, repeat=False, branches=False):
        """The validation set, distributed; branches=True: targets for `branches.evaluation_model`."""
        from crossvit_keras import data
        from crossvit_keras.branches import repeat_targets

        def make(context):
            dataset = data.eval_dataset(
                self.dataset.val,
                image_size,
                self.eval_batch,
                self.num_classes,
                global_batch=self.eval_batch * self.replicas,
                input_context=context,
                crop_pct=self.args.crop_pct,
                repeat=repeat,
            )
            return dataset.map(repeat_targets) if branches else dataset

        return self._distribute(make)

    def train_data(self, image_size):
        from crossvit_keras import data

        args = self.args
        repeats = REPEATS if self.repeated_aug else 1

        def make(context):
            return data.train_dataset(
                self.dataset.train,
                image_size,
                context.get_per_replica_batch_size(self.global_batch),
                self.num_classes,
                scale=tuple(args.scale),
                ratio=tuple(args.ratio),
                hflip=args.hflip,
                aa=args.aa,
                reprob=args.reprob,
                mixup=_mixup(args, self.num_classes),
                repeated_aug=repeats,
                input_context=context,
                seed=args.seed,
            )

        return self._distribute(make)

    # --- training

    def prepare_train(self):
        """Model, optimizer, schedule, callbacks and config.json, under the strategy; then `fit()`."""
        import keras

        from crossvit_keras.schedules import WarmupCosine

        args = self.args
        train_size = self.dataset.train.size
        steps_per_epoch = train_size // self.global_batch
        if steps_per_epoch < 1:
            raise ValueError(
                f"The training set has {train_size} images, fewer than one global batch "
                f"({args.batch_size} per replica x {self.replicas} replicas = {self.global_batch}); "
                "lower --batch-size."
            )
        self.repeated_aug = args.repeated_aug if args.repeated_aug is not None else args.model.startswith("crossvit_18")
        lr = args.lr if args.unscale_lr else args.lr * self.global_batch / 512
        schedule = WarmupCosine(
            lr, args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch, args.warmup_lr, args.min_lr
        )
        with self.strategy.scope():
            model = build_model(args, self.num_classes)
            optimizer = build_optimizer(
                model,
                args.opt,
                schedule,
                args.weight_decay,
                momentum=args.momentum,
                eps=args.opt_eps,
                betas=args.opt_betas,
                clip_grad=args.clip_grad,
            )
            compile_model(model, optimizer, self.num_classes, self.jit_compile, self.steps_per_execution)

        config = {
            **{k: v for k, v in vars(args).items()},
            "output_dir": self.output_dir,
            "replicas_in_sync": self.replicas,
            "strategy": describe_strategy(self.strategy),
            "global_batch_size": self.global_batch,
            "scaled_lr": lr,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": schedule.total_steps,
            "warmup_steps": schedule.warmup_steps,
            "repeated_aug": self.repeated_aug,
            "jit_compile": self.jit_compile,
            "steps_per_execution": self.steps_per_execution,
            "dataset": {
                "name": self.dataset.name,
                "num_classes": self.num_classes,
                "train": self.dataset.train.description,
                "val": self.dataset.val.description,
            },
            "model_config": model.get_config(),
            "parameters": model.count_params(),
            "versions": _versions(),
        }
        config_path = os.path.join(self.output_dir, "config.json")
        if checkpoint_files(self.work_dir) and os.path.exists(config_path):  # resuming: the same run?
            check_same_run(read_config(config_path), config, config_path)
        check_space(model, self.work_dir)
        with self.strategy.scope():
            initial_epoch = resume(model, self.work_dir, args.resume, steps_per_epoch)
        if self.chief:
            write_json(config_path, config)
        logger.info(
            "%s: %s parameters, %d classes; global batch %d = %d per replica x %d replicas; lr %.3g; "
            "%d steps per epoch; %s",
            model_label(model),
            f"{model.count_params():,}",
            self.num_classes,
            self.global_batch,
            args.batch_size,
            self.replicas,
            lr,
            steps_per_epoch,
            self.dataset.train.description,
        )

        EpochCheckpoint, EpochLog, StopOnNaN = callback_classes()
        from crossvit_keras.branches import BranchAccuracy

        callbacks = [
            StopOnNaN(),
            BranchAccuracy(lambda: self._evaluate(model, verbose=0)),  # before the callbacks that log
            EpochLog(
                os.path.join(self.output_dir, LOG),
                self.global_batch,
                steps_per_epoch,
                self.replicas,
                schedule,
                write=self.chief,
            ),
        ]
        if self.chief and _has_tensorboard():
            callbacks.append(
                keras.callbacks.TensorBoard(
                    os.path.join(self.output_dir, "tensorboard"), write_graph=False, profile_batch=0
                )
            )
        callbacks.append(EpochCheckpoint(self.work_dir))
        self.model, self.callbacks = model, callbacks
        self.steps_per_epoch, self.initial_epoch = steps_per_epoch, initial_epoch
        return self.fit

    def fit(self):
        """Trains (continuing from OUTPUT_DIR/checkpoint.keras if there is one), evaluates, writes
        the artefacts; returns the final validation metrics."""
        args, model = self.args, self.model
        start = time.perf_counter()
        history = model.fit(
            self.train_data(model.image_size),
            epochs=args.epochs,
            steps_per_epoch=self.steps_per_epoch,
            initial_epoch=self.initial_epoch,
            validation_data=self.val_data(model.image_size, repeat=True),
            validation_steps=self.val_steps,
            callbacks=self.callbacks,
            verbose=args.verbose if self.chief else 0,
            shuffle=False,
        )
        seconds = time.perf_counter() - start
        metrics = {k: float(v[-1]) for k, v in history.history.items() if v}
        if "val_top1" not in metrics:  # nothing left to train: evaluate what the checkpoint holds
            metrics = self._evaluate(model)
        else:
            metrics = {k[4:]: metrics[k] for k in ("val_loss", "val_top1", "val_top5", *BRANCH_VAL_METRICS)}
        self._report(metrics, model_label(model))
        if self.chief:
            self._write_artefacts(model, metrics, seconds)
        return metrics

    def _write_artefacts(self, model, metrics, seconds):
        from crossvit_keras.plotting import plot_training_curves, read_log

        out = self.output_dir
        save_model(model, os.path.join(out, FINAL_MODEL))
        logger.info("wrote %s", os.path.join(out, FINAL_MODEL))
        export_path = os.path.join(out, "saved_model", "1")
        exported = not self.args.no_saved_model and export_savedmodel(model, export_path, self.dataset.class_names)
        log_path = os.path.join(out, LOG)
        if os.path.exists(log_path):
            plot_training_curves(
                read_log(log_path),
                os.path.join(out, "training_curves.png"),
                title=model_label(model).replace(" (", "\n(", 1),
            )
            logger.info("wrote %s", os.path.join(out, "training_curves.png"))
        results = {
            "model": model.name,
            **metrics,  # loss, top1, top5, top1_small_branch, top1_large_branch (issue 11's names)
            "val_top1": metrics["top1"],
            "val_top5": metrics["top5"],
            "val_loss": metrics["loss"],
            **{f"val_{k}": metrics[k] for k in BRANCH_METRICS},
            "val_images": self.dataset.val.size,
            "replicas_in_sync": self.replicas,
            "optimizer_step": optimizer_step(model),
            "fit_seconds": round(seconds, 1),
            "saved_model": export_path if exported else None,
        }
        write_json(os.path.join(out, "results.json"), results)

    # --- evaluation

    def _evaluate(self, model, verbose=None):
        """loss, top1, top5 of the model and top1 of each branch alone, in one pass."""
        from crossvit_keras import branches

        if self._evaluation[0] is not model:  # (model, its evaluation model), made once per model
            with self.strategy.scope():
                evaluation = branches.evaluation_model(model)
                branches.compile_evaluation_model(
                    evaluation, self.num_classes, self.jit_compile, self.steps_per_execution
                )
            self._evaluation = (model, evaluation)
        logs = self._evaluation[1].evaluate(
            self.val_data(model.image_size, branches=True),
            steps=self.val_steps,
            verbose=(self.args.verbose if verbose is None else verbose) if self.chief else 0,
            return_dict=True,
        )
        return branches.evaluation_metrics(logs)

    def _report(self, metrics, name):
        from crossvit_keras.data import UNREADABLE

        skipped = f", {UNREADABLE.count} unreadable image(s) skipped" if UNREADABLE.count else ""
        logger.info(
            "%s on %s: top-1 %.2f%%  top-5 %.2f%%  loss %.4f; one branch alone: small %.2f%%, large %.2f%%%s",
            name,
            self.dataset.val.description,
            100 * metrics["top1"],
            100 * metrics["top5"],
            metrics["loss"],
            100 * metrics["top1_small_branch"],
            100 * metrics["top1_large_branch"],
            skipped,
        )

    def prepare_eval(self):
        """--eval: top-1 / top-5 of --resume FILE (a .keras model, or a released checkpoint for
        --model) or of OUTPUT_DIR/model.keras, on the validation split."""
        import keras

        import crossvit_keras
        from crossvit_keras import convert

        args = self.args
        path = args.resume or os.path.join(self.output_dir, FINAL_MODEL)
        pretrained = args.pretrained and not args.resume
        if not pretrained and not os.path.isfile(path):
            raise ValueError(f"--eval: no model at {path}; give one with --resume FILE (.keras or a checkpoint).")
        with self.strategy.scope():
            if pretrained:  # the hub's weights (or --pretrained ID / PATH) with their own classes
                overrides = {"image_size": args.input_size} if args.input_size else {}
                overrides.update(args.model_overrides or {})
                model = crossvit_keras.create_model(args.model, None, pretrained=args.pretrained, **overrides)
                path = f"{args.model} --pretrained {args.pretrained}"
            elif path.endswith(".keras"):
                model = keras.models.load_model(path, compile=False)
            else:
                overrides = {"image_size": args.input_size} if args.input_size else {}
                model = crossvit_keras.create_model(args.model, num_classes=self.num_classes, **overrides)
                convert.load_weights(model, path, log=logger.info)
            classes = model.output_shape[-1]
            if classes != self.num_classes:
                raise ValueError(
                    f"--eval: the model has {classes} classes, the dataset {self.num_classes}; "
                    "fine-tune it first (--finetune)."
                )
            compile_model(model, None, self.num_classes, self.jit_compile, self.steps_per_execution)
        self.model, self.model_path = model, path
        return self.evaluate

    def evaluate(self):
        model, path = self.model, self.model_path
        metrics = self._evaluate(model)
        self._report(metrics, model_label(model))
        if self.chief and self.args.output_dir:
            write_json(
                os.path.join(self.output_dir, "eval.json"),
                {
                    "model": path,
                    **metrics,  # loss, top1, top5, top1_small_branch, top1_large_branch
                    **{f"val_{k}": v for k, v in metrics.items()},
                    "val_images": self.dataset.val.size,
                },
            )
        return metrics


def export_savedmodel(model, path, class_names):
    """The serving issue's SavedModel export; False (and a log line) if it is not available."""
    try:
        from crossvit_keras.export import export_saved_model
    except ImportError as error:
        logger.warning("SavedModel not written: crossvit_keras.export is not available (%s)", error)
        return False
    export_saved_model(model, path, class_names=class_names, overwrite=True)
    logger.info("wrote SavedModel %s", path)
    return True


def _has_tensorboard():
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        logger.warning("TensorBoard logs not written: the tensorboard package is not installed")
        return False
    return True


def _versions():
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "python": sys.version.split()[0]}


def main(argv=None):
    """Runs the command line; returns the process exit code (0 ok, 1 NaN loss, 2 bad input)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:  # every check happens here, before any training: a mistake is one line
        if args.cpu_devices:
            configure_cpu_devices(args.cpu_devices)
        run = Run(args)
        job = run.prepare_eval() if args.eval else run.prepare_train()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        job()
    except (NonFiniteLoss, CheckpointWriteError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except OSError as error:  # writing model.keras or a JSON file after training (a full disk, ...)
        print(f"error: {error}; the checkpoints are kept: rerun the same command to finish.", file=sys.stderr)
        return 1
    return 0
