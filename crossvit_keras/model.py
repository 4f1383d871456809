"""CrossViT (Chen, Fan, Panda, ICCV 2021), paper Fig. 2:

image -> [small branch: patch 12 | large branch: bicubic resize, patch 16]
      -> CLS token + position embedding per branch
      -> K x MultiScaleEncoder (N + M transformer blocks, then cross-attention fusion)
      -> LayerNorm and a linear head on each branch's CLS token -> mean of the two logits
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from crossvit_keras import configs
from crossvit_keras.layers import FUSIONS, ClassTokenPositionEmbedding, MultiScaleEncoder, PatchEmbedding
from crossvit_keras.layers.base import dense, layer_norm, register
from crossvit_keras.layers.resize import BicubicResize


def drop_path_schedule(depths, rate):
    """Per-stage stochastic-depth rates, exactly as timm and the official code compute them:
    linspace(0, rate) over all blocks, each stage taking max(N, M) + L' of them, where L' is their
    encoding of the fusion depth (0 for one cross-attention layer). timm spreads the rates over
    sum(M + L'), which is the same while N <= M (every variant) and too few otherwise (timm fails
    there with an IndexError); this spreads them over sum(max(N, M) + L')."""
    fusion = [0 if depth[2] == 1 else depth[2] for depth in depths]
    total = sum(max(depth[:2]) + f for depth, f in zip(depths, fusion, strict=True))
    rates = np.linspace(0.0, rate, total).tolist()
    schedule, start = [], 0
    for depth, f in zip(depths, fusion, strict=True):
        count = max(depth[:2]) + f
        schedule.append(tuple(rates[start : start + count]) or (0.0,))
        start += count
    return schedule


def encode(
    images,
    image_sizes,
    patch_sizes,
    embed_dims,
    depths,
    num_heads,
    mlp_ratios,
    multi_conv,
    qkv_bias,
    attn_drop_rate,
    proj_drop_rate,
    drop_path_rate,
    fusion,
    cls_token,
    identity_projections,
    remat=False,
    dtype=None,
):
    """Paper Fig. 2 up to the heads, on symbolic `images`: per branch a patch embedding (the large
    branch on the image resized), the CLS token and position embedding; then the K multi-scale
    encoders. Returns the [small, large] tokens after every stage (K pairs). The layers' names
    (resize_1, patch_embed_b, embed_b, stage_k) are the ones timm's weights are converted to;
    `CrossViT` and `crossvit_keras.CrossViTBackbone` are both built by this function."""
    tokens = []
    for b in range(2):
        x = images
        if image_sizes[b] != image_sizes[0]:
            x = BicubicResize((image_sizes[b],) * 2, name=f"resize_{b}", dtype=dtype)(x)
        patch_embed = PatchEmbedding(patch_sizes[b], embed_dims[b], multi_conv, name=f"patch_embed_{b}", dtype=dtype)
        num_patches = patch_embed.grid_size(image_sizes[b]) ** 2
        x = ClassTokenPositionEmbedding(num_patches, embed_dims[b], cls_token, name=f"embed_{b}", dtype=dtype)(
            patch_embed(x)
        )
        tokens.append(x)
    stages = []
    for stage, (depth, rates) in enumerate(zip(depths, drop_path_schedule(depths, drop_path_rate), strict=True)):
        tokens = MultiScaleEncoder(
            embed_dims,
            depth,
            num_heads,
            mlp_ratios,
            rates,
            qkv_bias,
            attn_drop_rate,
            proj_drop_rate,
            fusion,
            cls_token,
            identity_projections,
            remat=remat,
            name=f"stage_{stage}",
            dtype=dtype,
        )(tokens)
        stages.append(tokens)
    return stages


@register
class ClassifierHead(keras.layers.Layer):
    """LayerNorm on each branch's CLS token, one linear head per branch, logits = their mean.
    With num_classes = 0: the two normalised CLS tokens, concatenated (the features).
    `cls_token=False`: each branch's mean patch token takes its CLS token's place."""

    def __init__(self, dims, num_classes, drop_rate=0.0, cls_token=True, **kwargs):
        super().__init__(**kwargs)
        self.dims = tuple(dims)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.cls_token = cls_token
        dtype = self.dtype_policy
        self.norms = [layer_norm(f"norm_{b}", dtype) for b in range(2)]
        self.drop = keras.layers.Dropout(drop_rate, name="head_drop", dtype=dtype)
        self.heads = [dense(num_classes, f"head_{b}", dtype) for b in range(2)] if num_classes else []

    def build(self, input_shape):
        for b, dim in enumerate(self.dims):
            self.norms[b].build((input_shape[b][0], dim))
            if self.heads:
                self.heads[b].build((input_shape[b][0], dim))

    def call(self, inputs, training=None):
        if not self.heads:
            return ops.concatenate(self.features(inputs, training=training), axis=-1)
        small, large = self.branch_logits(inputs, training=training)
        return (small + large) / 2

    def features(self, inputs, training=None):
        """Each branch's normalised CLS token."""
        # LayerNorm is per token, so normalising the CLS token alone equals timm's norm-then-select.
        tokens = [x[:, 0] if self.cls_token else ops.mean(x, axis=1) for x in inputs]
        return [self.drop(norm(x), training=training) for norm, x in zip(self.norms, tokens, strict=True)]

    def branch_logits(self, inputs, training=None):
        """[small-branch logits, large-branch logits]: each head on its own branch's CLS token (the
        paper's single-branch accuracy, Table 6); `call` returns their mean. For a whole model use
        `crossvit_keras.branch_logits(model)`."""
        return [head(x) for head, x in zip(self.heads, self.features(inputs, training=training), strict=True)]

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.num_classes or sum(self.dims))

    def get_config(self):
        return {
            **super().get_config(),
            "dims": self.dims,
            "num_classes": self.num_classes,
            "drop_rate": self.drop_rate,
            "cls_token": self.cls_token,
        }


