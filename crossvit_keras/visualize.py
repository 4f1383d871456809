"""Pictures of what a CrossViT computes, for one image:

    crossvit-keras visualize features --model crossvit_15.keras cat.jpg --output features.png
    crossvit-keras visualize attention --model crossvit_15.keras cat.jpg --output attention.png
    crossvit-keras visualize attention --model crossvit_15_240 --checkpoint model.safetensors cat.jpg

`features` draws the paper's Fig. 5: the patch-token features of both branches at the output of
the last multi-scale encoder, 36 channels of each branch chosen at random (seeded), each as a map
over its branch's patch grid. `attention` draws, for every fusion stage, what each branch's CLS
token attends to in the other branch's patch tokens (the cross-attention of Eq. 6, averaged over
the heads), overlaid on the image. The image goes through the evaluation transform (resize the
shorter side, centre crop), which is also what is shown.

The maps come from probe models that reuse the model's own layers on its own graph (no weights
copied, no layer's arithmetic rewritten): the features are the last stage's output; for the
attention each stage's blocks and the fusion's projection f and cross-attention layer are called
again, the latter with `return_attention_scores=True`, on the tensors of the model's graph. With
L > 1 cross-attention layers per fusion, the first is shown: like timm, the later ones attend
to the previous layer's output alone.
"""

import numpy as np

CHANNELS = 36  # the paper's Fig. 5


# ----------------------------------------------------------------------------- probes


def _stages(model):
    stages = [layer for layer in model.layers if layer.name.startswith("stage_")]
    if not stages:
        raise ValueError(f"{model.name} has no multi-scale encoder stages (stage_0, ...): is it a CrossViT?")
    if not getattr(model, "cls_token", True):
        raise ValueError(f"{model.name} has no CLS tokens (cls_token=False); visualize draws models with CLS tokens.")
    return stages


def feature_model(model):
    """images -> [small-branch tokens, large-branch tokens] of the last multi-scale encoder,
    each (B, 1 + patches, width) with the CLS token first; shares `model`'s weights."""
    import keras

    return keras.Model(model.input, _stages(model)[-1].output, name=f"{model.name}_features")


def attention_model(model):
    """images -> one (B, heads, 1 + patches_j) map per stage and branch i (in the order stage 0
    small, stage 0 large, stage 1 small, ...): how branch i's CLS token, projected by f_i, attends
    to [itself || branch j's patch tokens] in the first cross-attention layer of that stage's fusion."""
    import keras

    StageAttention = _stage_attention_class()
    outputs = []
    for stage in _stages(model):
        if stage.fusion_name != "cross_attention":
            raise ValueError(
                f"attention maps show the cross-attention fusion's CLS queries; {model.name} uses "
                f"fusion={stage.fusion_name!r} (draw its features instead)."
            )
        outputs.extend(StageAttention(stage, name=f"{stage.name}_attention")(stage.input))
    return keras.Model(model.input, outputs, name=f"{model.name}_attention")


def _stage_attention_class():
    import keras
    from keras import ops

    class StageAttention(keras.layers.Layer):
        """A probe, never saved: runs a MultiScaleEncoder's own blocks and projections f, and its
        fusion's first MultiHeadCrossAttention of each branch with return_attention_scores=True;
        returns the two CLS rows of the attention maps, float32."""

        def __init__(self, stage, **kwargs):
            super().__init__(**kwargs)
            self.stage = stage

        def call(self, inputs):
            tokens = []
            for branch, x in zip(self.stage.blocks, inputs, strict=True):
                for block in branch:
                    x = block(x)
                tokens.append(x)
            fusion = self.stage.fusion
            cls_tokens, patches = zip(*(ops.split(x, [1], axis=1) for x in tokens), strict=True)
            maps = []
            for i in range(2):  # the first layer's input, as CrossAttentionFusion.call makes it
                y = ops.concatenate([fusion.projs[i](cls_tokens[i]), patches[1 - i]], axis=1)
                block = fusion.fusion[i][0]
                _, scores = block.attn(block.norm1(y), return_attention_scores=True)
                maps.append(ops.cast(scores[:, :, 0], "float32"))
            return maps

    return StageAttention


# ----------------------------------------------------------------------------- loading


