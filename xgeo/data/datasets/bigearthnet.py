"""BigEarthNet: Sentinel-1 + Sentinel-2 patches (1.2 x 1.2 km: 120 x 120 px at 10 m) over ten European countries,
June 2017 - May 2018, with multi-labels of CORINE Land Cover 2018 (19-class nomenclature).

Bands: Sentinel-2 L2A, 12 bands without B10 (uint16; 10/20/60 m bands resampled bilinear to the 10 m grid);
Sentinel-1 VV, VH (dB, float32). Patches are resized to ``tile_size``; labels are stored as ``multilabel`` (19,).

Layouts (detected; ``--layout`` when ambiguous; split files may also be given by path):

* ``original``: BigEarthNet-MM v1 as released: ``BigEarthNet-v1.0/<S2>/<S2>_<band>.tif`` +
  ``<S2>_labels_metadata.json`` (43-class names, mapped to 19), ``BigEarthNet-S1-v1.0/<S1>/<S1>_{VV,VH}.tif``, and the
  official split csv files (``S2name,S1name`` lines) in ``splits/{train,val,test}.csv``;
* ``torchgeo``: the same folders with the split files named ``bigearthnet-{train,val,test}.csv`` at the root
  (TorchGeo's ``BigEarthNet`` root);
* ``v2``: BigEarthNet v2.0 (reBEN, the version distributed today):
  ``BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_<band>.tif``, ``BigEarthNet-S1/<scene>/<s1_name>/<s1_name>_{VV,VH}.tif``
  and ``metadata.parquet`` (columns ``patch_id``, ``s1_name``, ``split`` in train / validation (or val) / test,
  ``labels``: 19-class names). ``xgeo data download bigearthnet DIR --layout v2`` fetches it.

Citation: Sumbul et al., BigEarthNet, IGARSS 2019; Sumbul et al., BigEarthNet-MM, IEEE GRSM 9(3), 2021;
Clasen et al., reBEN: Refined BigEarthNet Dataset for Remote Sensing Image Analysis, IGARSS 2025.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
from rasterio.transform import Affine

from ...errors import DataError, XGeoError
from ...sensors import SENSORS, get_sensor
from .. import scene as sc
from ..raster import Tile, affine_tuple, check_pair, dataset_params, read_raster, resize
from ..sink import Sink, bands_nm, draw_date, from_origin, month_greenness, patch_grid, utm
from ..spec import DatasetSpec, Layout, Source, modality, split_file

S2_BEN = tuple(b for b in SENSORS["s2"].band_names if b != "B10")
_V2 = "https://zenodo.org/records/10891137/files/"

SPEC = DatasetSpec(
    id="bigearthnet", title="BigEarthNet-MM v1 (Sentinel-1 + Sentinel-2, 19-class multi-label)",
    citation="Sumbul et al., BigEarthNet, IGARSS 2019; Sumbul et al., BigEarthNet-MM, IEEE GRSM 2021",
    role="downstream", task="classification",
    modalities={"s1": modality("s1"), "s2": modality("s2", S2_BEN)}, pairs=(("s1", "s2"),),
    sources=(
        Source("https://zenodo.org/records/12687186/files/BigEarthNet-S1-v1.0.tar.gz", "BigEarthNet-S1-v1.0.tar.gz",
               "94ced73440dea8c7b9645ee738c5a172", layout="original"),
        Source("https://zenodo.org/records/12687186/files/BigEarthNet-S2-v1.0.tar.gz", "BigEarthNet-S2-v1.0.tar.gz",
               "5a64e9ce38deb036a435a7b59494924c", layout="original"),
    ) + tuple(
        Source(f"https://git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models/-/raw/9a5be07346ab0884b2d9517475c27ef9db9b5104/splits/{s}.csv?inline=false",
               f"splits/{s}.csv", md5, extract=False, layout="original")
        for s, md5 in (("train", "623e501b38ab7b12fe44f0083c00986d"), ("val", "22efe8ed9cbd71fa10742ff7df2b7978"), ("test", "697fb90677e30571b9ac7699b7e5b432"))
    ) + (
        # BigEarthNet v2.0 (reBEN), Zenodo record 10891137. The archives' md5s are those TorchGeo's BigEarthNetV2
        # records for the same Zenodo files (torchgeo/datasets/bigearthnet.py). For metadata.parquet no checksum we
        # could verify was found: the md5 of the first download is recorded in DIR/.xgeo-download.json and checked
        # from then on
        Source(_V2 + "BigEarthNet-S1.tar.zst", "BigEarthNet-S1.tar.zst", "a55eaa2cdf6a917e296bd6601ec1e348", layout="v2"),
        Source(_V2 + "BigEarthNet-S2.tar.zst", "BigEarthNet-S2.tar.zst", "2245ed2d1a93f6ce637d839bc856396e", layout="v2"),
        Source(_V2 + "metadata.parquet", "metadata.parquet", None, extract=False, layout="v2"),
    ),
    layout="BigEarthNet-v1.0/<S2>/<S2>_{B01..B12 without B10}.tif (uint16, 120/60/20 px for 10/20/60 m) + "
           "<S2>_labels_metadata.json; BigEarthNet-S1-v1.0/<S1>/<S1>_{VV,VH}.tif + <S1>_labels_metadata.json "
           "(corresponding_s2_patch); splits/{train,val,test}.csv with 'S2name,S1name' lines",
    splits="official train/val/test csv (cloud and snow patches removed); fractions of train are seeded subsets",
    license="CDLA-Permissive-1.0",
    extra={
        # names as written in <patch>_labels_metadata.json (CORINE level 3 as used by BigEarthNet v1), index order
        "labels43": (
            "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
            "Road and rail networks and associated land", "Port areas", "Airports", "Mineral extraction sites",
            "Dump sites", "Construction sites", "Green urban areas", "Sport and leisure facilities",
            "Non-irrigated arable land", "Permanently irrigated land", "Rice fields", "Vineyards",
            "Fruit trees and berry plantations", "Olive groves", "Pastures", "Annual crops associated with permanent crops",
            "Complex cultivation patterns",
            "Land principally occupied by agriculture, with significant areas of natural vegetation",
            "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest", "Natural grassland",
            "Moors and heathland", "Sclerophyllous vegetation", "Transitional woodland/shrub", "Beaches, dunes, sands",
            "Bare rock", "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes",
            "Salines", "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons", "Estuaries",
            "Sea and ocean",
        ),
        # the 19-class nomenclature of BigEarthNet-MM (Sumbul et al., 2021), index order
        "labels19": (
            "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
            "Complex cultivation patterns",
            "Land principally occupied by agriculture, with significant areas of natural vegetation",
            "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
            "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
            "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands",
            "Inland waters", "Marine waters",
        ),
        # 43-class nomenclature index -> 19-class index (None: dropped); authoritative: rsim label_indices.json
        "labels43_to_19": {0: 0, 1: 0, 2: 1, 11: 2, 12: 2, 13: 2, 14: 3, 15: 3, 16: 3, 18: 3, 17: 4, 19: 5, 20: 6, 21: 7,
                           22: 8, 23: 9, 24: 10, 25: 11, 31: 11, 26: 12, 27: 12, 28: 13, 29: 14, 33: 15, 34: 15, 35: 16,
                           36: 16, 38: 17, 39: 17, 40: 18, 41: 18, 42: 18},
    },
)


# ----------------------------------------------------------------------------------------------------- readers
def bigearthnet_class_names(spec: DatasetSpec) -> list[str]:
    """The 19 class names: ``labels19`` when given, else each 19-class index named by its 43-class sources."""
    if "labels19" in spec.extra:
        return list(spec.extra["labels19"])
    l43 = _labels43(spec)
    groups: dict[int, list[str]] = {}
    for i43, i19 in sorted(spec.extra["labels43_to_19"].items()):
        groups.setdefault(i19, []).append(l43[i43])
    return [" / ".join(groups[i]) for i in sorted(groups)]


def _labels43(spec: DatasetSpec) -> list[str]:
    if "labels43" not in spec.extra:
        raise DataError("xgeo/data/datasets/bigearthnet.py: expected extra['labels43'] (the 43 BigEarthNet class "
                        "names), found none")
    return list(spec.extra["labels43"])


def label_attrs(spec: DatasetSpec) -> dict[str, dict]:
    return {"multilabel": {"class_names": bigearthnet_class_names(spec), "ignore_index": None}}


_SPLITS = ("train", "val", "test")
_V1_DIRS = ("BigEarthNet-v1.0", "BigEarthNet-S1-v1.0")
_V2_DIRS = ("BigEarthNet-S2", "BigEarthNet-S1")
_CSV = {"original": "splits/{split}.csv", "torchgeo": "bigearthnet-{split}.csv"}


def _v1_planner(layout: str):
    def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
        """(split, s2 folder, s1 folder, s2 name, s1 name, None) of every csv line, each folder checked to exist."""
        units = []
        for split in _SPLITS:
            csv = split_file(raw, params, spec.id, split, _CSV[layout].format(split=split))
            if not csv.is_file():
                raise DataError(f"{csv}: expected a split file with 'S2name,S1name' lines, found no such file")
            for ln, line in enumerate(csv.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = [p.strip() for p in line.split(",")]
                if len(parts) != 2:
                    raise DataError(f"{csv}: line {ln}: expected 'S2name,S1name', found {line!r}")
                s2n, s1n = parts
                s2_dir, s1_dir = f"{_V1_DIRS[0]}/{s2n}", f"{_V1_DIRS[1]}/{s1n}"
                for d in (s2_dir, s1_dir):
                    if not (raw / d).is_dir():
                        raise DataError(f"{csv}: line {ln} names {d.split('/')[1]!r}, expected the patch folder "
                                        f"{raw / d} (layout {layout}), found no such folder")
                units.append((split, s2_dir, s1_dir, s2n, s1n, None))
        return units

    return plan


def _v2_dirs(s2n: str, s1n: str) -> tuple[str, str]:
    """reBEN folders: the S2 tile folder drops the patch's last two name parts, the S1 scene folder its last three."""
    return (f"{_V2_DIRS[0]}/{'_'.join(s2n.split('_')[:-2])}/{s2n}",
            f"{_V2_DIRS[1]}/{'_'.join(s1n.split('_')[:-3])}/{s1n}")


