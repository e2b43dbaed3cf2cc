"""Training data: multi-view renders and 2D image-text pairs (see :mod:`mvdream3d.data.datasets`)."""

from .datasets import (
    IMAGE_EXTENSIONS,
    DataWarning,
    ImageTextDataset,
    MultiViewDataset,
    collate_multiview,
    expand_shards,
    infinite_loader,
    load_image,
    select_views,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataWarning",
    "ImageTextDataset",
    "MultiViewDataset",
    "collate_multiview",
    "expand_shards",
    "infinite_loader",
    "load_image",
    "select_views",
]
