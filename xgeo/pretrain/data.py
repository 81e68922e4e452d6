"""What a pretraining step reads: store layouts, group layouts, and the step batches (crops, flips, masks, pairs).

``StepData[s]`` is everything step ``s`` of one rank reads, a pure function of (seed, step, rank):

- the sampler's sample indices for the step (``xgeo.pretrain.sampler``);
- GFM / SimMIM's augmentation: a RandomResizedCrop (``pretrain.crop``: area share ``scale``, aspect ``ratio``) resized
  to the model's input size, then a horizontal flip with probability 1/2. The two images of a co-located pair take
  the SAME box (in fractions of the tile, so sensors of different pixel sizes stay aligned) and the same flip.
  A tile smaller than the input is enlarged by the resize (no padding); ``crop: null`` resizes the whole tile;
- a SimMIM mask per image (independent for the two images of a pair) and the cross-sensor choice of each pair.

``pretrain.augment_on`` says where the crop, resize, value convention and normalisation run: ``loader`` (default)
in the DataLoader workers, ``device`` on the training device. With ``device`` the loader reads raw stored tiles
(``ZarrDataset(..., raw=True)``: native dtype) and draws the same boxes and flips from the same stream;
``StepData.finish`` then makes the images on the device (``xgeo.data.device.crop_normalize`` with the antialiased
resize of :func:`resized_crop`), so both modes give the same batches up to float rounding, and a worker does a
fraction of the work (benchmarks/README.md, "pretraining loader").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.device import crop_normalize
from ..errors import DataError, TrainingError, XGeoError
from ..sensors import get_sensor
from .masking import MaskGenerator, choose_cross
from .sampler import PretrainSampler


@dataclass(frozen=True)
class GroupLayout:
    """What every sample of a group carries: modality keys -> sensors, and co-located pairs (key -> partner key)."""

    name: str
    sensors: dict[str, str]
    partner: dict[str, str]


def store_path(params: dict, dataset: str) -> Path:
    return Path(params["paths"]["zarr"]) / f"{dataset}.zarr"


def read_store_attrs(params: dict, dataset: str) -> dict:
    """{"path", "attrs", "shapes": {key: (N, C, H, W)}} of a pretraining store; a clear error when absent."""
    path = store_path(params, dataset)
    raw = Path(params["paths"]["raw"]) / dataset
    if not (path / "zarr.json").exists():
        raise DataError(
            f"pretraining store {path} not found (dataset {dataset!r} of pretrain.groups); build it with "
            f"`xgeo data raw {dataset} {raw} && xgeo data convert {dataset} {raw} {path}` "
            f"or `snakemake --cores 2 {path}`"
        )
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        shapes = {key: tuple(group[f"{key}/data"].shape) for key in attrs["modalities"]}
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable xgeo Zarr store (expected attrs 'modalities' and <key>/data): {exc}")
    return {"path": path, "attrs": attrs, "shapes": shapes}


def group_layouts(params: dict, stores: dict[str, dict]) -> dict[str, GroupLayout]:
    """The layout of every group of ``pretrain.groups``; its datasets must carry the same modalities and pairs."""
    layouts = {}
    for gname, gconf in params["pretrain"]["groups"].items():
        first = None
        for ds in gconf["datasets"]:
            attrs = stores[ds]["attrs"]
            keys = gconf.get("modalities") or list(attrs["modalities"])
            unknown = [k for k in keys if k not in attrs["modalities"]]
            if unknown:
                raise DataError(f"params pretrain.groups.{gname}.modalities: {stores[ds]['path']} has no modality "
                                f"{unknown}; it has {list(attrs['modalities'])}")
            sensors = {k: attrs["modalities"][k]["sensor"] for k in keys}
            partner: dict[str, str] = {}
            # a pair counts only when both of its modalities are read (e.g. an S1-only pretraining of Table 10)
            for a, b in attrs.get("pairs", []):
                if a in sensors and b in sensors:
                    partner[a], partner[b] = b, a
            if first is None:
                first = (ds, sensors, partner)
            elif (sensors, partner) != first[1:]:
                raise DataError(
                    f"pretrain.groups.{gname}: datasets of one group must carry the same modalities and pairs; "
                    f"{stores[first[0]]['path']} has {first[1]} (pairs {first[2]}), "
                    f"{stores[ds]['path']} has {sensors} (pairs {partner})"
                )
        layouts[gname] = GroupLayout(gname, first[1], first[2])
    return layouts


def check_against_model(model, stores: dict[str, dict], layouts: dict[str, GroupLayout], params: dict) -> None:
    """Every sensor the run reads has an embedding in the model, with the data's channel count."""
    have = list(model.config["sensors"])
    reads = [(stores[ds], key) for g, c in params["pretrain"]["groups"].items() for ds in c["datasets"]
             for key in layouts[g].sensors]
    for store, key in reads:
        mod = store["attrs"]["modalities"][key]
        sensor = mod["sensor"]
        if sensor not in have:
            raise DataError(
                f"{store['path']}: modality {key!r} is sensor {sensor!r}, which the model lacks "
                f"(model sensors: {have}); add {sensor!r} to model.sensors in params.yaml"
            )
        channels = store["shapes"][key][1]
        expected = model.in_channels(sensor)
        if channels != len(mod["bands"]) or channels != expected:
            raise DataError(
                f"{store['path']}: modality {key!r} ({sensor}) has {channels} channels "
                f"(bands {list(mod['bands'])}); the model's {sensor} embedding and decoder expect "
                f"{expected} ({list(get_sensor(sensor).band_names)}); "
                f"pretraining reconstructs every band of a sensor, so rebuild the store with all of them"
            )