def plan_v2(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    """Rows of metadata.parquet (split train, validation or val, test; 19-class label names), split by split."""
    import pyarrow.parquet as pq

    path = split_file(raw, params, spec.id, "metadata", "metadata.parquet")
    if not path.is_file():
        raise DataError(f"{path}: expected reBEN's metadata.parquet, found no such file")
    need = ["patch_id", "s1_name", "split", "labels"]
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: expected a readable parquet file, found {exc!r}") from None
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: expected columns {need}, found {table.column_names}")
    rows = table.select(need).to_pylist()
    names19 = set(bigearthnet_class_names(spec))
    units: dict[str, list] = {s: [] for s in _SPLITS}
    for i, row in enumerate(rows):
        split = {"validation": "val"}.get(row["split"], row["split"])
        if split not in units:
            raise DataError(f"{path}: row {i}: expected split train, validation (val) or test, found {row['split']!r}")
        bad = [n for n in row["labels"] if n not in names19]
        if bad:
            raise DataError(f"{path}: row {i} ({row['patch_id']}): expected labels of the 19-class nomenclature, "
                            f"found {bad}")
        s2_dir, s1_dir = _v2_dirs(row["patch_id"], row["s1_name"])
        for d in (s2_dir, s1_dir):
            if not (raw / d).is_dir():
                raise DataError(f"{path}: row {i} names {d.rsplit('/', 1)[1]!r}, expected the patch folder {raw / d} "
                                f"(layout v2), found no such folder")
        units[split].append((split, s2_dir, s1_dir, row["patch_id"], row["s1_name"], tuple(row["labels"])))
    return [u for s in _SPLITS for u in units[s]]


def _v1_labels(raw: Path, s2_dir: str, s2n: str, spec: DatasetSpec) -> list[str]:
    """19-class names of a v1 patch: its 43-class labels (labels_metadata.json) mapped to 19."""
    meta_path = raw / s2_dir / f"{s2n}_labels_metadata.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: expected the patch's labels metadata (JSON), found no such file")
    try:
        names = json.loads(meta_path.read_text())["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_path}: expected JSON with a 'labels' list, found {exc!r}") from None
    index43 = {name: i for i, name in enumerate(_labels43(spec))}
    names19 = bigearthnet_class_names(spec)
    out = []
    for name in names:
        if name not in index43:
            raise DataError(f"{meta_path}: expected labels of the 43-class nomenclature, found {name!r}")
        i19 = spec.extra["labels43_to_19"].get(index43[name])
        if i19 is not None:
            out.append(names19[i19])
    return out


