"""Deterministic random weights and images for the timm-parity fixtures (numpy only).

Imported both by ``tools/make_fixtures.py`` (run in the PyTorch reference venv) and by the Keras
tests, so a golden file only needs to store a seed and the state-dict key order/shapes: the test
regenerates exactly the same weights without torch or timm.

Every tensor is perturbed away from its usual init (LayerNorm weights are not 1, biases are not
0, ...) so that a converter that drops, transposes or swaps any parameter changes the output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "init_kind",
    "random_images",
    "random_state_dict",
    "shapes_from_json",
    "shapes_to_json",
]

# Standard deviations of the perturbations.
TOKEN_STD = 0.5  # pos_embed_*, cls_token_*: large enough to matter next to the patch tokens
NORM_WEIGHT_STD = 0.1  # LayerNorm weight = 1 + N(0, 0.1)
NORM_BIAS_STD = 0.1  # LayerNorm bias = N(0, 0.1)
BIAS_STD = 0.02  # Linear / Conv biases


def _is_norm_weight(key: str, shapes: Mapping[str, Sequence[int]]) -> bool:
    # A 1-D ``.weight`` can only be a normalisation layer's scale (Linear is 2-D, Conv is 4-D).
    return key.endswith(".weight") and len(shapes[key]) == 1


def init_kind(key: str, shapes: Mapping[str, Sequence[int]]) -> str:
    """How ``key`` is drawn: 'token', 'norm_weight', 'norm_bias', 'bias', 'conv' or 'linear'."""
    shape = tuple(shapes[key])
    leaf = key.rsplit(".", 1)[-1]
    if leaf.startswith("pos_embed") or leaf.startswith("cls_token"):
        return "token"
    if key.endswith(".bias"):
        sibling = key[: -len(".bias")] + ".weight"
        if sibling in shapes and _is_norm_weight(sibling, shapes):
            return "norm_bias"
        return "bias"
    if _is_norm_weight(key, shapes):
        return "norm_weight"
    if len(shape) == 4:
        return "conv"
    if len(shape) == 2:
        return "linear"
    raise ValueError(f"cannot tell how to initialise {key!r} with shape {shape}")


def random_state_dict(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 arrays for a timm state dict, deterministic from ``seed``.

    ``shapes`` maps timm state-dict keys to PyTorch shapes (Linear weights are (out, in), Conv
    weights are (out, in, kh, kw)). Keys are drawn in sorted order from one
    ``numpy.random.default_rng(seed)``, so the result does not depend on the mapping's order.
    The returned dict keeps the order of ``shapes``.

    - pos_embed*, cls_token*: N(0, 0.5)
    - LayerNorm (1-D ``.weight`` and its ``.bias``): 1 + N(0, 0.1) and N(0, 0.1)
    - Linear weight (out, in): N(0, 1/sqrt(in)), so attention logits are O(1) and softmax matters
    - Conv weight (out, in, kh, kw): N(0, 1/sqrt(in*kh*kw)), so activations do not vanish
    - other biases: N(0, 0.02)
    """
    rng = np.random.default_rng(seed)
    drawn: dict[str, np.ndarray] = {}
    for key in sorted(shapes):
        shape = tuple(int(s) for s in shapes[key])
        kind = init_kind(key, shapes)
        z = rng.standard_normal(shape)
        if kind == "token":
            value = TOKEN_STD * z
        elif kind == "norm_weight":
            value = 1.0 + NORM_WEIGHT_STD * z
        elif kind == "norm_bias":
            value = NORM_BIAS_STD * z
        elif kind == "bias":
            value = BIAS_STD * z
        else:  # 'linear' or 'conv': fan_in = product of all but the output dimension
            fan_in = int(np.prod(shape[1:]))
            value = z / np.sqrt(fan_in)
        drawn[key] = value.astype(np.float32)
    return {key: drawn[key] for key in shapes}


def random_images(n: int, height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    """Float32 NHWC batch ~ N(0, 1) (like ImageNet-normalised images), deterministic from ``seed``.

    Drawn from ``default_rng([seed, 1])``, a stream independent of the weights'
    ``default_rng(seed)``, so a fixture can use one seed for both.
    """
    rng = np.random.default_rng([seed, 1])
    return rng.standard_normal((n, height, width, channels)).astype(np.float32)


def shapes_to_json(shapes: Mapping[str, Sequence[int]]) -> str:
    """Ordered ``[[key, [dims...]], ...]`` JSON string (what the parity_*.npz files store)."""
    return json.dumps([[key, [int(s) for s in shape]] for key, shape in shapes.items()])


def shapes_from_json(text: str | bytes | np.ndarray) -> dict[str, tuple[int, ...]]:
    """Inverse of :func:`shapes_to_json`; accepts the 0-d string array read back from an npz."""
    if isinstance(text, np.ndarray):
        text = text.item()
    if isinstance(text, bytes):
        text = text.decode()
    return {key: tuple(shape) for key, shape in json.loads(text)}
