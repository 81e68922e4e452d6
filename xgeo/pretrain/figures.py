"""Reconstruction figures like the paper's Figure 4: per sensor, input, masked input, reconstruction, target.

Display conventions: RGB-like sensors show their red, green and blue bands (matched by wavelength from
``xgeo.sensors``, or the first three bands); SAR shows the VV / VH false colour (R = VV, G = VH, B = VV - VH in dB);
elevation (DSM) and single bands go through a colour map (terrain, grey). Each panel is stretched between its 2nd and 98th percentile
of the target image, so input, reconstruction and target of one row share a scale.
"""
from __future__ import annotations

import numpy as np
import torch

from ..sensors import get_sensor

# central wavelengths (nm) of the display primaries; the nearest band of an optical sensor stands for each
_PRIMARIES_NM = (650.0, 550.0, 470.0)


def display_bands(sensor: str) -> list[int]:
    """Band indices shown as R, G, B (or one index for a colour-mapped band)."""
    s = get_sensor(sensor)
    if s.kind == "sar" or s.num_bands < 3:
        return list(range(min(2, s.num_bands))) if s.kind == "sar" else [0]
    waves = [b.wavelength_nm for b in s.bands]
    if all(w is not None for w in waves):
        visible = [i for i, w in enumerate(waves) if 400 <= w <= 700]
        if len(visible) >= 3:
            return [min(visible, key=lambda i: abs(waves[i] - target)) for target in _PRIMARIES_NM]
    return [0, 1, 2]


def to_display(img: np.ndarray, sensor: str, lo_hi: tuple[np.ndarray, np.ndarray] | None = None):
    """img (C, H, W) in physical units -> (H, W, 3) in [0, 1] and the stretch used (per displayed plane)."""
    s = get_sensor(sensor)
    idx = display_bands(sensor)
    if s.kind == "sar" and len(idx) == 2:
        vv, vh = img[idx[0]], img[idx[1]]
        planes = np.stack([vv, vh, vv - vh])
    else:
        planes = img[idx]
    if lo_hi is None:
        flat = planes.reshape(planes.shape[0], -1)
        lo_hi = (np.nanpercentile(flat, 2, axis=1), np.nanpercentile(flat, 98, axis=1))
    lo, hi = lo_hi
    scaled = (planes - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None]
    scaled = np.clip(np.nan_to_num(scaled), 0.0, 1.0)
    if scaled.shape[0] == 1:
        from matplotlib import colormaps

        cmap = colormaps["terrain" if s.kind == "elevation" else "gray"]
        return cmap(scaled[0])[..., :3], lo_hi
    return np.moveaxis(scaled, 0, -1), lo_hi


def _upsample_mask(mask: torch.Tensor, size: int) -> np.ndarray:
    """(h, w) token mask -> (size, size) pixel mask."""
    scale = size // mask.shape[-1]
    return mask.repeat_interleave(scale, -1).repeat_interleave(scale, -2).cpu().numpy().astype(bool)


@torch.no_grad()
def reconstruction_rows(model, batch: dict, layouts: dict, datasets: dict, params: dict) -> list[dict]:
    """First sample of every modality of every group of ``batch``: arrays in physical units for the figure.

    The first samples are encoded together through ``XGeo.encode``, as training encodes a step."""
    groups = params["pretrain"]["groups"]
    entries = [(g, key) for g in batch for key in layouts[g].sensors]
    zs, _ = model.encode([(layouts[g].sensors[k], batch[g]["images"][k][:1].float(), batch[g]["masks"][k][:1])
                          for g, k in entries])
    rows = []
    for (gname, key), z in zip(entries, zs):
        layout, gb = layouts[gname], batch[gname]
        sensor = layout.sensors[key]
        ds = datasets[groups[gname]["datasets"][0]]  # datasets of a group share modalities and statistics layout
        x, mask = gb["images"][key][:1], gb["masks"][key][:1]
        tkey = layout.partner[key] if key in layout.partner and bool(gb["cross"][key][0]) else key
        tsensor = layout.sensors[tkey]
        pred = model.forward_decoder(z, tsensor).float()
        pix = _upsample_mask(mask[0], x.shape[-1])
        inp = ds.denormalize(key, x[0].float().cpu())
        rec = ds.denormalize(tkey, pred[0].cpu())
        tgt = ds.denormalize(tkey, gb["images"][tkey][0].float().cpu())
        inp, rec, tgt = (np.asarray(a, dtype=np.float32) for a in (inp, rec, tgt))
        # the loss only scores masked pixels: show the target where visible, the prediction where masked
        rec = np.where(pix[None], rec, tgt)
        rows.append({"group": gname, "key": key, "sensor": sensor, "target_key": tkey,
                     "target_sensor": tsensor, "input": inp, "mask": pix, "reconstruction": rec, "target": tgt})
    return rows


def reconstruction_figure(model, batch: dict, layouts: dict, datasets: dict, params: dict):
    """A matplotlib figure: one row per (group, modality), columns input | masked input | reconstruction | target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = reconstruction_rows(model, batch, layouts, datasets, params)
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        img_in, stretch_in = to_display(row["input"], row["sensor"])
        masked = img_in.copy()
        masked[row["mask"]] = 0.5  # mid grey where the encoder saw the mask token
        img_tgt, stretch_t = to_display(row["target"], row["target_sensor"])
        img_rec, _ = to_display(row["reconstruction"], row["target_sensor"], stretch_t)
        panels = [(img_in, f"{row['group']}: {row['sensor']} input"), (masked, "masked input"),
                  (img_rec, f"reconstruction ({row['target_sensor']})"), (img_tgt, f"target ({row['target_sensor']})")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    return fig