def load_image(path, image_size):
    """(the model's input (1, size, size, 3), the same crop as RGB in [0, 1] for display)."""
    from crossvit_keras.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
    from crossvit_keras.inference import load_image as transformed

    image = np.asarray(transformed(path, image_size))
    shown = np.clip(image * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN), 0.0, 1.0)
    return image[None], shown


def patch_grid(tokens):
    """(1 + N, D) tokens -> (g, g, D) patch tokens on their grid (N = g * g), the CLS token dropped."""
    side = int(round((tokens.shape[0] - 1) ** 0.5))
    return tokens[1:].reshape(side, side, tokens.shape[-1])


# ----------------------------------------------------------------------------- figures


def _save(figure, path):
    from matplotlib import pyplot as plt

    from crossvit_keras.atomic import atomic_path

    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def plot_features(model, images, shown, path, channels=CHANNELS, seed=0):
    """Fig. 5: `channels` random channels (seeded, per branch) of both branches' patch tokens at
    the output of the last multi-scale encoder, each channel scaled to its own range."""
    import keras
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tokens = [keras.ops.convert_to_numpy(t)[0] for t in feature_model(model)(images)]
    rng = np.random.default_rng(seed)
    columns = int(np.ceil(np.sqrt(channels)))
    rows = int(np.ceil(channels / columns))
    cell = 0.55  # inches per channel map
    figure = plt.figure(figsize=(2.8 + 2 * (cell * columns + 0.3), cell * rows + 1.0), layout="constrained")
    panels = figure.subfigures(1, 3, width_ratios=(2.8, cell * columns + 0.3, cell * columns + 0.3), wspace=0.02)
    axis = panels[0].subplots()
    axis.imshow(shown)
    axis.set_title(f"input, {shown.shape[0]} px", fontsize=9)
    axis.axis("off")
    for panel, name, x in zip(panels[1:], ("small", "large"), tokens, strict=True):
        grid = patch_grid(x)
        chosen = np.sort(rng.choice(grid.shape[-1], size=min(channels, grid.shape[-1]), replace=False))
        axes = panel.subplots(rows, columns, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
        for k, axis in enumerate(axes.flat):
            axis.axis("off")
            if k < len(chosen):
                axis.imshow(grid[..., chosen[k]], cmap="viridis", interpolation="nearest")
        side = grid.shape[0]
        panel.suptitle(
            f"{name} branch: {side} x {side} patches, {len(chosen)} of {grid.shape[-1]} channels", fontsize=9
        )
    figure.suptitle(f"{model.name}: patch-token features of the last multi-scale encoder (channels seed {seed})")
    return _save(figure, path)


def plot_attention(model, images, shown, path):
    """Per fusion stage (rows): each branch's CLS attention over the other branch's patches,
    averaged over the heads and overlaid on the image; the title gives the share the CLS token
    kept for itself."""
    import keras
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    maps = [keras.ops.convert_to_numpy(m)[0].mean(axis=0) for m in attention_model(model)(images)]
    stages = len(maps) // 2
    figure, axes = plt.subplots(stages, 3, figsize=(9, 3.1 * stages), squeeze=False)
    size = shown.shape[0]
    for stage in range(stages):
        axes[stage, 0].imshow(shown)
        axes[stage, 0].set_title(f"stage {stage}: input", fontsize=9)
        for i, (name, other) in enumerate((("small", "large"), ("large", "small"))):
            attention = maps[2 * stage + i]
            side = int(round((attention.shape[0] - 1) ** 0.5))
            axis = axes[stage, 1 + i]
            axis.imshow(shown)
            overlay = axis.imshow(
                attention[1:].reshape(side, side),
                cmap="inferno",
                alpha=0.6,
                extent=(-0.5, size - 0.5, size - 0.5, -0.5),
                interpolation="bilinear",
            )
            figure.colorbar(overlay, ax=axis, fraction=0.046, pad=0.03)
            axis.set_title(
                f"{name} CLS -> {other} patches ({side} x {side})\nCLS itself: {100 * attention[0]:.1f}%", fontsize=9
            )
        for axis in axes[stage]:
            axis.axis("off")
    figure.suptitle(f"{model.name}: cross-attention of each CLS token (mean over heads)", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


# ----------------------------------------------------------------------------- command line