def _is_integer(value, minimum):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _validate(image_sizes, patch_sizes, embed_dims, depths, num_heads, mlp_ratios, num_classes, fusion, rates, flags):
    """A ValueError naming the argument and the values it takes, before any layer is built."""
    for name, value in (
        ("image_sizes", image_sizes),
        ("patch_sizes", patch_sizes),
        ("embed_dims", embed_dims),
        ("num_heads", num_heads),
        ("mlp_ratios", mlp_ratios),
    ):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{name} needs one value per branch (2), got {value!r}.")
    for name, value in (
        ("image_sizes", image_sizes),
        ("patch_sizes", patch_sizes),
        ("embed_dims", embed_dims),
        ("num_heads", num_heads),
    ):
        if not all(_is_integer(v, 1) for v in value):
            raise ValueError(f"{name} must be two positive integers (one per branch), got {tuple(value)}.")
    for size, patch in zip(image_sizes, patch_sizes, strict=True):
        if size < patch or size % patch:
            raise ValueError(
                f"Branch image size {size} must be a positive multiple of its patch size {patch} "
                f"(image_sizes={tuple(image_sizes)}, patch_sizes={tuple(patch_sizes)}); "
                "e.g. image_size=240 gives (240, 224)."
            )
    for dim, heads in zip(embed_dims, num_heads, strict=True):
        if dim % heads:
            raise ValueError(f"num_heads={heads} must divide the width {dim} (embed_dims={tuple(embed_dims)}).")
    for dim, ratio in zip(embed_dims, mlp_ratios, strict=True):
        if not (isinstance(ratio, numbers.Real) and not isinstance(ratio, bool) and 0 < ratio < math.inf) or (
            int(dim * ratio) < 1
        ):
            raise ValueError(
                f"mlp_ratios must be two positive numbers (one per branch) with an MLP width int(embed_dim x ratio) "
                f">= 1, got {tuple(mlp_ratios)} (embed_dims={tuple(embed_dims)})."
            )
    if not depths or any(len(d) != 3 or min(d) < 0 or d[2] < 1 for d in depths):
        raise ValueError(f"depths must be K >= 1 triples (N, M, L) with N, M >= 0 and L >= 1, got {depths!r}.")
    if not _is_integer(num_classes, 0):
        raise ValueError(f"num_classes must be an integer >= 0 (0 = no head), got {num_classes!r}.")
    for name, rate in rates.items():
        if not (isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 0 <= rate < 1):
            raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}.")
    for name, flag in flags.items():
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {flag!r}.")
    if fusion not in FUSIONS:
        raise ValueError(f"Unknown fusion {fusion!r}; choose one of {sorted(FUSIONS)}.")


