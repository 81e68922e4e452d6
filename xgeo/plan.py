"""``xgeo plan``: what a run will do with the resolved params, checked before any job starts.

For pretraining and each finetuning task it prints the concrete settings (datasets and their sample counts, stored
and input sizes, crops, mask grid and masked cells, steps per epoch, total, warm-up and milestone steps, per-group
batch and loss weight, GPUs and processes, weight files and teachers, FLOPs per step and, where CUDA is present, a
measured time per step and an ETA) and collects every broken invariant as one line naming the key: a store missing
or holding tiles smaller than the input, a window that does not divide its stage's token grid, a mask patch that
does not divide the input, GPUs asked for but absent, a weight file missing for a run that needs it.

FLOPs are counted analytically (:func:`encoder_flops`: the SwinV2 encoder's patch embedding, attention
projections, windowed attention, MLPs or the top-k experts of MoE blocks with their gate, patch merging, plus the
SimMIM decoder), x 3 for a training step (forward + backward); tests/test_plan.py checks the count against
``torch.utils.flop_counter`` on the demo model.

``--no-stores`` takes stored sizes from params (``data.datasets.<id>.tile_size`` / ``resize_to``) and reads no
store: what the Snakemake ``plan`` rule runs under the paper profile before the data exist.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .catalog import get_dataset
from .errors import XGeoError
from .sensors import get_sensor

PATCH = 4  # pixels per token side of the patch embedding (SwinV2)
STRIDE = 32  # pixels per token side after the four stages


class PlanError(XGeoError):
    """One or more broken invariants; the message holds one line per problem."""


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, text: str = "") -> None:
        self.lines.append(text)

    def fail(self, key: str, text: str) -> None:
        self.problems.append(f"{key}: {text}")

    def text(self) -> str:
        return "\n".join(self.lines)


# ------------------------------------------------------------------------------------------------ schedules
def pretrain_schedule(params: Mapping, groups: Mapping[str, Mapping], sizes: Mapping[str, int], world: int) -> dict:
    """{"total_steps", "warmup_steps", "milestones", "steps_per_epoch", "source", "ablation"} of the pretraining,
    decided where the run decides it (:mod:`xgeo.pretrain.schedule`), from the stores' sample counts."""
    from .pretrain.schedule import resolve_schedule, steps_per_epoch

    spe = steps_per_epoch(groups, sizes, params["pretrain"].get("batching", "heterogeneous"), world)
    return resolve_schedule(params, max(1, spe))


# ------------------------------------------------------------------------------------------------ geometry
def stage_windows(config: Mapping, img_size: int) -> list[tuple[int, float]]:
    """(token grid side, window side) of each stage at ``img_size``: timm's SwinV2 keeps each stage's window to
    grid ratio of the built size, and a stage whose grid is not larger than its window takes the whole grid."""
    ref_grid = config["img_size"] // PATCH
    grid = img_size // PATCH
    window = config["window_size"] * grid / ref_grid
    out = []
    for i in range(len(config["depths"])):
        g = grid // 2 ** i
        out.append((g, g if g <= window else window))
    return out


