"""The paper's tables (3, 4, 5, 6, 7, 10, 13, 14) built from finetuning runs and the cited literature.

A table is rows x columns. A *run row* names a pretraining experiment (``experiments.<name>`` of params.yaml) and an
initialisation (``random``, ``xgeo`` = that experiment's checkpoint, or a weight file named in ``finetune.weights``); a
*column* names a downstream task, a training fraction, a metric of ``metrics.json`` and optionally a finetune
*variant* (``tables.variants.<name>``: dotted overrides of the finetune settings, e.g. the fusion method of Table 13).
Each cell is one finetuning run:

    results/runs/<experiment>/<task>/<init>/f<fraction>[-<variant>]/{metrics.json, predictions.npz, run.json}

*Cited rows* come from ``results/literature.csv`` (long format: table, method, column, value, note, source), copied
from the paper's text; they are marked ``cited`` and never mixed with reproduced numbers. Beside every reproduced value
the table has a ``<column> [paper]`` cell with the paper's value for that row (the literature row named by ``paper``).

Nothing is invented: a cell whose run is absent is empty and the row's ``status``/``note`` say which run is missing
and why (weights not supplied, stage not run yet). BigEarthNet mAP is the *micro* average (``mAP_micro`` in
metrics.json, both averages are there); it is said in the column header.

Pretraining is shared: an experiment whose overrides touch only ``finetune.*`` keys reuses the checkpoint of
``tables.base_experiment`` (one pretraining, many finetunes); see :func:`pretraining_of`.
"""
from __future__ import annotations

import csv
import io
import re
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping

from .config import get_path
from .errors import XGeoError
from .io import write_text

LITERATURE = Path("results/literature.csv")


class TableError(XGeoError):
    """A table name, a literature file or a run directory is not what the table builder expects."""


@dataclass(frozen=True)
class Column:
    header: str                 # as in the CSV and in literature.csv
    task: str                   # bigearthnet | vaihingen | sen12ms-cr | spacenet2
    fraction: float             # fraction of the training split
    metric: str                 # key of metrics.json
    variant: str | None = None  # name in params tables.variants (finetune-only overrides)


@dataclass(frozen=True)
class Row:
    label: str                  # as in the paper
    experiment: str             # pretraining experiment (params experiments.<name>)
    init: str                   # random | xgeo | a name in params finetune.weights
    paper: str | None = None    # method name of the paper's own value in literature.csv
    variant: str | None = None  # finetune variant applied to every cell of the row (Table 13)


@dataclass(frozen=True)
class Cell:
    experiment: str
    task: str
    init: str
    fraction: float
    variant: str | None

    @property
    def setting(self) -> str:
        """The last path segment: ``f<fraction>`` plus ``-<variant>``."""
        return f"f{self.fraction:g}" + (f"-{self.variant}" if self.variant else "")

    def run_dir(self, params: Mapping) -> Path:
        return Path(params["paths"]["runs"]) / self.experiment / self.task / self.init / self.setting


def _c(header, task, fraction, metric, variant=None):
    return Column(header, task, fraction, metric, variant)


BEN1 = _c("BEN 1% mAP_micro", "bigearthnet", 0.01, "mAP_micro")
BEN10 = _c("BEN 10% mAP_micro", "bigearthnet", 0.1, "mAP_micro")
BEN100 = _c("BEN 100% mAP_micro", "bigearthnet", 1.0, "mAP_micro")
BEN5PC = _c("BEN 5 per class mAP_micro", "bigearthnet", 1.0, "mAP_micro", "per_class5")
CR = [_c("SEN12MS-CR MAE", "sen12ms-cr", 1.0, "MAE"), _c("SEN12MS-CR SAM", "sen12ms-cr", 1.0, "SAM"),
      _c("SEN12MS-CR SSIM", "sen12ms-cr", 1.0, "SSIM")]
