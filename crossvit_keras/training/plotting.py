"""A PNG of the training curves from the per-epoch JSON-lines log that training writes."""

import json

from crossvit_keras.atomic import atomic_path


def read_log(path):
    """The records of a JSON-lines log, one dict per epoch."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curves(records, path, title=None):
    """Loss, top-1 / top-5 accuracy and learning rate per epoch -> PNG at `path` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    panels = (
        ("loss", (("loss", "train"), ("val_loss", "val"))),
        ("accuracy (%)", (("top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5"))),
        ("learning rate", (("lr", "lr"),)),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for axis, (label, series) in zip(axes, panels, strict=True):
        for key, name in series:
            points = [(e, r[key]) for e, r in zip(epochs, records, strict=True) if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ys = [100 * y for y in ys] if "accuracy" in label else ys
                axis.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.lines and label != "learning rate":
            axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=100)
    finally:
        plt.close(figure)
    return path
