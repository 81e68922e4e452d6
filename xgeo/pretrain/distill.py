"""The distillation baselines of Table 5: ``pretrain.objective: distill`` (GFM-style) and ``eva``.

``distill`` (GFM, Mendieta et al. 2023): the student (XGeo) sees the masked image; its stage-3 feature map goes
through a linear projection and is regressed (mean squared error) onto the stage-3 features that a frozen teacher
(an ImageNet Swin / SwinV2 from timm) computes from the unmasked image; the cross-sensor SimMIM loss is added.
``eva`` (Fang et al. 2022): no pixel loss; the projected student features regress the teacher's features at the
masked positions only (negative cosine similarity, as EVA).

The teacher sees three channels: the sensor's display bands (``xgeo.pretrain.figures.display_bands``: R, G, B of
optical sensors; VV, VH, VV - VH of SAR; the single band of a DSM repeated), normalised like the student's input.
Its weights come from a LOCAL file (``pretrain.teacher: {arch, path, kwargs}``): nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XGeoError
from ..sensors import get_sensor
from .figures import display_bands
from .train import CrossSensorObjective

STAGE = 2  # 0-based: stage 3 of Swin, the features GFM distils


def build_teacher(conf: dict | str | None, img_size: int) -> nn.Module:
    """A frozen timm Swin/SwinV2 from ``{arch, path, kwargs}`` (or a bare path whose stem is a timm model name).

    Raises naming the file to put where, or the key to set.
    """
    if isinstance(conf, str):
        conf = {"path": conf}
    if not conf or not conf.get("path"):
        raise XGeoError(
            "params pretrain.teacher: the distill / eva objectives need a teacher, e.g. "
            "{arch: swinv2_base_window12_192, path: weights/swinv2_base_in22k.pth}; found "
            f"{conf!r}"
        )
    path = Path(conf["path"])
    arch_text = repr(conf["arch"]) if conf.get("arch") else "a timm Swin/SwinV2"
    if not path.exists():
        raise XGeoError(
            f"teacher weights {path} not found: place the state dict of timm's {arch_text} (an ImageNet "
            f"checkpoint, .pth or .safetensors) at {path.resolve()}; nothing is downloaded at run time"
        )
    import timm

    kwargs = dict(conf.get("kwargs") or {})
    arch = (conf.get("arch") or path.stem).split(".")[0]
    if not timm.is_model(arch):
        raise XGeoError(f"params pretrain.teacher: {path} does not say which timm model it holds; set "
                        f"pretrain.teacher to {{arch: <timm name, e.g. swinv2_base_window12_192>, path: {path}}}")
    try:
        teacher = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size, **kwargs)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise XGeoError(f"params pretrain.teacher.arch: timm cannot build {arch!r} with {kwargs}: {exc}") from None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
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


class DistillObjective(CrossSensorObjective):
    """Cross-sensor objective plus (``distill``) or instead of pixels (``eva``) the teacher's stage-3 features.

    forward(batch) -> (loss, logs) like :class:`CrossSensorObjective`; logs add ``feat_loss``.
    """

    def __init__(self, model, layouts, weights, teacher: nn.Module, mode: str, feat_weight: float = 1.0):
        super().__init__(model, layouts, weights)
        self.mode = mode
        self.feat_weight = feat_weight
        self.teacher = [teacher]  # a list: kept out of the module tree (frozen, not saved, not in DDP)
        c_student = model.encoder.feature_info[STAGE]["num_chs"]
        c_teacher = teacher.feature_info[STAGE]["num_chs"]
        self.proj = nn.Linear(c_student, c_teacher)
        self._captured: list[torch.Tensor] = []
        stage = model.encoder.layers[STAGE]
        stage.register_forward_hook(lambda m, i, o: self._captured.append(o))

    def _student_stage(self) -> torch.Tensor:
        """The last captured stage-3 map as (B, h, w, C) (timm SwinV2 stages are NHWC)."""
        out = self._captured[-1]
        self._captured.clear()
        return out

    def _teacher_features(self, x: torch.Tensor, sensor: str) -> torch.Tensor:
        teacher = self.teacher[0].to(x.device)
        with torch.no_grad():
            feats = teacher.forward_intermediates(teacher_input(x, sensor), indices=[STAGE], intermediates_only=True)[0]
        return feats.permute(0, 2, 3, 1)  # (B, h, w, C_t)

    def forward(self, batch: dict):
        total = 0.0
        logs: dict[str, torch.Tensor] = {}
        rec_sum, aux_sum, feat_sum, count = 0.0, 0.0, 0.0, 0
        sums: dict[str, list] = {}
        for gname, gb in batch.items():
            layout = self.layouts[gname]
            group_loss = 0.0
            keys = list(layout.sensors)
            for key in keys:
                sensor = layout.sensors[key]
                x, mask = gb["images"][key], gb["masks"][key]
                n = x.shape[0]
                self._captured.clear()
                z, aux = self.model.forward_encoder(x, sensor, mask)
                student = self.proj(self._student_stage())  # (B, h, w, C_t)
                target = F.layer_norm(self._teacher_features(x, sensor), student.shape[-1:])
                if self.mode == "eva":
                    # masked positions of the stage-3 grid: a cell counts as masked when most of its tokens are
                    m = F.adaptive_avg_pool2d(mask[:, None].float(), student.shape[1:3])[:, 0] > 0.5
                    cos = F.cosine_similarity(student, target, dim=-1)
                    feat = -(cos * m).sum() / m.sum().clamp_min(1)
                    rec = torch.zeros((), device=x.device)
                    loss = feat + aux
                else:
                    feat = F.mse_loss(student, target)
                    rec = self.reconstruction(z, key, layout, gb)
                    loss = rec + self.feat_weight * feat + aux
                group_loss = group_loss + loss / len(keys)
                s = sums.setdefault(sensor, [0.0, 0])
                s[0] = s[0] + loss.detach() * n
                s[1] += n
                rec_sum = rec_sum + rec.detach()
                aux_sum = aux_sum + torch.as_tensor(aux).detach()
                feat_sum = feat_sum + feat.detach()
                count += 1
            logs[f"loss/group/{gname}"] = group_loss.detach()
            total = total + self.weights[gname] * group_loss
        for sensor, (acc, n) in sums.items():
            logs[f"loss/{sensor}"] = acc / n
        logs["rec_loss"], logs["aux_loss"], logs["feat_loss"] = rec_sum / count, aux_sum / count, feat_sum / count
        return total, logs


def make_distill_objective(params: dict, model, layouts, weights) -> DistillObjective:
    cfg = params["pretrain"]
    sizes = {params["data"]["datasets"][d].get("resize_to") or params["data"]["datasets"][d]["tile_size"]
             for g in cfg["groups"].values() for d in g["datasets"]}
    if len(sizes) != 1:
        raise XGeoError(f"pretrain.objective {cfg['objective']!r}: the teacher needs one image size, "
                        f"the pretraining stores have {sorted(sizes)}")
    teacher = build_teacher(cfg.get("teacher"), sizes.pop())
    return DistillObjective(model, layouts, weights, teacher, cfg["objective"])
