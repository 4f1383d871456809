"""The five fusions of the paper's Table 6: exact parameter counts on CrossViT-S, what each
computes, .keras round trip in a fresh process, training, mixed precision and MirroredStrategy."""

import keras
import numpy as np
import pytest
from helpers import random_inputs, run_python, tiny_model

import crossvit_keras
from crossvit_keras import layers
from crossvit_keras.layers import FUSIONS

# crossvit_small_240 with each fusion, 1000 classes (cross-attention: timm's exact count).
# none = CrossViT-S minus its 3 fusions (3 x 1,039,104); class token and pairwise add f_s and g_s
# in each stage (3 x 149,184); all-attention: f and g of both branches and one 384-wide MSA per
# stage (3 x 1,038,528).
SMALL_PARAMS = {
    "none": 23_738_960,
    "all_attention": 26_854_544,
    "class_token": 24_186_512,
    "pairwise": 24_186_512,
    "cross_attention": 26_856_272,
}


def test_every_fusion_is_in_the_table():
    assert sorted(FUSIONS) == sorted(SMALL_PARAMS)


@pytest.mark.parametrize("fusion", sorted(SMALL_PARAMS))
def test_small_parameter_count(fusion):
    assert crossvit_keras.create_model("crossvit_small_240", fusion=fusion).count_params() == SMALL_PARAMS[fusion]


def _fuse(fusion, shapes=((2, 17, 8), (2, 5, 12)), dims=(8, 12), num_heads=(2, 3), **kwargs):
    layer = FUSIONS[fusion](dims, num_heads, **kwargs)
    x = random_inputs(list(shapes))
    return layer, x, [keras.ops.convert_to_numpy(y) for y in layer(x)]


def test_no_fusion_is_the_identity():
    layer, x, y = _fuse("none")
    assert not layer.weights
    for a, b in zip(x, y, strict=True):
        np.testing.assert_array_equal(a, b)


def test_class_token_fusion_sums_the_projected_cls_tokens():
    layer, x, y = _fuse("class_token")
    f_s, g_s = layer.projs[0], layer.revert_projs[0]
    fused = f_s(x[0][:, :1]) + x[1][:, :1]  # f_l = identity: the large branch has the common width
    np.testing.assert_allclose(y[1][:, :1], fused, atol=1e-6)
    np.testing.assert_allclose(y[0][:, :1], g_s(fused), atol=1e-6)
    for i in range(2):  # patch tokens untouched
        np.testing.assert_array_equal(y[i][:, 1:], x[i][:, 1:])


def test_pairwise_fusion_sums_tokens_on_the_large_branch_grid():
    import tensorflow as tf

    layer, x, y = _fuse("pairwise")  # small branch 4 x 4 patches, large 2 x 2
    f_s, g_s = layer.projs[0], layer.revert_projs[0]
    np.testing.assert_allclose(y[1][:, :1], f_s(x[0][:, :1]) + x[1][:, :1], atol=1e-6)  # CLS as in III
    small = tf.image.resize(tf.reshape(f_s(x[0][:, 1:]), (2, 4, 4, 12)), (2, 2), "bilinear")
    fused = tf.reshape(small, (2, 4, 12)) + x[1][:, 1:]
    np.testing.assert_allclose(y[1][:, 1:], fused, atol=1e-5)
    back = tf.image.resize(tf.reshape(g_s(fused), (2, 2, 2, 8)), (4, 4), "bilinear")
    np.testing.assert_allclose(y[0][:, 1:], tf.reshape(back, (2, 16, 8)), atol=1e-5)


def test_all_attention_fusion_is_one_self_attention_over_both_branches():
    layer, x, y = _fuse("all_attention", depth=2)
    seq = np.concatenate([layer.projs[1](x[1]), layer.projs[0](x[0])], axis=1)
    for block in layer.blocks:
        seq = block(seq)
    np.testing.assert_allclose(y[1], layer.revert_projs[1](seq[:, :5]), atol=1e-5)
    np.testing.assert_allclose(y[0], layer.revert_projs[0](seq[:, 5:]), atol=1e-5)
    # Every token is a query: the fused small-branch patch tokens change.
    assert not np.allclose(y[0][:, 1:], x[0][:, 1:])


@pytest.mark.parametrize("fusion", ["all_attention", "class_token", "pairwise"])
def test_equal_widths_and_stacked_stages_work(fusion):
    _, _, y = _fuse(fusion, shapes=((2, 17, 8), (2, 5, 8)), dims=(8, 8), num_heads=(2, 2))
    assert [a.shape for a in y] == [(2, 17, 8), (2, 5, 8)]
    model = tiny_model(fusion=fusion, depths=((1, 1, 2), (0, 1, 1), (1, 0, 3)))
    assert model.predict(random_inputs((2, 48, 48, 3)), verbose=0).shape == (2, 5)


