"""The window grid over a scene, the blending weight of overlapping windows, reflection padding at the edges.

A scene of H x W pixels is read in ``size`` x ``size`` windows:

- embedding (:func:`tile_grid`): windows side by side (stride = size) from the top-left corner; the last row and
  column of windows reach past the scene and are filled by reflection, so every window's feature map lands on
  the feature grid at a whole cell (the grid is the input's, scaled by the encoder stride);
- dense prediction (:func:`blend_grid`): the scene is padded by ``margin`` pixels of reflection on every side (the
  model sees context at the scene's edge, not a hard border) and covered by windows ``stride`` apart, the last one
  end-aligned. Each window's output is weighted by :func:`blend_weight` (a Hann window raised to a positive floor:
  smooth, largest in the centre, never zero) and the weighted sum is divided by the summed weight, so the weights
  of the windows covering a pixel sum to one exactly and a per-pixel model is reproduced without seams.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

WEIGHT_FLOOR = 1e-3  # blend weight at a window's border (relative to its centre): small, never zero


def positions(length: int, size: int, stride: int) -> list[int]:
    """Window starts 0, stride, 2 stride, ... with the last one end-aligned (length - size); length >= size."""
    if length < size:
        raise ValueError(f"length {length} < window {size}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


@dataclass(frozen=True)
class Window:
    """A window in scene pixels; ``row``/``col`` may be negative or reach past the scene (filled by reflection)."""

    row: int
    col: int
    size: int


def check_scene(height: int, width: int, size: int, what: str) -> None:
    if height < size or width < size:
        raise DataError(f"{what}: the scene is {height} x {width} px, smaller than one {size} x {size} px window; "
                        f"pass a smaller --window (a multiple of 32) or a larger scene")


def tile_grid(height: int, width: int, size: int) -> list[Window]:
    """Windows side by side covering the scene; the last row/column reaches past it (ceil(H / size) rows)."""
    rows, cols = math.ceil(height / size), math.ceil(width / size)
    return [Window(i * size, j * size, size) for i in range(rows) for j in range(cols)]


def blend_axes(height: int, width: int, size: int, stride: int, margin: int) -> tuple[list[int], list[int]]:
    """The scene rows and columns where overlapping windows start (the scene padded by ``margin``)."""
    if not 0 < stride <= size:
        raise DataError(f"window stride {stride}: expected 1..{size} (the window size)")
    if not 0 <= margin < size:
        raise DataError(f"edge margin {margin}: expected 0..{size - 1}")
    return ([r - margin for r in positions(height + 2 * margin, size, stride)],
            [c - margin for c in positions(width + 2 * margin, size, stride)])


def blend_grid(height: int, width: int, size: int, stride: int, margin: int) -> list[Window]:
    """Overlapping windows over the scene padded by ``margin`` on every side, in row-major order."""
    rows, cols = blend_axes(height, width, size, stride, margin)
    return [Window(r, c, size) for r in rows for c in cols]


def blend_weight(size: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """(size, size) float64 separable weight: floor + (1 - floor) * sin^2(pi (i + 0.5) / size) per axis."""
    i = np.arange(size, dtype=np.float64)
    w1 = floor + (1.0 - floor) * np.sin(np.pi * (i + 0.5) / size) ** 2
    return np.outer(w1, w1)


def reflect_pad(block: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Pad (C, h, w) by reflection about the edge pixels (numpy 'reflect'; 'edge' along an axis of length 1)."""
    if not (top or bottom or left or right):
        return block
    out = block
    for axis, (a, b) in ((1, (top, bottom)), (2, (left, right))):
        if a or b:
            pad = [(0, 0)] * out.ndim
            pad[axis] = (a, b)
            out = np.pad(out, pad, mode="reflect" if out.shape[axis] > 1 else "edge")
    return out


def clip_box(row: int, col: int, h: int, w: int, height: int, width: int
             ) -> tuple[int, int, int, int, tuple[int, int, int, int]]:
    """The part of the box (row, col, h, w) inside the scene -> (row, col, h, w, (top, bottom, left, right) padding
    to restore by reflection)."""
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, height), min(col + w, width)
    return r0, c0, r1 - r0, c1 - c0, (r0 - row, row + h - r1, c0 - col, col + w - c1)


def clip_window(win: Window, height: int, width: int) -> tuple[int, int, int, int, tuple[int, int, int, int]]:
    """The part of ``win`` inside the scene (:func:`clip_box`)."""
    return clip_box(win.row, win.col, win.size, win.size, height, width)