CR1_SAM = _c("SEN12MS-CR 1% SAM", "sen12ms-cr", 0.01, "SAM")
SN = [_c("SpaceNet PSNR", "spacenet2", 1.0, "PSNR"), _c("SpaceNet SSIM", "spacenet2", 1.0, "SSIM")]
VH = _c("Vaihingen mIoU", "vaihingen", 1.0, "mIoU")

ABLATION_COLUMNS = (BEN1, BEN10, *CR, *SN, VH)

TABLES: dict[str, dict] = {
    "table3": {
        "title": "Table 3: all downstream tasks, XGeo against other pretrained models",
        "columns": (BEN10, BEN100, *CR, *SN, VH),
        "rows": (Row("XGeo", "xgeo", "xgeo", "XGeo"), Row("Random", "xgeo", "random", "Random"),
                 Row("IN-22k", "xgeo", "in22k", "IN-22k")),
    },
    "table4": {
        "title": "Table 4: cloud removal against models designed for it",
        "columns": tuple(CR),
        "rows": (Row("XGeo", "xgeo", "xgeo", "XGeo"),),
    },
    "table5": {
        "title": "Table 5: distillation from other pretrained models versus pretraining from scratch",
        "columns": ABLATION_COLUMNS,
        "rows": (Row("Distilled from ImageNet22K", "distill-in22k", "xgeo", "Distilled from ImageNet22K"),
                 Row("Distilled from CLIP", "distill-clip", "xgeo", "Distilled from CLIP"),
                 Row("Reconstruct CLIP (EVA)", "eva-clip", "xgeo", "Reconstruct CLIP (EVA)"),
                 Row("From scratch", "xgeo", "xgeo", "From scratch")),
    },
    "table6": {
        "title": "Table 6: dataset homogeneous versus batch heterogeneous pretraining",
        "columns": ABLATION_COLUMNS,
        "rows": (Row("Dataset homogenous", "homogeneous", "xgeo", "Dataset homogenous"),
                 Row("Batch Heterogeneous", "xgeo", "xgeo", "Batch Heterogeneous")),
    },
    "table7": {
        "title": "Table 7: MoE x cross-sensor reconstruction x cross-sensor percentage",
        "columns": ABLATION_COLUMNS,
        "rows": (Row("MoE no, cross no, 0%", "dense-nocross", "xgeo", "MoE no, cross no, 0%"),
                 Row("MoE yes, cross no, 0%", "moe-nocross", "xgeo", "MoE yes, cross no, 0%"),
                 Row("MoE no, cross yes, 50%", "dense-cross50", "xgeo", "MoE no, cross yes, 50%"),
                 Row("MoE yes, cross yes, 100%", "moe-cross100", "xgeo", "MoE yes, cross yes, 100%"),
                 Row("MoE yes, cross yes, 50%", "xgeo", "xgeo", "MoE yes, cross yes, 50%")),
    },
    "table10": {
        "title": "Table 10: pretraining with a single modality or without RGB",
        "columns": (BEN10, CR1_SAM),
        "rows": (Row("SAR", "s1-only", "xgeo", "SAR"), Row("Sentinel-2", "s2-only", "xgeo", "Sentinel-2"),
                 Row("RGB", "rgb-only", "xgeo", "RGB"), Row("w/o RGB", "no-rgb", "xgeo", "w/o RGB"),
                 Row("XGeoSet", "xgeo", "xgeo", "XGeoSet")),
    },
    "table13": {
        "title": "Table 13: BigEarthNet 1% with the two downstream transfer methods of Figure 6",
        "columns": (BEN1,),
        "rows": (Row("1 (separate encoders, concatenated features)", "xgeo", "xgeo", "1", variant="fusion_separate"),
                 Row("2 (channels stacked, one encoder)", "xgeo", "xgeo", "2")),
    },
    "table14": {
        "title": "Table 14: BigEarthNet 1% and 5 examples per class",
        "columns": (BEN1, BEN5PC),
        "rows": (Row("Random", "xgeo", "random", "Random"), Row("ImageNet", "xgeo", "in22k", "ImageNet"),
                 Row("XGeo", "xgeo", "xgeo", "XGeo")),
    },
}

