"""The one training loop every downstream task shares, its optimiser and schedule, and sliding-window inference.

Optimiser (GFM / SimMIM finetuning): AdamW with layer-wise learning-rate decay: a parameter of layer l (0 = the
patch embeddings, 1..L = the Swin blocks in order, L + 1 = the final norm and the task head) gets
lr * layer_decay^(L + 1 - l); timm's SwinV2 merges patches at the START of stage i (i >= 1), which is the end of
stage i - 1, so a merge shares the layer id of the last block before it. Norms, biases, SwinV2's continuous
position-bias MLP and logit scales take no weight decay. Schedule: linear warm-up from ``warmup_lr`` over
``warmup_steps``, then cosine to ``min_lr`` (step-wise, as timm's scheduler with t_in_epochs=False).
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Callable, ContextManager, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import TrainingError

NO_DECAY = ("cpb_mlp", "logit_scale", "mask_token", "relative_position_bias_table", "absolute_pos_embed")


def stage_depths(model: nn.Module) -> list[int]:
    """Blocks per stage of the Swin encoder inside ``model`` (from parameter names ``...layers.i.blocks.j...``)."""
    depths: dict[int, int] = {}
    for name, _ in model.named_parameters():
        m = re.search(r"layers\.(\d+)\.blocks\.(\d+)\.", name)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depths[i] = max(depths.get(i, 0), j + 1)
    return [depths[i] for i in sorted(depths)]


def layer_id(name: str, depths: list[int]) -> int:
    """Layer index of a parameter for layer-wise lr decay (see the module doc)."""
    if "patch_embed" in name or "mask_token" in name:
        return 0
    m = re.search(r"layers\.(\d+)\.blocks\.(\d+)\.", name)
    if m:
        return 1 + sum(depths[: int(m.group(1))]) + int(m.group(2))
    m = re.search(r"layers\.(\d+)\.downsample\.", name)
    if m:
        return sum(depths[: int(m.group(1))])
    return sum(depths) + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: one per (layer, decay or not), each with ``lr_scale``."""
    depths = stage_depths(model)
    top = sum(depths) + 1
    # names a module declares decay-free (XGeo: expert biases, mask token; timm: position-bias MLPs, scales)
    skip = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            skip |= {f"{prefix}.{n}" if prefix else n for n in declared()}
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depths)
        no_decay = (p.ndim == 1 or name.endswith(".bias") or any(k in name for k in NO_DECAY)
                    or any(name == n or name.startswith(n + ".") for n in skip))
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (top - lid)}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def lr_at(step: int, s: Mapping) -> float:
    """Learning rate (before the layer scale) at optimiser step ``step`` (0-based) of ``s["steps"]``."""
    warm = int(s["warmup_steps"])
    if step < warm:
        return s["warmup_lr"] + (s["lr"] - s["warmup_lr"]) * step / warm
    total = max(1, int(s["steps"]) - warm)
    t = min(1.0, (step - warm) / total)
    return s["min_lr"] + 0.5 * (s["lr"] - s["min_lr"]) * (1 + math.cos(math.pi * t))


def make_optimizer(model: nn.Module, s: Mapping) -> torch.optim.Optimizer:
    groups = param_groups(model, float(s["weight_decay"]), float(s["layer_decay"]))
    # fused: one kernel over all tensors instead of a Python loop per tensor (5x the optimizer step on 2 CPU cores,
    # benchmarks/finetune_optimizer.py); available for float tensors on the CPU and CUDA
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=float(s["lr"]),
                             betas=tuple(s["betas"]), eps=float(s["eps"]), fused=fused)


