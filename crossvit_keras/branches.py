"""Each branch's logits on its own: the paper's single-branch accuracy (Table 6, "computed using
CLS from one branch only").

    small, large = crossvit_keras.branch_logits(model)(images)   # (model(images) == (small + large) / 2)

The models here are views of the same layers (no weights copied), so they follow the model as it
trains. The recipe's evaluation (crossvit_keras.training) reports top-1 of the ensemble and of
each branch with `evaluation_model` in one pass over the validation set.
"""

import keras

from crossvit_keras.compat import MirroredXLA

# The branches in the model's order: branch 0 has the small patches (12), branch 1 the large (16).
BRANCHES = ("small", "large")
BRANCH_METRICS = tuple(f"top1_{branch}_branch" for branch in BRANCHES)


def branch_logits(model):
    """A keras.Model sharing `model`'s weights: images -> [small-branch logits, large-branch logits]
    (float32), each branch's head applied to its own CLS token; their mean is `model`'s output."""
    head = model.get_layer("head")
    if not head.num_classes:
        raise ValueError(f"{model.name} has num_classes=0 (features only): it has no heads, so no branch logits.")
    outputs = [
        keras.layers.Activation("linear", dtype="float32", name=f"logits_{branch}")(logits)
        for branch, logits in zip(BRANCHES, head.branch_logits(head.input), strict=True)
    ]
    return keras.Model(model.input, outputs, name=f"{model.name}_branches")


class EvaluationModel(MirroredXLA, keras.Model):
    """A functional model that, like CrossViT, evaluates with XLA under MirroredStrategy."""


def evaluation_model(model):
    """images -> [logits, small-branch logits, large-branch logits] with `model`'s weights: the
    ensemble and both branches from one forward pass (`compile_evaluation_model` adds the metrics)."""
    outputs = [model.output, *branch_logits(model).outputs]
    return EvaluationModel(model.input, outputs, name=f"{model.name}_eval")


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
    return model


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
