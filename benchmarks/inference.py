"""Windows per second and peak RSS of ``xgeo embed`` and ``xgeo predict`` on synthetic scenes of growing size,
against a naive baseline that reads the whole scene into memory and runs the same model over the same windows
in one loop, accumulating full-scene arrays (same run, same model, same windows).

Each (path, command, scene size) runs in its own subprocess, whose peak RSS (``ru_maxrss``) is reported, with
its growth over the process with torch and the model loaded (``VmHWM`` before and after; torch alone holds about
0.7 GiB here); windows/s counts the run only, not the model's loading. Scenes are written once (tiled GeoTIFFs: RGB
uint8 for embed, IRRG uint8 + DSM float32 for predict; ``--texture``: see :func:`write_scenes`).

Models (``--model``):
- ``standin`` (default): per-pixel stand-ins through the same code paths (embed: 32 px average pooling + a linear
  map to the demo encoder's 256 channels; predict: a 1x1 convolution to 6 class logits, blended): the cost of
  reading, normalising, blending and writing, and the memory of the pipeline, without the encoder's compute;
- ``demo``: the demo-size XGeo (random weights; embed: the pretraining encoder; predict: a Vaihingen network with
  its UPerNet head), feasible on a CPU for small scenes only.

    .venv/bin/python -W ignore benchmarks/inference.py [--model standin|demo] [--sizes 1024 4096 8192]
        [--window 256] [--batch 8] [--texture smooth|noise] [--commands embed predict] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ["impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"]


def write_scenes(directory: Path, side: int, texture: str = "smooth") -> dict:
    """RGB, IRRG (uint8) and DSM (float32) scenes of side x side px, written in 512-row strips. ``smooth``: a
    random field varying over about 64 px (bilinear between random values every 64 px) plus pixel noise of 1/20
    of its spread, so that the stand-in's class map has regions, as a real one; ``noise``: independent pixels
    (an incompressible class map: the worst case of the COG's DEFLATE encoding)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from scipy.ndimage import map_coordinates

    paths = {}
    rng = np.random.default_rng(0)
    for name, count, dtype in (("rgb", 3, "uint8"), ("irrg", 3, "uint8"), ("dsm", 1, "float32")):
        path = directory / f"{name}_{side}_{texture}.tif"
        paths[name] = str(path)
        if path.exists():
            continue
        coarse = rng.normal(size=(count, side // 64 + 2, side // 64 + 2))
        with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=count, dtype=dtype,
                           crs="EPSG:32632", transform=from_origin(500000, 4000000, 0.3, 0.3), tiled=True) as ds:
            for r in range(0, side, 512):
                h = min(512, side - r)
                if texture == "noise":
                    z = rng.normal(size=(count, h, side))
                else:
                    rr, cc = np.meshgrid(np.arange(r, r + h) / 64, np.arange(side) / 64, indexing="ij")
                    z = np.stack([map_coordinates(c, [rr, cc], order=1) for c in coarse])
                    z += 0.05 * rng.normal(size=z.shape)
                block = (np.clip(128 + 40 * z, 0, 255) if dtype == "uint8" else 10 + 5 * z).astype(dtype)
                ds.write(block, window=((r, r + h), (0, side)))
    return paths


def build_models(directory: Path) -> dict:
    """A demo pretraining checkpoint and a Vaihingen finetuning run directory (random weights)."""
    import numpy as np
    import torch

    from xgeo.config import load_params
    from xgeo.finetune.backbone import Backbone
    from xgeo.finetune.heads import UPerHead
    from xgeo.finetune.run import save_model
    from xgeo.finetune.tasks import FinetuneNet, InputSpec
    from xgeo.model import build_model
    from xgeo.model.checkpoint import save_checkpoint
    from xgeo.model.embed import adapt_embedding

    from types import SimpleNamespace

    torch.manual_seed(0)
    params = load_params(ROOT / "params.yaml")
    ckpt = directory / "last.ckpt"
    save_checkpoint(ckpt, build_model(params))
    model = build_model(params)
    model.patch_embeds["irrg"] = adapt_embedding(model, "irrg")
    model.set_input_size(64)
    backbone = Backbone(model, [InputSpec("irrg", "irrg", ("NIR", "R", "G")), InputSpec("dsm", "dsm", ("height",))],
                        2, 64)
    net = FinetuneNet(backbone, UPerHead(backbone.channels, 6, width=64)).eval()
    task = SimpleNamespace(image_size=64, protocol=None, ignore_index=255, out_bands=None, target_sensor=None,
                           class_names=CLASSES, spec=SimpleNamespace(extra={"colours": [(i * 40, 0, 0) for i in range(6)]}),
                           stats={"irrg": (np.array([120.0, 100, 90]), np.array([40.0, 30, 30])),
                                  "dsm": (np.array([10.0]), np.array([5.0]))})
    run = directory / "run"
    run.mkdir(exist_ok=True)
    save_model(run / "model.pt", net, task, "vaihingen")
    (run / "run.json").write_text(json.dumps({"task": "vaihingen"}))
    return {"ckpt": str(ckpt), "run": str(run)}


# ------------------------------------------------------------------------------------------------- one measurement
def _encoder(model: str, ckpt: str):
    import numpy as np
    import torch
    import torch.nn.functional as F

    import xgeo

    enc = xgeo.load(ckpt, stats={"rgb": (np.array([120.0, 110, 100]), np.array([50.0, 50, 50]))}, device="cpu")
    if model == "standin":
        proj = torch.nn.Conv2d(3, 256, 1)

        def features(x, sensor, bands=None):
            with torch.no_grad():
                return [None, None, None, proj(F.avg_pool2d(torch.as_tensor(x, dtype=torch.float32), 32))]

        enc.features = features
    return enc


def _predictor(model: str, run: str):
    import torch

    import xgeo

    pred = xgeo.load(run, device="cpu")
    if model == "standin":
        conv = torch.nn.Conv2d(4, 6, 1)

        def forward(xs):
            with torch.no_grad():
                return conv(torch.cat([torch.as_tensor(x, dtype=torch.float32) for x in xs], 1))

        pred.forward = forward
    return pred


def measure(args) -> dict:
    """Runs in the subprocess: one path (streamed | naive), one command (embed | predict), one scene."""
    import resource

    import numpy as np

    from xgeo.inference.align import InputSpec, Scene

    scenes, out = json.loads(args.scenes), Path(args.out)
    size, batch = args.window, args.batch
    model = _encoder(args.model, args.ckpt) if args.command == "embed" else _predictor(args.model, args.run)
    loaded = _vm("VmHWM")  # the process with torch and the model loaded, before the scene is touched
    started = time.perf_counter()
    if args.command == "embed":
        enc = model
        spec = [InputSpec("rgb", "rgb", scenes["rgb"], ("R", "G", "B"))]
        if args.path == "streamed":
            from xgeo.inference.embed import embed_scene

            info = embed_scene(enc, spec, out, window=size, batch_size=batch, overwrite=True, progress=False)
            windows = info["windows"]
        else:
            windows = _naive_embed(enc, spec[0], out, size, batch)
    else:
        pred = model
        if args.path == "streamed":
            from xgeo.inference.predict import predict_scene

            info = predict_scene(pred, {"irrg": scenes["irrg"], "dsm": scenes["dsm"]}, out, window=size,
                                 batch_size=batch, overwrite=True, progress=False)
            from xgeo.inference.windows import blend_grid

            with Scene([InputSpec("irrg", "irrg", scenes["irrg"], ("NIR", "R", "G"))]) as s:
                windows = len(blend_grid(s.height, s.width, size, info["stride"], info["margin"]))
        else:
            windows = _naive_predict(pred, scenes, out, size, batch)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "windows": windows, "loaded_mib": loaded,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "growth_mib": _vm("VmHWM") - loaded}


def _vm(field: str) -> float:
    """A /proc/self/status memory figure in MiB (VmHWM: peak resident set, VmRSS: current)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _naive_embed(enc, spec, out: Path, size: int, batch: int) -> int:
    """Read the whole scene, run the same windows in one loop into a full feature array, write it at once."""
    import math

    import numpy as np
    import rasterio

    from xgeo.data.stats import apply_value_convention
    from xgeo.sensors import get_sensor

    with rasterio.open(spec.path) as ds:
        raw, profile = ds.read(), ds.profile
    H, W = raw.shape[1:]
    x, _ = apply_value_convention(raw, get_sensor("rgb"))
    mean, std = enc.stats("rgb")
    x = (x - mean[:, None, None]) / std[:, None, None]
    pad = (math.ceil(H / size) * size - H, math.ceil(W / size) * size - W)
    x = np.pad(x, ((0, 0), (0, pad[0]), (0, pad[1])), mode="reflect")
    feats = np.zeros((256, x.shape[1] // 32, x.shape[2] // 32), np.float32)
    wins = [(r, c) for r in range(0, x.shape[1], size) for c in range(0, x.shape[2], size)]
    for i in range(0, len(wins), batch):
        chunk = wins[i:i + batch]
        f = enc.features(np.stack([x[:, r:r + size, c:c + size] for r, c in chunk]), "rgb")[3].numpy()
        for (r, c), m in zip(chunk, f):
            feats[:, r // 32:(r + size) // 32, c // 32:(c + size) // 32] = m
    profile.update(count=256, dtype="float32", width=feats.shape[2], height=feats.shape[1],
                   transform=profile["transform"] @ profile["transform"].scale(32))
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(feats)
    return len(wins)


def _naive_predict(pred, scenes, out: Path, size: int, batch: int) -> int:
    """Whole scene in memory, the same blended windows, full-scene accumulators, one write."""
    import numpy as np
    import rasterio

    from xgeo.inference.windows import blend_grid, blend_weight

    raws = {}
    for key in ("irrg", "dsm"):
        with rasterio.open(scenes[key]) as ds:
            raws[key], profile = ds.read().astype(np.float32), ds.profile
    H, W = raws["irrg"].shape[1:]
    margin, stride = size // 4, size // 2
    xs = {k: np.pad(pred.normalize(v[None], k)[0], ((0, 0), (margin, margin), (margin, margin)), mode="reflect")
          for k, v in raws.items()}
    acc = np.zeros((6, H + 2 * margin, W + 2 * margin), np.float32)
    wsum = np.zeros((H + 2 * margin, W + 2 * margin), np.float32)
    weight = blend_weight(size).astype(np.float32)
    wins = blend_grid(H, W, size, stride, margin)
    for i in range(0, len(wins), batch):
        chunk = wins[i:i + batch]
        batch_xs = [np.stack([xs[k][:, w.row + margin:w.row + margin + size, w.col + margin:w.col + margin + size]
                              for w in chunk]) for k in ("irrg", "dsm")]
        logits = pred.forward(batch_xs).float().numpy()
        for w, lg in zip(chunk, logits):
            acc[:, w.row + margin:w.row + margin + size, w.col + margin:w.col + margin + size] += lg * weight
            wsum[w.row + margin:w.row + margin + size, w.col + margin:w.col + margin + size] += weight
    cls = (acc / wsum)[:, margin:margin + H, margin:margin + W].argmax(0).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=255)
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(cls[None])
    return len(wins)


# ---------------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["standin", "demo"], default="standin")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="scene sides in px (default 1024 4096 8192; "
                                                                       "demo: 512 1024)")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--texture", choices=["smooth", "noise"], default="smooth",
                    help="synthetic scenes: a smooth random field (default) or independent pixels")
    ap.add_argument("--commands", nargs="+", choices=["embed", "predict"], default=["embed", "predict"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    for k in ("path", "command", "scenes", "out", "ckpt", "run"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    sizes = args.sizes or ([1024, 4096, 8192] if args.model == "standin" else [512, 1024])
    rows = []
    with tempfile.TemporaryDirectory(prefix="xgeo-bench-") as tmp:
        tmp = Path(tmp)
        models = build_models(tmp)
        for side in sizes:
            scenes = write_scenes(tmp, side, args.texture)
            for command in args.commands:
                for path in ("streamed", "naive"):
                    cmd = [sys.executable, "-W", "ignore", __file__, "--measure", "--model", args.model,
                           "--path", path, "--command", command, "--scenes", json.dumps(scenes),
                           "--out", str(tmp / f"{command}_{path}_{side}.tif"), "--ckpt", models["ckpt"],
                           "--run", models["run"], "--window", str(args.window), "--batch", str(args.batch)]
                    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                                    cwd=ROOT).stdout.strip().splitlines()[-1])
                    res.update(side=side, command=command, path=path,
                               windows_per_s=res["windows"] / res["seconds"])
                    rows.append(res)
                    print(f"{command:8s} {path:9s} {side:6d} px  {res['windows']:6d} windows  "
                          f"{res['windows_per_s']:8.1f} windows/s  peak RSS {res['peak_rss_mib']:7.0f} MiB "
                          f"(+{res['growth_mib']:.0f} over the loaded model)", flush=True)
    print(f"\nmodel: {args.model}, window {args.window}, batch {args.batch}, texture {args.texture}\n")
    print("| command | scene px | windows | streamed windows/s | naive windows/s | streamed / naive speed "
          "| streamed peak RSS MiB (growth) | naive peak RSS MiB (growth) | naive / streamed growth |")
    print("|---|---|---|---|---|---|---|---|---|")
    for side in sizes:
        for command in args.commands:
            s = next(r for r in rows if r["side"] == side and r["command"] == command and r["path"] == "streamed")
            n = next(r for r in rows if r["side"] == side and r["command"] == command and r["path"] == "naive")
            print(f"| {command} | {side} | {s['windows']} | {s['windows_per_s']:.1f} | {n['windows_per_s']:.1f} | "
                  f"{s['windows_per_s'] / n['windows_per_s']:.2f} | {s['peak_rss_mib']:.0f} (+{s['growth_mib']:.0f}) | "
                  f"{n['peak_rss_mib']:.0f} (+{n['growth_mib']:.0f}) | "
                  f"{n['growth_mib'] / max(s['growth_mib'], 1.0):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
