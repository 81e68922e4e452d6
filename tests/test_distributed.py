"""Two processes under torchrun (gloo, CPU): identical parameters on both ranks after every step, a falling loss."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from test_pretrain import TINY, read_metrics, write_pretrain_stores

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(os.sys.executable).parent / "torchrun")
    zarr = write_pretrain_stores(tmp_path / "zarr")
    out = tmp_path / "run"
    # the loop has no test hooks: a script passes pretrain() a callback that writes the parameters' checksums
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "pretrain_with_callbacks.py"),
           str(out), str(STEPS), str(STEPS), "--checksum", str(tmp_path / "checksum"),
           "--set", f"paths.zarr={zarr}", "--set", "mlflow.enabled=false"]
    for o in TINY:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
           "PATH": f"{Path(os.sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = (tmp_path / "checksum.rank0").read_text().split("\n")
    r1 = (tmp_path / "checksum.rank1").read_text().split("\n")
    assert len([line for line in r0 if line]) == STEPS
    assert r0 == r1  # same parameters (experts included: the native MoE is replicated) after every step
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert (out / "last.ckpt").exists()
    assert not (tmp_path / "checksum.rank2").exists()
