"""Samples per second of each downstream task's training step against a plain timm SwinV2 of the same size,
measured in the same run on the same batch.

XGeo: ``xgeo.finetune`` as ``xgeo finetune`` runs it (per-sensor / stacked patch embedding, SwinV2 + MoE encoder,
the task head, loss + MoE aux loss, AdamW with layer-wise decay). Baseline: ``timm``'s SwinV2 with the same
embed dim, depths, heads and window, ``in_chans`` = the task's stacked channels, no MoE, the same head, loss and
optimiser (for BigEarthNet the classifier is timm's norm + pool + linear, as the plain timm classifier). Both see
the same prepared batch; the data loading is not timed.

    .venv/bin/python benchmarks/finetune_step.py [--tasks bigearthnet vaihingen sen12ms-cr spacenet2]
        [--size demo] [--batch 8] [--steps 5] [--stores DIR (default: tiny synthetic stores in a temp dir)]
        [--device cpu|cuda] [--json OUT]

On CUDA both networks run under bf16 autocast (as ``finetune.amp: auto`` does there) and each step is synchronised
before the clock is read; the peak of the CUDA allocator over the timed steps is reported per network.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL = [
    "data.datasets.bigearthnet.synth.patches={train: 16, val: 4, test: 4}",
    "data.datasets.vaihingen.synth.size=[96, 128]",
    "data.datasets.sen12ms-cr.synth.patches_per_roi=1",
    "data.datasets.spacenet2.synth.images_per_aoi=8",
    "data.datasets.spacenet2.synth.pan_size=64",
]


def make_stores(directory: Path, tasks) -> Path:
    from xgeo.config import load_params
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize

    params = load_params(ROOT / "params.yaml", SMALL)
    for ds in tasks:
        synthesize(ds, directory / "raw" / ds, params, seed=0)
        convert(ds, directory / "raw" / ds, directory / "zarr" / f"{ds}.zarr", params)
    return directory / "zarr"


def timm_backbone(net, in_chans: int, img: int):
    """A plain timm SwinV2 with the XGeo encoder's embed dim, depths, heads and window."""
    import timm
    import torch
    from torch import nn

    from xgeo.finetune.loop import stage_depths

    enc = net.backbone.model.encoder
    blocks = [layer.blocks[0] for layer in enc.layers]
    heads = tuple(int(b.attn.num_heads) for b in blocks)
    window = max(int(w) for b in blocks for w in b.window_size)
    embed_dim = int(net.backbone.channels[0]) // (2 if net.backbone.method == 1 and len(net.backbone.inputs) > 1 else 1)

    class TimmBackbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=img,
                                             window_size=window, embed_dim=embed_dim, depths=tuple(stage_depths(net)),
                                             num_heads=heads, in_chans=in_chans, num_classes=0)

        def forward(self, xs):
            return self.encoder.forward_intermediates(torch.cat(xs, 1), intermediates_only=True), torch.zeros(())

    return TimmBackbone()


def measure(task_name: str, params, batch_size: int, steps: int, device: str = "cpu") -> dict:
    import contextlib

    import torch

    from xgeo.finetune.backbone import build_backbone
    from xgeo.finetune.loop import make_optimizer
    from xgeo.finetune.tasks import FinetuneNet, get_task

    torch.manual_seed(0)
    t = get_task(task_name, params)
    ds = t.make_dataset("train")
    t.bind(ds)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=False)))
    n = int(batch["index"].shape[0])
    backbone, _ = build_backbone("random", params, t.input_specs(), t.image_size, t.s)
    xgeo = FinetuneNet(backbone, t.build_head(backbone.channels))
    in_chans = sum(len(i.bands) for i in t.input_specs())
    plain_backbone = timm_backbone(xgeo, in_chans, t.image_size)
    plain = FinetuneNet(plain_backbone, t.build_head([f.shape[1] for f in plain_backbone(
        [torch.zeros(1, len(i.bands), t.image_size, t.image_size) for i in t.input_specs()])[0]]))
    settings = dict(t.s, steps=steps, warmup_steps=0)
    dev = torch.device(device)
    batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
    cuda = dev.type == "cuda"
    out = {"task": task_name, "batch": n, "image_size": t.image_size, "in_chans": in_chans, "device": device}
    for name, net in (("xgeo", xgeo), ("timm_swinv2", plain)):
        net.to(dev)
        opt = make_optimizer(net, settings)
        net.train()

        def step():
            amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
            with amp:
                loss, aux = t.step_loss(net, batch)
            opt.zero_grad(set_to_none=True)
            (loss + aux).backward()
            opt.step()

        for _ in range(3 if cuda else 1):  # warm-up: allocator, lazy init, cuBLAS / cuDNN plans
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        out[name] = {"samples_per_s": n / seconds, "step_s": seconds,
                     "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                     "params_M": sum(p.numel() for p in net.parameters()) / 1e6}
        net.to("cpu")
        del opt
        if cuda:
            torch.cuda.empty_cache()
    out["ratio"] = out["xgeo"]["samples_per_s"] / out["timm_swinv2"]["samples_per_s"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["bigearthnet", "vaihingen", "sen12ms-cr", "spacenet2"])
    ap.add_argument("--size", default="demo")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--stores", type=Path, default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a key of params.yaml (repeatable), e.g. --set profile=paper")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    from xgeo.config import load_params

    with tempfile.TemporaryDirectory() as tmp:
        stores = args.stores or make_stores(Path(tmp), args.tasks)
        params = load_params(ROOT / "params.yaml", [f"paths.zarr={stores}", f"model.size={args.size}",
                                                    "mlflow.enabled=false", *args.overrides])
        rows = [measure(task, params, args.batch, args.steps, args.device) for task in args.tasks]
    where = torch.cuda.get_device_name() + ", bf16 autocast" if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, model size {args.size}")
    print("| task | batch | px | in ch | XGeo samples/s | timm SwinV2 samples/s | XGeo / timm | params M (XGeo / timm) "
          "| peak MiB (XGeo / timm) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = (f"{r['xgeo']['peak_mem_mib']:.0f} / {r['timm_swinv2']['peak_mem_mib']:.0f}"
               if r["xgeo"]["peak_mem_mib"] is not None else "-")
        print(f"| {r['task']} | {r['batch']} | {r['image_size']} | {r['in_chans']} | {r['xgeo']['samples_per_s']:.1f} | "
              f"{r['timm_swinv2']['samples_per_s']:.1f} | {r['ratio']:.2f} | "
              f"{r['xgeo']['params_M']:.2f} / {r['timm_swinv2']['params_M']:.2f} | {mem} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
