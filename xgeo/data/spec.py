"""What a dataset module states as data: its sources, modalities, pairs and splits (:class:`DatasetSpec`), and the
on-disk layouts its readers accept (:class:`Layout`), with the detection of which layout a folder holds.

This module imports no dataset: the dataset modules (``xgeo.data.datasets.<id>``) import it, and the registry
(``xgeo.data.datasets``) imports them.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import DataError
from ..sensors import SENSORS


@dataclass(frozen=True)
class Source:
    """One file to fetch. ``manual`` sources sit behind a login or a form: the user places them by hand."""

    url: str | None
    filename: str  # name under DIR once fetched
    md5: str | None = None
    extract: bool = True
    manual: bool = False
    instructions: str = ""
    layout: str | None = None  # the layout whose download this file belongs to (None: every layout's)


@dataclass(frozen=True)
class Modality:
    """One image of a sample: a sensor and the bands this dataset carries, in on-disk order."""

    sensor: str
    bands: tuple[str, ...]

    def __post_init__(self) -> None:
        SENSORS[self.sensor].band_indices(self.bands)  # fails loudly on a typo


def modality(sensor: str, bands=None) -> Modality:
    """A modality of ``sensor`` with ``bands`` (default: all of the sensor's bands)."""
    return Modality(sensor, tuple(bands) if bands is not None else SENSORS[sensor].band_names)


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    title: str
    citation: str
    role: str  # pretrain | downstream
    task: str | None  # None for pretraining sets; classification | segmentation | cloud_removal | pansharpening
    modalities: dict[str, Modality]  # modality key in the Zarr store -> sensor and bands
    pairs: tuple[tuple[str, str], ...]  # co-located modality pairs (cross-sensor reconstruction)
    sources: tuple[Source, ...]
    layout: str  # the original on-disk layout, as a reader expects it under RAW_DIR
    splits: str  # how splits are defined
    license: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for a, b in self.pairs:
            if a not in self.modalities or b not in self.modalities:
                raise ValueError(f"dataset {self.id!r}: pair ({a}, {b}) names a modality it does not have")

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.sensor for m in self.modalities.values()))

    @property
    def manual(self) -> bool:
        return any(s.manual for s in self.sources)


# A unit of work of a reader: a picklable description of what one ``read`` call turns into samples (one patch's
# files, one image, one scene). Conversion partitions the list of units (``--part K/N``) and may read units in
# worker processes, so ``read`` must be a module-level function.
Unit = tuple
Sample = dict


@dataclass(frozen=True)
class Layout:
    """One on-disk arrangement of a dataset's files.

    expects: glob patterns relative to RAW_DIR that all match something when a folder holds this layout (the first
    is named in the error when no layout is recognised); plan(raw, spec, params) -> list of units, in sample order;
    read(raw, unit, spec, params) -> samples of one unit.
    """

    name: str
    description: str
    expects: tuple[str, ...]
    plan: Callable[[Path, DatasetSpec, dict], list[Unit]]
    read: Callable[[Path, Unit, DatasetSpec, dict], Iterator[Sample]]
    split_lists: tuple[str, ...] = ()  # expected too, unless the split files are given by path

    def missing(self, raw: Path, split_files_given: bool = False) -> str | None:
        """The first expected pattern with no match under ``raw`` (None: the folder holds this layout).
        A pattern ``a|b`` is met by either alternative."""
        for pattern in self.expects + (() if split_files_given else self.split_lists):
            if not any(glob.glob(str(Path(glob.escape(str(raw))) / alt)) for alt in pattern.split("|")):
                return pattern
        return None


def detect_layout(spec: DatasetSpec, layouts: dict[str, Layout], raw: Path, name: str | None = None,
                  split_files_given: bool = False) -> Layout:
    """The layout of ``raw``: ``name`` when given (checked), else the one layout whose expected files are there.

    Raises DataError naming the layouts tried and the first file each expected when none is recognised, and the
    matching layouts when more than one is (two layouts mixed in one folder: choose one with --layout). With the
    split files given by path, layouts that differ only in where their split lists lie read alike: the first counts.
    """
    raw = Path(raw)
    given = split_files_given
    if name is not None:
        if name not in layouts:
            raise DataError(f"{spec.id}: expected a layout among {sorted(layouts)}, found --layout {name!r}")
        miss = layouts[name].missing(raw, given)
        if miss is not None:
            raise DataError(f"{raw}: expected the {spec.id} layout {name!r} ({layouts[name].description}), "
                            f"found no {miss}")
        return layouts[name]
    found = [lay for lay in layouts.values() if lay.missing(raw, given) is None]
    if given:
        found = [lay for i, lay in enumerate(found) if all(lay.expects != o.expects for o in found[:i])]
    if len(found) == 1:
        return found[0]
    if not found:
        tried = "; ".join(f"{lay.name}: {raw / lay.missing(raw, given)}" for lay in layouts.values())
        raise DataError(f"{raw}: expected a {spec.id} folder in one of its layouts, found none recognised "
                        f"(layouts tried, first file expected: {tried})")
    names = [lay.name for lay in found]
    raise DataError(f"{raw}: expected one {spec.id} layout, found files of {len(found)} mixed in one folder "
                    f"({', '.join(names)}); keep one, or choose it with --layout NAME "
                    f"(data.datasets.{spec.id}.layout)")


def split_file(raw: Path, params: dict, dataset_id: str, split: str, default: str) -> Path:
    """Where a split file lies: ``data.datasets.<id>.split_files.<split>`` (a path, as given) or RAW_DIR/default."""
    given = ((params.get("data", {}).get("datasets", {}).get(dataset_id) or {}).get("split_files") or {})
    return Path(given[split]) if split in given else Path(raw) / default


def split_files_given(params: dict, dataset_id: str) -> bool:
    return bool((params.get("data", {}).get("datasets", {}).get(dataset_id) or {}).get("split_files"))
