"""The recipe's evaluation: the ensemble's loss, top-1 and top-5 and each branch's top-1 alone
(paper Table 6) from one forward pass over the validation set."""

import keras

from crossvit_keras.branches import BRANCH_METRICS, BRANCHES, branch_logits
from crossvit_keras.training.compat import split_xla_steps


def evaluation_model(model):
    """images -> [logits, small-branch logits, large-branch logits] with `model`'s weights: the
    ensemble and both branches from one forward pass (`compile_evaluation_model` adds the metrics)."""
    outputs = [model.output, *branch_logits(model).outputs]
    return keras.Model(model.input, outputs, name=f"{model.name}_eval")


def compile_evaluation_model(model, num_classes, jit_compile="auto", steps_per_execution=1):
    """The recipe's evaluation: exact cross-entropy, top-1 and top-5 of the ensemble (as
    training.compile_model), top-1 of each branch; targets and weights once per output
    (`repeat_targets`)."""

    def top1():
        return keras.metrics.CategoricalAccuracy(name="top1")

    model.compile(
        loss=[keras.losses.CategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"), None, None],
        weighted_metrics=[
            [
                keras.metrics.CategoricalCrossentropy(from_logits=True, name="ce"),
                top1(),
                keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
            ],
            [top1()],
            [top1()],
        ],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return split_xla_steps(model)


def repeat_targets(images, labels, weights):
    """(images, labels, weights) -> the same labels and weights for each of the three outputs."""
    return images, (labels,) * 3, (weights,) * 3


def evaluation_metrics(logs):
    """evaluate(return_dict=True)'s logs of an evaluation model -> {loss, top1, top5,
    top1_small_branch, top1_large_branch}."""
    metrics = {"loss": logs["logits_ce"], "top1": logs["logits_top1"], "top5": logs["logits_top5"]}
    metrics.update({name: logs[f"logits_{branch}_top1"] for branch, name in zip(BRANCHES, BRANCH_METRICS, strict=True)})
    return {k: float(v) for k, v in metrics.items()}


class BranchAccuracy(keras.callbacks.Callback):
    """After every epoch of `fit`, adds val_top1_small_branch and val_top1_large_branch to the
    epoch's logs (so log.jsonl, TensorBoard and the history get them), from `evaluate()` (a
    function returning `evaluation_metrics`). It costs one more forward pass over the validation
    set per epoch; put it before the callbacks that read the logs."""

    def __init__(self, evaluate):
        super().__init__()
        self.evaluate = evaluate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            metrics = self.evaluate()
            logs.update({f"val_{name}": metrics[name] for name in BRANCH_METRICS})
