"""The paper's tables (3, 4, 5, 6, 7, 10, 13, 14) built from finetuning runs and the cited literature.

A table is rows x columns. A *run row* names a pretraining experiment (``experiments.<name>`` of params.yaml) and an
initialisation (``random``, ``xgeo`` = that experiment's checkpoint, or a weight file named in ``finetune.weights``); a
*column* names a downstream task, a training fraction, a metric of ``metrics.json`` and optionally a finetune
*variant* (``tables.variants.<name>``: dotted overrides of the finetune settings, e.g. the fusion method of Table 13).
Each cell is the mean ± std over ``tables.replicates`` finetuning runs, one per finetuning seed (``seed``,
``seed + 1``, ...; :mod:`xgeo.replicates`):

    results/runs/<experiment>/<task>/<init>/f<fraction>[-<variant>]/seed<k>/{metrics.json, predictions.npz, run.json}

With ``tables.pretrain_replicates`` n > 1 (default 1), a row finetuning a pretraining checkpoint also spans n
pretraining seeds: the experiment's own checkpoint (seed ``seed``) and ``checkpoints/<experiment>/pretrain<p>/
last.ckpt`` for p = ``seed + 1``, ..., each finetuned with every finetuning seed into ``seed<k>-pretrain<p>/``; the
cell is the mean ± std over all of them (:meth:`Cell.replicates`).

The CSV keeps, per column, the mean, ``std``, ``n`` (runs), ``n_train`` / ``n_eval`` (samples) and the paper's value;
a table with a reference row (``compare`` in its spec: the pairs the paper draws conclusions from) adds the difference
to the reference, its 95 % interval (Welch's t) and a verdict. A cell is built only from runs whose settings digest
(:mod:`xgeo.provenance`) matches the current params (else ``stale (...)`` naming the setting), and only when its
subsets hold ``tables.min_train_samples`` / ``tables.min_eval_samples`` samples (else ``insufficient (n=...)``).

*Cited rows* come from ``results/literature.csv`` (long format: table, method, column, value, note, source), copied
from the paper's text; they are marked ``cited`` and never mixed with reproduced numbers. Beside every reproduced value
the table has a ``<column> [paper]`` cell with the paper's value for that row (the literature row named by ``paper``).

Nothing is invented: a cell whose run is absent is empty and the row's ``status``/``note`` say which run is missing
and why (weights not supplied, stage not run yet). BigEarthNet mAP is the *micro* average over the whole evaluation
set (``mAP_micro`` in metrics.json, both averages are there); Vaihingen mIoU is over 5 classes without clutter, the
6-class value beside it; both are said in the column headers.

Pretraining is shared: an experiment whose overrides touch only ``finetune.*`` keys reuses the checkpoint of
``tables.base_experiment`` (one pretraining, many finetunes); see :func:`pretraining_of`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

from .config import experiment_overrides, get_path, pretraining_of
from .errors import XGeoError
from .io import write_text
from .replicates import METHOD, Summary, compare, summarize

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
    # (column header, experiment, init): a column whose runs are another row's (Table 14 copies Table 5's 1 %)
    sources: tuple = ()


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
        """The cell's directory; each replicate is its subdirectory ``seed<k>`` (:meth:`replicate_dirs`)."""
        return Path(params["paths"]["runs"]) / self.experiment / self.task / self.init / self.setting

    def replicates(self, params: Mapping) -> list["Replicate"]:
        """The cell's runs: every finetuning seed (``tables.replicates``) and, for a row finetuning a pretraining
        checkpoint (init ``xgeo``), every pretraining seed (``tables.pretrain_replicates``): their product."""
        pre = pretrain_seeds(params) if self.init == "xgeo" else [None]
        return [Replicate(k, p, self.run_dir(params) / replicate_name(k, p)) for p in pre for k in seeds(params)]

    def replicate_dirs(self, params: Mapping) -> list[tuple[int, Path]]:
        """``[(finetuning seed, run directory)]`` of the cell's runs (:meth:`replicates`)."""
        return [(r.seed, r.path) for r in self.replicates(params)]


