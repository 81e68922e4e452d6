"""XGeo: cross-sensor SimMIM pretraining with a shared SwinV2 + MoE encoder (paper sections 3.1-3.4, Table 11).

For an image I_i of sensor i with C_i bands (Eq. 1, 2):

    tokens = f_i(I_i)                          per-sensor patch embedding, (B, H/4, W/4, C_e)
    tokens = tokens * (1 - w) + t_mask * w     SimMIM mask token on masked patches
    z      = En(tokens)                        shared timm SwinV2, MoE MLPs in the configured blocks, (B, C_m, H/32, W/32)
    I'_j   = D_j(z)                            per-sensor decoder: 1x1 conv to 32^2 C_j, PixelShuffle(32)
    loss   = sum(|I_j - I'_j| * m) / (sum(m) + 1e-5) / C_j  +  aux_weight * sum over MoE blocks of l_aux

with j = i (self-reconstruction, Eq. 2) or j = the co-located partner of i (cross-sensor, Eq. 1).

Sizes (``MODEL_SIZES``; ``model.size`` in params.yaml picks one):
- ``paper``: SwinV2-Base (embed 128, depths [2, 2, 18, 2], heads [4, 8, 16, 32]), 192 px, window 12; MoE in blocks
  1, 3, ..., 17 of stage 3 (Table 11).
- ``swin_base`` / ``swin_demo``: Swin v1 (timm's ``SwinTransformer``; ``swin_base`` has the shape of
  ``swin_base_patch4_window7_224``), for the RGB-only pretraining from scratch of appendix A.1 (Tables 8, 9).
- ``demo``: embed 32, depths [2, 2, 4, 2], heads [1, 2, 4, 8] (head width 32 as in SwinV2), 64 px, window 4: the
  same four-stage geometry (patch 4, stride 32, 2 x 2 final map at 64 px) small enough for a 2-core CPU; MoE in
  blocks 1 and 3 of stage 3, so the aux loss sums over two layers as in the paper.
``model.img_size`` / ``model.window_size`` (null: the size's own) run a size at another geometry, e.g. the demo
width at the paper's 192 px and window 12 (the fast paper-shape test).
Patch size 4 and decoder stride 32 are SwinV2's / SimMIM's; the paper's section 4 says "patch size of 16x16", which
matches neither the SwinV2 patch embedding (4) nor the encoder stride (32): we keep 4/32.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XGeoError
from ..sensors import get_sensor
from .embed import PATCH_SIZE, SensorEmbedding
from .moe import MoE, TutelMoE, build_moe, is_bias

ENCODER_STRIDE = 32  # SwinV2: patch 4 x three 2x patch mergings; SimMIM's decoder upsamples by this

MODEL_SIZES: dict[str, dict] = {
    "paper": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), img_size=192, window_size=12,
                  timm_name="swinv2_base_window12_192"),
    "demo": dict(embed_dim=32, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), img_size=64, window_size=4,
                 timm_name=None),
    # appendix A.1 (Tables 8 and 9): Swin v1 (arch "swin", timm's SwinTransformer) pretrained from scratch on RGB
    "swin_base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), img_size=224, window_size=7,
                      timm_name="swin_base_patch4_window7_224", arch="swin"),
    "swin_demo": dict(embed_dim=32, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), img_size=64, window_size=4,
                      timm_name=None, arch="swin"),  # the same v1 at the demo's width, for the embedded default
}


def model_config(params: Mapping) -> dict:
    """The self-contained description of the model (stored in checkpoints as ``model_config``)."""
    cfg = params.get("model") or {}
    size = cfg.get("size", "demo")
    if size not in MODEL_SIZES:
        raise XGeoError(f"params.yaml: model.size is {size!r}; expected one of {sorted(MODEL_SIZES)}")
    sensors = list(cfg.get("sensors") or [])
    if not sensors:
        raise XGeoError("params.yaml: model.sensors is empty; list the sensors to pretrain on (e.g. [rgb, s2, s1, dsm])")
    channels = {}
    for s in sensors:
        try:
            channels[s] = get_sensor(s).num_bands
        except KeyError as exc:
            raise XGeoError(f"params.yaml: model.sensors: {exc.args[0]}") from None
    dims = {k: (list(v) if isinstance(v, tuple) else v) for k, v in MODEL_SIZES[size].items()}
    # a size's geometry at another input / window (e.g. the demo width at the paper's 192 px, window 12)
    for key in ("img_size", "window_size"):
        if cfg.get(key) is not None:
            dims[key] = int(cfg[key])
    if dims["img_size"] % ENCODER_STRIDE:
        raise XGeoError(f"params.yaml: model.img_size is {dims['img_size']}; expected a multiple of the encoder "
                        f"stride {ENCODER_STRIDE}")
    return {
        "size": size, **dims, "patch_size": PATCH_SIZE, "encoder_stride": ENCODER_STRIDE,
        "mlp_ratio": float(cfg.get("mlp_ratio", 4.0)), "drop_path_rate": float(cfg.get("drop_path_rate", 0.1)),
        "sensors": sensors, "channels": channels, "moe": copy.deepcopy(dict(cfg.get("moe") or {"enabled": False})),
        "adapt_tolerance_nm": float(cfg.get("adapt_tolerance_nm", 50.0)),
    }


def moe_block_indices(config: Mapping) -> list[tuple[int, int]]:
    """(stage, block) of the MoE blocks: blocks j with j % every == every - 1 of the listed stages (0-based)."""
    moe = config.get("moe") or {}
    if not moe.get("enabled", False):
        return []
    every, stages = int(moe.get("every", 2)), [int(s) for s in moe.get("stages", [2])]
    depths = config["depths"]
    for s in stages:
        if not 0 <= s < len(depths):
            raise XGeoError(f"params.yaml: model.moe.stages has {s}; stages are 0..{len(depths) - 1}")
    return [(s, j) for s in stages for j in range(depths[s]) if j % every == every - 1]


class SimMIMDecoder(nn.Sequential):
    """SimMIM's decoder: 1x1 conv from C_m to stride^2 x C_i channels, then PixelShuffle(stride).

    The 1x1 conv keeps its ``nn.Conv2d`` parameters (checkpoint names ``decoders.<sensor>.0.weight`` as in SimMIM) but
    runs as one matrix product over the channels-last feature map: oneDNN's convolution re-lays out the
    (32^2 C_i, C_m) weight on every call and its backward is slow for this shape (a few output pixels, thousands of
    output channels). On the CPU the S2 decoder took about 50 ms per step as a convolution, 1-2 ms as a product
    (``benchmarks/pretrain_step.py``, demo width).
    """

    def __init__(self, in_features: int, channels: int, stride: int = ENCODER_STRIDE) -> None:
        super().__init__(nn.Conv2d(in_features, stride ** 2 * channels, kernel_size=1), nn.PixelShuffle(stride))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        conv, shuffle = self[0], self[1]
        y = F.linear(z.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)  # (B, h, w, stride^2 C_i)
        return shuffle(y.permute(0, 3, 1, 2))


class XGeo(nn.Module):
    """Per-sensor embeddings f_i, shared SwinV2(+MoE) encoder En, per-sensor SimMIM decoders D_i.

    Images: (B, C_i, H, W) float, normalised per band. Masks: (B, H/4, W/4) on the token grid, 1 = masked.
    """

    def __init__(self, config: Mapping) -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer
        from timm.models.swin_transformer_v2 import SwinTransformerV2

        self.config = copy.deepcopy(dict(config))
        c = self.config
        embed_dim = c["embed_dim"]
        self.img_size = c["img_size"]
        self.patch_embeds = nn.ModuleDict(
            {s: SensorEmbedding(c["channels"][s], embed_dim, sensor=s) for s in c["sensors"]})
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # SimMIM's init
        # in_chans is irrelevant: tokens come from our per-sensor embeddings, timm's own one is removed below
        # arch "swin" (appendix A.1's Swin-Base): timm's Swin v1, the same stages, blocks and NHWC token maps
        encoder_class = SwinTransformer if c.get("arch", "swinv2") == "swin" else SwinTransformerV2
        self.encoder = encoder_class(
            img_size=c["img_size"], patch_size=c["patch_size"], in_chans=1, num_classes=0, embed_dim=embed_dim,
            depths=tuple(c["depths"]), num_heads=tuple(c["num_heads"]), window_size=c["window_size"],
            mlp_ratio=c["mlp_ratio"], drop_path_rate=c["drop_path_rate"])
        # parameters that take no part in the forward would break DDP (unused gradients)
        self.encoder.patch_embed.proj = nn.Identity()
        self.encoder.patch_embed.norm = nn.Identity()
        for stage, j in moe_block_indices(c):
            block = self.encoder.layers[stage].blocks[j]
            dim = block.mlp.fc1.in_features
            block.mlp = build_moe(dim, block.mlp.fc1.out_features, c["moe"], act_layer=nn.GELU)
        self.num_features = self.encoder.num_features  # C_m
        self.decoders = nn.ModuleDict({s: self._decoder(c["channels"][s]) for s in c["sensors"]})

    def _decoder(self, channels: int) -> nn.Module:
        """D_i: (B, C_m, H/32, W/32) -> (B, C_i, H, W). SimMIM upstream hard-codes C_i = 3 (a known bug)."""
        return SimMIMDecoder(self.num_features, channels)

    # ------------------------------------------------------------------------------------------ helpers
    def moe_layers(self) -> list[nn.Module]:
        return [m for m in self.encoder.modules() if isinstance(m, (MoE, TutelMoE))]

    def expert_parameter_names(self) -> list[str]:
        """Names (in ``self.named_parameters()``) of expert weights: what the tutel backend keeps out of all-reduce."""
        experts = {id(p) for m in self.moe_layers() for p in m.expert_parameters()}
        return [n for n, p in self.named_parameters() if id(p) in experts]

    def no_weight_decay(self) -> set[str]:
        """Expert biases (3-d tensors, so a 'p.ndim <= 1' rule misses them), the mask token, SwinV2's scales."""
        names = {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        return names | {n for n in self.expert_parameter_names() if is_bias(n)}

    def aux_loss(self, device: torch.device) -> torch.Tensor:
        """aux_weight x sum of the last forward's l_aux over MoE blocks (a zero tensor for the dense model)."""
        layers = self.moe_layers()
        if not layers:
            return torch.zeros((), device=device)
        weight = float(self.config["moe"].get("aux_weight", 0.01))
        return weight * torch.stack([m.aux_loss.float().reshape(()) for m in layers]).sum()

    def set_input_size(self, img_size: int) -> None:
        """Run at another image size: windows scale with the token grid (timm), SwinV2's log-spaced continuous
        position bias (an MLP of relative coordinates) transfers across window sizes."""
        if img_size % ENCODER_STRIDE:
            raise XGeoError(f"image size {img_size} is not a multiple of the encoder stride {ENCODER_STRIDE}")
        if img_size != self.img_size:
            self.encoder.set_input_size(img_size=(img_size, img_size))
            self.img_size = img_size

    def in_channels(self, sensor: str) -> int:
        """Input channels of the patch embedding f_sensor (C_i)."""
        return self.patch_embeds[sensor].in_chans

    def check_input(self, x: torch.Tensor, sensor: str) -> None:
        """Refuse an image whose size is not the encoder's current ``img_size`` (windows and masks depend on it)."""
        if sensor not in self.patch_embeds:
            raise XGeoError(f"the model has no patch embedding for sensor {sensor!r} (it has "
                            f"{list(self.patch_embeds)}); add it to model.sensors in params.yaml")
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise XGeoError(f"{sensor} input of shape {tuple(x.shape)}: expected (B, C, {self.img_size}, "
                            f"{self.img_size}), the size the encoder is set to; found {tuple(x.shape[-2:])} px "
                            f"(crop or resize the data to {self.img_size} px, or call model.set_input_size)")

    def embed(self, x: torch.Tensor, sensor: str, mask: torch.Tensor | None = None,
              bands: Sequence[str] | None = None) -> torch.Tensor:
        """f_i(I_i) with SimMIM's mask token. x: (B, C_i, H, W); mask: (B, H/4, W/4), 1 = masked -> (B, H/4, W/4, C_e)."""
        self.check_input(x, sensor)
        tokens = self.patch_embeds[sensor](x, bands)
        if mask is not None:
            if tuple(mask.shape) != tuple(tokens.shape[:3]):
                raise XGeoError(f"{sensor} mask of shape {tuple(mask.shape)}; expected the token grid "
                                f"{tuple(tokens.shape[:3])}")
            w = mask.unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w
        return tokens

    # ------------------------------------------------------------------------------------- Eq. (1), (2)
    def encode(self, items: Sequence[tuple], return_stages: bool = False):
        """En(f_i(I_i)) of a step's images of several sensors in ONE pass of the shared encoder.

        items: [(sensor, x (B_k, C_k, H, W), mask (B_k, H/4, W/4) or None[, bands])]. Each image goes through its
        own embedding f_i and the mask token, the tokens of all items are concatenated along the batch and encoded
        together: a heterogeneous batch is one batch for the experts (MoE capacity, batch-prioritised routing and
        the auxiliary loss see every sensor of the step). Every x must be ``img_size`` px.
        Returns ([z (B_k, C_m, H/32, W/32) per item], aux ()); with ``return_stages`` also, per item, the four
        stage outputs [(B_k, C_s, H/4/2^s, W/4/2^s)] NCHW, the last one after the final norm (= z).
        """
        tokens = [self.embed(it[1], it[0], it[2], it[3] if len(it) > 3 else None) for it in items]
        h = torch.cat(tokens) if len(tokens) > 1 else tokens[0]
        stages = []
        for s, stage in enumerate(self.encoder.layers):
            h = stage(h)
            if return_stages and s < len(self.encoder.layers) - 1:
                stages.append(h.permute(0, 3, 1, 2))
        z = self.encoder.norm(h).permute(0, 3, 1, 2).contiguous()  # (sum B_k, C_m, H/32, W/32)
        aux = self.aux_loss(z.device)
        split = [t.shape[0] for t in tokens]
        zs = list(z.split(split))
        if not return_stages:
            return zs, aux
        per_stage = [list(f.contiguous().split(split)) for f in stages] + [zs]
        return zs, aux, [[f[k] for f in per_stage] for k in range(len(items))]

    def forward_encoder(self, x: torch.Tensor, sensor: str, mask: torch.Tensor | None = None,
                        bands: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """En(f_i(I_i)). x: (B, C_i, H, W); mask: (B, H/4, W/4), 1 = masked -> (z (B, C_m, H/32, W/32), aux ())."""
        zs, aux = self.encode([(sensor, x, mask, bands)])
        return zs[0], aux

    def forward_decoder(self, z: torch.Tensor, sensor: str) -> torch.Tensor:
        """D_sensor(z). z: (B, C_m, H/32, W/32) -> (B, C_sensor, H, W)."""
        if sensor not in self.decoders:
            raise XGeoError(f"the model has no decoder for sensor {sensor!r} (it has {list(self.decoders)})")
        return self.decoders[sensor](z)

    def forward_loss(self, target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SimMIM masked L1. target, pred: (B, C, H, W); mask: (B, h, w) token grid, upsampled to pixels -> ()."""
        scale = target.shape[-1] // mask.shape[-1]
        m = mask.to(pred.dtype).repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(1)
        l1 = F.l1_loss(target, pred, reduction="none")
        return (l1 * m).sum() / (m.sum() + 1e-5) / target.shape[1]  # m has one channel: sum(m) counts pixels

    def forward(self, x: torch.Tensor, sensor: str, mask: torch.Tensor, target: torch.Tensor | None = None,
                target_sensor: str | None = None) -> dict[str, torch.Tensor]:
        """I'_j = D_j(En(f_i(I_i))): j = i (Eq. 2) unless a co-located ``target`` of ``target_sensor`` is given (Eq. 1)."""
        z, aux = self.forward_encoder(x, sensor, mask)
        target_sensor = target_sensor or sensor
        target = x if target is None else target
        pred = self.forward_decoder(z, target_sensor)
        rec = self.forward_loss(target, pred, mask)
        return {"loss": rec + aux, "rec_loss": rec, "aux_loss": aux, "pred": pred}

    def forward_features(self, x: torch.Tensor, sensor: str, bands: Sequence[str] | None = None
                         ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Unmasked stage outputs for dense heads: [4 maps (B, C_s, H/4/2^s, W/4/2^s)] NCHW (the last one after the
        final norm, as timm's forward_intermediates), and the aux loss of this forward."""
        _, aux, stages = self.encode([(sensor, x, None, bands)], return_stages=True)
        return stages[0], aux


def build_model(params: Mapping) -> XGeo:
    """The XGeo model of ``params["model"]`` (size, sensors, moe)."""
    return XGeo(model_config(params))
