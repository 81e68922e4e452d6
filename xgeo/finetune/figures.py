"""Qualitative figures of a finetuning run, like the paper's Figure 7 (cloud removal: cloudy input, prediction,
target) and Figure 8 (segmentation: image, prediction, labels); pan-sharpening gets the same layout."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def stretch(rgb: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> np.ndarray:
    """(3, H, W) any scale -> (H, W, 3) on [0, 1], per-image 2-98 % percentile stretch (display only)."""
    x = np.moveaxis(np.asarray(rgb, dtype=np.float64), 0, -1)
    a, b = np.nanpercentile(x, lo), np.nanpercentile(x, hi)
    return np.clip((x - a) / (b - a if b > a else 1.0), 0.0, 1.0)


def colourise(mask: np.ndarray, colours: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 with the dataset's label colours (ignored pixels black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colours)] = np.asarray(colours, dtype=np.uint8)
    lut[ignore_index] = 0
    return lut[np.asarray(mask, dtype=np.uint8)]


def panels(rows: list[list[np.ndarray]], titles: Sequence[str], suptitle: str = ""):
    """A grid figure: one row per example, one column per title; images (H, W, 3) or (H, W)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.4 * len(titles), 2.4 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray" if np.ndim(img) == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig
