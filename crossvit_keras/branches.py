"""Each branch's logits on its own: the paper's single-branch accuracy (Table 6, "computed using
CLS from one branch only").

    small, large = crossvit_keras.branch_logits(model)(images)   # (model(images) == (small + large) / 2)

The model here is a view of the same layers (no weights copied), so it follows the model as it
trains. The recipe's evaluation (crossvit_keras.training.evaluation) reports top-1 of the ensemble
and of each branch in one pass over the validation set.
"""

import keras

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
