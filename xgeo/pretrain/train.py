"""Cross-sensor MoE SimMIM pretraining (paper, sections 3-4, appendix B, Table 11): ``xgeo pretrain``.

One step (heterogeneous batching) reads a sub-batch of every sensor group of ``pretrain.groups``. For every image
of the sub-batch the loss is Eq. (1) / (2) of the paper: the shared encoder sees the masked image of sensor i
through its own patch embedding f_i; the decoder D_i reconstructs it, or, for a co-located pair and with probability
``pretrain.cross_ratio``, D_j reconstructs the paired sensor's image. The reconstruction loss is SimMIM's masked L1
(normalised by the number of masked pixels and the target's channels), plus the model's MoE auxiliary loss.

Per-group learning rate (Table 11: lr proportional to the group's batch size, 1e-4 / 0.25e-4 / 1e-5 for
128 / 32 / 12): applied by weighting group g's loss by ``B_g / B_first`` before ONE AdamW step at ``base_lr``.
AdamW normalises the summed gradient, so the weights set each group's share of the gradient, which is the
closest a single optimizer gets to one learning rate per group; with mean losses per group it also makes every
sample of every group count equally (each weighs 1 / B_first).

Everything a resumed run needs to repeat an uninterrupted one is in ``last.ckpt``: model, optimizer, scheduler,
sampler (epoch, position, seeds), and every RNG of every rank. The per-step randomness of the data (which samples,
flips, masks, cross-sensor choices) is drawn from generators seeded by (seed, step, rank), never from global state.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .. import __version__ as XGEO_VERSION
from ..config import flatten
from ..errors import CheckpointError, DataError, TrainingError, XGeoError
from ..io import atomic_path, write_text
from ..runtime import configure as configure_runtime
from ..sensors import get_sensor
from . import distributed as dist_utils
from .masking import MaskGenerator, choose_cross
from .sampler import Group, PretrainSampler

CKPT_NAME = "last.ckpt"
METRICS_NAME = "metrics.jsonl"
FIGURES_DIR = "figures"
# keys that may change between a run and its resume (how long and how it runs, not what it computes)
RESUMABLE_KEYS = {"pretrain.steps", "pretrain.checkpoint_every", "pretrain.log_every", "pretrain.num_workers",
                  "pretrain.compile"}
# sections of params that define what a run computes; a resume must match them
CONFIG_SECTIONS = ("seed", "model.", "pretrain.", "data.pretrain")
ENV_KILL_AT_STEP = "XGEO_KILL_AT_STEP"  # tests: SIGKILL this process right after the given step
ENV_CHECKSUM = "XGEO_PARAM_CHECKSUM"  # tests: append "step sha1" of all parameters per step to <value>.rank<r>


# ------------------------------------------------------------------------------------------------- data layout
@dataclass(frozen=True)
class GroupLayout:
    """What every sample of a group carries: modality keys -> sensors, and co-located pairs (key -> partner key)."""

    name: str
    sensors: dict[str, str]
    partner: dict[str, str]


def store_path(params: dict, dataset: str) -> Path:
    return Path(params["paths"]["zarr"]) / f"{dataset}.zarr"


def _read_store_attrs(params: dict, dataset: str) -> dict:
    path = store_path(params, dataset)
    raw = Path(params["paths"]["raw"]) / dataset
    if not (path / "zarr.json").exists():
        raise DataError(
            f"pretraining store {path} not found (dataset {dataset!r} of pretrain.groups); build it with "
            f"`xgeo data raw {dataset} {raw} && xgeo data convert {dataset} {raw} {path}` "
            f"or `snakemake --cores 2 {path}`"
        )
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        shapes = {key: tuple(group[f"{key}/data"].shape) for key in attrs["modalities"]}
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable xgeo Zarr store (expected attrs 'modalities' and <key>/data): {exc}")
    return {"path": path, "attrs": attrs, "shapes": shapes}


def _group_layouts(params: dict, stores: dict[str, dict]) -> dict[str, GroupLayout]:
    layouts = {}
    for gname, gconf in params["pretrain"]["groups"].items():
        first = None
        for ds in gconf["datasets"]:
            attrs = stores[ds]["attrs"]
            keys = gconf.get("modalities") or list(attrs["modalities"])
            unknown = [k for k in keys if k not in attrs["modalities"]]
            if unknown:
                raise DataError(f"params pretrain.groups.{gname}.modalities: {stores[ds]['path']} has no modality "
                                f"{unknown}; it has {list(attrs['modalities'])}")
            sensors = {k: attrs["modalities"][k]["sensor"] for k in keys}
            partner: dict[str, str] = {}
            # a pair counts only when both of its modalities are read (e.g. an S1-only pretraining of Table 10)
            for a, b in attrs.get("pairs", []):
                if a in sensors and b in sensors:
                    partner[a], partner[b] = b, a
            if first is None:
                first = (ds, sensors, partner)
            elif (sensors, partner) != first[1:]:
                raise DataError(
                    f"pretrain.groups.{gname}: datasets of one group must carry the same modalities and pairs; "
                    f"{stores[first[0]]['path']} has {first[1]} (pairs {first[2]}), "
                    f"{stores[ds]['path']} has {sensors} (pairs {partner})"
                )
        layouts[gname] = GroupLayout(gname, first[1], first[2])
    return layouts


def _embed_in_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _check_against_model(model: nn.Module, stores: dict[str, dict], layouts: dict[str, GroupLayout],
                         params: dict) -> None:
    """Every sensor the run reads has an embedding in the model, with the data's channel count."""
    have = list(model.patch_embeds.keys())
    reads = [(stores[ds], key) for g, c in params["pretrain"]["groups"].items() for ds in c["datasets"]
             for key in layouts[g].sensors]
    for store, key in reads:
        mod = store["attrs"]["modalities"][key]
        sensor = mod["sensor"]
        if sensor not in model.patch_embeds:
            raise DataError(
                f"{store['path']}: modality {key!r} is sensor {sensor!r}, which the model lacks "
                f"(model sensors: {have}); add {sensor!r} to model.sensors in params.yaml"
            )
        channels = store["shapes"][key][1]
        expected = _embed_in_channels(model.patch_embeds[sensor])
        full = get_sensor(sensor).num_bands
        if channels != len(mod["bands"]) or (expected is not None and channels != expected) or channels != full:
            raise DataError(
                f"{store['path']}: modality {key!r} ({sensor}) has {channels} channels "
                f"(bands {list(mod['bands'])}); the model's {sensor} embedding and decoder expect "
                f"{expected if expected is not None else full} ({list(get_sensor(sensor).band_names)}); "
                f"pretraining reconstructs every band of a sensor, so rebuild the store with all of them"
            )