def infinite(loader) -> Iterator:
    """The loader's batches, epoch after epoch (a DistributedSampler is told the epoch, so each one reshuffles)."""
    epoch = 0
    while True:
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of a loader batch on ``device`` (the rest as it is)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(model: nn.Module, step_loss: Callable[[dict], torch.Tensor], loader, s: Mapping, steps: int,
          desc: str = "finetune", log: Callable[[dict, int], None] | None = None, log_every: int = 10,
          device: torch.device | None = None, precision: Callable[[], ContextManager] = contextlib.nullcontext,
          mean_loss: Callable[[torch.Tensor], float] | None = None,
          on_step: Callable[[int, nn.Module], None] | None = None, progress: bool = True) -> list[float]:
    """Run ``steps`` AdamW steps of ``step_loss(batch) -> scalar loss``; returns the loss of every step.

    ``model`` owns the parameters (the optimiser's); ``step_loss`` may run it through a DDP or compiled wrapper.
    Batches go to ``device``; the forward runs under ``precision()`` (autocast). ``mean_loss`` turns a step's loss
    into the number logged (under DDP: the mean over ranks, so every rank sees the same value and stops on the
    same step). ``on_step(step, model)`` is called after every optimiser step (1-based).
    Raises TrainingError on a non-finite loss (naming the step), so a bad learning rate does not write metrics.
    """
    device = device or torch.device("cpu")
    opt = make_optimizer(model, s)
    sched = dict(s, steps=steps)
    losses: list[float] = []
    model.train()
    batches = infinite(loader)
    bar = tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True, disable=not progress)
    for step in bar:
        lr = lr_at(step, sched)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        with precision():
            loss = step_loss(to_device(next(batches), device))
        value = mean_loss(loss) if mean_loss is not None else float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(f"{desc}: the loss became {value} at step {step}; lower finetune lr "
                                f"(now {s['lr']}) or check the inputs")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.get("clip_grad"):
            nn.utils.clip_grad_norm_(model.parameters(), float(s["clip_grad"]))
        opt.step()
        losses.append(value)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log({"train_loss": losses[-1], "lr": lr}, step)
        if on_step is not None:
            on_step(step + 1, model)
    return losses


def positions(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, length) with the last window flush with the edge."""
    if length <= window:
        return [0]
    offs = list(range(0, length - window + 1, stride))
    if offs[-1] != length - window:
        offs.append(length - window)
    return offs


def sliding_window(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: int, stride: int,
                   batch: int = 8, device: torch.device | None = None) -> torch.Tensor:
    """Dense prediction of one image (C, H, W) -> (K, H, W): :func:`sliding_windows` of a batch of one."""
    return sliding_windows(fn, image[None], window, stride, batch, device)[0]


@torch.inference_mode()
def sliding_windows(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, window: int, stride: int,
                    batch: int = 8, device: torch.device | None = None) -> torch.Tensor:
    """Dense prediction of images of any size with a model that takes ``window`` x ``window`` inputs.

    images: (B, C, H, W) -> (B, K, H, W) float32 on the images' device, per pixel the mean of the outputs of every
    window covering it. The windows of all B images (image-major, then row, then column) go to ``device`` (the
    model's; default: the images') in chunks of ``batch``, so B small tiles of one window each are ONE forward of
    ``batch`` windows, not B forwards of one; the sums are kept there in float32 (an autocast model's bf16 outputs
    are not summed in bf16). Images smaller than the window are padded (replicated edge) and the output cropped
    back. A model whose output for a window depends on the other windows of its chunk (MoE capacity) gives results
    that depend on ``batch``.
    """
    b, c, h, w = images.shape
    device = device or images.device
    ph, pw = max(0, window - h), max(0, window - w)
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph), mode="replicate")
    H, W = images.shape[-2:]
    boxes = [(k, y, x) for k in range(b) for y in positions(H, window, stride) for x in positions(W, window, stride)]
    out = count = None
    for i in range(0, len(boxes), batch):
        chunk = boxes[i:i + batch]
        pred = fn(torch.stack([images[k, :, y:y + window, x:x + window] for k, y, x in chunk]).to(device)).float()
        if out is None:
            out = pred.new_zeros(b, pred.shape[1], H, W)
            count = pred.new_zeros(b, 1, H, W)
        for (k, y, x), p in zip(chunk, pred):
            out[k, :, y:y + window, x:x + window] += p
            count[k, :, y:y + window, x:x + window] += 1
    return (out / count)[..., :h, :w].to(images.device)
