"""Synthetic copies of the datasets, written in each dataset's real on-disk layouts.

``synthesize(dataset, directory, params, seed, layout=None)`` draws latent scenes (``xgeo.data.scene``) and renders
them into the sensors of the dataset, then writes the files exactly where and how the real release has them (folder
and file names, GeoTIFF with CRS and transform, JPEG/PNG, BigEarthNet's labels_metadata.json, split lists), so that
the readers cannot tell a synthetic copy from a real one. ``layout`` names another layout of the dataset (e.g.
TorchGeo's): the same content is written, then re-arranged by the dataset module's ``ARRANGE[layout]``. Sizes come
from ``data.datasets.<id>.synth`` in params.yaml. Same seed, same bytes. The directory is written atomically: a
temporary directory beside it is renamed at the end.

Each dataset's writer is ``write(sink, spec, cfg, rng)`` in its module (``xgeo/data/datasets/<id>.py``); the shared
machinery is ``xgeo.data.sink``. ``WRITERS`` maps dataset ids to them.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import rasterio

from ..errors import XGeoError
from ..io import atomic_path
from .datasets import ARRANGE, CATALOG, LAYOUTS, WRITERS
from .datasets.bigearthnet import ben_labels
from .datasets.vaihingen import eroded
from .sink import Sink, from_origin

__all__ = ["WRITERS", "Sink", "ben_labels", "eroded", "from_origin", "synthesize"]


def synthesize(dataset: str, directory: Path, params: dict, seed: int, layout: str | None = None) -> None:
    """Write a synthetic ``dataset`` in its real on-disk layout into ``directory`` (replaced atomically)."""
    if dataset not in WRITERS:
        raise XGeoError(f"unknown dataset {dataset!r}: expected one of the catalog ids {sorted(CATALOG)} "
                        "(xgeo/data/datasets/)")
    first = next(iter(LAYOUTS[dataset]))
    if layout is not None and layout != first and layout not in ARRANGE[dataset]:
        raise XGeoError(f"{dataset}: expected a layout among {[first, *ARRANGE[dataset]]} to synthesise, "
                        f"found {layout!r}")
    try:
        cfg = params["data"]["datasets"][dataset]["synth"]
    except (KeyError, TypeError):
        raise XGeoError(f"params: expected a mapping data.datasets.{dataset}.synth (the synthetic sizes), "
                        "found none; see params.yaml") from None
    # one stream per (seed, dataset): synthesising one dataset does not shift another's bytes
    rng = np.random.default_rng([int(seed), zlib.crc32(dataset.encode())])
    # one GDAL environment for the whole run: without it every rasterio.open sets one up and tears it down
    with rasterio.Env(), atomic_path(Path(directory), directory=True) as tmp:
        sink = Sink(tmp, dataset)
        try:
            WRITERS[dataset](sink, CATALOG[dataset], cfg, rng)
        except KeyError as exc:
            raise XGeoError(f"params data.datasets.{dataset}.synth: missing key {exc}; found {sorted(cfg)}") from None
        finally:
            sink.close()
        if layout is not None and layout != first:
            ARRANGE[dataset][layout](Path(tmp))
