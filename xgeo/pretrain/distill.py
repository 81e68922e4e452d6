"""The distillation baselines of Table 5: ``pretrain.objective: distill`` (GFM-style) and ``eva``.

``distill`` (GFM, Mendieta et al. 2023): the student (XGeo) sees the masked image; its stage-3 feature map goes
through a linear projection and is regressed (mean squared error) onto the features that a frozen teacher computes
from the unmasked image (a hierarchical Swin / SwinV2 teacher: its stage 3; a plain ViT / CLIP: its final block);
the cross-sensor SimMIM loss is added.
``eva`` (Fang et al. 2022): no pixel loss; the projected FINAL student features regress the teacher's FINAL
features (after its last norm) at the masked positions only (negative cosine similarity, as EVA).

Both encode the whole step through ``XGeo.encode`` (one pass, the same MoE routing as "from scratch") and add the
MoE auxiliary loss once per step, not scaled by a group's weight.

The teacher sees three channels: the sensor's display bands (``xgeo.pretrain.figures.display_bands``: R, G, B of
optical sensors; VV, VH, VV - VH of SAR; the single band of a DSM repeated), normalised like the student's input.
It runs at the student's input size: timm builds it at that size and its checkpoint filter resamples what depends
on it (a ViT's position embedding, a Swin's patch embedding); its feature map is resized to the student's grid.
Its weights come from a LOCAL file (``pretrain.teacher: {arch, path, kwargs}``): nothing is downloaded.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XGeoError
from ..sensors import get_sensor
from .figures import display_bands
from .objective import CrossSensorObjective

STAGE = 2  # 0-based: stage 3 of Swin, the features GFM distils


def teacher_spec(conf) -> dict:
    """``pretrain.teacher`` as {arch, path, kwargs}; a bare path only when its stem is a timm model name."""
    import timm

    if not conf:
        raise XGeoError("params pretrain.teacher: the distill / eva objectives need a teacher, e.g. "
                        "{arch: swinv2_base_window12_192, path: weights/swinv2_base_in22k.pth}; found "
                        f"{conf!r}")
    if isinstance(conf, str):
        stem = Path(conf).stem.split(".")[0]
        if not timm.is_model(stem):
            raise XGeoError(f"params pretrain.teacher: {conf!r} does not say which timm model it holds (its stem "
                            f"{stem!r} is not a timm model name); set pretrain.teacher to "
                            f"{{arch: <timm name, e.g. swinv2_base_window12_192>, path: {conf}}}")
        conf = {"arch": stem, "path": conf}
    conf = dict(conf)
    if not conf.get("path") or not conf.get("arch"):
        raise XGeoError(f"params pretrain.teacher: expected {{arch: <timm name>, path: <local file>}}, found {conf!r}")
    arch = str(conf["arch"]).split(".")[0]
    if not timm.is_model(arch):
        raise XGeoError(f"params pretrain.teacher.arch: {conf['arch']!r} is not a timm model name")
    return {"arch": arch, "path": Path(conf["path"]), "kwargs": dict(conf.get("kwargs") or {})}


def build_teacher(conf, img_size: int) -> nn.Module:
    """A frozen timm model of ``pretrain.teacher`` at ``img_size`` px, weights from its local file.

    Raises naming the file to put where, or the key to set.
    """
    spec = teacher_spec(conf)
    path, arch, kwargs = spec["path"], spec["arch"], spec["kwargs"]
    if not path.exists():
        raise XGeoError(
            f"teacher weights {path} not found: place the state dict of timm's {arch!r} (an ImageNet or CLIP "
            f"checkpoint, .pth or .safetensors) at {path.resolve()}; nothing is downloaded at run time"
        )
    import timm

    try:
        teacher = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size, **kwargs)
    except (RuntimeError, KeyError, TypeError, AssertionError) as exc:
        raise XGeoError(f"params pretrain.teacher.arch: timm cannot build {arch!r} at {img_size} px with "
                        f"{kwargs}: {exc}") from None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
    # the model family's own filter: resamples a ViT's position embedding to this size, converts CLIP layouts
    filt = getattr(importlib.import_module(type(teacher).__module__), "checkpoint_filter_fn", None)
    if filt is not None:
        state = filt(state, teacher)
    state = {k: v for k, v in state.items() if not k.startswith("head")}
    missing, unexpected = teacher.load_state_dict(state, strict=False)
    # buffers rebuilt from the image size (attention masks, coordinate tables) may be absent from a checkpoint
    real_missing = [k for k in missing if not any(s in k for s in ("attn_mask", "relative_coords", "relative_position_index"))]
    if real_missing or unexpected:
        raise XGeoError(f"{path}: not a state dict of timm's {arch!r} with {kwargs}: missing {real_missing[:5]}, "
                        f"unexpected {list(unexpected)[:5]}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def teacher_input(x: torch.Tensor, sensor: str) -> torch.Tensor:
    """(B, C, H, W) normalised sensor image -> (B, 3, H, W) for an RGB teacher."""
    idx = display_bands(sensor)
    if get_sensor(sensor).kind == "sar" and len(idx) == 2:
        return torch.stack([x[:, idx[0]], x[:, idx[1]], x[:, idx[0]] - x[:, idx[1]]], 1)
    if len(idx) == 1:
        return x[:, idx[0]: idx[0] + 1].expand(-1, 3, -1, -1)
    return x[:, idx]


def _hierarchical(teacher: nn.Module) -> bool:
    """A teacher with stages of decreasing resolution (Swin), rather than one token grid (ViT)."""
    reductions = {f.get("reduction") for f in getattr(teacher, "feature_info", [])}
    return len(reductions) > 1


class DistillObjective(CrossSensorObjective):
    """Cross-sensor objective plus (``distill``) or instead of pixels (``eva``) the teacher's features.

    forward(batch) -> (loss, logs) like :class:`CrossSensorObjective`; logs add ``feat_loss``.
    """

    def __init__(self, model, layouts, weights, teacher: nn.Module, mode: str, feat_weight: float = 1.0):
        super().__init__(model, layouts, weights)
        if mode not in ("distill", "eva"):
            raise XGeoError(f"params pretrain.objective: expected distill | eva, found {mode!r}")
        self.mode = mode
        self.feat_weight = feat_weight
        self.teacher = [teacher]  # a list: kept out of the module tree (frozen, not saved, not in DDP)
        # the student's stage: stage 3 for GFM's distillation, the final features for EVA
        self.student_stage = STAGE if mode == "distill" else len(model.config["depths"]) - 1
        self.teacher_index = STAGE if (mode == "distill" and _hierarchical(teacher)) else None  # None: final
        c_student = model.encoder.feature_info[self.student_stage]["num_chs"]
        c_teacher = teacher.num_features if self.teacher_index is None else \
            teacher.feature_info[self.teacher_index]["num_chs"]
        self.proj = nn.Linear(c_student, c_teacher)

    def teacher_features(self, x: torch.Tensor, sensor: str, grid: tuple[int, int]) -> torch.Tensor:
        """The frozen teacher's features of the unmasked image, resized to the student's ``grid``: (B, h, w, C_t)."""
        teacher = self.teacher[0].to(x.device)
        with torch.no_grad():
            if self.teacher_index is None:  # the final features, after the teacher's last norm
                feats = teacher.forward_intermediates(teacher_input(x, sensor), indices=1, norm=True,
                                                      intermediates_only=True)[-1]
            else:
                feats = teacher.forward_intermediates(teacher_input(x, sensor), indices=[self.teacher_index],
                                                      intermediates_only=True)[0]
            if tuple(feats.shape[-2:]) != tuple(grid):
                feats = F.interpolate(feats.float(), size=grid, mode="bilinear", align_corners=False)
        return feats.permute(0, 2, 3, 1)

    def feature_loss(self, student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """student, target: (B, h, w, C_t); mask: (B, H/4, W/4) token mask -> ()."""
        target = F.layer_norm(target, target.shape[-1:])
        if self.mode == "distill":
            return F.mse_loss(student, target)
        # EVA: masked cells of the student's grid (a cell counts as masked when most of its tokens are)
        m = F.adaptive_avg_pool2d(mask[:, None].float(), student.shape[1:3])[:, 0] > 0.5
        cos = F.cosine_similarity(student, target, dim=-1)
        return -(cos * m).sum() / m.sum().clamp_min(1)

    def forward(self, batch: dict):
        entries = self.entries(batch)
        zs, aux, stages = self.encode(batch, entries, return_stages=True)
        feats = []
        for (g, key), st in zip(entries, stages):
            x, mask = batch[g]["images"][key], batch[g]["masks"][key]
            s = st[self.student_stage].permute(0, 2, 3, 1)  # (B, h, w, C_s)
            student = self.proj(s)
            target = self.teacher_features(x, self.layouts[g].sensors[key], tuple(s.shape[1:3]))
            feats.append(self.feature_loss(student.float(), target.float(), mask))
        if self.mode == "eva":  # features instead of pixels
            recs = [torch.zeros((), device=aux.device) for _ in entries]
            losses = feats
        else:
            recs = self.reconstruction_losses([self.targets(z, k, self.layouts[g], batch[g])
                                               for (g, k), z in zip(entries, zs)])
            losses = [r + self.feat_weight * f for r, f in zip(recs, feats)]
        logs = {"rec_loss": torch.stack([torch.as_tensor(r).detach().float() for r in recs]).mean(),
                "feat_loss": torch.stack([f.detach() for f in feats]).mean()}
        return self.combine(batch, entries, losses, aux, logs)


def make_distill_objective(params: dict, model, layouts, weights) -> DistillObjective:
    """The Table 5 objective of ``pretrain.objective``, its teacher at the model's input size."""
    cfg = params["pretrain"]
    teacher = build_teacher(cfg.get("teacher"), model.img_size)
    return DistillObjective(model, layouts, weights, teacher, cfg["objective"])
