"""Change detection on OSCD (Sentinel-2, 13 bands) and DSIFN (RGB), appendix A.1, Table 8: F1 of the change class.

Network: ONE encoder, shared by the two dates (a Siamese encoder: the same weights and the same patch embedding
see date 1 and date 2, in one batch of 2B), and a head over the per-scale **absolute difference** of the two dates'
four feature maps, |f1_s - f2_s|, decoded by UPerNet to two-class logits at full resolution
(:class:`ChangeHead`). Why the difference: it is the fusion of FC-Siam-diff (Caye Daudt et al., ICIP 2018, by the
authors of OSCD) and of the Siamese evaluation that SeCo and GFM report OSCD with; it is symmetric in the two dates
and zero where nothing changed, so the head learns what a change looks like rather than what a place looks like,
which matters with OSCD's 14 training cities. GFM's change-detection code is unreleased; ``fusion: concat``
(``finetune.<task>.fusion``) concatenates [f1_s, f2_s] instead (BIT-style heads), for comparison.

Inputs: the store's ``t1`` and ``t2`` (same sensor); date 2 is put into date 1's normalisation so that the two are
comparable pixel for pixel. Training: the same random ``image_size`` crop and horizontal flip of both dates and the
mask, cross-entropy (``change_weight`` weighs the rare change class). Evaluation: tiles are put back together into
whole cities / pairs (ids ``<area>_r<row>_c<col>``), predicted by sliding windows, every labelled pixel counted once;
``F1`` (percent) of the change class with its precision, recall and IoU (:func:`xgeo.metrics.binary_scores`).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import ConfusionMeter, binary_scores
from ..errors import DataError, XGeoError
from .heads import UPerHead
from .loop import sliding_window
from .base import FinetuneNet, InputSpec, Task, pad_to, random_crop

TILE_ID = re.compile(r"^(?P<area>.+)_r(?P<r>\d+)_c(?P<c>\d+)$")
FUSIONS = ("diff", "concat")


class ChangeHead(nn.Module):
    """UPerNet over the fused features of two dates: |f1 - f2| per scale (``diff``) or [f1, f2] (``concat``)."""

    def __init__(self, channels: Sequence[int], num_classes: int = 2, width: int = 512, fusion: str = "diff") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise XGeoError(f"params finetune.<change task>.fusion is {fusion!r}; expected one of {FUSIONS}")
        self.fusion = fusion
        fused = list(channels) if fusion == "diff" else [2 * c for c in channels]
        self.decoder = UPerHead(fused, num_classes, width=width)

    def forward(self, f1: list[torch.Tensor], f2: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Four maps of each date -> logits (B, num_classes, H, W)."""
        if self.fusion == "diff":
            fused = [(a - b).abs() for a, b in zip(f1, f2)]
        else:
            fused = [torch.cat([a, b], 1) for a, b in zip(f1, f2)]
        return self.decoder(fused, size)