# Appendix A.1, Tables 8 and 9: GFM's seven tasks after a Swin v1 pretrained from scratch on RGB only, one row per
# pretraining set (experiments rgb-*); "samples" adds the "# Image" column: the samples the row's pretraining stores
# hold (pretraining_samples), beside the paper's count.
OSCD = _c("OSCD F1", "oscd", 1.0, "F1")
DSIFN = _c("DSIFN F1", "dsifn", 1.0, "F1")
WHU = _c("WHU IoU", "whu", 1.0, "IoU")
APPENDIX_ROWS = (Row("GeoPile", "rgb-geopile", "xgeo", "GeoPile"),
                 Row("XGeoSet-RGB", "rgb-xgeoset", "xgeo", "XGeoSet-RGB"),
                 Row("XGeoSet-RGB + ImageNet", "rgb-imagenet", "xgeo", "XGeoSet-RGB + ImageNet"),
                 Row("XGeoSet-RGB + GeoLifeCLEF", "rgb-geolifeclef", "xgeo", "XGeoSet-RGB + GeoLifeCLEF"),
                 Row("XGeoSet-RGB + FMoW", "rgb-fmow", "xgeo", "XGeoSet-RGB + FMoW"))
SAMPLES = "# Image"
TABLES["table8"] = {"title": "Table 8: pretraining sets, change detection and classification (appendix A.1)",
                    "columns": (OSCD, DSIFN, BEN10, BEN1), "rows": APPENDIX_ROWS, "samples": True}
TABLES["table9"] = {"title": "Table 9: pretraining sets, segmentation and super-resolution (appendix A.1)",
                    "columns": (WHU, VH, *SN), "rows": APPENDIX_ROWS, "samples": True}


def pretraining_samples(params: Mapping, experiment: str) -> int | None:
    """Samples held by the stores of ``experiment``'s pretraining groups (None while a store is not built)."""
    import copy

    from .config import apply_overrides
    from .pretrain.groups import effective_groups

    exp = apply_overrides(copy.deepcopy(dict(params)), experiment_overrides(params, pretraining_of(params, experiment)),
                          source=f"experiments.{experiment}")
    total = 0
    for ds in sorted({d for g in effective_groups(exp).values() for d in g["datasets"]}):
        path = Path(params["paths"]["zarr"]) / f"{ds}.zarr"
        if not path.exists():
            return None
        from .data.store import open_store

        total += int(open_store(path)["ids"].shape[0])
    return total


# Figure 3: pretraining modality (rows) x downstream modality (columns) on 10% BEN (mAP) and 1% SEN12MS-CR (SAM)
FIGURE3 = {
    "rows": (("SAR", "s1-only"), ("Sentinel-2", "s2-only"), ("XGeo", "xgeo")),
    "columns": (("SAR", "s1"), ("Sentinel-2", "s2"), ("SAR + Sentinel-2", None)),
    "panels": (BEN10, CR1_SAM),
}


def table_spec(name: str) -> dict:
    if name not in TABLES:
        raise TableError(f"table {name!r}: unknown; known tables: {', '.join(TABLES)}")
    return TABLES[name]


def cell(row: Row, column: Column) -> Cell:
    return Cell(row.experiment, column.task, row.init, column.fraction, row.variant or column.variant)


ABLATION_TABLES = ("table5", "table6", "table7", "table10", "table13", "table14")


def table_row(name: str, row: Row, params: Mapping) -> Row:
    """``row`` as table ``name`` runs it: in the ablation tables, a row that finetunes the base experiment's
    checkpoint takes ``tables.ablation_experiment`` (the base configuration at the ablation schedule,
    ``pretrain.ablation``; paper: 100 epochs) when one is set, so it compares with the other ablation rows."""
    tables = params.get("tables") or {}
    ablation = tables.get("ablation_experiment")
    if ablation and name in ABLATION_TABLES and row.init == "xgeo" and row.experiment == tables.get("base_experiment"):
        return replace(row, experiment=ablation)
    return row


