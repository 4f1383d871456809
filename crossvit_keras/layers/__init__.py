"""CrossViT's layers, one file per part of the architecture:

- base.py: LayerNorm and GELU (with their gradients written out), Dense, DropPath, the attention bases
- embedding.py: PatchEmbedding (linear or 3-conv), ClassTokenPositionEmbedding
- resize.py: BicubicResize, the large branch's PyTorch-exact input resize
- transformer.py: MultiHeadSelfAttention, MLP, TransformerBlock
- cross_attention.py: MultiHeadCrossAttention, CrossAttentionBlock, Projection (f, g), CrossAttentionFusion
- fusions.py: the other fusions of Table 6: NoFusion, AllAttentionFusion (with SelfAttentionBlock),
  ClassTokenFusion, PairwiseFusion
- encoder.py: MultiScaleEncoder, one stage of the multi-scale encoder, and the FUSIONS table
"""

from crossvit_keras.layers.base import DropPath, LayerNorm, gelu
from crossvit_keras.layers.cross_attention import (
    CrossAttentionBlock,
    CrossAttentionFusion,
    MultiHeadCrossAttention,
    Projection,
)
from crossvit_keras.layers.embedding import ClassTokenPositionEmbedding, PatchEmbedding
from crossvit_keras.layers.encoder import FUSIONS, MultiScaleEncoder
from crossvit_keras.layers.fusions import (
    AllAttentionFusion,
    ClassTokenFusion,
    NoFusion,
    PairwiseFusion,
    SelfAttentionBlock,
)
from crossvit_keras.layers.resize import BicubicResize
from crossvit_keras.layers.transformer import MLP, MultiHeadSelfAttention, TransformerBlock

__all__ = [
    "FUSIONS",
    "MLP",
    "AllAttentionFusion",
    "BicubicResize",
    "ClassTokenFusion",
    "ClassTokenPositionEmbedding",
    "CrossAttentionBlock",
    "CrossAttentionFusion",
    "DropPath",
    "LayerNorm",
    "MultiHeadCrossAttention",
    "MultiHeadSelfAttention",
    "MultiScaleEncoder",
    "NoFusion",
    "PairwiseFusion",
    "PatchEmbedding",
    "Projection",
    "SelfAttentionBlock",
    "TransformerBlock",
    "gelu",
]
