"""Training and evaluation of CrossViT under tf.distribute with DeiT's recipe (paper Table 9).

`Run(config)` prepares everything from a `TrainConfig` (strategy, data, model, optimizer,
callbacks; every check before any training), `train(config)` / `evaluate(config)` run it. The
command line (`crossvit-keras train`, `recipes/imagenet.py`) is crossvit_keras.cli.train:

    python recipes/imagenet.py --data-set IMNET --data-path /data/imagenet --strategy mirrored

An output directory gets:

    config.json          the resolved configuration (replicas in sync, global batch, scaled lr, ...)
    log.jsonl            one JSON line per epoch: loss, top1, top5, val_* (with val_top1_small_branch and
                         val_top1_large_branch: each branch's head alone), lr, images_per_second, ...
    tensorboard/         TensorBoard logs
    checkpoint.keras     model + optimizer after the last finished epoch; a new run with the same
                         --output_dir continues from it (the optimizer step count included)
    checkpoint-previous.keras  the epoch before's, resumed from if checkpoint.keras is damaged
    model.keras          the final model
    saved_model/1/       the SavedModel for TF Serving (crossvit_keras.export.saved_model)
    training_curves.png  loss, accuracy and learning rate per epoch
    results.json         the final evaluation: top1, top5, loss, top1_small_branch, top1_large_branch (each
                         branch's head alone), the same under val_* names, val_images, fit_seconds, ...
"""

import logging
import os
import shutil
import sys
import time

from crossvit_keras.atomic import check_writable, remove_empty_directories, save_model
from crossvit_keras.branches import BRANCH_METRICS
from crossvit_keras.export import export_saved_model
from crossvit_keras.factory import load_model
from crossvit_keras.training import evaluation
from crossvit_keras.training.callbacks import (
    CHECKPOINT,
    EMA_VAL_METRICS,
    LOG,
    PREVIOUS,
    callback_classes,
    check_same_run,
    check_space,
    checkpoint_files,
    ema_evaluation,
    optimizer_step,
    read_config,
    remove_leftovers,
    resume,
    write_json,
)
from crossvit_keras.training.config import PRECISIONS
from crossvit_keras.training.distribute import (
    describe_strategy,
    distribution_settings,
    is_chief,
    make_strategy,
    replicas_are_gpus,
    worker_index,
)
from crossvit_keras.training.recipe import build_optimizer, compile_model, model_label, training_model
from crossvit_keras.tuning import restart_lora

logger = logging.getLogger(__name__)

FINAL_MODEL = "model.keras"
# DeiT's RASampler repeats each image this many times.
REPEATS = 3
BRANCH_VAL_METRICS = tuple(f"val_{name}" for name in BRANCH_METRICS)


