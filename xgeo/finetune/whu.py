"""WHU aerial building segmentation, appendix A.1, Table 9: IoU of the building class.

The Vaihingen recipe (:mod:`xgeo.finetune.vaihingen`: UPerNet on the four Swin stages, random crops and flips,
cross-entropy; tiles put back together and predicted by sliding windows, every pixel counted once) on the RGB tiles,
with two classes; the headline ``IoU`` is the IoU (percent) of ``building``, beside the usual ``mIoU`` / ``OA``.
"""
from __future__ import annotations

from pathlib import Path

from .vaihingen import Vaihingen


class WHU(Vaihingen):
    name = "whu"
    dataset = "whu"
    metric = "IoU"

    def evaluate(self, net, ds, loader, out: Path):
        result, arrays, figures = super().evaluate(net, ds, loader, out)
        result = dict(result, IoU=result["IoU_per_class"]["building"])
        return result, arrays, figures