def read_patch(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    """One patch: 12 S2 bands (20/60 m resampled bilinear to the 10 m grid), S1 VV and VH, resized to tile_size."""
    split, s2_dir, s1_dir, s2n, s1n, labels = unit
    tile = int(dataset_params(params, spec.id)["tile_size"])
    s2_bands, s1_bands = spec.modalities["s2"].bands, spec.modalities["s1"].bands
    s2_sensor = SENSORS[spec.modalities["s2"].sensor]
    fine = [b for b in s2_bands if s2_sensor.band(b).gsd_m == min(s2_sensor.band(x).gsd_m for x in s2_bands)][0]
    s2_root, s1_root = raw / s2_dir, raw / s1_dir
    ref = read_raster(s2_root / f"{s2n}_{fine}.tif", 1, f"Sentinel-2 {fine}")
    hw = ref[0].shape[-2:]
    bands = []
    for b in s2_bands:
        p = s2_root / f"{s2n}_{b}.tif"
        data, crs, _ = ref if b == fine else read_raster(p, 1, f"Sentinel-2 {b}", out_shape=hw)
        if crs != ref[1]:
            raise DataError(f"{p}: expected the CRS of band {fine} ({ref[1]}), found {crs}")
        bands.append(data[0])
    s2 = (np.stack(bands), ref[1], ref[2])
    s1_files = [s1_root / f"{s1n}_{b}.tif" for b in s1_bands]
    s1_parts = [read_raster(p, 1, f"Sentinel-1 {b}") for p, b in zip(s1_files, s1_bands)]
    s1 = (np.concatenate([d for d, _, _ in s1_parts]), s1_parts[0][1], s1_parts[0][2])
    for p, part in zip(s1_files[1:], s1_parts[1:]):
        check_pair(s1_files[0], s1_parts[0], p, part)
    check_pair(s2_root / f"{s2n}_{fine}.tif", s2, s1_files[0], s1)
    names19 = bigearthnet_class_names(spec)
    multilabel = np.zeros(len(names19), dtype=np.uint8)
    for name in (labels if labels is not None else _v1_labels(raw, s2_dir, s2n, spec)):
        multilabel[names19.index(name)] = 1
    tiles = {}
    for key, (data, crs, t) in (("s1", s1), ("s2", s2)):
        h, w = data.shape[-2:]
        tiles[key] = Tile(resize(data, tile), crs, affine_tuple(t @ Affine.scale(w / tile, h / tile)))
    yield {"id": s2n, "split": split, "modalities": tiles, "labels": {"multilabel": multilabel}}


LAYOUTS = {
    **{name: Layout(name, f"{_V1_DIRS[0]}/, {_V1_DIRS[1]}/ and {pattern.format(split='{train,val,test}')}",
                    expects=_V1_DIRS, split_lists=tuple(pattern.format(split=s) for s in _SPLITS),
                    plan=_v1_planner(name), read=read_patch)
       for name, pattern in _CSV.items()},
    "v2": Layout("v2", f"reBEN: {_V2_DIRS[0]}/, {_V2_DIRS[1]}/ and metadata.parquet", expects=_V2_DIRS,
                 split_lists=("metadata.parquet",), plan=plan_v2, read=read_patch),
}


# ------------------------------------------------------------------------------------------------- synthetic copy
_BEN_ZONES = (29, 32, 33, 34, 35)  # Portugal/Ireland, Switzerland/Luxembourg, Austria, Serbia/Kosovo, Lithuania/Finland
_LABEL_MIN = 0.1  # a class names a patch when it covers this share of it (CLC's 25 ha unit is 17 % of a patch)


def ben_labels(fractions: np.ndarray, names43: tuple[str, ...]) -> list[str]:
    """CORINE level-3 names (BigEarthNet's 43-class nomenclature, index order) of a patch's class fractions."""
    f = fractions
    urban = f[sc.IMPERVIOUS] + f[sc.BUILDING] + f[sc.CAR]
    forest = f[sc.BROADLEAF] + f[sc.CONIFEROUS]
    names = set()
    if urban >= _LABEL_MIN:
        names.add("Continuous urban fabric" if urban >= 0.8 else "Discontinuous urban fabric")
    if forest >= _LABEL_MIN:
        share = f[sc.CONIFEROUS] / forest
        names.add("Mixed forest" if 0.25 <= share <= 0.75 else
                  "Coniferous forest" if share > 0.75 else "Broad-leaved forest")
    for k, name in ((sc.WATER, "Water bodies"), (sc.LOW_VEG, "Pastures"), (sc.CROPLAND, "Non-irrigated arable land"),
                    (sc.BARE, "Sparsely vegetated areas")):
        if f[k] >= _LABEL_MIN:
            names.add(name)
    if f[sc.CROPLAND] >= _LABEL_MIN and f[sc.LOW_VEG] >= _LABEL_MIN and forest >= _LABEL_MIN:
        names.add("Land principally occupied by agriculture, with significant areas of natural vegetation")
    if not names:  # the dominant class
        k = int(np.argmax(f))
        names.add(ben_labels(np.eye(len(f))[k], names43)[0])
    return sorted(names, key=names43.index)


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """BigEarthNet-v1.0/<S2>/<S2>_<band>.tif + json, BigEarthNet-S1-v1.0/<S1>/<S1>_{VV,VH}.tif + json, splits/*.csv.

    Patches are cut from tiles (one S2 acquisition and one S1 acquisition each); every band at its native
    resolution (10 / 20 / 60 m: sizes in the ratio 6 : 3 : 1, 120 / 60 / 20 px at full size).
    """
    counts = {s: int(cfg["patches"][s]) for s in ("train", "val", "test")}
    size = int(cfg.get("size_10m", 120))
    if size % 6:
        raise XGeoError(f"params data.datasets.bigearthnet.synth.size_10m: expected a multiple of 6 "
                        f"(10 m : 20 m : 60 m bands = 6 : 3 : 1), found {size}")
    per_tile = int(cfg.get("patches_per_tile", 36))
    n = sum(counts.values())
    s2_bands = spec.modalities["s2"].bands
    s2 = get_sensor("s2")
    factors = [int(round(s2.band(b).gsd_m / 10.0)) for b in s2_bands]
    wl = bands_nm("s2", s2_bands)
    names43 = spec.extra["labels43"]
    sink.expect(n * (len(s2_bands) + 1 + 2 + 1) + 3)

    split_of = np.repeat(["train", "val", "test"], [counts["train"], counts["val"], counts["test"]])[rng.permutation(n)]
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    done = 0
    while done < n:
        k = min(per_tile, n - done)
        rows, cols, shape = patch_grid(k, size, size)
        scene = sc.make_scene(rng, shape, 10.0, sc.random_cover(rng))
        zone = int(rng.choice(_BEN_ZONES))
        mgrs = f"{zone}{'TU'[int(rng.integers(0, 2))]}{''.join(rng.choice(list('ABCDEFGHJKLMNPQRSTUVWXYZ'), 2))}"
        # Sentinel-2 passes over Europe at about 10:30 local solar time; Sentinel-1 at about 05:30 or 17:30 UTC
        day = draw_date(rng, "2017-06-01", "2018-05-31").replace(hour=10, minute=0, second=0)
        when = day + dt.timedelta(seconds=int(rng.integers(0, 3600)))
        s1_when = (day + dt.timedelta(days=int(rng.integers(-3, 4)))).replace(hour=int(rng.choice([5, 17])))
        s1_when += dt.timedelta(seconds=int(rng.integers(0, 3600)))
        sat, s1_sat = f"S2{'AB'[int(rng.integers(0, 2))]}", f"S1{'AB'[int(rng.integers(0, 2))]}"
        green = month_greenness(when.month)
        refl = sc.reflectance(scene, wl, green)  # L2A: bottom of atmosphere
        # each band on its native grid: the 10 m rendering area-averaged by 2 (20 m) or 6 (60 m)
        native = [sc.to_s2(sc.block_mean(refl[b], f)[None], rng)[0] for b, f in enumerate(factors)]
        sar = sc.sar_backscatter(scene, rng, greenness=green)
        crs = utm(zone)
        x0, y0 = float(rng.integers(3, 7)) * 1e5, float(rng.integers(40, 75)) * 1e5
        r_base, c_base = (int(v) for v in rng.integers(0, 60, size=2))
        product = (f"{sat}_MSIL1C_{when:%Y%m%dT%H%M%S}_N0205_R{int(rng.integers(1, 143)):03d}_T{mgrs}_"
                   f"{when + dt.timedelta(minutes=5):%Y%m%dT%H%M%S}")
        for j in range(k):
            r, c = divmod(j, cols)
            rs, cs = slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size)
            ulx, uly = x0 + c * size * 10.0, y0 - r * size * 10.0
            s2_name = f"{sat}_MSIL2A_{when:%Y%m%dT%H%M%S}_{r_base + r}_{c_base + c}"
            s1_name = f"{s1_sat}_IW_GRDH_1SDV_{s1_when:%Y%m%dT%H%M%S}_{mgrs}_{r_base + r}_{c_base + c}"
            for band, f, dn in zip(s2_bands, factors, native):
                m = size // f
                window = dn[None, r * m:(r + 1) * m, c * m:(c + 1) * m]
                sink.tif(f"BigEarthNet-v1.0/{s2_name}/{s2_name}_{band}.tif", window, crs,
                         from_origin(ulx, uly, 10.0 * f, 10.0 * f))
            for b, pol in enumerate(spec.modalities["s1"].bands):
                sink.tif(f"BigEarthNet-S1-v1.0/{s1_name}/{s1_name}_{pol}.tif", sar[b, rs, cs][None], crs,
                         from_origin(ulx, uly, 10.0, 10.0))
            labels = ben_labels(sc.crop(scene, rs, cs).fractions(), names43)
            coords = {"ulx": int(ulx), "uly": int(uly), "lrx": int(ulx + size * 10), "lry": int(uly - size * 10)}
            sink.json(f"BigEarthNet-v1.0/{s2_name}/{s2_name}_labels_metadata.json", {
                "labels": labels, "coordinates": coords, "projection": crs.to_wkt(),
                "tile_source": product, "acquisition_date": f"{when:%Y-%m-%d %H:%M:%S}"})
            sink.json(f"BigEarthNet-S1-v1.0/{s1_name}/{s1_name}_labels_metadata.json", {
                "labels": labels, "coordinates": coords, "projection": crs.to_wkt(),
                "corresponding_s2_patch": s2_name,
                "scene_source": f"{s1_sat}_IW_GRDH_1SDV_{s1_when:%Y%m%dT%H%M%S}",
                "acquisition_time": f"{s1_when:%Y-%m-%dT%H:%M:%S}"})
            lines[split_of[done + j]].append(f"{s2_name},{s1_name}\n")
        done += k
    for split, rows_ in lines.items():
        sink.text(f"splits/{split}.csv", "".join(rows_))


