"""SpaceNet 2 pan-sharpening: WorldView-3 PAN + upsampled MUL -> 8-band image at PAN resolution (paper, Table 3,
appendix C.4). Two protocols (``finetune.spacenet2.protocol``; ../shared/reference/datasets.md), recorded in
metrics.json and run.json:

- ``supervised``: PAN (H x W) + MUL (H/4 x W/4) upsampled x4 -> MUL-PanSharpen (the vendor product, H x W);
- ``wald`` (Wald's protocol, reduced resolution): PAN and MUL degraded by the ratio 4 (box average,
  ``F.interpolate(mode="area")``), the degraded MUL upsampled x4 to the degraded PAN's grid, fused, compared with
  the original MUL (H/4 x W/4).

Upsampling is bicubic (align_corners=False) by the ratio 4, on MUL's own grid: MUL pixel m covers PAN pixels 4m ..
4m + 3, also where the PAN size is not a multiple of 4 (650 px PAN, 163 px MUL: the upsampled 652 px are cropped to
PAN's 650). Wald's protocol degrades PAN on MUL's grid too: PAN extended by its edge pixels to 4 x MUL (650 -> 652)
before the box average, so fused output and target are both MUL's 163 px. Inputs stacked as channels: [PAN, MUL] (1 + 8) before one patch
embedding adapted to the two WorldView-3 sensors by band wavelength (neither is a pretraining sensor). The
SimMIM decoder predicts the residual over the upsampled MUL; output and target are 11-bit DN / 2047 clipped to
[0, 1] (the valid range of xgeo.sensors), on which PSNR and SSIM (data_range 1) are computed. Evaluation over the
``val`` split (the seeded 80/20 split by image id of the store), whole tiles by sliding windows; nodata pixels
(WorldView-3 DN 0, the zero-filled image borders) are left out of MAE, SAM, SSIM and PSNR (:meth:`valid_mask`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..catalog import get_dataset
from ..errors import XGeoError
from .figures import panels, stretch
from .base import ImageTask, InputSpec

RGB = ("red", "green", "blue")


class SpaceNet2(ImageTask):
    name = "spacenet2"
    dataset = "spacenet2"
    target_sensor = "wv3_mul"
    metric = "PSNR"
    lower_is_better = False
    scale_note = "WorldView-3 DN / 2047 clipped to [0, 1]"

    def __init__(self, params, settings) -> None:
        super().__init__(params, settings)
        protocols = get_dataset("spacenet2").extra["protocols"]
        if self.s.get("protocol") not in protocols:
            raise XGeoError(f"params finetune.spacenet2.protocol: expected one of {list(protocols)}, "
                            f"found {self.s.get('protocol')!r}")
        self.ratio = int(get_dataset("spacenet2").extra["ratio"])

    @property
    def protocol(self) -> str:
        return str(self.s["protocol"])

    def eval_split(self) -> str:
        return str(self.s.get("eval_split", "val"))

    def input_specs(self) -> list[InputSpec]:
        return [self.spec_for("pan"), self.spec_for("mul")]

    def read_keys(self) -> list[str]:
        return ["pan", "mul"] + (["mul_pansharpen"] if self.protocol == "supervised" else [])

    @property
    def out_bands(self) -> tuple[str, ...]:
        return self.spec_for("mul").bands

    def nodata(self) -> dict[str, float | None]:
        # WorldView-3 DN 0: the zero-filled borders of SpaceNet 2's PAN / MUL tiles (the sensor's nodata, in the store)
        return {k: None for k in self.read_keys()}

    def valid_mask(self, batch: dict) -> torch.Tensor:
        """supervised: pixels where MUL-PanSharpen and PAN hold data; wald: where the original MUL (the target)
        does. The upsampled MUL input is not masked: its nodata shows as a nodata target at the same place."""
        if self.protocol == "supervised":
            return batch["valid/mul_pansharpen"] & batch["valid/pan"]
        return batch["valid/mul"]

    def _up(self, x: torch.Tensor, size) -> torch.Tensor:
        """(B, C, h, w) on the coarse grid -> (B, C, *size) on the grid ``ratio`` x finer with the same corner
        (upsampled by the ratio, then cropped to ``size``)."""
        h, w = size
        if -(-h // self.ratio) > x.shape[-2] or -(-w // self.ratio) > x.shape[-1]:
            raise XGeoError(f"spacenet2: a MUL tile of {tuple(x.shape[-2:])} px does not cover a PAN tile of "
                            f"{tuple(size)} px at the ratio {self.ratio}; re-convert the store (MUL tiles are "
                            f"ceil(tile_size / {self.ratio}) px)")
        return F.interpolate(x, scale_factor=self.ratio, mode="bicubic", align_corners=False)[..., :h, :w]

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """Box average by the ratio on the coarse grid: (B, C, H, W) -> (B, C, ceil(H / r), ceil(W / r)), the
        image extended by its edge pixels to whole coarse pixels."""
        r = self.ratio
        ph, pw = (-x.shape[-2]) % r, (-x.shape[-1]) % r
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return F.avg_pool2d(x, r)

    def prepare(self, batch: dict):
        pan, mul = batch["pan"], batch["mul"]
        if self.protocol == "supervised":
            target = self.unit("mul_pansharpen", batch["mul_pansharpen"])
        else:
            target = self.unit("mul", mul)
            pan, mul = self._down(pan), self._down(mul)
            pan = pan[..., : target.shape[-2], : target.shape[-1]]  # degraded PAN on the target's (MUL's) grid
        up = self._up(mul, pan.shape[-2:])
        # the residual's base: the upsampled MUL on the target's [0, 1] scale (the normalisation is affine per
        # band and bicubic weights sum to 1, so upsampling before or after it is the same)
        return [pan, up], target, self.unit("mul", up)

    def display_input(self, batch: dict, b: int) -> np.ndarray:
        xs, _, base = self.prepare({k: v[b:b + 1] for k, v in batch.items() if k != "index" and not k.startswith("valid/")})
        return base[0, [list(self.out_bands).index(n) for n in RGB]].float().numpy()

    def figures(self, arrays: dict) -> list:
        idx = [list(self.out_bands).index(n) for n in RGB]
        n = min(4, len(arrays["outputs"]))
        if n == 0:
            return []
        rows = [[stretch(arrays["inputs"][i]), stretch(arrays["outputs"][i][idx]), stretch(arrays["targets"][i][idx])]
                for i in range(n)]
        return [(panels(rows, ["upsampled MUL", "prediction", "target"], f"SpaceNet2 pan-sharpening ({self.protocol})"),
                 "figures/pansharpening.png")]
