"""Data loading: the Zarr Dataset versus per-sample GeoTIFF reads (as TorchGeo does), conversion throughput
(single pass, partitioned, decoding workers), and the pretraining loader at paper sizes.

    .venv/bin/python benchmarks/data_loading.py [--workers 0 2] [--repeat 4] [--scale 4]
        [--sections loading convert parts loader device] [--device cpu|cuda] [--gpu-rates 1000 2000 4000]

1. samples/s: ``ZarrDataset`` over a converted store versus a Dataset that opens the sample's GeoTIFFs with rasterio
   in ``__getitem__`` (SEN12MS: the s1 and s2 file; BigEarthNet: 12 S2 band files resampled to the 10 m grid, the
   two S1 files and the labels JSON), each producing the same normalised float32 tensors, through a DataLoader
   (batch 16) at each worker count. The ratio column is Zarr / GeoTIFF, measured in the same run.
2. conversion MB/s (uncompressed tile bytes written per second) of SEN12MS at two data sizes: if the cost grows
   linearly, the time ratio equals the size ratio and MB/s stays flat.

3. partitioned conversion (``parts``): SEN12MS at two data sizes converted in one pass, in 2 parts run at the same time
   (two processes, as two cluster jobs would) followed by ``merge``, and in one pass decoding in 2 worker processes;
   CPU seconds (all processes) and wall seconds, MB per CPU second, the linear model ``t_cpu = c0 + c1 * MB + c2 * MB *
   [parts > 1]`` fitted to the measurements (c2: the extra cost of parts, merge included; wall time on P idle cores
   is the parts' CPU time / P plus the merge), and partitioned versus single-pass statistics.
4. pretraining loader (``loader``) per worker process at paper sizes: SEN12MS s1 + s2 tiles stored at 256 and 384 px,
   RandomResizedCrop to 192 px with the same box for the co-located pair (scale 0.2-1, ratio 3/4-4/3, bilinear),
   random horizontal and vertical flips, per-band normalisation; from the Zarr store, from the GeoTIFFs, and a no-op
   ceiling (ready tensors); plus the Zarr path returning raw tiles (crop and normalisation left to the GPU:
   ``xgeo.data.device.crop_normalize``, whose cost is timed here on the CPU for reference). The crop and flips of the
   CPU paths are torch ops of this script (``crop_pair``), not xgeo.pretrain's; then xgeo.pretrain's own loader
   (``StepData``, SEN12MS pair, batch 8) per worker with ``pretrain.augment_on`` loader and device.
5. ``device``: ``StepData`` at Table 11's per-GPU batch over tiles held in memory (``MemoryTiles``: no decoding, only
   torch and numpy needed): the loader's CPU cost per sample in each ``augment_on`` mode, the device mode's work on
   ``--device`` (copy of the raw batch + ``StepData.finish``), the largest difference between the two modes' images,
   and the workers a GPU needs at each of ``--gpu-rates``.

Raw data comes from ``xgeo.data.synth`` at the scale set here (tile-sized patches, so one file set = one sample).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgeo.data.device import random_boxes  # noqa: E402


def _store_imports() -> None:
    """The store and GeoTIFF machinery (zarr, rasterio, jsonschema), imported by the sections that use it: the
    ``device`` section needs only torch and numpy (so it runs on a bare GPU machine)."""
    global get_dataset, load_params, SPLIT_NAMES, convert, merge, ZarrDataset, read_raster, resize, ChunkReader
    global open_store, synthesize
    from xgeo.catalog import get_dataset
    from xgeo.config import load_params
    from xgeo.data.convert import SPLIT_NAMES, convert, merge
    from xgeo.data.dataset import ZarrDataset
    from xgeo.data.readers import read_raster, resize
    from xgeo.data.store import ChunkReader, open_store
    from xgeo.data.synth import synthesize


class GeoTiffDataset(torch.utils.data.Dataset):
    """The baseline: every ``__getitem__`` opens and reads the sample's GeoTIFFs, then normalises like ZarrDataset."""

    def __init__(self, raw: Path, dataset: str, store: Path):
        self.raw, self.dataset = raw, dataset
        root = open_store(store)
        split = root["split"][:]
        self.ids = [str(s) for s, k in zip(root["ids"][:], split) if k == SPLIT_NAMES.index("train")]
        self.tile = int(root.attrs["tile_size"])
        ref = ZarrDataset(store, split="train")  # the same statistics and value convention
        self.norm = ref
        self.spec = get_dataset(dataset)
        self.s1_names = {}  # BigEarthNet: S2 patch -> S1 patch, from the split files
        for csv in sorted((raw / "splits").glob("*.csv")):
            self.s1_names.update(ln.split(",") for ln in csv.read_text().split())

    def __len__(self) -> int:
        return len(self.ids)

    def _sen12ms(self, sid: str) -> dict:
        name = sid.rsplit("_r", 1)[0] + ".tif"  # tile-sized patches: the tile is the whole file
        season, scene = name.split("_s2_")[0], name.split("_s2_")[1].rsplit("_p", 1)[0]
        s2 = read_raster(self.raw / season / f"s2_{scene}" / name, 13)[0]
        s1 = read_raster(self.raw / season / f"s1_{scene}" / name.replace("_s2_", "_s1_"), 2)[0]
        return {"s1": s1, "s2": s2}

    def _bigearthnet(self, sid: str) -> dict:
        folder = self.raw / "BigEarthNet-v1.0" / sid
        hw = read_raster(folder / f"{sid}_B02.tif", 1)[0].shape[-2:]
        s2 = np.concatenate([read_raster(folder / f"{sid}_{b}.tif", 1, out_shape=hw)[0]
                             for b in self.spec.modalities["s2"].bands])
        json.loads((folder / f"{sid}_labels_metadata.json").read_text())  # the labels, as a loader reads them
        s1_name = self.s1_names[sid]
        s1 = np.concatenate([read_raster(self.raw / "BigEarthNet-S1-v1.0" / s1_name / f"{s1_name}_{b}.tif", 1)[0]
                             for b in self.spec.modalities["s1"].bands])
        return {"s1": resize(s1, self.tile), "s2": resize(s2, self.tile)}

    def __getitem__(self, i: int) -> dict:
        raw = getattr(self, f"_{self.dataset.replace('-', '_')}")(self.ids[i])
        return {k: self.norm.load(k, v) for k, v in raw.items()}


