"""CPU seconds of whole `xgeo finetune` jobs, this tree against a baseline commit, measured in the same run.

Each job is the command a Snakemake finetune rule runs (one process: imports, store, model, training, evaluation,
figures, predictions.npz, model.pt, MLflow), timed by the user + system CPU seconds of the child process
(getrusage), not wall time (the machine is shared). The baseline is the ``xgeo`` package of ``--baseline`` (a git
ref) extracted to a temporary folder and run with the same params.yaml, stores and thread count.

    python benchmarks/finetune_jobs.py --zarr data/zarr --steps 0          # fixed cost + evaluation per task
    python benchmarks/finetune_jobs.py --zarr data/zarr --steps 300 --tasks bigearthnet

Prints one row per task: baseline and current CPU seconds and their ratio (baseline / current).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _jobs import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("bigearthnet", "vaihingen", "sen12ms-cr", "spacenet2")



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zarr", required=True, help="folder of the demo stores (paths.zarr)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--steps", type=int, default=0, help="optimiser steps (0: untrained; fixed cost + evaluation)")
    ap.add_argument("--baseline", default="fb37c12", help="git ref of the baseline xgeo package")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xgeo_ft_bench_"))
    base = work / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "archive", args.baseline, "xgeo"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
    env0 = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows = []
    for task in args.tasks:
        cpu = {}
        for name, path in (("baseline", base), ("current", ROOT)):
            out = work / name / "runs" / task
            sets = [f"paths.zarr={args.zarr}", f"mlflow.tracking_uri=sqlite:///{work / name}/mlflow.db", "seed=0"]
            cmd = [sys.executable, "-m", "xgeo.cli", "finetune", task, "--init", "random", "--out", str(out),
                   "--steps", str(args.steps), "--experiment", "xgeo"]
            cmd += [a for s in sets for a in ("--set", s)]
            env = dict(env0, PYTHONPATH=str(path))
            cpu[name] = cpu_seconds(cmd, env, work / f"{name}_{task}.log")
            print(f"  {task} {name}: {cpu[name]:.1f} CPU s", file=sys.stderr, flush=True)
        rows.append((task, cpu["baseline"], cpu["current"]))
    print(f"\nxgeo finetune TASK --init random --steps {args.steps}, {args.threads} thread(s), CPU s (user + sys)")
    print(f"{'task':<14}{'baseline':>10}{'current':>10}{'ratio':>8}")
    for task, b, c in rows:
        print(f"{task:<14}{b:>10.1f}{c:>10.1f}{b / c:>8.2f}")
    tb, tc = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'total':<14}{tb:>10.1f}{tc:>10.1f}{tb / tc:>8.2f}")
    print(f"(baseline: xgeo of {args.baseline}; logs and runs in {work})")


if __name__ == "__main__":
    main()
