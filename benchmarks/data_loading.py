"""Data loading: the Zarr Dataset versus per-sample GeoTIFF reads (as TorchGeo does), and conversion throughput.

    .venv/bin/python benchmarks/data_loading.py [--workers 0 2] [--repeat 4] [--scale 4]

1. samples/s: ``ZarrDataset`` over a converted store versus a Dataset that opens the sample's GeoTIFFs with rasterio
   in ``__getitem__`` (SEN12MS: the s1 and s2 file; BigEarthNet: 12 S2 band files resampled to the 10 m grid, the
   two S1 files and the labels JSON), each producing the same normalised float32 tensors, through a DataLoader
   (batch 16) at each worker count. The ratio column is Zarr / GeoTIFF, measured in the same run.
2. conversion MB/s (uncompressed tile bytes written per second) of SEN12MS at two data sizes: if the cost grows
   linearly, the time ratio equals the size ratio and MB/s stays flat.

Raw data comes from ``xgeo.data.synth`` at the scale set here (tile-sized patches, so one file set = one sample).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgeo.catalog import get_dataset  # noqa: E402
from xgeo.config import load_params  # noqa: E402
from xgeo.data.convert import SPLIT_NAMES, convert  # noqa: E402
from xgeo.data.dataset import ZarrDataset  # noqa: E402
from xgeo.data.readers import read_raster, resize  # noqa: E402
from xgeo.data.store import open_store  # noqa: E402
from xgeo.data.synth import synthesize  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeat", type=int, default=4, help="passes over the train split per measurement")
    ap.add_argument("--scale", type=int, default=4, help="SEN12MS scenes per season of the smaller conversion")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="xgeo-bench-"))
    try:
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

        print("\nconversion throughput (SEN12MS, uncompressed tile bytes)")
        print(f"{'patches':>8} {'tiles':>6} {'MB':>8} {'seconds':>8} {'MB/s':>7} {'s / tile (ms)':>14}")
        for scale in (args.scale, 2 * args.scale):
            params = load_params(ROOT / "params.yaml", [
                f"data.datasets.sen12ms.synth.scenes_per_season={scale}", "data.datasets.sen12ms.synth.patches_per_scene=8",
                "data.datasets.sen12ms.synth.size=128"])
            raw, store = tmp / f"conv{scale}", tmp / f"conv{scale}.zarr"
            synthesize("sen12ms", raw, params, seed=0)
            t0 = time.perf_counter()
            convert("sen12ms", raw, store, params)
            sec = time.perf_counter() - t0
            n = open_store(store)["ids"].shape[0]
            mb = tile_bytes(store) / 1e6
            print(f"{scale * 4 * 8:>8} {n:>6} {mb:>8.1f} {sec:>8.2f} {mb / sec:>7.1f} {1e3 * sec / n:>14.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