def figure3_cells() -> list[Cell]:
    return [Cell(exp, col.task, "xgeo", col.fraction, variant and f"{col.task.replace('-', '_')}_{variant}")
            for _, exp in FIGURE3["rows"] for _, variant in FIGURE3["columns"] for col in FIGURE3["panels"]]


# ------------------------------------------------------------------------------------------------ what a cell needs
def experiment_overrides(params: Mapping, experiment: str) -> Mapping:
    experiments = params.get("experiments") or {}
    if experiment not in experiments:
        raise TableError(f"params experiments: no experiment {experiment!r} (known: {sorted(experiments)})")
    return experiments[experiment] or {}


def pretraining_of(params: Mapping, experiment: str) -> str:
    """The experiment whose checkpoint ``experiment`` finetunes from.

    An experiment that overrides only ``finetune.*`` keys shares the pretraining of ``tables.base_experiment``.
    """
    overrides = experiment_overrides(params, experiment)
    if overrides and all(str(k).startswith("finetune.") for k in overrides):
        return params["tables"]["base_experiment"]
    return experiment


def variant_overrides(params: Mapping, variant: str | None) -> list[str]:
    """``--set`` arguments of a finetune variant (``tables.variants.<name>``)."""
    if not variant:
        return []
    variants = get_path(params, "tables.variants", {}) or {}
    if variant not in variants:
        raise TableError(f"params tables.variants: no variant {variant!r} (known: {sorted(variants)})")
    return [f"{k}={json.dumps(v)}" for k, v in (variants[variant] or {}).items()]


def init_weights(params: Mapping, init: str) -> Path | None:
    """The weight file of a named initialisation (``finetune.weights.<name>``); None for random and xgeo."""
    if init in ("random", "xgeo"):
        return None
    inits = get_path(params, "finetune.weights", {}) or {}
    if not inits.get(init):
        raise TableError(f"params finetune.weights: no weight file for initialisation {init!r} "
                         f"(known: random, xgeo, {', '.join(k for k, v in inits.items() if v)})")
    return Path(inits[init])


def missing_inputs(params: Mapping, c: Cell) -> str | None:
    """Why the run of cell ``c`` cannot be produced here (a weight file nobody supplied), or None when it can."""
    weights = init_weights(params, c.init)
    if weights is not None and not weights.exists():
        return f"initial weights {weights} not supplied (finetune.weights.{c.init}: put the timm state dict there)"
    teacher = experiment_overrides(params, pretraining_of(params, c.experiment)).get("pretrain.teacher")
    teacher = teacher.get("path") if isinstance(teacher, Mapping) else teacher  # {arch, path} or a bare path
    if teacher and not Path(teacher).exists():
        return (f"teacher weights {teacher} of experiment {pretraining_of(params, c.experiment)!r} not supplied "
                f"(experiments.{c.experiment}.pretrain.teacher: put the teacher's weight file there)")
    return None


def required_cells(name: str, params: Mapping) -> list[Cell]:
    """The runs table ``name`` reads whose inputs can exist here (Snakemake and DVC build exactly these)."""
    if name == "figure3":
        cells = figure3_cells()
    else:
        spec = table_spec(name)
        cells = [cell(table_row(name, r, params), col) for r in spec["rows"] for col in spec["columns"]]
    out = []
    for c in cells:
        if c not in out and missing_inputs(params, c) is None:
            out.append(c)
    return out


