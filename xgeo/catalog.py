"""The dataset catalog: one entry per dataset, keyed by id.

Each entry states as data what TorchGeo states at the top of a dataset module: where the files come from
(URL, archive name, md5), how they lie on disk, which modalities (sensor + bands) a sample has, which modalities
are co-located pairs, and how the splits are defined. Each dataset's entry lives at the top of its own module,
``xgeo/data/datasets/<id>.py``, with its readers and its synthetic writer; this module re-exports the registry.
"""
from __future__ import annotations

from .data.datasets import CATALOG, UnknownDatasetError, get_dataset
from .data.spec import DatasetSpec, Layout, Modality, Source, modality

__all__ = ["CATALOG", "DatasetSpec", "Layout", "Modality", "Source", "UnknownDatasetError", "get_dataset", "modality"]
