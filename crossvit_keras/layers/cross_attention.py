"""CrossViT's cross-attention fusion (paper Sec. 3.3, Eq. 5-7, Fig. 3).

For each branch i, with j the other branch:

    x'_cls = f_i(x_cls^i)                                 f_i: LayerNorm -> GELU -> Dense(D_i -> D_j)
    y_cls  = x'_cls + MCA(LayerNorm([x'_cls || x_patch^j]))   the CLS token is the ONLY query
    z^i    = [g_i(y_cls) || x_patch^i]                    g_i: LayerNorm -> GELU -> Dense(D_j -> D_i)

Two options for the paper's ablations (defaults: timm's and the official code's model):
`identity_projections=True` makes f and g identities between equal widths (the official code's
disabled identity branch; Table 7 (B) counts it), and `cls_token=False` is the text's model without
CLS tokens (Sec. 4.3): the mean of branch i's patch tokens takes x_cls^i's place as the query, and
g_i(y_cls) takes the mean's place: every patch token of branch i moves by g_i(y_cls) - mean.

Because only the CLS token queries, the attention map is 1 x (N + 1) per head: the cost of the
fusion is linear, not quadratic, in the number of patch tokens. There is no MLP after it.
"""

import keras
from keras import ops

from crossvit_keras.layers.base import (
    Attention,
    ResidualAttentionBlock,
    check_branches,
    check_positive_integer,
    dense,
    gelu,
    layer_norm,
    per_token,
    register,
)


