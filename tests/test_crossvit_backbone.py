"""CrossViTBackbone: both branches' tokens, the tokens after every stage, spatial maps for dense
heads, serialization, and the same weights (by name) as crossvit_keras.CrossViT."""

import keras
import numpy as np
import pytest
from helpers import assert_layer_roundtrip, random_inputs, tiny_model

from crossvit_keras import CrossViTBackbone, configs
from crossvit_keras.models import TokensToMap, crossvit_presets

BATCH = 2


def tiny_backbone(**overrides):
    return CrossViTBackbone(
        **crossvit_presets.backbone_config("crossvit_tiny_240", **configs.TEST_OVERRIDES, **overrides)
    )


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


def test_outputs_are_both_branches_tokens(backbone):
    small, large = backbone(random_inputs((BATCH, 48, 48, 3)))
    # 48 px / 12 = 4 x 4 small patches, 32 px / 16 = 2 x 2 large ones, each with its CLS token first.
    assert tuple(small.shape) == (BATCH, 1 + 16, 16) and tuple(large.shape) == (BATCH, 1 + 4, 32)
    assert backbone.grid_sizes() == (4, 2) and backbone.image_size == 48


def test_feature_maps_per_stage_and_branch(backbone):
    images = random_inputs((BATCH, 48, 48, 3))
    maps = backbone.feature_extractor()(images)
    tokens = backbone.feature_extractor(spatial=False)(images)
    assert sorted(maps) == ["stage_0_large", "stage_0_small", "stage_1_large", "stage_1_small"]
    for name, grid, dim in (("small", 4, 16), ("large", 2, 32)):
        for k in range(2):
            key = f"stage_{k}_{name}"
            assert tuple(maps[key].shape) == (BATCH, grid, grid, dim)
            # row-major patch order, the CLS token dropped
            np.testing.assert_array_equal(np.reshape(tokens[key][:, 1:], (BATCH, grid, grid, dim)), maps[key])
    final = backbone(images)
    np.testing.assert_allclose(tokens["stage_1_small"], final[0], atol=1e-6)
    assert list(backbone.feature_extractor(stages=[1])(images)) == ["stage_1_small", "stage_1_large"]
    with pytest.raises(ValueError, match="stage 2 does not exist"):
        backbone.feature_extractor(stages=[2])


def test_tokens_to_map_roundtrip():
    assert_layer_roundtrip(TokensToMap(), (BATCH, 1 + 9, 8))
    assert tuple(TokensToMap(cls_token=False)(random_inputs((BATCH, 9, 8))).shape) == (BATCH, 3, 3, 8)
    with pytest.raises(ValueError, match="square patch grid"):
        TokensToMap()(random_inputs((BATCH, 1 + 6, 8)))


def test_serialization_roundtrip(backbone):
    config = backbone.get_config()
    images = random_inputs((BATCH, 48, 48, 3))
    for clone in (
        CrossViTBackbone.from_config(config),
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone)),
    ):
        assert type(clone) is CrossViTBackbone and clone.get_config() == config
        clone.set_weights(backbone.get_weights())
        for a, e in zip(clone(images), backbone(images), strict=True):
            np.testing.assert_array_equal(a, e)


def test_weights_are_crossvits_by_name(backbone):
    model = tiny_model()
    paths = [w.path for w in model.weights if not w.path.startswith("head/")]
    assert [w.path for w in backbone.weights] == paths
    assert backbone.count_params() + model.get_layer("head").count_params() == model.count_params()


def test_segmentation_head_trains_on_the_feature_maps():
    """A small dense head (the large branch's map upsampled to the small grid, concatenated,
    a 1 x 1 convolution per patch) learns a per-patch labelling in a few steps."""
    keras.utils.set_random_seed(0)
    features = tiny_backbone().feature_extractor(stages=[1])
    images = keras.Input((48, 48, 3))
    maps = features(images)
    large = keras.layers.UpSampling2D(2)(maps["stage_1_large"])  # 2 x 2 -> 4 x 4
    x = keras.layers.Concatenate()([maps["stage_1_small"], large])
    logits = keras.layers.Conv2D(3, 1, name="segmentation")(x)  # (B, 4, 4, classes)
    model = keras.Model(images, logits)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss, run_eagerly=True)  # a few steps: tracing would dominate
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 48, 48, 3)).astype("float32")
    y = rng.integers(0, 3, (8, 4, 4))
    losses = model.fit(x, y, batch_size=8, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
