"""Every custom layer rebuilds from its config; the layers compute what the paper says."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_roundtrip, random_inputs

import crossvit_keras  # noqa: F401  (registers the layers)
from crossvit_keras import layers
from crossvit_keras.model import ClassifierHead
from crossvit_keras.models.crossvit_backbone import TokensToMap

# One case per custom layer: (constructor, input shapes, call kwargs).
CASES = {
    "LayerNorm": (lambda: layers.LayerNorm(epsilon=1e-6), (2, 5, 8), {}),
    "DropPath": (lambda: layers.DropPath(0.25, seed=1), (2, 5, 8), {}),
    "BicubicResize": (lambda: layers.BicubicResize((7, 5)), (2, 11, 9, 3), {}),
    "PatchEmbedding": (lambda: layers.PatchEmbedding(16, 8), (2, 32, 32, 3), {}),
    "PatchEmbedding_multi_conv_12": (lambda: layers.PatchEmbedding(12, 8, multi_conv=True), (2, 48, 48, 3), {}),
    "PatchEmbedding_multi_conv_16": (lambda: layers.PatchEmbedding(16, 8, multi_conv=True), (2, 32, 32, 3), {}),
    "ClassTokenPositionEmbedding": (lambda: layers.ClassTokenPositionEmbedding(4, 8), (2, 4, 8), {}),
    "MultiHeadSelfAttention": (lambda: layers.MultiHeadSelfAttention(8, 2), (2, 5, 8), {}),
    "MLP": (lambda: layers.MLP(8, 12), (2, 5, 8), {}),
    "TransformerBlock": (lambda: layers.TransformerBlock(8, 2, 3.0, drop_path_rate=0.1), (2, 5, 8), {}),
    "MultiHeadCrossAttention": (lambda: layers.MultiHeadCrossAttention(8, 2), (2, 5, 8), {}),
    "CrossAttentionBlock": (lambda: layers.CrossAttentionBlock(8, 2, drop_path_rate=0.1), (2, 5, 8), {}),
    "Projection": (lambda: layers.Projection(12), (2, 1, 8), {}),
    "CrossAttentionFusion": (lambda: layers.CrossAttentionFusion((8, 12), (2, 3)), [(2, 5, 8), (2, 3, 12)], {}),
    "CrossAttentionFusion_depth_2": (
        lambda: layers.CrossAttentionFusion((8, 12), (2, 3), depth=2),
        [(2, 5, 8), (2, 3, 12)],
        {},
    ),
    "NoFusion": (lambda: layers.NoFusion((8, 12), (2, 3)), [(2, 5, 8), (2, 3, 12)], {}),
    "SelfAttentionBlock": (lambda: layers.SelfAttentionBlock(8, 2, drop_path_rate=0.1), (2, 5, 8), {}),
    "AllAttentionFusion": (
        lambda: layers.AllAttentionFusion((8, 12), (2, 3), depth=2),
        [(2, 5, 8), (2, 3, 12)],
        {},
    ),
    "ClassTokenFusion": (lambda: layers.ClassTokenFusion((8, 12), (2, 3)), [(2, 5, 8), (2, 3, 12)], {}),
    "PairwiseFusion": (lambda: layers.PairwiseFusion((8, 12), (2, 3)), [(2, 17, 8), (2, 5, 12)], {}),
    "MultiScaleEncoder": (
        lambda: layers.MultiScaleEncoder((8, 12), (1, 2, 1), (2, 3), (2.0, 2.0), (0.0, 0.1)),
        [(2, 5, 8), (2, 3, 12)],
        {},
    ),
    "ClassifierHead": (lambda: ClassifierHead((8, 12), 4), [(2, 5, 8), (2, 3, 12)], {}),
    "ClassifierHead_features": (lambda: ClassifierHead((8, 12), 0), [(2, 5, 8), (2, 3, 12)], {}),
    "TokensToMap": (lambda: TokensToMap(), (2, 17, 8), {}),
}
# keras-hub's preprocessing layers, whose round trips their own tests check.
COVERED_ELSEWHERE = {"CrossViTImageConverter", "CrossViTImageClassifierPreprocessor"}


def test_every_registered_layer_has_a_roundtrip_case():
    registered = {
        key.split(">", 1)[1]
        for key, obj in keras.saving.get_custom_objects().items()
        if key.startswith("crossvit_keras>")
        and isinstance(obj, type)
        and issubclass(obj, keras.layers.Layer)
        and not issubclass(obj, keras.Model)
    }
    covered = {name.split("_")[0] if name.split("_")[0] in registered else name for name in CASES}
    covered |= COVERED_ELSEWHERE
    assert registered <= covered, f"layers without a round-trip case: {sorted(registered - covered)}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_config_roundtrip(case):
    make, shapes, kwargs = CASES[case]
    layer = make()
    outputs = assert_layer_roundtrip(layer, shapes, kwargs)
    expected = layer.compute_output_shape(shapes)
    actual = [tuple(o.shape) for o in keras.tree.flatten(outputs)]
    expected = [tuple(expected)] if not isinstance(expected, list) else [tuple(e) for e in expected]
    assert actual == expected


def _values_and_gradients(function, inputs, variables=()):
    """function(*inputs), and the gradients of a random projection of it w.r.t. the inputs and
    variables; `inputs` is one array or a tuple of arrays."""
    import tensorflow as tf

    xs = [tf.constant(x) for x in (inputs if isinstance(inputs, tuple) else (inputs,))]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = function(*xs)
        loss = tf.reduce_sum(y * tf.constant(random_inputs(tuple(y.shape), seed=9)))
    return [y, *tape.gradient(loss, [*xs, *variables])]


def test_layer_norm_and_its_gradient_equal_keras_layer_normalization():
    x = random_inputs((3, 7, 16)) * 3.0 + 1.0
    ours, keras_ln = layers.LayerNorm(epsilon=1e-6), keras.layers.LayerNormalization(epsilon=1e-6)
    for layer in (ours, keras_ln):
        layer.build(x.shape)
        layer.set_weights([random_inputs((16,), seed=1) + 1.0, random_inputs((16,), seed=2)])
    expected = _values_and_gradients(keras_ln, x, [keras_ln.gamma, keras_ln.beta])
    actual = _values_and_gradients(ours, x, [ours.gamma, ours.beta])
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_layer_norm_and_gelu_train_through_their_written_out_gradients():
    """The gradient graph has none of the ops autodiff of the composed forms would add (a silent
    fall-back to Keras' LayerNormalization or to autodiff would pass the equality tests above)."""
    import tensorflow as tf

    norm = layers.LayerNorm(epsilon=1e-6)
    norm.build((2, 5, 8))

    @tf.function
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layers.gelu(norm(x))
        return tape.gradient(y, [x, norm.gamma, norm.beta])

    graph = gradient.get_concrete_function(tf.TensorSpec((2, 5, 8))).graph
    op_types = {op.type for op in graph.get_operations()}
    op_types |= {node.op for function in graph.as_graph_def().library.function for node in function.node_def}
    assert not op_types & {"RsqrtGrad", "SquaredDifference", "Erfc"}, sorted(op_types)


def test_gelu_and_its_gradient_equal_autodiff_of_the_erf_form():
    x = random_inputs((4, 33)) * 3.0
    expected = _values_and_gradients(lambda t: 0.5 * t * (1.0 + keras.ops.erf(t / np.sqrt(2.0))), x)
    for a, e in zip(_values_and_gradients(layers.gelu, x), expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_attention_and_its_gradient_equal_autodiff():
    q, k, v = (random_inputs((2, 3, 9, 4), seed=seed) * 2.0 for seed in (1, 2, 3))
    expected = _values_and_gradients(
        lambda q, k, v: keras.ops.matmul(keras.ops.softmax(keras.ops.matmul(q, keras.ops.swapaxes(k, -1, -2))), v),
        (q, k, v),
    )
    for a, e in zip(_values_and_gradients(layers.base.attention, (q, k, v)), expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_cross_attention_has_one_query_row_per_head():
    """The CLS token is the only query: the map is 1 x (N + 1) per head (linear cost)."""
    attention = layers.MultiHeadCrossAttention(dim=32, num_heads=4)
    tokens = random_inputs((3, 17, 32))
    out, scores = attention(tokens, return_attention_scores=True)
    assert tuple(out.shape) == (3, 1, 32)
    assert tuple(scores.shape) == (3, 4, 1, 17)
    np.testing.assert_allclose(keras.ops.sum(scores, axis=-1), np.ones((3, 4, 1)), atol=1e-6)


def test_cross_attention_matches_the_equations():
    """softmax(q k^T / sqrt(d)) v with q from the CLS token alone, in NumPy, per head."""
    dim, heads, tokens = 12, 3, 6
    attention = layers.MultiHeadCrossAttention(dim, heads)
    x = random_inputs((2, tokens, dim), seed=1)
    out = keras.ops.convert_to_numpy(attention(x))
    (wq, bq), (wk, bk), (wv, bv), (wp, bp) = (
        (layer.kernel.numpy(), layer.bias.numpy())
        for layer in (attention.wq, attention.wk, attention.wv, attention.proj)
    )
    d = dim // heads
    q = (x[:, :1] @ wq + bq).reshape(2, 1, heads, d)
    k = (x @ wk + bk).reshape(2, tokens, heads, d)
    v = (x @ wv + bv).reshape(2, tokens, heads, d)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 1, dim) @ wp + bp
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_fusion_changes_only_the_cls_tokens():
    fusion = layers.CrossAttentionFusion((8, 12), (2, 3))
    small, large = random_inputs([(2, 5, 8), (2, 3, 12)])
    out_small, out_large = fusion([small, large])
    np.testing.assert_array_equal(out_small[:, 1:], small[:, 1:])
    np.testing.assert_array_equal(out_large[:, 1:], large[:, 1:])
    assert not np.allclose(out_small[:, :1], small[:, :1])
    # The small branch's CLS token depends on the large branch's patches, and on nothing else of it.
    other = large.copy()
    other[:, 1:] += random_inputs(other[:, 1:].shape, seed=2)  # (a constant would vanish in LayerNorm)
    assert not np.allclose(fusion([small, other])[0][:, :1], out_small[:, :1])
    other = large.copy()
    other[:, :1] += random_inputs(other[:, :1].shape, seed=3)
    np.testing.assert_allclose(fusion([small, other])[0], out_small, atol=1e-6)


def test_drop_path_drops_whole_samples_and_scales_the_kept_ones():
    drop = layers.DropPath(0.25, seed=3)
    x = np.ones((4000, 3, 2), "float32")
    np.testing.assert_array_equal(drop(x), x)
    y = keras.ops.convert_to_numpy(drop(x, training=True))
    per_sample = y.reshape(len(y), -1)
    assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
    assert np.all(per_sample == per_sample[:, :1])  # the whole branch of a sample, not single values
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03
    assert abs(y.mean() - 1.0) < 0.05


def test_drop_path_is_off_at_inference_and_per_sample_in_training():
    block = layers.TransformerBlock(8, 2, drop_path_rate=0.5)
    x = random_inputs((64, 5, 8))
    np.testing.assert_allclose(block(x), block(x, training=False), atol=0)
    a, b = block(x, training=True), block(x, training=True)
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: layers.MultiHeadSelfAttention(10, 3), "does not divide"),
        (lambda: layers.MultiHeadCrossAttention(10, 4), "does not divide"),
        (lambda: layers.PatchEmbedding(14, 8, multi_conv=True), "patch sizes"),
        (lambda: layers.PatchEmbedding(12, 10, multi_conv=True), "divisible by 4"),
        (lambda: layers.MultiScaleEncoder((8, 8), (1, 1, 1), (2, 2), (2, 2), (0,), fusion="sum"), "fusion"),
        (lambda: layers.LayerNorm(axis=1), "last axis"),
        (lambda: layers.LayerNorm(center=False), "last axis"),
        (lambda: layers.DropPath(1.0), "rate"),
    ],
)
def test_impossible_layer_arguments_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()
