"""Table builder: reproduced values equal the runs' metrics.json, paper values beside them, cited rows from
literature.csv, missing rows say why, run ids checked against MLflow."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from xgeo import tables, tracking
from xgeo.io import write_json


@pytest.fixture
def params(load, tmp_path, root):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(root / "results" / "literature.csv", results / "literature.csv")
    return load(f"paths.runs={tmp_path}/results/runs", f"paths.results={results}",
                f"finetune.weights.in22k={tmp_path}/weights/in22k.pth")


def fake_run(params, cell, metrics, log=True):
    """A finished run directory, logged to MLflow like the finetune stage does."""
    d = cell.run_dir(params)
    run_id = None
    if log:
        with tracking.start_run(params, experiment="finetune", tags={"xgeo.task": cell.task}) as run:
            run.log_metrics(metrics)
        run_id = run.run_id
    write_json(d / "metrics.json", metrics)
    write_json(d / "run.json", {"mlflow_run_id": run_id, "task": cell.task, "init": cell.init,
                                "fraction": cell.fraction, "experiment": cell.experiment})
    return run_id


TASK_METRICS = {
    "bigearthnet": lambda x: {"mAP_micro": 50 + 100 * x, "mAP_macro": 40 + 100 * x},  # percent, as xgeo.metrics
    "sen12ms-cr": lambda x: {"MAE": 0.1 - x / 10, "SAM": 20.0 - x, "SSIM": 0.3 + x, "PSNR": 15.0},
    "spacenet2": lambda x: {"PSNR": 18.0 + x, "SSIM": 0.4 + x},
    "vaihingen": lambda x: {"mIoU": 30 + 100 * x, "OA": 60.0},
}


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_table3_values_paper_columns_cited_and_missing(params, tmp_path):
    spec = tables.table_spec("table3")
    ids = {}
    for k, row in enumerate(spec["rows"][:2]):  # XGeo and Random; IN-22k has no weights here
        for col in spec["columns"]:
            c = tables.cell(row, col)
            if c.task == "vaihingen" and row.init == "random":
                continue  # one run not produced yet
            if c not in ids:
                ids[c] = fake_run(params, c, TASK_METRICS[c.task](0.01 * (k + 1) + c.fraction / 100))
    out = tables.build_table("table3", params)
    assert out == tmp_path / "results" / "table3.csv"
    rows = {r["method"] + "|" + r["status"]: r for r in read_csv(out)}

    xgeo = rows["XGeo|run"]
    c = tables.cell(spec["rows"][0], tables.BEN10)
    metrics = json.loads((c.run_dir(params) / "metrics.json").read_text())
    assert float(xgeo["BEN 10% mAP_micro"]) == pytest.approx(metrics["mAP_micro"], abs=1e-6)
    assert xgeo["BEN 10% mAP_micro [paper]"] == "87.5"
    assert float(xgeo["SEN12MS-CR SAM"]) == pytest.approx(20.0 - 0.02, abs=1e-6)
    assert xgeo["SEN12MS-CR SAM [paper]"] == "4.87"
    assert xgeo["SpaceNet PSNR [paper]"] == "22.85"
    assert f"bigearthnet@f0.1:{ids[c]}" in xgeo["mlflow_run_ids"]
    assert len(xgeo["mlflow_run_ids"].split(";")) == 5  # one run per (task, fraction)

    random = rows["Random|partial"]
    assert random["Vaihingen mIoU"] == ""
    assert "Vaihingen mIoU: missing, run" in random["note"] and "not run yet" in random["note"]
    assert random["Vaihingen mIoU [paper]"] == "67"

    in22k = rows["IN-22k|missing"]
    assert all(in22k[col.header] == "" for col in spec["columns"])
    assert "in22k.pth not supplied" in in22k["note"]

    # the table's own MLflow experiment: one run per build with the CSV and the cells; cited runs tagged with their row
    (table_run,) = tracking.search_runs(params, "table3")
    assert table_run.data.metrics[tables._metric_key("XGeo", "BEN 10% mAP_micro")] == pytest.approx(float(xgeo["BEN 10% mAP_micro"]))
    assert not any(k.startswith("SeCo/") for k in table_run.data.metrics)  # cited rows are not metrics of a run
    assert ids[c] in table_run.data.tags["xgeo.cited_runs"]
    assert tracking.get_run(params, ids[c]).data.tags["xgeo.table.table3"] == "XGeo"

    seco = rows["SeCo|cited"]
    assert seco["BEN 10% mAP_micro"] == "82.6" and seco["Vaihingen mIoU"] == "68.9" and seco["SEN12MS-CR MAE"] == ""
    assert "Mañas et al., 2021" in seco["source"]
    assert rows["XGeo|cited"]["SEN12MS-CR MAE"] == "0.026"
    assert {r["method"] for r in read_csv(out) if r["status"] == "cited"} == {
        "SeCo", "SatMAE", "MoCoV2", "DINO-MC", "GFM", "Random", "IN-22k", "XGeo"}


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
    c = tables.cell(tables.TABLES["table4"]["rows"][0], tables.CR[0])
    fake_run(params, c, TASK_METRICS["sen12ms-cr"](0.0), log=False)
    write_json(c.run_dir(params) / "run.json", {"mlflow_run_id": "f" * 32})
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
    grid = plots.figure3_grid(params)["BEN 10% mAP_micro"]["values"]
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
