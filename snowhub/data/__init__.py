"""Datasets for snowhub: layout discovery, image loading, and uint8 image transforms."""

from snowhub.data.images import ImageListDataset, load_rgb
from snowhub.data.layouts import DatasetSplit, discover, fingerprint
from snowhub.data.transforms import eval_transform, train_transform

__all__ = [
    "DatasetSplit",
    "ImageListDataset",
    "discover",
    "eval_transform",
    "fingerprint",
    "load_rgb",
    "train_transform",
]
