"""Table builder: reproduced values equal the runs' metrics.json, paper values beside them, cited rows from
literature.csv, missing rows say why, run ids checked against MLflow."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from xgeo import provenance, replicates, tables, tracking
from xgeo.io import write_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params(load, tmp_path, root):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(root / "results" / "literature.csv", results / "literature.csv")
    ckpt = tmp_path / "checkpoints" / "xgeo" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"pretrained weights")
    return load(f"paths.runs={tmp_path}/results/runs", f"paths.results={results}",
                f"paths.checkpoints={tmp_path}/checkpoints", f"finetune.weights.in22k={tmp_path}/weights/in22k.pth")


def fake_run(params, cell, metrics, log=True, seed=None, n_train=500, n_eval=400, steps=None, pretrain_seed=None,
             **settings):
    """A finished replicate (``seed``, default the first; of pretraining seed ``pretrain_seed``) whose run.json
    records the settings the finetune stage records (xgeo.provenance), logged to MLflow like the finetune stage does;
    ``settings`` overrides recorded keys."""
    seed = tables.seeds(params)[0] if seed is None else seed
    d = cell.run_dir(params) / tables.replicate_name(seed, pretrain_seed)
    run_id = None
    if log:
        with tracking.start_run(params, experiment="finetune", tags={"xgeo.task": cell.task}) as run:
            run.log_metrics(metrics)
        run_id = run.run_id
    shaped = provenance.finetune_settings(tables.cell_params(params, cell, seed), cell.task,
                                          tables.init_file(params, cell, pretrain_seed), cell.fraction, steps)
    shaped.update(settings)
    write_json(d / "metrics.json", dict(metrics, eval_samples=n_eval))
    write_json(d / "run.json", {"mlflow_run_id": run_id, "task": cell.task, "init": cell.init, "seed": seed,
                                "fraction": cell.fraction, "experiment": cell.experiment, "train_samples": n_train,
                                "eval_samples": n_eval, "settings": shaped,
                                "settings_digest": provenance.digest(shaped)})
    return run_id


TASK_METRICS = {
    "bigearthnet": lambda x: {"mAP_micro": 50 + 100 * x, "mAP_macro": 40 + 100 * x},  # percent, as xgeo.metrics
    "sen12ms-cr": lambda x: {"MAE": 0.1 - x / 10, "SAM": 20.0 - x, "SSIM": 0.3 + x, "PSNR": 15.0},
    "spacenet2": lambda x: {"PSNR": 18.0 + x, "SSIM": 0.4 + x},
    "vaihingen": lambda x: {"mIoU": 30 + 100 * x, "mIoU_all": 28 + 100 * x, "OA": 60.0},
}


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_table3_values_paper_columns_cited_and_missing(params, tmp_path):
    spec = tables.table_spec("table3")
    assert tables.seeds(params) == [0, 1, 2]  # tables.replicates: 3 finetuning seeds per cell by default
    params["tables"]["replicates"] = 2  # two are enough here (each logged run costs MLflow time)
    seeds = tables.seeds(params)
    ids, values = {}, {}
    for k, row in enumerate(spec["rows"][:2]):  # XGeo and Random; IN-22k has no weights here
        for col in spec["columns"]:
            c = tables.cell(row, col)
            if c.task == "vaihingen" and row.init == "random":
                continue  # one run not produced yet
            for seed in seeds:
                if (c, seed) not in ids:
                    # XGeo 0.02 above Random on every metric, replicates 0.001 apart
                    ids[c, seed] = fake_run(params, c, TASK_METRICS[c.task](0.02 * (1 - k) + c.fraction / 100
                                                                            + 0.001 * seed), seed=seed)
    out = tables.build_table("table3", params)
    assert out == tmp_path / "results" / "table3.csv"
    rows = {r["method"] + "|" + r["status"]: r for r in read_csv(out)}

    xgeo = rows["XGeo|run"]
    c = tables.cell(spec["rows"][0], tables.BEN10)
    got = [json.loads((d / "metrics.json").read_text())["mAP_micro"] for _, d in c.replicate_dirs(params)]
    assert float(xgeo["BEN 10% micro mAP (whole eval set)"]) == pytest.approx(np.mean(got), abs=1e-6)
    assert float(xgeo["BEN 10% micro mAP (whole eval set) std"]) == pytest.approx(np.std(got, ddof=1), abs=1e-6)
    assert xgeo["BEN 10% micro mAP (whole eval set) n"] == "2" and xgeo["BEN 10% micro mAP (whole eval set) n_train"] == "500"
    assert xgeo["BEN 10% micro mAP (whole eval set) n_eval"] == "400"
    assert xgeo["BEN 10% micro mAP (whole eval set) [paper]"] == "87.5"
    assert float(xgeo["SEN12MS-CR SAM"]) == pytest.approx(20.0 - 0.0005 - 0.03, abs=1e-6)
    assert xgeo["SEN12MS-CR SAM [paper]"] == "4.87"
    assert xgeo["SpaceNet PSNR [paper]"] == "22.85"
    assert f"bigearthnet@f0.1/seed1:{ids[c, 1]}" in xgeo["mlflow_run_ids"]
    assert len(xgeo["mlflow_run_ids"].split(";")) == 5 * 2  # one run per (task, fraction, seed)
    # XGeo against Random: the difference and its Welch interval; SAM is lower-better, so a lower SAM is "better"
    assert xgeo["compared_with"] == "Random"
    assert float(xgeo["BEN 10% micro mAP (whole eval set) diff"]) == pytest.approx(2.0, abs=1e-6)
    assert float(xgeo["BEN 10% micro mAP (whole eval set) diff 95% low (Welch)"]) > 1.5
    assert xgeo["BEN 10% micro mAP (whole eval set) verdict"] == "better" and xgeo["SEN12MS-CR SAM verdict"] == "better"
    assert xgeo["SEN12MS-CR MAE verdict"] == "better" and xgeo["SpaceNet SSIM verdict"] == "better"
    assert xgeo["SpaceNet PSNR verdict"] == "better"
    assert xgeo["Vaihingen mIoU (5 classes without clutter) verdict"] == ""  # Random has no Vaihingen run

    random = rows["Random|partial"]
    assert random["Vaihingen mIoU (5 classes without clutter)"] == "" and random["compared_with"] == ""
    assert "Vaihingen mIoU (5 classes without clutter): missing, run" in random["note"] and "not run yet" in random["note"]
    assert random["Vaihingen mIoU (5 classes without clutter) [paper]"] == "67"

    in22k = rows["IN-22k|missing"]
    assert all(in22k[col.header] == "" for col in spec["columns"])
    assert "in22k.pth not supplied" in in22k["note"]

    # the table's own MLflow experiment: one run per build with the CSV and the cells; cited runs tagged with their row
    (table_run,) = tracking.search_runs(params, "table3")
    assert table_run.data.metrics[tables._metric_key("XGeo", "BEN 10% micro mAP (whole eval set)")] == pytest.approx(float(xgeo["BEN 10% micro mAP (whole eval set)"]))
    assert not any(k.startswith("SeCo/") for k in table_run.data.metrics)  # cited rows are not metrics of a run
    assert ids[c, 0] in table_run.data.tags["xgeo.cited_runs"]
    assert table_run.data.tags["xgeo.params_digest"] == provenance.digest(params)
    assert f"/runs/{ids[c, 1]})" in table_run.data.tags["mlflow.note.content"]  # a link to each cited run
    assert tracking.get_run(params, ids[c, 0]).data.tags["xgeo.table.table3"] == "XGeo"

    seco = rows["SeCo|cited"]
    assert seco["BEN 10% micro mAP (whole eval set)"] == "82.6" and seco["Vaihingen mIoU (5 classes without clutter)"] == "68.9" and seco["SEN12MS-CR MAE"] == ""
    assert "Mañas et al., 2021" in seco["source"]
    assert rows["XGeo|cited"]["SEN12MS-CR MAE"] == "0.026"
    assert {r["method"] for r in read_csv(out) if r["status"] == "cited"} == {
        "SeCo", "SatMAE", "MoCoV2", "DINO-MC", "GFM", "Random", "IN-22k", "XGeo"}


def test_replicates_aggregate_exactly_and_the_verdict_reads_the_interval():
    s = replicates.summarize([1.0, 2.0, 4.0])
    assert (s.mean, s.n) == (7 / 3, 3) and s.std == pytest.approx(np.std([1, 2, 4], ddof=1), rel=1e-12)
    assert replicates.summarize([5.0]).std is None
    a, b = replicates.summarize([80.0, 80.5, 81.0]), replicates.summarize([70.0, 70.4, 71.0])
    cmp = replicates.compare(a, b, "mAP_micro")
    # Welch by hand: se^2 = s_a^2/3 + s_b^2/3, df from Welch-Satterthwaite, t quantile from scipy
    from scipy import stats

    va, vb = a.std ** 2 / 3, b.std ** 2 / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert (cmp.low, cmp.high) == pytest.approx((a.mean - b.mean - half, a.mean - b.mean + half), rel=1e-12)
    assert cmp.verdict == "better" and replicates.compare(b, a, "mAP_micro").verdict == "worse"
    assert replicates.compare(a, b, "SAM").verdict == "worse"  # lower is better for SAM and MAE
    same = replicates.compare(replicates.summarize([1.0, 2.0, 3.0]), replicates.summarize([1.1, 2.1, 2.9]), "SSIM")
    assert same.verdict == "within noise" and same.low < 0 < same.high
    assert replicates.compare(replicates.summarize([1.0]), b, "SSIM").verdict == "n < 2 (no interval)"
    # bit-identical replicates: zero spread, any difference is one
    assert replicates.compare(replicates.summarize([2.0, 2.0]), replicates.summarize([1.0, 1.0]), "MAE").verdict == "worse"


def test_stale_runs_are_refused_naming_the_setting(params, tmp_path):
    col = tables.CR[1]
    c = tables.cell(tables.TABLES["table4"]["rows"][0], col)
    for seed in tables.seeds(params):
        fake_run(params, c, TASK_METRICS["sen12ms-cr"](0.0), log=False, seed=seed)
    res = tables.cell_result(params, c, col.metric, col.header)
    assert res.summary is not None and res.summary.n == 3 and res.text == "20"
    fake_run(params, c, TASK_METRICS["sen12ms-cr"](0.0), log=False, seed=1, steps=0)  # an untrained --steps 0 run
    res = tables.cell_result(params, c, col.metric, col.header)
    assert res.summary is None and res.text.startswith("stale (steps_override: run 0, params null")
    assert "seed1" in res.notes[0]
    fake_run(params, c, TASK_METRICS["sen12ms-cr"](0.0), log=False, seed=1, profile="paper")  # a run of another profile
    assert "profile: run paper, params demo" in tables.cell_result(params, c, col.metric, col.header).text
    fake_run(params, c, TASK_METRICS["sen12ms-cr"](0.0), log=False, seed=1)
    assert tables.cell_result(params, c, col.metric, col.header).summary is not None
    # the checkpoint was pretrained again after the runs: every replicate is stale, the digest names it
    (tmp_path / "checkpoints" / "xgeo" / "last.ckpt").write_bytes(b"other weights")
    assert tables.cell_result(params, c, col.metric, col.header).text.startswith("stale (weights_sha256: run ")
    # a run.json without a digest (before provenance existed) is stale too
    write_json(c.run_dir(params) / "seed0" / "run.json", {"mlflow_run_id": None})
    assert "no settings digest" in tables.cell_result(params, c, col.metric, col.header).notes[0]


def test_null_or_non_finite_metric_stops_the_table_naming_the_run(params):
    c = tables.cell(tables.TABLES["table4"]["rows"][0], tables.CR[0])
    fake_run(params, c, dict(TASK_METRICS["sen12ms-cr"](0.0), MAE=None), log=False)
    with pytest.raises(tables.TableError, match=r"seed0/metrics.json: metric 'MAE' is None, not a finite number"):
        tables.build_rows("table4", dict(params, mlflow={**params["mlflow"], "enabled": False}))


def test_a_subset_below_the_minimum_is_insufficient_never_a_number(params):
    spec = tables.TABLES["table13"]
    for row in spec["rows"]:
        c = tables.cell(row, tables.BEN1)
        for seed in tables.seeds(params):
            fake_run(params, c, TASK_METRICS["bigearthnet"](0.1 * seed), log=False, seed=seed,
                     n_train=1 if row.variant else 20, n_eval=40 if row.variant else 200)
    _, rows = tables.build_rows("table13", dict(params, mlflow={**params["mlflow"], "enabled": False}))
    low, ok = rows[0], rows[1]
    h = "BEN 1% micro mAP (whole eval set)"
    assert low[h] == ("insufficient (n=1 training samples < tables.min_train_samples 20; "
                      "n=40 evaluation samples < tables.min_eval_samples 200)")
    assert low[f"{h} n_train"] == "1" and low[f"{h} n_eval"] == "40" and low[f"{h} std"] == ""
    assert low["status"] == "missing" and "insufficient" in low["note"] and low[f"{h} verdict"] == ""
    assert float(ok[h]) == pytest.approx(60.0) and ok[f"{h} n_train"] == "20" and ok[f"{h} n"] == "3"


PAPER = ROOT / ".." / "shared" / "paper" / "xgeo-paper.txt"
# the numeric columns of each paper table, left to right, as literature.csv names them
_ABL = [tables.BEN1, tables.BEN10, *tables.CR, *tables.SN, tables.VH]
PAPER_COLUMNS = {"table3": [tables.BEN10, tables.BEN100, *tables.CR, *tables.SN, tables.VH],
                 "table4": list(tables.CR), "table5": _ABL, "table6": _ABL, "table7": _ABL,
                 "table10": [tables.BEN10, tables.CR1_SAM], "table13": [tables.BEN1],
                 "table14": [tables.BEN1, tables.BEN5PC]}


def paper_tables(text):
    """{table: [(label, [value or None per numeric column])]} from the paper's text (tab-separated rows)."""
    out, current = {}, None
    number = re.compile(r"^-?\d+(\.\d+)?%?$")
    for line in text.splitlines():
        m = re.match(r"^Table (\d+):", line)
        if m:
            current = f"table{m.group(1)}" if f"table{m.group(1)}" in PAPER_COLUMNS else None
            if current:
                out[current] = []
            continue
        if current is None or "\t" not in line:
            if current and out[current] and not line.strip():
                current = None  # the blank line after the rows ends the table
            continue
        cells = [c.strip() for c in line.split("\t")]
        label = cells[0]
        # value cells: numbers, "-" (not reported), "8.37 ± 0.057" (mean ± std: the mean is the value)
        values = [c.split("±")[0].strip() for c in cells[1:] if c]
        values = [v for v in values if v == "-" or number.match(v)]
        values = [v for v in values if not v.endswith("%")]  # Table 7's cross-sensor percentage is a setting
        if len(values) == len(PAPER_COLUMNS[current]) and not label.startswith(("Metric", "Methods")):
            label = label or " ".join(cells[1:3])
            out[current].append((label, [None if v == "-" else float(v) for v in values]))
    return out


