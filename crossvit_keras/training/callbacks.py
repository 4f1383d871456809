"""The recipe's callbacks and checkpoint files: the last two epochs' checkpoints (checkpoint.keras
and checkpoint-previous.keras, written atomically and rotated), resumed by a rerun after the
checks of `resume`; one JSON line per epoch in log.jsonl, and a stop with a message on a NaN loss."""

import json
import logging
import math
import os
import re
import shutil
import time

from crossvit_keras import configs
from crossvit_keras.atomic import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.keras"
PREVIOUS = "checkpoint-previous.keras"
LOG = "log.jsonl"
# the EMA weights' validation metrics (--model-ema), in log.jsonl beside the raw weights' val_*
EMA_VAL_METRICS = ("val_loss_ema", "val_top1_ema", "val_top5_ema")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stopped."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only directory); the previous one is kept."""


def write_json(path, data):
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")


def optimizer_step(model):
    return int(model.optimizer.iterations.numpy())


def callback_classes():
    import keras

    from crossvit_keras.data.pipeline import UNREADABLE

    class EpochCheckpoint(keras.callbacks.Callback):
        """After every epoch the whole model and its optimizer go to DIR/checkpoint.keras, the one
        before kept as DIR/checkpoint-previous.keras (`save_checkpoint`). Resuming is `resume`,
        called before fit (which then starts at its initial_epoch)."""

        def __init__(self, directory):
            super().__init__()
            self.directory = directory
            self.epochs_done = None  # of the last checkpoint this callback wrote

        def on_epoch_end(self, epoch, logs=None):
            save_checkpoint(self.model, self.directory)
            self.epochs_done = epoch + 1

    class EpochLog(keras.callbacks.Callback):
        """One JSON line per epoch (loss, top1, top5, val_*, lr, images/s, ...) in LOG; a resumed
        run first drops the lines of the epochs it redoes."""

        def __init__(self, path, global_batch, steps_per_epoch, replicas, schedule, write=True):
            super().__init__()
            self.path = path
            self.global_batch = global_batch
            self.steps_per_epoch = steps_per_epoch
            self.replicas = replicas
            self.schedule = schedule
            self.write = write
            self._first_epoch = True

        def on_epoch_begin(self, epoch, logs=None):
            if self._first_epoch and self.write and os.path.exists(self.path):
                with open(self.path, encoding="utf-8") as f:
                    kept = [line for line in f if line.strip() and json.loads(line)["epoch"] <= epoch]
                with atomic_path(self.path) as temporary, open(temporary, "w", encoding="utf-8") as f:
                    f.writelines(kept)
            self._first_epoch = False
            self._start = time.perf_counter()
            self._train_seconds = None
            self._skipped = UNREADABLE.count

        def on_test_begin(self, logs=None):
            if self._train_seconds is None:
                self._train_seconds = time.perf_counter() - self._start

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            seconds = time.perf_counter() - self._start
            train_seconds = self._train_seconds or seconds
            step = optimizer_step(self.model)
            logs["lr"] = self.schedule.value(max(step - 1, 0))
            exact_loss(logs)
            record = {"epoch": epoch + 1, "step": step}
            record.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
            record.update(
                images_per_second=round(self.steps_per_epoch * self.global_batch / train_seconds, 2),
                epoch_seconds=round(seconds, 2),
                skipped_images=UNREADABLE.count - self._skipped,
                replicas=self.replicas,
            )
            if self.write:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    os.fsync(f.fileno())

    class StopOnNaN(keras.callbacks.TerminateOnNaN):
        """Keras' TerminateOnNaN, but with a message and an exception (so that neither the
        checkpoint nor the final model is overwritten with NaN weights)."""

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

        def on_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise NonFiniteLoss(
                    f"The training loss became {float(loss)} in epoch {self._epoch + 1} (step {batch + 1}); "
                    "training stopped and the last checkpoint is kept. Lower --lr, set --clip-grad, "
                    "use --mixed-precision none, or check the data."
                )

    return EpochCheckpoint, EpochLog, StopOnNaN