def two_date_forward(net: FinetuneNet, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, 2, H, W) and the MoE aux loss: the shared encoder over both dates in one batch, then the head."""
    b = x1.shape[0]
    feats, aux = net.backbone([torch.cat([x1, x2], 0)])
    return net.head([f[:b] for f in feats], [f[b:] for f in feats], tuple(x1.shape[-2:])), aux


class ChangeDetection(Task):
    """Base of OSCD and DSIFN (a subclass sets ``name`` and ``dataset``)."""

    labels = ("mask",)
    metric = "F1"

    def __init__(self, params, settings) -> None:
        super().__init__(params, settings)
        if set(self.modalities) != {"t1", "t2"}:
            raise DataError(f"{self.path}: expected the two dates as modalities t1 and t2, found {sorted(self.modalities)}")
        if self.modalities["t1"] != self.modalities["t2"]:
            raise DataError(f"{self.path}: expected t1 and t2 of one sensor and band list, found "
                            f"{self.modalities['t1']} and {self.modalities['t2']}")
        have = list(self.root["labels"].array_keys()) if "labels" in self.root else []
        if "mask" not in have:
            raise DataError(f"{self.path}: expected labels/mask (N, H, W) change masks, found labels {have}")
        attrs = dict(self.root["labels/mask"].attrs)
        self.class_names = list(attrs.get("class_names") or ("no_change", "change"))
        self.ignore_index = int(attrs.get("ignore_index", 255))

    def input_specs(self) -> list[InputSpec]:
        return [self.spec_for("t1")]  # the one encoder input; t2 goes through the same embedding and encoder

    def read_keys(self) -> list[str]:
        return ["t1", "t2"]

    def build_head(self, channels: Sequence[int]) -> nn.Module:
        return ChangeHead(channels, len(self.class_names), width=int(self.s.get("head_width", 512)),
                          fusion=str(self.s.get("fusion", "diff")))

    def dates(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(date 1, date 2 in date 1's normalisation), both (B, C, H, W)."""
        (m1, s1), (m2, s2) = self.stats["t1"], self.stats["t2"]
        scale = torch.from_numpy(s2 / s1)[:, None, None]
        shift = torch.from_numpy((m2 - m1) / s1)[:, None, None]
        return batch["t1"], batch["t2"] * scale + shift

    def _check(self, y: torch.Tensor) -> None:
        bad = (y != self.ignore_index) & ((y < 0) | (y >= len(self.class_names)))
        if bool(bad.any()):
            raise DataError(f"{self.path}/labels/mask: expected 0 (no change), 1 (change) or {self.ignore_index}, "
                            f"found {torch.unique(y[bad])[:5].tolist()}")

    def step_loss(self, net: FinetuneNet, batch: dict):
        y = batch["labels/mask"]
        self._check(y)
        x1, x2 = (pad_to(x, self.image_size) for x in self.dates(batch))
        y = F.pad(y, (0, x1.shape[-1] - y.shape[-1], 0, x1.shape[-2] - y.shape[-2]), value=self.ignore_index)
        x1, x2, y = random_crop([x1, x2, y], self.image_size, self.gen)
        flip = torch.rand(y.shape[0], generator=self.gen) < 0.5
        x1, x2 = (torch.where(flip[:, None, None, None], x.flip(-1), x) for x in (x1, x2))
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        logits, aux = two_date_forward(net, x1, x2)
        weight = torch.tensor([1.0, float(self.s.get("change_weight", 1.0))])
        return F.cross_entropy(logits, y, weight=weight, ignore_index=self.ignore_index), aux

    def areas(self, ds) -> dict[str, list[tuple[int, int, int]]]:
        groups: dict[str, list] = defaultdict(list)
        for pos in range(len(ds)):
            sid = ds.sample_id(pos)
            m = TILE_ID.match(sid)
            groups[m["area"] if m else sid].append((pos, int(m["r"]) if m else 0, int(m["c"]) if m else 0))
        return dict(groups)

    @torch.no_grad()
    def evaluate(self, net: FinetuneNet, ds, loader, out: Path) -> tuple[dict, dict, list]:
        net.eval()
        meter = ConfusionMeter(len(self.class_names), self.ignore_index)
        c = len(self.modalities["t1"]["bands"])
        stride = int(self.s.get("eval_stride") or self.image_size // 2)
        keep = set(self.sample_tiles(len(ds)).tolist())
        saved: dict[int, tuple] = {}
        fn = lambda t: two_date_forward(net, t[:, :c], t[:, c:])[0]  # noqa: E731
        overlap = False
        for area, tiles in self.areas(ds).items():
            samples = {pos: ds[pos] for pos, _, _ in tiles}
            th, tw = samples[tiles[0][0]]["t1"].shape[-2:]
            H, W = max(r for _, r, _ in tiles) + th, max(col for _, _, col in tiles) + tw
            image = torch.zeros(2 * c, H, W)
            label = torch.full((H, W), self.ignore_index, dtype=torch.int64)
            covered = torch.zeros(H, W, dtype=torch.int64)
            for pos, r, col in tiles:
                s = samples[pos]
                self._check(s["labels/mask"])
                x1, x2 = self.dates({"t1": s["t1"][None], "t2": s["t2"][None]})
                image[:, r:r + th, col:col + tw] = torch.cat([x1[0], x2[0]])
                label[r:r + th, col:col + tw] = s["labels/mask"]
                covered[r:r + th, col:col + tw] += 1
            overlap |= bool((covered > 1).any())
            pred = sliding_window(fn, image, self.image_size, stride).argmax(0)
            meter.update(pred, label)
            for pos, r, col in tiles:
                if pos in keep:
                    s = samples[pos]
                    saved[pos] = (pred[r:r + th, col:col + tw].numpy().astype(np.uint8),
                                  s["labels/mask"].numpy().astype(np.uint8), int(s["index"]),
                                  s["t1"].numpy(), s["t2"].numpy())
        scores = binary_scores(meter.matrix, positive=1)
        order = sorted(saved)
        arrays = {"outputs": np.stack([saved[p][0] for p in order]), "targets": np.stack([saved[p][1] for p in order]),
                  "index": np.asarray([saved[p][2] for p in order]), "confusion": meter.matrix,
                  "class_names": np.asarray(self.class_names), "positive": np.int64(1),
                  "ignore_index": np.int64(self.ignore_index),
                  "complete": np.bool_(len(order) == len(ds) and not overlap)}
        result = dict(scores, eval_split=self.eval_split(), eval_samples=len(ds), eval_areas=len(self.areas(ds)),
                      fusion=str(self.s.get("fusion", "diff")))
        return result, arrays, self.figures([saved[p] for p in order[:4]])

    def figures(self, tiles: list[tuple]) -> list:
        """Date 1, date 2 (true colour), predicted and true change of up to four tiles."""
        from .figures import colourise, panels, stretch

        if not tiles:
            return []
        bands = list(self.modalities["t1"]["bands"])
        rgb = [bands.index(b) for b in ("B04", "B03", "B02")] if "B04" in bands else [0, 1, 2]
        colours = ((0, 0, 0), (255, 255, 255))
        rows = [[stretch(t1[rgb]), stretch(t2[rgb]), colourise(pred, colours, self.ignore_index),
                 colourise(label, colours, self.ignore_index)] for pred, label, _, t1, t2 in tiles]
        return [(panels(rows, ["date 1", "date 2", "predicted change", "change"], f"{self.name.upper()} change "
                        "detection"), "figures/change.png")]


class OSCD(ChangeDetection):
    name = "oscd"
    dataset = "oscd"


class DSIFN(ChangeDetection):
    name = "dsifn"
    dataset = "dsifn"