# ----------------------------------------------------------------------------------------------- step batches
class NonFiniteInput(TrainingError):
    """A step's normalised images hold NaN or inf (raised while loading, before the model sees them)."""


class StepData(torch.utils.data.Dataset):
    """Item ``s`` = everything step ``s`` of this rank reads: per group, images, masks and cross-sensor choices.

    ``{group: {"images": {key: (B, C, H, W)}, "masks": {key: (B, H/p, W/p) uint8},
               "cross": {key: (B,) bool}, "count": B}}``. Deterministic in (seed, step, rank).
    """

    def __init__(self, sampler: PretrainSampler, datasets: dict[str, Any], layouts: dict[str, GroupLayout],
                 mask_patch: int, patch_size: int, mask_ratio: float, cross_ratio: float, seed: int, rank: int,
                 total_steps: int) -> None:
        self.sampler = sampler
        self.datasets = datasets
        self.layouts = layouts
        self.mask_patch, self.patch_size, self.mask_ratio = mask_patch, patch_size, mask_ratio
        self.cross_ratio = cross_ratio
        self.seed, self.rank = seed, rank
        self.total_steps = total_steps
        self._maskgen: dict[int, MaskGenerator] = {}

    def __len__(self) -> int:
        return self.total_steps

    def masks(self, size: int) -> MaskGenerator:
        if size not in self._maskgen:
            self._maskgen[size] = MaskGenerator(size, self.mask_patch, self.patch_size, self.mask_ratio)
        return self._maskgen[size]

    def __getitem__(self, step: int) -> dict:
        # a stream of its own (last key 1), apart from the sampler's permutations
        rng = np.random.default_rng([self.seed, int(step), self.rank, 1])
        out = {}
        for gname, items in self.sampler.batch(int(step)).items():
            layout = self.layouts[gname]
            samples = [self.datasets[ds][i] for ds, i in items]
            n = len(samples)
            images = {}
            for key in layout.sensors:
                try:
                    images[key] = torch.stack([s[key] for s in samples])
                except RuntimeError as exc:
                    raise DataError(f"group {gname!r}, modality {key!r}: samples of different shapes ({exc})")
            # SimMIM's random horizontal flip; co-located images flip together so they stay aligned
            flip = torch.from_numpy(rng.random(n) < 0.5)
            for key in images:
                images[key] = torch.where(flip[:, None, None, None], images[key].flip(-1), images[key])
            for key, img in images.items():
                if not bool(torch.isfinite(img).all()):
                    raise NonFiniteInput(
                        f"step {int(step) + 1}: non-finite input for sensor {layout.sensors[key]!r} (group {gname!r}, "
                        f"modality {key!r} of samples {items})")
            masks, cross = {}, {}
            for key, img in images.items():
                if img.shape[-1] != img.shape[-2]:
                    raise DataError(f"group {gname!r}, modality {key!r}: expected square tiles, found {tuple(img.shape)}")
                masks[key] = torch.from_numpy(self.masks(img.shape[-1])(rng, n))  # independent per sensor
            for key in images:
                if key in layout.partner:
                    cross[key] = torch.from_numpy(choose_cross(rng, n, self.cross_ratio))
            out[gname] = {"images": images, "masks": masks, "cross": cross, "count": n}
        return out


