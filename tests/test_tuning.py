"""Fine-tuning and deployment options: LoRA (crossvit_keras.tuning), quantized `.keras` files that
load in a fresh process, activation rematerialisation (remat=True), and their recipe flags."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import random_inputs, run_python, tiny_model

import crossvit_keras
from crossvit_keras import tuning
from crossvit_keras.training import TrainConfig
from crossvit_keras.training.recipe import training_model


def images(model, batch=2, seed=0):
    return random_inputs((batch, model.image_size, model.image_size, 3), seed)


def test_lora_freezes_the_backbone_trains_the_head_and_merges(tmp_path):
    model = tiny_model(num_classes=5)
    before = {v.path: v.numpy() for v in model.weights}
    tuning.enable_lora(model, rank=2)
    adapted = tuning.lora_layers(model)
    names = {layer.path.split("/")[-1] for layer in adapted}
    assert names == {"qkv", "proj", "wq", "wk", "wv", "fc1", "fc2"}
    assert len(adapted) == 2 * (3 * 4 + 2 * 4)  # 2 stages of 1 + 2 blocks (4 each) and 2 cross-attentions (4)
    trainable = {v.path for v in model.trainable_variables}
    head = {v.path for v in model.get_layer("head").weights}
    lora = {v.path for layer in adapted for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    assert trainable == head | lora
    expected = sum(int(np.prod(v.shape)) for v in model.get_layer("head").weights)
    expected += sum(2 * (layer.lora_kernel_a.shape[0] + layer.lora_kernel_b.shape[1]) for layer in adapted)
    assert tuning.trainable_parameters(model) == expected

    # one training step: only the LoRA matrices and the head move
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x = images(model, 4)
    model.train_on_batch(x, np.arange(4) % 5)
    after = {v.path: v.numpy() for v in model.weights}
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed and changed <= head
    assert any(np.abs(layer.lora_kernel_b.numpy()).max() > 0 for layer in adapted)

    logits = model(x)
    merged = tuning.merge_lora(model)
    assert not any("lora" in v.path for v in merged.weights) and len(merged.trainable_variables) == len(before)
    np.testing.assert_allclose(merged(x), logits, atol=1e-5)
    model.save(tmp_path / "lora.keras")  # Keras' Dense saves the merged kernels
    reloaded = crossvit_keras.load_model(str(tmp_path / "lora.keras"))
    np.testing.assert_allclose(reloaded(x), logits, atol=1e-5)

    model.load_weights(tmp_path / "lora.keras")  # resuming: merged kernels, both LoRA matrices zeroed
    tuning.restart_lora(model)  # A drawn afresh, B zero: the same function, and A gets gradients again
    assert all(np.abs(layer.lora_kernel_a.numpy()).max() > 0 for layer in adapted)
    np.testing.assert_allclose(model(x), logits, atol=1e-5)
    with pytest.raises(ValueError, match="already has LoRA"):
        tuning.enable_lora(model, 2)
    with pytest.raises(ValueError, match="rank"):
        tuning.enable_lora(tiny_model(), 0)


@pytest.mark.parametrize("mode", ["int8", pytest.param("float8", marks=pytest.mark.slow)])  # float8 is emulated
def test_quantized_models_load_in_a_fresh_process(tmp_path, mode):
    # Both halves in fresh processes: Keras' quantize slows down with every layer a long-lived
    # process has made (minutes at the end of the suite, seconds alone).
    quantize = (
        "import sys, warnings, numpy as np, crossvit_keras\n"
        "overrides = crossvit_keras.configs.TEST_OVERRIDES\n"
        "model = crossvit_keras.create_model('crossvit_tiny_240', num_classes=5, **overrides)\n"
        "x = np.random.default_rng(0).uniform(-1, 1, (3, model.image_size, model.image_size, 3)).astype('float32')\n"
        "reference = model(x).numpy()\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n"
        f"    model.quantize('{mode}')\n"
        "logits = model(x).numpy()\n"
        "np.save(sys.argv[1] + '/x.npy', x); np.save(sys.argv[1] + '/reference.npy', reference)\n"
        f"np.save(sys.argv[1] + '/quantized.npy', logits); model.save(sys.argv[1] + '/{mode}.keras')\n"
    )
    run_python(quantize, tmp_path, timeout=300)
    reference, logits = np.load(tmp_path / "reference.npy"), np.load(tmp_path / "quantized.npy")
    assert 0 < np.abs(logits - reference).max() < 0.5 * np.abs(reference).max()  # float8: 3 mantissa bits
    load = (
        "import sys, numpy as np, crossvit_keras\n"
        f"model = crossvit_keras.load_model(sys.argv[1] + '/{mode}.keras')\n"
        f"np.save(sys.argv[1] + '/{mode}.npy', model(np.load(sys.argv[1] + '/x.npy')))\n"
        "print(sorted({l.quantization_mode for l in model._flatten_layers() if l.quantization_mode}))\n"
    )
    out = run_python(load, tmp_path, timeout=300)
    assert out.split() == [f"['{mode}']"]
    np.testing.assert_array_equal(np.load(tmp_path / f"{mode}.npy"), logits)


@pytest.mark.slow  # ~10 s of tracing; benchmarks/quantize.py exports and runs the quantized SavedModels too
def test_quantized_saved_model_export(tmp_path):
    from crossvit_keras.data.preprocessing import eval_transform

    model = tiny_model(num_classes=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.quantize("int8")
    image = np.random.default_rng(0).integers(0, 256, (1, 48, 48, 3)).astype("float32")
    expected = tf.nn.softmax(model(eval_transform(image, model.image_size), training=False)).numpy()
    crossvit_keras.export_saved_model(model, str(tmp_path / "1"))
    served = tf.saved_model.load(str(tmp_path / "1"))
    dtypes = tf.train.load_checkpoint(str(tmp_path / "1" / "variables" / "variables")).get_variable_to_dtype_map()
    assert tf.int8 in dtypes.values()  # the int8 kernels are exported, not float copies
    out = served.signatures["serving_default"](images=tf.constant(image))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


def test_remat_gives_the_same_gradients():
    plain = tiny_model(num_classes=5)
    remat = tiny_model(num_classes=5, remat=True)
    remat.set_weights(plain.get_weights())
    x = tf.constant(images(plain, 4))

    def gradients(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(x, training=True)))
        return loss, tape.gradient(loss, model.trainable_variables)

    (loss, grads), (remat_loss, remat_grads) = gradients(plain), gradients(remat)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    for a, b in zip(grads, remat_grads, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)
    assert remat.get_config()["remat"] and remat.get_layer("stage_0").get_config()["remat"]
    assert crossvit_keras.CrossViT.from_config(remat.get_config()).remat
    old = {k: v for k, v in plain.get_config().items() if k != "remat"}  # a config saved before the option
    assert crossvit_keras.CrossViT.from_config(old).remat is False
    with pytest.raises(ValueError, match="remat=True needs attn_drop_rate"):
        tiny_model(remat=True, attn_drop_rate=0.1)


def test_recipe_flags_lora_rank_and_remat():
    from crossvit_keras.cli.train import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--lora-rank", "4", "--remat"]))
    assert config.lora_rank == 4 and config.remat is True
    config = TrainConfig(
        model="crossvit_tiny_240", model_overrides=dict(crossvit_keras.configs.TEST_OVERRIDES), lora_rank=2, remat=True
    )
    model = training_model(config, num_classes=3)
    assert model.remat and all(layer.lora_enabled for layer in tuning.lora_layers(model))
    with pytest.raises(ValueError, match="--lora-rank"):
        TrainConfig(lora_rank=-1).checked()
