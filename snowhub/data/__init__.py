"""Datasets for snowhub: layout discovery, image loading, uint8 image transforms and batch loaders."""

from snowhub.data.images import ImageListDataset, load_rgb, load_rgb_bytes
from snowhub.data.layouts import DatasetSplit, discover, fingerprint
from snowhub.data.loaders import iterate, make_loader
from snowhub.data.transforms import eval_resize_crop, eval_transform, train_transform

__all__ = [
    "DatasetSplit",
    "ImageListDataset",
    "discover",
    "eval_resize_crop",
    "eval_transform",
    "fingerprint",
    "iterate",
    "load_rgb",
    "load_rgb_bytes",
    "make_loader",
    "train_transform",
]