def test_literature_equals_the_values_parsed_from_the_paper():
    """Frozen against the paper's text, not against the CSV itself: every number of Tables 3-7, 10, 13 and 14 is
    in literature.csv under its row and column, and literature.csv holds nothing else."""
    if not PAPER.exists():  # a clone without the project's shared/ folder beside it (CI has it)
        pytest.skip(f"{PAPER}: the paper's text is not beside this clone (../shared/paper/xgeo-paper.txt)")
    parsed = paper_tables(PAPER.read_text())
    lit = tables.read_literature(tables.LITERATURE)
    total = 0
    for table, rows in parsed.items():
        methods = list(dict.fromkeys(m for t, m in lit if t == table))
        assert len(methods) == len(rows), (table, methods, [label for label, _ in rows])
        for method, (label, values) in zip(methods, rows):
            if table not in ("table7", "table13"):  # Table 7 labels are check marks, Table 13's are numbers
                assert label.split(" (")[0].split(" ")[0] in method, (table, method, label)
            got = {col: v["value"] for col, v in lit[table, method].items()}
            want = {col.header: v for col, v in zip(PAPER_COLUMNS[table], values) if v is not None}
            assert got == want, (table, method)
            total += len(want)
    assert set(parsed) == set(PAPER_COLUMNS) and total == 159
    # Table 7's check marks: MoE and cross-sensor reconstruction, then the percentage, as the row names say
    marks = [line.split("\t")[:3] for line in PAPER.read_text().splitlines() if line.startswith(("✗\t", "✓\t"))]
    names = [m for t, m in lit if t == "table7"]
    assert [f"MoE {'yes' if a == '✓' else 'no'}, cross {'yes' if b == '✓' else 'no'}, {c}" for a, b, c in marks] == \
        list(dict.fromkeys(names))


