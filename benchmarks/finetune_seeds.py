"""CPU seconds of a table cell's finetuning seeds: one process per seed (``--set seed=K``, the baseline) against one
process running them all (``--seeds``), measured in the same run, and whether the runs are byte-identical.

Each command is what a Snakemake finetune job runs (``xgeo finetune TASK --init random --experiment xgeo``, MLflow
on with a temporary tracking store, 1 thread), timed by the user + system CPU seconds of the child processes
(getrusage), not wall time (the machine is shared).

    python benchmarks/finetune_seeds.py --zarr data/zarr --task bigearthnet --steps 20

Prints the CPU seconds of both ways, their ratio (separate / one process) and, per seed, whether metrics.json and
predictions.npz of the two ways are the same bytes.
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



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zarr", required=True, help="folder of the demo stores (paths.zarr)")
    ap.add_argument("--task", default="bigearthnet")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=20, help="finetune.<task>.steps")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xgeo_seeds_bench_"))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(ROOT))
    seeds = [int(k) for k in args.seeds.split(",")]
    sets = [f"paths.zarr={args.zarr}", f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db", "mlflow.enabled=true",
            f"finetune.{args.task}.steps={args.steps}"]
    base = [sys.executable, "-m", "xgeo.cli", "finetune", args.task, "--init", "random", "--experiment", "xgeo"]
    base += [a for s in sets for a in ("--set", s)]
    # the MLflow store is created (schema migration, seconds) before either way is timed
    subprocess.run([sys.executable, "-c", "import sys; from xgeo import tracking; from xgeo.config import load_params;"
                    " p = load_params(None, sys.argv[1:]); tracking._client(tracking.resolve_store(p))", *sets],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    separate = sum(cpu_seconds(base + ["--out", str(work / "separate" / f"seed{k}"), "--set", f"seed={k}"], env,
                               work / f"separate{k}.log") for k in seeds)
    print(f"  separate processes: {separate:.1f} CPU s", file=sys.stderr, flush=True)
    one = cpu_seconds(base + ["--out", str(work / "one" / "seed{seed}"), "--seeds", args.seeds], env,
                      work / "one.log")
    print(f"  one process: {one:.1f} CPU s", file=sys.stderr, flush=True)

    print(f"\nxgeo finetune {args.task} --init random, steps {args.steps}, seeds {args.seeds}, {args.threads} thread(s), "
          "MLflow on; CPU s (user + sys)")
    print(f"{'separate processes':>20}{'one process':>14}{'ratio':>8}")
    print(f"{separate:>20.1f}{one:>14.1f}{separate / one:>8.2f}")
    for k in seeds:
        same = {n: (work / "separate" / f"seed{k}" / n).read_bytes() == (work / "one" / f"seed{k}" / n).read_bytes()
                for n in ("metrics.json", "predictions.npz")}
        print(f"seed {k}: " + ", ".join(f"{n} {'byte-identical' if v else 'DIFFERENT'}" for n, v in same.items()))
    print(f"(logs and runs in {work})")


if __name__ == "__main__":
    main()
