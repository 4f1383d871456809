"""The CrossViT variants as data: one table, under timm's names, with the paper's short names and
the official code's names as aliases.

Every variant (paper Table 1 and 3): patch sizes (12, 16); K = 3 stages of (N = 1 small-branch
block, M large-branch blocks, L = 1 cross-attention per branch); qkv bias; the same number of
heads in both branches; the large branch sees the image resized by 224/240 (384/408).
"""

IMAGE_SIZES_240 = (240, 224)
IMAGE_SIZES_408 = (408, 384)


def _variant(embed_dims, large_depth, num_heads, mlp_ratio, multi_conv=False, image_sizes=IMAGE_SIZES_240):
    return {
        "image_sizes": image_sizes,
        "patch_sizes": (12, 16),
        "embed_dims": embed_dims,
        "depths": ((1, large_depth, 1),) * 3,
        "num_heads": (num_heads, num_heads),
        "mlp_ratios": (mlp_ratio, mlp_ratio),
        "multi_conv": multi_conv,
    }


VARIANTS = {
    # name:                      embed dims   M  heads mlp
    "crossvit_tiny_240": _variant((96, 192), 4, 3, 4.0),
    "crossvit_small_240": _variant((192, 384), 4, 6, 4.0),
    "crossvit_base_240": _variant((384, 768), 4, 12, 4.0),
    "crossvit_9_240": _variant((128, 256), 3, 4, 3.0),
    "crossvit_15_240": _variant((192, 384), 5, 6, 3.0),
    "crossvit_18_240": _variant((224, 448), 6, 7, 3.0),
    "crossvit_9_dagger_240": _variant((128, 256), 3, 4, 3.0, multi_conv=True),
    "crossvit_15_dagger_240": _variant((192, 384), 5, 6, 3.0, multi_conv=True),
    "crossvit_18_dagger_240": _variant((224, 448), 6, 7, 3.0, multi_conv=True),
    "crossvit_15_dagger_408": _variant((192, 384), 5, 6, 3.0, multi_conv=True, image_sizes=IMAGE_SIZES_408),
    "crossvit_18_dagger_408": _variant((224, 448), 6, 7, 3.0, multi_conv=True, image_sizes=IMAGE_SIZES_408),
}