def test_every_literature_value_lands_in_its_table(params):
    lit = tables.read_literature(tables.LITERATURE)
    for name in tables.all_tables():
        _, rows = tables.build_rows(name, params, lit)
        cited = {r["method"]: r for r in rows if r["status"] == "cited"}
        for (table, method), values in lit.items():
            if table == name:
                for column, v in values.items():
                    assert float(cited[method][column]) == v["value"]
    assert lit[("table10", "SAR")]["SEN12MS-CR 1% SAM"]["note"].startswith("± 0.057")
    assert sum(len(v) for v in lit.values()) == 159 + 50  # + Tables 8 and 9 (appendix A.1)


def test_unknown_run_id_is_an_error(params):
    params["tables"]["replicates"] = 1
    c = tables.cell(tables.TABLES["table4"]["rows"][0], tables.CR[0])
    fake_run(params, c, TASK_METRICS["sen12ms-cr"](0.0), log=False)
    run_json = c.run_dir(params) / "seed0" / "run.json"
    write_json(run_json, dict(json.loads(run_json.read_text()), mlflow_run_id="f" * 32))
    with pytest.raises(tables.TableError, match="does not hold"):
        tables.build_table("table4", params)


def test_required_cells_skip_inputs_that_cannot_exist(params, tmp_path):
    cells = tables.required_cells("table3", params)
    assert {c.init for c in cells} == {"xgeo", "random"}
    assert len(cells) == 10  # 2 rows x (BEN 10 %, BEN 100 %, SEN12MS-CR, SpaceNet, Vaihingen)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "in22k.pth").write_bytes(b"0")
    assert len(tables.required_cells("table3", params)) == 15
    # Table 5: teachers absent -> only the from-scratch row is built
    assert {c.experiment for c in tables.required_cells("table5", params)} == {"xgeo"}
    # Table 13: the fusion variant shares the base pretraining
    cells13 = tables.required_cells("table13", params)
    assert [c.setting for c in cells13] == ["f0.01-fusion_separate", "f0.01"]
    assert tables.variant_overrides(params, "fusion_separate") == ["finetune.bigearthnet.method=1"]
    assert tables.pretraining_of(params, "homogeneous") == "homogeneous"


