"""Tables 8 and 9 (appendix A.1) at a smoke size: the RGB-only Swin v1 experiments, a real pretraining and
finetuning of one cell, the rest of the cells as finished run directories, the "# Image" column from the stores."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
import torch

from xgeo import tables
from xgeo import provenance
from xgeo.config import load_params
from xgeo.io import write_json

ROOT = Path(__file__).resolve().parents[1]
TINY = ("data.datasets.geopile.synth={sources: [RESISC45], classes_per_source: 2, images_per_class: 4, size: 64}",
        "data.datasets.oscd.synth={size: [64, 64], cities: {train: 2, test: 1}}")


def _params(tmp: Path, *more: str, experiment: str | None = None) -> dict:
    return load_params(ROOT / "params.yaml", [*TINY, f"paths.zarr={tmp}/zarr", f"paths.runs={tmp}/runs",
                                              f"paths.results={tmp}/results", f"paths.checkpoints={tmp}/ckpt",
                                              "mlflow.enabled=false", "tables.replicates=1",
                                              "tables.min_train_samples=1", "tables.min_eval_samples=1", *more],
                       experiment=experiment)


def test_appendix_experiments_are_rgb_only_swin_v1_from_scratch():
    import timm

    for row in tables.TABLES["table8"]["rows"]:
        p = load_params(ROOT / "params.yaml", experiment=row.experiment)
        assert p["model"]["sensors"] == ["rgb"] and not p["model"]["moe"]["enabled"]
        assert p["model"]["size"] == "swin_demo"
        paper = load_params(ROOT / "params.yaml", ["profile=paper"], experiment=row.experiment)
        assert paper["model"]["size"] == "swin_base" and paper["data"]["source"] == "remote"
        assert paper["pretrain"]["groups"] == {"rgb": {"datasets": p["pretrain"]["groups"]["rgb"]["datasets"],
                                                       "batch_size": 128}}
    sets = [load_params(ROOT / "params.yaml", experiment=r.experiment)["pretrain"]["groups"]["rgb"]["datasets"]
            for r in tables.TABLES["table9"]["rows"]]
    assert sets == [["geopile"], ["geopile", "millionaid"], ["geopile", "millionaid", "imagenet"],
                    ["geopile", "millionaid", "geolifeclef"], ["geopile", "millionaid", "fmow"]]
    # swin_base is timm's Swin v1 Base (built on the meta device: shapes only, no memory)
    from xgeo.model import build_model

    with torch.device("meta"):
        ours = build_model(load_params(ROOT / "params.yaml", ["profile=paper"], experiment="rgb-geopile")).encoder
        ref = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=0)
    assert type(ours).__name__ == "SwinTransformer"
    theirs = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith("patch_embed.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs


def test_tables_8_and_9_at_smoke_size(tmp_path):
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize
    from xgeo.finetune.run import finetune
    from xgeo.pretrain.train import pretrain

    (tmp_path / "results").mkdir()
    shutil.copy(ROOT / "results" / "literature.csv", tmp_path / "results" / "literature.csv")
    # the one real cell's settings are the table's params (its provenance digest must match them)
    small = ("pretrain.steps=2", "finetune.oscd.image_size=32", "finetune.oscd.batch_size=2",
             "finetune.oscd.head_width=8", "finetune.oscd.steps=1")
    base = _params(tmp_path, *small)
    for ds in ("geopile", "oscd"):
        synthesize(ds, tmp_path / "raw" / ds, base, seed=0)
        convert(ds, tmp_path / "raw" / ds, tmp_path / "zarr" / f"{ds}.zarr", base)
    # one real cell: Swin v1 pretrained on GeoPile for 2 steps, OSCD finetuned from it for 1 step
    exp = _params(tmp_path, *small, experiment="rgb-geopile")
    ckpt = tmp_path / "ckpt" / "rgb-geopile"
    pretrain(exp, ckpt)
    geopile_row = tables.TABLES["table8"]["rows"][0]
    oscd_cell = tables.cell(geopile_row, tables.OSCD)
    (seed,) = tables.seeds(base)
    real = finetune("oscd", str(ckpt / "last.ckpt"), oscd_cell.run_dir(base) / f"seed{seed}", exp)
    # the other cells: finished run directories
    values = {}
    for name in ("table8", "table9"):
        spec = tables.TABLES[name]
        for k, row in enumerate(spec["rows"]):
            for j, col in enumerate(spec["columns"]):
                c = tables.cell(row, col)
                if c == oscd_cell:
                    continue
                v = 10.0 * k + j + 0.5
                values[(row.label, col.header)] = v
                run_dir = c.run_dir(base) / f"seed{seed}"
                done = run_dir / "metrics.json"
                metrics = json.loads(done.read_text()) if done.exists() else {}  # SpaceNet: PSNR and SSIM, one run
                write_json(done, dict(metrics, **{col.metric: v}, eval_samples=300))
                # a finished run of the settings the table expects (as the finetune stage records them)
                shaped = provenance.finetune_settings(tables.cell_params(base, c, seed), c.task,
                                                      tables.init_file(base, c), c.fraction, None)
                write_json(run_dir / "run.json", {"mlflow_run_id": None, "task": c.task, "seed": seed,
                                                  "train_samples": 300, "eval_samples": 300, "settings": shaped,
                                                  "settings_digest": provenance.digest(shaped)})
    n_geopile = 8  # 1 source x 2 classes x 4 images
    for name in ("table8", "table9"):
        path = tables.build_table(name, base)
        all_rows = list(csv.DictReader(open(path, newline="")))
        run_rows = [r for r in all_rows if r["status"] == "run"]
        rows = {r["method"]: r for r in run_rows}
        assert [r["method"] for r in run_rows] == [row.label for row in tables.TABLES[name]["rows"]]
        for r in run_rows:
            for col in tables.TABLES[name]["columns"]:
                want = real["F1"] if (r["method"], col.header) == ("GeoPile", "OSCD F1") else values[(r["method"], col.header)]
                assert float(r[col.header]) == pytest.approx(want, rel=1e-5)
        # the sample count of each row's pretraining stores (only GeoPile's store exists here) beside the paper's
        assert rows["GeoPile"]["# Image"] == str(n_geopile) and rows["GeoPile"]["# Image [paper]"] == "600000"
        assert rows["XGeoSet-RGB + FMoW"]["# Image"] == "" and rows["XGeoSet-RGB + FMoW"]["# Image [paper]"] == "6000000"
        cited = [r for r in all_rows if r["status"] == "cited"]
        assert [r["# Image"] for r in cited] == ["600000", "1700000", "3000000", "3300000", "6000000"]
    t8 = {r["method"]: r for r in csv.DictReader(open(tmp_path / "results" / "table8.csv", newline=""))
          if r["status"] == "run"}
    assert t8["XGeoSet-RGB"]["DSIFN F1 [paper]"] == "70.4" and t8["XGeoSet-RGB + GeoLifeCLEF"]["OSCD F1 [paper]"] == "56.1"


def test_snakemake_dag_of_tables_8_and_9(tmp_path):
    import subprocess
    import sys

    (tmp_path / "results").mkdir()
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "overlays", tmp_path / "overlays")
    shutil.copy(ROOT / "results" / "literature.csv", tmp_path / "results" / "literature.csv")
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
                          "--cores", "1", "-n", "results/table8.csv", "results/table9.csv"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    block = res.stdout.split("Job stats:", 1)[1]
    import re

    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
    # 5 RGB pretrainings; per row OSCD, DSIFN, BEN 10 % and 1 %, WHU, Vaihingen, SpaceNet2 (PSNR and SSIM: one run)
    assert counts["pretrain"] == 5 and counts["table"] == 2
    # one job per cell runs all of its tables.replicates finetuning seeds
    assert {t: counts[f"finetune_{t}"] for t in ("oscd", "dsifn", "whu", "bigearthnet", "vaihingen", "spacenet2")} == {
        "oscd": 5, "dsifn": 5, "whu": 5, "bigearthnet": 10, "vaihingen": 5, "spacenet2": 5}
    assert counts["convert"] == 11  # 5 pretraining sets + 6 downstream datasets
    assert set(re.findall(r"checkpoints/(rgb-[\w-]+)/last\.ckpt", res.stdout)) == {
        "rgb-geopile", "rgb-xgeoset", "rgb-imagenet", "rgb-geolifeclef", "rgb-fmow"}
