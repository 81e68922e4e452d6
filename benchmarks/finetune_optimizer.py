"""Cost of one AdamW step of the finetuning optimiser (``xgeo.finetune.loop.make_optimizer``: layer-wise lr decay
groups) on the demo-size XGeo encoder, with torch's three AdamW implementations, measured in the same run.

On the CPU, ``torch.optim.AdamW`` with ``foreach=None`` (what ``make_optimizer`` builds) runs the per-tensor loop
(``_single_tensor_adam``); ``foreach=True`` batches the tensors of a group; ``fused=True`` is one kernel per group.
A profile of one default BigEarthNet finetuning run (300 steps) put 14 % of its time in ``_single_tensor_adam``.

    .venv/bin/python -W ignore benchmarks/finetune_optimizer.py [--steps 50] [--threads 1]
        [--whole-run ZARR_DIR]   # also one `xgeo finetune bigearthnet --fraction 0.1` per implementation on the
                                 # stores in ZARR_DIR (default default and fused; seconds and mAP of each)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--whole-run", default=None, help="Zarr directory of the default stores (bigearthnet.zarr)")
    args = ap.parse_args()
    import torch

    from xgeo.config import load_params
    from xgeo.finetune.loop import param_groups
    from xgeo.finetune.tasks import task_settings
    from xgeo.model import build_model

    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml")
    s = task_settings(params, "bigearthnet")
    model = build_model(params)
    groups = param_groups(model, float(s["weight_decay"]), float(s["layer_decay"]))
    n = sum(p.numel() for g in groups for p in g["params"])
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    rows = []
    for label, kw in (("default (single tensor)", {}), ("foreach=True", {"foreach": True}), ("fused=True", {"fused": True})):
        opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=float(s["lr"]),
                                betas=tuple(s["betas"]), eps=float(s["eps"]), **kw)
        for _ in range(3):
            opt.step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            opt.step()
        rows.append((label, (time.perf_counter() - t0) / args.steps * 1000))
    base = rows[0][1]
    print(f"AdamW step, demo XGeo encoder ({n / 1e6:.2f} M parameters, {len(groups)} groups), "
          f"{args.threads} thread(s), {args.steps} steps")
    print("| implementation | ms / step | speed-up vs default |")
    print("|---|---|---|")
    for label, ms in rows:
        print(f"| {label} | {ms:.2f} | {base / ms:.2f}x |")
    if args.whole_run:
        whole_run(params, args.whole_run)


def whole_run(params, zarr_dir: str) -> None:
    """One BigEarthNet 10 % finetuning run (300 steps) with make_optimizer as it is and with fused=True."""
    import tempfile

    import torch

    from xgeo.config import apply_overrides
    from xgeo.finetune import loop, run

    p = apply_overrides(params, [f"paths.zarr={zarr_dir}", "mlflow.enabled=false"])
    original = loop.make_optimizer

    def fused(model, s):
        groups = loop.param_groups(model, float(s["weight_decay"]), float(s["layer_decay"]))
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=float(s["lr"]),
                                 betas=tuple(s["betas"]), eps=float(s["eps"]), fused=True)

    rows = []
    for label, make in (("default (single tensor)", original), ("fused=True", fused)):
        loop.make_optimizer = make
        try:
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                m = run.finetune("bigearthnet", "random", Path(out), p, fraction=0.1)
                rows.append((label, time.perf_counter() - t0, m["mAP_micro"]))
        finally:
            loop.make_optimizer = original
    print("| BigEarthNet 10 % run, 300 steps | seconds | speed-up | mAP_micro |")
    print("|---|---|---|---|")
    for label, sec, m in rows:
        print(f"| {label} | {sec:.1f} | {rows[0][1] / sec:.2f}x | {m:.4f} |")


if __name__ == "__main__":
    main()