def encoder_flops(config: Mapping, img_size: int, in_chans: int, out_chans: int | None = None) -> float:
    """Forward FLOPs (2 x multiply-adds) of one image through the encoder (and the SimMIM decoder to
    ``out_chans`` channels when given); MoE blocks count ``top_k`` experts per token and the gate."""
    c, depths = config["embed_dim"], config["depths"]
    moe = config.get("moe") or {}
    moe_blocks = set()
    if moe.get("enabled"):
        from .model.xgeo import moe_block_indices

        moe_blocks = set(moe_block_indices(config))
    grid = img_size // PATCH
    macs = grid * grid * c * in_chans * PATCH * PATCH
    for s, (g, w) in enumerate(stage_windows(config, img_size)):
        n, cs = g * g, c * 2 ** s
        if s > 0:
            macs += n * 4 * (cs // 2) * cs  # patch merging: Linear(4 C, 2 C) on the merged tokens
        for b in range(depths[s]):
            macs += 4 * n * cs * cs + 2 * n * (w * w) * cs  # qkv + proj, QK^T + AV within windows
            if (s, b) in moe_blocks:
                macs += int(moe.get("top_k", 1)) * 8 * n * cs * cs + n * cs * int(moe.get("num_experts", 1))
            else:
                macs += 8 * n * cs * cs
    if out_chans:
        last = c * 2 ** (len(depths) - 1)
        macs += (img_size // STRIDE) ** 2 * last * STRIDE * STRIDE * out_chans
    return 2.0 * macs


def _store(params: Mapping, dataset: str, key: str, stores: bool, plan: Plan) -> tuple[dict | None, int]:
    """(store info or None, stored tile side of modality ``key``) from the store, or from params with no stores."""
    dp = (params["data"].get("datasets") or {}).get(dataset) or {}
    side = int(dp.get("resize_to") or dp.get("tile_size") or 0)
    if not stores:
        return None, side
    path = Path(params["paths"]["zarr"]) / f"{dataset}.zarr"
    if not path.exists():
        plan.fail(f"paths.zarr ({path})", f"store of dataset {dataset!r} missing; build it with 'snakemake "
                                          f"--cores all {path}' or plan with --no-stores")
        return None, side
    from .data.store import store_info

    info = store_info(path)
    mods = info["modalities"]
    return info, int(mods[key]["shape"][-1]) if key in mods else side


def _check_windows(plan: Plan, key: str, config: Mapping, size: int) -> str:
    if size % STRIDE:
        plan.fail(key, f"{size} px is not a multiple of the encoder stride {STRIDE}")
        return "-"
    parts = []
    for s, (g, w) in enumerate(stage_windows(config, size)):
        if w != int(w) or g % int(w):
            plan.fail(key, f"at {size} px the window of stage {s + 1} ({w:g} tokens) does not divide its "
                           f"{g} x {g} token grid (choose a size whose token grid {size // PATCH} is a multiple of "
                           f"{config['img_size'] // PATCH // math.gcd(config['img_size'] // PATCH, config['window_size'])})")
        parts.append(f"{g}/{w:g}")
    return " ".join(parts)


def _gpus(plan: Plan, stage: str, params: Mapping, cuda: int) -> tuple[int, int]:
    wf = params["workflow"][stage]
    gpus, nodes = int(wf.get("gpu", 0)), int(wf.get("nodes", 1))
    if gpus > 0 and cuda == 0:
        plan.fail(f"workflow.{stage}.gpu", f"{gpus} GPU(s) per node asked for, torch sees no CUDA device here "
                                           f"(plan on the GPU node, or set workflow.{stage}.gpu: 0)")
    elif gpus > cuda > 0:
        plan.fail(f"workflow.{stage}.gpu", f"{gpus} GPU(s) per node asked for, this node has {cuda}")
    return gpus, max(1, gpus) * nodes


# ------------------------------------------------------------------------------------------------ stages
def _pretrain(plan: Plan, params: Mapping, stores: bool, cuda: int, measure: bool) -> None:
    from .model.xgeo import model_config
    from .pretrain.groups import effective_groups

    cfg = params["pretrain"]
    config = model_config(params)
    size = int(config["img_size"])
    gpus, world = _gpus(plan, "pretrain", params, cuda)
    nodes = int(params["workflow"]["pretrain"].get("nodes", 1))
    plan.add(f"pretrain ({params.get('experiment') or 'xgeo'}): model {config['size']} (embed {config['embed_dim']}, "
             f"depths {list(config['depths'])}, MoE {'on' if (config.get('moe') or {}).get('enabled') else 'off'}), "
             f"objective {cfg.get('objective', 'simmim')}, batching {cfg.get('batching', 'heterogeneous')}")
    plan.add(f"  processes: {world} ({nodes} node(s) x {max(1, gpus)} {'GPU(s)' if gpus else 'CPU process'})")
    plan.add(f"  input {size} px; stage grid/window {_check_windows(plan, 'model.size', config, size)}")
    mp = int(cfg["mask_patch"])
    if size % mp or mp % PATCH:
        plan.fail("pretrain.mask_patch", f"{mp} px does not divide the {size} px input into whole mask cells "
                                         f"(and must be a multiple of the {PATCH} px patch)")
    else:
        cells = (size // mp) ** 2
        plan.add(f"  mask grid {size // mp} x {size // mp} ({mp} px cells): "
                 f"{math.ceil(cells * float(cfg['mask_ratio']))} of {cells} masked")
    groups = effective_groups(params)
    first = next(iter(groups.values()))["batch_size"]
    sizes, flops = {}, 0.0
    for name, g in groups.items():
        for ds in g["datasets"]:
            spec = get_dataset(ds)
            key = (g.get("modalities") or list(spec.modalities))[0]
            info, side = _store(params, ds, key, stores, plan)
            if side and side < size:
                plan.fail(f"data.datasets.{ds}.tile_size", f"stored tiles of {side} px are smaller than the "
                                                           f"{size} px pretraining input")
            count = info["samples"] if info else None
            sizes[ds] = max(count or 0, 1)
            plan.add(f"  group {name}: {ds} {count if count is not None else '(store not read)'} samples, stored "
                     f"{side} px, {spec.modalities[key].sensor}")
        b = int(g["batch_size"])
        weight = b / first
        sensor = get_sensor(get_dataset(g["datasets"][0]).modalities[
            (g.get("modalities") or list(get_dataset(g["datasets"][0]).modalities))[0]].sensor)
        flops += 3 * b * encoder_flops(config, size, sensor.num_bands, sensor.num_bands)
        plan.add(f"  group {name}: batch {b} per process ({b * world} per step), loss weight {weight:g}")
    sched = pretrain_schedule(params, groups, sizes, world)
    plan.add(f"  schedule ({sched['source']}): {sched['steps_per_epoch']} steps/epoch"
             f"{'' if stores else ' (stores not read: steps per epoch unknown, 1 assumed)'}, {sched['total_steps']} steps, "
             f"warm-up {sched['warmup_steps']}, milestones {sched['milestones']}")
    teacher = cfg.get("teacher")
    if cfg.get("objective", "simmim") in ("distill", "eva"):
        path = teacher.get("path") if isinstance(teacher, Mapping) else teacher
        if not path or not Path(str(path)).exists():
            plan.fail("pretrain.teacher", f"objective {cfg['objective']} needs a local teacher weight file, "
                                          f"found {path!r} (no such file)")
        plan.add(f"  teacher: {teacher}")
    plan.add(f"  FLOPs per step (analytic, per process): {flops:.3g}")
    if measure and cuda:
        sec = measure_pretrain_step(params, groups, size)
        plan.add(f"  measured: {sec:.3f} s/step on {cuda_name()}; ETA {sec * sched['total_steps'] / 3600:.1f} h")


def _finetune(plan: Plan, params: Mapping, stores: bool, cuda: int) -> None:
    from .finetune.tasks import TASKS, task_settings
    from .model.xgeo import model_config

    config = model_config(params)
    gpus, world = _gpus(plan, "finetune", params, cuda)
    device = str((params["finetune"] or {}).get("device", "auto"))
    if device == "cuda" and cuda == 0:
        plan.fail("finetune.device", "'cuda' asked for, torch sees no CUDA device here")
    for name, w in (params["finetune"].get("weights") or {}).items():
        plan.add(f"finetune weights {name}: {w}" + ("" if Path(str(w)).exists() else
                                                      " (absent: its table rows are written as missing)"))
    # the tasks of the run's downstream datasets (data.downstream); the appendix tasks are planned when listed there
    for task in [d for d in params["data"]["downstream"] if d in TASKS]:
        s = task_settings(params, task)
        spec = get_dataset(task)
        key = (s.get("inputs") or [k for k in spec.modalities])[0] if task != "spacenet2" else "pan"
        info, side = _store(params, task, key, stores, plan)
        size = int(s["image_size"])
        windows = _check_windows(plan, f"finetune.{task}.image_size", config, size)
        if side and side < size and task != "bigearthnet":
            plan.fail(f"data.datasets.{task}.tile_size", f"stored tiles of {side} px are smaller than the {size} px "
                                                        f"input of finetune.{task}.image_size (they would be padded)")
        b = int(s["batch_size"])
        if b % world:
            plan.fail(f"finetune.{task}.batch_size", f"{b} is not a multiple of the {world} processes")
        splits = info["splits"] if info else {}
        n_train = int(splits.get("train", 0)) if info else None
        if n_train is not None:
            per_epoch = max(1, math.ceil(n_train / b))
            total = int(s["epochs"]) * per_epoch if s.get("epochs") else int(s["steps"])
            warm = int(s["warmup_epochs"]) * per_epoch if s.get("warmup_epochs") else int(s.get("warmup_steps", 0))
            steps = f"{per_epoch} steps/epoch, {total} steps, warm-up {min(warm, total)}"
        else:
            steps = (f"{s['epochs']} epochs (steps from the store's train split), warm-up {s.get('warmup_epochs')} "
                     f"epochs" if s.get("epochs") else f"{s['steps']} steps, warm-up {s.get('warmup_steps', 0)}")
        if task == "bigearthnet":
            crop, evaluation = f"resized {side} -> {size} px", f"whole patches resized to {size} px"
        else:
            stride = int(s.get("eval_stride") or size // 2)
            whole = "areas (tiles put back together)" if task == "vaihingen" else "tiles"
            crop = f"random {size} px crops of {side} px tiles"
            evaluation = f"whole {side} px {whole}, sliding {size} px windows, stride {stride}"
        chans = sum(len(spec.modalities[k].bands) for k in (s.get("inputs") or ["pan", "mul"]) if k in spec.modalities)
        flops = 3 * b * encoder_flops(config, size, chans)
        plan.add(f"finetune {task}: store {dict(splits) if info else '(not read)'}; {crop}; evaluation on "
                 f"{s.get('eval_split', 'val' if task in ('bigearthnet', 'spacenet2') else 'test')}: {evaluation}")
        plan.add(f"  grid/window {windows}; batch {b} ({b // max(world, 1)} per process, {world} process(es), "
                 f"device {device}, amp {params['finetune'].get('amp', 'auto')}); {steps}; encoder FLOPs per step "
                 f"{flops:.3g}")


# ------------------------------------------------------------------------------------------------ measuring
def cuda_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def measure_pretrain_step(params: Mapping, groups: Mapping, size: int, steps: int = 3, device: str = "cuda") -> float:
    """Seconds per pretraining step (forward, backward and AdamW over every group's per-process batch of random
    images, under ``pretrain.amp``: bf16 autocast on CUDA) on ``device``, after one untimed step."""
    import numpy as np
    import torch

    from .model import build_model
    from .pretrain.masking import MaskGenerator
    from .runtime import autocast

    device = torch.device(device, 0) if device == "cuda" else torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build_model(params).to(device)
    model.set_input_size(size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    cfg = params["pretrain"]
    masker = MaskGenerator(size, int(cfg["mask_patch"]), PATCH, float(cfg["mask_ratio"]))
    rng = np.random.default_rng(0)
    batches = []
    for g in groups.values():
        spec = get_dataset(g["datasets"][0])
        sensor = spec.modalities[(g.get("modalities") or list(spec.modalities))[0]].sensor
        b = int(g["batch_size"])
        x = torch.randn(b, get_sensor(sensor).num_bands, size, size, device=device)
        batches.append((x, sensor, torch.from_numpy(masker(rng, b)).to(device)))

    def step():
        with autocast(str(cfg.get("amp", "auto")), device, "pretrain.amp"):
            loss = sum(model(x, sensor, mask)["loss"] for x, sensor, mask in batches)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


# ------------------------------------------------------------------------------------------------ entry
def make_plan(params: Mapping, stores: bool = True, measure: bool = True) -> Plan:
    """The plan of ``params``; its ``problems`` list every broken invariant (see the module doc)."""
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plan = Plan()
    plan.add(f"profile {params.get('profile')}, experiment {params.get('experiment') or '-'}, "
             f"CUDA devices here: {cuda}")
    _pretrain(plan, params, stores, cuda, measure)
    _finetune(plan, params, stores, cuda)
    return plan


def run_plan(params: Mapping, stores: bool = True, measure: bool = True) -> Plan:
    """:func:`make_plan`, raising :class:`PlanError` with one line per broken invariant."""
    plan = make_plan(params, stores=stores, measure=measure)
    if plan.problems:
        raise PlanError(f"the plan of profile {params.get('profile')} has {len(plan.problems)} problem(s):\n"
                        + "\n".join(f"  {p}" for p in plan.problems))
    return plan