class ReadyTensors(torch.utils.data.Dataset):
    """The DataLoader's own ceiling: samples of the same shapes that cost nothing to make (collation + worker IPC)."""

    def __init__(self, like: dict, n: int):
        self.like, self.n = {k: torch.zeros_like(v) for k, v in like.items() if torch.is_tensor(v)}, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return dict(self.like)


def samples_per_s(ds, workers: int, repeat: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False, num_workers=workers,
                                         persistent_workers=workers > 0)
    next(iter(loader))  # start the workers and warm the page cache outside the timing
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeat):
        for batch in loader:
            n += len(batch["s2"])
    return n / (time.perf_counter() - t0)


def tile_bytes(store: Path) -> int:
    root = open_store(store)
    return sum(root[f"{k}/data"].nbytes for k in root.attrs["modalities"])


# ---------------------------------------------------------------------------------------------- 1, 2 (as before)
def bench_loading(tmp: Path, args) -> None:
    rows = []
    setups = {
        "sen12ms": ["data.datasets.sen12ms.synth.scenes_per_season=3", "data.datasets.sen12ms.synth.patches_per_scene=16",
                    "data.datasets.sen12ms.synth.size=64"],
        "bigearthnet": ["data.datasets.bigearthnet.synth.patches={train: 192, val: 8, test: 8}"],
    }
    for dataset, overrides in setups.items():
        params = load_params(ROOT / "params.yaml", overrides)
        raw, store = tmp / dataset, tmp / f"{dataset}.zarr"
        synthesize(dataset, raw, params, seed=0)
        convert(dataset, raw, store, params)
        zds, gds = ZarrDataset(store, split="train"), GeoTiffDataset(raw, dataset, store)
        for k in ("s1", "s2"):  # both paths give the same tensors
            torch.testing.assert_close(zds[3][k], gds[3][k])
        ceiling = ReadyTensors(zds[0], len(zds))
        for w in args.workers:
            z, g = samples_per_s(zds, w, args.repeat), samples_per_s(gds, w, args.repeat)
            rows.append((dataset, len(zds), w, g, z, z / g, samples_per_s(ceiling, w, args.repeat)))
    print("\nsamples/s (DataLoader, batch 16, train split; ceiling: ready tensors through the same DataLoader)")
    print(f"{'dataset':<12} {'samples':>7} {'workers':>7} {'GeoTIFF':>9} {'Zarr':>9} {'Zarr/GeoTIFF':>13} {'ceiling':>9}")
    for d, n, w, g, z, r, c in rows:
        print(f"{d:<12} {n:>7} {w:>7} {g:>9.0f} {z:>9.0f} {r:>12.1f}x {c:>9.0f}")