@register
class CrossViT(keras.Model):
    """CrossViT as a Keras functional model.

    Input: NHWC float images of size image_sizes[0], normalised with the ImageNet mean and std.
    Output: float32 logits (num_classes), or with num_classes = 0 the two CLS features concatenated.
    Build a released variant with `crossvit_keras.create_model(name)`."""

    def __init__(
        self,
        image_sizes=configs.IMAGE_SIZES_240,
        patch_sizes=(12, 16),
        embed_dims=(192, 384),
        depths=((1, 5, 1),) * 3,
        num_heads=(6, 6),
        mlp_ratios=(3.0, 3.0),
        multi_conv=False,
        qkv_bias=True,
        num_classes=1000,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        proj_drop_rate=0.0,
        drop_path_rate=0.0,
        fusion="cross_attention",
        cls_token=True,
        identity_projections=False,
        remat=False,
        name="crossvit",
        dtype=None,
        **kwargs,
    ):
        quantized = None
        if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):  # a quantized model's config (get_config)
            quantized, dtype = dtype, dtype.default_policy.name
        depths = tuple(tuple(int(v) for v in d) for d in depths)
        _validate(
            image_sizes,
            patch_sizes,
            embed_dims,
            depths,
            num_heads,
            mlp_ratios,
            num_classes,
            fusion,
            rates={
                "drop_rate": drop_rate,
                "attn_drop_rate": attn_drop_rate,
                "proj_drop_rate": proj_drop_rate,
                "drop_path_rate": drop_path_rate,
            },
            flags={
                "multi_conv": multi_conv,
                "qkv_bias": qkv_bias,
                "cls_token": cls_token,
                "identity_projections": identity_projections,
                "remat": remat,
            },
        )
        images = keras.Input((image_sizes[0], image_sizes[0], 3), name="images")
        tokens = encode(
            images,
            image_sizes,
            patch_sizes,
            embed_dims,
            depths,
            num_heads,
            mlp_ratios,
            multi_conv,
            qkv_bias,
            attn_drop_rate,
            proj_drop_rate,
            drop_path_rate,
            fusion,
            cls_token,
            identity_projections,
            remat,
            dtype,
        )[-1]
        outputs = ClassifierHead(embed_dims, num_classes, drop_rate, cls_token, name="head", dtype=dtype)(tokens)
        # Logits in float32 under mixed precision, as Keras' mixed-precision guide asks.
        outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(outputs)
        super().__init__(inputs=images, outputs=outputs, name=name, **kwargs)
        if quantized is not None:  # the layers quantized as saved, before their weights load
            for layer in self._flatten_layers():
                if layer.path in quantized:
                    layer.dtype_policy = quantized[layer.path]

        self.image_sizes = tuple(int(s) for s in image_sizes)
        self.patch_sizes = tuple(patch_sizes)
        self.embed_dims = tuple(embed_dims)
        self.depths = depths
        self.num_heads = tuple(num_heads)
        self.mlp_ratios = tuple(mlp_ratios)
        self.multi_conv = multi_conv
        self.qkv_bias = qkv_bias
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.proj_drop_rate = proj_drop_rate
        self.drop_path_rate = drop_path_rate
        self.fusion = fusion
        self.cls_token = cls_token
        self.identity_projections = identity_projections
        self.remat = remat
        self.layer_dtype = dtype

    @property
    def image_size(self):
        """The model's input size (the small branch's)."""
        return self.image_sizes[0]

    def call(self, inputs, training=None, mask=None):
        check_images(inputs, self.image_size)
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {
            "image_sizes": self.image_sizes,
            "patch_sizes": self.patch_sizes,
            "embed_dims": self.embed_dims,
            "depths": self.depths,
            "num_heads": self.num_heads,
            "mlp_ratios": self.mlp_ratios,
            "multi_conv": self.multi_conv,
            "qkv_bias": self.qkv_bias,
            "num_classes": self.num_classes,
            "drop_rate": self.drop_rate,
            "attn_drop_rate": self.attn_drop_rate,
            "proj_drop_rate": self.proj_drop_rate,
            "drop_path_rate": self.drop_path_rate,
            "fusion": self.fusion,
            "cls_token": self.cls_token,
            "identity_projections": self.identity_projections,
            "remat": self.remat,
            "name": self.name,
            "dtype": self._dtype_config(),
            "trainable": self.trainable,
        }

    def _dtype_config(self):
        """The constructor's dtype; after `quantize`, a DTypePolicyMap of the quantized layers'
        policies by path (as keras-hub's backbones save it): the reloaded model quantizes those
        layers before their weights load."""
        quantized = {layer.path: layer.dtype_policy for layer in self._flatten_layers() if layer.quantization_mode}
        if not quantized:
            return self.layer_dtype
        return keras.dtype_policies.serialize(keras.dtype_policies.DTypePolicyMap(self.layer_dtype, quantized))

    @classmethod
    def from_config(cls, config):
        if isinstance(config.get("dtype"), dict):
            config = {**config, "dtype": keras.dtype_policies.deserialize(config["dtype"])}
        return cls(**config)


