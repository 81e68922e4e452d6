"""SimMIM masks and the cross-sensor target choice (paper, sections 3.2 and B.1; Table 11).

A mask is drawn on a coarse grid of ``mask_patch`` pixels (paper: 32 px at 192 px, a 6 x 6 grid):
``ceil(grid^2 * ratio)`` cells are chosen by a permutation and the grid is expanded to the token grid of the
patch embedding (``mask_patch / patch`` tokens per cell, 8 for the paper). One mask covers every channel of a
sensor's image; the two images of a co-located pair get independent masks, so the model cannot copy a masked
region of one sensor from the same, unmasked region of the other.

Every draw takes an explicit ``numpy.random.Generator``: the training loop seeds one per step, so a resumed run
draws the same masks as a run never interrupted, whatever else touched the global random state.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import XGeoError


class MaskGenerator:
    """Random SimMIM masks at token resolution.

    Args:
        img_size: side of the (square) input image in pixels.
        mask_patch: side of one mask cell in pixels (``pretrain.mask_patch``).
        patch_size: side of one token of the patch embedding in pixels (SwinV2: 4).
        ratio: fraction of mask cells masked (``pretrain.mask_ratio``).
    """

    def __init__(self, img_size: int, mask_patch: int, patch_size: int, ratio: float) -> None:
        if img_size % mask_patch:
            raise XGeoError(
                f"params pretrain.mask_patch: the image side ({img_size} px) must be a multiple of the mask patch, "
                f"found mask_patch={mask_patch}"
            )
        if mask_patch % patch_size:
            raise XGeoError(
                f"params pretrain.mask_patch: must be a multiple of the model's patch size ({patch_size} px), "
                f"found {mask_patch}"
            )
        if not 0.0 <= ratio <= 1.0:
            raise XGeoError(f"params pretrain.mask_ratio: expected a value in [0, 1], found {ratio}")
        self.img_size = img_size
        self.mask_patch = mask_patch
        self.patch_size = patch_size
        self.ratio = ratio
        self.grid = img_size // mask_patch  # mask cells per side
        self.scale = mask_patch // patch_size  # tokens per mask cell per side
        self.num_masked = math.ceil(self.grid * self.grid * ratio)

    @property
    def token_grid(self) -> int:
        return self.grid * self.scale

    def grid_mask(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n independent masks on the mask grid: (n, grid, grid) uint8, 1 = masked, each with ``num_masked`` ones."""
        cells = self.grid * self.grid
        out = np.zeros((n, cells), dtype=np.uint8)
        for i in range(n):
            out[i, rng.permutation(cells)[: self.num_masked]] = 1
        return out.reshape(n, self.grid, self.grid)

    def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n independent masks at token resolution: (n, img/patch, img/patch) uint8, 1 = masked."""
        grid = self.grid_mask(rng, n)
        return grid.repeat(self.scale, axis=1).repeat(self.scale, axis=2)


def choose_cross(rng: np.random.Generator, n: int, cross_ratio: float) -> np.ndarray:
    """Per sample of a co-located pair: True = reconstruct the paired sensor (Eq. 1), False = itself.

    Each sample crosses with probability ``cross_ratio``; 0 never crosses (Eq. 2 only), 1 always does (Table 7).
    Returns (n,) bool.
    """
    if not 0.0 <= cross_ratio <= 1.0:
        raise XGeoError(f"params pretrain.cross_ratio: expected a probability in [0, 1], found {cross_ratio}")
    return rng.random(n) < cross_ratio
