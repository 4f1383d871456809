"""Make the PyTorch/timm reference fixtures in tests/fixtures/ (development-only: needs torch + timm).

Run from the repository root with the reference venv's python (see tools/README.md):

    <venv>/bin/python tools/make_fixtures.py            # (re)write tests/fixtures/
    <venv>/bin/python tools/make_fixtures.py --verify   # regenerate in a temp dir, compare byte for byte

Written files (all byte-reproducible: fixed zip timestamps, one CPU thread):

- bicubic_resize.npz: NHWC in_i / out_i pairs of F.interpolate(mode='bicubic', align_corners=False)
  (see BICUBIC_NOTE for how torch computes the source coordinates).
- timm_reference.json: per timm variant the exact parameter count, the ordered state-dict keys with
  shapes, GMACs, the default_cfg essentials, the CrossVit constructor kwargs; plus converter notes.
- parity_*.npz: golden outputs of timm models whose weights are ``random_state_dict(shapes, seed)``
  from tools/fixture_weights.py (weights are NOT stored: a test regenerates them from the seed and
  the stored key order/shapes, without torch).

Checkpoint key names (read from timm 1.0.31 timm/models/crossvit.py, ``_create_crossvit``): the
official IBM/CrossViT checkpoints hold a plain state dict whose position embeddings and class
tokens are ``nn.ParameterList``s, named ``pos_embed.0``, ``pos_embed.1``, ``cls_token.0``,
``cls_token.1``. timm registers them as separate parameters ``pos_embed_0`` ... ``cls_token_1``
(hard-coded for torchscript), and its ``pretrained_filter_fn`` remaps by replacing EVERY "." with
"_" in any key containing "pos_embed" or "cls_token"; all other keys pass through unchanged (the
module tree is otherwise the same as the official code). timm's own hub weights
(hf_hub_id 'timm/crossvit_*.in1k', safetensors) already use the underscore names, so the filter
is a no-op on them. A converter should accept both spellings.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import io
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.crossvit import CrossVit
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_weights import random_images, random_state_dict, shapes_to_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"

# ----------------------------------------------------------------------------------------------
# The 11 timm variants as CrossVit constructor kwargs (timm's register_model args + img_size,
# which timm takes from the pretrained cfg's input_size; CrossVit's own default is 224).
# Checked against timm.create_model(name) below (same state-dict keys and shapes).
_ARCH = {  # embed_dim, large-branch depth M, heads, mlp ratio
    "tiny": ((96, 192), 4, 3, 4.0),
    "small": ((192, 384), 4, 6, 4.0),
    "base": ((384, 768), 4, 12, 4.0),
    "9": ((128, 256), 3, 4, 3.0),
    "15": ((192, 384), 5, 6, 3.0),
    "18": ((224, 448), 6, 7, 3.0),
}


def _variant_kwargs(arch: str, dagger: bool, size: int) -> dict:
    embed, m, heads, mlp = _ARCH[arch]
    inner = 224 if size == 240 else 384
    return dict(
        img_size=[size, size],
        img_scale=[1.0, inner / size],
        patch_size=[12, 16],
        embed_dim=list(embed),
        depth=[[1, m, 0]] * 3,
        num_heads=[heads, heads],
        mlp_ratio=[mlp, mlp, 1.0],
        multi_conv=dagger,
        num_classes=1000,
    )


VARIANTS = {
    "crossvit_tiny_240": _variant_kwargs("tiny", False, 240),
    "crossvit_small_240": _variant_kwargs("small", False, 240),
    "crossvit_base_240": _variant_kwargs("base", False, 240),
    "crossvit_9_240": _variant_kwargs("9", False, 240),
    "crossvit_15_240": _variant_kwargs("15", False, 240),
    "crossvit_18_240": _variant_kwargs("18", False, 240),
    "crossvit_9_dagger_240": _variant_kwargs("9", True, 240),
    "crossvit_15_dagger_240": _variant_kwargs("15", True, 240),
    "crossvit_18_dagger_240": _variant_kwargs("18", True, 240),
    "crossvit_15_dagger_408": _variant_kwargs("15", True, 408),
    "crossvit_18_dagger_408": _variant_kwargs("18", True, 408),
}

# Published numbers (shared reference facts: exact timm parameter counts with 1000 classes, timm's
# GMACs and ImageNet-1k top-1 of the released weights).
PUBLISHED = {
    "crossvit_tiny_240": (7_014_800, 1.57, 73.35),
    "crossvit_small_240": (26_856_272, 5.63, 81.04),
    "crossvit_base_240": (105_025_232, 21.22, 82.21),
    "crossvit_9_240": (8_553_296, 1.85, 73.99),
    "crossvit_15_240": (27_528_464, 5.81, 81.52),
    "crossvit_18_240": (43_271_408, 9.05, 82.39),
    "crossvit_9_dagger_240": (8_776_592, 1.99, 76.99),
    "crossvit_15_dagger_240": (28_209_008, 6.13, 82.30),
    "crossvit_18_dagger_240": (44_266_976, 9.50, 82.49),
    "crossvit_15_dagger_408": (28_500_080, 21.45, 83.84),
    "crossvit_18_dagger_408": (44_606_560, 32.47, 84.20),
}

# Reduced configs built directly with timm's CrossVit (fast, small golden files).
REDUCED = {
    # 48x48 input; small branch 12px patches -> 4x4; large branch int(48 * 32/48) = 32 -> 2x2.
    "parity_reduced": dict(
        img_size=[48, 48],
        img_scale=[1.0, 32 / 48],
        patch_size=[12, 16],
        embed_dim=[16, 32],
        depth=[[1, 2, 0], [1, 2, 0]],
        num_heads=[2, 2],
        mlp_ratio=[2.0, 2.0, 1.0],
        num_classes=7,
    ),
    # K = 3 encoders, different head counts (fusion into branch j uses num_heads[j]) and mlp
    # ratios per branch. (crossvit_keras takes square images only, as the paper does.)
    "parity_reduced_mixed": dict(
        img_size=[48, 48],
        img_scale=[1.0, 32 / 48],
        patch_size=[12, 16],
        embed_dim=[16, 24],
        depth=[[1, 2, 0], [1, 2, 0], [1, 2, 0]],
        num_heads=[2, 4],
        mlp_ratio=[2.0, 3.0, 1.0],
        num_classes=5,
    ),
}
# Same with the 3-conv ("dagger") patch embedding: 48 -> 12 -> 4 -> 4 and 32 -> 8 -> 4 -> 2.
REDUCED["parity_reduced_multiconv"] = dict(REDUCED["parity_reduced"], multi_conv=True)
REDUCED_SEEDS = {"parity_reduced": 0, "parity_reduced_multiconv": 1, "parity_reduced_mixed": 2}
FULL_PARITY = {"crossvit_9_240": 3, "crossvit_9_dagger_240": 4}

# Bicubic resize cases: (batch, in_h, in_w, channels, out_h, out_w). Inputs are N(0,1) rounded to
# multiples of 1/64 (exact in float32) so that the stored inputs compress well.
BICUBIC_CASES = [
    (1, 240, 240, 1, 224, 224),
    (1, 408, 408, 1, 384, 384),
    (2, 37, 29, 3, 20, 17),
    (2, 10, 13, 3, 23, 19),
    (1, 16, 12, 2, 16, 7),  # one axis unchanged, the other downscaled
]
BICUBIC_SEED = 2021
BICUBIC_NOTE = (
    "F.interpolate(mode='bicubic', align_corners=False) on CPU: A = -0.75, no antialias, taps clamped "
    "to the border. The source coordinate is float32: scale = float32(in) / float32(out), "
    "src = scale * (i + 0.5) - 0.5 rounded ONCE to float32 (as an FMA would; rounding the product "
    "first does not match). Coordinates computed exactly in float64 instead shift 240 -> 224 "
    "outputs by up to ~7e-5 (1 ulp of src near 200); with the float32/FMA rule the per-axis "
    "weights match torch to ~5e-7."
)


# ----------------------------------------------------------------------------------------------
def save_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed with fixed zip timestamps, so a rerun writes identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().numpy().transpose(0, 2, 3, 1)).astype(np.float32)


def state_dict_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_random_weights(model: torch.nn.Module, seed: int) -> dict[str, tuple[int, ...]]:
    shapes = state_dict_shapes(model)
    weights = random_state_dict(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return shapes


def compact_json(obj) -> str:
    """Indented JSON with lists of numbers kept on one line."""
    text = json.dumps(obj, indent=2)
    return (
        re.sub(
            r"\[\s*([-\d.e+,\s]*?)\s*\]",
            lambda m: "[" + ", ".join(p.strip() for p in m.group(1).split(",") if p.strip()) + "]",
            text,
        )
        + "\n"
    )


def versions() -> dict:
    return {"timm": timm.__version__, "torch": torch.__version__.split("+")[0]}


# ----------------------------------------------------------------------------------------------
def make_bicubic(out_dir: Path) -> None:
    rng = np.random.default_rng(BICUBIC_SEED)
    arrays = {}
    for i, (n, h, w, c, oh, ow) in enumerate(BICUBIC_CASES):
        x = (np.round(rng.standard_normal((n, h, w, c)) * 64.0) / 64.0).astype(np.float32)
        y = F.interpolate(to_nchw(x), size=(oh, ow), mode="bicubic", align_corners=False)
        arrays[f"in_{i}"] = x
        arrays[f"out_{i}"] = to_nhwc(y)
    save_npz(out_dir / "bicubic_resize.npz", arrays)


def count_macs(model: torch.nn.Module, height: int, width: int) -> tuple[float, dict[str, float]]:
    """GMACs of one forward pass of one image (FLOPs / 2), with per-op breakdown.

    FlopCounterMode counts matrix products (mm/addmm/bmm: Linear layers and the two attention
    matmuls) and convolutions, as 2 FLOPs per multiply-add. It does not count LayerNorm, GELU,
    softmax, residual adds, bias adds, the bicubic resize or the head mean. timm's fused CPU
    attention kernel is not registered with the counter, so attention is run unfused here.
    The totals come out 0.1-0.5 % below timm's published GMACs, presumably the ops skipped here.
    """
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False)]
    for m in fused:  # read at call time; set_fused_attn() only affects modules built afterwards
        m.fused_attn = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, height, width))
    finally:
        for m in fused:
            m.fused_attn = True
    by_op = {
        str(op).split(".")[1] if "." in str(op) else str(op): flops / 2e9
        for op, flops in counter.get_flop_counts()["Global"].items()
    }
    return counter.get_total_flops() / 2e9, by_op


def make_reference(out_dir: Path) -> list[str]:
    report = []
    variants = {}
    for name, kwargs in VARIANTS.items():
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=1000).eval()
        direct = CrossVit(**kwargs).eval()
        shapes = state_dict_shapes(model)
        if list(state_dict_shapes(direct).items()) != list(shapes.items()):
            raise AssertionError(f"{name}: CrossVit(**kwargs) differs from timm.create_model")
        num_params = sum(p.numel() for p in model.parameters())
        h, w = model.img_size
        gmacs, by_op = count_macs(model, h, w)
        cfg = model.pretrained_cfg
        pub_params, pub_gmacs, pub_top1 = PUBLISHED[name]
        variants[name] = {
            "constructor_kwargs": kwargs,
            "img_size_scaled": [list(s) for s in model.img_size_scaled],
            "num_tokens": [1 + pe.num_patches for pe in model.patch_embed],
            "num_params": num_params,
            "gmacs": round(gmacs, 4),
            "gmacs_by_op": {k: round(v, 4) for k, v in sorted(by_op.items())},
            "gmacs_vs_published": round(gmacs / pub_gmacs - 1.0, 4),
            "published": {"num_params": pub_params, "gmacs": pub_gmacs, "top1": pub_top1},
            "default_cfg": {
                "input_size": list(cfg["input_size"]),
                "crop_pct": cfg["crop_pct"],
                "crop_mode": cfg.get("crop_mode", "center"),
                "interpolation": cfg["interpolation"],
                "mean": list(cfg["mean"]),
                "std": list(cfg["std"]),
                "hf_hub_id": cfg.get("hf_hub_id"),
                "first_conv": list(cfg["first_conv"]),
                "classifier": list(cfg["classifier"]),
            },
            "state_dict": {k: list(v) for k, v in shapes.items()},
        }
        ok_p = "OK" if num_params == pub_params else "MISMATCH"
        rel = gmacs / pub_gmacs - 1.0
        # The counter leaves out LayerNorm, softmax, GELU, ...: a little below timm's published value.
        ok_g = "OK" if -0.01 <= rel <= 0.0 else "MISMATCH"
        report.append(
            f"{name:24s} params {num_params:>11,d} vs {pub_params:>11,d} {ok_p:8s} "
            f"GMACs {gmacs:7.3f} vs {pub_gmacs:6.2f} ({100 * rel:+.2f} %) {ok_g}"
        )
        if num_params != pub_params or ok_g != "OK":
            raise AssertionError(report[-1])
        del model, direct

    reference = {
        "versions": versions(),
        "notes": {
            "num_params": "sum(p.numel() for p in model.parameters()) of timm.create_model(name, num_classes=1000)",
            "gmacs": count_macs.__doc__.split("\n\n", 1)[1].strip().replace("\n    ", " "),
            "constructor_kwargs": "kwargs of timm.models.crossvit.CrossVit giving the same model as "
            "timm.create_model(name); img_size comes from the pretrained cfg",
            "state_dict": "ordered model.state_dict() keys -> PyTorch shapes (Linear (out, in), "
            "Conv2d (out, in, kh, kw))",
        },
        "converter_notes": {
            "official_checkpoint_keys": (
                "IBM/CrossViT .pth files are plain state dicts with pos_embed.0, pos_embed.1, "
                "cls_token.0, cls_token.1 (nn.ParameterList); timm names them pos_embed_0, pos_embed_1, "
                "cls_token_0, cls_token_1. timm's pretrained_filter_fn replaces every '.' with '_' in "
                "keys containing 'pos_embed' or 'cls_token' and keeps all other keys."
            ),
            "timm_hub_weights": "timm/crossvit_*.in1k (safetensors) already use the timm names",
            "linear": "weight (out, in) -> Dense kernel (in, out): transpose; bias as is",
            "conv": "weight (out, in, kh, kw) -> Conv2D kernel (kh, kw, in, out); bias as is",
            "qkv": (
                "blocks.*.attn.qkv.weight (3D, D): rows are [q | k | v], each split into heads "
                "contiguously (reshape(3, heads, D/heads)); fusion attention has separate wq/wk/wv"
            ),
            "layernorm": "weight -> gamma, bias -> beta; eps 1e-6 everywhere (norm_layer partial)",
            "projs": "blocks.{s}.projs.{b}.0 is LayerNorm(D_b), .1 is GELU (no params), .2 is Linear(D_b -> D_other)",
            "revert_projs": "blocks.{s}.revert_projs.{b}.0 is LayerNorm(D_other), .2 is Linear(D_other -> D_b)",
            "fusion": (
                "blocks.{s}.fusion.{b} is one CrossAttentionBlock (no nn.Sequential, no '.0') when "
                "depth[-1] == 0, as in all released variants; it works in dimension D_other with "
                "num_heads[other]"
            ),
            "dagger_patch_embed": "patch_embed.{b}.proj.{0,2,4} are the three convs (1 and 3 are ReLU)",
            "head": "head.{b}: Linear(D_b -> classes) on branch b's CLS token after norm.{b}; logits = mean",
            "bicubic": BICUBIC_NOTE,
        },
        "variants": variants,
    }
    (out_dir / "timm_reference.json").write_text(compact_json(reference))
    return report


def _golden(model: CrossVit, seed: int, kwargs: dict, with_tokens: bool, model_name: str | None) -> dict:
    shapes = load_random_weights(model, seed)
    h, w = model.img_size
    images = random_images(2, h, w, seed)
    x = to_nchw(images)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre_logits = model.forward_head(feats, pre_logits=True)
        logits = model(x)
        scaled = torch.nn.functional.interpolate(x, size=model.img_size_scaled[1], mode="bicubic", align_corners=False)
    out = {
        "seed": np.int64(seed),
        "kwargs_json": np.array(json.dumps(kwargs)),
        "state_dict_shapes_json": np.array(shapes_to_json(shapes)),
        "images_shape": np.array(images.shape, dtype=np.int64),
        "images_sha256": np.array(hashlib.sha256(images.tobytes()).hexdigest()),
        "logits": logits.numpy().astype(np.float32),
        "pre_logits": pre_logits.numpy().astype(np.float32),
        "versions_json": np.array(json.dumps(versions())),
    }
    if model_name is not None:
        out["model_name"] = np.array(model_name)
    if with_tokens:
        out["images"] = images
        out["scaled_image_1"] = to_nhwc(scaled)  # the large branch's bicubic-resized input
        for b, f in enumerate(feats):
            out[f"features_{b}"] = f.numpy().astype(np.float32)  # forward_features (after norm)
    return out


def make_parity(out_dir: Path) -> list[str]:
    report = []
    for name, kwargs in REDUCED.items():
        torch.manual_seed(0)
        model = CrossVit(**kwargs).eval()
        arrays = _golden(model, REDUCED_SEEDS[name], kwargs, with_tokens=True, model_name=None)
        save_npz(out_dir / f"{name}.npz", arrays)
        report.append(f"{name}.npz: logits {arrays['logits'].shape} std {arrays['logits'].std():.3f}")
    for name, seed in FULL_PARITY.items():
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=1000).eval()
        arrays = _golden(model, seed, VARIANTS[name], with_tokens=False, model_name=name)
        # The stored kwargs must rebuild the same model: same weights -> same logits.
        direct = CrossVit(**VARIANTS[name]).eval()
        load_random_weights(direct, seed)
        with torch.no_grad():
            again = direct(to_nchw(random_images(2, *direct.img_size, seed))).numpy()
        if not np.array_equal(again, arrays["logits"]):
            raise AssertionError(f"{name}: CrossVit(**kwargs) logits differ from timm.create_model")
        save_npz(out_dir / f"parity_{name}.npz", arrays)
        report.append(f"parity_{name}.npz: logits {arrays['logits'].shape} std {arrays['logits'].std():.3f}")
    return report


def make_all(out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    make_bicubic(out_dir)
    report = make_parity(out_dir)
    report += make_reference(out_dir)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FIXTURES, help="output directory (default tests/fixtures)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="regenerate into a temporary directory and compare with --out byte for byte",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # reproducible reductions; the machine is shared

    if args.verify:
        with tempfile.TemporaryDirectory() as tmp:
            report = make_all(Path(tmp))
            names = sorted(p.name for p in Path(tmp).iterdir())
            _, mismatch, errors = filecmp.cmpfiles(args.out, tmp, names, shallow=False)
        print("\n".join(report))
        for name in names:
            state = "DIFFERS" if name in mismatch else "MISSING" if name in errors else "identical"
            print(f"{name}: {state}")
        if mismatch or errors:
            sys.exit(1)
        return

    report = make_all(args.out)
    print("\n".join(report))
    for p in sorted(args.out.iterdir()):
        print(f"{p.name}: {p.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
