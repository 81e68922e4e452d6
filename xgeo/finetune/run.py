"""``xgeo finetune TASK --init INIT --out DIR``: finetune and evaluate one downstream task.

Writes (atomically) ``DIR/metrics.json`` (the task's metrics under the names of the paper's tables: ``mAP_micro``,
``mAP_macro``, ``mIoU``, ``OA``, ``MAE``, ``SAM``, ``SSIM``, ``PSNR``, plus per-class / per-band scores),
``DIR/model.pt`` (the finetuned network, read by ``xgeo predict`` and ``xgeo.load``),
``DIR/predictions.npz`` (the evaluation set's targets and outputs, or a fixed sample of tiles for dense tasks;
``xgeo.metrics.from_predictions`` recomputes the metrics from it) and ``DIR/run.json`` (mlflow_run_id, task, init,
fraction, experiment, protocol, steps, seconds). Logs params, metrics, per-class scores and the qualitative
figures to MLflow (experiment ``finetune``).

Device (``finetune.device``: auto | cpu | cuda), precision (``finetune.amp``: auto = bf16 autocast on CUDA, fp32 on
the CPU) and ``finetune.compile`` (torch.compile of the training forward) as pretraining has them. Under
``torchrun --nproc_per_node N`` (WORLD_SIZE > 1) training is data-parallel (DDP; a DistributedSampler gives each
process ``batch_size / N`` samples of every step, so ``batch_size`` stays the global batch); the evaluation runs
on rank 0 alone, on the whole evaluation set, with the unwrapped network (the same metrics as one process), and
only rank 0 writes metrics.json, predictions.npz, run.json and the MLflow run.

``xgeo finetune TASK --seeds 0,1,2 --out DIR/seed{seed}`` (:func:`finetune_seeds`) runs several finetuning seeds
in turn in one process, each written exactly as a run of its own with ``--set seed=K`` writes it (its own
directory, MLflow run and settings digest; metrics.json and predictions.npz byte for byte the same): the imports,
the opened store, the datasets, the decoded training samples (:class:`SampleCache`), the MLflow client and the
process group are set up once; every random stream (weights, data order, crops and flips, dropout) is seeded
again from each run's seed. A single-seed run is the same loop with one seed.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .. import tracking
from ..io import npz_bytes, write_bytes, write_json
from ..errors import XGeoError
from ..runtime import autocast, select_device
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


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun launch (rank 0 of 1 without one) and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise XGeoError(f"environment variable {name}: expected an integer, found {value!r}") from None


def setup_processes(params: Mapping) -> Processes:
    """The device of ``finetune.device`` and, under torchrun (WORLD_SIZE > 1), the process group (NCCL on CUDA,
    gloo on the CPU)."""
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    device = select_device((params.get("finetune") or {}).get("device", "auto"), "finetune.device", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Processes(rank, local, world, device)


def _mean_over_ranks(procs: Processes) -> Callable[[torch.Tensor], float]:
    def mean(loss: torch.Tensor) -> float:
        t = loss.detach().float().reshape(1)
        torch.distributed.all_reduce(t)
        return float(t) / procs.world_size

    return mean


class SampleCache(torch.utils.data.Dataset):
    """``ds`` whose samples are kept in memory after their first read (decoded and normalised), up to ``budget``
    bytes (``finetune.cache_mb``); past it a sample is read from the store each time, as without the cache.

    Training draws each sample several times (the replicate seeds of a cell train in one process on the same subset:
    3 seeds x 100 steps x 16 of BigEarthNet's 2000 are 2.4 reads each), so each is
    decoded once. The same tensors are served each time: the loader's collate copies them, nothing edits them in
    place. Under ``num_workers`` > 0 each worker process holds its own cache. Other attributes are ``ds``'s.
    """

    def __init__(self, ds, budget_bytes: int) -> None:
        self.ds, self.left, self.samples = ds, int(budget_bytes), {}

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples.get(i)
        if sample is None:
            sample = self.ds[i]
            size = sum(v.numel() * v.element_size() for v in sample.values() if torch.is_tensor(v))
            if size <= self.left:
                self.left -= size
                self.samples[i] = sample
        return sample

    def __getattr__(self, name: str):
        if name in ("ds", "left", "samples"):  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.ds, name)


def _loader(ds, batch_size: int, shuffle: bool, params: Mapping, drop_last: bool = False,
            procs: Processes | None = None, shard: bool = False):
    """Batches of ``ds``; ``shard``: this rank's part of each epoch (a DistributedSampler) under torchrun."""
    seed = int(params.get("seed", 0))
    workers = int(params["finetune"].get("num_workers", 0))
    pin = procs is not None and procs.device.type == "cuda"
    if shard and procs is not None and procs.world_size > 1:
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=procs.world_size, rank=procs.rank,
                                                      shuffle=shuffle, seed=seed)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                           drop_last=drop_last, pin_memory=pin)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       num_workers=workers, drop_last=drop_last, pin_memory=pin)


