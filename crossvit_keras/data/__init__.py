"""Data: image folders and tensorflow-datasets (`datasets`), the tf.data pipelines (`pipeline`),
DeiT's augmentation (`augment`), the evaluation transform (`preprocessing`) and the image-header
checks that bound the work of decoding (`image_header`)."""

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
from crossvit_keras.data.pipeline import UNREADABLE, eval_dataset, padded_size, train_dataset
from crossvit_keras.data.samples import make_sample_folder

__all__ = [
    "FOLDER_DATASETS",
    "IMAGE_EXTENSIONS",
    "TFDS_ALIASES",
    "UNREADABLE",
    "Dataset",
    "Split",
    "eval_dataset",
    "folder_dataset",
    "make_sample_folder",
    "open_dataset",
    "padded_size",
    "scan_image_folder",
    "tfds_dataset",
    "train_dataset",
]
