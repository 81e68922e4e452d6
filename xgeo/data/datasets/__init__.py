"""The registry of datasets: one module per dataset (``xgeo/data/datasets/<id>.py``), each holding its catalog entry
(``SPEC``), its readers, one per on-disk layout (``LAYOUTS``), its synthetic writer (``write``) and the re-arrangers
that turn the synthetic copy into its other layouts (``ARRANGE``; test fixtures and ``xgeo data synth --layout``).
Optional: ``label_attrs(spec)`` for datasets with labels.

Adding a dataset is adding one module and naming it in ``_MODULES``. This registry imports the members; nothing in
them imports it.

A reader yields samples::

    {"id": str, "split": "train" | "val" | "test",
     "modalities": {key: Tile(data (C, H, W) native dtype, crs: str, transform: (a, b, c, d, e, f))},
     "labels": {name: array}}   # e.g. "multilabel" (19,) uint8, "mask" (H, W) uint8

Modality keys and band orders are the spec's; tile sizes come from ``data.datasets.<id>.{tile_size, resize_to,
val_fraction}`` in params; ``data.datasets.<id>.layout`` forces a layout and ``data.datasets.<id>.split_files``
gives split files by path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from ...errors import DataError
from ..spec import DatasetSpec, Layout, detect_layout, split_files_given
from . import bigearthnet, geopile, mdas, millionaid, sen12ms, sen12ms_cr, spacenet2, vaihingen
from . import dsifn, fmow, geolifeclef, imagenet, oscd, whu  # the appendix's tasks and pretraining sets (Tables 8, 9)

_MODULES = (geopile, millionaid, sen12ms, mdas, bigearthnet, vaihingen, sen12ms_cr, spacenet2)
_MODULES += (oscd, dsifn, whu, imagenet, geolifeclef, fmow)


class UnknownDatasetError(DataError, KeyError):
    """A dataset id the registry does not have (a KeyError too, for callers that catch that)."""

    __str__ = Exception.__str__


CATALOG: dict[str, DatasetSpec] = {}
LAYOUTS: dict[str, dict[str, Layout]] = {}
WRITERS: dict[str, Callable] = {}
ARRANGE: dict[str, dict[str, Callable[[Path], None]]] = {}
_LABEL_ATTRS: dict[str, Callable[[DatasetSpec], dict]] = {}

for _m in _MODULES:
    _id = _m.SPEC.id
    if _id in CATALOG:
        raise ValueError(f"dataset {_id!r} registered twice")
    CATALOG[_id] = _m.SPEC
    LAYOUTS[_id] = dict(_m.LAYOUTS)
    WRITERS[_id] = _m.write
    ARRANGE[_id] = dict(getattr(_m, "ARRANGE", {}))
    if hasattr(_m, "label_attrs"):
        _LABEL_ATTRS[_id] = _m.label_attrs


def get_dataset(name: str) -> DatasetSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}: expected one of {sorted(CATALOG)} "
                                  "(xgeo/data/datasets/)") from None


def layout_names(dataset: str) -> list[str]:
    get_dataset(dataset)
    return list(LAYOUTS[dataset]) + [n for n in ARRANGE[dataset] if n not in LAYOUTS[dataset]]


def layout_of(dataset: str, raw: Path, params: dict) -> Layout:
    """The layout of ``raw`` (``data.datasets.<id>.layout`` when set, else detected)."""
    spec = get_dataset(dataset)
    forced = ((params.get("data", {}).get("datasets", {}).get(dataset) or {}).get("layout"))
    return detect_layout(spec, LAYOUTS[dataset], Path(raw), forced, split_files_given(params, dataset))


def plan(dataset: str, raw: Path, params: dict) -> tuple[Layout, list[tuple]]:
    """(layout, units in sample order) of the raw folder ``raw``."""
    layout = layout_of(dataset, raw, params)
    return layout, layout.plan(Path(raw), get_dataset(dataset), params)


def label_attrs(spec: DatasetSpec) -> dict[str, dict]:
    """Attributes of each label array a dataset's reader yields: {name: {class_names, ignore_index}}."""
    fn = _LABEL_ATTRS.get(spec.id)
    return fn(spec) if fn is not None else {}


def _reader(dataset: str):
    def read(raw: Path, spec: DatasetSpec, params: dict) -> Iterator[dict]:
        """Every sample of ``raw`` in its layout (detected, or ``data.datasets.<id>.layout``)."""
        raw = Path(raw)
        layout, units = plan(dataset, raw, params)
        for unit in units:
            yield from layout.read(raw, unit, spec, params)

    read.__name__ = f"read_{dataset.replace('-', '_')}"
    return read


READERS: dict[str, Callable[[Path, DatasetSpec, dict], Iterator[dict]]] = {d: _reader(d) for d in CATALOG}