# ------------------------------------------------------------------------------------------------------ literature
def read_literature(path: str | Path = LITERATURE) -> dict[tuple[str, str], dict[str, dict]]:
    """``{(table, method): {column: {"value": float, "note": str, "source": str}}}`` from the long-format CSV."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: literature file not found (expected columns table,method,column,value,note,source)")
    out: dict[tuple[str, str], dict[str, dict]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        expected = ["table", "method", "column", "value", "note", "source"]
        if reader.fieldnames != expected:
            raise TableError(f"{path}: expected header {','.join(expected)}, found {reader.fieldnames}")
        for line, rec in enumerate(reader, start=2):
            try:
                value = float(rec["value"])
            except ValueError:
                raise TableError(f"{path}:{line}: value must be a number, found {rec['value']!r}") from None
            out.setdefault((rec["table"], rec["method"]), {})[rec["column"]] = {
                "value": value, "note": rec["note"], "source": rec["source"]}
    return out


# ---------------------------------------------------------------------------------------------------- run results
def read_run(params: Mapping, c: Cell) -> dict | None:
    """``{"metrics", "run"}`` of a finished run directory, or None when it has no metrics.json yet."""
    d = c.run_dir(params)
    metrics_path, run_path = d / "metrics.json", d / "run.json"
    if not metrics_path.exists():
        return None
    try:
        metrics = json.loads(metrics_path.read_text())
        run = json.loads(run_path.read_text()) if run_path.exists() else {}
    except json.JSONDecodeError as exc:
        raise TableError(f"{d}: metrics.json or run.json is not valid JSON ({exc})") from None
    return {"metrics": metrics, "run": run}


def metric_value(metrics: Mapping, metric: str, where: Path) -> float:
    if metric not in metrics:
        raise TableError(f"{where}/metrics.json: no metric {metric!r} (found: {sorted(metrics)})")
    # metrics.json holds mAP, mIoU and OA in percent, as the paper prints them (xgeo.metrics)
    return float(metrics[metric])


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{round(value, 6):g}" if abs(value) < 1e6 else str(value)


def build_rows(name: str, params: Mapping, literature: Mapping | None = None) -> tuple[list[str], list[dict]]:
    """The header and the rows (dicts) of table ``name``: run rows first, then the cited rows."""
    spec = table_spec(name)
    literature = read_literature(Path(params["paths"]["results"]) / "literature.csv") if literature is None else literature
    columns: list[Column] = list(spec["columns"])
    header = ["method", "status", "source"] + ([SAMPLES, f"{SAMPLES} [paper]"] if spec.get("samples") else [])
    for col in columns:
        header += [col.header, f"{col.header} [paper]"]
    header += ["mlflow_run_ids", "note"]

    check_runs = bool((params.get("mlflow") or {}).get("enabled"))
    rows = []
    for r in spec["rows"]:
        out = {"method": r.label, "source": "this repository"}
        paper = literature.get((name, r.paper), {}) if r.paper else {}
        if spec.get("samples"):
            n = pretraining_samples(params, r.experiment)
            out[SAMPLES] = "" if n is None else str(n)
            out[f"{SAMPLES} [paper]"] = str(int(paper[SAMPLES]["value"])) if SAMPLES in paper else ""
        run_ids, notes, found = [], [], 0
        for col in columns:
            c = cell(table_row(name, r, params), col)
            out[f"{col.header} [paper]"] = _fmt(paper[col.header]["value"]) if col.header in paper else ""
            reason = missing_inputs(params, c)
            result = None if reason else read_run(params, c)
            if result is None:
                out[col.header] = ""
                notes.append(f"{col.header}: missing, {reason or f'run {c.run_dir(params)} not run yet'}")
                continue
            out[col.header] = _fmt(metric_value(result["metrics"], col.metric, c.run_dir(params)))
            found += 1
            run_id = result["run"].get("mlflow_run_id")
            if run_id:
                run_ids.append(f"{col.task}@{c.setting}:{run_id}")
            elif check_runs:
                notes.append(f"{col.header}: run {c.run_dir(params)} has no mlflow_run_id in run.json")
        out["status"] = "run" if found == len(columns) else "partial" if found else "missing"
        out["mlflow_run_ids"] = ";".join(dict.fromkeys(run_ids))
        out["note"] = "; ".join(dict.fromkeys(notes))
        rows.append(out)
    for (table, method), values in literature.items():
        if table != name:
            continue
        out = {"method": method, "status": "cited", "mlflow_run_ids": "", "note": ""}
        sources = {v["source"] for v in values.values()}
        out["source"] = "; ".join(sorted(sources))
        for col in columns:
            v = values.get(col.header)
            out[col.header] = _fmt(v["value"]) if v else ""
            out[f"{col.header} [paper]"] = ""
        extra = [f"{k} {v['note']}" for k, v in values.items() if v["note"]]
        if spec.get("samples"):
            out[SAMPLES] = str(int(values[SAMPLES]["value"])) if SAMPLES in values else ""
            out[f"{SAMPLES} [paper]"] = ""
        unknown = sorted(set(values) - {col.header for col in columns} - ({SAMPLES} if spec.get("samples") else set()))
        if unknown:
            raise TableError(f"literature.csv: {name}/{method} has columns {unknown} that {name} does not have")
        out["note"] = "; ".join(extra)
        rows.append(out)
    return header, rows


def build_table(name: str, params: Mapping, out: Path | None = None) -> Path:
    """Write table ``name`` as CSV (default ``results/<name>.csv``) and return its path.

    Run ids are checked against the MLflow store when tracking is enabled: an id that the store does not know is an
    error, since the table would then cite a run nobody can open.
    """
    header, rows = build_rows(name, params)
    if (params.get("mlflow") or {}).get("enabled"):
        from . import tracking

        for row in rows:
            for item in filter(None, row["mlflow_run_ids"].split(";")):
                run_id = item.rsplit(":", 1)[1]
                if tracking.get_run(params, run_id) is None:
                    raise TableError(f"{name}: row {row['method']!r} cites MLflow run {run_id} ({item}) that the "
                                     f"store {params['mlflow']['tracking_uri']} does not hold")
    out = Path(out) if out is not None else Path(params["paths"]["results"]) / f"{name}.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out, buf.getvalue())
    if (params.get("mlflow") or {}).get("enabled"):
        log_table_run(name, params, header, rows, out)
    missing = [r for r in rows if r["status"] in ("missing", "partial")]
    print(f"{name}: wrote {out} ({len(rows)} rows: "
          f"{sum(r['status'] == 'run' for r in rows)} reproduced, {len(missing)} missing or partial, "
          f"{sum(r['status'] == 'cited' for r in rows)} cited)")
    for r in missing:
        print(f"  {r['method']}: {r['note']}")
    return out


def _metric_key(*parts: str) -> str:
    """An MLflow metric name (alphanumerics and _ - . space : / only) from a row label and a column header."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. :]", "_", p) for p in parts)


