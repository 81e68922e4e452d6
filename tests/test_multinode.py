"""More than one node, on one machine: two torchrun launchers (one gloo process each, as two nodes would run them)
meet at a c10d rendezvous on the loopback address and pretrain with identical parameters after every step."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from test_pretrain import TINY, read_metrics, write_pretrain_stores

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launchers_meet_at_a_c10d_rendezvous_and_train_in_step(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    zarr = write_pretrain_stores(tmp_path / "zarr")
    out = tmp_path / "run"  # the shared file system of a cluster: one run directory for both nodes
    # what the pretrain rule runs on every node when workflow.pretrain.nodes is 2 (workflow/rules/pretrain.smk)
    cmd = [torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "xgeo-test",
           str(ROOT / "tests" / "pretrain_with_callbacks.py"), str(out), str(STEPS), str(STEPS),
           "--checksum", str(tmp_path / "checksum"), "--set", f"paths.zarr={zarr}", "--set", "mlflow.enabled=false"]
    for o in TINY:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    r0 = (tmp_path / "checksum.rank0").read_text().splitlines()
    r1 = (tmp_path / "checksum.rank1").read_text().splitlines()
    assert [line.split()[0] for line in r0] == [str(s) for s in range(1, STEPS + 1)]
    assert r0 == r1  # the same parameters on both "nodes" after every step
    assert len({line.split()[1] for line in r0}) == STEPS  # and they changed at every step
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert (out / "last.ckpt").exists() and not (tmp_path / "checksum.rank2").exists()
