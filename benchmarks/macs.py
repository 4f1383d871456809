"""Parameters and multiply-accumulates: every variant against timm's figures, and the paper's
Tables 6 (the fusions) and 7 (the ablations) on CrossViT-S, ours next to the paper's.

    python benchmarks/macs.py

(from the repository root). Builds each model (no training, no timing) and counts: params
(model.count_params(); the paper's counts leave out the position embeddings), GMACs
(crossvit_keras.ablations.count_macs: the matmuls and convolutions, as timm counts them) and, for
Tables 6 and 7, traced GMACs (summed from the shapes of the MatMul/BatchMatMul/Conv2D ops of the
model's TensorFlow graph: ablations.traced_macs, an independent check). Every variant must be
within 1% of timm's params and GMACs, every row of Tables 6 and 7 within 0.2 M params and 0.2
GMACs of the paper's (all-attention exempt: see AllAttentionFusion); the exit status is 1 if one
is not.
"""

import argparse
import sys

import common


def measure(overrides):
    """{params, paper_params, gmacs, traced_gmacs} of crossvit_small_240 with `overrides`."""
    import crossvit_keras
    from crossvit_keras import ablations, configs

    model = crossvit_keras.create_model(ablations.BASE, **overrides)
    return {
        "params": model.count_params(),
        "paper_params": ablations.paper_params(model),
        "gmacs": ablations.count_macs(configs.resolve_config(ablations.BASE, **overrides)) / 1e9,
        "traced_gmacs": ablations.traced_macs(model) / 1e9,
    }


def _row(label, counts, paper, exempt=False):
    """A Markdown row, and whether it is within the tolerance of the paper's (params, GMACs)."""
    from crossvit_keras.ablations import GMACS_TOLERANCE, PARAMS_TOLERANCE_M

    paper_m, paper_gmacs = paper
    if paper_m is None:
        ok, verdict = True, "-"
    else:
        ok = (
            abs(counts["paper_params"] / 1e6 - paper_m) <= PARAMS_TOLERANCE_M
            and abs(counts["gmacs"] - paper_gmacs) <= GMACS_TOLERANCE
        )
        verdict = "yes" if ok else ("no (documented)" if exempt else "NO")
    cells = [
        label,
        f"{counts['params']:,}",
        f"{counts['paper_params'] / 1e6:.2f}",
        "-" if paper_m is None else f"{paper_m:.1f}",
        f"{counts['gmacs']:.2f}",
        f"{counts['traced_gmacs']:.2f}",
        "-" if paper_gmacs is None else f"{paper_gmacs:.1f}",
        verdict,
    ]
    return "| " + " | ".join(cells) + " |", ok or exempt


HEADER = [
    "| {} | params | params w/o pos. embed. (M) | paper (M) | GMACs | traced GMACs | paper GFLOPs | within 0.2 |",
    "|---|---:|---:|---:|---:|---:|---:|---|",
]


def tables(log=print):
    """Markdown lines of Tables 6 and 7 (ours next to the paper's), and whether every row is
    within the tolerance (all-attention exempt). `log` gets a progress line per model."""
    from crossvit_keras.ablations import ABLATIONS, BASE, PAPER_TABLE6, PAPER_TABLE7

    lines, ok = [f"Table 6: the fusions on {BASE}", "", HEADER[0].format("fusion"), HEADER[1]], True
    for fusion, paper in PAPER_TABLE6.items():
        log(f"counting {BASE} fusion={fusion}")
        row, good = _row(fusion, measure({"fusion": fusion}), paper[:2], exempt=fusion == "all_attention")
        lines.append(row)
        ok &= good
    lines += ["", f"Table 7: ablations of {BASE}", "", HEADER[0].format("ablation"), HEADER[1]]
    for name, paper in PAPER_TABLE7.items():
        log(f"counting ablation {name}")
        row, good = _row(name, measure(ABLATIONS.get(name, {})), paper[:2])
        lines.append(row)
        ok &= good
    lines += [
        "",
        "params: model.count_params(); the paper's counts leave out the position embeddings. GMACs: "
        "ablations.count_macs (matmuls and convolutions, as timm); traced: summed from the shapes of the "
        "MatMul/BatchMatMul/Conv2D ops of the model's TensorFlow graph (ablations.traced_macs).",
    ]
    return lines, ok


def build_parser():
    return argparse.ArgumentParser(
        prog="python benchmarks/macs.py",
        description="Params and GMACs of every variant against timm's, and the paper's Tables 6 and 7 "
        "(ours next to the paper's); exit status 1 if a row is outside its tolerance.",
    )


def main(argv=None):
    build_parser().parse_args(argv)
    from crossvit_keras import configs

    lines, ok = common.macs_table(list(configs.VARIANTS))
    print("\n".join(lines) + "\n", flush=True)
    ablation_lines, ablations_ok = tables(common.log)  # Tables 6 and 7 of the paper
    print("\n".join(ablation_lines))
    return 0 if ok and ablations_ok else 1


if __name__ == "__main__":
    sys.exit(main())
