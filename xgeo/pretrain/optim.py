"""The pretraining optimizer: AdamW of Table 11, weight decay on weights only."""
from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases (expert biases too), tokens, position tables, SwinV2's scales."""
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
