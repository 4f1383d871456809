"""The four other fusions of the paper's Table 6 (Sec. 3.3, Fig. 3, Eq. 2-4); the fifth, the
cross-attention (V), is `CrossAttentionFusion` in cross_attention.py.

Every fusion takes [tokens_small, tokens_large], each (B, 1 + patches, D_i) with the CLS token
first, returns the two fused sequences, and has `CrossAttentionFusion`'s constructor arguments:
(dims, num_heads, depth, qkv_bias, attn_drop_rate, proj_drop_rate, drop_path_rate). `depth` is the
paper's L; only the all-attention fusion has a layer to stack, the others ignore it.

I, III and IV fuse in the large (primary) branch's space: its width and, for the pairwise
fusion, its patch grid. f_i and g_i are the projections of Eq. 2-4 (`Projection`: LayerNorm ->
GELU -> Dense, as in the cross-attention); between equal widths they are the identity, so f_l = g_l
= identity. That is what Table 6's counts say: the class-token and pairwise models have 0.5 M
parameters more than no fusion, the cost of f_s and g_s in three stages (3 x 149,184); learned
f_l and g_l as well would make it 1.4 M. The all-attention fusion (II) learns all four; see its
docstring for why.
"""

import math

import keras
from keras import ops

from crossvit_keras.layers.base import ResidualAttentionBlock, check_branches, check_positive_integer, register
from crossvit_keras.layers.cross_attention import Projection
from crossvit_keras.layers.transformer import MultiHeadSelfAttention

PRIMARY = 1  # the large branch: the space in which the class-token and pairwise fusions sum


def projection(dim_in, dim_out, name, dtype):
    """f or g between two widths: a `Projection`, or the identity when the widths are equal."""
    if dim_in == dim_out:
        return keras.layers.Identity(name=name, dtype=dtype)
    return Projection(dim_out, name=name, dtype=dtype)


def resize_tokens(tokens, num_tokens):
    """Patch tokens (B, g * g, D) bilinearly interpolated over their square grid to `num_tokens`
    = h * h tokens (half-pixel centres, no antialiasing: PyTorch's F.interpolate(mode="bilinear"))."""
    grid, new_grid = math.isqrt(tokens.shape[1]), math.isqrt(num_tokens)
    if grid == new_grid:
        return tokens
    dim = tokens.shape[-1]
    x = ops.image.resize(ops.reshape(tokens, (-1, grid, grid, dim)), (new_grid, new_grid), "bilinear", antialias=False)
    return ops.reshape(ops.cast(x, tokens.dtype), (-1, num_tokens, dim))


