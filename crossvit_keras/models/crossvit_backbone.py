"""CrossViT as a keras-hub Backbone: image in, both branches' tokens out.

    backbone = crossvit_keras.CrossViTBackbone.from_preset("crossvit_15_240")
    small, large = backbone(images)          # (B, 1 + 20*20, 192), (B, 1 + 14*14, 384)

The layers and their names are those of `crossvit_keras.CrossViT` (resize_1, patch_embed_b, embed_b,
stage_k), so weights move between the two by name and timm checkpoints load through the same strict
converter. For dense tasks (detection, segmentation), `backbone.stage_outputs` holds each branch's
tokens after every multi-scale encoder stage, and `backbone.feature_extractor()` gives them as
spatial maps (B, H/p, W/p, D) per branch, the CLS token dropped.
"""

import math

import keras
from keras import ops
from keras_hub.models import Backbone

from crossvit_keras import configs
from crossvit_keras.branches import BRANCHES
from crossvit_keras.layers.base import register
from crossvit_keras.model import _validate, encode
from crossvit_keras.models import crossvit_presets


@register
class TokensToMap(keras.layers.Layer):
    """A branch's tokens (B, [1 +] h * w, D) -> a spatial map (B, h, w, D) of a square patch grid,
    the CLS token dropped (`cls_token=False`: a sequence without one)."""

    def __init__(self, cls_token=True, **kwargs):
        super().__init__(**kwargs)
        self.cls_token = cls_token

    def _grid(self, input_shape):
        patches = input_shape[1] - int(self.cls_token)
        grid = math.isqrt(patches)
        if grid * grid != patches:
            raise ValueError(f"TokensToMap needs a square patch grid, got {patches} patch tokens {input_shape}.")
        return grid

    def call(self, tokens):
        grid = self._grid(tokens.shape)
        patches = tokens[:, 1:] if self.cls_token else tokens
        return ops.reshape(patches, (-1, grid, grid, tokens.shape[-1]))

    def compute_output_shape(self, input_shape):
        grid = self._grid(input_shape)
        return (input_shape[0], grid, grid, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "cls_token": self.cls_token}


@register
class CrossViTBackbone(Backbone):
    """CrossViT's two branches and K multi-scale encoder stages (paper Fig. 2) without the heads.

    Input: NHWC float images of size image_sizes[0], normalised with the ImageNet mean and std (the
    preprocessor makes them from raw images). Output: [small-branch tokens (B, 1 + N_s, D_s),
    large-branch tokens (B, 1 + N_l, D_l)] after the last stage, CLS token first.

    Arguments: those of `crossvit_keras.CrossViT` without the head's (num_classes, drop_rate):
    image_sizes (small, large branch; the large branch sees the image resized), patch_sizes,
    embed_dims, depths (K triples (N, M, L)), num_heads, mlp_ratios, multi_conv (the dagger models'
    3-conv stem), qkv_bias, attn_drop_rate, proj_drop_rate, drop_path_rate, fusion, cls_token,
    identity_projections, remat, dtype. `CrossViTBackbone.from_preset(name)` builds a released variant."""

    presets = crossvit_presets.PRESETS

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
        attn_drop_rate=0.0,
        proj_drop_rate=0.0,
        drop_path_rate=0.0,
        fusion="cross_attention",
        cls_token=True,
        identity_projections=False,
        remat=False,
        name="crossvit_backbone",
        dtype=None,
        **kwargs,
    ):
        depths = tuple(tuple(int(v) for v in d) for d in depths)
        _validate(
            image_sizes,
            patch_sizes,
            embed_dims,
            depths,
            num_heads,
            mlp_ratios,
            num_classes=0,
            fusion=fusion,
            rates={
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
        # === Functional model: the layers of crossvit_keras.CrossViT, under the same names ===
        images = keras.Input((image_sizes[0], image_sizes[0], 3), name="images")
        stages = encode(
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
        )
        tokens = stages[-1]
        stage_outputs = {
            f"stage_{k}_{branch}": x for k, pair in enumerate(stages) for branch, x in zip(BRANCHES, pair, strict=True)
        }
        super().__init__(inputs=images, outputs=tokens, name=name, dtype=dtype, **kwargs)

        # === Config ===
        self.image_sizes = tuple(int(s) for s in image_sizes)
        self.patch_sizes = tuple(patch_sizes)
        self.embed_dims = tuple(embed_dims)
        self.depths = depths
        self.num_heads = tuple(num_heads)
        self.mlp_ratios = tuple(mlp_ratios)
        self.multi_conv = multi_conv
        self.qkv_bias = qkv_bias
        self.attn_drop_rate = attn_drop_rate
        self.proj_drop_rate = proj_drop_rate
        self.drop_path_rate = drop_path_rate
        self.fusion = fusion
        self.cls_token = cls_token
        self.identity_projections = identity_projections
        self.remat = remat
        # Each branch's tokens after every stage, {"stage_k_small" | "stage_k_large": (B, [1 +] N, D)}:
        # symbolic outputs of this model, as keras-hub's pyramid_outputs.
        self.stage_outputs = stage_outputs

    @property
    def image_size(self):
        """The input size (the small branch's)."""
        return self.image_sizes[0]

    def grid_sizes(self):
        """Patch rows (= columns) of each branch: (20, 14) for 240 px with patches (12, 16)."""
        return tuple(self.get_layer(f"patch_embed_{b}").grid_size(size) for b, size in enumerate(self.image_sizes))

    def feature_extractor(self, spatial=True, stages=None):
        """A keras.Model sharing this backbone's weights: images -> {"stage_k_small": ...,
        "stage_k_large": ...} for the stages `stages` (default: all K).

        spatial=True: maps (B, H_b / p_b, W_b / p_b, D_b) per branch, CLS token dropped (H_b is the
        branch's input: the large branch sees the image resized, 240 -> 224), for detection and
        segmentation heads; spatial=False: the token sequences (B, [1 +] N_b, D_b)."""
        stages = range(len(self.depths)) if stages is None else stages
        outputs = {}
        for k in stages:
            if not 0 <= k < len(self.depths):
                raise ValueError(f"stage {k} does not exist: the backbone has stages 0 to {len(self.depths) - 1}.")
            for branch in BRANCHES:
                name = f"stage_{k}_{branch}"
                x = self.stage_outputs[name]
                outputs[name] = TokensToMap(self.cls_token, name=f"{name}_map")(x) if spatial else x
        return keras.Model(self.input, outputs, name=f"{self.name}_features")

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """A variant by name (timm's ImageNet-1k weights; kwargs: dtype, name, trainable and
        create_model's overrides such as image_size), or a keras-hub preset: a save_to_preset
        directory, an hf:// or kaggle:// handle."""
        if crossvit_presets.is_variant(preset):
            return crossvit_presets.load_backbone(cls, preset, load_weights, **kwargs)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "image_sizes": self.image_sizes,
            "patch_sizes": self.patch_sizes,
            "embed_dims": self.embed_dims,
            "depths": self.depths,
            "num_heads": self.num_heads,
            "mlp_ratios": self.mlp_ratios,
            "multi_conv": self.multi_conv,
            "qkv_bias": self.qkv_bias,
            "attn_drop_rate": self.attn_drop_rate,
            "proj_drop_rate": self.proj_drop_rate,
            "drop_path_rate": self.drop_path_rate,
            "fusion": self.fusion,
            "cls_token": self.cls_token,
            "identity_projections": self.identity_projections,
            "remat": self.remat,
        }