def _sen12ms_params(scale: int, size: int = 128, tile: int = 64, patches: int = 8) -> dict:
    return load_params(ROOT / "params.yaml", [
        f"data.datasets.sen12ms.synth.scenes_per_season={scale}", f"data.datasets.sen12ms.synth.patches_per_scene={patches}",
        f"data.datasets.sen12ms.synth.size={size}", f"data.datasets.sen12ms.tile_size={tile}"])


def bench_convert(tmp: Path, args) -> None:
    print("\nconversion throughput (SEN12MS, uncompressed tile bytes)")
    print(f"{'patches':>8} {'tiles':>6} {'MB':>8} {'seconds':>8} {'MB/s':>7} {'s / tile (ms)':>14}")
    for scale in (args.scale, 2 * args.scale):
        params = _sen12ms_params(scale)
        raw, store = tmp / f"conv{scale}", tmp / f"conv{scale}.zarr"
        synthesize("sen12ms", raw, params, seed=0)
        t0 = time.perf_counter()
        convert("sen12ms", raw, store, params)
        sec = time.perf_counter() - t0
        n = open_store(store)["ids"].shape[0]
        mb = tile_bytes(store) / 1e6
        print(f"{scale * 4 * 8:>8} {n:>6} {mb:>8.1f} {sec:>8.2f} {mb / sec:>7.1f} {1e3 * sec / n:>14.2f}")


# ----------------------------------------------------------------------------------------- 3. partitioned conversion
def _part(raw: Path, out: Path, params: dict, k: int, n: int) -> None:
    torch.set_num_threads(1)
    convert("sen12ms", raw, out, params, part=(k, n))


def convert_in_parts(raw: Path, out: Path, params: dict, n: int) -> tuple[Clock, Clock]:
    """Clocks of n parts run at once (forked processes, like n cluster jobs) and of the merge."""
    ctx = multiprocessing.get_context("fork")
    with Clock() as parts:
        procs = [ctx.Process(target=_part, args=(raw, out, params, k, n)) for k in range(1, n + 1)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"part failed with exit code {p.exitcode}")
    with Clock() as merged:
        merge(out, params)
    return parts, merged


def stats_difference(single: Path, parted: Path) -> dict:
    """Largest differences of the partitioned store's statistics from the single pass's, over bands and modalities."""
    a, b = open_store(single), open_store(parted)
    out = {"mean_rel": 0.0, "std_rel": 0.0, "minmax": 0.0, "pct_bins": 0.0}
    for k in a.attrs["modalities"]:
        sa, sb = a[f"{k}/data"].attrs["stats"], b[f"{k}/data"].attrs["stats"]
        for f in ("mean", "std"):
            x, y = np.array(sa[f]), np.array(sb[f])
            out[f"{f}_rel"] = max(out[f"{f}_rel"], float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12))))
        for f in ("min", "max"):
            out["minmax"] = max(out["minmax"], float(np.max(np.abs(np.array(sa[f]) - np.array(sb[f])))))
        width = 2 * np.array(sb["p_error"])
        for f in [f for f in sa if f.startswith("p") and f != "p_error"]:
            out["pct_bins"] = max(out["pct_bins"], float(np.max(np.abs(np.array(sa[f]) - np.array(sb[f])) / width)))
    return out