class Run:
    """Everything a training or evaluation run needs, prepared and checked before any training."""

    _evaluation = (None, None)

    def __init__(self, config):
        import keras

        from crossvit_keras import data

        if keras.backend.backend() != "tensorflow":  # tf.data, tf.distribute, SavedModel
            raise ValueError(
                f"The training recipe runs on TensorFlow; KERAS_BACKEND is {keras.backend.backend()!r}. Set "
                "KERAS_BACKEND=tensorflow, or train with model.fit (every backend; docs/backends.md)."
            )
        config = config.checked()
        self.config = config
        self.strategy = make_strategy(config.strategy, config.tpu)
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = is_chief(self.strategy)
        logger.info("replicas in sync: %d (%s)", self.replicas, describe_strategy(self.strategy))
        keras.utils.set_random_seed(config.seed + worker_index(self.strategy))
        if PRECISIONS[config.mixed_precision]:
            keras.config.set_dtype_policy(PRECISIONS[config.mixed_precision])

        splits = ("val",) if config.eval else ("train", "val")
        self.dataset = data.open_dataset(config.data_set, config.data_path, config.tfds_manual_dir, splits)
        self.num_classes = self.dataset.num_classes
        self.global_batch = config.batch_size * self.replicas
        self.update_batch = self.global_batch * config.grad_accum_steps  # the images of one optimizer update
        self.eval_batch = max(1, int(1.5 * config.batch_size))  # DeiT's validation batch
        self.val_steps = data.padded_size(self.dataset.val.size, self.eval_batch * self.replicas) // (
            self.eval_batch * self.replicas
        )
        self.output_dir = output_directory(config)
        # every multi-worker process keeps its own checkpoint; only the chief writes the shared files
        index = worker_index(self.strategy)
        self.work_dir = self.output_dir if self.chief else os.path.join(self.output_dir, f"worker_{index}")
        self.jit_compile, self.steps_per_execution = distribution_settings(
            config.jit_compile, config.steps_per_execution, self.strategy
        )
        self.aug_device = resolve_aug_device(config.aug_device, self.strategy)

    # --- output directory

    created = {}  # {directory: the outermost directory its creation made}, by _make_output_directories
    checkpointer = None  # the EpochCheckpoint callback, by prepare_train

    def _make_output_directories(self):
        """Creates the output directory (and a worker's own): a read-only or full one fails here,
        before training; `remove_unused_output` removes them again after a run that wrote nothing useful."""
        self.created = {}
        for directory in dict.fromkeys((self.output_dir, self.work_dir)):
            top = check_writable(directory)
            if top:
                self.created[directory] = top

    def remove_unused_output(self):
        """After a failed or interrupted run: removes each output directory this run created that
        holds no checkpoint, model or results (config.json and logs alone are of no use); returns them."""
        removed = []
        for directory, top in self.created.items():
            if os.path.isdir(directory) and not _holds_results(directory):
                shutil.rmtree(directory, ignore_errors=True)
                remove_empty_directories(top, os.path.dirname(os.path.abspath(directory)))
                removed.append(directory)
        return removed

    def last_checkpoint(self):
        """(path, epochs done or None if unknown) of the checkpoint a rerun resumes from, or None."""
        files = checkpoint_files(self.work_dir)
        if not files:
            return None
        epochs = self.checkpointer.epochs_done if self.checkpointer else None
        if epochs is None and self.checkpointer is not None:  # resumed, nothing saved since
            epochs = self.initial_epoch
        return files[0], epochs

    # --- data

    def _distribute(self, make):
        return self.strategy.distribute_datasets_from_function(make)

    def val_data(self, image_size, repeat=False, branches=False):
        """The validation set, distributed; branches=True: targets for `evaluation.evaluation_model`."""
        from crossvit_keras import data
        from crossvit_keras.training.evaluation import repeat_targets

        def make(context):
            dataset = data.eval_dataset(
                self.dataset.val,
                image_size,
                self.eval_batch,
                self.num_classes,
                global_batch=self.eval_batch * self.replicas,
                input_context=context,
                crop_pct=self.config.crop_pct,
                repeat=repeat,
            )
            return dataset.map(repeat_targets) if branches else dataset

        return self._distribute(make)

    def train_data(self, image_size):
        from crossvit_keras import data

        config = self.config
        repeats = REPEATS if self.repeated_aug else 1

        def make(context, remote=False):
            return data.train_dataset(
                self.dataset.train,
                image_size,
                context.get_per_replica_batch_size(self.update_batch),  # --grad-accum-steps micro-batches
                self.num_classes,
                scale=tuple(config.scale),
                ratio=tuple(config.ratio),
                hflip=config.hflip,
                aa=config.aa,
                reprob=config.reprob,
                mixup=config.mixup_cutmix(self.num_classes),
                repeated_aug=repeats,
                input_context=None if remote else context,
                seed=None if remote else config.seed,
                remote=remote,
                aug_device=self.aug_device,
            )

        if config.data_service:
            return self._distribute(self._through_data_service(make))
        return self._distribute(make)

    def _through_data_service(self, make):
        """`make` run by the tf.data service's workers (crossvit_keras.data.service): unseeded, so
        that each worker draws its own crops and augmentations, and unsharded, since every trainer
        takes its own batches from the one job all trainers of this run share."""
        from crossvit_keras.data import service

        job_name = f"crossvit-keras:{os.path.normpath(self.output_dir)}"

        def through_service(context):
            with service.unseeded(restore_seed=self.config.seed + worker_index(self.strategy)):
                dataset = make(context, remote=True)
            return service.distribute(dataset, self.config.data_service, job_name)

        return through_service

    # --- training

    def prepare_train(self):
        """Model, optimizer, schedule, callbacks and config.json, under the strategy; then `fit()`."""
        import keras

        from crossvit_keras.training.schedules import WarmupCosine

        config = self.config
        self._make_output_directories()
        train_size = self.dataset.train.size
        steps_per_epoch = train_size // self.update_batch  # optimizer updates
        if steps_per_epoch < 1:
            raise ValueError(
                f"The training set has {train_size} images, fewer than one global batch "
                f"({config.batch_size} per replica x {self.replicas} replicas x {config.grad_accum_steps} "
                f"accumulation steps = {self.update_batch}); lower --batch-size or --grad-accum-steps."
            )
        self.repeated_aug = (
            config.repeated_aug if config.repeated_aug is not None else config.model.startswith("crossvit_18")
        )
        lr = config.lr if config.unscale_lr else config.lr * self.update_batch / 512
        schedule = WarmupCosine(
            lr, config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch, config.warmup_lr, config.min_lr
        )
        with self.strategy.scope():
            model = training_model(config, self.num_classes)
            optimizer = build_optimizer(
                model,
                config.opt,
                schedule,
                config.weight_decay,
                momentum=config.momentum,
                eps=config.opt_eps,
                betas=config.opt_betas,
                clip_grad=config.clip_grad,
                model_ema_decay=config.model_ema_decay if config.model_ema else None,
                layer_decay=config.layer_decay,
            )
            compile_model(
                model, optimizer, self.num_classes, self.jit_compile, self.steps_per_execution, config.grad_accum_steps
            )
            if self.aug_device == "accelerator":  # the batch augmentations: first stage of the train step
                from crossvit_keras.data import augment_on_device, device_augment

                augment = device_augment(
                    model.image_size, config.aa, config.reprob, config.mixup_cutmix(self.num_classes)
                )
                augment_on_device(model, augment)

        record = {
            **config.to_json(),
            "output_dir": self.output_dir,
            "replicas_in_sync": self.replicas,
            "strategy": describe_strategy(self.strategy),
            "global_batch_size": self.global_batch,
            "effective_batch_size": self.update_batch,  # per optimizer update: x --grad-accum-steps
            "scaled_lr": lr,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": schedule.total_steps,
            "warmup_steps": schedule.warmup_steps,
            "repeated_aug": self.repeated_aug,
            "jit_compile": self.jit_compile,
            "aug_device": self.aug_device,
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
            check_same_run(read_config(config_path), record, config_path)
        remove_leftovers(self.work_dir)
        check_space(model, self.work_dir)
        with self.strategy.scope():
            initial_epoch = resume(model, self.work_dir, config.resume, steps_per_epoch)
            if config.lora_rank and initial_epoch:  # the checkpoint holds merged kernels: adapt on from them
                restart_lora(model)
        if self.chief:
            write_json(config_path, record)
        logger.info(
            "%s: %s parameters, %d classes; global batch %d = %d per replica x %d replicas%s; lr %.3g; "
            "%d steps per epoch; %s",
            model_label(model),
            f"{model.count_params():,}",
            self.num_classes,
            self.update_batch,
            config.batch_size,
            self.replicas,
            f" x {config.grad_accum_steps} accumulated micro-batches" if config.grad_accum_steps > 1 else "",
            lr,
            steps_per_epoch,
            self.dataset.train.description,
        )

        EpochCheckpoint, EpochLog, StopOnNaN = callback_classes()

        callbacks = [
            StopOnNaN(),
            evaluation.BranchAccuracy(lambda: self._evaluate(model, verbose=0)),  # before the callbacks that log
        ]
        self.ema_evaluation = ema_evaluation(lambda: self._evaluate(model, verbose=0)) if config.model_ema else None
        callbacks += [self.ema_evaluation] if self.ema_evaluation else []
        callbacks += [
            EpochLog(
                os.path.join(self.output_dir, LOG),
                self.update_batch,
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
        self.checkpointer = EpochCheckpoint(self.work_dir)
        callbacks.append(self.checkpointer)
        self.model, self.callbacks = model, callbacks
        self.steps_per_epoch, self.initial_epoch = steps_per_epoch, initial_epoch
        return self.fit

    def fit(self):
        """Trains (continuing from OUTPUT_DIR/checkpoint.keras if there is one), evaluates, writes
        the artefacts; returns the final validation metrics."""
        config, model = self.config, self.model
        start = time.perf_counter()
        history = model.fit(
            self.train_data(model.image_size),
            epochs=config.epochs,
            steps_per_epoch=self.steps_per_epoch,
            initial_epoch=self.initial_epoch,
            validation_data=self.val_data(model.image_size, repeat=True),
            validation_steps=self.val_steps,
            callbacks=self.callbacks,
            verbose=config.verbose if self.chief else 0,
            shuffle=False,
        )
        seconds = time.perf_counter() - start
        if self.ema_evaluation and not config.model_ema_export:  # fit ended by putting the EMA weights in
            self.ema_evaluation.restore_raw_weights()
        metrics = {k: float(v[-1]) for k, v in history.history.items() if v}
        ema_metrics = {k[4:]: metrics[k] for k in EMA_VAL_METRICS if k in metrics}
        if "val_top1" not in metrics:  # nothing left to train: evaluate what the checkpoint holds
            metrics = self._evaluate(model)
        else:
            metrics = {k[4:]: metrics[k] for k in ("val_loss", "val_top1", "val_top5", *BRANCH_VAL_METRICS)}
        metrics.update(ema_metrics)  # loss_ema, top1_ema, top5_ema: the EMA weights
        self._report(metrics, model_label(model))
        if self.chief:
            self._write_artefacts(model, metrics, seconds)
        return metrics

    def _write_artefacts(self, model, metrics, seconds):
        from crossvit_keras.training.plotting import plot_training_curves, read_log

        out = self.output_dir
        save_model(model, os.path.join(out, FINAL_MODEL))
        logger.info("wrote %s", os.path.join(out, FINAL_MODEL))
        export_path = os.path.join(out, "saved_model", "1")
        exported = not self.config.no_saved_model
        if exported:
            export_saved_model(model, export_path, class_names=self.dataset.class_names, overwrite=True)
            logger.info("wrote SavedModel %s", export_path)
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
            **metrics,  # loss, top1, top5, top1_small_branch, top1_large_branch
            "val_top1": metrics["top1"],
            "val_top5": metrics["top5"],
            "val_loss": metrics["loss"],
            **{f"val_{k}": metrics[k] for k in BRANCH_METRICS},
            **{f"val_{k}": v for k, v in metrics.items() if k.endswith("_ema")},
            "exported_weights": "ema" if self.config.model_ema and self.config.model_ema_export else "raw",
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
        if self._evaluation[0] is not model:  # (model, its evaluation model), made once per model
            with self.strategy.scope():
                evaluator = evaluation.evaluation_model(model)
                evaluation.compile_evaluation_model(
                    evaluator, self.num_classes, self.jit_compile, self.steps_per_execution
                )
            self._evaluation = (model, evaluator)
        logs = self._evaluation[1].evaluate(
            self.val_data(model.image_size, branches=True),
            steps=self.val_steps,
            verbose=(self.config.verbose if verbose is None else verbose) if self.chief else 0,
            return_dict=True,
        )
        return evaluation.evaluation_metrics(logs)

    def _report(self, metrics, name):
        from crossvit_keras.data.pipeline import UNREADABLE

        first = "; ".join(UNREADABLE.first)
        skipped = f", {UNREADABLE.count} image(s) skipped (first: {first})" if UNREADABLE.count else ""
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
        config = self.config
        if config.output_dir:  # for eval.json
            self._make_output_directories()
        path = config.resume or os.path.join(self.output_dir, FINAL_MODEL)
        pretrained = config.pretrained and not config.resume
        if not pretrained and not os.path.isfile(path):
            raise ValueError(f"--eval: no model at {path}; give one with --resume FILE (.keras or a checkpoint).")
        with self.strategy.scope():
            overrides = {"image_size": config.input_size} if config.input_size else {}
            if pretrained:  # the hub's weights (or --pretrained ID / PATH) with their own classes
                model = load_model(config.model, config.pretrained, **overrides, **(config.model_overrides or {}))
                path = f"{config.model} --pretrained {config.pretrained}"
            elif path.endswith(".keras"):
                model = load_model(path)
            else:  # a released checkpoint for --model, with its own classes
                model = load_model(config.model, path, **overrides)
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
        if self.chief and self.config.output_dir:
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


def resolve_aug_device(setting, strategy):
    """--aug-device: host or accelerator as given; auto: accelerator when the replicas are GPUs or TPUs."""
    if setting != "auto":
        return setting
    import tensorflow as tf

    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    return "accelerator" if on_tpu or replicas_are_gpus(strategy) else "host"


def output_directory(config):
    """--output_dir, by default runs/<model>."""
    return config.output_dir or os.path.join("runs", config.model)


# What makes an output directory worth keeping after a failure: something to resume or use.
RESULTS = (CHECKPOINT, PREVIOUS, FINAL_MODEL, "results.json", "eval.json")


def _holds_results(directory):
    return any(name in RESULTS for _, _, names in os.walk(directory) for name in names)


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


def train(config):
    """Trains as `config` says (continuing from OUTPUT_DIR/checkpoint.keras if there is one),
    evaluates and writes the artefacts; returns the final validation metrics."""
    return Run(config).prepare_train()()


def evaluate(config):
    """Evaluates the model `config` names (resume FILE, pretrained, or OUTPUT_DIR/model.keras)."""
    return Run(config).prepare_eval()()
