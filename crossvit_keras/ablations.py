"""The paper's ablations as data (Tables 6 and 7, Sec. 4.3) and their parameter and MAC counts.

    model = crossvit_keras.ablations.create_ablation("B")          # Table 7 (B) on CrossViT-S
    model = crossvit_keras.create_model("crossvit_small_240", **ABLATIONS["B"])   # the same
    count_macs(configs.resolve_config(BASE, **ABLATIONS["B"]))      # its multiply-accumulates per image
    python benchmarks/macs.py        # (from the repository root) Tables 6 and 7, ours vs the paper's

Every ablation is an override of `crossvit_small_240`. How the paper counted (found by fitting its
tables): its parameters EXCLUDE the position embeddings (CrossViT-S: 26,856,272 - 152,640 =
26.70 M, the paper's 26.7; Table 7 A-E all fit that way, within 0.06 M, and are 0.18-0.23 M
above it with them), and its FLOPs are multiply-accumulates of the matrix products and convolutions (as
timm's table, `count_macs`). Table 7 (B) widens the small branch to 384: the paper's 31.4 M
is the model whose f and g are identities between the now equal widths (the official code has
that identity branch, disabled by `and False`): 31.40 M without position embeddings, where
learned f and g give 33.19 M. So B sets `identity_projections=True`.
"""

# Table 6 (CrossViT-S with each fusion): params (M), GFLOPs (= GMACs), top-1, L-branch and
# S-branch top-1 alone (%).
PAPER_TABLE6 = {
    "none": (23.7, 5.3, 80.2, 80.2, 0.1),
    "all_attention": (27.7, 7.6, 80.0, 79.9, 0.5),
    "class_token": (24.2, 5.4, 80.3, 80.6, 7.6),
    "pairwise": (24.2, 5.5, 80.3, 80.3, 7.3),
    "cross_attention": (26.7, 5.6, 81.0, 68.1, 47.2),
}

BASE = "crossvit_small_240"

# Table 7 (and the text's model without CLS tokens) as overrides of crossvit_small_240.
ABLATIONS = {
    # (8, 16) patches. The paper's 6.7 GFLOPs fit a 224 px small branch (28 x 28 patches); at
    # 240 px (30 x 30) the model has 7.14 GMACs.
    "A": {"patch_sizes": (8, 16), "image_sizes": (224, 224)},
    # Small-branch width 384 = the large branch's; f and g are then identities (module docstring).
    "B": {"embed_dims": (384, 384), "identity_projections": True},
    "C": {"depths": ((2, 4, 1),) * 3},  # N = 2
    "D": {"depths": ((1, 4, 2),) * 3},  # L = 2
    "E": {"depths": ((1, 2, 1),) * 6},  # K = 6, M = 2
    # Sec. 4.3, "Importance of CLS tokens": the mean of a branch's patch tokens is its CLS token.
    "no_cls": {"cls_token": False},
}

# Table 7: params (M), GFLOPs, top-1 (%); no_cls: the text's top-1 only.
PAPER_TABLE7 = {
    BASE: (26.7, 5.6, 81.0),
    "A": (26.7, 6.7, 80.8),
    "B": (31.4, 7.7, 80.1),
    "C": (28.0, 6.3, 80.7),
    "D": (28.9, 5.6, 81.0),
    "E": (31.1, 6.6, 80.9),
    "no_cls": (None, None, 80.0),
}

# How close our counts must be to the paper's (all-attention excepted: see AllAttentionFusion).
PARAMS_TOLERANCE_M = 0.2
GMACS_TOLERANCE = 0.2


def create_ablation(name, num_classes=1000, **overrides):
    """crossvit_small_240 with the overrides of ABLATIONS[name] (and any further ones)."""
    from crossvit_keras.model import build_model

    if name not in ABLATIONS:
        raise ValueError(f"Unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}.")
    return build_model(BASE, num_classes=num_classes, **{**ABLATIONS[name], **overrides})


def position_embedding_params(model):
    """The parameters of the position embeddings (which the paper's counts leave out)."""
    return sum(int(w.numpy().size) for w in model.weights if w.path.endswith("pos_embed"))


def paper_params(model):
    """Parameters as the paper counts them: all but the position embeddings."""
    return model.count_params() - position_embedding_params(model)


# ---------------------------------------------------------------------------------------------
# Multiply-accumulates per image, counted like timm's table (matmuls and convs; not the norms,
# activations, softmax or the 4-tap bicubic resize).