class Fusion(keras.layers.Layer):
    """What the fusions in this file share: the constructor arguments of `CrossAttentionFusion`
    (stored and returned by get_config) and shape-preserving output."""

    def __init__(
        self,
        dims,
        num_heads,
        depth=1,
        qkv_bias=True,
        attn_drop_rate=0.0,
        proj_drop_rate=0.0,
        drop_path_rate=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_branches(self, "dims", dims)
        check_branches(self, "num_heads", num_heads)
        check_positive_integer(self, "depth", depth)
        self.dims = tuple(dims)
        self.num_heads = tuple(num_heads)
        self.depth = depth
        self.qkv_bias = qkv_bias
        self.attn_drop_rate = attn_drop_rate
        self.proj_drop_rate = proj_drop_rate
        self.drop_path_rate = drop_path_rate

    def compute_output_shape(self, input_shape):
        return [tuple(s) for s in input_shape]

    def get_config(self):
        return {
            **super().get_config(),
            "dims": self.dims,
            "num_heads": self.num_heads,
            "depth": self.depth,
            "qkv_bias": self.qkv_bias,
            "attn_drop_rate": self.attn_drop_rate,
            "proj_drop_rate": self.proj_drop_rate,
            "drop_path_rate": self.drop_path_rate,
        }


@register
class NoFusion(Fusion):
    """(I) No fusion: the branches never exchange information; each keeps its own head (the
    model's output is still the mean of the two heads). No weights; L is ignored."""

    def build(self, input_shape):
        pass

    def call(self, inputs, training=None):
        return list(inputs)


@register
class SelfAttentionBlock(ResidualAttentionBlock):
    """o = y + DropPath(MultiHeadSelfAttention(LayerNorm(y))), no MLP (Eq. 2's residual MSA)."""

    attention_class = MultiHeadSelfAttention

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for layer in (self.norm1, self.attn, self.drop_path):
            layer.build(input_shape)

    def call(self, x, training=None):
        return x + self.drop_path(self.attn(self.norm1(x), training=training), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@register
class AllAttentionFusion(Fusion):
    """(II) All-attention fusion (Eq. 2): every token of both branches in one self-attention.

        y = f_l(x_l) || f_s(x_s),   o = y + MSA(LN(y)),   o = o_l || o_s,   z_i = g_i(o_i)

    f_i (D_i -> D_l) and g_i (D_l -> D_i) are `Projection`s on all tokens of branch i; the MSA
    has the large branch's width and heads; no MLP (Eq. 2 has none). L = `depth` residual MSA
    layers between f and g (as the cross-attention stacks L attention layers between its f and g).

    Design, from Eq. 2 and Table 6 (CrossViT-S: 27.7 M parameters, 7.6 GMACs): both f_l and g_l
    are learned (Eq. 2 writes them; as identities, like f_l and g_l of the class-token fusion, the
    model has 25.96 M / 7.41 GMACs). So: 26.85 M parameters and 7.58 GMACs. The GMACs match;
    the parameters are 0.85 M (0.28 M per stage) short of the paper's (1.00 M as the paper
    counts, without the position embeddings: crossvit_keras.ablations), and nothing in the
    equations fills that gap without computation the GMACs do not have: an MLP after the MSA
    (ratio 1: 27.74 M but 8.11 GMACs; the branches' ratio 4: 29.5 M, 9.5 GMACs) would add it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        width, dtype = self.dims[PRIMARY], self.dtype_policy
        self.projs = [Projection(width, name=f"projs_{i}", dtype=dtype) for i in range(2)]
        self.blocks = [
            SelfAttentionBlock(
                width,
                self.num_heads[PRIMARY],
                self.qkv_bias,
                self.attn_drop_rate,
                self.proj_drop_rate,
                self.drop_path_rate,
                name=f"attn_{layer}",
                dtype=dtype,
            )
            for layer in range(self.depth)
        ]
        self.revert_projs = [Projection(self.dims[i], name=f"revert_projs_{i}", dtype=dtype) for i in range(2)]

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        width = self.dims[PRIMARY]
        for i in range(2):
            self.projs[i].build(shapes[i])
            self.revert_projs[i].build((*shapes[i][:2], width))
        total = None if None in (shapes[0][1], shapes[1][1]) else shapes[0][1] + shapes[1][1]
        for block in self.blocks:
            block.build((shapes[0][0], total, width))

    def call(self, inputs, training=None):
        lengths = [x.shape[1] for x in inputs]
        y = ops.concatenate([self.projs[1](inputs[1]), self.projs[0](inputs[0])], axis=1)  # f_l(x_l) || f_s(x_s)
        for block in self.blocks:
            y = block(y, training=training)
        o_l, o_s = ops.split(y, [lengths[1]], axis=1)
        return [self.revert_projs[0](o_s), self.revert_projs[1](o_l)]


@register
class ClassTokenFusion(Fusion):
    """(III) Class-token fusion (Eq. 3): the CLS tokens are summed in the large branch's space and
    each branch gets the sum back; the patch tokens pass through untouched.

        z_i = g_i(sum_j f_j(x_cls^j)) || x_patch^i

    f_s, g_s are `Projection`s (D_s <-> D_l), f_l = g_l = identity (see the module docstring).
    No attention: L is ignored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        width, dtype = self.dims[PRIMARY], self.dtype_policy
        self.projs = [projection(self.dims[i], width, f"projs_{i}", dtype) for i in range(2)]
        self.revert_projs = [projection(width, self.dims[i], f"revert_projs_{i}", dtype) for i in range(2)]

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        for i in range(2):
            self.projs[i].build((shapes[i][0], 1, self.dims[i]))
            self.revert_projs[i].build((shapes[i][0], 1, self.dims[PRIMARY]))

    def call(self, inputs, training=None):
        cls_tokens, patches = zip(*(ops.split(x, [1], axis=1) for x in inputs), strict=True)
        fused = self.projs[0](cls_tokens[0]) + self.projs[1](cls_tokens[1])
        return [ops.concatenate([self.revert_projs[i](fused), patches[i]], axis=1) for i in range(2)]


@register
class PairwiseFusion(ClassTokenFusion):
    """(IV) Pairwise fusion (Eq. 4): the CLS tokens as in III; the patch tokens, projected by f_j
    and interpolated to the large branch's grid (14 x 14 at 240 px; the small branch's 20 x 20 is
    resized bilinearly), are summed position by position, and each branch gets the sum back
    through g_i, interpolated to its own grid.

        z_i = g_i(sum_j f_j(x_cls^j)) || g_i(sum_j f_j(x_patch^j))

    One f_j and g_i per branch for both kinds of token (Table 6 counts the same parameters as
    for III). No attention: L is ignored."""

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        for i in range(2):
            self.projs[i].build((shapes[i][0], None, self.dims[i]))
            self.revert_projs[i].build((shapes[i][0], None, self.dims[PRIMARY]))

    def call(self, inputs, training=None):
        cls_tokens, patches = zip(*(ops.split(x, [1], axis=1) for x in inputs), strict=True)
        counts = [p.shape[1] for p in patches]
        fused_cls = self.projs[0](cls_tokens[0]) + self.projs[1](cls_tokens[1])
        fused = resize_tokens(self.projs[0](patches[0]), counts[PRIMARY]) + self.projs[1](patches[1])
        return [
            ops.concatenate(
                [self.revert_projs[i](fused_cls), resize_tokens(self.revert_projs[i](fused), counts[i])], axis=1
            )
            for i in range(2)
        ]
