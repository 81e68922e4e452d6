"""Checkpoints of the XGeo model: save (atomic), load (rebuilt from the stored ``model_config``), timm export.

A checkpoint is a ``torch.save`` dict: ``{"model": state_dict, "model_config": XGeo.config, "xgeo_version", ...}``
plus what the trainer adds (params, step, optimizer, scheduler, sampler, rng; see docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..version import __version__
from ..errors import CheckpointError
from ..io import atomic_path, write_json
from .moe import MoE
from .xgeo import XGeo, model_config

# what load_pretrained leaves out of ``meta``: the weights, and the training state only resume needs
_HEAVY = ("model", "optimizer", "scheduler", "rng")


def save_checkpoint(path: str | os.PathLike, model: XGeo | Mapping, **state: Any) -> None:
    """Write ``path`` atomically. ``model``: an XGeo (its state dict and config are stored, with ``state``), or a
    complete checkpoint dict (as the trainer assembles it), stored as given plus ``state``."""
    if isinstance(model, Mapping):
        ckpt = dict(model)
    else:
        ckpt = {"model": model.state_dict(), "model_config": model.config}
    ckpt.update(state)
    ckpt.setdefault("xgeo_version", __version__)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict; CheckpointError when missing, unreadable or not an xgeo checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (expected a last.ckpt written by xgeo pretrain)")
    try:
        # our own files: they hold params and RNG states besides tensors, so not weights_only
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc}); "
                              f"a truncated or foreign file? Re-run the pretraining that writes it") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected an xgeo checkpoint with 'model' and 'model_config'; found {found}")
    return ckpt


def _config_of(ckpt: Mapping) -> dict:
    cfg = dict(ckpt["model_config"])
    if "embed_dim" not in cfg:  # a bare ``model`` section of params.yaml: resolve it as build_model does
        cfg = model_config({"model": cfg})
    return cfg


def config_differences(stored: Mapping, expected: Mapping, prefix: str = "model_config") -> list[str]:
    """Human-readable differences between two model configs (architecture keys only)."""
    out = []
    for key in sorted(set(stored) | set(expected)):
        a, b = stored.get(key, "<absent>"), expected.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}: checkpoint {a!r}, params {b!r}")
    return out


def _without_backend(config: Mapping) -> dict:
    moe = {k: v for k, v in (config.get("moe") or {}).items() if k != "backend"}
    return {**config, "moe": moe}


def load_pretrained(path: str | os.PathLike, params: Mapping | None = None,
                    backend: str | None = None) -> tuple[XGeo, dict]:
    """Rebuild the XGeo of a checkpoint and load its weights -> (model in eval mode, meta).

    ``params``: when given, its model configuration must equal the checkpoint's (CheckpointError naming what
    differs; the MoE backend is how the model runs, not what it is). ``backend``: the MoE backend to rebuild with
    (default: params' ``model.moe.backend`` when params are given, else native): a checkpoint of either backend,
    written by any number of processes, loads into either (``xgeo.model.moe`` maps the weights).
    ``meta``: the checkpoint without its weights and optimizer/scheduler/RNG states (``model_config`` as saved).
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    config = _config_of(ckpt)
    if params is not None:
        diffs = config_differences(_without_backend(config), _without_backend(model_config(params)))
        if diffs:
            raise CheckpointError(f"{path}: the checkpoint's model differs from params.yaml: " + "; ".join(diffs))
    if backend is None:
        backend = ((params.get("model") or {}).get("moe") or {}).get("backend", "native") if params else "native"
    built = {**config, "moe": {**(config.get("moe") or {}), "backend": backend}} if config.get("moe") else config
    try:
        model = XGeo(built)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model from its model_config ({exc})") from None
    result = model.load_state_dict(ckpt["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not fit the model of its model_config: missing "
                              f"{result.missing_keys[:6]}, unexpected {result.unexpected_keys[:6]}")
    meta = {k: v for k, v in ckpt.items() if k not in _HEAVY}
    meta["model_config"] = config
    return model.eval(), meta


def timm_model_args(config: Mapping, in_chans: int) -> tuple[str, dict]:
    """(timm model name, kwargs) of the plain SwinV2 with the encoder's architecture, headless."""
    name = config.get("timm_name") or "swinv2_base_window12_192"
    kwargs = dict(embed_dim=config["embed_dim"], depths=tuple(config["depths"]), num_heads=tuple(config["num_heads"]),
                  img_size=config["img_size"], window_size=config["window_size"], mlp_ratio=config["mlp_ratio"],
                  in_chans=in_chans, num_classes=0)
    return name, kwargs


def dense_encoder_state(model: XGeo, sensor: str) -> dict[str, torch.Tensor]:
    """The encoder as a plain timm SwinV2 state dict: patch_embed from ``sensor``; each MoE block as a dense MLP
    whose weights are the experts' average weighted by their recorded training load (exact only for dense models:
    an MoE block is a gated choice of experts, not their average)."""
    state = {}
    moe = {name: m for name, m in model.encoder.named_modules() if isinstance(m, MoE)}
    for key, value in model.encoder.state_dict().items():
        if not any(key.startswith(p + ".") for p in moe):
            state[key] = value.detach().clone()
    for prefix, m in moe.items():
        w = m.expert_weights().to(m.w1.dtype)
        state[f"{prefix}.fc1.weight"] = torch.einsum("e,edh->hd", w, m.w1.detach())
        state[f"{prefix}.fc1.bias"] = torch.einsum("e,eh->h", w, m.b1.detach()[:, 0])
        state[f"{prefix}.fc2.weight"] = torch.einsum("e,ehd->dh", w, m.w2.detach())
        state[f"{prefix}.fc2.bias"] = torch.einsum("e,ed->d", w, m.b2.detach()[:, 0])
    emb = model.patch_embeds[sensor]
    state["patch_embed.proj.weight"] = emb.proj.weight.detach().clone()
    state["patch_embed.proj.bias"] = emb.proj.bias.detach().clone()
    state["patch_embed.norm.weight"] = emb.norm.weight.detach().clone()
    state["patch_embed.norm.bias"] = emb.norm.bias.detach().clone()
    return state


def export_timm(ckpt: str | os.PathLike, out: str | os.PathLike, sensor: str | None = None) -> dict:
    """Write the pretrained encoder as a state dict for ``timm.create_model(name, pretrained=False, **kwargs)``.

    ``sensor`` picks the patch embedding (default: the first of the checkpoint's sensors); ``in_chans`` is its band
    count. Paper size: ``swinv2_base_window12_192``; other sizes the same family with their sizes as kwargs. The
    state dict is headless (``num_classes=0``) and loads with ``strict=True``. MoE blocks become dense MLPs (the
    load-weighted average of the experts; exact only for dense models). The name and kwargs are also written
    beside it as ``OUT.json``. Returns {"path", "model_name", "kwargs", "sensor", "exact"}.
    """
    ckpt, out = Path(ckpt), Path(out)
    model, _meta = load_pretrained(ckpt)
    sensors = list(model.config["sensors"])
    sensor = sensor or sensors[0]
    if sensor not in model.patch_embeds:
        raise CheckpointError(f"{ckpt}: no patch embedding for sensor {sensor!r}; the checkpoint has {sensors}")
    state = dense_encoder_state(model, sensor)
    name, kwargs = timm_model_args(model.config, model.patch_embeds[sensor].in_chans)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    info = {"path": str(out), "model_name": name, "kwargs": kwargs, "sensor": sensor,
            "bands": list(model.patch_embeds[sensor].band_names), "exact": not model.moe_layers()}
    write_json(Path(str(out) + ".json"), {**info, "kwargs": {k: list(v) if isinstance(v, tuple) else v
                                                              for k, v in kwargs.items()}})
    return info