def small_tiles(stores: dict[str, dict], layouts: dict[str, GroupLayout], params: dict, img_size: int) -> list[str]:
    """One line per modality whose stored tiles are smaller than the model input (the crop enlarges them)."""
    out = []
    for g, c in params["pretrain"]["groups"].items():
        for ds in c["datasets"]:
            for key in layouts[g].sensors:
                h, w = stores[ds]["shapes"][key][-2:]
                if min(h, w) < img_size:
                    out.append(f"{stores[ds]['path']}: modality {key!r} has {h} x {w} px tiles, smaller than the "
                               f"model input ({img_size} px); the crop enlarges them (set data.datasets.{ds}.tile_size)")
    return out


# ------------------------------------------------------------------------------------------------- the crop
def crop_box(rng: np.random.Generator, scale: Sequence[float], ratio: Sequence[float],
             attempts: int = 10) -> tuple[float, float, float, float]:
    """RandomResizedCrop's box (torchvision's get_params) on a unit square: (top, left, height, width) in [0, 1].

    Area share uniform in ``scale``, log aspect (width / height) uniform in log ``ratio``; after ``attempts`` draws
    that do not fit, the largest centred box of the nearest allowed aspect. Fractions, so one box fits every image
    of a co-located pair whatever its pixel size.
    """
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        area = rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if 0 < w <= 1 and 0 < h <= 1:
            return rng.uniform(0, 1 - h), rng.uniform(0, 1 - w), h, w
    aspect = min(max(1.0, ratio[0]), ratio[1])
    w, h = (1.0, 1.0 / aspect) if aspect >= 1 else (aspect, 1.0)
    return (1 - h) / 2, (1 - w) / 2, h, w


def pixel_box(box: tuple[float, float, float, float], H: int, W: int) -> tuple[int, int, int, int]:
    """A box in fractions of an H x W image -> whole pixels (top, left, height, width), at least 1 x 1, inside."""
    top, left = int(round(box[0] * H)), int(round(box[1] * W))
    return top, left, max(1, min(H - top, int(round(box[2] * H)))), max(1, min(W - left, int(round(box[3] * W))))


