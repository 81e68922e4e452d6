"""Streaming per-band statistics of a modality, and the sensor value convention they are computed after.

One pass over the tiles, constant memory:

* ``count``, ``mean``, ``std`` (population, ddof=0): exact in float64. Each update computes the batch's own mean and
  sum of squared deviations in float64 and merges them with the running ones (Chan, Golub and LeVeque's pairwise
  update), which stays accurate where the textbook sum-of-squares formula cancels catastrophically.
* ``min``, ``max``: exact.
* ``p1``, ``p99`` (the percentiles of ``data.convert.percentiles``): from a fixed-count histogram per band.
  Error bound: the estimate is the centre of the bin that holds numpy's ``percentile(x, q, method="inverted_cdf")``
  (clamped to the exact min/max), so ``|estimate - numpy| <= bin_width / 2``, stored per band as ``p_error``.
  Integer sensors with a valid range get one bin per integer value (centred on it): their percentiles are exact.
  Float sensors with a valid range (SAR dB) get ``FLOAT_BINS`` bins over it. Sensors without one (DSM heights) get an
  adaptive histogram: its range starts at the first tile's and doubles (merging bin pairs, whose edges stay edges)
  whenever a value falls outside, so the bound is the final bin width / 2 (range / ``FLOAT_BINS`` at most x2).
"""
from __future__ import annotations

import numpy as np

from ..sensors import Sensor

FLOAT_BINS = 16384  # even, so that doubling the range keeps old bin edges (see _Histogram._grow)
MAX_INT_BINS = 65536


def apply_value_convention(x: np.ndarray, sensor: Sensor) -> tuple[np.ndarray, np.ndarray | None]:
    """The sensor's value convention on one tile.

    x: (C, H, W) native dtype. Returns (float32 (C, H, W), valid mask (C, H, W) bool or None when all are valid).
    SAR: NaN -> ``nan_value``; every sensor with a ``valid_range``: clip to it; a sensor's ``nodata`` pixels (and
    non-finite values left after that) are marked invalid: statistics exclude them.
    """
    y = x.astype(np.float32, copy=True)
    if sensor.nan_value is not None:
        np.nan_to_num(y, copy=False, nan=sensor.nan_value, posinf=sensor.valid_range[1] if sensor.valid_range else None,
                      neginf=sensor.valid_range[0] if sensor.valid_range else None)
    valid = None
    if sensor.nodata is not None:
        valid = x != sensor.nodata
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(y)
        if not finite.all():
            valid = finite if valid is None else (valid & finite)
    if sensor.valid_range is not None:
        np.clip(y, sensor.valid_range[0], sensor.valid_range[1], out=y)
    return y, valid


