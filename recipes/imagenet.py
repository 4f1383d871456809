"""Train or evaluate CrossViT with DeiT's recipe (paper Table 9) under tf.distribute.

    python recipes/imagenet.py --data-set IMNET --data-path /data/imagenet --strategy mirrored
    python recipes/imagenet.py --eval --resume runs/crossvit_15_240/model.keras --data-path /data/imagenet
    python recipes/imagenet.py --eval --model crossvit_15_240 --pretrained --data-path /data/imagenet
    python recipes/imagenet.py --pretrained --model crossvit_15_240 --data-set CIFAR10  # fine-tune from ImageNet

The same as `crossvit-keras train` (all flags: `python recipes/imagenet.py --help`); the work is
done by crossvit_keras.training, from a TrainConfig the flags fill. Install the package first
(`pip install -e .` in a checkout).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from crossvit_keras.cli import train  # noqa: E402

if __name__ == "__main__":
    sys.exit(train.main(prog="python recipes/imagenet.py"))