def _chain(*callbacks):
    """One on_step callback calling each given one in order (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def on_step(step, model) -> None:
        for c in given:
            c(step, model)

    return on_step


def _rank_batch(task: str, batch_size: int, n_train: int, world: int) -> int:
    """Samples per process and step: the global ``batch_size`` (at most the training set) split over ``world``."""
    if batch_size % world:
        raise XGeoError(f"params finetune.{task}.batch_size is {batch_size}; under torchrun with {world} processes "
                        f"it must be a multiple of {world} (it is the global batch, split over the processes)")
    per_rank = batch_size // world
    return max(1, min(per_rank, n_train // world))


def run_dirs(out: str | Path, seeds: list[int]) -> list[Path]:
    """The run directory of each seed: ``out`` with ``{seed}`` replaced by the seed. Several seeds need the
    placeholder (each run writes a directory of its own)."""
    out = str(out)
    if len(seeds) != len(set(seeds)):
        raise XGeoError(f"finetune --seeds {','.join(map(str, seeds))}: expected distinct seeds, found a repeated one")
    if len(seeds) > 1 and "{seed}" not in out:
        raise XGeoError(f"finetune --out {out!r}: with {len(seeds)} seeds expected a directory template containing "
                        "{seed} (e.g. results/runs/x/seed{seed}), found none")
    return [Path(out.replace("{seed}", str(k))) for k in seeds]


def finetune(task: str, init: str, out: Path, params: Mapping, fraction: float | None = None,
             steps: int | None = None, on_step: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Finetune ``task`` from ``init`` and evaluate it; returns the metrics dict written to ``out/metrics.json``
    (an empty dict on the ranks other than 0 of a torchrun launch, which train and leave the evaluation to rank 0).

    task: bigearthnet | vaihingen | sen12ms-cr | spacenet2; init: random | PATH of an xgeo checkpoint | PATH of a
    timm Swin/SwinV2 state dict | a name of ``finetune.weights``; fraction: of the training split (BigEarthNet);
    steps: optimiser steps (default: the task's ``steps``, or ``epochs`` x steps per epoch); 0 evaluates the
    initialised network untrained; on_step(step, network): called after every optimiser step.
    The finetuning seed is the params' ``seed``: :func:`finetune_seeds` with that one seed.
    """
    return finetune_seeds(task, init, out, params, [int(params.get("seed", 0))], fraction, steps, on_step)[0]