def count_macs(config):
    """Multiply-accumulates of one forward pass of one image, from `configs.resolve_config`."""
    from crossvit_keras.layers.embedding import MULTI_CONV_STEMS

    tokens, macs = [], 0
    for size, patch, dim in zip(config["image_sizes"], config["patch_sizes"], config["embed_dims"], strict=True):
        stem = MULTI_CONV_STEMS[patch] if config["multi_conv"] else ((patch, patch, 0, 1),)
        channels = 3
        for kernel, stride, pad, width in stem:
            size = (size + 2 * pad - kernel) // stride + 1
            macs += size * size * kernel * kernel * channels * (dim // width)
            channels = dim // width
        tokens.append(int(config.get("cls_token", True)) + size * size)
    dims = config["embed_dims"]
    for depth in config["depths"]:
        for b in range(2):  # N transformer blocks in the small branch, M in the large one
            t, d, hidden = tokens[b], dims[b], int(dims[b] * config["mlp_ratios"][b])
            macs += depth[b] * (4 * t * d * d + 2 * t * d * hidden + 2 * t * t * d)  # qkv+proj, MLP, attention
    return macs + fusion_macs(config, tokens) + sum(dims) * config["num_classes"]


# ---------------------------------------------------------------------------------------------
# Multiply-accumulates of the fusions (the fusions of Table 6; count_macs counts the rest).


def _projection(tokens, dim_in, dim_out, identity):
    return 0 if identity else tokens * dim_in * dim_out


def fusion_macs(config, tokens):
    """MACs of one image through the K fusions of `config` (configs.resolve_config's), where
    `tokens` are the branches' sequence lengths (1 + patches, or patches alone with cls_token=False):
    the matrix products of f, g and the attentions, as `count_macs` counts the blocks."""
    fusion = config.get("fusion", "cross_attention")
    dims, primary = config["embed_dims"], 1
    macs = 0
    for depth in config["depths"]:
        layers = depth[2]
        if fusion == "cross_attention":
            identity = config.get("identity_projections", False) and dims[0] == dims[1]
            for i in range(2):  # f_i on the CLS, L cross-attentions (only the CLS queries), g_i
                j = 1 - i
                t, d = tokens[j] + (0 if config.get("cls_token", True) else 1), dims[j]
                macs += 2 * _projection(1, dims[i], d, identity)
                for layer in range(layers):
                    t = t if layer == 0 else 1
                    macs += 2 * d * d + 2 * t * d * d + 2 * t * d  # wq + proj, wk + wv, attention
        elif fusion == "all_attention":  # learned f_i, g_i on all tokens; L MSAs over both branches
            width, total = dims[primary], sum(tokens)
            macs += sum(2 * t * d * width for t, d in zip(tokens, dims, strict=True))
            macs += layers * (4 * total * width * width + 2 * total * total * width)
        elif fusion in ("class_token", "pairwise"):  # f_i, g_i (identity at the large branch's width)
            for i in range(2):
                same = dims[i] == dims[primary]
                if fusion == "class_token":
                    macs += 2 * _projection(1, dims[i], dims[primary], same)
                else:  # f_i on all of branch i's tokens, g_i on the sum over the large grid
                    macs += _projection(tokens[i], dims[i], dims[primary], same)
                    macs += _projection(tokens[primary], dims[primary], dims[i], same)
        elif fusion != "none":
            raise ValueError(f"No MAC count for fusion {fusion!r}.")
    return macs


def traced_macs(model, exclude=("resize_",)):
    """An independent count: multiply-accumulates of the MatMul, BatchMatMul and Conv2D ops of the
    model's TensorFlow graph for one image, from their static shapes (ops whose name contains
    one of `exclude` are left out: the bicubic resize, which runs as matrix products but which
    timm's count and `count_macs` leave out)."""
    import tensorflow as tf

    size = model.input_shape[1]
    graph = (
        tf.function(lambda x: model(x, training=False))
        .get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.float32))
        .graph
    )
    macs = 0
    for op in graph.get_operations():
        if any(name in op.name for name in exclude):
            continue
        if op.type == "MatMul":
            a = op.inputs[0].shape.as_list()
            macs += a[0] * a[1] * op.outputs[0].shape.as_list()[1]  # m * k * n (k: a's other axis)
        elif op.type in ("BatchMatMulV2", "BatchMatMulV3"):
            a, out = op.inputs[0].shape.as_list(), op.outputs[0].shape.as_list()
            k = a[-2] if op.get_attr("adj_x") else a[-1]
            macs += _prod(out) * k
        elif op.type == "Conv2D":
            kernel = op.inputs[1].shape.as_list()  # (kh, kw, in, out)
            macs += _prod(op.outputs[0].shape.as_list()) * kernel[0] * kernel[1] * kernel[2]
        elif op.type in ("Einsum", "DepthwiseConv2dNative", "Conv3D"):
            raise ValueError(f"traced_macs does not count {op.type} ops ({op.name}).")
    return macs


def _prod(values):
    result = 1
    for v in values:
        result *= v
    return result
