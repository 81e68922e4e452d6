"""The XGeo encoder as a TerraTorch backbone (PyPI ``terratorch``, the optional extra ``xgeo[terratorch]``).

Registered in ``terratorch.registry.TERRATORCH_BACKBONE_REGISTRY`` under ``xgeo_swinv2_demo`` and
``xgeo_swinv2_base`` when this module is imported (``xgeo/__init__.py`` imports it as soon as TerraTorch is
imported in a process that imported xgeo; for TerraTorch's own CLI put ``import xgeo.integrations.terratorch`` in
the ``custom_modules/__init__.py`` its ``custom_modules_path`` names). A TerraTorch config then finetunes an xgeo
checkpoint on any of its tasks::

    model:
      class_path: terratorch.tasks.SemanticSegmentationTask
      init_args:
        model_factory: EncoderDecoderFactory
        model_args:
          backbone: xgeo_swinv2_demo
          backbone_ckpt_path: checkpoints/xgeo/last.ckpt   # xgeo pretrain's last.ckpt; nothing is downloaded
          backbone_sensor: s2                               # whose patch embedding reads the image
          decoder: UperNetDecoder
          num_classes: 6

The backbone returns the encoder's four stage outputs (NCHW, ``out_channels`` = their widths) through
``XGeo.forward_features``, the model's one encode path; inputs are square, a multiple of 32 pixels (the encoder
is re-sized to each new input size), normalised per band as in pretraining.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import CheckpointError, XGeoError

SIZES = {"xgeo_swinv2_demo": "demo", "xgeo_swinv2_base": "paper"}


class XGeoBackbone(nn.Module):
    """forward(x (B, C_sensor, H, H)) -> [4 maps (B, C_s, H / 4 / 2^s, ...)]; ``out_channels`` their widths."""

    patch_size = 32  # TerraTorch pads inputs to a multiple of this: the encoder stride

    def __init__(self, model, sensor: str | None = None, bands: Sequence[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.model.decoders = nn.ModuleDict()  # the pretraining decoders take no part
        self.sensor = sensor or model.config["sensors"][0]
        if self.sensor not in model.patch_embeds:
            raise CheckpointError(f"sensor {self.sensor!r}: the model has patch embeddings for "
                                  f"{list(model.patch_embeds)}")
        self.bands = list(bands) if bands is not None else None
        self.out_channels = [int(model.config["embed_dim"] * 2 ** s) for s in range(len(model.config["depths"]))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != x.shape[-2]:
            raise XGeoError(f"xgeo backbone: expected square inputs, found {tuple(x.shape[-2:])}")
        self.model.set_input_size(int(x.shape[-1]))
        return self.model.forward_features(x, self.sensor, self.bands)[0]


def build_backbone(variant: str, pretrained: bool = False, ckpt_path: str | None = None, sensor: str | None = None,
                   bands: Sequence[str] | None = None, img_size: int | None = None, **kwargs) -> XGeoBackbone:
    """The backbone of ``variant``: weights from the xgeo checkpoint ``ckpt_path`` (its model_config sets the
    sensors and MoE), else untrained with params.yaml's ``model.sensors`` / ``model.moe``."""
    from ..model.checkpoint import load_pretrained
    from ..model.xgeo import XGeo

    size = SIZES[variant]
    if ckpt_path:
        model, _meta = load_pretrained(ckpt_path)
        if model.config.get("size") != size:
            raise CheckpointError(f"{ckpt_path}: a model of size {model.config.get('size')!r}; {variant} is {size!r}")
        model.train()
    elif pretrained:
        raise CheckpointError(f"{variant}: xgeo weights are local files; pass backbone_ckpt_path: PATH/last.ckpt")
    else:
        from .timm_models import _default_config

        model = XGeo(_default_config(size, **{k: kwargs.pop(k) for k in ("sensors", "moe") if k in kwargs}))
    if kwargs:
        raise XGeoError(f"{variant}: unknown backbone arguments {sorted(kwargs)} (known: pretrained, ckpt_path, "
                        f"sensor, bands, img_size, sensors, moe)")
    if img_size:
        model.set_input_size(int(img_size))
    return XGeoBackbone(model, sensor, bands)


def register(registry=None) -> None:
    """Register the sizes in ``registry`` (default: TerraTorch's ``TERRATORCH_BACKBONE_REGISTRY``): a registry is
    anything with ``register(fn)`` that files ``fn`` under ``fn.__name__`` (TerraTorch's ``Registry``)."""
    if registry is None:
        from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY as registry

    def xgeo_swinv2_demo(**kwargs) -> XGeoBackbone:
        return build_backbone("xgeo_swinv2_demo", **kwargs)

    def xgeo_swinv2_base(**kwargs) -> XGeoBackbone:
        return build_backbone("xgeo_swinv2_base", **kwargs)

    for fn in (xgeo_swinv2_demo, xgeo_swinv2_base):
        if fn.__name__ not in registry:
            registry.register(fn)


try:
    import terratorch.registry  # noqa: F401
except ImportError:  # the optional extra is not installed: register() can still fill another registry
    pass
else:
    register()
