"""Prediction heads on the four Swin stages (features: 4 maps (B, C_s, H/4/2^s, W/4/2^s), s = 0..3).

- :class:`ClassificationHead` (BigEarthNet): global average pool of the last stage (already through the encoder's
  final LayerNorm) + Linear, as the Swin/GFM classifier.
- :class:`UPerHead` (Vaihingen): UPerNet (Xiao et al., 2018) in its usual Swin form: a pyramid pooling module (PPM)
  on the last stage, a feature pyramid (FPN) top-down over the four stages, the four levels upsampled to 1/4 and
  fused, a 1x1 classifier, bilinear upsampling x4 to the input size.
- :class:`SimMIMDecoder` (SEN12MS-CR, SpaceNet2): the SimMIM decoder of appendix C.2: Conv2d(C_last, 32^2 C_out, 1)
  + PixelShuffle(32) on the last stage (stride 32 for Swin).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..model.xgeo import SimMIMDecoder as PretrainDecoder


class ClassificationHead(nn.Module):
    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """-> logits (B, num_classes) (``size``, the input's, is not needed)."""
        return self.fc(features[-1].mean(dim=(2, 3)))


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UPerHead(nn.Module):
    """UPerNet decoder: PPM (bins 1, 2, 3, 6) on stage 4, FPN over stages 1-4, fused at 1/4 resolution."""

    def __init__(self, channels: Sequence[int], num_classes: int, width: int = 512, bins: Sequence[int] = (1, 2, 3, 6),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.ppm = nn.ModuleList(_conv_bn_relu(channels[-1], width, 1) for _ in self.bins)
        self.ppm_fuse = _conv_bn_relu(channels[-1] + len(self.bins) * width, width, 3)
        self.lateral = nn.ModuleList(_conv_bn_relu(c, width, 1) for c in channels[:-1])
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width, 3) for _ in channels[:-1])
        self.fuse = _conv_bn_relu(len(channels) * width, width, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """features: 4 maps; size: (H, W) of the input -> logits (B, num_classes, H, W)."""
        top = features[-1]
        pooled = [
            F.interpolate(branch(F.adaptive_avg_pool2d(top, b)), size=top.shape[-2:], mode="bilinear", align_corners=False)
            for b, branch in zip(self.bins, self.ppm)
        ]
        levels = [lat(f) for lat, f in zip(self.lateral, features[:-1])]
        levels.append(self.ppm_fuse(torch.cat([top, *pooled], 1)))
        for i in range(len(levels) - 1, 0, -1):  # top-down pathway
            levels[i - 1] = levels[i - 1] + F.interpolate(levels[i], size=levels[i - 1].shape[-2:], mode="bilinear",
                                                          align_corners=False)
        outs = [smooth(level) for smooth, level in zip(self.smooth, levels[:-1])] + [levels[-1]]
        outs = [outs[0]] + [F.interpolate(o, size=outs[0].shape[-2:], mode="bilinear", align_corners=False) for o in outs[1:]]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(outs, 1))))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SimMIMDecoder(nn.Module):
    """Conv2d(C_last, stride^2 C_out, 1) + PixelShuffle(stride): full resolution from the stride-32 features.

    The decoder is the pretraining's (:class:`xgeo.model.xgeo.SimMIMDecoder`): its 1x1 conv runs as one matrix
    product over the channels-last features, which on the CPU is several times cheaper than oneDNN's convolution for
    this shape (few pixels, thousands of output channels) in the forward and the backward pass.
    """

    def __init__(self, channels: Sequence[int], out_channels: int, stride: int = 32) -> None:
        super().__init__()
        self.decoder = PretrainDecoder(channels[-1], out_channels, stride)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """-> (B, C_out, 32 h, 32 w) for a last stage of (B, C, h, w) (the input's ``size``)."""
        return self.decoder(features[-1])