def _to_device(batch: dict, device: torch.device) -> dict:
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x

    return move(batch)


# ------------------------------------------------------------------------------------------------- objective
class CrossSensorObjective(nn.Module):
    """The loss of one heterogeneous step; a module so that DDP sees the whole step as one forward.

    forward(batch) -> (loss (), logs {name: () tensor}). ``weights[g]`` = B_g / B_first (see the module docstring).
    """

    def __init__(self, model: nn.Module, layouts: dict[str, GroupLayout], weights: dict[str, float]) -> None:
        super().__init__()
        self.model = model
        self.layouts = layouts
        self.weights = weights

    def targets(self, z: torch.Tensor, key: str, layout: GroupLayout, gb: dict) -> list[tuple]:
        """What the encoding z (B, C_m, h, w) of modality ``key`` of a group batch is decoded to:
        [(target sensor, z part, target image, mask, share of the batch)].

        Unpaired data reconstructs itself (Eq. 2). For a co-located pair (Eq. 1), the samples whose cross choice
        is set are decoded by the partner's decoder D_j against the partner's image; the two parts are weighted
        by their share of the batch, so the loss is the per-sample mean.
        """
        x, mask = gb["images"][key], gb["masks"][key]
        if key not in layout.partner:
            return [(layout.sensors[key], z, x, mask, 1.0)]
        cross = gb["cross"][key]
        n = x.shape[0]
        parts = []
        for sel, tkey in ((~cross, key), (cross, layout.partner[key])):
            m = int(sel.sum())
            if m:
                parts.append((layout.sensors[tkey], z[sel], gb["images"][tkey][sel], mask[sel], m / n))
        return parts

    def reconstruction_losses(self, jobs: list[list[tuple]]) -> list[torch.Tensor]:
        """SimMIM L1 (masked pixels, normalised by the target's channels) of every entry's ``targets``.

        One decoder call per target sensor for the whole step: the parts of every entry that a sensor's decoder
        reconstructs are concatenated, decoded together, and split again for their losses (the decoders' weights
        are large, 32^2 C_j x C_m; one product and one weight gradient each instead of one per part).
        """
        by_sensor: dict[str, list[tuple[int, tuple]]] = {}
        for i, parts in enumerate(jobs):
            for part in parts:
                by_sensor.setdefault(part[0], []).append((i, part))
        losses: list = [0.0] * len(jobs)
        for sensor, items in by_sensor.items():
            zs = [part[1] for _, part in items]
            pred = self.model.forward_decoder(torch.cat(zs) if len(zs) > 1 else zs[0], sensor)
            for (i, (_, _, target, mask, share)), p in zip(items, pred.split([z.shape[0] for z in zs])):
                # fp32 even under bf16 autocast
                losses[i] = losses[i] + self.model.forward_loss(target.float(), p.float(), mask) * share
        return losses

    def reconstruction(self, z: torch.Tensor, key: str, layout: GroupLayout, gb: dict) -> torch.Tensor:
        """Reconstruction loss of modality ``key`` of a group batch from its encoding z (B, C_m, h, w)."""
        return self.reconstruction_losses([self.targets(z, key, layout, gb)])[0]

    def encode(self, items: list[tuple[str, torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """En(f_i(I_i)) of every (sensor, x (B, C_i, H, W), mask (B, H/4, W/4)) of a step in ONE encoder pass.

        The heterogeneous batch is one batch for the shared encoder: each sensor's images go through their own
        embedding f_i and mask token, then the tokens of all sensors are concatenated along the batch and encoded
        together. Per image this equals ``model.forward_encoder``, except that MoE routing (capacity, batch-
        prioritized order, auxiliary loss) sees the tokens of every sensor of the step at once, which is what a
        heterogeneous batch means for the experts, and it costs one pass instead of one per sensor and group.
        Returns ([z (B, C_m, H/32, W/32) per item], aux loss ()). Images of different sizes get a pass per size.
        """
        model = self.model
        by_size: dict[int, list[int]] = {}
        for i, (_, x, _) in enumerate(items):
            by_size.setdefault(x.shape[-1], []).append(i)
        zs: list[torch.Tensor | None] = [None] * len(items)
        aux = 0.0
        for size, idxs in by_size.items():
            if len(by_size) > 1:
                model.set_input_size(size)
            tokens = []
            for i in idxs:
                sensor, x, mask = items[i]
                t = model.patch_embeds[sensor](x)  # f_i: (B, H/4, W/4, C_e)
                w = mask.unsqueeze(-1).to(t.dtype)
                tokens.append(t * (1 - w) + model.mask_token.to(t.dtype) * w)  # SimMIM mask token
            z = model.encoder.norm(model.encoder.layers(torch.cat(tokens))).permute(0, 3, 1, 2)
            aux = aux + model.aux_loss(z.device)
            for i, part in zip(idxs, z.split([items[i][1].shape[0] for i in idxs])):
                zs[i] = part
        return zs, aux

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.model
        entries = [(gname, key) for gname in batch for key in self.layouts[gname].sensors]
        zs, aux = self.encode([(self.layouts[g].sensors[k], batch[g]["images"][k], batch[g]["masks"][k])
                               for g, k in entries])
        total = aux
        logs: dict[str, torch.Tensor] = {}
        sums: dict[str, list] = {}  # sensor -> [sum of rec loss * n, n]
        rec_total = 0.0
        group_rec: dict[str, torch.Tensor] = {}
        recs = self.reconstruction_losses([self.targets(z, key, self.layouts[g], batch[g])
                                           for (g, key), z in zip(entries, zs)])
        for (gname, key), rec in zip(entries, recs):
            layout, gb = self.layouts[gname], batch[gname]
            n = gb["count"]
            s = sums.setdefault(layout.sensors[key], [0.0, 0])
            s[0] = s[0] + rec.detach() * n
            s[1] += n
            # a group's loss: the mean over its modalities (each image of a pair counts once)
            group_rec[gname] = group_rec.get(gname, 0.0) + rec / len(layout.sensors)
            rec_total = rec_total + rec.detach()
        for gname, rec in group_rec.items():
            logs[f"loss/group/{gname}"] = rec.detach()
            total = total + self.weights[gname] * rec
        for sensor, (acc, n) in sums.items():
            logs[f"loss/{sensor}"] = acc / n
        logs["rec_loss"] = rec_total / len(entries)
        logs["aux_loss"] = torch.as_tensor(aux).detach()
        for i, layer in enumerate(model.moe_layers() if hasattr(model, "moe_layers") else []):
            load = (getattr(layer, "last_stats", None) or {}).get("load")
            if load is not None:
                load = torch.as_tensor(load).detach().float()
                logs[f"moe/{i}/load"] = load / load.sum().clamp_min(1e-12)
        return total, logs


# --------------------------------------------------------------------------------------- optimizer, schedule
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases, tokens, position tables and SwinV2's logit scales."""
    skip_names: set[str] = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            names = module.no_weight_decay()
            skip_names |= {f"{prefix}.{n}" if prefix else n for n in names}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if (p.ndim <= 1 or name in skip_names or "token" in leaf or "relative_position" in name
                or "cpb_mlp" in name or "logit_scale" in name or any(name.startswith(s + ".") for s in skip_names)):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(module: nn.Module, cfg: dict) -> torch.optim.AdamW:
    """AdamW of Table 11 at ``base_lr`` (betas, eps, weight decay on weights only). The fused kernel: one pass over
    each parameter instead of several elementwise ops (the optimizer is a large share of a small model's step)."""
    return torch.optim.AdamW(param_groups(module, float(cfg["weight_decay"])), lr=float(cfg["base_lr"]),
                             betas=tuple(cfg["betas"]), eps=float(cfg["eps"]), fused=True)


class WarmupMultiStep:
    """lr factor at a step: linear warm-up from warmup_lr to base_lr, then x gamma at each milestone (Table 11)."""

    def __init__(self, base_lr: float, warmup_lr: float, warmup_steps: int, milestones: list[int], gamma: float):
        self.base_lr, self.warmup_lr, self.warmup_steps = base_lr, warmup_lr, warmup_steps
        self.milestones, self.gamma = sorted(milestones), gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            lr = self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        else:
            lr = self.base_lr * self.gamma ** sum(step >= m for m in self.milestones)
        return lr / self.base_lr


# ------------------------------------------------------------------------------------------------ checkpoints
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_diff(saved: dict, current: dict) -> list[str]:
    """Dotted keys that define the computation and differ between a checkpoint's params and this run's."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys
            if any(k == s or (s.endswith(".") and k.startswith(s)) for s in CONFIG_SECTIONS)
            and k not in RESUMABLE_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>")]


def load_checkpoint_file(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint to resume from (expected the last.ckpt a run writes); "
                              f"run without --resume to start")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable xgeo checkpoint ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("model", "params", "step", "optimizer", "scheduler", "sampler", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing} (expected a last.ckpt written by xgeo pretrain)")
    return ckpt


def save_checkpoint_file(path: Path, ckpt: dict) -> None:
    try:
        from ..model.checkpoint import save_checkpoint
    except ImportError:
        save_checkpoint = None
    if save_checkpoint is not None:
        save_checkpoint(path, ckpt)
        return
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def _model_config(model: nn.Module, params: dict) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return params["model"]
    if hasattr(cfg, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------ metrics file
class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, each line appended with one write and fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate(self, step: int) -> None:
        """Keep the lines of steps <= ``step`` (a resumed run rewrites what followed its checkpoint)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError):
                break  # a line cut by a kill: everything after it is lost anyway
        write_text(self.path, "".join(line + "\n" for line in keep))

    def append(self, record: dict) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _params_checksum(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _autocast(amp: str, device: torch.device):
    if amp == "fp32" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if amp in ("auto", "bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise XGeoError(f"params pretrain.amp: expected auto | bf16 | fp32, found {amp!r}")


def _batches(data: StepData, start: int, stop: int, workers: int, seed: int) -> Iterator[dict]:
    """Step batches start..stop-1; with workers, a DataLoader prefetches whole steps (still deterministic)."""
    if workers <= 0:
        for step in range(start, stop):
            yield data[step]
        return
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=list(range(start, stop)), num_workers=workers,
        generator=torch.Generator().manual_seed(seed),  # the loader's base seed must not draw from the global RNG
        persistent_workers=False, prefetch_factor=2,
    )
    yield from loader


# ------------------------------------------------------------------------------------------------- the run
def pretrain(params: dict, out: Path, steps: int | None = None, checkpoint_every: int | None = None,
             resume: bool = False) -> dict:
    """Pretrain from the stores of ``pretrain.groups`` into ``out`` (``last.ckpt``, ``metrics.jsonl``, ``figures/``).

    Returns {"step", "loss", "checkpoint", "metrics", "mlflow_run_id"}.
    """
    from ..data.dataset import ZarrDataset
    from ..model import build_model

    from .groups import effective_groups

    out = Path(out)
    # the groups restricted to model.sensors (Table 10's modality subsets are one model.sensors override)
    params = dict(params, pretrain=dict(params["pretrain"], groups=effective_groups(params)))
    cfg = params["pretrain"]
    total_steps = int(steps if steps is not None else cfg["steps"])
    ckpt_every = int(checkpoint_every if checkpoint_every is not None else cfg["checkpoint_every"])
    log_every = max(1, int(cfg.get("log_every", 1)))
    seed = int(params["seed"])
    ckpt_path = out / CKPT_NAME

    # ---- inputs first: nothing is written before every check has passed
    datasets_needed = [ds for g in cfg["groups"].values() for ds in g["datasets"]]
    stores = {ds: _read_store_attrs(params, ds) for ds in dict.fromkeys(datasets_needed)}
    layouts = _group_layouts(params, stores)
    ckpt = None
    if resume:
        ckpt = load_checkpoint_file(ckpt_path)
        diff = config_diff(ckpt["params"], params)
        if diff:
            a, b = flatten(ckpt["params"]), flatten(params)
            details = "; ".join(f"{k}: checkpoint {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}" for k in diff)
            raise CheckpointError(f"{ckpt_path}: written by another configuration ({details}); "
                                  f"resume with the same params or start a new --out directory")
    elif ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path} exists; pass --resume to continue that run, or choose another --out")

    info = dist_utils.init_distributed()
    try:
        return _run(params, out, cfg, stores, layouts, ckpt, info, total_steps, ckpt_every, log_every, seed,
                    ZarrDataset, build_model)
    finally:
        dist_utils.shutdown(info)


def _run(params, out, cfg, stores, layouts, ckpt, info, total_steps, ckpt_every, log_every, seed,
         ZarrDataset, build_model) -> dict:
    device = info.device
    configure_runtime(params, device.type)
    torch.manual_seed(seed)  # identical initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = build_model(params).to(device)
    _check_against_model(model, stores, layouts, params)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{out / CKPT_NAME}: model weights do not fit this model ({exc})") from None

    datasets = {ds: ZarrDataset(stores[ds]["path"], modalities=list(layouts[g].sensors), split=None)
                for g, c in cfg["groups"].items() for ds in c["datasets"]}
    groups = [Group(g, tuple(c["datasets"]), tuple(len(datasets[d]) for d in c["datasets"]), int(c["batch_size"]))
              for g, c in cfg["groups"].items()]
    sampler = PretrainSampler(groups, seed=seed, mode=cfg.get("batching", "heterogeneous"), rank=info.rank,
                              world_size=info.world_size)
    first_batch = groups[0].batch_size
    weights = {g.name: g.batch_size / first_batch for g in groups}
    patch_size = int(getattr(model, "config", {}).get("patch_size", 4))  # tokens of the patch embedding (SwinV2: 4)
    data = StepData(sampler, datasets, layouts, int(cfg["mask_patch"]), patch_size, float(cfg["mask_ratio"]),
                    float(cfg["cross_ratio"]), seed, info.rank, total_steps)

    objective = _make_objective(params, model, layouts, weights)
    backend = params["model"].get("moe", {}).get("backend", "native")
    ignore = [f"model.{n}" for n in dist_utils.expert_parameter_names(model, backend)]
    step_module = dist_utils.wrap_ddp(objective, info, ignore)
    if cfg.get("compile"):
        step_module = torch.compile(step_module)

    optimizer = make_optimizer(objective, cfg)
    schedule = WarmupMultiStep(float(cfg["base_lr"]), float(cfg["warmup_lr"]), int(cfg["warmup_steps"]),
                               list(cfg.get("milestones") or []), float(cfg["gamma"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    start = 0
    if ckpt is not None:
        if "objective" in ckpt:
            objective.load_state_dict({**objective.state_dict(), **ckpt["objective"]})
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        sampler.load_state_dict(ckpt["sampler"])
        start = int(ckpt["step"])
        ranks = ckpt["rng"].get("ranks", [])
        if len(ranks) != info.world_size:
            raise CheckpointError(f"{out / CKPT_NAME}: saved by {len(ranks)} process(es), resumed with "
                                  f"{info.world_size}; resume with the same number of processes")
        set_rng_state(ranks[info.rank])
    else:
        # per-rank streams for what the model itself draws (MoE gate noise, drop path)
        torch.manual_seed(int(np.random.SeedSequence([seed, info.rank, 2]).generate_state(1)[0]))

    metrics = MetricsLog(out / METRICS_NAME)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        metrics.truncate(start) if ckpt is not None else write_text(metrics.path, "")
    dist_utils.barrier(info)

    from .. import tracking

    kill_at = int(os.environ.get(ENV_KILL_AT_STEP, "0") or 0)
    checksum_path = os.environ.get(ENV_CHECKSUM)
    amp = str(cfg.get("amp", "auto"))
    clip = float(cfg.get("clip_grad") or 0.0)
    params_list = [p for p in objective.parameters() if p.requires_grad]
    last_good = start
    result = {"step": start, "loss": None, "checkpoint": str(out / CKPT_NAME), "metrics": str(metrics.path),
              "mlflow_run_id": None}

    run_ctx = (tracking.start_run(params, experiment="pretrain", run_name=params.get("experiment") or out.name,
                                  tags={"xgeo.stage": "pretrain", "xgeo.out": str(out), "xgeo.resumed_from": start})
               if info.is_main else contextlib.nullcontext(tracking.NoOpRun()))
    with run_ctx as run:
        result["mlflow_run_id"] = run.run_id
        run.log_params(params)
        progress = _progress(info, start, total_steps)
        t0, seen = time.perf_counter(), 0
        last_batch = None
        batches = _batches(data, start, total_steps, int(cfg.get("num_workers", 0)), seed)
        for step in range(start, total_steps):
            try:
                batch, problem = _to_device(next(batches), device), None
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
            sampler.step = step + 1
            seen += sum(gb["count"] for gb in batch.values())
            last_batch = batch
            done = step + 1
            if checksum_path:
                with open(f"{checksum_path}.rank{info.rank}", "a") as fh:
                    fh.write(f"{done} {_params_checksum(model)}\n")

            if done % log_every == 0 or done == total_steps:
                elapsed = time.perf_counter() - t0
                record = _log_record(done, sampler, loss, logs, lr, grad_norm, weights, seen * info.world_size / elapsed,
                                     info)
                t0, seen = time.perf_counter(), 0
                result["loss"] = record["loss"]
                if info.is_main:
                    metrics.append(record)
                    run.log_metrics(_mlflow_metrics(record), step=done)
                    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
            if done % ckpt_every == 0 or done == total_steps:
                t_save = time.perf_counter()
                _save(out, model, objective, optimizer, scheduler, sampler, params, done, info)
                last_good = done
                if info.is_main:
                    _figures(model, last_batch, layouts, datasets, params, out, done, run)
                t0 += time.perf_counter() - t_save  # samples/s counts training time only
            progress.update(1)
            result["step"] = done
            if kill_at and done == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        progress.close()
        if info.is_main and (out / CKPT_NAME).exists():
            run.log_artifact(metrics.path)
    return result


def _make_objective(params: dict, model: nn.Module, layouts, weights) -> nn.Module:
    objective = params["pretrain"].get("objective", "simmim")
    if objective == "simmim":
        return CrossSensorObjective(model, layouts, weights)
    if objective in ("distill", "eva"):
        from .distill import make_distill_objective

        return make_distill_objective(params, model, layouts, weights)
    raise XGeoError(f"params pretrain.objective: expected simmim | distill | eva, found {objective!r}")


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


def _log_record(done, sampler, loss, logs, lr, grad_norm, weights, samples_per_s, info) -> dict:
    scalars = {"loss": loss.detach().float(), "grad_norm": torch.as_tensor(grad_norm).detach().float()}
    scalars.update({k: v.float() for k, v in logs.items() if v.ndim == 0})
    names = sorted(scalars)
    values = torch.stack([scalars[k].reshape(()).cpu() for k in names]).double()
    if info.enabled:
        import torch.distributed as dist

        values = values.to(info.device)
        dist.all_reduce(values)  # mean over ranks: the loss of the global batch
        values = values.cpu() / info.world_size
    record: dict[str, Any] = {"step": done, "epoch": sampler.epoch_of(done - 1), "lr": lr,
                              "samples_per_s": samples_per_s}
    record.update({k: float(v) for k, v in zip(names, values)})
    record.update({f"weight/{g}": w for g, w in weights.items()})
    for k, v in logs.items():
        if v.ndim == 1:
            record[k] = [round(float(x), 6) for x in v]
    return record


def _mlflow_metrics(record: dict) -> dict:
    out = {}
    for k, v in record.items():
        if k == "step":
            continue
        if isinstance(v, list):  # expert load per MoE block -> one metric per expert
            out.update({f"{k}/expert{e}": x for e, x in enumerate(v)})
        else:
            out[k] = v
    return out


def _progress(info, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="pretrain", unit="step", disable=not info.is_main, dynamic_ncols=True)


def _save(out, model, objective, optimizer, scheduler, sampler, params, step, info) -> None:
    """Write last.ckpt (rank 0) with every rank's RNG state."""
    state = rng_state()
    if info.enabled:
        import torch.distributed as dist

        ranks: list = [None] * info.world_size
        dist.all_gather_object(ranks, state)
    else:
        ranks = [state]
    if info.is_main:
        ckpt = {
            "model": model.state_dict(),
            "model_config": _model_config(model, params),
            "params": params,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": {"ranks": ranks},
            "xgeo_version": XGEO_VERSION,
        }
        extra = {k: v for k, v in objective.state_dict().items() if not k.startswith("model.")}
        if extra:  # what an objective adds to the model (the distillation projection)
            ckpt["objective"] = extra
        save_checkpoint_file(out / CKPT_NAME, ckpt)
    dist_utils.barrier(info)


def _figures(model, batch, layouts, datasets, params, out, step, run) -> None:
    """Figure 4 of the paper for the current batch; drawn with the RNG forked so training draws are unchanged."""
    from .figures import reconstruction_figure

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        was_training = model.training
        model.eval()
        try:
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
