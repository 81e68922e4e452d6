"""The loader's work done on the training device, for when the CPU path falls short (benchmarks/README.md): the
DataLoader returns raw tiles (``ZarrDataset(..., raw=True)``: native dtype, no value convention, no crop) and the
training step calls :func:`crop_normalize` on the batch, on the GPU.

``crop_normalize(batch, dataset, size, generator)`` applies, per sample and with one window for every modality of a
co-located pair: the sensor's value convention (SAR NaN -> nan_value, clip to valid_range, nodata -> the band mean),
per-band normalisation with the store's statistics, a RandomResizedCrop window (torchvision's sampling: area
fraction ``scale``, log-uniform aspect ``ratio``) resized bilinearly to ``size`` x ``size``, and random horizontal and
vertical flips: the same result as :class:`~xgeo.data.dataset.ZarrDataset` with a crop hook followed by a bilinear
resize (``align_corners=False``, no antialiasing) and flips, as one ``grid_sample`` per modality for the whole batch.
With ``antialias=True`` the resize is instead :func:`crop_resize`: ``F.interpolate(..., antialias=True)`` of each
window (what ``xgeo.pretrain.data.resized_crop`` does on the CPU), as two batched matrix products per modality.
Pretraining's ``pretrain.augment_on: device`` uses that form, with the boxes and flips its loader drew.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..sensors import SENSORS


def random_boxes(n: int, h: int, w: int, generator: torch.Generator | None = None, scale=(0.2, 1.0),
                 ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) int64 windows (top, left, height, width) of RandomResizedCrop in an h x w tile (10 tries, then the
    central square)."""
    out = torch.empty(n, 4, dtype=torch.int64)
    for i in range(n):
        for _ in range(10):
            target = h * w * float(torch.empty(1).uniform_(*scale, generator=generator))
            r = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)))
            cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                out[i] = torch.tensor([top, left, ch, cw])
                break
        else:
            s = min(h, w)
            out[i] = torch.tensor([(h - s) // 2, (w - s) // 2, s, s])
    return out


def _grid(boxes: torch.Tensor, flips: torch.Tensor, h: int, w: int, size: int, device) -> torch.Tensor:
    """Sampling grid (n, size, size, 2) of grid_sample (align_corners=False) reading each window, flipped."""
    top, left, ch, cw = (boxes[:, i].to(device=device, dtype=torch.float64) for i in range(4))
    t = (torch.arange(size, device=device, dtype=torch.float64) + 0.5) / size  # output pixel centres in [0, 1]
    # source pixel (centres at integers) of each output pixel, clamped to the window as interpolate clamps to the crop
    py = torch.maximum(torch.minimum(top[:, None] + t[None] * ch[:, None] - 0.5, (top + ch - 1)[:, None]), top[:, None])
    px = torch.maximum(torch.minimum(left[:, None] + t[None] * cw[:, None] - 0.5, (left + cw - 1)[:, None]), left[:, None])
    ys, xs = ((2 * py + 1) / h - 1).float(), ((2 * px + 1) / w - 1).float()  # -> [-1, 1], align_corners=False
    xs = torch.where(flips[:, 0:1].to(device), xs.flip(-1), xs)
    ys = torch.where(flips[:, 1:2].to(device), ys.flip(-1), ys)
    return torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)


def resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, size: int, device=None) -> torch.Tensor:
    """(n, size, in_size) float32 rows resampling the windows [start, start + length) of an axis of ``in_size`` pixels
    to ``size`` pixels: PyTorch's antialiased bilinear filter (``F.interpolate(..., mode="bilinear",
    align_corners=False, antialias=True)`` of the window): a triangle of half-width max(1, length / size) input pixels
    around each output pixel's centre, cut to the window and normalised to sum 1. Upsampling (and length == size)
    gives plain bilinear interpolation with the edges clamped, as without antialiasing."""
    start = start.to(device=device, dtype=torch.float64)[:, None, None]
    length = length.to(device=device, dtype=torch.float64)[:, None, None]
    scale = length / size
    support = scale.clamp(min=1.0)
    centre = scale * (torch.arange(size, device=device, dtype=torch.float64)[None, :, None] + 0.5)
    j = torch.arange(in_size, device=device, dtype=torch.float64)[None, None, :] - start  # input pixel in the window
    w = (1 - ((j + 0.5 - centre) / support).abs()).clamp(min=0)
    w = torch.where((j >= 0) & (j < length), w, torch.zeros((), dtype=w.dtype, device=w.device))
    return (w / w.sum(-1, keepdim=True)).float()


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """x float (n, C, H, W) -> (n, C, size, size): window ``boxes[i]`` (top, left, height, width in pixels) of image
    i resized with the antialiased bilinear filter (:func:`resize_weights`), flipped horizontally where
    ``flips[i, 0]``, vertically where ``flips[i, 1]``. Equals ``F.interpolate(x[i:i+1, :, t:t+h, l:l+w], (size,
    size), mode="bilinear", align_corners=False, antialias=True)`` per image up to float rounding, for the whole
    batch in two batched matrix products (separable filter: rows W_y (size, H), columns W_x (size, W))."""
    n, _, h, w = x.shape
    boxes = boxes.to(x.device)
    wy = resize_weights(boxes[:, 0], boxes[:, 2], h, size, x.device)
    wx = resize_weights(boxes[:, 1], boxes[:, 3], w, size, x.device)
    flips = flips.to(x.device).bool()
    wx = torch.where(flips[:, 0, None, None], wx.flip(1), wx)
    wy = torch.where(flips[:, 1, None, None], wy.flip(1), wy)
    y = torch.matmul(wy[:, None], x)  # (n, 1, S, H) @ (n, C, H, W) -> (n, C, S, W)
    return torch.matmul(y, wx.transpose(1, 2)[:, None])  # (n, C, S, W) @ (n, 1, W, S) -> (n, C, S, S)


