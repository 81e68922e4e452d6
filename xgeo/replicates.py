"""Replicates of a table cell and whether a difference between two cells exceeds their noise.

A reproduced cell is the mean of ``n`` finetuning runs that differ only in the finetuning seed
(``tables.replicates``); its spread is the sample standard deviation (ddof = 1, undefined for n = 1).

A compared pair (row A against the reference row B of a table, e.g. XGeo against Random) gets the 95 % interval of
the difference of the means ``mean_A - mean_B`` by Welch's t: standard error ``sqrt(s_A^2/n_A + s_B^2/n_B)``,
Welch-Satterthwaite degrees of freedom, two-sided t quantile ``t_{0.975, df}``. The verdict reads the interval with
the metric's direction: an interval wholly on the side where A is better is ``better``, wholly on the other side
``worse``, an interval containing 0 ``within noise``. With fewer than two runs on either side there is no interval
and the verdict says so (``n < 2``). Two sets of identical values (zero spread) give the degenerate interval
[d, d]: any non-zero d is then a difference, as it is for bit-identical reruns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95
METHOD = "Welch t, 95 %"
LOWER_IS_BETTER = frozenset({"MAE", "SAM"})  # every other table metric (mAP, mIoU, OA, SSIM, PSNR): higher is better


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float | None  # sample std (ddof = 1); None for one run
    n: int


@dataclass(frozen=True)
class Comparison:
    diff: float
    low: float | None
    high: float | None
    verdict: str  # better | worse | within noise | n < 2 (no interval)


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample standard deviation and count of a cell's replicate values."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summarize: no values")
    n = len(xs)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return Summary(mean, std, n)


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def welch_interval(a: Summary, b: Summary, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The ``confidence`` interval of ``mean_a - mean_b`` (Welch), or None when a side has fewer than 2 runs."""
    if a.n < 2 or b.n < 2:
        return None
    d = a.mean - b.mean
    va, vb = (a.std or 0.0) ** 2 / a.n, (b.std or 0.0) ** 2 / b.n
    se2 = va + vb
    if se2 == 0.0:
        return d, d
    df = se2 ** 2 / ((va ** 2 / (a.n - 1) if va else 0.0) + (vb ** 2 / (b.n - 1) if vb else 0.0))
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)
    return d - half, d + half


def compare(a: Summary, b: Summary, metric: str, confidence: float = CONFIDENCE) -> Comparison:
    """Is A better than B (the reference) on ``metric`` beyond the noise of both?"""
    d = a.mean - b.mean
    interval = welch_interval(a, b, confidence)
    if interval is None:
        return Comparison(d, None, None, "n < 2 (no interval)")
    low, high = interval
    sign = -1.0 if lower_is_better(metric) else 1.0
    lo, hi = sorted((sign * low, sign * high))
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "within noise"
    return Comparison(d, low, high, verdict)