# timm's pretrained configuration of each variant (its `default_cfgs`): the evaluation transform
# of the released weights. Resize the shorter side to input_size / crop_pct (bicubic), centre crop
# input_size, normalise with mean and std. The 408 models are evaluated without a crop margin.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # timm's and DeiT's
PRETRAINED_CFGS = {
    name: {
        "input_size": variant["image_sizes"][0],
        "crop_pct": 1.0 if variant["image_sizes"] == IMAGE_SIZES_408 else DEFAULT_CROP_PCT,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    for name, variant in VARIANTS.items()
}


def default_crop_pct(name):
    """The evaluation crop of a variant's released weights (by timm, paper or official name); 0.875
    (timm's default) for a name that is no variant."""
    name = ALIASES.get(name, name)
    return PRETRAINED_CFGS[name]["crop_pct"] if name in PRETRAINED_CFGS else DEFAULT_CROP_PCT


# What timm 1.0.31 reports for each variant (tests/fixtures/timm_reference.json): the exact
# parameter count with 1000 classes and the GMACs at its input size. `python benchmarks/macs.py`
# checks the models against it.
TIMM_FIGURES = {
    "crossvit_tiny_240": (7_014_800, 1.57),
    "crossvit_small_240": (26_856_272, 5.63),
    "crossvit_base_240": (105_025_232, 21.22),
    "crossvit_9_240": (8_553_296, 1.85),
    "crossvit_15_240": (27_528_464, 5.81),
    "crossvit_18_240": (43_271_408, 9.05),
    "crossvit_9_dagger_240": (8_776_592, 1.99),
    "crossvit_15_dagger_240": (28_209_008, 6.13),
    "crossvit_18_dagger_240": (44_266_976, 9.50),
    "crossvit_15_dagger_408": (28_500_080, 21.45),
    "crossvit_18_dagger_408": (44_606_560, 32.47),
}


def _aliases():
    aliases = {}
    for name in VARIANTS:
        stem, size = name.rsplit("_", 1)
        official = {"240": "224", "408": "384"}[size]
        aliases[f"{stem}_{official}"] = name  # official IBM/CrossViT names: crossvit_15_224
        if size == "240":
            aliases[stem] = name  # the paper's short names: crossvit_15, crossvit_15_dagger
    return aliases


# Paper / official names -> timm names, e.g. crossvit_15 and crossvit_15_224 -> crossvit_15_240,
# crossvit_15_dagger_384 -> crossvit_15_dagger_408.
ALIASES = _aliases()

# What create_model lets a caller change. `image_size` sets the small branch's (= the model's)
# input size; the large branch follows the variant's ratio, rounded to a multiple of its patch.
OVERRIDES = (
    "image_size",
    "image_sizes",
    "patch_sizes",
    "embed_dims",
    "depths",
    "num_heads",
    "mlp_ratios",
    "multi_conv",
    "qkv_bias",
    "drop_rate",
    "attn_drop_rate",
    "proj_drop_rate",
    "drop_path_rate",
    "fusion",
    "cls_token",
    "identity_projections",
    "remat",
    "dtype",
)

# The config keys that decide a model's architecture (which weights it has, and their shapes;
# dropout rates and the dtype do not), and the values the variants above leave to CrossViT.
ARCHITECTURE = (
    "image_sizes",
    "patch_sizes",
    "embed_dims",
    "depths",
    "num_heads",
    "mlp_ratios",
    "multi_conv",
    "qkv_bias",
    "fusion",
    "cls_token",
    "identity_projections",
)
ARCHITECTURE_DEFAULTS = {
    "qkv_bias": True,
    "fusion": "cross_attention",
    "cls_token": True,
    "identity_projections": False,
}

# A tiny CrossViT for tests and demos: same structure, 48 px input (small branch 4 x 4 patches,
# large branch resized to 32 px, 2 x 2 patches), two stages.
TEST_OVERRIDES = {
    "image_sizes": (48, 32),
    "embed_dims": (16, 32),
    "depths": ((1, 2, 1), (1, 2, 1)),
    "num_heads": (2, 2),
    "mlp_ratios": (2.0, 2.0),
}


def canonical_name(name):
    """The timm name of a variant, from its timm, paper or official name."""
    name = ALIASES.get(name, name)
    if name not in VARIANTS:
        raise ValueError(
            f"Unknown CrossViT model {name!r}. Valid names: {', '.join(VARIANTS)}; "
            f"aliases: {', '.join(sorted(ALIASES))}."
        )
    return name


def scaled_image_sizes(image_sizes, patch_sizes, image_size):
    """Branch sizes for a new small-branch size: the large branch keeps the ratio, rounded to a
    multiple of its patch (240 -> (240, 224), 408 -> (408, 384), 192 -> (192, 176))."""
    small, large = image_sizes
    patch = patch_sizes[1]
    return (int(image_size), int(max(patch, round(image_size * large / small / patch) * patch)))


def resolve_config(name, num_classes=1000, **overrides):
    """The constructor arguments of `CrossViT` for a variant with overrides applied."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"Unknown override(s) {unknown} for create_model; valid: {list(OVERRIDES)}.")
    config = dict(VARIANTS[canonical_name(name)])
    image_size = overrides.pop("image_size", None)
    config.update(overrides)
    if image_size is not None:
        if "image_sizes" in overrides:
            raise ValueError("Give either image_size or image_sizes, not both.")
        config["image_sizes"] = scaled_image_sizes(config["image_sizes"], config["patch_sizes"], image_size)
    config["num_classes"] = num_classes
    return config
