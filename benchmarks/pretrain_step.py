"""Cost of one XGeo pretraining step (MoE, every sensor group, cross-sensor targets) against a dense single-sensor
SimMIM SwinV2 of the same width, measured in the same run, at demo and paper width.

Both models come from ``xgeo.model.build_model``: XGeo as configured; the dense baseline with ``moe.enabled:
false`` and the RGB sensor only, i.e. SimMIM on SwinV2. Both take the same optimizer step (``CrossSensorObjective``,
AdamW, clipping). The XGeo batch holds every group of ``pretrain.groups`` (a co-located sample is two images, each
through the encoder); the dense batch holds as many RGB images. Cost per image = 1 / (images per second).

    .venv/bin/python benchmarks/pretrain_step.py [--configs demo:params demo:table11 paper:rgb=2,sen12ms=1,mdas=1]
        [--steps 3] [--device cpu|cuda] [--allocator tuned|system] [--json OUT]

A configuration is ``size:batch``; batch is ``params`` (params.yaml's per-group batch), ``table11`` (the per-GPU
batch of overlays/paper.yaml: 128 RGB, 32 SEN12MS pairs, 12 MDAS pairs) or ``group=n,...``.

Timing: both models in one process, their steps interleaved, median per model (robust on a shared machine).
Peak memory: one step per model in a fresh process (RSS growth on the CPU, allocator peak on CUDA).
On CUDA, FLOPs of one step are counted with torch.utils.flop_counter and reported as model-FLOPs utilisation.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bf16 dense peak of the GPUs the project may be lent (vendor datasheets, dense tensor cores)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _params(size: str, dense: bool, batch: dict[str, int] | None):
    from xgeo.config import load_params

    overrides = [f"model.size={size}", "mlflow.enabled=false"]
    if size == "paper":
        overrides.append("pretrain.mask_patch=32")
    if dense:
        overrides += ["model.moe.enabled=false", "model.sensors=[rgb]"]
    params = load_params(ROOT / "params.yaml", overrides)
    if batch:
        for g, b in batch.items():
            params["pretrain"]["groups"][g]["batch_size"] = b
    return params


def _img_size(params) -> int:
    from xgeo.model.xgeo import MODEL_SIZES

    spec = MODEL_SIZES[params["model"]["size"]]
    return int(spec["img_size"] if isinstance(spec, dict) else getattr(spec, "img_size"))


def _batch(params, dense: bool, device, img: int):
    """A synthetic step batch in the layout of StepData: images, masks, cross choices per group."""
    import numpy as np
    import torch

    from xgeo.catalog import get_dataset
    from xgeo.pretrain.masking import MaskGenerator, choose_cross
    from xgeo.pretrain.data import GroupLayout
    from xgeo.sensors import get_sensor

    cfg = params["pretrain"]
    rng = np.random.default_rng(0)
    gen = MaskGenerator(img, cfg["mask_patch"], 4, cfg["mask_ratio"])
    layouts, batch = {}, {}
    groups = cfg["groups"]
    if dense:
        images = sum(g["batch_size"] * len(get_dataset(g["datasets"][0]).modalities) for g in groups.values())
        layouts["rgb"] = GroupLayout("rgb", {"rgb": "rgb"}, {})
        batch["rgb"] = {"images": {"rgb": torch.randn(images, 3, img, img)},
                        "masks": {"rgb": torch.from_numpy(gen(rng, images))}, "cross": {}, "count": images}
    else:
        for name, g in groups.items():
            spec = get_dataset(g["datasets"][0])
            sensors = {k: m.sensor for k, m in spec.modalities.items()}
            partner = {}
            for a, b in spec.pairs:
                partner[a], partner[b] = b, a
            layouts[name] = GroupLayout(name, sensors, partner)
            n = g["batch_size"]
            batch[name] = {
                "images": {k: torch.randn(n, get_sensor(s).num_bands, img, img) for k, s in sensors.items()},
                "masks": {k: torch.from_numpy(gen(rng, n)) for k in sensors},
                "cross": {k: torch.from_numpy(choose_cross(rng, n, cfg["cross_ratio"])) for k in partner},
                "count": n,
            }
    from xgeo.pretrain.data import to_device

    images = sum(len(gb["images"]) * gb["count"] for gb in batch.values())
    return layouts, to_device(batch, device), images


def _setup(size: str, dense: bool, device, batch: dict | None, allocator: str):
    """Model, objective, optimizer and one synthetic step batch; returns (step function, images per step, model)."""
    import torch

    from xgeo.model import build_model
    from xgeo.pretrain.objective import CrossSensorObjective
    from xgeo.pretrain.optim import make_optimizer
    from xgeo.pretrain.train import _autocast
    from xgeo.runtime import configure

    torch.manual_seed(0)
    params = _params(size, dense, batch)
    params["runtime"] = {"cpu_allocator": allocator}
    configure(params, device.type)  # as `xgeo pretrain` does, before the model's tensors exist
    img = _img_size(params)
    model = build_model(params).to(device)
    layouts, data, images = _batch(params, dense, device, img)
    groups = params["pretrain"]["groups"]
    first = next(iter(groups.values()))["batch_size"]
    weights = {g: groups.get(g, {"batch_size": first})["batch_size"] / first for g in layouts}
    objective = CrossSensorObjective(model, layouts, weights)
    opt = make_optimizer(objective, params["pretrain"])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> tuple[float, float]:
        """One training step; returns (seconds of forward + backward, seconds of clipping + AdamW)."""
        t0 = time.perf_counter()
        with _autocast("auto", device):
            loss, _ = objective(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 5.0)
        opt.step()
        sync()
        return t1 - t0, time.perf_counter() - t1

    return step, images, model


def measure_time(size: str, steps: int, warmup: int, device_name: str, batch: dict | None, allocator: str,
                 queue) -> None:
    """Both models in one process, their steps interleaved (A B A B ...): a busy shared machine slows both alike.
    Median seconds per step of each, after ``warmup`` untimed steps of each (at paper width on the CPU the first
    three steps of XGeo run 1.3-3x slower than the later ones while the heap and oneDNN's caches fill)."""
    import statistics

    import torch

    device = torch.device(device_name)
    runs = {dense: _setup(size, dense, device, batch, allocator) for dense in (False, True)}
    out = {}
    for dense, (step, images, model) in runs.items():
        flops = None
        if device.type == "cuda":
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                step()
            flops = counter.get_total_flops()
        out[dense] = {"fwd_bwd": [], "opt": [], "images": images, "flops": flops,
                      "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    for _ in range(warmup):  # allocations, oneDNN / cuBLAS plans
        for step, _, _ in runs.values():
            step()
    for _ in range(steps):
        for dense, (step, _, _) in runs.items():
            fb, op = step()
            out[dense]["fwd_bwd"].append(fb)
            out[dense]["opt"].append(op)
    queue.put({dense: {"images": v["images"], "flops": v["flops"], "params_m": v["params_m"],
                       "fwd_bwd_s": statistics.median(v["fwd_bwd"]), "opt_s": statistics.median(v["opt"])}
               for dense, v in out.items()})


def measure_memory(size: str, dense: bool, device_name: str, batch: dict | None, allocator: str, queue) -> None:
    """Peak memory of one step in a fresh process: CUDA allocator peak, or RSS growth over the step on the CPU."""
    import torch

    device = torch.device(device_name)
    step, _, _ = _setup(size, dense, device, batch, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    if device.type == "cuda":
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
    else:
        queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)


def _in_subprocess(func, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=func, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def table11_groups() -> dict:
    """pretrain.groups of params.yaml with overlays/paper.yaml (Table 11's per-GPU batch)."""
    from xgeo.config import deep_merge, load_params, read_yaml

    return deep_merge(load_params(ROOT / "params.yaml"), read_yaml(ROOT / "overlays" / "paper.yaml"))["pretrain"]["groups"]


def paper_images_per_step(dense: bool) -> int:
    """Images one GPU encodes per step at Table 11's batch (a co-located sample is two images)."""
    from xgeo.catalog import get_dataset

    return sum(g["batch_size"] * len(get_dataset(g["datasets"][0]).modalities) for g in table11_groups().values())


def run(size: str, steps: int, warmup: int, device: str, batch, allocator: str = "tuned") -> list[dict]:
    timing = _in_subprocess(measure_time, size, steps, warmup, device, batch, allocator)
    rows = []
    for dense in (False, True):
        t = timing[dense]
        step_s = t["fwd_bwd_s"] + t["opt_s"]
        full = paper_images_per_step(dense)
        rows.append({
            "size": size, "model": "dense SimMIM SwinV2 (rgb)" if dense else "XGeo (MoE, all groups)",
            "images_per_step": t["images"], "s_per_step": step_s, "images_per_s": t["images"] / step_s,
            "fwd_bwd_ms_per_image": 1e3 * t["fwd_bwd_s"] / t["images"], "optimizer_s": t["opt_s"],
            # the optimizer's cost is per step (it scales with parameters, not images): spread over the paper's batch
            "ms_per_image_at_paper_batch": 1e3 * (t["fwd_bwd_s"] / t["images"] + t["opt_s"] / full),
            "peak_mem_mib": _in_subprocess(measure_memory, size, dense, device, batch, allocator),
            "params_m": t["params_m"], "flops_per_step": t["flops"], "device": device, "batch": batch,
            "allocator": allocator,
        })
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["demo:params", "demo:table11", "paper:rgb=2,sen12ms=1,mdas=1"],
                    help="size:batch, batch = params | table11 | group=n,...")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--paper-steps", type=int, default=4, help="timed steps at paper width on the CPU")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of each model before the timed ones")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--allocator", default="tuned", choices=["tuned", "system"], help="runtime.cpu_allocator")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    def parse(text):
        if text == "params":
            return None
        if text == "table11":
            return {g: v["batch_size"] for g, v in table11_groups().items()}
        try:
            return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}
        except ValueError:
            ap.error(f"--configs: batch {text!r}; expected params, table11 or group=n,... (e.g. rgb=2,sen12ms=1)")

    rows = []
    for config in args.configs:
        size, _, text = config.partition(":")
        batch = parse(text or "params")
        steps = args.paper_steps if (size == "paper" and args.device == "cpu") else args.steps
        pair = run(size, steps, args.warmup, args.device, batch, args.allocator)
        ratios = {k: pair[0][k] / pair[1][k] for k in ("fwd_bwd_ms_per_image", "ms_per_image_at_paper_batch")}
        ratios["step_per_image"] = pair[1]["images_per_s"] / pair[0]["images_per_s"]
        for r in pair:
            r["xgeo_over_dense"] = ratios
            if r["flops_per_step"]:
                import torch

                peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
                if peak:
                    r["mfu"] = r["flops_per_step"] / r["s_per_step"] / (peak * 1e12)
            rows.append(r)
            print(f"{config:32s} {r['model']:27s} {r['images_per_step']:4d} img/step {r['s_per_step']:7.3f} s/step "
                  f"({r['images_per_s']:7.2f} img/s; fwd+bwd {r['fwd_bwd_ms_per_image']:7.1f} ms/img, AdamW "
                  f"{r['optimizer_s']:6.3f} s/step; {r['ms_per_image_at_paper_batch']:7.1f} ms/img at the paper batch)"
                  f"  peak {r['peak_mem_mib']:6.0f} MiB  params {r['params_m']:6.1f} M"
                  + (f"  MFU {r['mfu']:.1%}" if r.get("mfu") else ""), flush=True)
        print(f"{config:32s} XGeo / dense cost per image: whole step at this batch {ratios['step_per_image']:.2f}, "
              f"fwd+bwd {ratios['fwd_bwd_ms_per_image']:.2f}, at the paper batch "
              f"{ratios['ms_per_image_at_paper_batch']:.2f} (goal <= 1.15)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
