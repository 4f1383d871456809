"""The multi-scale transformer encoder (paper Fig. 2): one stage runs N encoder blocks on the
small-patch branch and M on the large-patch branch, then fuses the branches. CrossViT stacks K
such stages."""

import numbers

import keras

from crossvit_keras.layers.base import check_branches, check_rate, register
from crossvit_keras.layers.cross_attention import CrossAttentionFusion
from crossvit_keras.layers.fusions import AllAttentionFusion, ClassTokenFusion, NoFusion, PairwiseFusion
from crossvit_keras.layers.transformer import TransformerBlock

# The fusion is one replaceable piece: the paper's Table 6 compares five schemes (I-V). Each takes
# [tokens_small, tokens_large] and returns the two fused sequences.
FUSIONS = {
    "none": NoFusion,  # I
    "all_attention": AllAttentionFusion,  # II, Eq. 2
    "class_token": ClassTokenFusion,  # III, Eq. 3
    "pairwise": PairwiseFusion,  # IV, Eq. 4
    "cross_attention": CrossAttentionFusion,  # V, Eq. 5-7: CrossViT's
}


@register
class MultiScaleEncoder(keras.layers.Layer):
    """One stage: `depth` = (N, M, L) blocks in the small branch, the large branch and the fusion.

    `drop_path_rates[k]` is the stochastic-depth rate of the k-th block of each branch; the fusion
    takes the last one (as timm and the official code do). `cls_token` and `identity_projections`
    are the cross-attention's ablation options (CrossAttentionFusion); the defaults are timm's model.
    `remat`: in training, each block recomputes its attention's and MLP's activations in the
    backward pass instead of keeping them (TransformerBlock)."""

    def __init__(
        self,
        dims,
        depth,
        num_heads,
        mlp_ratios,
        drop_path_rates,
        qkv_bias=True,
        attn_drop_rate=0.0,
        proj_drop_rate=0.0,
        fusion="cross_attention",
        cls_token=True,
        identity_projections=False,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"Unknown fusion {fusion!r}; choose one of {sorted(FUSIONS)}.")
        check_branches(self, "dims", dims)
        integers = all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in depth)
        if len(depth) != 3 or not integers or min(depth) < 0 or depth[2] < 1:
            raise ValueError(f"MultiScaleEncoder: depth must be (N, M, L), integers N, M >= 0, L >= 1; got {depth!r}.")
        if len(mlp_ratios) != 2:
            raise ValueError(f"MultiScaleEncoder: mlp_ratios needs one value per branch (2), got {mlp_ratios!r}.")
        if len(drop_path_rates) < max(1, *depth[:2]):
            raise ValueError(
                f"MultiScaleEncoder: drop_path_rates needs one rate per block of the deeper branch "
                f"({max(1, *depth[:2])}), got {drop_path_rates!r}."
            )
        for rate in drop_path_rates:
            check_rate(self, "drop_path_rates", rate)
        self.dims = tuple(dims)
        self.depth = tuple(depth)
        self.num_heads = tuple(num_heads)
        self.mlp_ratios = tuple(mlp_ratios)
        self.drop_path_rates = tuple(drop_path_rates)
        self.qkv_bias = qkv_bias
        self.attn_drop_rate = attn_drop_rate
        self.proj_drop_rate = proj_drop_rate
        self.fusion_name = fusion
        self.cls_token = cls_token
        self.identity_projections = identity_projections
        self.remat = remat
        options = {}  # only the cross-attention has them: the other fusions never see them
        if not cls_token or identity_projections:
            if fusion != "cross_attention":
                raise ValueError(
                    f"cls_token=False and identity_projections=True need fusion='cross_attention', got {fusion!r}."
                )
            options = {"cls_token": cls_token, "identity_projections": identity_projections}
        dtype = self.dtype_policy
        self.blocks = [
            [
                TransformerBlock(
                    self.dims[b],
                    self.num_heads[b],
                    self.mlp_ratios[b],
                    qkv_bias,
                    attn_drop_rate,
                    proj_drop_rate,
                    self.drop_path_rates[k],
                    remat=remat,
                    name=f"blocks_{b}_{k}",
                    dtype=dtype,
                )
                for k in range(self.depth[b])
            ]
            for b in range(2)
        ]
        self.fusion = FUSIONS[fusion](
            self.dims,
            self.num_heads,
            self.depth[2],
            qkv_bias,
            attn_drop_rate,
            proj_drop_rate,
            self.drop_path_rates[-1],
            name="fusion",
            dtype=dtype,
            **options,
        )

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        for branch, shape in zip(self.blocks, shapes, strict=True):
            for block in branch:
                block.build(shape)
        self.fusion.build(shapes)

    def call(self, inputs, training=None):
        outputs = []
        for branch, x in zip(self.blocks, inputs, strict=True):
            for block in branch:
                x = block(x, training=training)
            outputs.append(x)
        return self.fusion(outputs, training=training)

    def compute_output_shape(self, input_shape):
        return [tuple(s) for s in input_shape]

    def get_config(self):
        return {
            **super().get_config(),
            "dims": self.dims,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratios": self.mlp_ratios,
            "drop_path_rates": self.drop_path_rates,
            "qkv_bias": self.qkv_bias,
            "attn_drop_rate": self.attn_drop_rate,
            "proj_drop_rate": self.proj_drop_rate,
            "fusion": self.fusion_name,
            "cls_token": self.cls_token,
            "identity_projections": self.identity_projections,
            "remat": self.remat,
        }
