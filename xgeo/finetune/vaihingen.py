"""ISPRS Vaihingen semantic segmentation from IRRG + DSM (paper, Table 3, appendix C.4, Figure 8).

Inputs: ``[irrg, dsm]`` stacked as channels (3 + 1) before one patch embedding (IRRG adapted from the pretrained
optical embeddings by band wavelength, DSM from the DSM embedding). Head: UPerNet (PPM + FPN) on the four Swin
stages (:class:`xgeo.finetune.heads.UPerHead`). Training: random ``image_size`` crops of the train tiles with a
random horizontal flip, cross-entropy on the full labels (``labels/mask``; 255 ignored).

Evaluation on the ``test`` areas: the store's tiles (ids ``area<N>_r<row>_c<col>``) are put back together into
whole areas, each area is predicted by sliding windows (``image_size``, stride ``eval_stride``, overlapping logits
averaged) and every labelled pixel of the area is counted once. Labels: the eroded ground truth
(``labels/mask_eroded``, boundary pixels ignored) when the store has it, else the full labels.
Class set (ISPRS convention): ``mIoU`` is the mean IoU of the five classes impervious surfaces, building,
low vegetation, tree, car (``exclude_from_mean``: clutter); ``OA`` counts every labelled pixel of all six classes
(as the ISPRS benchmark's overall accuracy); ``mIoU_all`` (six classes) and ``OA_eval`` (pixels of the five) too.
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

from ..metrics import ConfusionMeter, segmentation_scores
from ..errors import DataError
from .figures import colourise, panels, stretch
from .heads import UPerHead
from .loop import sliding_window
from .base import FinetuneNet, InputSpec, Task, pad_to, random_crop

TILE_ID = re.compile(r"^(?P<area>.+)_r(?P<r>\d+)_c(?P<c>\d+)$")


class Vaihingen(Task):
    name = "vaihingen"
    dataset = "vaihingen"
    metric = "mIoU"

    def __init__(self, params, settings) -> None:
        super().__init__(params, settings)
        have = list(self.root["labels"].array_keys()) if "labels" in self.root else []
        if "mask" not in have:
            raise DataError(f"{self.path}: expected labels/mask (N, H, W), found labels {have}")
        self.eval_label = "mask_eroded" if "mask_eroded" in have else "mask"
        self.labels = tuple(dict.fromkeys(["mask", self.eval_label]))
        attrs = dict(self.root["labels/mask"].attrs)
        self.class_names = list(attrs.get("class_names") or self.spec.extra["classes"])
        self.ignore_index = int(attrs.get("ignore_index", 255))
        excluded = set(self.s.get("exclude_from_mean", ["clutter"]))
        self.eval_classes = [i for i, n in enumerate(self.class_names) if n not in excluded]

    def input_specs(self) -> list[InputSpec]:
        return [self.spec_for(k) for k in self.s["inputs"]]

    def eval_split(self) -> str:
        return str(self.s.get("eval_split", "test"))

    def build_head(self, channels: Sequence[int]) -> nn.Module:
        return UPerHead(channels, len(self.class_names), width=int(self.s.get("head_width", 512)))

    def _check_labels(self, y: torch.Tensor, what: str) -> None:
        bad = (y != self.ignore_index) & ((y < 0) | (y >= len(self.class_names)))
        if bool(bad.any()):
            raise DataError(f"{self.path}/labels/{what}: expected classes 0..{len(self.class_names) - 1} "
                            f"({self.class_names}) or {self.ignore_index} (ignored), found "
                            f"{torch.unique(y[bad])[:5].tolist()}")

    def step_loss(self, net: FinetuneNet, batch: dict):
        y = batch["labels/mask"]
        self._check_labels(y, "mask")
        xs = [pad_to(batch[i.key], self.image_size) for i in self.input_specs()]
        y = F.pad(y, (0, xs[0].shape[-1] - y.shape[-1], 0, xs[0].shape[-2] - y.shape[-2]), value=self.ignore_index)
        *xs, y = random_crop([*xs, y], self.image_size, self.gen)
        flip = (torch.rand(y.shape[0], generator=self.gen) < 0.5).to(y.device)
        xs = [torch.where(flip[:, None, None, None], x.flip(-1), x) for x in xs]
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        logits, aux = net(xs)
        return F.cross_entropy(logits, y, ignore_index=self.ignore_index), aux

    def areas(self, ds) -> dict[str, list[tuple[int, int, int]]]:
        """area -> [(position in ds, row, col)]; a tile whose id is not area_r<row>_c<col> is its own area."""
        groups: dict[str, list] = defaultdict(list)
        for pos in range(len(ds)):
            sid = ds.sample_id(pos)
            m = TILE_ID.match(sid)
            if m:
                groups[m["area"]].append((pos, int(m["r"]), int(m["c"])))
            else:
                groups[sid].append((pos, 0, 0))
        return dict(groups)

    @torch.no_grad()
    def evaluate(self, net: FinetuneNet, ds, loader, out: Path) -> tuple[dict, dict, list]:
        net.eval()
        meter = ConfusionMeter(len(self.class_names), self.ignore_index)
        keys = [i.key for i in self.input_specs()]
        sizes = [self.modalities[k]["bands"].__len__() for k in keys]
        stride = int(self.s.get("eval_stride") or self.image_size // 2)
        keep = set(self.sample_tiles(len(ds)).tolist())
        saved: dict[int, tuple] = {}
        fn = lambda t: net(list(torch.split(t, sizes, 1)))[0]  # noqa: E731
        overlap = False
        for area, tiles in self.areas(ds).items():
            samples = {pos: ds[pos] for pos, _, _ in tiles}
            th, tw = samples[tiles[0][0]][keys[0]].shape[-2:]
            H = max(r for _, r, _ in tiles) + th
            W = max(c for _, _, c in tiles) + tw
            image = torch.zeros(sum(sizes), H, W)
            label = torch.full((H, W), self.ignore_index, dtype=torch.int64)
            covered = torch.zeros(H, W, dtype=torch.int64)
            for pos, r, c in tiles:
                s = samples[pos]
                y = s[f"labels/{self.eval_label}"]
                self._check_labels(y, self.eval_label)
                image[:, r:r + th, c:c + tw] = torch.cat([s[k] for k in keys])
                label[r:r + th, c:c + tw] = y
                covered[r:r + th, c:c + tw] += 1
            overlap |= bool((covered > 1).any())
            pred = sliding_window(fn, image, self.image_size, stride, batch=loader.batch_size or 8,
                                  device=self.device).argmax(0)
            meter.update(pred, label)  # each pixel of the area once, however many tiles cover it
            for pos, r, c in tiles:
                if pos in keep:
                    s = samples[pos]
                    saved[pos] = (pred[r:r + th, c:c + tw].numpy().astype(np.uint8),
                                  s[f"labels/{self.eval_label}"].numpy().astype(np.uint8),
                                  s[keys[0]].numpy(), int(s["index"]))
        m = segmentation_scores(meter.matrix, self.class_names, self.eval_classes)
        order = sorted(saved)
        arrays = {
            "outputs": np.stack([saved[p][0] for p in order]), "targets": np.stack([saved[p][1] for p in order]),
            "index": np.asarray([saved[p][3] for p in order]), "confusion": meter.matrix,
            "class_names": np.asarray(self.class_names), "eval_classes": np.asarray(self.eval_classes),
            "ignore_index": np.int64(self.ignore_index),
            # the saved tiles reproduce the confusion matrix when they are all the tiles and none overlap
            "complete": np.bool_(len(order) == len(ds) and not overlap),
        }
        result = dict(m, eval_split=self.eval_split(), eval_label=self.eval_label, eval_samples=len(ds),
                      class_set={"mIoU": [self.class_names[i] for i in self.eval_classes], "OA": self.class_names})
        rgb = [stretch(saved[p][2][:3]) for p in order[:4]]
        colours = self.spec.extra["colours"]
        rows = [[img, colourise(saved[p][0], colours, self.ignore_index), colourise(saved[p][1], colours,
                                                                                      self.ignore_index)]
                for img, p in zip(rgb, order[:4])]
        figs = [(panels(rows, ["IRRG", "prediction", "labels"], "Vaihingen segmentation"), "figures/segmentation.png")] \
            if rows else []
        return result, arrays, figs
