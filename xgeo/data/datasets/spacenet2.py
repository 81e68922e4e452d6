"""SpaceNet 2 (building detection, train tarballs): WorldView-3 images of Las Vegas, Paris, Shanghai and Khartoum,
used here for pan-sharpening (PAN + MUL -> MUL-PanSharpen).

Bands: PAN (uint16, 1 band, 0.3 m); MUL (uint16, 8 bands, 1.24 m, 1/4 of PAN's grid); MUL-PanSharpen (8 bands at PAN
resolution). PAN and MUL-PanSharpen tiles of ``tile_size``, MUL tiles of ``ceil(tile_size / 4)`` at the matching
place: the images are 650 px PAN and 163 px MUL (650 / 4 = 162.5: the MUL grid starts at PAN's corner and its last
pixel reaches 2 PAN px past the PAN image), so ``tile_size: 650`` stores whole images with their whole MUL. Tile
offsets are multiples of 4 (PAN pixel 4m is MUL pixel m); a MUL image too small for its last tile (fewer than
ceil(PAN / 4) px) is extended by its edge pixels.

Layout ``original`` (the requester-pays tarballs): ``AOI_<n>_<City>_Train/{PAN,MUL,MUL-PanSharpen}/
<PRODUCT>_AOI_<n>_<City>_img<N>.tif``; no official split: a seeded split by image id (``val_fraction`` in val).

Citation: Van Etten et al., SpaceNet: A Remote Sensing Dataset and Challenge Series, arXiv:1807.01232, 2018.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np
from rasterio.crs import CRS

from ...errors import DataError, XGeoError
from ...sensors import get_sensor
from .. import scene as sc
from ..raster import Tile, affine_tuple, check_pair, dataset_params, need_dir, need_tiles, nbands, read_raster, \
    tile_offsets, window_transform
from ..sink import Sink, bands_nm, from_origin
from ..spec import DatasetSpec, Layout, Source, modality

SPEC = DatasetSpec(
    id="spacenet2", title="SpaceNet 2 building detection imagery (WorldView-3 PAN + MUL), used for pan-sharpening",
    citation="Van Etten et al., SpaceNet: A Remote Sensing Dataset and Challenge Series, 2018",
    role="downstream", task="pansharpening",
    modalities={"pan": modality("wv3_pan"), "mul": modality("wv3_mul"), "mul_pansharpen": modality("wv3_mul")},
    pairs=(("pan", "mul"),),
    sources=tuple(
        Source(f"https://spacenet-dataset.s3.amazonaws.com/spacenet/SN2_buildings/tarballs/SN2_buildings_train_{aoi}.tar.gz",
               f"SN2_buildings_train_{aoi}.tar.gz", md5, manual=True, instructions=(
                   "SpaceNet 2 lies in the requester-pays bucket s3://spacenet-dataset (an AWS account is needed): "
                   f"aws s3 cp s3://spacenet-dataset/spacenet/SN2_buildings/tarballs/SN2_buildings_train_{aoi}.tar.gz DIR/"))
        for aoi, md5 in (("AOI_2_Vegas", "307da318bc43aaf9481828f92eda9126"), ("AOI_3_Paris", "4db469e3e4e7bf025368ad730aec0888"),
                         ("AOI_4_Shanghai", "986129eecd3e842ebc2063d43b407adb"), ("AOI_5_Khartoum", "462b4bf0466c945d708befabd4d9115b"))
    ),
    layout="AOI_{n}_{City}_Train/{PAN,MUL,MUL-PanSharpen,RGB-PanSharpen,geojson/buildings,summaryData}/"
           "<PRODUCT>_AOI_{n}_{City}_img{N}.tif; PAN 650 px 1 band, MUL 163 px 8 bands, MUL-PanSharpen 650 px 8 bands",
    splits="no official split for the train tarballs: a seeded 80/20 split by image id, stored in the Zarr store",
    extra={"protocols": ("supervised", "wald"), "ratio": 4},
)


# ----------------------------------------------------------------------------------------------------- readers
def _key(p: Path):
    return p.stem.rsplit("img", 1)[0], int(re.findall(r"\d+$", p.stem)[0])


def plan(raw: Path, spec: DatasetSpec, params: dict) -> list[tuple]:
    """(AOI folder, image id, split) of every PAN image; the split is seeded by image id."""
    dp = dataset_params(params, spec.id)
    tile, ratio = int(dp["tile_size"]), int(spec.extra["ratio"])
    if tile < ratio:
        raise DataError(f"params data.datasets.spacenet2.tile_size: expected at least the PAN/MUL ratio {ratio}, "
                        f"found {tile}")
    aois = sorted(p for p in raw.glob("AOI_*_Train") if p.is_dir())
    if not aois:
        raise DataError(f"{raw}: expected AOI_<n>_<City>_Train folders, found none")
    pans = []
    for aoi in aois:
        for kind in ("PAN", "MUL", "MUL-PanSharpen"):
            need_dir(aoi / kind, f"the {kind} folder (missing modality)")
        pans += sorted((aoi / "PAN").glob("PAN_*.tif"), key=_key)
    if not pans:
        raise DataError(f"{raw}: expected PAN_<AOI>_img<N>.tif files under AOI_*_Train/PAN, found none")
    image_ids = [p.stem[len("PAN_"):] for p in pans]
    rng = np.random.default_rng(int(params.get("seed", 0)))
    n_val = int(round(float(dp.get("val_fraction", 0.2)) * len(image_ids)))
    val = {image_ids[i] for i in rng.permutation(len(image_ids))[:n_val]}
    return [(p.parent.parent.name, image_id, "val" if image_id in val else "train") for p, image_id in zip(pans, image_ids)]


def read_image(raw: Path, unit: tuple, spec: DatasetSpec, params: dict) -> Iterator[dict]:
    """PAN, MUL and MUL-PanSharpen of one image, tiled on PAN's grid (MUL at 1/ratio)."""
    aoi_name, image_id, split = unit
    tile, ratio = int(dataset_params(params, spec.id)["tile_size"]), int(spec.extra["ratio"])
    aoi = raw / aoi_name
    p_pan = aoi / "PAN" / f"PAN_{image_id}.tif"
    paths = {"pan": p_pan, "mul": aoi / "MUL" / f"MUL_{image_id}.tif",
             "mul_pansharpen": aoi / "MUL-PanSharpen" / f"MUL-PanSharpen_{image_id}.tif"}
    r = {k: read_raster(p, nbands(spec, k), f"WorldView-3 {k}") for k, p in paths.items()}
    check_pair(p_pan, r["pan"], paths["mul_pansharpen"], r["mul_pansharpen"])
    check_pair(p_pan, r["pan"], paths["mul"], r["mul"], scale=ratio)
    h, w = r["pan"][0].shape[-2:]
    need_tiles(p_pan, (h, w), tile)
    mt = -(-tile // ratio)  # ceil: the MUL pixels that cover the PAN tile
    ys, xs = tile_offsets(h, tile, ratio), tile_offsets(w, tile, ratio)
    mul, mul_crs, mul_t = r["mul"]
    need = (ys[-1] // ratio + mt, xs[-1] // ratio + mt)
    if need[0] > mul.shape[-2] or need[1] > mul.shape[-1]:  # a MUL short of ceil(PAN / ratio): edge pixels
        mul = np.pad(mul, ((0, 0), (0, max(0, need[0] - mul.shape[-2])), (0, max(0, need[1] - mul.shape[-1]))),
                     mode="edge")
    for y in ys:
        for x in xs:
            my, mx = y // ratio, x // ratio
            tiles = {}
            for k, (d, crs, t) in r.items():
                if k == "mul":
                    tiles[k] = Tile(np.ascontiguousarray(mul[:, my:my + mt, mx:mx + mt]), mul_crs,
                                    affine_tuple(window_transform(mul_t, my, mx)))
                else:
                    tiles[k] = Tile(np.ascontiguousarray(d[:, y:y + tile, x:x + tile]), crs,
                                    affine_tuple(window_transform(t, y, x)))
            yield {"id": f"{image_id}_r{y}_c{x}", "split": split, "modalities": tiles, "labels": {}}


LAYOUTS = {"original": Layout("original", "AOI_<n>_<City>_Train/{PAN,MUL,MUL-PanSharpen}/*.tif",
                              expects=("AOI_*_Train/PAN",), plan=plan, read=read_image)}


# ------------------------------------------------------------------------------------------------- synthetic copy
_AOI_ORIGIN = {"AOI_2_Vegas": (-115.32, 36.22), "AOI_3_Paris": (2.22, 48.87), "AOI_4_Shanghai": (121.40, 31.25),
               "AOI_5_Khartoum": (32.50, 15.62)}
_SN2_COVER = sc.Cover(water=0.01, forest=0.03, low_vegetation=0.12, cropland=0.0, bare_soil=0.14, urban=0.7,
                      block_m=60.0, road_m=9.0, building_m=(10.0, 18.0), height_m=(3.5, 8.0), built=0.4,
                      urban_green=0.2, relief_m=2.0, elevation_m=650.0)
# PAN response (450-800 nm) as weights of the eight MUL bands (coastal ... NIR2)
_PAN_WEIGHTS = np.array([0.0, 0.15, 0.2, 0.2, 0.2, 0.15, 0.1, 0.0], dtype=np.float32)


def _wkt(points) -> str:
    return "POLYGON ((" + ",".join(f"{x} {y} 0" for x, y in points) + "))"


def write(sink: Sink, spec: DatasetSpec, cfg: dict, rng: np.random.Generator) -> None:
    """<AOI>_Train/{PAN,MUL,MUL-PanSharpen,RGB-PanSharpen}/<PRODUCT>_<AOI>_img<N>.tif, geojson/buildings, summaryData.

    One 0.3 m scene per image: MUL-PanSharpen is its 8-band rendering at PAN resolution, MUL the same area-averaged
    by the PAN/MUL ratio, PAN a weighted sum of the bands at full resolution, RGB-PanSharpen bands 5, 3, 2.
    Geographic coordinates (EPSG:4326) as in the SpaceNet release; building footprints in GeoJSON and WKT.
    """
    size, ratio = int(cfg["pan_size"]), int(spec.extra["ratio"])
    if size < ratio:
        raise XGeoError(f"params data.datasets.spacenet2.synth.pan_size: expected at least the ratio {ratio}, "
                        f"found {size}")
    # the scene covers whole MUL pixels, ceil(size / ratio) of them (650 px PAN: 163 px MUL, as released); PAN and
    # the pan-sharpened products are its first ``size`` px
    full = -(-size // ratio) * ratio
    mul = get_sensor("wv3_mul")
    gsd = get_sensor("wv3_pan").gsd_m
    wl = bands_nm("wv3_mul")
    rgb_idx = mul.band_indices(["red", "green", "blue"])
    n_img = int(cfg["images_per_aoi"])
    sink.expect(len(cfg["aois"]) * (n_img * 5 + 1))
    for aoi in cfg["aois"]:
        lon0, lat0 = _AOI_ORIGIN[aoi]
        dlat = gsd / 110574.0
        dlon = gsd / (111320.0 * np.cos(np.radians(lat0)))
        ids = np.sort(rng.choice(np.arange(1, 40 * n_img + 1), size=n_img, replace=False))
        cells = rng.choice(np.arange(400), size=n_img, replace=False)
        summary = io.StringIO()
        table = csv.writer(summary, lineterminator="\n")
        table.writerow(["ImageId", "BuildingId", "PolygonWKT_Pix", "PolygonWKT_Geo"])
        base = f"{aoi}_Train"
        for img, cell in zip(ids, cells):
            scene = sc.make_scene(rng, (full, full), gsd, _SN2_COVER)
            shadow = sc.cast_shadows(scene, azimuth_deg=140.0, elevation_deg=60.0)
            refl_full = sc.reflectance(scene, wl, 0.6, shadow)
            refl = refl_full[:, :size, :size]
            pan = np.tensordot(_PAN_WEIGHTS / _PAN_WEIGHTS.sum(), refl, axes=1)[None]
            west, north = lon0 + (cell % 20) * size * dlon, lat0 - (cell // 20) * size * dlat
            crs = CRS.from_epsg(4326)
            pansharp = sc.to_wv3(refl, rng)
            name = f"{aoi}_img{img}"
            sink.tif(f"{base}/PAN/PAN_{name}.tif", sc.to_wv3(pan, rng), crs, from_origin(west, north, dlon, dlat))
            sink.tif(f"{base}/MUL/MUL_{name}.tif", sc.to_wv3(sc.block_mean(refl_full, ratio).astype(np.float32), rng), crs,
                     from_origin(west, north, dlon * ratio, dlat * ratio))
            sink.tif(f"{base}/MUL-PanSharpen/MUL-PanSharpen_{name}.tif", pansharp, crs,
                     from_origin(west, north, dlon, dlat))
            sink.tif(f"{base}/RGB-PanSharpen/RGB-PanSharpen_{name}.tif", pansharp[rgb_idx], crs,
                     from_origin(west, north, dlon, dlat))
            features = []
            for r0, r1, c0, c1, _h in scene.buildings:
                r0, r1, c0, c1 = int(r0), min(int(r1), size), int(c0), min(int(c1), size)  # inside the PAN image
                if r0 >= r1 or c0 >= c1 or (scene.classes[r0:r1, c0:c1] == sc.BUILDING).mean() < 0.5:
                    continue  # mostly cut away by a street
                pix = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
                geo = [(round(west + x * dlon, 9), round(north - y * dlat, 9)) for x, y in pix]
                features.append({"type": "Feature", "properties": {"OBJECTID": len(features) + 1},
                                 "geometry": {"type": "Polygon", "coordinates": [[[x, y, 0.0] for x, y in geo]]}})
                table.writerow([name, len(features), _wkt(pix), _wkt(geo)])
            if not features:
                table.writerow([name, -1, "POLYGON EMPTY", "POLYGON EMPTY"])
            sink.json(f"{base}/geojson/buildings/buildings_{name}.geojson",
                      {"type": "FeatureCollection", "crs": {"type": "name", "properties": {
                          "name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}, "features": features})
        sink.text(f"{base}/summaryData/{base}_Building_Solutions.csv", summary.getvalue())
