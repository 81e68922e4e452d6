"""Figures of the report: training curves (pretraining metrics.jsonl), Figure 3 (modality heat map), Figure 4 gathering.

Command line used by the Snakemake rules (the same ``--params``/``--set`` as the xgeo CLI):

    python -m xgeo.plots [--params F] [--set k=v ...] curves  checkpoints/<exp>/metrics.jsonl OUT.png
    python -m xgeo.plots [--params F] [--set k=v ...] gather  checkpoints/<exp>/figures OUT_DIR
    python -m xgeo.plots [--params F] [--set k=v ...] figure3 OUT.png
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import click
import numpy as np

from .config import load_params
from .errors import XGeoError
from .io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise XGeoError(f"{path}: metrics file not found (pretraining writes one JSON object per logged step)")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise XGeoError(f"{path}:{n}: not a JSON object ({exc})") from None
    if not records:
        raise XGeoError(f"{path}: no records (expected objects with 'step' and 'loss')")
    return records


def curve_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (steps, values)}`` for ``loss``, ``aux_loss`` and every per-sensor ``loss/<sensor>`` scalar."""
    names = [k for k in records[0] if k == "loss" or k == "aux_loss" or k.startswith("loss/")]
    out = {}
    for name in names:
        pts = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
        if pts:
            steps, values = zip(*pts)
            out[name] = (np.asarray(steps), np.asarray(values, dtype=float))
    return out


def training_curves(metrics_jsonl: str | Path, out: str | Path) -> Path:
    """Total, auxiliary and per-sensor reconstruction losses against the step (log scale)."""
    series = curve_series(read_jsonl(metrics_jsonl))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in series.items():
        ax.plot(steps, values, label=name, lw=2 if name == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all((v > 0).all() for _, v in series.values()):
        ax.set_yscale("log")
    ax.set_title(f"pretraining: {Path(metrics_jsonl).parent.name}")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return out


def gather(figures_dir: str | Path, out: str | Path) -> Path:
    """Copy the PNG figures of a pretraining run (Figure 4 reconstructions) into ``out`` for the report."""
    figures_dir, out = Path(figures_dir), Path(out)
    pngs = sorted(figures_dir.glob("*.png")) if figures_dir.is_dir() else []
    if not pngs:
        raise XGeoError(f"{figures_dir}: no reconstruction figures (*.png); pretraining writes them under figures/")
    with atomic_path(out, directory=True) as tmp:
        for p in pngs:
            shutil.copy2(p, tmp / p.name)
    return out


def figure3_grid(params: Mapping) -> dict[str, dict]:
    """Per panel (10% BEN mAP, 1% SEN12MS-CR SAM): ``{"values": (rows, cols) means, NaN where there is no number,
    "std", "n" (runs per cell), "text" (the cell's table text: missing / stale / insufficient), "verdicts"}``.

    ``verdicts[i][j]``: each single-sensor pretraining row against the multi-sensor row (XGeo) of the same column,
    Welch's 95 % interval of the difference (:mod:`xgeo.replicates`).
    """
    from .replicates import compare
    from .tables import FIGURE3, Cell, cell_result

    panels = {}
    for col in FIGURE3["panels"]:
        shape = (len(FIGURE3["rows"]), len(FIGURE3["columns"]))
        grid, std, n = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, dtype=int)
        text = [["" for _ in FIGURE3["columns"]] for _ in FIGURE3["rows"]]
        summaries = {}
        for i, (_, exp) in enumerate(FIGURE3["rows"]):
            for j, (_, mod) in enumerate(FIGURE3["columns"]):
                variant = mod and f"{col.task.replace('-', '_')}_{mod}"
                res = cell_result(params, Cell(exp, col.task, "xgeo", col.fraction, variant), col.metric, col.header)
                text[i][j] = res.text or "missing"
                if res.summary is not None:
                    summaries[i, j] = res.summary
                    grid[i, j] = res.summary.mean
                    std[i, j] = np.nan if res.summary.std is None else res.summary.std
                    n[i, j] = res.summary.n
        multi = len(FIGURE3["rows"]) - 1  # the last row is the multi-sensor pretraining
        verdicts = [["" for _ in FIGURE3["columns"]] for _ in FIGURE3["rows"]]
        for (i, j), s in summaries.items():
            if i != multi and (multi, j) in summaries:
                verdicts[i][j] = compare(s, summaries[multi, j], col.metric).verdict
        panels[col.header] = {"values": grid, "std": std, "n": n, "text": text, "verdicts": verdicts,
                              "rows": [r for r, _ in FIGURE3["rows"]], "columns": [c for c, _ in FIGURE3["columns"]]}
    return panels


def _cell_label(p: dict, i: int, j: int) -> str:
    x, s = p["values"][i, j], p["std"][i, j]
    if np.isnan(x):
        return p["text"][i][j][:28]
    label = f"{x:.3g}" + ("" if np.isnan(s) else f" ± {s:.2g}") + f"\nn={p['n'][i, j]}"
    return label + (f"\nvs XGeo: {p['verdicts'][i][j]}" if p["verdicts"][i][j] else "")


def figure3(params: Mapping, out: str | Path) -> Path:
    """Figure 3: pretraining modality (rows) x downstream modality (columns), mean ± std over the replicates;
    empty cells say why (missing, stale, insufficient)."""
    panels = figure3_grid(params)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for ax, (title, p) in zip(np.atleast_1d(axes), panels.items()):
        v = p["values"]
        cmap = "viridis_r" if "SAM" in title else "viridis"  # brighter is better in both panels
        ax.imshow(np.ma.masked_invalid(v), cmap=cmap)
        for (i, j), x in np.ndenumerate(v):
            ax.text(j, i, _cell_label(p, i, j), ha="center", va="center", fontsize=7,
                    color="gray" if np.isnan(x) else "white")
        ax.set_xticks(range(len(p["columns"])), p["columns"], fontsize=8)
        ax.set_yticks(range(len(p["rows"])), p["rows"], fontsize=8)
        ax.set_xlabel("downstream modality")
        ax.set_ylabel("pretraining data")
        ax.set_title(f"{title} (mean ± std over n runs)", fontsize=9)
    return _save(fig, out)


@click.group()
@click.option("--params", "params_file", default=None)
@click.option("--set", "overrides", multiple=True)
@click.pass_context
def main(ctx, params_file, overrides):
    """Figures of the xgeo report."""
    ctx.obj = load_params(params_file, overrides)


@main.command("curves")
@click.argument("metrics_jsonl")
@click.argument("out")
def curves_cmd(metrics_jsonl, out):
    training_curves(metrics_jsonl, out)


@main.command("gather")
@click.argument("figures_dir")
@click.argument("out")
def gather_cmd(figures_dir, out):
    gather(figures_dir, out)


@main.command("figure3")
@click.argument("out")
@click.pass_obj
def figure3_cmd(params, out):
    figure3(params, out)


if __name__ == "__main__":  # pragma: no cover
    main()
