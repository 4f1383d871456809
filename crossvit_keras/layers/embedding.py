"""Turning an image into a branch's token sequence: patch embedding, then CLS token and
learnable position embedding (paper Sec. 3.1)."""

import keras
from keras import ops

from crossvit_keras.layers.base import check_positive_integer, register

# The 3-convolution stem of the dagger models (timm `PatchEmbed(multi_conv=True)`), per patch
# size: (kernel, stride, padding, output width as a fraction of the embedding dim). ReLU between.
MULTI_CONV_STEMS = {
    12: ((7, 4, 3, 4), (3, 3, 0, 2), (3, 1, 1, 1)),
    16: ((7, 4, 3, 4), (3, 2, 1, 2), (3, 2, 1, 1)),
}


@register
class PatchEmbedding(keras.layers.Layer):
    """Image (B, H, W, C) -> patch tokens (B, H/p * W/p, dim).

    Linear: one convolution with kernel = stride = patch size. With `multi_conv` (the dagger
    models): three convolutions with PyTorch's symmetric zero padding, which Keras' 'same'
    padding does not reproduce for strides > 1."""

    def __init__(self, patch_size, dim, multi_conv=False, **kwargs):
        super().__init__(**kwargs)
        check_positive_integer(self, "patch_size", patch_size)
        check_positive_integer(self, "dim", dim)
        if multi_conv and patch_size not in MULTI_CONV_STEMS:
            raise ValueError(
                f"multi_conv patch embedding exists for patch sizes {sorted(MULTI_CONV_STEMS)}, not {patch_size}."
            )
        if multi_conv and dim % 4:
            raise ValueError(f"multi_conv patch embedding needs a width divisible by 4, got {dim}.")
        self.patch_size = patch_size
        self.dim = dim
        self.multi_conv = multi_conv
        if multi_conv:
            self.stem = MULTI_CONV_STEMS[patch_size]
        else:
            self.stem = ((patch_size, patch_size, 0, 1),)
        self.convs = [
            keras.layers.Conv2D(dim // width, kernel, strides=stride, name=f"conv_{i}", dtype=self.dtype_policy)
            for i, (kernel, stride, _, width) in enumerate(self.stem)
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, (_, _, pad, _) in zip(self.convs, self.stem, strict=True):
            shape = (shape[0], *(None if s is None else s + 2 * pad for s in shape[1:3]), shape[3])
            conv.build(shape)
            shape = conv.compute_output_shape(shape)

    def call(self, images):
        x = images
        for i, (conv, (_, _, pad, _)) in enumerate(zip(self.convs, self.stem, strict=True)):
            if i:
                x = ops.relu(x)
            if pad:
                x = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            x = conv(x)
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], self.dim))

    def grid_size(self, image_size):
        """Patch rows (= columns) for a square image of side image_size."""
        size = image_size
        for kernel, stride, pad, _ in self.stem:
            size = (size + 2 * pad - kernel) // stride + 1
        return size

    def compute_output_shape(self, input_shape):
        grid = self.grid_size(input_shape[1])
        return (input_shape[0], grid * grid, self.dim)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "dim": self.dim,
            "multi_conv": self.multi_conv,
        }


@register
class ClassTokenPositionEmbedding(keras.layers.Layer):
    """Prepends the learnable CLS token and adds the learnable position embedding (1 + N tokens).
    With `cls_token=False` (the paper's ablation without CLS tokens): the position embedding of
    the N patch tokens alone."""

    def __init__(self, num_patches, dim, cls_token=True, **kwargs):
        super().__init__(**kwargs)
        check_positive_integer(self, "num_patches", num_patches)
        check_positive_integer(self, "dim", dim)
        self.num_patches = num_patches
        self.dim = dim
        self.use_cls_token = cls_token

    def build(self, input_shape):
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        if self.use_cls_token:
            self.cls_token = self.add_weight(shape=(1, 1, self.dim), initializer=init, name="cls_token")
        length = int(self.use_cls_token) + self.num_patches
        self.pos_embed = self.add_weight(shape=(1, length, self.dim), initializer=init, name="pos_embed")

    def call(self, patches):
        if patches.shape[1] is not None and patches.shape[1] != self.num_patches:
            raise ValueError(f"Expected {self.num_patches} patch tokens, got {patches.shape[1]}.")
        if not self.use_cls_token:
            return patches + ops.cast(self.pos_embed, patches.dtype)
        cls = ops.broadcast_to(ops.cast(self.cls_token, patches.dtype), (ops.shape(patches)[0], 1, self.dim))
        return ops.concatenate([cls, patches], axis=1) + ops.cast(self.pos_embed, patches.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(self.use_cls_token) + self.num_patches, self.dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_patches": self.num_patches,
            "dim": self.dim,
            "cls_token": self.use_cls_token,
        }
