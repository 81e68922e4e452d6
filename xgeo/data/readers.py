"""Readers of the datasets' on-disk layouts (whatever wrote them: a download, TorchGeo, or ``xgeo.data.synth``).

Each dataset's readers live in its module (``xgeo/data/datasets/<id>.py``), one per layout; the shared reading
machinery (rasters, pictures, resizing, tiling) in ``xgeo.data.raster``. This module re-exports both:
``READERS[dataset_id](raw_dir, spec, params)`` yields the samples of the layout found in ``raw_dir`` (see
``xgeo.data.datasets`` for the sample format).
"""
from __future__ import annotations

from .datasets import READERS, label_attrs, plan
from .datasets.bigearthnet import bigearthnet_class_names
from .raster import (IGNORE_INDEX, IMAGE_SUFFIXES, Tile, dataset_params, read_picture, read_raster, resize,
                     resize_nearest, tile_offsets)

__all__ = ["IGNORE_INDEX", "IMAGE_SUFFIXES", "READERS", "Tile", "bigearthnet_class_names", "dataset_params",
           "label_attrs", "plan", "read_picture", "read_raster", "resize", "resize_nearest", "tile_offsets"]
