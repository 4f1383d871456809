"""LoRA fine-tuning against full fine-tuning, with the recipe (`--lora-rank`), on a shifted copy of
the quickstart's digits; and the trainable parameters LoRA leaves in a released variant.

    python recipes/quickstart.py   # the model to fine-tune: runs/quickstart/model.keras
    python benchmarks/lora.py --finetune runs/quickstart/model.keras --digits runs/quickstart/digits

The new task: the same digits turned a quarter turn and inverted (dark digits on white), written as
an image folder beside the runs; both runs start from the quickstart's trained model and use its
flags (recipes/quickstart.py training_flags) for `--epochs` epochs. Reported: the held-out top-1 of
the start model on the new task, then after full fine-tuning and after LoRA, with the trainable
parameters and the process CPU time of each run (the machine may be shared).
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "recipes"))
sys.path.insert(0, HERE)
import common  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(prog="python benchmarks/lora.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--finetune", default=os.path.join("runs", "quickstart", "model.keras"))
    parser.add_argument("--digits", default=os.path.join("runs", "quickstart", "digits"))
    parser.add_argument("--output-dir", default=os.path.join("runs", "lora"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--variant", default="crossvit_15_240", help="the variant whose parameters are counted")
    return parser


def write_shifted_digits(source, target):
    """source/{train,val}/<digit>/*.png turned 90 degrees and inverted, as target/..."""
    from PIL import Image, ImageOps

    marker = os.path.join(target, ".complete")
    if os.path.exists(marker):
        return
    for split in ("train", "val"):
        for digit in os.listdir(os.path.join(source, split)):
            os.makedirs(os.path.join(target, split, digit), exist_ok=True)
            for name in os.listdir(os.path.join(source, split, digit)):
                image = Image.open(os.path.join(source, split, digit, name)).convert("RGB")
                ImageOps.invert(image.rotate(90)).save(os.path.join(target, split, digit, name))
    open(marker, "w").close()


def parameter_counts(variant, rank):
    """(all parameters, trainable ones with LoRA, adapted layers) of a variant name or .keras file."""
    import crossvit_keras
    from crossvit_keras import tuning

    model = crossvit_keras.load_model(variant) if variant.endswith(".keras") else crossvit_keras.create_model(variant)
    total = model.count_params()
    tuning.enable_lora(model, rank)
    return total, tuning.trainable_parameters(model), len(tuning.lora_layers(model))


def main(argv=None):
    args = build_parser().parse_args(argv)
    from quickstart import training_flags

    from crossvit_keras.cli import train

    total, trainable, layers = parameter_counts(args.variant, args.rank)
    print(
        f"{args.variant}: {total:,} parameters; with LoRA rank {args.rank} on {layers} projections: "
        f"{trainable:,} trainable ({100 * trainable / total:.2f}%, the heads included)",
        flush=True,
    )
    data = os.path.join(args.output_dir, "digits_shifted")
    write_shifted_digits(args.digits, data)
    common_flags = ["--data-set", "IMNET", "--data-path", data, "--model", "crossvit_tiny_240", "--batch-size", "64"]
    common_flags += training_flags(args.epochs) + ["--warmup-epochs", "1", "--verbose", "2", "--no-saved-model"]
    results = {}
    start_dir = os.path.join(args.output_dir, "start")
    code = train.main(common_flags + ["--output_dir", start_dir, "--eval", "--resume", args.finetune])
    if code:
        return code
    with open(os.path.join(start_dir, "eval.json"), encoding="utf-8") as f:
        results["start model (no fine-tuning)"] = {"top1": json.load(f)["val_top1"]}
    for label, extra in (("full fine-tuning", []), (f"LoRA rank {args.rank}", ["--lora-rank", str(args.rank)])):
        out = os.path.join(args.output_dir, label.split()[0].lower())
        cpu = common.cpu_seconds()
        code = train.main(common_flags + ["--output_dir", out, "--finetune", args.finetune] + extra)
        if code:
            return code
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            top1 = json.load(f)["val_top1"]
        results[label] = {"top1": top1, "cpu_s": common.cpu_seconds() - cpu}
    total, trainable, _ = parameter_counts(args.finetune, args.rank)
    results["full fine-tuning"]["trainable"] = total
    results[f"LoRA rank {args.rank}"]["trainable"] = trainable
    print(f"\nFine-tuning {args.finetune} on {data} ({args.epochs} epochs, {common.cpu_name()}):")
    print(f"{'run':30} {'val top-1':>9} {'trainable':>10} {'CPU s':>8}")
    for label, result in results.items():
        cpu = f"{result['cpu_s']:8.0f}" if "cpu_s" in result else "       -"
        trainable = f"{result['trainable']:10,}" if "trainable" in result else "         -"
        print(f"{label:30} {100 * result['top1']:8.1f}% {trainable} {cpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
