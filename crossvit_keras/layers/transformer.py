"""The transformer encoder block of both branches (ViT / DeiT / timm `Block`):

x = x + DropPath(MultiHeadSelfAttention(LayerNorm(x)))
x = x + DropPath(MLP(LayerNorm(x)))

With `remat=True`, training recomputes each residual branch's activations in the backward pass.
"""

import math
import numbers

import keras
from keras import ops

from crossvit_keras.layers.base import (
    Attention,
    ResidualAttentionBlock,
    attention,
    check_positive_integer,
    check_rate,
    dense,
    gelu,
    layer_norm,
    per_token,
    register,
)


@register
class MultiHeadSelfAttention(Attention):
    """Multi-head self-attention with one fused qkv projection (timm's `Attention`)."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop_rate=0.0, proj_drop_rate=0.0, **kwargs):
        super().__init__(dim, num_heads, qkv_bias, attn_drop_rate, proj_drop_rate, **kwargs)
        self.qkv = dense(3 * dim, "qkv", self.dtype_policy, use_bias=qkv_bias)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, x, training=None):
        # qkv's columns are (q, k, v) x heads x head_dim, as timm's reshape(B, N, 3, heads, head_dim)
        # reads them: one split gives every head's q, k and v as a (B, N, head_dim) slice. Heads are
        # attended one at a time on these slices, with no transposes of heads. Against the batched
        # (B, heads, N, head_dim) layout on the 2-core test CPU: much faster with TensorFlow's
        # Eigen kernels; with oneDNN ~7% faster for a training step, ~2% slower for inference.
        # One split, not q/k/v and then heads: ~5% faster inference.
        h = self.num_heads
        pieces = ops.split(per_token(self.qkv, x), 3 * h, axis=-1)
        scale = ops.cast(self.scale, x.dtype)
        heads = [
            self._attend(q * scale, k, v, training)
            for q, k, v in zip(pieces[:h], pieces[h : 2 * h], pieces[2 * h :], strict=True)
        ]
        x = ops.concatenate(heads, axis=-1)  # (B, N, heads * head_dim), heads in timm's order
        return self.proj_drop(per_token(self.proj, x), training=training)

    def _attend(self, q, k, v, training):
        """softmax(q k^T) v for one head: q (already scaled), k, v (B, N, head_dim)."""
        if training and self.attn_drop_rate > 0:  # dropout on the (B, N, N) map, between softmax and v
            attn = ops.softmax(ops.matmul(q, ops.swapaxes(k, -1, -2)))
            return ops.matmul(self.attn_drop(attn, training=training), v)
        return attention(q, k, v)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@register
class MLP(keras.layers.Layer):
    """Dense -> GELU -> Dropout -> Dense -> Dropout (timm's `Mlp`)."""

    def __init__(self, dim, hidden_dim, drop_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        check_positive_integer(self, "dim", dim)
        check_positive_integer(self, "hidden_dim", hidden_dim)
        check_rate(self, "drop_rate", drop_rate)
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.drop_rate = drop_rate
        self.fc1 = dense(hidden_dim, "fc1", self.dtype_policy)
        self.fc2 = dense(dim, "fc2", self.dtype_policy)
        self.drop = keras.layers.Dropout(drop_rate, name="drop", dtype=self.dtype_policy)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.hidden_dim))

    def call(self, x, training=None):
        # Tokens as rows of one 2-D matrix through both layers, so that TensorFlow's oneDNN rewrite
        # fuses fc1's matmul, bias and GELU into one kernel (see `per_token`).
        h = ops.reshape(x, (-1, self.dim))
        h = self.drop(gelu(self.fc1(h)), training=training)
        h = self.drop(self.fc2(h), training=training)
        return ops.reshape(h, ops.shape(x))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "drop_rate": self.drop_rate,
        }


@register
class TransformerBlock(ResidualAttentionBlock):
    """Pre-norm encoder block: self-attention and MLP, each with a residual and stochastic depth."""

    attention_class = MultiHeadSelfAttention

    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        attn_drop_rate=0.0,
        proj_drop_rate=0.0,
        drop_path_rate=0.0,
        remat=False,
        **kwargs,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop_rate, proj_drop_rate, drop_path_rate, **kwargs)
        if remat and (attn_drop_rate or proj_drop_rate):  # the recomputation would draw other dropout masks
            raise ValueError(
                f"remat=True needs attn_drop_rate = proj_drop_rate = 0, got {attn_drop_rate} and {proj_drop_rate}."
            )
        ratio_ok = isinstance(mlp_ratio, numbers.Real) and not isinstance(mlp_ratio, bool) and 0 < mlp_ratio < math.inf
        if not ratio_ok or int(dim * mlp_ratio) < 1:
            raise ValueError(
                f"TransformerBlock: mlp_ratio must be a positive number with a hidden width int(dim * mlp_ratio) "
                f">= 1, got {mlp_ratio!r} (dim {dim})."
            )
        self.mlp_ratio = mlp_ratio
        self.remat = remat
        self.norm2 = layer_norm("norm2", self.dtype_policy)
        self.mlp = MLP(dim, int(dim * mlp_ratio), proj_drop_rate, name="mlp", dtype=self.dtype_policy)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for layer in (self.norm1, self.attn, self.norm2, self.mlp, self.drop_path):
            layer.build(input_shape)

    def call(self, x, training=None):
        def attention(x):
            return self.attn(self.norm1(x), training=training)

        def mlp(x):
            return self.mlp(self.norm2(x), training=training)

        if self.remat and training:
            # Activation rematerialisation: only each branch's input is kept for the backward pass,
            # which recomputes the rest (keras.remat; with TensorFlow, tf.recompute_grad). DropPath
            # stays outside, so its per-sample mask is drawn once.
            attention, mlp = keras.remat(attention), keras.remat(mlp)
        x = x + self.drop_path(attention(x), training=training)
        return x + self.drop_path(mlp(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "mlp_ratio": self.mlp_ratio, "remat": self.remat}