def ema_evaluation(evaluate):
    """A callback for `--model-ema`: after every epoch it evaluates the weights' exponential moving
    average (the optimizer's `use_ema`), beside the raw weights that fit validates, and adds
    val_loss_ema, val_top1_ema and val_top5_ema to the epoch's logs (`evaluate()` returns
    `evaluation.evaluation_metrics`; put the callback before those that log). The EMA weights go
    into the model for that evaluation and the raw ones are put back exactly, from a copy (Keras'
    SwapEMAWeights swaps them by additions and subtractions, which round, and validates the EMA
    weights only). Keras' fit ends by putting the EMA weights into the model
    (`finalize_variable_values`); `restore_raw_weights()` puts the last raw ones back."""
    import keras

    class EMAEvaluation(keras.callbacks.Callback):
        def _optimizer(self):
            optimizer = self.model.optimizer
            return getattr(optimizer, "inner_optimizer", optimizer)  # (LossScaleOptimizer)

        def _assign(self, values):
            for variable, value in zip(self._optimizer()._trainable_variables, values, strict=True):
                variable.assign(value)

        def _keep_raw_weights(self):
            self.raw_weights = [keras.ops.convert_to_numpy(v) for v in self._optimizer()._trainable_variables]

        def on_train_begin(self, logs=None):
            optimizer = self._optimizer()
            if not getattr(optimizer, "use_ema", False):
                raise ValueError("--model-ema: the optimizer keeps no moving average (use_ema=False).")
            if not optimizer.built:
                optimizer.build(self.model.trainable_variables)
            self._keep_raw_weights()

        def on_epoch_end(self, epoch, logs=None):
            self._keep_raw_weights()
            self._assign(self._optimizer()._model_variables_moving_average)
            try:
                metrics = evaluate()
            finally:
                self._assign(self.raw_weights)
            if logs is not None:
                logs.update({f"val_{name}_ema": metrics[name] for name in ("loss", "top1", "top5")})

        def restore_raw_weights(self):
            self._assign(self.raw_weights)

    return EMAEvaluation()


def exact_loss(logs):
    """Puts the exact weighted cross-entropy ("ce") in place of Keras' loss (in place)."""
    for prefix in ("", "val_"):
        if f"{prefix}ce" in logs:
            logs[f"{prefix}loss"] = logs.pop(f"{prefix}ce")
    return logs


def save_checkpoint(model, directory):
    """Writes DIR/checkpoint.keras atomically, the one it replaces becoming DIR/checkpoint-previous.keras:
    the new file is complete before the old one is renamed (and flushed to disk before it takes
    its name), so at every moment one of the two names holds a good checkpoint. An OSError (full
    disk, read-only directory) leaves both files as they were and raises CheckpointWriteError
    saying so."""
    path, previous = os.path.join(directory, CHECKPOINT), os.path.join(directory, PREVIOUS)
    try:
        with atomic_path(path) as temporary:
            model.save(temporary)
            if os.path.exists(path):
                os.replace(path, previous)
    except OSError as error:
        kept = [name for name in (path, previous) if os.path.exists(name)]
        raise CheckpointWriteError(
            f"cannot write the checkpoint {path}: {error.strerror or error}; "
            + (f"{' and '.join(kept)} kept, unchanged; " if kept else "")
            + "free some space (or make the directory writable) and rerun the same command to resume."
        ) from None


def checkpoint_bytes(model):
    """About the size of one checkpoint: float32 weights and AdamW's two moments (SGD has one),
    and the weights' moving average with --model-ema."""
    return (3 + bool(getattr(model.optimizer, "use_ema", False))) * 4 * model.count_params()


def free_bytes(directory):
    return shutil.disk_usage(directory).free


def check_space(model, directory):
    """Raises ValueError before training if DIR cannot hold the checkpoints: two kept, a third
    written beside them, and the final model.keras (about 4 checkpoints, less those already there)."""
    size = checkpoint_bytes(model)
    existing = sum(os.path.getsize(p) for p in checkpoint_files(directory))
    needed, free = 4 * size - existing, free_bytes(directory)
    if free < needed:
        raise ValueError(
            f"{directory} has {free / 1e6:,.0f} MB free; this run needs about {needed / 1e6:,.0f} MB "
            f"(checkpoints of ~{size / 1e6:,.0f} MB: two kept, one written beside them, and model.keras); "
            "free some space or choose another --output_dir."
        )


def checkpoint_files(directory):
    """The checkpoints of DIR, newest first."""
    return [p for p in (os.path.join(directory, n) for n in (CHECKPOINT, PREVIOUS)) if os.path.exists(p)]


def _json(value):
    return json.loads(json.dumps(value, default=str))