class _Histogram:
    """Fixed-count histogram of one band; bins [origin + k * width, origin + (k + 1) * width)."""

    def __init__(self, origin: float, width: float, nbins: int, fixed: bool):
        self.origin, self.width, self.nbins, self.fixed = float(origin), float(width), int(nbins), fixed
        self.counts = np.zeros(self.nbins, dtype=np.int64)

    def _grow(self, lo: float, hi: float) -> None:
        # Double the range until [lo, hi] fits; each doubling merges pairs of bins, extending right or left.
        while lo < self.origin or hi >= self.origin + self.nbins * self.width:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.zeros(self.nbins, dtype=np.int64)
            if lo < self.origin:  # extend to the left: old range becomes the upper half
                self.counts[self.nbins // 2:] = merged
                self.origin -= self.nbins * self.width
            else:
                self.counts[: self.nbins // 2] = merged
            self.width *= 2.0

    def update(self, v: np.ndarray) -> None:
        if v.size == 0:
            return
        if not self.fixed:
            self._grow(float(v.min()), float(v.max()))
        idx = np.floor((v.astype(np.float64) - self.origin) / self.width).astype(np.int64)
        np.clip(idx, 0, self.nbins - 1, out=idx)  # a fixed range's upper edge belongs to the last bin
        self.counts += np.bincount(idx, minlength=self.nbins)

    def percentile(self, q: float, vmin: float, vmax: float) -> float:
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        # inverted_cdf: the smallest value whose cumulative count reaches q% of the total
        rank = max(int(np.ceil(q / 100.0 * total)), 1)
        k = int(np.searchsorted(np.cumsum(self.counts), rank))
        centre = self.origin + (k + 0.5) * self.width
        return float(min(max(centre, vmin), vmax))


def _merge_hist(a: "_Histogram | None", b: "_Histogram | None") -> "_Histogram | None":
    """One histogram holding the counts of ``a`` and ``b``. Same grid (fixed ranges): counts added, exact. Adaptive
    grids: ``a``'s grid grown (doubling, as in ``_grow``) over both ranges, ``b``'s bins added at their centres, so a
    percentile moves by at most one bin of the merged grid."""
    if a is None or b is None:
        return a if b is None else b
    out = _Histogram(a.origin, a.width, a.nbins, a.fixed)
    out.counts = a.counts.copy()
    if (a.origin, a.width, a.nbins) == (b.origin, b.width, b.nbins):
        out.counts += b.counts
        return out
    nz = np.flatnonzero(b.counts)
    if nz.size == 0:
        return out
    centres = b.origin + (nz + 0.5) * b.width
    if not out.fixed:
        out._grow(float(centres.min()), float(centres.max()))
    idx = np.clip(np.floor((centres - out.origin) / out.width).astype(np.int64), 0, out.nbins - 1)
    np.add.at(out.counts, idx, b.counts[nz])
    return out


class StreamingStats:
    """Per-band statistics of one modality over a stream of tiles (C, H, W) after the sensor value convention."""

    def __init__(self, sensor: Sensor, num_bands: int, percentiles=(1, 99)):
        self.sensor, self.num_bands, self.percentiles = sensor, int(num_bands), tuple(percentiles)
        self.count = np.zeros(num_bands, dtype=np.int64)
        self.mean = np.zeros(num_bands, dtype=np.float64)
        self.m2 = np.zeros(num_bands, dtype=np.float64)
        self.min = np.full(num_bands, np.inf)
        self.max = np.full(num_bands, -np.inf)
        self.hists: list[_Histogram | None] = [None] * num_bands

    def _new_hist(self, first: np.ndarray) -> _Histogram:
        vr = self.sensor.valid_range
        if vr is not None and np.issubdtype(np.dtype(self.sensor.dtype), np.integer) and vr[1] - vr[0] + 1 <= MAX_INT_BINS:
            return _Histogram(vr[0] - 0.5, 1.0, int(vr[1] - vr[0]) + 1, fixed=True)
        if vr is not None:
            return _Histogram(vr[0], (vr[1] - vr[0]) / FLOAT_BINS, FLOAT_BINS, fixed=True)
        lo, hi = float(first.min()), float(first.max())
        return _Histogram(lo, max(hi - lo, 1e-6) * (1 + 1e-9) / FLOAT_BINS, FLOAT_BINS, fixed=False)

    def update(self, x: np.ndarray, valid: np.ndarray | None = None) -> None:
        """x: (C, H, W) float after the value convention; valid: (C, H, W) bool or None (all valid)."""
        if x.shape[0] != self.num_bands:
            raise ValueError(f"expected {self.num_bands} bands, got {x.shape[0]}")
        for c in range(self.num_bands):
            v = x[c].ravel() if valid is None else x[c][valid[c]]
            n = v.size
            if n == 0:
                continue
            v64 = v.astype(np.float64)
            bmean = v64.mean()
            bm2 = float(np.square(v64 - bmean).sum())
            na = self.count[c]
            tot = na + n
            delta = bmean - self.mean[c]
            self.mean[c] += delta * n / tot
            self.m2[c] += bm2 + delta * delta * na * n / tot
            self.count[c] = tot
            self.min[c] = min(self.min[c], float(v.min()))
            self.max[c] = max(self.max[c], float(v.max()))
            if self.hists[c] is None:
                self.hists[c] = self._new_hist(v)
            self.hists[c].update(v)

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to merge these statistics with another part's (arrays, for np.savez)."""
        out = {"count": self.count, "mean": self.mean, "m2": self.m2, "min": self.min, "max": self.max}
        for c, h in enumerate(self.hists):
            if h is not None:
                out[f"hist{c}"] = h.counts
                out[f"hist{c}_grid"] = np.array([h.origin, h.width, h.nbins, h.fixed], dtype=np.float64)
        return out

    @classmethod
    def from_state(cls, sensor: Sensor, percentiles, state) -> "StreamingStats":
        st = cls(sensor, len(state["count"]), percentiles)
        st.count, st.mean, st.m2 = (np.array(state[k]) for k in ("count", "mean", "m2"))
        st.min, st.max = np.array(state["min"]), np.array(state["max"])
        for c in range(st.num_bands):
            if f"hist{c}" in state:
                origin, width, nbins, fixed = state[f"hist{c}_grid"]
                h = _Histogram(origin, width, int(nbins), bool(fixed))
                h.counts = np.array(state[f"hist{c}"], dtype=np.int64)
                st.hists[c] = h
        return st

    def merge(self, other: "StreamingStats") -> None:
        """Add another part's statistics: count, mean and M2 by Chan et al.'s pairwise formula (exact up to float
        rounding), min/max exact, histograms by :func:`_merge_hist`."""
        na, nb = self.count.astype(np.float64), other.count.astype(np.float64)
        tot = na + nb
        safe = np.where(tot > 0, tot, 1.0)
        delta = other.mean - self.mean
        self.mean = np.where(tot > 0, self.mean + delta * nb / safe, 0.0)
        self.m2 = self.m2 + other.m2 + delta * delta * na * nb / safe
        self.count = self.count + other.count
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        self.hists = [_merge_hist(a, b) for a, b in zip(self.hists, other.hists)]

    def result(self) -> dict:
        """{count, mean, std, min, max, p<q>..., p_error}: per-band lists (JSON-ready; NaN where a band had no data)."""
        empty = self.count == 0
        std = np.sqrt(np.where(empty, np.nan, self.m2 / np.maximum(self.count, 1)))
        out = {
            "count": self.count.tolist(),
            "mean": np.where(empty, np.nan, self.mean).tolist(),
            "std": std.tolist(),
            "min": np.where(empty, np.nan, self.min).tolist(),
            "max": np.where(empty, np.nan, self.max).tolist(),
        }
        for q in self.percentiles:
            out[f"p{q:g}"] = [h.percentile(q, lo, hi) if h is not None else float("nan")
                              for h, lo, hi in zip(self.hists, self.min, self.max)]
        out["p_error"] = [h.width / 2 if h is not None else float("nan") for h in self.hists]
        return out
