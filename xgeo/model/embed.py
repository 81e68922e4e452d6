"""Per-sensor patch embeddings f_i (paper Eq. 1) and their band-matched adaptation.

- ``SensorEmbedding``: Conv2d(C_i, C_e, 4, stride 4) + LayerNorm, tokens NHWC for timm's SwinV2. ``bands=`` runs it
  on a band subset (BigEarthNet's Sentinel-2 has no B10): the kernels of the missing bands are left out.
- ``stacked_embedding``: one embedding for channel-stacked inputs (Figure 6, method 2) built from the per-sensor ones.
- ``adapt_embedding``: an embedding for a sensor the model lacks, band by band from the nearest central wavelength.
- ``adapt_rgb_kernel`` / ``load_timm_encoder``: timm 3-channel RGB weights into the model (GFM's convention).

Kernels are copied unscaled when a band is matched: the LayerNorm right after the convolution removes the overall
scale of the pre-norm activation, so no per-band rescaling is needed for a band that keeps its meaning.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, XGeoError
from ..sensors import get_sensor

PATCH_SIZE = 4  # SwinV2's patch embedding; the paper's "patch size 16" (section 4) is not SwinV2's (see xgeo.py)
DEFAULT_TOLERANCE_NM = 50.0


class SensorEmbedding(nn.Module):
    """f_i: (B, C_i, H, W) -> (B, H/4, W/4, C_e) tokens (NHWC, as timm's SwinV2 stages take them).

    ``band_names`` are the input channels in order: band names of ``sensor``, or ``sensor:band`` for stacked inputs.
    """

    def __init__(self, in_chans: int, embed_dim: int, sensor: str | None = None,
                 band_names: Sequence[str] | None = None, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        self.sensor = sensor
        self.band_names = tuple(band_names) if band_names is not None else tuple(
            get_sensor(sensor).band_names if sensor else (f"c{i}" for i in range(in_chans)))
        if len(self.band_names) != in_chans:
            raise XGeoError(f"embedding of {sensor}: {in_chans} channels but {len(self.band_names)} band names")
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def in_chans(self) -> int:
        return self.proj.in_channels

    def band_indices(self, bands: Sequence[str]) -> list[int]:
        """Kernel input channels of ``bands`` (names, sensor aliases accepted)."""
        aliases = get_sensor(self.sensor).aliases if self.sensor else {}
        idx = []
        for b in bands:
            name = aliases.get(b, b)
            if name not in self.band_names:
                raise XGeoError(f"embedding of {self.sensor}: no band {b!r}; its bands are {list(self.band_names)}")
            idx.append(self.band_names.index(name))
        return idx

    def forward(self, x: torch.Tensor, bands: Sequence[str] | None = None) -> torch.Tensor:
        weight = self.proj.weight
        if bands is not None and tuple(bands) != self.band_names:
            weight = weight[:, self.band_indices(bands)]
        if x.ndim != 4 or x.shape[1] != weight.shape[1]:
            what = f"bands {list(bands)}" if bands is not None else f"bands {list(self.band_names)}"
            raise XGeoError(f"the {self.sensor or 'stacked'} patch embedding expects (B, {weight.shape[1]}, H, W) "
                            f"({what}); found input of shape {tuple(x.shape)}")
        x = F.conv2d(x, weight, self.proj.bias, stride=self.proj.stride)
        return self.norm(x.permute(0, 2, 3, 1))

    def extra_repr(self) -> str:
        return f"sensor={self.sensor}, bands={list(self.band_names)}"


def _source_embeddings(model: nn.Module) -> dict[str, SensorEmbedding]:
    """The model's per-sensor embeddings of registry sensors (stacked ones excluded)."""
    out = {}
    for name, emb in model.patch_embeds.items():
        if isinstance(emb, SensorEmbedding) and emb.sensor == name:
            out[name] = emb
    return out


def stacked_embedding(model: nn.Module, inputs: Sequence[tuple[str, Sequence[str] | None]]) -> SensorEmbedding:
    """One embedding for inputs stacked along channels, e.g. [("s2", S2 bands without B10), ("s1", None)].

    A convolution over concatenated channels is the sum of per-input convolutions. The stacked embedding is
    LN_avg(mean_i conv_i(x_i)): kernels side by side scaled by 1/n and the biases averaged, so the pre-norm
    activation is the average of the per-sensor ones and keeps their scale (co-located sensors see one scene);
    the LayerNorm takes the average of the inputs' norm parameters.
    """
    sources = _source_embeddings(model)
    n = len(inputs)
    if n == 0:
        raise XGeoError("stacked_embedding: no inputs given")
    kernels, names, biases, norms_w, norms_b = [], [], [], [], []
    for sensor, bands in inputs:
        if sensor not in sources:
            raise XGeoError(f"stacked_embedding: the model has no {sensor!r} embedding (has {sorted(sources)})")
        emb = sources[sensor]
        bands = list(bands) if bands is not None else list(emb.band_names)
        idx = emb.band_indices(bands)
        kernels.append(emb.proj.weight.detach()[:, idx] / n)
        names += [f"{sensor}:{emb.band_names[i]}" for i in idx]
        biases.append(emb.proj.bias.detach())
        norms_w.append(emb.norm.weight.detach())
        norms_b.append(emb.norm.bias.detach())
    weight = torch.cat(kernels, 1)
    out = SensorEmbedding(weight.shape[1], weight.shape[0], sensor=None, band_names=names,
                          patch_size=emb.proj.kernel_size[0]).to(weight.device)
    with torch.no_grad():
        out.proj.weight.copy_(weight)
        out.proj.bias.copy_(torch.stack(biases).mean(0))
        out.norm.weight.copy_(torch.stack(norms_w).mean(0))
        out.norm.bias.copy_(torch.stack(norms_b).mean(0))
    return out


def _band_sources(model: nn.Module) -> list[tuple[str, int, float | None, str]]:
    """(source sensor, kernel channel, wavelength, band name) over the model's per-sensor embeddings."""
    rows = []
    for name, emb in _source_embeddings(model).items():
        sensor = get_sensor(name)
        for i, b in enumerate(emb.band_names):
            rows.append((name, i, sensor.band(b).wavelength_nm, b))
    return rows


def match_bands(sources: Sequence[tuple[str, int, float | None, str]], sensor: str,
                tolerance_nm: float) -> list[tuple[str, int] | None]:
    """For each band of ``sensor``: the (source sensor, channel) nearest in central wavelength within tolerance,
    the same band name for bands without a wavelength (SAR polarisations), else None (takes the mean kernel)."""
    out = []
    for band in get_sensor(sensor).bands:
        best, dist = None, None
        for src, ch, wl, name in sources:
            if band.wavelength_nm is not None and wl is not None:
                d = abs(wl - band.wavelength_nm)
                if d <= tolerance_nm and (dist is None or d < dist):
                    best, dist = (src, ch), d
            elif band.wavelength_nm is None and wl is None and name == band.name and best is None:
                best = (src, ch)
        out.append(best)
    return out


def adapt_embedding(model: nn.Module, sensor: str, tolerance_nm: float | None = None) -> SensorEmbedding:
    """An embedding for ``sensor`` built from the model's per-sensor embeddings, band by band.

    Each band takes the kernel of the band nearest in central wavelength (within ``tolerance_nm``, default
    ``model.adapt_tolerance_nm``); a band with no match takes the mean kernel of all the model's bands. Bias and
    LayerNorm: the average over the source embeddings the matched bands came from (all of them if none matched).
    """
    sources = _source_embeddings(model)
    if not sources:
        raise CheckpointError(f"adapt_embedding({sensor}): the model has no per-sensor embedding to adapt from")
    if tolerance_nm is None:
        tolerance_nm = float(getattr(model, "config", {}).get("adapt_tolerance_nm", DEFAULT_TOLERANCE_NM))
    rows = _band_sources(model)
    matches = match_bands(rows, sensor, tolerance_nm)
    any_emb = next(iter(sources.values()))
    mean_kernel = torch.cat([e.proj.weight.detach() for e in sources.values()], 1).mean(1)
    kernels = [sources[m[0]].proj.weight.detach()[:, m[1]] if m else mean_kernel for m in matches]
    used = sorted({m[0] for m in matches if m}) or sorted(sources)
    target = get_sensor(sensor)
    out = SensorEmbedding(target.num_bands, any_emb.proj.out_channels, sensor=sensor,
                          patch_size=any_emb.proj.kernel_size[0]).to(mean_kernel.device)
    with torch.no_grad():
        out.proj.weight.copy_(torch.stack(kernels, 1))
        out.proj.bias.copy_(torch.stack([sources[s].proj.bias.detach() for s in used]).mean(0))
        out.norm.weight.copy_(torch.stack([sources[s].norm.weight.detach() for s in used]).mean(0))
        out.norm.bias.copy_(torch.stack([sources[s].norm.bias.detach() for s in used]).mean(0))
    return out


RGB_BANDS = ("R", "G", "B")  # timm's ImageNet patch embedding takes RGB in this order


def adapt_rgb_kernel(weight: torch.Tensor, sensor: str, tolerance_nm: float = DEFAULT_TOLERANCE_NM) -> torch.Tensor:
    """timm's RGB kernel (C_e, 3, p, p) -> (C_e, C_sensor, p, p), GFM's convention: each band of ``sensor`` within
    ``tolerance_nm`` of R, G or B takes that kernel; any other band (NIR, SAR, height) the mean of the three."""
    rgb = get_sensor("rgb")
    rows = [("rgb", i, rgb.band(b).wavelength_nm, b) for i, b in enumerate(RGB_BANDS)]
    matches = match_bands(rows, sensor, tolerance_nm)
    mean = weight.mean(1)
    return torch.stack([weight[:, m[1]] if m else mean for m in matches], 1)


def load_timm_encoder(model: nn.Module, state: Mapping[str, torch.Tensor], sensors: Sequence[str],
                      source: object = "timm weights") -> list[str]:
    """Load a timm SwinV2 state dict into ``model.encoder``; its RGB patch embedding becomes each sensor's.

    Stage layout and relative-position buffers go through timm's ``checkpoint_filter_fn``; an MoE block takes the
    dense MLP in every expert (its gate keeps its initialisation); the classifier head is dropped. Returns the
    sensors whose embedding was adapted from the RGB kernel.
    """
    from timm.models.swin_transformer_v2 import checkpoint_filter_fn

    from .moe import MoE

    state = dict(state.get("model", state.get("state_dict", state)))
    embed_keys = {k: state.pop(k) for k in list(state) if k.startswith("patch_embed.")}
    for k in [k for k in state if k.startswith("head")]:
        state.pop(k)
    if "patch_embed.proj.weight" not in embed_keys:
        raise CheckpointError(f"{source}: no patch_embed.proj.weight; expected a timm Swin/SwinV2 state dict")
    state = checkpoint_filter_fn(state, model.encoder)
    moe_prefixes = {name: m for name, m in model.encoder.named_modules() if isinstance(m, MoE)}
    dense = {}
    for prefix, moe in moe_prefixes.items():
        keys = {s: f"{prefix}.fc{s[0]}.{s[1:]}" for s in ("1weight", "1bias", "2weight", "2bias")}
        missing = [k for k in keys.values() if k not in state]
        if missing:
            raise CheckpointError(f"{source}: lacks {missing} for the MoE block {prefix}")
        dense[prefix] = {s: state.pop(k) for s, k in keys.items()}
    result = model.encoder.load_state_dict(state, strict=False)
    expected_missing = {f"{p}.{n}" for p, m in moe_prefixes.items() for n, _ in m.named_parameters()}
    expected_missing |= {f"{p}.load_count" for p in moe_prefixes}
    missing = [k for k in result.missing_keys if k not in expected_missing]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{source}: not a timm SwinV2 of this size: missing {missing[:6]}, "
                              f"unexpected {result.unexpected_keys[:6]} (model size {model.config['size']})")
    with torch.no_grad():
        for prefix, moe in moe_prefixes.items():
            d = dense[prefix]
            moe.w1.copy_(d["1weight"].t().expand_as(moe.w1))
            moe.b1.copy_(d["1bias"].view(1, 1, -1).expand_as(moe.b1))
            moe.w2.copy_(d["2weight"].t().expand_as(moe.w2))
            moe.b2.copy_(d["2bias"].view(1, 1, -1).expand_as(moe.b2))
    weight = embed_keys["patch_embed.proj.weight"]
    adapted = []
    for sensor in dict.fromkeys(sensors):
        emb = SensorEmbedding(get_sensor(sensor).num_bands, weight.shape[0], sensor=sensor,
                              patch_size=weight.shape[-1])
        with torch.no_grad():
            emb.proj.weight.copy_(adapt_rgb_kernel(weight, sensor))
            emb.proj.bias.copy_(embed_keys["patch_embed.proj.bias"])
            if "patch_embed.norm.weight" in embed_keys:
                emb.norm.weight.copy_(embed_keys["patch_embed.norm.weight"])
                emb.norm.bias.copy_(embed_keys["patch_embed.norm.bias"])
        model.patch_embeds[sensor] = emb.to(next(model.parameters()).device)
        adapted.append(sensor)
    return adapted