def bench_parts(tmp: Path, args) -> None:
    rows, fits = [], []
    for scale in (args.scale, 2 * args.scale):
        params = _sen12ms_params(scale)
        raw = tmp / f"parts{scale}"
        synthesize("sen12ms", raw, params, seed=0)
        single = tmp / f"parts{scale}-1.zarr"
        with Clock() as one:
            convert("sen12ms", raw, single, params)
        mb = tile_bytes(single) / 1e6
        with Clock() as workers:
            convert("sen12ms", raw, tmp / f"parts{scale}-w2.zarr", params, workers=2)
        parts, merged = convert_in_parts(raw, tmp / f"parts{scale}-2.zarr", params, 2)
        diff = stats_difference(single, tmp / f"parts{scale}-2.zarr")
        rows.append((mb, one, workers, parts, merged, diff))
        # CPU seconds; on an idle machine with P cores the P parts' wall time is their CPU time / P
        fits += [(1.0, mb, 0.0, one.cpu), (1.0, mb, mb, parts.cpu + merged.cpu)]
    print("\npartitioned conversion (SEN12MS; 2 parts = two processes at once, then merge). CPU s: user + sys of all "
          "processes; wall s: on the shared machine")
    print(f"{'MB':>7} | {'1 pass CPU s':>12} {'MB/CPU s':>8} {'wall s':>7} | {'2 workers CPU s':>15} {'wall s':>7} | "
          f"{'2 parts CPU s':>13} {'merge CPU s':>11} {'wall s':>7} {'MB/s on 2 idle cores':>21}")
    for mb, one, w, p, m, _ in rows:
        idle_wall = p.cpu / 2 + m.cpu
        print(f"{mb:>7.1f} | {one.cpu:>12.2f} {mb / one.cpu:>8.1f} {one.wall:>7.2f} | {w.cpu:>15.2f} {w.wall:>7.2f} | "
              f"{p.cpu:>13.2f} {m.cpu:>11.2f} {p.wall + m.wall:>7.2f} {mb / idle_wall:>21.1f}")
    x = np.array([f[:3] for f in fits])
    y = np.array([f[3] for f in fits])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    pred = x @ coef
    print(f"linear model (CPU s): t = {coef[0]:.2f} s + {1e3 * coef[1]:.1f} ms/MB * MB + {1e3 * coef[2]:.1f} ms/MB * MB "
          f"(parts > 1: their extra cost, merge included); largest residual {np.max(np.abs(pred - y)):.2f} s; "
          f"wall on P idle cores with P parts: (c0 + c1 * MB) / P + merge")
    print("partitioned vs single-pass statistics (largest over modalities and bands):")
    for mb, *_, d in rows:
        print(f"  {mb:.1f} MB: mean rel {d['mean_rel']:.1e}, std rel {d['std_rel']:.1e}, min/max {d['minmax']:.1e}, "
              f"percentiles {d['pct_bins']:.2f} bins")


