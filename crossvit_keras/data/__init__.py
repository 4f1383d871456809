"""Data: image folders and tensorflow-datasets (`datasets`), the tf.data pipelines (`pipeline`),
DeiT's augmentation (`augment`, per image; `batch_augment`, per batch on the host or the
accelerator), the evaluation transform (`preprocessing`) and the image-header
checks that bound the work of decoding (`image_header`)."""

from crossvit_keras.data.batch_augment import augment_on_device
from crossvit_keras.data.datasets import (
    FOLDER_DATASETS,
    IMAGE_EXTENSIONS,
    TFDS_ALIASES,
    Dataset,
    Split,
    folder_dataset,
    open_dataset,
    scan_image_folder,
    tfds_dataset,
)
from crossvit_keras.data.pipeline import (
    AUG_DEVICES,
    UNREADABLE,
    device_augment,
    eval_dataset,
    padded_size,
    train_dataset,
)
from crossvit_keras.data.samples import make_photo_folder, make_sample_folder

__all__ = [
    "AUG_DEVICES",
    "FOLDER_DATASETS",
    "IMAGE_EXTENSIONS",
    "TFDS_ALIASES",
    "UNREADABLE",
    "Dataset",
    "Split",
    "augment_on_device",
    "device_augment",
    "eval_dataset",
    "folder_dataset",
    "make_photo_folder",
    "make_sample_folder",
    "open_dataset",
    "padded_size",
    "scan_image_folder",
    "tfds_dataset",
    "train_dataset",
]