def convention_normalize(x: torch.Tensor, sensor: str, mean: torch.Tensor, std: torch.Tensor | None) -> torch.Tensor:
    """Raw tiles (n, C, H, W) in the sensor's dtype -> float32: value convention, nodata -> band mean, then
    (x - mean) / std when ``std`` is given."""
    s = SENSORS[sensor]
    y = x.to(torch.float32)
    mean = mean.to(y.device, torch.float32)[None, :, None, None]
    invalid = torch.zeros_like(y, dtype=torch.bool)
    if s.nodata is not None:
        invalid |= y == s.nodata  # on the float32 copy: exact for the stored integer types, and no uint16 compare
    if s.nan_value is not None:
        y = torch.nan_to_num(y, nan=s.nan_value, posinf=s.valid_range[1] if s.valid_range else None,
                             neginf=s.valid_range[0] if s.valid_range else None)
    invalid |= ~torch.isfinite(y)
    if s.valid_range is not None:
        y = y.clamp(*s.valid_range)
    y = torch.where(invalid, mean.expand_as(y), y)
    if std is not None:
        y = (y - mean) / std.to(y.device, torch.float32)[None, :, None, None]
    return y


def crop_normalize(batch: dict, dataset, size: int, generator: torch.Generator | None = None,
                   keys=None, boxes: torch.Tensor | None = None, flips: torch.Tensor | None = None,
                   antialias: bool = False) -> dict:
    """Raw-tile batch {key: (n, C, H, W)} of ``ZarrDataset(..., raw=True)`` (on any device) -> {key: float32
    (n, C, size, size)}: convention, normalisation (when the dataset normalises), one RandomResizedCrop window and
    one flip pair per sample shared by all ``keys`` (default: the dataset's modalities). boxes (n, 4) and flips
    (n, 2) bool may be given (else drawn from ``generator`` on the CPU). ``antialias``: resize with
    :func:`crop_resize` (antialiased when shrinking, as torchvision and the pretraining loader) instead of one
    ``grid_sample`` (plain bilinear)."""
    keys = list(dataset.keys if keys is None else keys)
    n, _, h, w = batch[keys[0]].shape
    boxes = random_boxes(n, h, w, generator) if boxes is None else boxes
    flips = torch.randint(0, 2, (n, 2), generator=generator).bool() if flips is None else flips
    out = dict(batch)
    grid = None
    for k in keys:
        x = batch[k]
        if x.shape[-2:] != (h, w):
            raise ValueError(f"{k}: expected the tile size of {keys[0]} ({h} x {w}) for one shared window, found "
                             f"{tuple(x.shape[-2:])}")
        mean, std = (torch.as_tensor(v) for v in dataset.stats(k))
        y = convention_normalize(x, dataset.modalities[k]["sensor"], mean, std if dataset.normalize else None)
        if antialias:
            out[k] = crop_resize(y, boxes, flips, size)
            continue
        if grid is None:
            grid = _grid(boxes, flips, h, w, size, y.device)
        out[k] = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out