# ------------------------------------------------------------------------------------ 4. the pretraining loader
def crop_box(h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's window (top, left, height, width): xgeo.data.device's sampling, scale 0.2-1, ratio 3/4-4/3."""
    return tuple(random_boxes(1, h, w, g)[0].tolist())


def window_pair(g: torch.Generator, keys=("s1", "s2")):
    """A crop hook for ZarrDataset: one RandomResizedCrop box, cut from the native tiles of every modality."""
    def crop(raw: dict) -> dict:
        h, w = raw[keys[0]].shape[-2:]
        top, left, ch, cw = crop_box(h, w, g)
        return {k: v[..., top:top + ch, left:left + cw] if k in keys else v for k, v in raw.items()}

    return crop


def resize_flip(sample: dict, size: int, g: torch.Generator, keys=("s1", "s2")) -> dict:
    """Resize (bilinear) every modality to size x size and apply the same random flips."""
    hflip, vflip = bool(torch.randint(0, 2, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))
    for k in keys:
        x = torch.nn.functional.interpolate(sample[k][None], size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=False)[0]
        if hflip:
            x = x.flip(-1)
        if vflip:
            x = x.flip(-2)
        sample[k] = x
    return sample


def crop_pair(sample: dict, size: int = 192, keys=("s1", "s2"), g: torch.Generator | None = None) -> dict:
    """The same RandomResizedCrop box and flips for every modality of a co-located pair (C, H, W) -> (C, size, size)."""
    g = g or torch.default_generator
    return resize_flip(window_pair(g, keys)(sample), size, g, keys)


class RawTiles(torch.utils.data.Dataset):
    """The Zarr path returning raw tiles in their native dtype (value convention, crop and normalisation left to the
    GPU): the loader's least work."""

    def __init__(self, store: Path):
        self.store, self.n = store, open_store(store)["ids"].shape[0]
        self.readers = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if self.readers is None:
            self.readers = {k: ChunkReader(self.store, f"{k}/data") for k in ("s1", "s2")}
        return {k: torch.from_numpy(r[i].astype(r.dtype.newbyteorder("="), copy=False)) for k, r in self.readers.items()}


class Augmented(torch.utils.data.Dataset):
    def __init__(self, ds, augment):
        self.ds, self.augment = ds, augment

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return self.augment(self.ds[i])


def per_worker(ds, repeat: int) -> float:
    """Samples per CPU second of one process making the samples (num_workers=0: what one DataLoader worker with a
    core of its own produces). CPU time, not wall time: the machine is shared, so wall time measures the load."""
    ds[0]
    n, t0 = 0, time.process_time()
    for _ in range(repeat):
        for i in range(len(ds)):
            ds[i]
            n += 1
    return n / (time.process_time() - t0)


class Clock:
    """Wall seconds and CPU seconds (this process and its finished children) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        import resource

        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def store_step_data(store: Path, augment_on: str, batch: int = 8):
    """xgeo.pretrain.data.StepData reading the SEN12MS s1 + s2 pair of a store (batch 8 a step), as pretraining does."""
    from xgeo.pretrain.data import GroupLayout, StepData
    from xgeo.pretrain.sampler import Group, PretrainSampler

    ds = ZarrDataset(store, modalities=["s1", "s2"], split=None, raw=augment_on == "device")
    sampler = PretrainSampler([Group("sen12ms", ("sen12ms",), (len(ds),), batch)], seed=0)
    layout = GroupLayout("sen12ms", {"s1": "s1", "s2": "s2"}, {"s1": "s2", "s2": "s1"})
    return StepData(sampler, {"sen12ms": ds}, {"sen12ms": layout}, 32, 4, 0.6, 0.5, 0, 0, sampler.steps_per_epoch,
                    img_size=192, crop=PAPER_CROP, augment_on=augment_on)


def per_step_worker(data, repeat: int) -> float:
    """Samples per CPU second of one process making StepData's step batches (what one DataLoader worker makes)."""
    data[0]
    n, t0 = 0, time.process_time()
    for _ in range(repeat):
        for step in range(len(data)):
            n += sum(gb["count"] for gb in data[step].values())
    return n / (time.process_time() - t0)


def bench_loader(tmp: Path, args) -> None:
    rows, steps_rows = [], []
    for px in (256, 384):
        params = _sen12ms_params(1, size=px, tile=px, patches=8)
        raw, store = tmp / f"loader{px}", tmp / f"loader{px}.zarr"
        synthesize("sen12ms", raw, params, seed=0)
        convert("sen12ms", raw, store, params)
        zds = ZarrDataset(store, split="train")
        gds = GeoTiffDataset(raw, "sen12ms", store)
        g = torch.Generator().manual_seed(0)
        aug = lambda s: crop_pair(s, 192, g=g)  # noqa: E731
        zarr_aug, tif_aug = Augmented(zds, aug), Augmented(gds, aug)
        ready = ReadyTensors(crop_pair(zds[0], 192), len(zds))
        crop_first = ZarrDataset(store, split="train", crop=window_pair(g), augment=lambda s: resize_flip(s, 192, g))
        r_zarr, r_tif = per_worker(zarr_aug, args.repeat), per_worker(tif_aug, args.repeat)
        r_first = per_worker(crop_first, args.repeat)
        plain = tmp / f"loader{px}-plain.zarr"  # data.convert.compression_level 0: tiles stored as raw bytes
        convert("sen12ms", raw, plain, load_params(ROOT / "params.yaml", [
            "data.datasets.sen12ms.synth.scenes_per_season=1", "data.datasets.sen12ms.synth.patches_per_scene=8",
            f"data.datasets.sen12ms.synth.size={px}", f"data.datasets.sen12ms.tile_size={px}",
            "data.convert.compression_level=0"]))
        r_plain = per_worker(ZarrDataset(plain, split="train", crop=window_pair(g), augment=lambda s: resize_flip(s, 192, g)),
                             args.repeat)
        r_plain_raw = per_worker(RawTiles(plain), args.repeat)
        # the GPU path's device work (xgeo.data.device.crop_normalize), timed here on this CPU for one batch of 32
        from xgeo.data.device import crop_normalize

        raw_ds = ZarrDataset(plain, split="train", raw=True)
        batch = torch.utils.data.default_collate([raw_ds[i % len(raw_ds)] for i in range(32)])
        crop_normalize(batch, zds, 192, g)
        t0 = time.process_time()
        for _ in range(args.repeat):
            crop_normalize(batch, zds, 192, g)
        r_device_cpu = 32 * args.repeat / (time.process_time() - t0)
        sizes = [sum(f.stat().st_size for f in (p / k / "data").rglob("*") if f.is_file()) for p in (store, plain)
                 for k in ("s1", "s2")]
        disk = (sizes[2] + sizes[3]) / (sizes[0] + sizes[1])
        r_raw = per_worker(RawTiles(store), args.repeat)
        r_ready = per_worker(ready, args.repeat)
        r_crop = per_worker(Augmented(ReadyTensors(zds[0], len(zds)), aug), args.repeat)  # crop + flips alone
        # xgeo.pretrain's own loader (StepData: params.yaml's crop, horizontal flip, masks) in each augment_on mode
        r_steps = {(mode, s.name): per_step_worker(store_step_data(s, mode), args.repeat)
                   for mode in ("loader", "device") for s in (store, plain)}
        steps_rows.append((px, r_steps))
        rows.append((px, len(zds), r_tif, r_zarr, r_first, r_raw, r_crop, r_ready, r_plain, r_plain_raw, disk, r_device_cpu))
    print("\npretraining loader per worker process (SEN12MS s1 + s2 pair, RandomResizedCrop to 192, flips, "
          "normalisation; samples per CPU second of one process)")
    print(f"{'tile px':>7} {'samples':>7} {'GeoTIFF':>8} {'Zarr':>8} {'Zarr crop first':>16} {'uncompressed':>13} "
          f"{'best/GeoTIFF':>13} {'raw tiles':>10} {'raw, uncompr.':>14} {'crop+flip only':>15} {'no-op':>9} "
          f"{'disk uncompr.':>14} {'device path on CPU':>19}")
    for px, n, t, z, f, r, c, ready, u, ur, disk, dev in rows:
        print(f"{px:>7} {n:>7} {t:>8.0f} {z:>8.0f} {f:>16.0f} {u:>13.0f} {max(z, f, u) / t:>12.1f}x {r:>10.0f} "
              f"{ur:>14.0f} {c:>15.0f} {ready:>9.0f} {disk:>13.2f}x {dev:>19.0f}")
    print("xgeo.pretrain's StepData (SEN12MS pair, batch 8, params.yaml crop scale 0.67-1, horizontal flip, masks), "
          "samples per CPU second of one process:")
    print(f"{'tile px':>7} {'augment_on loader':>18} {'loader, uncompr.':>17} {'augment_on device':>18} "
          f"{'device, uncompr.':>17}")
    for px, r in steps_rows:
        names = sorted({name for _, name in r}, key=lambda n: "plain" in n)
        print(f"{px:>7} {r[('loader', names[0])]:>18.0f} {r[('loader', names[1])]:>17.0f} "
              f"{r[('device', names[0])]:>18.0f} {r[('device', names[1])]:>17.0f}")
    print("workers one GPU needs (GPU consumption / per-worker rate):")
    for rate in (1000, 2000, 4000):
        need = "; ".join(f"{px} px: crop first {math.ceil(rate / f)} (uncompressed {math.ceil(rate / u)}), raw tiles "
                         f"{math.ceil(rate / r)} (uncompressed {math.ceil(rate / ur)}), GeoTIFF {math.ceil(rate / t)}"
                         for px, _, t, z, f, r, _, _, u, ur, _, _ in rows)
        print(f"  at {rate} samples/s: {need}")


# ------------------------------------------------------------ 5. xgeo.pretrain's loader: augment_on loader | device
PAPER_CROP = {"scale": [0.67, 1.0], "ratio": [0.75, 1.333]}  # params.yaml pretrain.crop
TABLE11 = {  # overlays/paper.yaml per-GPU batch: group -> (batch, {dataset: {key: (sensor, bands, tile px)}})
    "rgb": (128, {"geopile": {"rgb": ("rgb", 3, 256)}, "millionaid": {"rgb": ("rgb", 3, 256)}}),
    "sen12ms": (32, {"sen12ms": {"s1": ("s1", 2, 256), "s2": ("s2", 13, 256)}}),
    "mdas": (12, {"mdas": {"rgb": ("rgb", 3, 384), "dsm": ("dsm", 1, 384)}}),
}


class MemoryTiles(torch.utils.data.Dataset):
    """Stored tiles held in memory, with what StepData reads of a ZarrDataset (``ds[i] -> {key: tile}``, ``stats``,
    ``modalities``, ``normalize``): raw (native dtype) or loaded (value convention, nodata -> band mean, per-band
    normalisation: ZarrDataset.load's steps), so that a timing is the augmentation's alone, without decoding."""

    def __init__(self, tiles: dict[str, np.ndarray], sensors: dict[str, str], raw: bool):
        from xgeo.sensors import SENSORS

        self.tiles, self.raw, self.normalize = tiles, raw, True
        self.modalities = {k: {"sensor": s} for k, s in sensors.items()}
        self._sensor = {k: SENSORS[s] for k, s in sensors.items()}
        self._mean = {k: np.nan_to_num(np.nanmean(t, axis=(0, 2, 3), dtype=np.float64)).astype(np.float32)
                      for k, t in tiles.items()}
        self._std = {k: np.maximum(np.nan_to_num(np.nanstd(t, axis=(0, 2, 3), dtype=np.float64)), 1e-6)
                     .astype(np.float32) for k, t in tiles.items()}

    def __len__(self) -> int:
        return len(next(iter(self.tiles.values())))

    def stats(self, key: str):
        return self._mean[key].copy(), self._std[key].copy()

    def __getitem__(self, i: int) -> dict:
        from xgeo.data.stats import apply_value_convention

        out = {}
        for k, t in self.tiles.items():
            if self.raw:
                out[k] = torch.from_numpy(t[i].copy())
                continue
            x, valid = apply_value_convention(t[i], self._sensor[k])
            mean = self._mean[k][:, None, None]
            if valid is not None:
                np.copyto(x, np.broadcast_to(mean, x.shape), where=~valid)
            x -= mean
            x /= self._std[k][:, None, None]
            out[k] = torch.from_numpy(x)
        return out


def synthetic_tiles(sensor: str, n: int, bands: int, px: int, rng: np.random.Generator) -> np.ndarray:
    """n tiles in the sensor's stored dtype and range; SAR with NaNs, DSM with nodata, as real ones have."""
    if sensor == "rgb":
        return rng.integers(0, 256, (n, bands, px, px), dtype=np.uint8)
    if sensor == "s2":
        return rng.integers(0, 10000, (n, bands, px, px), dtype=np.uint16)
    x = rng.standard_normal((n, bands, px, px), dtype=np.float32)
    if sensor == "s1":
        x = -12.0 + 4.0 * x
        x[:, :, :8, :8] = np.nan
    else:
        x = 300.0 + 20.0 * x
        x[:, :, :8, :8] = -9999.0
    return x


def table11_step_data(augment_on: str, steps: int, groups: dict = TABLE11, img_size: int = 192, seed: int = 0):
    """StepData of xgeo.pretrain over MemoryTiles at Table 11's per-GPU batch (216 images: 128 RGB at 256 px, 32
    SEN12MS s1 + s2 pairs at 256 px, 12 MDAS RGB + DSM pairs at 384 px), one batch's worth of tiles per group."""
    from xgeo.pretrain.data import GroupLayout, StepData
    from xgeo.pretrain.sampler import Group, PretrainSampler

    rng = np.random.default_rng(seed)
    datasets, layouts, sgroups = {}, {}, []
    for g, (batch, members) in groups.items():
        for ds, keys in members.items():
            n = -(-batch // len(members))
            datasets[ds] = MemoryTiles({k: synthetic_tiles(s, n, b, px, rng) for k, (s, b, px) in keys.items()},
                                       {k: s for k, (s, _, _) in keys.items()}, raw=augment_on == "device")
        keys = next(iter(members.values()))
        pairs = list(keys) if len(keys) == 2 else []
        partner = {pairs[0]: pairs[1], pairs[1]: pairs[0]} if pairs else {}
        layouts[g] = GroupLayout(g, {k: s for k, (s, _, _) in keys.items()}, partner)
        sgroups.append(Group(g, tuple(members), tuple(len(datasets[d]) for d in members), batch))
    sampler = PretrainSampler(sgroups, seed=seed)
    return StepData(sampler, datasets, layouts, 32, 4, 0.6, 0.5, seed, 0, steps, img_size=img_size,
                    crop=PAPER_CROP, augment_on=augment_on)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_device(tmp: Path, args) -> None:
    """xgeo.pretrain.data.StepData at Table 11's per-GPU batch, tiles from memory: CPU cost per sample of the
    loader in each augment_on mode (what a DataLoader worker spends, decoding excluded), the device mode's work on
    ``--device`` (copy of the raw batch, StepData.finish), and the largest difference of the two modes' images."""
    from xgeo.pretrain.data import to_device

    device = torch.device(args.device)
    steps = max(3, args.repeat)
    loader, dev = table11_step_data("loader", steps + 2), table11_step_data("device", steps + 2)
    per_step = sum(b for b, _ in TABLE11.values())
    cpu = {}
    for name, data in (("loader", loader), ("device", dev)):
        data[0]
        t0 = time.process_time()
        for step in range(1, steps + 1):
            data[step]
        cpu[name] = steps * per_step / (time.process_time() - t0)
    worst, copy_s, finish_s = 0.0, [], []
    clock = time.perf_counter if device.type == "cuda" else time.process_time  # CPU: CPU time (shared machine)
    for step in range(steps + 2):
        raw = dev[step]
        _sync(device)
        t0 = clock()
        moved = to_device(raw, device)
        _sync(device)
        t1 = clock()
        out = dev.finish(moved)
        _sync(device)
        t2 = clock()
        if step >= 2:  # the first two: warm-up (CUDA context, kernels, allocator)
            copy_s.append(t1 - t0)
            finish_s.append(t2 - t1)
        if step < 2:
            ref = loader[step]
            for g, gb in ref.items():
                for key, x in gb["images"].items():
                    worst = max(worst, float((x - out[g]["images"][key].cpu()).abs().max()))
                    assert torch.equal(gb["masks"][key], out[g]["masks"][key].cpu())
    copy_ms, finish_ms = 1e3 * float(np.median(copy_s)), 1e3 * float(np.median(finish_s))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    images = sum(b * len(next(iter(members.values()))) for b, members in TABLE11.values())
    print(f"\nxgeo.pretrain StepData at Table 11's per-GPU batch ({per_step} samples, {images} images: 128 RGB 256 px, "
          f"32 SEN12MS s1+s2 256 px, 12 MDAS RGB+DSM 384 px -> 192 px), tiles from memory (no decoding)")
    print(f"{'augment_on':<10} {'loader: samples per CPU s (one worker)':>40} {'device work on ' + name:>44}")
    print(f"{'loader':<10} {cpu['loader']:>40.0f} {'-':>44}")
    dev_txt = (f"copy {copy_ms:.2f} ms + finish {finish_ms:.2f} ms per step = "
               f"{per_step / ((copy_ms + finish_ms) / 1e3):.0f} samples/s")
    print(f"{'device':<10} {cpu['device']:>40.0f} {dev_txt:>44}")
    print(f"largest |loader - device| over the images of 2 steps: {worst:.2e} (normalised units); masks equal")
    print("workers one GPU needs (ceil(GPU consumption / per-worker rate); decoding not included here):")
    for rate in args.gpu_rates:
        print(f"  at {rate:.0f} samples/s: augment_on loader {math.ceil(rate / cpu['loader'])}, "
              f"device {math.ceil(rate / cpu['device'])} (device work "
              f"{100 * rate * (copy_ms + finish_ms) / 1e3 / per_step:.1f} % of the device's time)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeat", type=int, default=4, help="passes over the train split per measurement")
    ap.add_argument("--scale", type=int, default=4, help="SEN12MS scenes per season of the smaller conversion")
    ap.add_argument("--sections", nargs="+", default=["loading", "convert", "parts", "loader"],
                    choices=["loading", "convert", "parts", "loader", "device"])
    ap.add_argument("--device", default="cpu", help="where the device sections time the augment_on: device work "
                    "(StepData.finish: crop, resize, normalisation of raw tiles); e.g. cuda")
    ap.add_argument("--gpu-rates", type=float, nargs="+", default=[1000, 2000, 4000],
                    help="samples/s a GPU consumes, for the workers-per-GPU lines")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if set(args.sections) - {"device"}:
        _store_imports()
    tmp = Path(tempfile.mkdtemp(prefix="xgeo-bench-"))
    try:
        for name in args.sections:
            globals()[f"bench_{name}"](tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
