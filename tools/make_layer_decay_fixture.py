"""Write tests/fixtures/layer_decay_timm.json: the learning-rate scale and weight decay timm's
`param_groups_layer_decay` gives every parameter of small timm CrossViTs (the reduced configs of
make_fixtures.py: two stages, three stages with mixed heads, the three-conv patch embedding), for
layer_decay 0.75 and weight_decay 0.05, as timm's create_optimizer_v2 calls it (the model's
no_weight_decay() excluded from weight decay). Development-only: needs torch + timm.

    ~/.cache/crossvit-reference/bin/python tools/make_layer_decay_fixture.py
"""

import json
import sys
from pathlib import Path

import timm
import torch
from timm.models.crossvit import CrossVit
from timm.optim._param_groups import param_groups_layer_decay

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import REDUCED  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "layer_decay_timm.json"
LAYER_DECAY = 0.75
WEIGHT_DECAY = 0.05


def scales(model):
    groups = param_groups_layer_decay(
        model, weight_decay=WEIGHT_DECAY, no_weight_decay_list=model.no_weight_decay(), layer_decay=LAYER_DECAY
    )
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: [g["lr_scale"], g["weight_decay"]] for g in groups for p in g["params"]}


def main():
    torch.manual_seed(0)
    models = {}
    for name in ("parity_reduced", "parity_reduced_mixed", "parity_reduced_multiconv"):
        model = CrossVit(**REDUCED[name])
        params = scales(model)
        models[name] = {"kwargs": REDUCED[name], "params": {n: params[n] for n, _ in model.named_parameters()}}
    fixture = {
        "versions": {"timm": timm.__version__, "torch": torch.__version__.split("+")[0]},
        "layer_decay": LAYER_DECAY,
        "weight_decay": WEIGHT_DECAY,
        "models": models,
    }
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in fixture.items() if k != "models"]
    lines.append('"models": {\n' + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in models.items()) + "\n}")
    OUT.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one line per model
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