def finetune_seeds(task: str, init: str, out: str | Path, params: Mapping, seeds: list[int],
                   fraction: float | None = None, steps: int | None = None,
                   on_step: Callable[[int, torch.nn.Module], None] | None = None) -> list[dict]:
    """:func:`finetune` once per finetuning seed of ``seeds``, in turn, in this process, into ``out`` with
    ``{seed}`` replaced by the seed (:func:`run_dirs`); each run is the one ``finetune`` with params ``seed`` = K
    gives. Returns the metrics dict of each run."""
    started = time.time()
    seeds = [int(k) for k in seeds]
    if not seeds:
        raise XGeoError("finetune --seeds: expected at least one seed, found none")
    dirs = run_dirs(out, seeds)
    ft = params["finetune"]
    amp, compile_ = str(ft.get("amp", "auto")), bool(ft.get("compile", False))
    procs = setup_processes(params)
    shared = _Shared()
    try:
        results = []
        for k, (seed, d) in enumerate(zip(seeds, dirs)):
            run_params = dict(params, seed=seed)
            results.append(_finetune(task, init, d, run_params, fraction, steps, on_step, procs, amp, compile_,
                                     started if k == 0 else time.time(), shared))
        return results
    finally:
        if procs.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _Shared:
    """What the seeds of one :func:`finetune_seeds` call share (nothing of it depends on the seed): the task with
    its opened store, the training dataset with its decoded samples (kept while the next seed trains on the same
    subset: one drawn with the run seed, when ``subset_seed`` is unset, differs between seeds) and the evaluation
    dataset."""

    def __init__(self) -> None:
        self.task = None
        self.train: tuple[bytes, SampleCache] | None = None  # (training indices, their dataset)
        self.eval = None


