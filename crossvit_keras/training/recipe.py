"""The recipe's model, optimizer and compile (DeiT's recipe, paper Table 9): AdamW or SGD without
weight decay where timm has none, the model to train (fresh, pretrained or fine-tuned), and the
loss and metrics."""

import logging

from crossvit_keras import configs
from crossvit_keras.factory import create_model, load_model
from crossvit_keras.model import CrossViT
from crossvit_keras.training.optimizers import SGDL2, AdamW, layer_decay_scales
from crossvit_keras.tuning import enable_lora, trainable_parameters
from crossvit_keras.weights.convert import assign_weights

logger = logging.getLogger(__name__)


def no_weight_decay_variables(model):
    """timm's rule (DeiT, CrossViT): no weight decay on 1-D variables (biases, LayerNorm gamma and
    beta) nor on the CLS tokens and position embeddings (the model's no_weight_decay set)."""
    return [v for v in model.trainable_variables if len(v.shape) <= 1 or "cls_token" in v.path or "pos_embed" in v.path]


def build_optimizer(
    model,
    opt,
    learning_rate,
    weight_decay,
    *,
    momentum=0.9,
    eps=1e-8,
    betas=None,
    clip_grad=None,
    model_ema_decay=None,
    layer_decay=None,
):
    """AdamW (DeiT) or SGD (the paper's transfer runs), without weight decay where timm has none;
    with `model_ema_decay`, an exponential moving average of the weights (Keras' `use_ema`: the
    first update copies the weights, then ema = decay * ema + (1 - decay) * weights after every
    update); with `layer_decay`, timm's layer-wise learning-rate scales (optimizers.layer_decay_scales)."""
    ema = {"use_ema": True, "ema_momentum": model_ema_decay} if model_ema_decay is not None else {}
    ema["lr_scales"] = layer_decay_scales(model, layer_decay)
    if opt == "adamw":
        beta_1, beta_2 = betas or (0.9, 0.999)
        optimizer = AdamW(
            learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=eps,
            global_clipnorm=clip_grad,
            **ema,
        )
    elif opt == "sgd":
        optimizer = SGDL2(
            l2=weight_decay,
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=True,
            global_clipnorm=clip_grad,
            **ema,
        )
    else:
        raise ValueError(f"Unknown --opt {opt!r}; choose adamw or sgd.")
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


def transfer_weights(source, target, log=None):
    """Copies `source`'s weights into `target` by path (crossvit_keras.weights.convert.assign_weights):
    position embeddings of another length are resized (bicubic), heads of another class count stay
    fresh; anything else that does not fit is an error listing every problem."""
    import numpy as np

    return assign_weights(target, {w.path: np.asarray(w.numpy()) for w in source.weights}, log=log or logger.info)


def training_model(config, num_classes):
    """The CrossViT to train (call under strategy.scope()): a new one, the hub's weights
    (`pretrained`), or `finetune`'s weights with new heads (a .keras model, or a released timm /
    official checkpoint), all through crossvit_keras.factory; with `lora_rank`, its backbone
    frozen and LoRA added (crossvit_keras.tuning.enable_lora)."""
    model = _initial_model(config, num_classes)
    if config.lora_rank:
        enable_lora(model, config.lora_rank)
        logger.info("--lora-rank %d: %s trainable parameters", config.lora_rank, f"{trainable_parameters(model):,}")
    return model


def _initial_model(config, num_classes):
    overrides = {"drop_rate": config.drop, "drop_path_rate": config.drop_path, **(config.model_overrides or {})}
    if config.remat:
        overrides["remat"] = True
    if config.input_size:
        overrides["image_size"] = config.input_size
    if config.fusion:
        overrides["fusion"] = config.fusion
    if config.pretrained:  # the hub's weights, converted (cached), new heads for the dataset's classes
        return create_model(config.model, num_classes=num_classes, pretrained=config.pretrained, **overrides)
    if not config.finetune:
        return create_model(config.model, num_classes=num_classes, **overrides)
    if config.finetune.endswith(".keras"):
        source = load_model(config.finetune)
        if not isinstance(source, CrossViT):
            raise ValueError(f"--finetune {config.finetune} is a {type(source).__name__}, not a CrossViT.")
        source_config = {**source.get_config(), "num_classes": num_classes, "dtype": None}
        source_config.update({k: v for k, v in overrides.items() if k in ("drop_rate", "drop_path_rate", "remat")})
        if config.input_size and config.input_size != source.image_size:
            source_config["image_sizes"] = configs.scaled_image_sizes(
                source.image_sizes, source.patch_sizes, config.input_size
            )
        model = CrossViT.from_config(source_config)
        transfer_weights(source, model)
        logger.info("--finetune: weights of %s loaded (%s)", config.finetune, source.name)
        return model
    model = load_model(config.model, config.finetune, num_classes=num_classes, **overrides)
    logger.info("--finetune: released checkpoint %s loaded into %s", config.finetune, model.name)
    return model


def model_label(model):
    """The model's name for logs and plots: its variant, and what differs from that variant, e.g.
    "crossvit_tiny_240 (modified: embed_dims=(64,128) depths=((1,3,1),) ...)" for the quickstart's model."""
    variant = configs.VARIANTS.get(model.name)
    if variant is None:
        return model.name
    variant = {**configs.ARCHITECTURE_DEFAULTS, **variant}
    config = model.get_config()

    def plain(value):
        if isinstance(value, (list, tuple)):
            return tuple(plain(v) for v in value)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    changed = [k for k in configs.ARCHITECTURE if plain(config[k]) != plain(variant[k])]
    changes = [f"{k}={config[k]}".replace(" ", "") for k in changed]
    return f"{model.name} (modified: {' '.join(changes)})" if changes else model.name


def compile_model(model, optimizer, num_classes, jit_compile="auto", steps_per_execution=1, grad_accum_steps=1):
    """The recipe's compile: soft-target cross-entropy, the exact loss, top-1 and top-5 (every
    backend). On TensorFlow also: with XLA under mirrored strategies, each replica's step compiled
    (compat.split_xla_steps); with grad_accum_steps N, each batch is N micro-batches and one update
    (accumulation.accumulate_gradients)."""
    import keras

    model.compile(
        optimizer=optimizer,
        # soft targets (MixUp/CutMix, smoothing); the evaluation's weights exclude padding and bad images
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[
            # the exact mean loss over the real images (Keras' own loss tracker weights every batch
            # by its size, padding included); it replaces val_loss in the logs
            keras.metrics.CategoricalCrossentropy(from_logits=True, name="ce"),
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    if keras.backend.backend() != "tensorflow":  # the two steps below are TensorFlow's
        if grad_accum_steps != 1:
            raise ValueError("--grad-accum-steps needs the TensorFlow backend (KERAS_BACKEND=tensorflow).")
        return model
    from crossvit_keras.training.accumulation import accumulate_gradients
    from crossvit_keras.training.compat import split_xla_steps

    return accumulate_gradients(split_xla_steps(model), grad_accum_steps)
