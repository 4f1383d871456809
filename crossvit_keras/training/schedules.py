"""The learning-rate schedule of DeiT and the paper, per optimizer step."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="crossvit_keras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """timm's CosineLRScheduler (as DeiT and the official CrossViT use it), evaluated per step:

        step < warmup_steps:  warmup_lr + step * (base_lr - warmup_lr) / warmup_steps
        otherwise:            min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2
        step >= total_steps:  min_lr

    As in timm (warmup_prefix=False) the cosine runs over all steps and the warm-up replaces its
    start. timm steps it once per epoch; here step = the optimizer's iteration count."""

    def __init__(self, base_lr, total_steps, warmup_steps=0, warmup_lr=1e-6, min_lr=1e-5, name="warmup_cosine"):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}.")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step, self.total_steps) / self.total_steps
        cosine = self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + ops.cos(math.pi * progress))
        if not self.warmup_steps:
            return cosine
        warmup = self.warmup_lr + step * (self.base_lr - self.warmup_lr) / self.warmup_steps
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def value(self, step):
        """The same schedule in plain Python (for logs, plots and tests)."""
        if step < self.warmup_steps:
            return self.warmup_lr + step * (self.base_lr - self.warmup_lr) / self.warmup_steps
        progress = min(step, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_lr": self.warmup_lr,
            "min_lr": self.min_lr,
            "name": self.name,
        }