@dataclass(frozen=True)
class Replicate:
    seed: int                   # finetuning seed
    pretrain_seed: int | None   # pretraining seed of the checkpoint; None: the experiment's own (params seed)
    path: Path


def seeds(params: Mapping) -> list[int]:
    """Finetuning seeds of the replicates of every cell: ``seed``, ``seed + 1``, ... (``tables.replicates`` of them)."""
    return _seed_list(params, "tables.replicates")


def pretrain_seeds(params: Mapping) -> list[int | None]:
    """Pretraining seeds of a checkpoint row's replicates: None (the experiment's own pretraining, seed ``seed``,
    ``checkpoints/<experiment>/last.ckpt``), then ``seed + 1``, ... (``tables.pretrain_replicates`` in all), each
    pretrained again into ``checkpoints/<experiment>/pretrain<p>/last.ckpt``."""
    base = int(params.get("seed", 0))
    return [None if p == base else p for p in _seed_list(params, "tables.pretrain_replicates")]


def _seed_list(params: Mapping, key: str) -> list[int]:
    n = get_path(params, key, 1)
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TableError(f"params {key}: expected an integer >= 1, found {n!r}")
    base = int(params.get("seed", 0))
    return [base + i for i in range(n)]


def replicate_name(seed: int, pretrain_seed: int | None) -> str:
    """A replicate's directory: ``seed<k>``, or ``seed<k>-pretrain<p>`` for a checkpoint pretrained with seed p."""
    return f"seed{seed}" + ("" if pretrain_seed is None else f"-pretrain{pretrain_seed}")


def parse_replicate(name: str) -> tuple[int, int | None]:
    """``seed<k>[-pretrain<p>]`` (or the bare ``<k>[-pretrain<p>]`` of a Snakemake wildcard) -> (k, p or None)."""
    m = re.fullmatch(r"(?:seed)?([0-9]+)(?:-pretrain([0-9]+))?", name)
    if not m:
        raise TableError(f"replicate {name!r}: expected seed<k> or seed<k>-pretrain<p>")
    return int(m.group(1)), None if m.group(2) is None else int(m.group(2))


def pretrain_checkpoint(params: Mapping, experiment: str, pretrain_seed: int | None = None) -> Path:
    """The checkpoint a row of ``experiment`` finetunes from (its pretraining's, :func:`pretraining_of`), of
    pretraining seed ``pretrain_seed`` (None: the experiment's own run)."""
    base = Path(params["paths"]["checkpoints"]) / pretraining_of(params, experiment)
    return base / "last.ckpt" if pretrain_seed is None else base / f"pretrain{pretrain_seed}" / "last.ckpt"


def _c(header, task, fraction, metric, variant=None):
    return Column(header, task, fraction, metric, variant)


BEN1 = _c("BEN 1% micro mAP (whole eval set)", "bigearthnet", 0.01, "mAP_micro")
BEN10 = _c("BEN 10% micro mAP (whole eval set)", "bigearthnet", 0.1, "mAP_micro")
BEN100 = _c("BEN 100% micro mAP (whole eval set)", "bigearthnet", 1.0, "mAP_micro")
BEN5PC = _c("BEN 5 per class micro mAP (whole eval set)", "bigearthnet", 1.0, "mAP_micro", "per_class5")
CR = [_c("SEN12MS-CR MAE", "sen12ms-cr", 1.0, "MAE"), _c("SEN12MS-CR SAM", "sen12ms-cr", 1.0, "SAM"),
      _c("SEN12MS-CR SSIM", "sen12ms-cr", 1.0, "SSIM")]
