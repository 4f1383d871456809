"""The recipe's callbacks and checkpoint files: one atomic checkpoint.keras per epoch (resumed by
a rerun), one JSON line per epoch in log.jsonl, and a stop with a message on a NaN loss."""

import json
import logging
import math
import os
import time

from crossvit_keras.atomic import atomic_path, save_model

logger = logging.getLogger("crossvit_keras.training")

CHECKPOINT = "checkpoint.keras"
LOG = "log.jsonl"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stopped."""


def write_json(path, data):
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")


def optimizer_step(model):
    return int(model.optimizer.iterations.numpy())


def callback_classes():
    import keras

    from crossvit_keras.data import UNREADABLE

    class EpochCheckpoint(keras.callbacks.BackupAndRestore):
        """Keras' BackupAndRestore with one atomic file: after every epoch the whole model and its
        optimizer go to DIR/checkpoint.keras; at the start of fit an existing one is loaded and
        training continues after its last epoch (epoch = optimizer step / steps per epoch)."""

        def __init__(self, directory, steps_per_epoch):
            super().__init__(backup_dir=directory, save_freq="epoch", delete_checkpoint=False)
            self.path = os.path.join(directory, CHECKPOINT)
            self.steps_per_epoch = steps_per_epoch

        def _load_model(self):
            if os.path.exists(self.path):
                self.model._initial_epoch = load_checkpoint(self.model, self.path, self.steps_per_epoch)

        def _save_model(self):
            save_model(self.model, self.path)

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


def exact_loss(logs):
    """Puts the exact weighted cross-entropy ("ce") in place of Keras' loss (in place)."""
    for prefix in ("", "val_"):
        if f"{prefix}ce" in logs:
            logs[f"{prefix}loss"] = logs.pop(f"{prefix}ce")
    return logs


def load_checkpoint(model, path, steps_per_epoch):
    """Loads a checkpoint.keras (weights and optimizer state) into a compiled model; returns the
    number of epochs it had finished."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    step = optimizer_step(model)
    epoch, rest = divmod(step, steps_per_epoch)
    if rest:
        raise ValueError(
            f"{path} was saved at optimizer step {step}, not at the end of an epoch of {steps_per_epoch} steps: "
            "resume with the --batch-size and number of replicas of the run that saved it "
            "(or train in a new --output_dir)."
        )
    logger.info("resuming from %s: %d epoch(s) done, optimizer step %d", path, epoch, step)
    return epoch