def read_config(path):
    """A run's config.json; ValueError with the fix if it is damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as error:
        raise ValueError(
            f"{path} is damaged ({error}), so a resume cannot be checked against the run's settings; "
            "delete it to resume anyway, or use a new --output_dir."
        ) from None


def check_same_run(saved, current, config_path):
    """Raises ValueError naming the first difference (model, architecture, class count, batch size)
    that keeps the run described by `current` from resuming the checkpoints of `saved` (both
    config.json dicts)."""
    checks = [("--model", saved.get("model"), current["model"])]
    for key in configs.ARCHITECTURE:
        checks.append((f"the model's {key}", saved.get("model_config", {}).get(key), current["model_config"][key]))
    checks += [
        ("the class count", saved.get("dataset", {}).get("num_classes"), current["dataset"]["num_classes"]),
        ("--batch-size", saved.get("batch_size"), current["batch_size"]),
        ("the global batch (--batch-size x replicas)", saved.get("global_batch_size"), current["global_batch_size"]),
        ("--grad-accum-steps", saved.get("grad_accum_steps"), current.get("grad_accum_steps")),
        ("--model-ema (the checkpoints' optimizer state)", saved.get("model_ema"), current.get("model_ema")),
    ]
    for what, old, new in checks:
        if old is not None and _json(old) != _json(new):  # (a key an older config.json lacks is not checked)
            raise ValueError(
                f"cannot resume the run in {os.path.dirname(config_path)}: {what} is {json.dumps(_json(new))} "
                f"here, {json.dumps(_json(old))} in its {os.path.basename(config_path)}; rerun with its settings, "
                "or use a new --output_dir (or delete that one) to start afresh."
            )


def _problem(error):
    """One line: what is wrong with a file that would not load."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'unreadable'}"[:300]


def remove_leftovers(directory):
    """Removes what a killed run left half-written in its output directory: the temporary files of
    atomic writes (.partial-*, .write-test-*) and the SavedModel export's staging directories
    (saved_model/.1.tmp-*, .1.old-*). Each is one log line; the files in their place were never
    replaced by them."""
    entries = []
    if os.path.isdir(directory):
        entries += [e for e in os.scandir(directory) if e.name.startswith((".partial-", ".write-test-"))]
    exports = os.path.join(directory, "saved_model")
    if os.path.isdir(exports):
        entries += [e for e in os.scandir(exports) if e.name.startswith(".") and re.search(r"\.(tmp|old)-", e.name)]
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.remove(entry.path)
        logger.info("removed %s, left half-written by an interrupted run", entry.path)


def resume(model, directory, resume_file, steps_per_epoch):
    """Loads the newest usable checkpoint into a compiled model (under the strategy's scope) and
    returns the number of epochs it finished (0 if there is none to resume): DIR/checkpoint.keras,
    else DIR/checkpoint-previous.keras, else --resume FILE. Each unusable one is one log line (file,
    what is wrong); a damaged one of DIR is then renamed to NAME.damaged, so that the next rotation
    keeps the good one. If there were some and none is usable, raises ValueError with the fix (and
    leaves every file as it was)."""
    own = checkpoint_files(directory)
    candidates = own + ([resume_file] if resume_file else [])
    problems = []
    for index, path in enumerate(candidates):
        try:
            epoch = load_checkpoint(model, path, steps_per_epoch)
        except Exception as error:  # a damaged file fails in zipfile, h5py or Keras, with many types
            problems.append((path, _problem(error)))
            following = f"; trying {candidates[index + 1]}" if index + 1 < len(candidates) else ""
            logger.warning("cannot resume from %s (%s)%s", path, _problem(error), following)
            continue
        for damaged in (path for path, _ in problems if path in own):
            os.replace(damaged, damaged + ".damaged")
            logger.warning("moved the damaged %s to %s.damaged", damaged, damaged)
        return epoch
    if problems:
        listed = "; ".join(f"{path}: {problem}" for path, problem in problems)
        fix = "pass --resume a good checkpoint, or leave it out to start afresh"
        if own:
            fix = f"delete the checkpoint files (or the directory {directory}) to start afresh, or pass --resume FILE"
            fix += " with a good checkpoint"
        raise ValueError(f"no usable checkpoint to resume from ({listed}); {fix}.")
    return 0


def load_checkpoint(model, path, steps_per_epoch):
    """Loads a checkpoint.keras (weights and optimizer state) into a compiled model; returns the
    number of epochs it had finished."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    step = optimizer_step(model)
    epoch, rest = divmod(step, steps_per_epoch)
    if step == 0:
        raise ValueError(f"{path} holds no optimizer state (step 0): it is not a training checkpoint.")
    if rest:
        raise ValueError(
            f"{path} was saved at optimizer step {step}, not at the end of an epoch of {steps_per_epoch} steps: "
            "resume with the --batch-size and number of replicas of the run that saved it "
            "(or train in a new --output_dir)."
        )
    logger.info("resuming from %s: %d epoch(s) done, optimizer step %d", path, epoch, step)
    return epoch