@register
class MultiHeadCrossAttention(Attention):
    """Multi-head attention in which the first token alone queries the whole sequence (timm's
    `CrossAttention`). Input (B, N + 1, D), output (B, 1, D): the attended CLS token."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop_rate=0.0, proj_drop_rate=0.0, **kwargs):
        super().__init__(dim, num_heads, qkv_bias, attn_drop_rate, proj_drop_rate, **kwargs)
        self.wq = dense(dim, "wq", self.dtype_policy, use_bias=qkv_bias)
        self.wk = dense(dim, "wk", self.dtype_policy, use_bias=qkv_bias)
        self.wv = dense(dim, "wv", self.dtype_policy, use_bias=qkv_bias)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for layer in (self.wq, self.wk, self.wv, self.proj):
            layer.build(input_shape)

    def _heads(self, x):
        """(B, T, D) -> (B, heads, T, head_dim)."""
        return ops.transpose(ops.reshape(x, (-1, x.shape[1], self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def call(self, x, training=None, return_attention_scores=False):
        q = self._heads(self.wq(x[:, :1])) * ops.cast(self.scale, x.dtype)  # (B, h, 1, d)
        k = self._heads(per_token(self.wk, x))  # (B, h, N + 1, d)
        v = self._heads(per_token(self.wv, x))
        attn = ops.softmax(ops.matmul(q, ops.swapaxes(k, -1, -2)))  # (B, h, 1, N + 1)
        out = ops.matmul(self.attn_drop(attn, training=training), v)  # (B, h, 1, d)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, 1, self.dim))
        out = self.proj_drop(self.proj(out), training=training)
        return (out, attn) if return_attention_scores else out

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.dim)


@register
class CrossAttentionBlock(ResidualAttentionBlock):
    """y_cls = x_cls + DropPath(MultiHeadCrossAttention(LayerNorm(x))); no MLP (Eq. 7)."""

    attention_class = MultiHeadCrossAttention

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.norm1.build(input_shape)
        self.attn.build(input_shape)
        self.drop_path.build((input_shape[0], 1, input_shape[-1]))

    def call(self, x, training=None):
        return x[:, :1] + self.drop_path(self.attn(self.norm1(x), training=training), training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.dim)


@register
class Projection(keras.layers.Layer):
    """LayerNorm -> GELU -> Dense: the projection f (D_i -> D_j) and back-projection g (D_j -> D_i)."""

    def __init__(self, dim_out, **kwargs):
        super().__init__(**kwargs)
        check_positive_integer(self, "dim_out", dim_out)
        self.dim_out = dim_out
        self.norm = layer_norm("norm", self.dtype_policy)
        self.fc = dense(dim_out, "fc", self.dtype_policy)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.norm.build(input_shape)
        self.fc.build(input_shape)

    def call(self, x):
        return self.fc(gelu(self.norm(x)))

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.dim_out)

    def get_config(self):
        return {**super().get_config(), "dim_out": self.dim_out}


@register
class CrossAttentionFusion(keras.layers.Layer):
    """Fuses the two branches: each branch's CLS token is projected by f into the other branch,
    attends (as the only query) to that branch's patch tokens, and is projected back by g.
    Patch tokens pass through unchanged. Input and output: [tokens_small, tokens_large].

    `identity_projections`: f and g are identities where the two widths are equal (else learned).
    `cls_token=False`: the inputs are patch tokens alone; their mean is each branch's CLS token
    (module docstring).

    `depth` is the paper's L (cross-attention layers per branch); like timm and the official code,
    layer l > 0 attends to the output of layer l - 1 alone."""

    def __init__(
        self,
        dims,
        num_heads,
        depth=1,
        qkv_bias=True,
        attn_drop_rate=0.0,
        proj_drop_rate=0.0,
        drop_path_rate=0.0,
        cls_token=True,
        identity_projections=False,
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
        self.cls_token = cls_token
        self.identity_projections = identity_projections
        dtype = self.dtype_policy

        def projection(dim_out, name):
            if identity_projections and self.dims[0] == self.dims[1]:
                return keras.layers.Identity(name=name, dtype=dtype)
            return Projection(dim_out, name=name, dtype=dtype)

        self.projs, self.fusion, self.revert_projs = [], [], []
        for i in range(2):
            j = 1 - i
            self.projs.append(projection(self.dims[j], f"projs_{i}"))
            self.fusion.append(
                [
                    CrossAttentionBlock(
                        self.dims[j],
                        self.num_heads[j],
                        qkv_bias,
                        attn_drop_rate,
                        proj_drop_rate,
                        drop_path_rate,
                        name=f"cross_attn_{i}_{layer}",
                        dtype=dtype,
                    )
                    for layer in range(depth)
                ]
            )
            self.revert_projs.append(projection(self.dims[i], f"revert_projs_{i}"))

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        extra = 0 if self.cls_token else 1  # the mean token, put in front of the other branch's patches
        for i in range(2):
            j = 1 - i
            self.projs[i].build((shapes[i][0], 1, self.dims[i]))
            length = None if shapes[j][1] is None else shapes[j][1] + extra
            for block in self.fusion[i]:
                block.build((shapes[j][0], length, self.dims[j]))
            self.revert_projs[i].build((shapes[i][0], 1, self.dims[j]))

    def call(self, inputs, training=None):
        # One split per branch into (CLS token, patch tokens): its gradient is one concatenation,
        # where slicing x[:, :1] and x[:, 1:] costs two full-size StridedSliceGrads and their sum.
        if self.cls_token:
            cls_tokens, patches = zip(*(ops.split(x, [1], axis=1) for x in inputs), strict=True)
        else:
            cls_tokens, patches = [ops.mean(x, axis=1, keepdims=True) for x in inputs], inputs
        outputs = []
        for i in range(2):
            j = 1 - i
            y = ops.concatenate([self.projs[i](cls_tokens[i]), patches[j]], axis=1)  # f_i
            for block in self.fusion[i]:
                y = block(y, training=training)
            if self.cls_token:
                outputs.append(ops.concatenate([self.revert_projs[i](y), patches[i]], axis=1))  # g_i
            else:  # g_i(y) replaces the mean of the patch tokens
                outputs.append(patches[i] + (self.revert_projs[i](y) - cls_tokens[i]))
        return outputs

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
            "cls_token": self.cls_token,
            "identity_projections": self.identity_projections,
        }