def to_torchgeo(root: Path) -> None:
    """Re-arrange the original layout (in place) into TorchGeo's: split files bigearthnet-<split>.csv at the root."""
    for split in _SPLITS:
        shutil.move(root / "splits" / f"{split}.csv", root / f"bigearthnet-{split}.csv")
    (root / "splits").rmdir()


def to_v2(root: Path) -> None:
    """Re-arrange the original layout (in place) into reBEN's: BigEarthNet-S2/<tile>/<patch>/, BigEarthNet-S1/<scene>/
    <patch>/ and metadata.parquet (labels mapped to the 19 classes; split val written as 'validation' like reBEN's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = SPEC
    rows = []
    for split in _SPLITS:
        for line in (root / "splits" / f"{split}.csv").read_text().splitlines():
            s2n, s1n = line.strip().split(",")
            labels = _v1_labels(root, f"{_V1_DIRS[0]}/{s2n}", s2n, spec)
            s2_dir, s1_dir = _v2_dirs(s2n, s1n)
            for src, dst in ((root / _V1_DIRS[0] / s2n, root / s2_dir), (root / _V1_DIRS[1] / s1n, root / s1_dir)):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(src, dst)
                for meta in dst.glob("*_labels_metadata.json"):
                    meta.unlink()  # reBEN keeps labels in metadata.parquet only
            rows.append({"patch_id": s2n, "labels": labels, "split": "validation" if split == "val" else split,
                         "country": "", "s1_name": s1n, "s2v1_name": s2n, "contains_seasonal_snow": False,
                         "contains_cloud_or_shadow": False})
    pq.write_table(pa.Table.from_pylist(rows), root / "metadata.parquet")
    shutil.rmtree(root / "splits")
    for d in _V1_DIRS:
        (root / d).rmdir()


ARRANGE = {"torchgeo": to_torchgeo, "v2": to_v2}
