"""The XGeo encoder as timm models: ``xgeo_swinv2_demo`` and ``xgeo_swinv2_base`` (the paper's size).

Registered with timm once ``xgeo`` is imported (``xgeo/__init__.py``), MoE blocks included::

    import timm, xgeo
    model = timm.create_model("xgeo_swinv2_base", pretrained=True,
                              pretrained_cfg_overlay={"file": "checkpoints/xgeo/last.ckpt"}, sensor="s2")
    final, maps = model.forward_intermediates(x)   # x: (B, 13, 192, 192) normalised S2

Nothing is downloaded: the weights are a local xgeo checkpoint (``xgeo pretrain``'s ``last.ckpt``, read with
``xgeo.model.checkpoint.read_checkpoint``); its ``model_config`` sets the architecture (sensors, MoE), which must be
of the named size. Without a file the model is built untrained with ``model.sensors`` and ``model.moe`` of the
project's params.yaml. Keyword arguments: ``sensor`` (whose patch embedding reads the input; default the first),
``img_size`` (a multiple of 32), ``num_classes`` (a linear head on the mean-pooled last stage; 0 = none),
``in_chans`` (ignored: the sensor's band count is the input's).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from ..errors import CheckpointError, XGeoError

SIZES = {"xgeo_swinv2_demo": "demo", "xgeo_swinv2_base": "paper"}


class XGeoTimm(nn.Module):
    """timm-style wrapper of :class:`xgeo.model.XGeo` for one input sensor (decoders dropped)."""

    def __init__(self, config: dict, sensor: str | None = None, img_size: int | None = None, num_classes: int = 0,
                 in_chans: int | None = None, global_pool: str = "avg", **_ignored) -> None:
        super().__init__()
        from ..model.xgeo import XGeo

        self.xgeo = XGeo(config)
        self.xgeo.decoders = nn.ModuleDict()  # pretraining decoders: not part of the encoder
        self.sensor = sensor or config["sensors"][0]
        if self.sensor not in self.xgeo.patch_embeds:
            raise XGeoError(f"sensor {self.sensor!r}: the model has embeddings for {list(self.xgeo.patch_embeds)}")
        # timm fills in_chans from the default cfg (13, S2); the sensor's embedding decides the input bands
        self.in_chans = self.xgeo.patch_embeds[self.sensor].in_chans
        if img_size:
            self.xgeo.set_input_size(int(img_size[0] if isinstance(img_size, (tuple, list)) else img_size))
        self.num_features = self.head_hidden_size = self.xgeo.num_features
        self.num_classes, self.global_pool = num_classes, global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        stages = len(config["depths"])
        self.feature_info = [dict(num_chs=int(config["embed_dim"] * 2 ** s), reduction=4 * 2 ** s, module=f"stage{s}")
                             for s in range(stages)]

    def set_input_size(self, img_size) -> None:
        self.xgeo.set_input_size(int(img_size[0] if isinstance(img_size, (tuple, list)) else img_size))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The stage outputs (NCHW), as timm's models: ``indices`` None = all, n = the last n, a list = those."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise XGeoError(f"output_fmt {output_fmt!r}: expected NCHW or NHWC")
        maps, _aux = self.xgeo.forward_features(x, self.sensor)
        n = len(maps)
        take = list(range(n)) if indices is None else (list(range(n - indices, n)) if isinstance(indices, int)
                                                        else [i % n for i in indices])
        inter = [maps[i] if output_fmt == "NCHW" else maps[i].permute(0, 2, 3, 1) for i in take]
        return inter if intermediates_only else (maps[-1], inter)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last stage after the final norm, (B, C_m, H/32, W/32)."""
        return self.xgeo.forward_features(x, self.sensor)[0][-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _filter(state_dict: dict, model: XGeoTimm) -> dict:
    """An xgeo checkpoint's model state -> the wrapper's keys (decoders dropped)."""
    return {f"xgeo.{k}": v for k, v in state_dict.items() if not k.startswith("decoders.")}


def _default_config(size: str, **overrides) -> dict:
    """Untrained: the architecture of ``size`` with the project's model.sensors / model.moe (params.yaml)."""
    from ..config import load_params
    from ..model.xgeo import model_config

    params_file = Path(__file__).resolve().parents[2] / "params.yaml"
    model = dict(load_params(params_file)["model"]) if params_file.is_file() else {}
    if not model and "sensors" not in overrides:
        raise XGeoError("no params.yaml beside the package: pass sensors=[...] (and moe={...}) or a checkpoint file")
    model.update(size=size, **{k: v for k, v in overrides.items() if k in ("sensors", "moe")})
    return model_config({"model": model})


def _create(variant: str, pretrained: bool = False, **kwargs) -> XGeoTimm:
    from ..model.checkpoint import _config_of, read_checkpoint

    size = SIZES[variant]
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=overlay)
    config = None
    if pretrained:
        if cfg.state_dict is None and not cfg.file:
            raise CheckpointError(f"{variant}: xgeo weights are local files; pass pretrained_cfg_overlay="
                                  f"{{'file': 'checkpoints/<experiment>/last.ckpt'}} (nothing is downloaded)")
        if cfg.file:  # our checkpoints hold params besides tensors: read them ourselves, then timm's state_dict path
            ckpt = read_checkpoint(cfg.file)
            config = _config_of(ckpt)
            if config.get("size") != size:
                raise CheckpointError(f"{cfg.file}: a model of size {config.get('size')!r}; {variant} is size "
                                      f"{size!r} (use xgeo_swinv2_{'base' if config.get('size') == 'paper' else 'demo'})")
            overlay["state_dict"] = ckpt["model"]
    if config is None:
        config = _default_config(size, **{k: kwargs.pop(k) for k in ("sensors", "moe") if k in kwargs})
    kwargs.pop("sensors", None), kwargs.pop("moe", None)
    return build_model_with_cfg(XGeoTimm, variant, pretrained, pretrained_cfg_overlay=overlay,
                                pretrained_filter_fn=_filter, feature_cfg=dict(flatten_sequential=True),
                                config=config, **kwargs)


def _cfg(size: str) -> dict:
    from ..model.xgeo import MODEL_SIZES

    n = MODEL_SIZES[size]["img_size"]
    return {"num_classes": 0, "input_size": (13, n, n), "classifier": "head", "first_conv": None,
            "license": "apache-2.0", "origin_url": "local xgeo checkpoint (xgeo pretrain)"}


default_cfgs = generate_default_cfgs({name: _cfg(size) for name, size in SIZES.items()})


@register_model
def xgeo_swinv2_demo(pretrained: bool = False, **kwargs) -> XGeoTimm:
    """XGeo demo size (embed 32, depths 2-2-4-2, 64 px), MoE per the checkpoint / params.yaml."""
    return _create("xgeo_swinv2_demo", pretrained, **kwargs)


@register_model
def xgeo_swinv2_base(pretrained: bool = False, **kwargs) -> XGeoTimm:
    """XGeo paper size: SwinV2-Base (embed 128, depths 2-2-18-2, 192 px, window 12), MoE in stage 3 (Table 11)."""
    return _create("xgeo_swinv2_base", pretrained, **kwargs)
