"""SEN12MS-CR cloud removal: Sentinel-1 + cloudy Sentinel-2 -> cloud-free Sentinel-2 (paper, Tables 3, 4, Figure 3,
appendix C.2, Figure 7).

Inputs (``finetune.sen12ms-cr.inputs``): ``[s2_cloudy, s1]`` stacked as channels (15 = 13 + 2) before one patch
embedding built from the S2 and S1 embeddings; ``[s2_cloudy]`` alone for the optical-only row of Figure 3.
Decoder: SimMIM's Conv2d(C_last, 32^2 x 13, 1) + PixelShuffle(32) (appendix C.2). Target and output are S2
reflectance scaled to [0, 1] (x / 10000, clipped: the S2 value convention of xgeo.sensors); loss L1 on that scale;
no random augmentation (appendix C.2), random crops of ``image_size`` when tiles are larger (paper: 160 of 256).
Evaluation over the whole ``test`` split (ROI split of the catalog), whole tiles by sliding windows; target pixels
where every band holds L1C's NODATA (0) are left out of MAE, SAM, SSIM and PSNR.
"""
from __future__ import annotations

import numpy as np
import torch

from .figures import panels, stretch
from .base import ImageTask, InputSpec

TARGET = "s2"
RGB = ("B04", "B03", "B02")
# Sentinel-2 L1C's NODATA value (ESA's product specification: 0 outside the swath, the zero-filled patch borders);
# the s2 sensor has no nodata (a 0 in BigEarthNet or SEN12MS pretraining tiles stays a value), so only this task's
# metrics leave such target pixels out
NODATA = 0.0


class Sen12msCR(ImageTask):
    name = "sen12ms-cr"
    dataset = "sen12ms-cr"
    target_sensor = "s2"
    scale_note = "S2 reflectance x / 10000 clipped to [0, 1]"

    def input_specs(self) -> list[InputSpec]:
        return [self.spec_for(k) for k in self.s["inputs"]]

    def read_keys(self) -> list[str]:
        return list(dict.fromkeys([*self.s["inputs"], TARGET]))

    @property
    def out_bands(self) -> tuple[str, ...]:
        return self.spec_for(TARGET).bands

    def nodata(self) -> dict[str, float | None]:
        return {TARGET: NODATA}

    def valid_mask(self, batch: dict) -> torch.Tensor:
        return batch[f"valid/{TARGET}"]

    def prepare(self, batch: dict):
        xs = [batch[i.key] for i in self.input_specs()]
        return xs, self.unit(TARGET, batch[TARGET]), None

    def display_input(self, batch: dict, b: int) -> np.ndarray:
        if "s2_cloudy" not in batch:  # an S1-only run: show VV
            return batch[self.input_specs()[0].key][b, :1].repeat(3, 1, 1).float().numpy()
        idx = [list(self.spec_for("s2_cloudy").bands).index(n) for n in RGB]
        return self.unit("s2_cloudy", batch["s2_cloudy"][b:b + 1])[0, idx].float().numpy()

    def figures(self, arrays: dict) -> list:
        idx = [list(self.out_bands).index(n) for n in RGB]
        n = min(4, len(arrays["outputs"]))
        if n == 0:
            return []
        rows = [[stretch(arrays["inputs"][i]), stretch(arrays["outputs"][i][idx]), stretch(arrays["targets"][i][idx])]
                for i in range(n)]
        return [(panels(rows, ["cloudy input", "prediction", "target"], "SEN12MS-CR cloud removal (RGB)"),
                 "figures/cloud_removal.png")]