def check_images(images, image_size):
    """A clear ValueError for a batch the model cannot take (before TensorFlow fails deep inside)."""
    shape = tuple(images.shape)
    expected = f"(batch, {image_size}, {image_size}, 3)"
    if len(shape) != 4:
        raise ValueError(f"CrossViT expects a batch of NHWC images {expected}, got rank {len(shape)} {shape}.")
    if shape[-1] is not None and shape[-1] != 3:
        raise ValueError(f"CrossViT expects 3 RGB channels {expected}, got {shape[-1]} channels {shape}.")
    if any(s is not None and s != image_size for s in shape[1:3]):
        raise ValueError(
            f"CrossViT expects images {expected}, got {shape}; resize or crop to {image_size} px "
            "(crossvit_keras.data.preprocessing.eval_transform) or build the model with image_size="
            f"{shape[1]}."
        )
    dtype = keras.backend.standardize_dtype(images.dtype)
    if "float" not in dtype:
        raise ValueError(
            f"CrossViT expects float images normalised with the ImageNet mean/std, got dtype {dtype}; "
            "use crossvit_keras.data.preprocessing.normalize."
        )


def build_model(name, num_classes=1000, **overrides):
    """A freshly initialised CrossViT variant by timm, paper or official name (no weights loaded);
    `crossvit_keras.create_model` is the entry with `pretrained`.

    Overrides: image_size (the small branch's input; the large branch follows the variant's ratio),
    image_sizes, embed_dims, depths, num_heads, mlp_ratios, multi_conv, qkv_bias, drop_rate,
    attn_drop_rate, proj_drop_rate, drop_path_rate, fusion, cls_token, identity_projections (the
    ablations of crossvit_keras.ablations), remat (recompute the blocks' activations in the
    backward pass: less memory, slower training steps), dtype. num_classes=0 gives features."""
    config = configs.resolve_config(name, num_classes=num_classes, **overrides)
    return CrossViT(name=configs.canonical_name(name), **config)
