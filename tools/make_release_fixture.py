"""Make a release-compatibility fixture: small `.keras` files saved BY A RELEASE of crossvit_keras,
with the logits that release computed, for tests/test_release_compat.py (a later tree must load
them and give the same logits).

Run it with the RELEASE's package importable (not the current tree's). From the repository root of
the current checkout (here the release is 0.1.0, commit 78f8a18):

    git worktree add ../release-0.1.0 78f8a18
    cd ../release-0.1.0
    PYTHONPATH=. python ../<this checkout>/tools/make_release_fixture.py \\
        --output ../<this checkout>/tests/fixtures/release_0.1.0
    cd ../<this checkout>
    git worktree remove --force ../release-0.1.0

(The script is run by path from the current checkout: Python puts tools/ on sys.path, not the
repository root, so `crossvit_keras` comes from PYTHONPATH, i.e. the release. The script prints
the package path and the release commit it found and stores them in expected.npz.)

Written files (about 0.8 MB in all; not byte-reproducible, the .keras zips carry timestamps):

- model.keras (~0.5 MB): CrossViT "crossvit_tiny_240" shrunk to image_sizes (24, 16) (the large
  branch resized by BicubicResize), embed_dims (8, 16), one stage (1, 1, 1), 2 heads, MLP ratio
  2, 10 classes; weights seeded; compiled as the training recipe compiles it (the release's
  AdamW with the WarmupCosine schedule, its loss and weighted metrics: training.build_optimizer /
  compile_model where the release has them) and trained ONE step on the stored images, so the
  file carries the optimizer's variables (iterations = 1) like a recipe checkpoint.
- model_multiconv.keras (~0.25 MB): the same with multi_conv=True (the dagger patch embedding),
  not compiled (an inference export).
- expected.npz: `images` (NHWC float32, seeded N(0, 1)), `logits_<file stem>` (the release's
  float32 logits for them, model(images, training=False) after saving), `meta_json` (per file:
  compiled or not, optimizer / schedule registered names and configs, optimizer iterations) and
  `versions_json` (crossvit_keras version and path, release commit, keras / tensorflow / numpy /
  python versions).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

SEED = 20240601
NUM_IMAGES = 4
NUM_CLASSES = 10
IMAGE_SIZE = 24
BASE = {
    "image_sizes": (IMAGE_SIZE, 16),  # small branch 2 x 2 patches; large branch resized, 1 x 1
    "embed_dims": (8, 16),
    "num_heads": (2, 2),
    "mlp_ratios": (2.0, 2.0),
}
MODELS = {
    # file stem: (create_model overrides, compiled and trained one step)
    "model": ({**BASE, "depths": ((1, 1, 1),)}, True),
    "model_multiconv": ({**BASE, "depths": ((1, 1, 1),), "multi_conv": True}, False),
}


def _git(package_dir, *args):
    try:
        out = subprocess.run(
            ["git", "-C", str(package_dir), *args], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _perturb_weights(model, rng):
    """Every variable moved away from its initial value (LayerNorm gammas off 1, biases off 0), so
    that a weight lost or mis-assigned on loading changes the logits."""
    for variable in model.weights:
        value = variable.numpy()
        scale = 0.1 if value.ndim <= 1 else max(float(value.std()), 0.02)
        variable.assign((value + scale * rng.standard_normal(value.shape)).astype(value.dtype))


def _build_optimizer(model, schedule):
    """The recipe's optimizer: training.build_optimizer where the release has it (AdamW, timm's
    weight-decay exclusions), else crossvit_keras.optimizers.AdamW directly."""
    import crossvit_keras

    try:
        from crossvit_keras.training import build_optimizer
    except ImportError:
        optimizer = crossvit_keras.optimizers.AdamW(schedule, weight_decay=0.05, epsilon=1e-8)
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
        return optimizer
    return build_optimizer(model, "adamw", schedule, 0.05)


def _compile(model, optimizer):
    try:
        from crossvit_keras.training import compile_model
    except ImportError:
        compile_model = None
    if compile_model is not None:
        compile_model(model, optimizer, NUM_CLASSES, jit_compile=False, steps_per_execution=1)
    else:
        import keras

        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )


def make(output):
    import keras
    import numpy as np
    import tensorflow as tf

    import crossvit_keras

    package_dir = Path(crossvit_keras.__file__).resolve().parent
    commit = _git(package_dir, "rev-parse", "HEAD")
    dirty = _git(package_dir, "status", "--porcelain", "--untracked-files=no", "--", ".")
    print(f"crossvit_keras {crossvit_keras.__version__} from {package_dir} (commit {commit}, dirty: {bool(dirty)})")

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    images = rng.standard_normal((NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(NUM_IMAGES) % NUM_CLASSES, NUM_CLASSES).astype("float32")
    arrays = {"images": images}
    meta = {}
    for offset, (stem, (overrides, compiled)) in enumerate(MODELS.items()):
        keras.utils.set_random_seed(SEED + offset)
        model = crossvit_keras.create_model("crossvit_tiny_240", num_classes=NUM_CLASSES, **overrides)
        _perturb_weights(model, np.random.default_rng(SEED + 100 + offset))
        entry = {"overrides": json.loads(json.dumps(overrides)), "compiled": compiled}
        if compiled:
            schedule = crossvit_keras.schedules.WarmupCosine(
                5e-4, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5
            )
            optimizer = _build_optimizer(model, schedule)
            _compile(model, optimizer)
            model.train_on_batch(images, labels)  # optimizer variables exist, iterations = 1
            entry.update(
                optimizer=keras.saving.get_registered_name(type(optimizer)),
                optimizer_config=keras.saving.serialize_keras_object(optimizer)["config"],
                schedule=keras.saving.get_registered_name(type(schedule)),
                schedule_config=schedule.get_config(),
                iterations=int(optimizer.iterations.numpy()),
            )
        path = output / f"{stem}.keras"
        model.save(path)
        logits = np.asarray(model(images, training=False), dtype="float32")
        # the release itself must read back what it wrote (else the fixture proves nothing)
        reloaded = np.asarray(keras.models.load_model(path)(images, training=False), dtype="float32")
        np.testing.assert_allclose(reloaded, logits, rtol=0, atol=1e-6 * float(np.abs(logits).max()))
        arrays[f"logits_{stem}"] = logits
        entry["params"] = int(model.count_params())
        meta[stem] = entry
        print(f"{path}: {path.stat().st_size:,} bytes, {entry['params']:,} parameters, compiled={compiled}")

    versions = {
        "crossvit_keras": crossvit_keras.__version__,
        "crossvit_keras_path": str(package_dir),
        "release_commit": commit,
        "release_dirty": bool(dirty),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "seed": SEED,
    }
    np.savez(
        output / "expected.npz",
        **arrays,
        meta_json=np.array(json.dumps(meta, sort_keys=True, default=str)),
        versions_json=np.array(json.dumps(versions, sort_keys=True)),
    )
    print(f"{output / 'expected.npz'}: {(output / 'expected.npz').stat().st_size:,} bytes")
    print(json.dumps(versions, indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="directory to write (e.g. tests/fixtures/release_0.1.0)")
    args = parser.parse_args(argv)
    make(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