CR1_SAM = _c("SEN12MS-CR 1% SAM", "sen12ms-cr", 0.01, "SAM")
SN = [_c("SpaceNet PSNR", "spacenet2", 1.0, "PSNR"), _c("SpaceNet SSIM", "spacenet2", 1.0, "SSIM")]
VH = _c("Vaihingen mIoU (5 classes without clutter)", "vaihingen", 1.0, "mIoU")   # ISPRS: clutter left out of the mean
VH6 = _c("Vaihingen mIoU (6 classes)", "vaihingen", 1.0, "mIoU_all")           # the same runs, clutter counted

ABLATION_COLUMNS = (BEN1, BEN10, *CR, *SN, VH, VH6)

TABLES: dict[str, dict] = {
    "table3": {
        "title": "Table 3: all downstream tasks, XGeo against other pretrained models",
        "columns": (BEN10, BEN100, *CR, *SN, VH, VH6),
        "rows": (Row("XGeo", "xgeo", "xgeo", "XGeo"), Row("Random", "xgeo", "random", "Random"),
                 Row("IN-22k", "xgeo", "in22k", "IN-22k")),
        "compare": ("Random", ("XGeo",)),
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
        "compare": ("From scratch", ("Distilled from ImageNet22K", "Distilled from CLIP", "Reconstruct CLIP (EVA)")),
    },
    "table6": {
        "title": "Table 6: dataset homogeneous versus batch heterogeneous pretraining",
        "columns": ABLATION_COLUMNS,
        "rows": (Row("Dataset homogenous", "homogeneous", "xgeo", "Dataset homogenous"),
                 Row("Batch Heterogeneous", "xgeo", "xgeo", "Batch Heterogeneous")),
        "compare": ("Dataset homogenous", ("Batch Heterogeneous",)),
    },
    "table7": {
        "title": "Table 7: MoE x cross-sensor reconstruction x cross-sensor percentage",
        "columns": ABLATION_COLUMNS,
        "rows": (Row("MoE no, cross no, 0%", "dense-nocross", "xgeo", "MoE no, cross no, 0%"),
                 Row("MoE yes, cross no, 0%", "moe-nocross", "xgeo", "MoE yes, cross no, 0%"),
                 Row("MoE no, cross yes, 50%", "dense-cross50", "xgeo", "MoE no, cross yes, 50%"),
                 Row("MoE yes, cross yes, 100%", "moe-cross100", "xgeo", "MoE yes, cross yes, 100%"),
                 Row("MoE yes, cross yes, 50%", "xgeo", "xgeo", "MoE yes, cross yes, 50%")),
        "compare": ("MoE yes, cross yes, 50%", ("MoE no, cross no, 0%", "MoE yes, cross no, 0%",
                                                "MoE no, cross yes, 50%", "MoE yes, cross yes, 100%")),
    },
    "table10": {
        "title": "Table 10: pretraining with a single modality or without RGB",
        "columns": (BEN10, CR1_SAM),
        "rows": (Row("SAR", "s1-only", "xgeo", "SAR"), Row("Sentinel-2", "s2-only", "xgeo", "Sentinel-2"),
                 Row("RGB", "rgb-only", "xgeo", "RGB"), Row("w/o RGB", "no-rgb", "xgeo", "w/o RGB"),
                 Row("XGeoSet", "xgeo", "xgeo", "XGeoSet")),
        "compare": ("XGeoSet", ("SAR", "Sentinel-2", "RGB", "w/o RGB")),
    },
    "table13": {
        "title": "Table 13: BigEarthNet 1% with the two downstream transfer methods of Figure 6",
        "columns": (BEN1,),
        "rows": (Row("1 (separate encoders, concatenated features)", "xgeo", "xgeo", "1", variant="fusion_separate"),
                 Row("2 (channels stacked, one encoder)", "xgeo", "xgeo", "2")),
        "compare": ("2 (channels stacked, one encoder)", ("1 (separate encoders, concatenated features)",)),
    },
    "table14": {
        "title": "Table 14: BigEarthNet 1% and 5 examples per class",
        "columns": (BEN1, BEN5PC),
        # the paper's 1 % column duplicates Tables 5-7 ("ImageNet" 79.4 = Table 5's "Distilled from ImageNet22K",
        # "XGeo" 80.9 = its "From scratch"): the 1 % cells read those runs
        "rows": (Row("Random", "xgeo", "random", "Random"),
                 Row("ImageNet", "xgeo", "in22k", "ImageNet", sources=((BEN1.header, "distill-in22k", "xgeo"),)),
                 Row("XGeo", "xgeo", "xgeo", "XGeo")),
        "compare": ("Random", ("XGeo",)),
        "note": ("1% column: the runs of Table 5 (the paper duplicates it from Tables 5-7): ImageNet = "
                 "'Distilled from ImageNet22K', XGeo = 'From scratch'"),
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
    experiment, init = next(((e, i) for h, e, i in row.sources if h == column.header), (row.experiment, row.init))
    return Cell(experiment, column.task, init, column.fraction, row.variant or column.variant)


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
def read_run(params: Mapping, c: Cell, seed: int | None = None) -> dict | None:
    """``{"metrics", "run"}`` of one finished replicate (``seed``; default the first), or None when it has no
    metrics.json yet."""
    seed = seeds(params)[0] if seed is None else seed
    return _read_dir(c.run_dir(params) / f"seed{seed}")


def _read_dir(d: Path) -> dict | None:
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
    """A metric of a run's metrics.json; a missing, null or non-finite value stops the table naming the run."""
    if metric not in metrics:
        raise TableError(f"{where}/metrics.json: no metric {metric!r} (found: {sorted(metrics)})")
    value = metrics[metric]
    # metrics.json holds mAP, mIoU and OA in percent, as the paper prints them (xgeo.metrics)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TableError(f"{where}/metrics.json: metric {metric!r} is {value!r}, not a finite number; the run's "
                         f"evaluation failed (see its log and metrics.json notes), rerun it or remove it")
    return float(value)


def cell_params(params: Mapping, c: Cell, seed: int) -> dict:
    """The params a replicate of ``c`` runs with: the experiment's overrides, the variant's, the seed."""
    from .config import apply_overrides

    p = apply_overrides(dict(params), experiment_overrides(params, c.experiment), source=f"experiments.{c.experiment}")
    p["experiment"] = c.experiment
    p = apply_overrides(p, variant_overrides(params, c.variant), source=f"tables.variants.{c.variant}")
    p["seed"] = int(seed)
    return p


def init_file(params: Mapping, c: Cell, pretrain_seed: int | None = None) -> Path | None:
    """The weight file a run of ``c`` starts from: the pretraining checkpoint (of ``pretrain_seed``), a named weight
    file, or None."""
    if c.init == "random":
        return None
    if c.init == "xgeo":
        return pretrain_checkpoint(params, c.experiment, pretrain_seed)
    return init_weights(params, c.init)


def stale_reasons(params: Mapping, c: Cell, seed: int, run: Mapping, pretrain_seed: int | None = None) -> list[str]:
    """Why a replicate's run.json does not match the current params (empty when its settings digest matches)."""
    from .provenance import differences, digest, finetune_settings

    recorded = run.get("settings_digest")
    if not recorded:
        return ["run.json records no settings digest (a run made before provenance was recorded, or by hand)"]
    expected = finetune_settings(cell_params(params, c, seed), c.task, init_file(params, c, pretrain_seed),
                                 c.fraction, None)
    if recorded == digest(expected):
        return []
    return differences(run.get("settings") or {}, expected) or [f"settings digest {recorded} != {digest(expected)}"]


@dataclass
class CellResult:
    """One table cell: ``text`` is what the CSV shows (the mean, or why there is no number)."""

    text: str
    summary: Summary | None = None
    n_train: int | None = None
    n_eval: int | None = None
    run_ids: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def _count(run: Mapping, metrics: Mapping, key: str) -> int | None:
    value = run.get(key, metrics.get(key))
    if value is None and key == "train_samples":
        value = (run.get("subset") or {}).get("train_samples")
    return None if value is None else int(value)


def cell_result(params: Mapping, c: Cell, metric: str, header: str) -> CellResult:
    """Read the replicates of ``c`` and make its cell: mean ± std over n, or missing / stale / insufficient."""
    reason = missing_inputs(params, c)
    if reason:
        return CellResult("", notes=[f"{header}: missing, {reason}"])
    values, run_ids, stale, absent, n_train, n_eval, notes = [], [], [], [], [], [], []
    for rep in c.replicates(params):
        seed, d = rep.seed, rep.path
        result = _read_dir(d)
        if result is None:
            absent.append(d.name)
            continue
        value = metric_value(result["metrics"], metric, d)
        why = stale_reasons(params, c, seed, result["run"], rep.pretrain_seed)
        if why:
            stale.append(f"{d}: " + "; ".join(why))
            continue
        values.append(value)
        if result["metrics"].get("metrics_note"):
            notes.append(f"{header} {d.name}: {result['metrics']['metrics_note']}")
        n_train.append(_count(result["run"], result["metrics"], "train_samples"))
        n_eval.append(_count(result["run"], result["metrics"], "eval_samples"))
        run_id = result["run"].get("mlflow_run_id")
        if run_id:
            run_ids.append(f"{c.task}@{c.setting}/{d.name}:{run_id}")
        elif (params.get("mlflow") or {}).get("enabled"):
            notes.append(f"{header}: run {d} has no mlflow_run_id in run.json")
    if stale:
        return CellResult(f"stale ({stale[0].split(': ', 1)[1]})",
                          notes=[f"{header}: stale, not built from runs whose settings differ from the params: "
                                 + " | ".join(stale)])
    if not values:
        return CellResult("", notes=[f"{header}: missing, runs {c.run_dir(params)}/{{{','.join(absent)}}}"
                                     f" not run yet"])
    res = CellResult("", n_train=min(n for n in n_train if n is not None) if any(n is not None for n in n_train) else None,
                     n_eval=min(n for n in n_eval if n is not None) if any(n is not None for n in n_eval) else None,
                     run_ids=run_ids, notes=notes)
    low = insufficient(params, res.n_train, res.n_eval)
    if low:
        res.text = f"insufficient ({low})"
        res.notes.append(f"{header}: insufficient, {low}; no number is reported for so few samples")
        return res
    res.summary = summarize(values)
    res.text = _fmt(res.summary.mean)
    if absent:
        res.notes.append(f"{header}: {len(values)} of {len(values) + len(absent)} replicates "
                         f"({', '.join(absent)} not run yet)")
    return res


def insufficient(params: Mapping, n_train: int | None, n_eval: int | None) -> str | None:
    """Why a cell with these sample counts gets no number (``tables.min_train_samples`` / ``min_eval_samples``)."""
    min_train = int(get_path(params, "tables.min_train_samples", 1) or 1)
    min_eval = int(get_path(params, "tables.min_eval_samples", 1) or 1)
    reasons = []
    if n_train is not None and n_train < min_train:
        reasons.append(f"n={n_train} training samples < tables.min_train_samples {min_train}")
    if n_eval is not None and n_eval < min_eval:
        reasons.append(f"n={n_eval} evaluation samples < tables.min_eval_samples {min_eval}")
    return "; ".join(reasons) or None


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{round(value, 6):g}" if abs(value) < 1e6 else str(value)


def column_headers(col: Column, compared: bool) -> list[str]:
    """The CSV columns of one table column: mean, std, n (runs), n_train, n_eval, the paper's value, and for a
    table with a reference row the difference to it with its Welch 95 % interval and the verdict."""
    out = [col.header, f"{col.header} std", f"{col.header} n", f"{col.header} n_train", f"{col.header} n_eval",
           f"{col.header} [paper]"]
    if compared:
        out += [f"{col.header} diff", f"{col.header} diff 95% low (Welch)", f"{col.header} diff 95% high (Welch)",
                f"{col.header} verdict"]
    return out


def literature_protocol_columns(columns, params: Mapping) -> list[Column]:
    """With ``finetune.bigearthnet.protocol: literature``, each BigEarthNet column gets a sibling with the cited
    papers' number (metric ``mAP_micro_per_batch``): the per-batch micro AP average, the best of the per-epoch
    evaluations, as GFM and SeCo keep it, so like is compared with like; the whole-set column stays the final
    model's."""
    out = []
    for col in columns:
        out.append(col)
        if col.task == "bigearthnet" and get_path(params, "finetune.bigearthnet.protocol", None) == "literature":
            out.append(Column(col.header.replace("micro mAP (whole eval set)", "per-batch micro mAP, best epoch (literature)"),
                              col.task, col.fraction, "mAP_micro_per_batch", col.variant))
    return out


def build_rows(name: str, params: Mapping, literature: Mapping | None = None) -> tuple[list[str], list[dict]]:
    """The header and the rows (dicts) of table ``name``: run rows first, then the cited rows."""
    spec = table_spec(name)
    literature = read_literature(Path(params["paths"]["results"]) / "literature.csv") if literature is None else literature
    columns: list[Column] = literature_protocol_columns(spec["columns"], params)
    reference, compared_rows = spec.get("compare") or (None, ())
    header = ["method", "status", "source"] + ([SAMPLES, f"{SAMPLES} [paper]"] if spec.get("samples") else [])
    for col in columns:
        header += column_headers(col, reference is not None)
    if reference is not None:
        header.append("compared_with")
    header += ["mlflow_run_ids", "note"]

    results: dict[str, dict[str, CellResult]] = {}
    rows = []
    for r in spec["rows"]:
        out = {"method": r.label, "source": "this repository"}
        paper = literature.get((name, r.paper), {}) if r.paper else {}
        if spec.get("samples"):
            n = pretraining_samples(params, r.experiment)
            out[SAMPLES] = "" if n is None else str(n)
            out[f"{SAMPLES} [paper]"] = str(int(paper[SAMPLES]["value"])) if SAMPLES in paper else ""
        run_ids, notes, found = [], [], 0
        results[r.label] = {}
        for col in columns:
            res = cell_result(params, cell(table_row(name, r, params), col), col.metric, col.header)
            results[r.label][col.header] = res
            s = res.summary
            out.update({col.header: res.text, f"{col.header} std": _fmt(s.std) if s else "",
                        f"{col.header} n": str(s.n) if s else "",
                        f"{col.header} n_train": "" if res.n_train is None else str(res.n_train),
                        f"{col.header} n_eval": "" if res.n_eval is None else str(res.n_eval),
                        f"{col.header} [paper]": _fmt(paper[col.header]["value"]) if col.header in paper else ""})
            found += s is not None
            run_ids += res.run_ids
            notes += res.notes
        if spec.get("note"):
            notes.append(spec["note"])
        out["status"] = "run" if found == len(columns) else "partial" if found else "missing"
        out["mlflow_run_ids"] = ";".join(dict.fromkeys(run_ids))
        out["note"] = "; ".join(dict.fromkeys(notes))
        rows.append(out)
    if reference is not None:
        if reference not in results or any(label not in results for label in compared_rows):
            raise TableError(f"{name}: compare names rows {reference!r}, {compared_rows} not all in the table")
        for out in rows:
            label = out["method"]
            out["compared_with"] = reference if label in compared_rows else ""
            for col in columns:
                a, b = results[label][col.header].summary, results[reference][col.header].summary
                if label not in compared_rows or a is None or b is None:
                    for k in ("diff", "diff 95% low (Welch)", "diff 95% high (Welch)", "verdict"):
                        out[f"{col.header} {k}"] = ""
                    continue
                cmp = compare(a, b, col.metric)
                out[f"{col.header} diff"] = _fmt(cmp.diff)
                out[f"{col.header} diff 95% low (Welch)"] = _fmt(cmp.low)
                out[f"{col.header} diff 95% high (Welch)"] = _fmt(cmp.high)
                out[f"{col.header} verdict"] = cmp.verdict
    for (table, method), values in literature.items():
        if table != name:
            continue
        out = {k: "" for k in header}
        out.update({"method": method, "status": "cited"})
        sources = {v["source"] for v in values.values()}
        out["source"] = "; ".join(sorted(sources))
        for col in columns:
            v = values.get(col.header)
            out[col.header] = _fmt(v["value"]) if v else ""
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
    found = {}
    if (params.get("mlflow") or {}).get("enabled"):
        from . import tracking

        for row in rows:
            for item in filter(None, row["mlflow_run_ids"].split(";")):
                run_id = item.rsplit(":", 1)[1]
                found[run_id] = tracking.get_run(params, run_id)
                if found[run_id] is None:
                    raise TableError(f"{name}: row {row['method']!r} cites MLflow run {run_id} ({item}) that the "
                                     f"store {params['mlflow']['tracking_uri']} does not hold")
    out = Path(out) if out is not None else Path(params["paths"]["results"]) / f"{name}.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out, buf.getvalue())
    if (params.get("mlflow") or {}).get("enabled"):
        log_table_run(name, params, header, rows, out, found)
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


def log_table_run(name: str, params: Mapping, header: list[str], rows: list[dict], csv_path: Path,
                  runs: Mapping | None = None) -> str | None:
    """One run in the MLflow experiment ``name`` (e.g. ``table3``) per build: the CSV as an artifact, each reproduced
    cell as the metric ``<row>/<column>``, the cited run ids as tags; each cited run gets ``xgeo.table.<name>``."""
    from . import tracking

    cited: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for row in rows:
        if row["status"] == "cited":
            continue
        for col in header:
            if col.endswith(("[paper]", "verdict")) or col in ("method", "status", "source", "compared_with",
                                                                "mlflow_run_ids", "note"):
                continue
            try:
                metrics[_metric_key(row["method"], col)] = float(row.get(col, ""))
            except (TypeError, ValueError):
                pass  # missing cell: no number
        for item in filter(None, row["mlflow_run_ids"].split(";")):
            cited[item.rsplit(":", 1)[1]] = row["method"]
    from .provenance import digest

    tags = {"xgeo.stage": "table", "xgeo.table": name, "xgeo.params_digest": digest(params),
            "xgeo.cited_runs": ";".join(f"{label}:{rid}" for rid, label in cited.items()),
            "xgeo.interval": METHOD}
    links = []
    for run_id, label in cited.items():
        r = (runs or {}).get(run_id) or tracking.get_run(params, run_id)
        where = f"#/experiments/{r.info.experiment_id}/runs/{run_id}" if r is not None else run_id
        links.append(f"- {label}: [{r.info.run_name if r is not None else run_id}]({where})")
    # the run's description in the UI: a link to every cited finetuning run
    tags["mlflow.note.content"] = f"Table {name}: {len(cited)} cited runs (params digest {tags['xgeo.params_digest']})" \
                                  + ("\n\n" + "\n".join(links) if links else "")
    with tracking.start_run(params, experiment=name, run_name=name, tags=tags) as run:
        run.log_metrics(metrics)
        run.log_artifact(csv_path)
    for run_id, label in cited.items():
        tracking.set_tags(params, run_id, {f"xgeo.table.{name}": label})
    return run.run_id


def all_tables() -> Iterable[str]:
    return TABLES.keys()
