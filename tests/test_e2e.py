"""End to end: `snakemake --cores 2 results/table3.csv` in a fresh copy of the repository, at a size smaller than the
embedded default; table3.csv must hold the numbers of the runs it names (metrics.json, MLflow)."""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from xgeo import tables, tracking
from xgeo.config import load_params

BUDGET_S = 240
STAGES = ("xgeo.data.synth", "xgeo.data.convert", "xgeo.model.xgeo", "xgeo.pretrain.train", "xgeo.finetune.run")


def shrink(params: dict) -> dict:
    """Smaller than the default: fewer pretraining steps and samples, a few finetuning steps per task."""
    params["pretrain"].update(steps=4, checkpoint_every=4, log_every=2)
    ds = params["data"]["datasets"]
    ds["bigearthnet"]["synth"]["patches"] = {"train": 40, "val": 10, "test": 20}
    ds["sen12ms-cr"]["synth"]["patches_per_roi"] = 3
    ds["sen12ms-cr"]["synth"]["rois"] = {"train": 1, "val": 1, "test": 1}
    ds["spacenet2"]["synth"]["images_per_aoi"] = 12
    ds["vaihingen"]["synth"]["areas"] = {"train": 3, "test": 2}
    # two replicates per cell (the mean, std and n path); the tiny subsets are below the default minimums
    params["tables"].update(replicates=2, min_train_samples=1, min_eval_samples=1)

    def small(node):
        for key, value in node.items():
            if isinstance(value, dict):
                small(value)
            elif key in ("steps", "epochs") and isinstance(value, int):
                node[key] = min(value, 3 if key == "steps" else 1)
            elif key in ("eval_samples", "max_eval") and isinstance(value, int):
                node[key] = min(value, 16)

    small(params["finetune"])
    return params


@pytest.fixture
def project(tmp_path, root):
    missing = [m for m in STAGES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"pipeline stages not in this checkout yet: {', '.join(missing)}")
    dst = tmp_path / "xgeo-project"
    ignore = shutil.ignore_patterns(".venv", ".git", "data", "checkpoints", "runs", "mlflow.db*", "mlartifacts",
                                    ".snakemake", "logs", "__pycache__", "*.egg-info", "benchmarks", "table*.csv")
    shutil.copytree(root, dst, ignore=ignore)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    (dst / "params.yaml").write_text(yaml.safe_dump(shrink(params), sort_keys=False))
    return dst


@pytest.mark.e2e
def test_table3_end_to_end(project):
    t0 = time.time()
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "results/table3.csv"]
    res = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=BUDGET_S + 60)
    elapsed = time.time() - t0
    if res.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in sorted((project / "logs").rglob("*.log")))
        pytest.fail(f"snakemake failed ({elapsed:.0f} s):\n{res.stderr[-4000:]}\n{logs[-6000:]}")
    assert elapsed < BUDGET_S, f"pipeline took {elapsed:.0f} s (budget {BUDGET_S} s)"

    params = load_params(project / "params.yaml")
    params["mlflow"]["tracking_uri"] = f"sqlite:///{project}/mlflow.db"
    params["paths"] = {k: str(project / v) for k, v in params["paths"].items()}
    with open(project / "results" / "table3.csv", newline="") as fh:
        rows = {r["method"] + "|" + r["status"]: r for r in csv.DictReader(fh)}
    spec = tables.table_spec("table3")
    for row in spec["rows"][:2]:  # XGeo and Random: produced here
        out = rows[f"{row.label}|run"]
        ids = dict(item.rsplit(":", 1) for item in out["mlflow_run_ids"].split(";"))
        for col in spec["columns"]:
            c = tables.cell(row, col)
            values = []
            for seed, d in c.replicate_dirs(params):
                values.append(json.loads((d / "metrics.json").read_text())[col.metric])
                run_id = ids[f"{c.task}@{c.setting}/seed{seed}"]
                assert run_id == json.loads((d / "run.json").read_text())["mlflow_run_id"]
                got = tracking.get_run(params, run_id)
                assert got is not None and got.info.status == "FINISHED"
            assert float(out[col.header]) == pytest.approx(sum(values) / len(values), rel=1e-5, abs=1e-6)
            assert int(out[f"{col.header} n"]) == len(values) == params["tables"]["replicates"]
        assert out[f"{spec['columns'][0].header} [paper]"] != ""
    assert "not supplied" in rows["IN-22k|missing"]["note"]
    assert rows["SeCo|cited"]["BEN 10% micro mAP (whole eval set)"] == "82.6"

    # finished stages are not redone: a second invocation has nothing to do
    again = subprocess.run([*cmd, "-n"], cwd=project, capture_output=True, text=True, timeout=60)
    assert "Nothing to be done" in again.stdout + again.stderr
