"""Cross-sensor MoE SimMIM pretraining (paper, sections 3-4, appendix B, Table 11): ``xgeo pretrain``.

The loop: setup -> step -> log -> checkpoint. Each part has its home:

- ``data``: store and group layouts, the step batches (RandomResizedCrop to the model's input, flips, masks, pairs);
- ``sampler``: which samples each step reads (heterogeneous / homogeneous batching);
- ``objective`` / ``distill``: the loss of a step (Eq. 1 / 2, per-group weights; Table 5's distillation);
- ``optim`` / ``schedule``: AdamW, epochs -> steps, warm-up and milestones;
- ``state``: ``last.ckpt`` (model, optimizer, scheduler, sampler, every rank's RNG) and the resume check;
- ``metrics``: ``metrics.jsonl`` and MLflow records; ``figures``: Figure 4.

The per-step randomness of the data (which samples, crops, flips, masks, cross-sensor choices) is drawn from
generators seeded by (seed, step, rank), never from global state, so a resumed run repeats an uninterrupted one.
Tests hook in through ``on_step``, a callback called after every optimizer step.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, TrainingError, XGeoError
from ..io import atomic_path, write_text
from ..runtime import configure as configure_runtime
from . import distributed as dist_utils
from . import state as run_state
from .data import (NonFiniteInput, StepData, check_against_model, group_layouts, read_store_attrs, small_tiles,
                   step_batches, to_device)
from .metrics import METRICS_NAME, MetricsLog, log_record, mlflow_metrics
from .objective import CrossSensorObjective, group_weights
from .optim import make_optimizer
from .sampler import Group, PretrainSampler
from .schedule import WarmupMultiStep, resolve_schedule

CKPT_NAME = run_state.CKPT_NAME
FIGURES_DIR = "figures"
StepCallback = Callable[[int, nn.Module, dist_utils.DistInfo], None]


def pretrain(params: dict, out: Path, steps: int | None = None, checkpoint_every: int | None = None,
             resume: bool = False, on_step: StepCallback | None = None) -> dict:
    """Pretrain from the stores of ``pretrain.groups`` into ``out`` (``last.ckpt``, ``metrics.jsonl``, ``figures/``).

    ``steps`` overrides the schedule's total (``xgeo pretrain --steps``); ``on_step(step, model, info)`` is called
    after every step (tests: parameter checksums, a kill). Returns {"step", "loss", "checkpoint", "metrics",
    "mlflow_run_id", "schedule"}.
    """
    from .groups import effective_groups

    out = Path(out)
    # the groups restricted to model.sensors (Table 10's modality subsets are one model.sensors override)
    params = dict(params, pretrain=dict(params["pretrain"], groups=effective_groups(params)))
    cfg = params["pretrain"]
    ckpt_path = out / CKPT_NAME

    # ---- inputs first: nothing is written before every check has passed
    datasets_needed = [ds for g in cfg["groups"].values() for ds in g["datasets"]]
    stores = {ds: read_store_attrs(params, ds) for ds in dict.fromkeys(datasets_needed)}
    layouts = group_layouts(params, stores)
    ckpt = None
    if resume:
        ckpt = run_state.load_checkpoint_file(ckpt_path)
        run_state.check_resumable(ckpt_path, ckpt, params)
    elif ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path} exists; pass --resume to continue that run, or choose another --out")

    info = dist_utils.init_distributed()
    try:
        return _run(params, out, stores, layouts, ckpt, info, steps, checkpoint_every, on_step)
    finally:
        dist_utils.shutdown(info)


def make_objective(params: dict, model: nn.Module, layouts, weights) -> nn.Module:
    """The objective of ``pretrain.objective``: simmim (the paper's), distill or eva (Table 5)."""
    objective = params["pretrain"].get("objective", "simmim")
    if objective == "simmim":
        return CrossSensorObjective(model, layouts, weights)
    if objective in ("distill", "eva"):
        from .distill import make_distill_objective

        return make_distill_objective(params, model, layouts, weights)
    raise XGeoError(f"params pretrain.objective: expected simmim | distill | eva, found {objective!r}")


def _run(params, out, stores, layouts, ckpt, info, steps, checkpoint_every, on_step) -> dict:
    from ..data.dataset import ZarrDataset
    from ..model import build_model

    cfg = params["pretrain"]
    seed = int(params["seed"])
    device = info.device
    configure_runtime(params, device.type)

    # ---- setup: model, data, objective, optimizer, schedule, state
    torch.manual_seed(seed)  # identical initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = build_model(params).to(device)
    check_against_model(model, stores, layouts, params)
    if info.is_main:
        for line in small_tiles(stores, layouts, params, model.img_size):
            warnings.warn(line, stacklevel=1)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{out / CKPT_NAME}: model weights do not fit this model ({exc})") from None

    augment_on = cfg.get("augment_on", "loader")  # device: the loader returns raw tiles, finished on `device`
    datasets = {ds: ZarrDataset(stores[ds]["path"], modalities=list(layouts[g].sensors), split=None,
                                raw=augment_on == "device")
                for g, c in cfg["groups"].items() for ds in c["datasets"]}
    groups = [Group(g, tuple(c["datasets"]), tuple(len(datasets[d]) for d in c["datasets"]), int(c["batch_size"]))
              for g, c in cfg["groups"].items()]
    sampler = PretrainSampler(groups, seed=seed, mode=cfg.get("batching", "heterogeneous"), rank=info.rank,
                              world_size=info.world_size)
    schedule = resolve_schedule(params, sampler.steps_per_epoch)
    total_steps = int(steps if steps is not None else schedule["total_steps"])
    ckpt_every = int(checkpoint_every if checkpoint_every is not None else cfg["checkpoint_every"])
    log_every = max(1, int(cfg.get("log_every", 1)))
    weights = group_weights({g.name: g.batch_size for g in groups})
    data = StepData(sampler, datasets, layouts, int(cfg["mask_patch"]), int(model.config["patch_size"]),
                    float(cfg["mask_ratio"]), float(cfg["cross_ratio"]), seed, info.rank, total_steps,
                    img_size=model.img_size, crop=cfg.get("crop"), augment_on=augment_on)

    objective = make_objective(params, model, layouts, weights)
    backend = params["model"].get("moe", {}).get("backend", "native")
    ignore = [f"model.{n}" for n in dist_utils.expert_parameter_names(model, backend)]
    step_module = dist_utils.wrap_ddp(objective, info, ignore)
    if cfg.get("compile"):
        step_module = torch.compile(step_module)
    optimizer = make_optimizer(objective, cfg)
    lr_factor = WarmupMultiStep(float(cfg["base_lr"]), float(cfg["warmup_lr"]), schedule["warmup_steps"],
                                schedule["milestones"], float(cfg["gamma"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    if ckpt is not None:
        start = run_state.restore(out / CKPT_NAME, ckpt, objective, optimizer, scheduler, sampler, info)
    else:
        start = 0
        # per-rank streams for what the model itself draws (MoE gate noise, drop path)
        torch.manual_seed(int(np.random.SeedSequence([seed, info.rank, 2]).generate_state(1)[0]))

    metrics = MetricsLog(out / METRICS_NAME)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        metrics.truncate(start) if ckpt is not None else write_text(metrics.path, "")
    dist_utils.barrier(info)

    from .. import tracking

    amp = str(cfg.get("amp", "auto"))
    clip = float(cfg.get("clip_grad") or 0.0)
    params_list = [p for p in objective.parameters() if p.requires_grad]
    last_good = start
    result = {"step": start, "loss": None, "checkpoint": str(out / CKPT_NAME), "metrics": str(metrics.path),
              "mlflow_run_id": None, "schedule": {**schedule, "total_steps": total_steps}}

    run_ctx = (tracking.start_run(params, experiment="pretrain", run_name=params.get("experiment") or out.name,
                                  tags={"xgeo.stage": "pretrain", "xgeo.out": str(out), "xgeo.resumed_from": start})
               if info.is_main else contextlib.nullcontext(tracking.NoOpRun()))
    with run_ctx as run:
        result["mlflow_run_id"] = run.run_id
        run.log_params(params)
        progress = _progress(info, start, total_steps)
        t0, seen = time.perf_counter(), 0
        batches = step_batches(data, start, total_steps, int(cfg.get("num_workers", 0)), seed)
        for step in range(start, total_steps):
            # ---- step
            try:
                batch, problem = data.finish(to_device(next(batches), device)), None
            except NonFiniteInput as exc:  # bad data: stop before the model sees it
                batch, problem = None, str(exc)
            if batch is not None:
                model.train()
                with _autocast(amp, device):
                    loss, logs = step_module(batch)
                bad = _non_finite(loss, logs, batch, layouts)
                if bad is not None:
                    problem = f"step {step + 1}: non-finite loss" + (f" for sensor {bad!r}" if bad else "")
            if dist_utils.any_flag(info, problem is not None):  # every rank stops at the same step
                raise TrainingError(
                    f"{problem or f'step {step + 1}: non-finite loss on another rank'}; training stopped, the last "
                    f"good checkpoint {out / CKPT_NAME} (step {last_good}) is kept. Check that sensor's data "
                    f"(store statistics, NaN/inf) or lower pretrain.base_lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist_utils.scale_ignored_grads(objective, ignore, info)
            grad_norm = (torch.nn.utils.clip_grad_norm_(params_list, clip) if clip > 0
                         else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params_list
                                                                    if p.grad is not None])))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            sampler.step = done = step + 1
            seen += sum(gb["count"] for gb in batch.values())

            # ---- log
            if done % log_every == 0 or done == total_steps:
                elapsed = time.perf_counter() - t0
                record = log_record(done, sampler, loss, logs, lr, grad_norm, weights,
                                    seen * info.world_size / elapsed, info)
                t0, seen = time.perf_counter(), 0
                result["loss"] = record["loss"]
                if info.is_main:
                    metrics.append(record)
                    run.log_metrics(mlflow_metrics(record), step=done)
                    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
            # ---- checkpoint
            if done % ckpt_every == 0 or done == total_steps:
                t_save = time.perf_counter()
                run_state.save(out / CKPT_NAME, model, objective, optimizer, scheduler, sampler, params, done, info)
                last_good = done
                if info.is_main or ignore:  # sharded experts (tutel): the figure's forward is a collective
                    _figures(model, batch, layouts, datasets, params, out, done, run, draw=info.is_main)
                t0 += time.perf_counter() - t_save  # samples/s counts training time only
            progress.update(1)
            result["step"] = done
            if on_step is not None:
                on_step(done, model, info)
        progress.close()
        if info.is_main and (out / CKPT_NAME).exists():
            run.log_artifact(metrics.path)
    return result


def _non_finite(loss: torch.Tensor, logs: dict, batch: dict, layouts: dict) -> str | None:
    """None when the loss is finite; else the sensor to blame: the first whose input images hold NaN/inf,
    else the first whose loss is not finite ('' when none can be named)."""
    if bool(torch.isfinite(loss.detach()).all()):
        return None
    for gname, gb in batch.items():
        for key, img in gb["images"].items():
            if not bool(torch.isfinite(img).all()):
                return layouts[gname].sensors[key]
    for key, value in logs.items():
        if key.startswith("loss/") and not key.startswith("loss/group/") and not bool(torch.isfinite(value).all()):
            return key.split("/", 1)[1]
    return "aux" if not bool(torch.isfinite(logs["aux_loss"]).all()) else ""


def _autocast(amp: str, device: torch.device):
    if amp == "fp32" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if amp in ("auto", "bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise XGeoError(f"params pretrain.amp: expected auto | bf16 | fp32, found {amp!r}")


def _progress(info, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="pretrain", unit="step", disable=not info.is_main, dynamic_ncols=True)


def _figures(model, batch, layouts, datasets, params, out, step, run, draw: bool = True) -> None:
    """Figure 4 of the paper for the current batch; drawn with the RNG forked so training draws are unchanged.
    ``draw=False``: only the model's forward, on a rank whose experts the drawing rank's forward needs (tutel's
    all-to-all is a collective every rank must join)."""
    from .figures import reconstruction_figure, reconstruction_rows

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            if not draw:
                reconstruction_rows(model, batch, layouts, datasets, params)
                return
            fig = reconstruction_figure(model, batch, layouts, datasets, params)
        finally:
            model.train(was_training)
    path = out / FIGURES_DIR / f"reconstruction_step{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    run.log_artifact(path, FIGURES_DIR)
    import matplotlib.pyplot as plt

    plt.close(fig)