@pytest.mark.parametrize("fusion", sorted(SMALL_PARAMS))
def test_training_step_reaches_every_weight(fusion):
    import tensorflow as tf

    model = tiny_model(fusion=fusion, drop_path_rate=0.1)
    x = random_inputs((4, 48, 48, 3))
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(np.arange(4), model(x, training=True), from_logits=True)
    grads = tape.gradient(loss, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads, strict=True):
        assert grad is not None and np.all(np.isfinite(grad)), weight.path


@pytest.mark.parametrize("fusion", sorted(set(SMALL_PARAMS) - {"cross_attention"}))
def test_mixed_precision(fusion):
    model = tiny_model(fusion=fusion, dtype="mixed_bfloat16")
    x = random_inputs((2, 48, 48, 3))
    logits = model(x)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    float32 = tiny_model(fusion=fusion)
    float32.set_weights(model.get_weights())
    np.testing.assert_allclose(logits, float32(x), atol=0.1)


# In one fresh process for all fusions: each .keras file reloads (safe mode, no custom objects)
# and predicts the same logits; one training step under MirroredStrategy over 2 logical CPUs (run
# eagerly: tracing model.fit's distributed step takes ~30 s per model here) gives both replicas a
# loss and keeps the mirrored weights in sync.
FRESH_PROCESS = """
import sys
from crossvit_keras.training.distribute import configure_cpu_devices
configure_cpu_devices(2)
import keras, numpy as np, tensorflow as tf, crossvit_keras
from crossvit_keras.layers import FUSIONS
folder = sys.argv[1]
x = np.load(f"{folder}/x.npy")
for fusion in FUSIONS:
    model = keras.models.load_model(f"{folder}/{fusion}.keras")
    assert model.get_config()["fusion"] == fusion
    np.save(f"{folder}/{fusion}.npy", model(x))

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
dataset = tf.data.Dataset.from_tensor_slices((np.concatenate([x] * 4), np.arange(8) % 5)).batch(8)
images, labels = next(iter(strategy.experimental_distribute_dataset(dataset)))
for fusion in FUSIONS:
    with strategy.scope():
        model = crossvit_keras.create_model(
            "crossvit_tiny_240", num_classes=5, fusion=fusion, **crossvit_keras.configs.TEST_OVERRIDES
        )
        optimizer = keras.optimizers.Adam()
        optimizer.build(model.trainable_variables)

    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    losses = strategy.experimental_local_results(strategy.run(step, args=(images, labels)))
    assert len(losses) == 2 and all(np.isfinite(losses)), (fusion, losses)
    for variable in model.trainable_variables:
        replicas = [v.numpy() for v in variable.value.values]
        assert len(replicas) == 2 and np.array_equal(*replicas), variable.path
    print(fusion, "replicas", len(losses))
"""


def test_keras_file_roundtrip_and_mirrored_training_step_in_a_fresh_process(tmp_path):
    x = random_inputs((2, 48, 48, 3))
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for fusion in FUSIONS:
        model = tiny_model(fusion=fusion, drop_path_rate=0.1)
        model.save(tmp_path / f"{fusion}.keras")
        expected[fusion] = keras.ops.convert_to_numpy(model(x))
    out = run_python(FRESH_PROCESS, tmp_path)
    for fusion in FUSIONS:
        np.testing.assert_array_equal(np.load(tmp_path / f"{fusion}.npy"), expected[fusion], err_msg=fusion)
        assert f"{fusion} replicas 2" in out


def test_unknown_fusion_fails_at_construction():
    with pytest.raises(ValueError, match="Unknown fusion 'sum'; choose one of"):
        tiny_model(fusion="sum")


def test_layers_are_exported():
    for name in ("NoFusion", "AllAttentionFusion", "ClassTokenFusion", "PairwiseFusion", "SelfAttentionBlock"):
        assert getattr(layers, name) in keras.saving.get_custom_objects().values()


def test_recipe_fusion_flag_offers_every_fusion():
    from crossvit_keras.cli import train as recipe

    parser = recipe.build_parser()
    assert [parser.parse_args(["--fusion", f]).fusion for f in FUSIONS] == list(FUSIONS)
    assert [a for a in parser._actions if a.dest == "fusion"][0].choices == tuple(FUSIONS)