def log_table_run(name: str, params: Mapping, header: list[str], rows: list[dict], csv_path: Path) -> str | None:
    """One run in the MLflow experiment ``name`` (e.g. ``table3``) per build: the CSV as an artifact, each reproduced
    cell as the metric ``<row>/<column>``, the cited run ids as tags; each cited run gets ``xgeo.table.<name>``."""
    from . import tracking

    cited: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for row in rows:
        if row["status"] == "cited":
            continue
        for col in header:
            if col.endswith("[paper]") or col in ("method", "status", "source", "mlflow_run_ids", "note"):
                continue
            try:
                metrics[_metric_key(row["method"], col)] = float(row.get(col, ""))
            except (TypeError, ValueError):
                pass  # missing cell: no number
        for item in filter(None, row["mlflow_run_ids"].split(";")):
            cited[item.rsplit(":", 1)[1]] = row["method"]
    tags = {"xgeo.stage": "table", "xgeo.table": name,
            "xgeo.cited_runs": ";".join(f"{label}:{rid}" for rid, label in cited.items())}
    with tracking.start_run(params, experiment=name, run_name=name, tags=tags) as run:
        run.log_metrics(metrics)
        run.log_artifact(csv_path)
    for run_id, label in cited.items():
        tracking.set_tags(params, run_id, {f"xgeo.table.{name}": label})
    return run.run_id


def all_tables() -> Iterable[str]:
    return TABLES.keys()
