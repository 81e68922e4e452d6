"""``xgeo finetune TASK --init INIT --out DIR``: finetune and evaluate one downstream task.

Writes (atomically) ``DIR/metrics.json`` (the task's metrics under the names of the paper's tables: ``mAP_micro``,
``mAP_macro``, ``mIoU``, ``OA``, ``MAE``, ``SAM``, ``SSIM``, ``PSNR``, plus per-class / per-band scores),
``DIR/predictions.npz`` (the evaluation set's targets and outputs, or a fixed sample of tiles for dense tasks;
``xgeo.metrics.from_predictions`` recomputes the metrics from it) and ``DIR/run.json`` (mlflow_run_id, task, init,
fraction, experiment, protocol, steps, seconds). Logs params, metrics, per-class scores and the qualitative
figures to MLflow (experiment ``finetune``).
"""
from __future__ import annotations

import io
import json
import math
import re
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .. import tracking
from ..io import write_bytes, write_json
from ..runtime import configure as configure_runtime
from ..provenance import digest, finetune_settings
from .backbone import build_backbone, resolve_init
from .loop import train
from .tasks import FinetuneNet, get_task, task_settings

EXPERIMENT = "finetune"


def _jsonable(obj):
    """NaN / inf -> None (strict JSON); numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _numeric(metrics: Mapping, prefix: str = "") -> dict:
    """The finite numbers of a metrics dict, flattened with '.' (for MLflow, whose names allow only
    alphanumerics and _ - . space : /; BigEarthNet's class names have commas)."""
    out = {}
    for k, v in metrics.items():
        k = re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(k))
        if isinstance(v, Mapping):
            out.update(_numeric(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[f"{prefix}{k}"] = float(v)
    return out


def _loader(ds, batch_size: int, shuffle: bool, params: Mapping, drop_last: bool = False):
    gen = torch.Generator().manual_seed(int(params.get("seed", 0)))
    workers = int(params["finetune"].get("num_workers", 0))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       num_workers=workers, drop_last=drop_last)


def finetune(task: str, init: str, out: Path, params: Mapping, fraction: float | None = None,
             steps: int | None = None) -> dict:
    """Finetune ``task`` from ``init`` and evaluate it; returns the metrics dict written to ``out/metrics.json``.

    task: bigearthnet | vaihingen | sen12ms-cr | spacenet2; init: random | PATH of an xgeo checkpoint | PATH of a
    timm Swin/SwinV2 state dict | a name of ``finetune.weights``; fraction: of the training split (BigEarthNet);
    steps: optimiser steps (default: the task's ``steps``, or ``epochs`` x steps per epoch); 0 evaluates the
    initialised network untrained.
    """
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configure_runtime(params, "cpu")  # finetuning runs on the CPU
    torch.manual_seed(int(params.get("seed", 0)))
    t = get_task(task, params)
    s = t.s
    train_idx, subset = t.train_indices(fraction, out)
    train_ds = t.make_dataset("train", train_idx)
    t.bind(train_ds)
    eval_ds = t.make_dataset(t.eval_split())
    if len(eval_ds) == 0:
        from ..errors import DataError

        raise DataError(f"{t.path}: the evaluation split {t.eval_split()!r} has no samples")
    total, warm = t.steps_for(len(train_ds))
    total = total if steps is None else int(steps)
    settings = dict(s, warmup_steps=min(warm, total), steps=total)

    backbone, init_info = build_backbone(init, params, t.input_specs(), t.image_size, t.s)
    # provenance: every setting that shaped this run (xgeo.provenance); the table builder checks it
    kind, weights = resolve_init(init, params)
    shaped_by = finetune_settings(params, task, None if kind == "random" else weights, fraction, steps)
    shaped_digest = digest(shaped_by)
    net = FinetuneNet(backbone, t.build_head(backbone.channels))
    def step_loss(batch):
        loss, aux = t.step_loss(net, batch)
        return loss + aux  # the model's aux loss is already weighted (model.moe.aux_weight)

    batch_size = min(int(s["batch_size"]), len(train_ds))
    run_name = f"{task}/{init_info['init']}/" + (f"f{subset['fraction']}" if subset.get("fraction") is not None
                                                  else subset.get("subset", "all").replace(" ", "_")) \
        + f"/seed{params.get('seed', 0)}"
    tags = {"xgeo.stage": "finetune", "xgeo.task": task, "xgeo.init": init_info["init"],
            "xgeo.fraction": subset.get("fraction"), "xgeo.protocol": t.protocol, "xgeo.seed": params.get("seed"),
            "xgeo.settings_digest": shaped_digest}
    with tracking.start_run(params, experiment=EXPERIMENT, run_name=run_name,
                            tags={k: v for k, v in tags.items() if v is not None}) as run:
        run.log_params({"task": task, "init": init, "steps": total, "finetune": settings, "model": params["model"],
                        "subset": subset, "protocol": t.protocol, "seed": params.get("seed"),
                        "settings_digest": shaped_digest})
        # the store this run read, once per split, as MLflow dataset inputs (digest of the store's root metadata:
        # split sizes, statistics, modalities)
        from ..provenance import file_digest

        store_digest = (file_digest(t.path / "zarr.json") or "unknown")[:16]
        run.log_input(f"{t.dataset}:train", store_digest, "train", len(train_ds), t.path)
        run.log_input(f"{t.dataset}:{t.eval_split()}", store_digest, t.eval_split(), len(eval_ds), t.path)
        losses = train(net, step_loss, _loader(train_ds, batch_size, True, params, drop_last=True), settings, total,
                       desc=f"finetune {task}", log=run.log_metrics, log_every=int(params["finetune"].get("log_every", 10)))
        result, arrays, figures = t.evaluate(net, eval_ds, _loader(eval_ds, int(params["finetune"]["eval_batch_size"]),
                                                                  False, params), out)
        result = dict(result, task=task, protocol=t.protocol, metric=t.metric,
                      final_train_loss=losses[-1] if losses else None)
        run.log_metrics(_numeric(result))
        for fig, name in figures:
            run.log_figure(fig, name)
            import matplotlib.pyplot as plt

            plt.close(fig)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        write_bytes(out / "predictions.npz", buf.getvalue())
        write_json(out / "metrics.json", _jsonable(result))
        run.log_artifact(out / "metrics.json")
        info = {"mlflow_run_id": run.run_id, "task": task, "init": init, "init_kind": init_info["kind"],
                "fraction": subset.get("fraction"), "subset": subset, "experiment": params.get("experiment"),
                "protocol": t.protocol, "steps": total, "seconds": round(time.time() - started, 2),
                "method": s.get("method"), "inputs": [i.key for i in t.input_specs()], "adapted": init_info["adapted"],
                "profile": params.get("profile"), "seed": params.get("seed"),
                "train_samples": int(len(train_ds)), "eval_samples": int(len(eval_ds)),
                "settings": shaped_by, "settings_digest": shaped_digest}
        write_json(out / "run.json", _jsonable(info))
    return result