def test_figure3_grid_and_png(params, tmp_path):
    from xgeo import plots

    c = tables.Cell("s1-only", "bigearthnet", "xgeo", 0.1, "bigearthnet_s1")
    fake_run(params, c, {"mAP_micro": 62.5, "mAP_macro": 50.0}, log=False)  # percent, as xgeo.metrics
    grid = plots.figure3_grid(params)["BEN 10% micro mAP (whole eval set)"]["values"]
    assert grid[0, 0] == 62.5
    assert np.isnan(grid).sum() == grid.size - 1
    out = plots.figure3(params, tmp_path / "fig3.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves(tmp_path):
    from xgeo import plots

    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s, "aux_loss": 0.01, "loss/s2": 2.0 / s,
                                          "load": [1, 2]}) for s in range(1, 6)))
    series = plots.curve_series(plots.read_jsonl(path))
    assert sorted(series) == ["aux_loss", "loss", "loss/s2"]
    assert series["loss/s2"][1].tolist() == [2.0, 1.0, 2 / 3, 0.5, 0.4]
    out = plots.training_curves(path, tmp_path / "c.png")
    assert out.stat().st_size > 1000


def test_default_sizes_give_every_table_cell_enough_samples(load):
    """From params.yaml and the catalog alone (nothing synthesised): every training subset and evaluation set the
    default tables use meets tables.min_train_samples / min_eval_samples (dense tasks: tiles of tile_size px)."""
    from xgeo.catalog import get_dataset

    p = load()
    lo_train, lo_eval = p["tables"]["min_train_samples"], p["tables"]["min_eval_samples"]
    ds = p["data"]["datasets"]
    ben = ds["bigearthnet"]["synth"]["patches"]
    cr = ds["sen12ms-cr"]["synth"]
    seasons = len(get_dataset("sen12ms-cr").extra["seasons"])
    sn = ds["spacenet2"]
    vh = ds["vaihingen"]
    train = {"bigearthnet": ben["train"], "sen12ms-cr": seasons * cr["rois"]["train"] * cr["patches_per_roi"],
             "spacenet2": round(sn["synth"]["images_per_aoi"] * (1 - sn["val_fraction"])) * len(sn["synth"]["aois"]),
             "vaihingen": vh["synth"]["areas"]["train"] * (vh["synth"]["size"][0] // vh["tile_size"]) ** 2}
    evaluation = {"bigearthnet": ben[p["finetune"]["bigearthnet"]["eval_split"]],
                  "sen12ms-cr": seasons * cr["rois"]["test"] * cr["patches_per_roi"],
                  # SpaceNet2 val images, each cut into (pan_size / tile_size)^2 tiles
                  "spacenet2": round(sn["synth"]["images_per_aoi"] * sn["val_fraction"]) * len(sn["synth"]["aois"])
                  * (sn["synth"]["pan_size"] // sn["tile_size"]) ** 2,
                  # at least (smallest area side / tile_size)^2 whole tiles per test area
                  "vaihingen": vh["synth"]["areas"]["test"] * (vh["synth"]["size"][0] // vh["tile_size"]) ** 2}
    assert p["finetune"]["sen12ms-cr"]["eval_split"] == "test" and p["finetune"]["spacenet2"]["eval_split"] == "val"
    used = {c for name in p["tables"]["build"] + ["figure3"] for c in tables.required_cells(name, p)}
    assert used
    for c in used:
        overrides = dict(kv.split("=", 1) for kv in tables.variant_overrides(p, c.variant))
        if "finetune.bigearthnet.per_class" in overrides:
            # Table 14's greedy 5-per-class subset depends on the labels drawn, not on params alone (22 patches on
            # the default store, 9 classes with positives); the table checks its run's train_samples
            continue
        n_train = max(1, round(c.fraction * train[c.task]))
        assert tables.insufficient(p, n_train, evaluation[c.task]) is None, (c, n_train, evaluation[c.task])
    assert round(0.01 * train["bigearthnet"]) >= lo_train and round(0.01 * train["sen12ms-cr"]) >= lo_train
    assert min(evaluation.values()) >= lo_eval


def test_literature_protocol_adds_the_per_batch_column_beside_each_bigearthnet_column(params):
    params["finetune"]["bigearthnet"]["protocol"] = "literature"
    params["tables"]["replicates"] = 2
    c = tables.cell(tables.TABLES["table13"]["rows"][1], tables.BEN1)
    for seed in (0, 1):
        fake_run(params, c, {"mAP_micro": 60.0 + seed, "mAP_macro": 50.0, "mAP_micro_per_batch": 70.0 + seed},
                 log=False, seed=seed)
    header, rows = tables.build_rows("table13", dict(params, mlflow={**params["mlflow"], "enabled": False}))
    per_batch = "BEN 1% per-batch micro mAP, best epoch (literature)"
    assert header.index(per_batch) > header.index("BEN 1% micro mAP (whole eval set)")
    assert rows[1][per_batch] == "70.5" and rows[1]["BEN 1% micro mAP (whole eval set)"] == "60.5"
    params["finetune"]["bigearthnet"]["protocol"] = "whole_set"
    assert per_batch not in tables.build_rows("table13", params)[0]


# ------------------------------------------------------------------------------------ pretraining seeds (option)

def test_pretrain_replicates_dag_has_one_pretraining_per_seed(root, tmp_path):
    """tables.pretrain_replicates 2: the dry-run DAG of table3 pretrains twice (the experiment's own run and seed + 1)
    and finetunes the XGeo rows from both checkpoints with every finetuning seed; Random rows are unchanged."""
    import subprocess
    import sys

    import yaml

    (tmp_path / "results").mkdir()
    shutil.copy(root / "results" / "literature.csv", tmp_path / "results" / "literature.csv")
    shutil.copytree(root / "overlays", tmp_path / "overlays")
    p = yaml.safe_load((root / "params.yaml").read_text())
    assert p["tables"]["pretrain_replicates"] == 1  # the default DAG: one pretraining (tests/test_workflow.py)
    p["tables"]["pretrain_replicates"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(tmp_path),
                          "--cores", "1", "-n", "-p", "results/table3.csv"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    block = res.stdout.split("Job stats:", 1)[1]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m.group(1) != "total"}
    reps = p["tables"]["replicates"]
    assert counts["pretrain"] == 1 and counts["pretrain_replicate"] == 1
    # XGeo: BEN 10 % and 100 % and one cell of each other task, x 2 checkpoints; Random: once (a job runs every
    # finetuning seed of its cell)
    assert counts["finetune_bigearthnet"] == 2 * 2 + 2
    assert counts["finetune_spacenet2"] == 2 + 1
    assert "--set seed=1 > logs/pretrain/xgeo-pretrain1.log" in res.stdout
    assert ("--init checkpoints/xgeo/pretrain1/last.ckpt --out results/runs/xgeo/bigearthnet/xgeo/f0.1/seed{seed}-pretrain1"
            in res.stdout)
    assert f"--seeds {','.join(str(p['seed'] + k) for k in range(reps))} " in res.stdout
    assert "results/runs/xgeo/bigearthnet/random/f0.1/seed0-pretrain1" not in res.stdout


def test_table_cell_spans_pretraining_and_finetuning_seeds(params, tmp_path):
    """With 2 pretraining x 2 finetuning seeds an XGeo cell is the mean ± std over the 4 runs (a run finetuned from
    the other checkpoint than its directory says is stale); a Random cell over its 2 finetuning runs."""
    params["tables"]["replicates"] = 2
    params["tables"]["pretrain_replicates"] = 2
    other = tmp_path / "checkpoints" / "xgeo" / "pretrain1" / "last.ckpt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"weights of pretraining seed 1")
    spec = tables.table_spec("table3")
    xgeo_cell = tables.cell(spec["rows"][0], tables.BEN10)
    random_cell = tables.cell(spec["rows"][1], tables.BEN10)
    assert [(r.seed, r.pretrain_seed) for r in xgeo_cell.replicates(params)] == [(0, None), (1, None), (0, 1), (1, 1)]
    assert [d.name for _, d in random_cell.replicate_dirs(params)] == ["seed0", "seed1"]
    values = {(0, None): 60.0, (1, None): 61.0, (0, 1): 64.0, (1, 1): 67.0}
    for (seed, pre), v in values.items():
        fake_run(params, xgeo_cell, {"mAP_micro": v, "mAP_macro": 1.0}, log=False, seed=seed, pretrain_seed=pre)
    for seed in (0, 1):
        fake_run(params, random_cell, {"mAP_micro": 50.0 + seed, "mAP_macro": 1.0}, log=False, seed=seed)
    header = "BEN 10% micro mAP (whole eval set)"
    res = tables.cell_result(params, xgeo_cell, "mAP_micro", header)
    assert res.summary.n == 4 and res.summary.mean == pytest.approx(63.0)
    assert res.summary.std == pytest.approx(np.std(list(values.values()), ddof=1))
    assert tables.cell_result(params, random_cell, "mAP_micro", header).summary.n == 2
    # a run in seed1-pretrain1 that recorded the experiment's own checkpoint is refused, naming the weights
    fake_run(params, xgeo_cell, {"mAP_micro": 99.0, "mAP_macro": 1.0}, log=False, seed=1, pretrain_seed=None)
    (xgeo_cell.run_dir(params) / "seed1").rename(xgeo_cell.run_dir(params) / "stale")
    import shutil as sh
    sh.rmtree(xgeo_cell.run_dir(params) / "seed1-pretrain1")
    (xgeo_cell.run_dir(params) / "stale").rename(xgeo_cell.run_dir(params) / "seed1-pretrain1")
    fake_run(params, xgeo_cell, {"mAP_micro": 61.0, "mAP_macro": 1.0}, log=False, seed=1)
    stale = tables.cell_result(params, xgeo_cell, "mAP_micro", header)
    assert stale.summary is None and stale.text.startswith("stale (weights_sha256") and "seed1-pretrain1" in stale.notes[0]
