"""What a training or evaluation run is: a plain configuration object with the paper's values
(DeiT's recipe, paper Table 9) as defaults. The command line (`crossvit-keras train`,
`recipes/imagenet.py`) fills it from flags of the same names; Python callers build it directly:

    from crossvit_keras.training import TrainConfig, train
    train(TrainConfig(data_path="/data/imagenet", strategy="mirrored", epochs=300))
"""

import dataclasses
import os
import sys

from crossvit_keras import configs

PRECISIONS = {"none": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# where the batch augmentations run (crossvit_keras.data.pipeline.train_dataset's aug_device, or auto)
AUG_DEVICES = ("auto", "host", "accelerator")


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 64  # per replica
    epochs: int = 300
    # model
    model: str = "crossvit_15_240"  # timm, paper or official name
    input_size: int | None = None  # the small branch's input size (default: the variant's)
    drop: float = 0.0  # dropout before the heads
    drop_path: float = 0.1  # stochastic depth rate
    fusion: str | None = None  # paper Table 6 (default: the variant's)
    model_overrides: dict | None = None  # further create_model overrides
    remat: bool = False  # recompute the blocks' activations in the backward pass (less memory, slower steps)
    lora_rank: int = 0  # > 0: LoRA of this rank on the attention and MLP projections, backbone frozen
    # optimizer and schedule
    opt: str = "adamw"  # or "sgd" (timm's: nesterov, L2 decay)
    opt_eps: float = 1e-8
    opt_betas: tuple | None = None  # default (0.9, 0.999)
    momentum: float = 0.9  # SGD
    clip_grad: float | None = None  # clip the global gradient norm
    weight_decay: float = 0.05
    sched: str = "cosine"
    lr: float = 5e-4  # for a global batch of 512; scaled linearly
    unscale_lr: bool = False  # use lr as is, not scaled by global batch / 512
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    warmup_epochs: int = 30
    # fine-tuning and large batches
    grad_accum_steps: int = 1  # each update averages the gradients of N micro-batches of batch_size per replica
    model_ema: bool = False  # keep an exponential moving average of the weights (timm's --model-ema)
    model_ema_decay: float = 0.9998  # its decay (timm's default; DeiT's 0.99996), per optimizer update
    model_ema_export: bool = True  # with model_ema: model.keras and the SavedModel hold the EMA weights
    layer_decay: float | None = None  # layer-wise lr decay (timm's): lr x decay^(layers above), heads x 1
    # augmentation
    aa: str = "rand-m9-mstd0.5-inc1"  # RandAugment (timm's notation), or "none"
    smoothing: float = 0.1  # label smoothing
    train_interpolation: str = "bicubic"
    repeated_aug: bool | None = None  # DeiT's repeated augmentation; default: on for crossvit_18*
    reprob: float = 0.25  # random erasing probability
    remode: str = "pixel"
    recount: int = 1
    scale: tuple = (0.08, 1.0)  # random resized crop's area range
    ratio: tuple = (3 / 4, 4 / 3)  # random resized crop's aspect range
    hflip: float = 0.5
    crop_pct: float = 0.875  # evaluation centre crop fraction (224/256)
    mixup: float = 0.8  # mixup alpha; 0 turns it off
    cutmix: float = 1.0  # cutmix alpha; 0 turns it off
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    # data and output
    data_set: str = "IMNET"  # IMNET (image folder), CIFAR10, CIFAR100 or a tfds name
    data_path: str | None = None  # IMNET: DIR with train/ and val/; tfds: its data_dir
    tfds_manual_dir: str | None = None  # imagenet2012: the folder with the ILSVRC2012 tars
    output_dir: str = ""  # default: runs/<model>
    seed: int = 0
    resume: str = ""  # a checkpoint.keras to continue from; with eval: the model to evaluate
    finetune: str = ""  # a .keras model or a released checkpoint; new heads
    pretrained: bool | str = False  # the hub's ImageNet-1k weights (True), a hub id or a checkpoint
    eval: bool = False  # only evaluate (resume FILE, pretrained, or OUTPUT_DIR/model.keras)
    no_saved_model: bool = False  # do not export saved_model/1/ after training
    # distribution and speed
    strategy: str = "default"  # default, one_device, mirrored, multi_worker_mirrored, tpu
    tpu: str = ""  # TPU name or address for strategy "tpu" ("" = local)
    mixed_precision: str = "none"  # none, bfloat16, float16
    jit_compile: str = "auto"  # auto (Keras' choice; on for mirrored GPUs), on, off
    steps_per_execution: int = 1
    cpu_devices: int = 0  # split the CPU into N logical devices (testing)
    verbose: int | None = None  # Keras progress: 1 bar, 2 a line per epoch (default: 1 on a terminal)
    # input pipeline
    aug_device: str = "auto"  # RandAugment, erasing, Mixup/CutMix on: host, accelerator, auto (accelerator on GPU/TPU)
    # prepared data and scale-out (data_set "shards": a folder written by `crossvit-keras prepare`)
    data_service: str = ""  # grpc://HOST:PORT of a tf.data service dispatcher: its workers run the training input

    def mixup_cutmix(self, num_classes):
        """DeiT's MixUp/CutMix with label smoothing, as this configuration sets it."""
        from crossvit_keras.data.augment import MixupCutmix

        return MixupCutmix(
            num_classes,
            mixup_alpha=self.mixup,
            cutmix_alpha=self.cutmix,
            prob=self.mixup_prob,
            switch_prob=self.mixup_switch_prob,
            label_smoothing=self.smoothing,
        )

    def checked(self):
        """A copy with the variant's timm name and the progress style resolved, after the cheap
        checks (before TensorFlow does anything): a mistake is a ValueError of one line naming the flag."""
        from crossvit_keras.data import augment

        config = dataclasses.replace(self, model=configs.canonical_name(self.model))
        if config.verbose is None:  # progress bars on a terminal, plain lines in a log file or CI
            config.verbose = 1 if sys.stdout.isatty() else 2
        if config.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {config.batch_size}.")
        if config.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"--mixed-precision must be one of {', '.join(PRECISIONS)}, got {config.mixed_precision!r}."
            )
        if config.eval:
            return config
        if config.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {config.epochs}.")
        if not 0 <= config.warmup_epochs <= config.epochs:
            raise ValueError(f"--warmup-epochs must be in [0, --epochs={config.epochs}], got {config.warmup_epochs}.")
        if not 0 < config.scale[0] <= config.scale[1] <= 1:
            raise ValueError(f"--scale must be two area fractions 0 < min <= max <= 1, got {list(config.scale)}.")
        if not 0 < config.ratio[0] <= config.ratio[1]:
            raise ValueError(f"--ratio must be two aspect ratios 0 < min <= max, got {list(config.ratio)}.")
        augment.parse_rand_augment(config.aa)
        if config.aug_device not in AUG_DEVICES:
            raise ValueError(f"--aug-device must be one of {', '.join(AUG_DEVICES)}, got {config.aug_device!r}.")
        if config.mixup_cutmix(2).active and config.batch_size % 2:
            raise ValueError(
                f"--batch-size {config.batch_size} is odd: MixUp/CutMix pair each image with another of the "
                "per-replica batch (timm requires an even batch); use an even --batch-size or --mixup 0 --cutmix 0."
            )
        if config.lora_rank < 0:
            raise ValueError(f"--lora-rank must be >= 0 (0 = no LoRA), got {config.lora_rank}.")
        if config.steps_per_execution < 1:
            raise ValueError(f"--steps-per-execution must be >= 1, got {config.steps_per_execution}.")
        if config.grad_accum_steps < 1:
            raise ValueError(f"--grad-accum-steps must be >= 1, got {config.grad_accum_steps}.")
        if config.model_ema and not 0 <= config.model_ema_decay < 1:
            raise ValueError(f"--model-ema-decay must be in [0, 1), got {config.model_ema_decay}.")
        if config.layer_decay is not None and not 0 < config.layer_decay <= 1:
            raise ValueError(f"--layer-decay must be in (0, 1], got {config.layer_decay}.")
        if config.data_service:
            from crossvit_keras.data.service import service_address

            config.data_service = service_address(config.data_service)
        if config.pretrained and config.finetune:
            raise ValueError("give --pretrained (the hub's weights) or --finetune FILE, not both.")
        for flag, path in (("--finetune", config.finetune), ("--resume", config.resume)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{flag} {path}: no such file.")
        return config

    def to_json(self):
        """The configuration as JSON values (config.json)."""
        return dataclasses.asdict(self)
