"""The paper's Table 6, run: the same small CrossViT trained with each of the five fusions.

    python recipes/fusion_ablation.py --epochs 20
    python recipes/fusion_ablation.py --fusions none,cross_attention --data-path DIR   # your folder

By default the data are the quickstart's (scikit-learn's digits as a 48 x 48 image folder, written
to OUTPUT_DIR/digits) and the model is the quickstart's small CrossViT (widths 64/128, one
multi-scale encoder), trained with the quickstart's recipe (recipes/quickstart.py). Every fusion
trains in OUTPUT_DIR/<fusion>/ (recipes/imagenet.py's artefacts, without the SavedModel); the
table of Table 6's columns (top-1, each branch's top-1 alone, params, GMACs) is written to
OUTPUT_DIR/fusion_ablation.md and OUTPUT_DIR/fusion_ablation.json. A run that is interrupted
continues where it stopped when given the same command. Any other flag goes to recipes/imagenet.py.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from quickstart import training_flags, write_digits_folder  # noqa: E402  (recipes/quickstart.py)

FUSIONS = ("none", "all_attention", "class_token", "pairwise", "cross_attention")  # Table 6's order, I-V
RESULTS = "fusion_ablation"  # OUTPUT_DIR/fusion_ablation.md and .json


def parse_fusions(text):
    fusions = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in fusions if f not in FUSIONS]
    if bad or not fusions:
        raise ValueError(f"--fusions {text!r}: choose from {', '.join(FUSIONS)} (comma-separated)")
    return fusions


def measure(run_dir):
    """Table 6's columns for one finished run: its results.json and its saved model's counts."""
    import crossvit_keras
    from crossvit_keras import training
    from crossvit_keras.ablations import count_macs

    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    model = crossvit_keras.load_model(os.path.join(run_dir, training.FINAL_MODEL))
    return {
        **{k: results[k] for k in ("top1", "top5", "top1_small_branch", "top1_large_branch")},
        "params": model.count_params(),
        "gmacs": count_macs(model.get_config()) / 1e9,
        "fit_seconds": results["fit_seconds"],
    }


def markdown(rows, description):
    lines = [
        f"Fusions (paper Table 6) on {description}",
        "",
        "| fusion | top-1 (%) | small branch alone (%) | large branch alone (%) | params | MMACs | fit (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fusion, r in rows.items():
        cells = [
            fusion,
            f"{100 * r['top1']:.1f}",
            f"{100 * r['top1_small_branch']:.1f}",
            f"{100 * r['top1_large_branch']:.1f}",
            f"{r['params']:,}",
            f"{1000 * r['gmacs']:.1f}",
            f"{r['fit_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=os.path.join("runs", "fusion_ablation"))
    parser.add_argument("--fusions", default=",".join(FUSIONS), help="comma-separated; default all five")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-path", default=None, help="an image folder (train/, val/); default: the digits")
    args, extra = parser.parse_known_args(argv)  # anything else goes to recipes/imagenet.py's flags
    try:
        fusions = parse_fusions(args.fusions)
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2

    from crossvit_keras.atomic import atomic_path
    from crossvit_keras.cli import train
    from crossvit_keras.training.callbacks import write_json

    start = time.perf_counter()
    data_path = args.data_path
    if data_path is None:
        data_path = os.path.join(args.output_dir, "digits")
        train_count, val_count = write_digits_folder(data_path)
        description = f"scikit-learn's digits ({train_count} train / {val_count} val images, 48 x 48)"
    else:
        description = data_path
    verbose = "1" if sys.stdout.isatty() else "2"  # a progress bar on a terminal, plain lines otherwise
    rows = {}
    for index, fusion in enumerate(fusions, 1):
        run_dir = os.path.join(args.output_dir, fusion)
        print(f"[{index}/{len(fusions)}] fusion={fusion}: training {args.epochs} epoch(s) in {run_dir}", flush=True)
        command = ["--data-set", "IMNET", "--data-path", data_path, "--output_dir", run_dir, "--fusion", fusion]
        command += ["--model", "crossvit_tiny_240", "--batch-size", str(args.batch_size), "--no-saved-model"]
        command += training_flags(args.epochs) + ["--verbose", verbose] + extra
        code = train.main(command, prog="recipes/imagenet.py")
        if code:
            return code
        rows[fusion] = measure(run_dir)
        r = rows[fusion]
        print(
            f"[{index}/{len(fusions)}] fusion={fusion}: top-1 {100 * r['top1']:.1f}% (small branch alone "
            f"{100 * r['top1_small_branch']:.1f}%, large {100 * r['top1_large_branch']:.1f}%), "
            f"{r['params']:,} params, {1000 * r['gmacs']:.1f} MMACs",
            flush=True,
        )
    seconds = time.perf_counter() - start
    lines = markdown(rows, description)
    lines += ["", f"{args.epochs} epochs per fusion; {seconds / 60:.1f} min in all."]
    with atomic_path(os.path.join(args.output_dir, f"{RESULTS}.md")) as temporary:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    summary = {"data": description, "epochs": args.epochs, "seconds": round(seconds, 1), "fusions": rows}
    write_json(os.path.join(args.output_dir, f"{RESULTS}.json"), summary)
    print("\n".join(lines))
    print(f"wrote {os.path.join(args.output_dir, RESULTS)}.md and .json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
