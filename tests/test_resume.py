"""Exact resume: a run killed with SIGKILL right after a step and resumed with --resume logs, after its last
checkpoint, the same losses as a run never interrupted (CPU, tolerance 1e-6)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_pretrain import TINY, read_metrics, write_pretrain_stores

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY, KILL = 5, 2, 3


def test_sigkill_then_resume_matches_an_uninterrupted_run(load, tmp_path):
    from xgeo.pretrain.train import pretrain

    zarr = write_pretrain_stores(tmp_path / "zarr")
    overrides = [f"paths.zarr={zarr}", "mlflow.enabled=false", *TINY]
    params = load(*overrides)

    pretrain(params, tmp_path / "whole", steps=STEPS, checkpoint_every=EVERY)
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "tests" / "pretrain_with_callbacks.py"), str(killed), str(STEPS), str(EVERY),
           "--kill-at", str(KILL), "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == list(range(1, KILL + 1))

    result = pretrain(params, killed, steps=STEPS, checkpoint_every=EVERY, resume=True)
    resumed = read_metrics(killed / "metrics.jsonl")
    assert result["step"] == STEPS
    # the lines after the checkpoint were dropped and written again, once
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    keys = [k for k in whole[0] if k.startswith("loss") or k in ("rec_loss", "aux_loss", "lr", "grad_norm")]
    for a, b in zip(whole, resumed):
        for k in keys:
            assert b[k] == pytest.approx(a[k], abs=1e-6, rel=0), (a["step"], k)
    # and the run really learned something in those steps (the comparison is not between constants)
    assert len({round(r["loss"], 6) for r in whole}) == STEPS