def resized_crop(img: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """img (C, H, W) -> the box (fractions of the image, rounded to whole pixels) resized to (C, size, size)."""
    top, left, h, w = pixel_box(box, *img.shape[-2:])
    part = img[:, top: top + h, left: left + w]
    if (h, w) == (size, size):
        return part.clone()
    # antialias when shrinking, as torchvision's resize of tensors
    return F.interpolate(part[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=h > size or w > size)[0].to(img.dtype)


# ----------------------------------------------------------------------------------------------- step batches
AUGMENT_ON = ("loader", "device")  # pretrain.augment_on: where the crop, resize and normalisation run


class NonFiniteInput(TrainingError):
    """A step's normalised images hold NaN or inf (raised while loading, before the model sees them)."""


class StepData(torch.utils.data.Dataset):
    """Item ``s`` = everything step ``s`` of this rank reads: per group, images, masks and cross-sensor choices.

    ``{group: {"images": {key: (B, C, S, S)}, "masks": {key: (B, S/p, S/p) uint8},
               "cross": {key: (B,) bool}, "count": B}}``, S = ``img_size`` (the model's input). Deterministic in
    (seed, step, rank). ``crop``: {"scale": [lo, hi], "ratio": [lo, hi]} or None (the whole tile, resized).
    ``augment_on="device"``: ``datasets`` return raw tiles and a group batch carries them instead of "images":
    ``"raw": {"parts": raw_batch(...), "step", "items"}``; :meth:`finish` turns it into the same batch on the
    training device.
    """

    def __init__(self, sampler: PretrainSampler, datasets: dict[str, Any], layouts: dict[str, GroupLayout],
                 mask_patch: int, patch_size: int, mask_ratio: float, cross_ratio: float, seed: int, rank: int,
                 total_steps: int, img_size: int, crop: dict | None = None, augment_on: str = "loader") -> None:
        self.sampler = sampler
        self.datasets = datasets
        self.layouts = layouts
        self.img_size = int(img_size)
        self.crop = None if crop is None else {"scale": [float(v) for v in crop["scale"]],
                                               "ratio": [float(v) for v in crop["ratio"]]}
        if self.crop is not None:
            lo, hi = self.crop["scale"]
            rlo, rhi = self.crop["ratio"]
            if not (0 < lo <= hi <= 1) or not (0 < rlo <= rhi):
                raise XGeoError(f"params pretrain.crop: expected 0 < scale[0] <= scale[1] <= 1 and "
                                f"0 < ratio[0] <= ratio[1], found {crop}")
        self.maskgen = MaskGenerator(self.img_size, mask_patch, patch_size, mask_ratio)
        self.cross_ratio = cross_ratio
        self.seed, self.rank = seed, rank
        self.total_steps = total_steps
        if augment_on not in AUGMENT_ON:
            raise XGeoError(f"params pretrain.augment_on: expected one of {list(AUGMENT_ON)}, found {augment_on!r}")
        self.augment_on = augment_on

    def __len__(self) -> int:
        return self.total_steps

    def draw(self, rng: np.random.Generator) -> tuple[tuple[float, float, float, float], bool]:
        """A sample's crop box (fractions) and horizontal flip: the draws of both ``augment_on`` modes."""
        box = crop_box(rng, **self.crop) if self.crop is not None else (0.0, 0.0, 1.0, 1.0)
        return box, bool(rng.random() < 0.5)  # SimMIM's random horizontal flip

    def augment(self, rng: np.random.Generator, sample: dict, keys: Sequence[str]) -> dict:
        """One crop box and one flip for every image of a sample (co-located images stay aligned)."""
        box, flip = self.draw(rng)
        out = {}
        for key in keys:
            img = resized_crop(sample[key], box, self.img_size)
            out[key] = img.flip(-1) if flip else img
        return out

    def __getitem__(self, step: int) -> dict:
        # a stream of its own (last key 1), apart from the sampler's permutations
        rng = np.random.default_rng([self.seed, int(step), self.rank, 1])
        out = {}
        for gname, items in self.sampler.batch(int(step)).items():
            layout = self.layouts[gname]
            n = len(items)
            if self.augment_on == "device":
                gb = {"raw": {"parts": self.raw_batch(items, [self.draw(rng) for _ in items], list(layout.sensors)),
                              "step": int(step), "items": items}}
            else:
                samples = [self.augment(rng, self.datasets[ds][i], list(layout.sensors)) for ds, i in items]
                gb = {"images": {key: torch.stack([s[key] for s in samples]) for key in layout.sensors}}
                _check_finite(gb["images"], int(step), gname, layout, items)
            masks = {key: torch.from_numpy(self.maskgen(rng, n)) for key in layout.sensors}  # independent per sensor
            cross = {key: torch.from_numpy(choose_cross(rng, n, self.cross_ratio))
                     for key in layout.sensors if key in layout.partner}
            out[gname] = {**gb, "masks": masks, "cross": cross, "count": n}
        return out

    def raw_batch(self, items: Sequence[tuple[str, int]], draws: Sequence[tuple], keys: Sequence[str]) -> dict:
        """``augment_on: device``: the raw tiles of a group batch, per dataset (datasets of a group may store other
        tile sizes and dtypes): {dataset: {"positions": (m,) places in the batch, "flips": (m,) bool,
        "tiles": {key: (m, C, H, W) native dtype}, "boxes": {key: (m, 4) int64 pixel windows of each key's
        tiles}}}, the boxes cut as :func:`resized_crop` cuts them."""
        parts: dict[str, list[int]] = {}
        for pos, (ds, _) in enumerate(items):
            parts.setdefault(ds, []).append(pos)
        out = {}
        for ds, positions in parts.items():
            samples = [self.datasets[ds][items[p][1]] for p in positions]
            tiles = {key: torch.stack([s[key] for s in samples]) for key in keys}
            boxes = {key: torch.tensor([pixel_box(draws[p][0], *t.shape[-2:]) for p in positions], dtype=torch.int64)
                     for key, t in tiles.items()}
            out[ds] = {"positions": torch.tensor(positions, dtype=torch.int64), "tiles": tiles, "boxes": boxes,
                       "flips": torch.tensor([draws[p][1] for p in positions], dtype=torch.bool)}
        return out

    def finish(self, batch: dict) -> dict:
        """A step batch on the training device -> the batch the objective reads. ``augment_on: loader``: itself.
        ``device``: each group's "raw" tiles -> "images" {key: float32 (B, C, S, S)}: value convention and
        normalisation with each dataset's statistics, the drawn window resized (antialiased when shrinking, as
        :func:`resized_crop`) and flipped, on the device the tiles are on; raises NonFiniteInput as the loader
        does."""
        if self.augment_on != "device":
            return batch
        out = {}
        for gname, gb in batch.items():
            layout = self.layouts[gname]
            images: dict[str, torch.Tensor] = {}
            for ds, part in gb["raw"]["parts"].items():
                flips = torch.stack([part["flips"], torch.zeros_like(part["flips"])], dim=1)  # horizontal only
                for key in layout.sensors:
                    y = crop_normalize({key: part["tiles"][key]}, self.datasets[ds], self.img_size, keys=[key],
                                       boxes=part["boxes"][key], flips=flips, antialias=True)[key]
                    if key not in images:
                        images[key] = y.new_empty((gb["count"], *y.shape[1:]))
                    images[key][part["positions"]] = y
            _check_finite(images, gb["raw"]["step"], gname, layout, gb["raw"]["items"])
            out[gname] = {k: v for k, v in gb.items() if k != "raw"} | {"images": images}
        return out


def _check_finite(images: dict, step: int, gname: str, layout: GroupLayout, items) -> None:
    for key, img in images.items():
        if not bool(torch.isfinite(img).all()):
            raise NonFiniteInput(
                f"step {step + 1}: non-finite input for sensor {layout.sensors[key]!r} (group {gname!r}, "
                f"modality {key!r} of samples {items})")


def to_device(batch: dict, device: torch.device) -> dict:
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x

    return move(batch)


def step_batches(data: StepData, start: int, stop: int, workers: int, seed: int) -> Iterator[dict]:
    """Step batches start..stop-1; with workers, a DataLoader prefetches whole steps (still deterministic)."""
    if workers <= 0:
        for step in range(start, stop):
            yield data[step]
        return
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=list(range(start, stop)), num_workers=workers,
        generator=torch.Generator().manual_seed(seed),  # the loader's base seed must not draw from the global RNG
        persistent_workers=False, prefetch_factor=2,
    )
    yield from loader