def _finetune(task, init, out, params, fraction, steps, on_step, procs, amp, compile_, started, shared) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    configure_runtime(params, procs.device.type)
    autocast(amp, procs.device, "finetune.amp")  # a bad value fails before any work
    seed = int(params.get("seed", 0))
    torch.manual_seed(seed)  # the same initial weights on every rank
    if shared.task is None:
        shared.task = get_task(task, params)
    t = shared.task.for_seed(params)
    t.device = procs.device
    if procs.rank:
        t.gen.manual_seed(int(np.random.SeedSequence([seed, procs.rank]).generate_state(1)[0]))  # own crops and flips
    s = t.s
    train_idx, subset = t.train_indices(fraction, out)
    key = np.asarray(train_idx, dtype=np.int64).tobytes()
    if shared.train is None or shared.train[0] != key:  # the first seed, or a subset drawn with the run seed
        shared.train = (key, SampleCache(t.make_dataset("train", train_idx),
                                         int(params["finetune"].get("cache_mb", 0)) << 20))
    train_ds = shared.train[1]
    t.bind(train_ds)
    if shared.eval is None:
        shared.eval = t.make_dataset(t.eval_split())
    eval_ds = shared.eval
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
    net = FinetuneNet(backbone, t.build_head(backbone.channels)).to(procs.device)
    if procs.rank:
        # the ranks' own streams for what the model draws (MoE gate noise, drop path); weights are already equal
        torch.manual_seed(int(np.random.SeedSequence([seed, procs.rank, 2]).generate_state(1)[0]))
    trained = net
    if procs.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # a step need not use every parameter (an expert that got no token)
        trained = DDP(net, device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
                      find_unused_parameters=True)
    if compile_:
        trained = torch.compile(trained)

    def step_loss(batch):
        loss, aux = t.step_loss(trained, batch)
        return loss + aux  # the model's aux loss is already weighted (model.moe.aux_weight)

    batch_size = _rank_batch(task, int(s["batch_size"]), len(train_ds), procs.world_size)
    run_name = f"{task}/{init_info['init']}/" + (f"f{subset['fraction']}" if subset.get("fraction") is not None
                                                  else subset.get("subset", "all").replace(" ", "_")) \
        + f"/seed{params.get('seed', 0)}"
    tags = {"xgeo.stage": "finetune", "xgeo.task": task, "xgeo.init": init_info["init"],
            "xgeo.fraction": subset.get("fraction"), "xgeo.protocol": t.protocol, "xgeo.seed": params.get("seed"),
            "xgeo.settings_digest": shaped_digest}
    run_ctx = (tracking.start_run(params, experiment=EXPERIMENT, run_name=run_name,
                                  tags={k: v for k, v in tags.items() if v is not None})
               if procs.is_main else contextlib.nullcontext(tracking.NoOpRun()))
    with run_ctx as run:
        run.log_params({"task": task, "init": init, "steps": total, "finetune": settings, "model": params["model"],
                        "subset": subset, "protocol": t.protocol, "device": str(procs.device), "amp": amp,
                        "processes": procs.world_size, "seed": params.get("seed"), "settings_digest": shaped_digest})
        # the store this run read, once per split, as MLflow dataset inputs (digest of the store's root metadata:
        # split sizes, statistics, modalities)
        from ..provenance import file_digest

        store_digest = (file_digest(t.path / "zarr.json") or "unknown")[:16]
        run.log_input(f"{t.dataset}:train", store_digest, "train", len(train_ds), t.path)
        run.log_input(f"{t.dataset}:{t.eval_split()}", store_digest, t.eval_split(), len(eval_ds), t.path)
        loader = _loader(train_ds, batch_size, True, params, drop_last=True, procs=procs, shard=True)
        eval_loader = _loader(eval_ds, int(params["finetune"]["eval_batch_size"]), False, params, procs=procs)
        on_step = _chain(on_step, t.during_training(eval_ds, eval_loader, len(train_ds), total) if procs.is_main else None)
        losses = train(net, step_loss, loader, settings, total, desc=f"finetune {task} seed {seed}",
                       log=run.log_metrics,
                       log_every=int(params["finetune"].get("log_every", 10)), device=procs.device,
                       precision=lambda: autocast(amp, procs.device, "finetune.amp"),
                       mean_loss=_mean_over_ranks(procs) if procs.world_size > 1 else None, on_step=on_step,
                       progress=procs.is_main)
        if not procs.is_main:
            return {}
        with autocast(amp, procs.device, "finetune.amp"):
            result, arrays, figures = t.evaluate(net, eval_ds, eval_loader, out)
        result = dict(result, task=task, protocol=t.protocol, metric=t.metric,
                      final_train_loss=losses[-1] if losses else None)
        run.log_metrics(_numeric(result))
        for fig, name in figures:
            run.log_figure(fig, name)
            import matplotlib.pyplot as plt

            plt.close(fig)
        write_bytes(out / "predictions.npz", npz_bytes(arrays))  # the same arrays, the same bytes
        write_json(out / "metrics.json", _jsonable(result))
        run.log_artifact(out / "metrics.json")
        info = {"mlflow_run_id": run.run_id, "task": task, "init": init, "init_kind": init_info["kind"],
                "fraction": subset.get("fraction"), "subset": subset, "experiment": params.get("experiment"),
                "protocol": t.protocol, "steps": total, "seconds": round(time.time() - started, 2),
                "method": s.get("method"), "inputs": [i.key for i in t.input_specs()], "adapted": init_info["adapted"],
                "profile": params.get("profile"), "device": procs.device.type, "processes": procs.world_size,
                "seed": params.get("seed"), "train_samples": int(len(train_ds)), "eval_samples": int(len(eval_ds)),
                "settings": shaped_by, "settings_digest": shaped_digest}
        save_model(out / "model.pt", net, t, task)
        write_json(out / "run.json", _jsonable(info))
    return result


def save_model(path: Path, net: FinetuneNet, t, task: str) -> None:
    """The finetuned network for ``xgeo predict`` / ``xgeo.load`` (atomic): weights, the model config and inputs to
    rebuild it, the head's class, the task store's normalisation statistics and the output's names/colours."""
    from ..io import atomic_path

    backbone = net.backbone
    state = {"format": "xgeo-finetuned", "task": task, "net": net.state_dict(),
             "model_config": backbone.model.config, "method": backbone.method, "image_size": t.image_size,
             "inputs": [{"key": i.key, "sensor": i.sensor, "bands": list(i.bands)} for i in backbone.inputs],
             "head": type(net.head).__name__,
             "stats": {k: (np.asarray(m).tolist(), np.asarray(s).tolist()) for k, (m, s) in t.stats.items()},
             "class_names": list(getattr(t, "class_names", None) or []) or None,
             "colours": t.spec.extra.get("colours"), "ignore_index": getattr(t, "ignore_index", None),
             "out_bands": list(getattr(t, "out_bands", None) or []) or None,
             "target_sensor": getattr(t, "target_sensor", None) or None, "protocol": t.protocol}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
