"""What the demo's finetuning length does to Table 3: each of its cells (XGeo and Random rows) finetuned with every
step count given, the replicate seeds of a cell in one process (``xgeo finetune --seeds``, as a Snakemake job runs
them), and per column the XGeo - Random difference with its Welch 95 % interval and verdict, as the table prints it.

    python benchmarks/demo_steps.py --zarr data/zarr --checkpoint checkpoints/xgeo/last.ckpt --steps 100 300

Warm-up is a tenth of the steps (the demo's ratio). MLflow is off; 1 thread per job, ``--jobs`` jobs at a time.
The baseline of the comparison is the first step count: the table gives, per step count, the CPU seconds of all its
jobs (user + sys of the child processes) and their ratio to the first, then the metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _jobs import cpu_seconds  # noqa: E402
from xgeo.replicates import compare, summarize  # noqa: E402
from xgeo.tables import TABLES  # noqa: E402

TASKS = ("bigearthnet", "vaihingen", "sen12ms-cr", "spacenet2")



def _fmt(v) -> str:
    return f"{v.mean:.4g} ± {v.std:.2g}" if v.std is not None else f"{v.mean:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zarr", required=True, help="folder of the demo stores (paths.zarr)")
    ap.add_argument("--checkpoint", required=True, help="the XGeo pretraining checkpoint the XGeo row finetunes")
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = ap.parse_args()

    spec = TABLES["table3"]
    columns = [c for c in spec["columns"] if c.task in TASKS]
    cells = sorted({(c.task, c.fraction) for c in columns})
    inits = {"XGeo": args.checkpoint, "Random": "random"}
    work = args.out or Path(tempfile.mkdtemp(prefix="xgeo_demo_steps_"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=str(ROOT))

    jobs = []
    for steps in args.steps:
        for task, fraction in cells:
            for row, init in inits.items():
                out = work / f"s{steps}" / task / row / f"f{fraction:g}"
                cmd = [sys.executable, "-m", "xgeo.cli", "finetune", task, "--init", init, "--fraction", str(fraction),
                       "--experiment", "xgeo", "--seeds", args.seeds, "--out", str(out / "seed{seed}"),
                       "--set", f"paths.zarr={args.zarr}", "--set", "mlflow.enabled=false",
                       "--set", f"finetune.{task}.steps={steps}",
                       "--set", f"finetune.{task}.warmup_steps={max(1, steps // 10)}"]
                jobs.append((steps, task, fraction, row, out, cmd))
    started = time.time()

    def one(job):
        steps, task, fraction, row, out, cmd = job
        out.mkdir(parents=True, exist_ok=True)
        cpu = cpu_seconds(cmd, env, out / "job.log")
        print(f"  {steps} steps {task} f{fraction:g} {row}: {cpu:.1f} CPU s ({time.time() - started:.0f} s in)",
              file=sys.stderr, flush=True)
        return cpu

    with ThreadPoolExecutor(args.jobs) as pool:
        cpus = list(pool.map(one, jobs))
    cpu_by_steps = {s: sum(c for j, c in zip(jobs, cpus) if j[0] == s) for s in args.steps}

    seeds = [int(k) for k in args.seeds.split(",")]
    print(f"\nTable 3 cells (XGeo from {args.checkpoint}, Random), seeds {args.seeds}, warm-up steps / 10, "
          f"{len(cells) * len(inits)} jobs per step count, {args.jobs} at a time, 1 thread each\n")
    print("| steps | CPU s of all jobs | ratio to the first |")
    print("|---|---|---|")
    for s in args.steps:
        print(f"| {s} | {cpu_by_steps[s]:.0f} | {cpu_by_steps[s] / cpu_by_steps[args.steps[0]]:.2f} |")
    print("\n| column | steps | XGeo | Random | XGeo - Random [95 % interval] | verdict |")
    print("|---|---|---|---|---|---|")
    for col in columns:
        for s in args.steps:
            vals = {}
            for row in inits:
                d = work / f"s{s}" / col.task / row / f"f{col.fraction:g}"
                vals[row] = summarize([json.loads((d / f"seed{k}" / "metrics.json").read_text())[col.metric]
                                       for k in seeds])
            c = compare(vals["XGeo"], vals["Random"], col.metric)
            interval = f"[{c.low:.3g}, {c.high:.3g}]" if c.low is not None else ""
            print(f"| {col.header} | {s} | {_fmt(vals['XGeo'])} | {_fmt(vals['Random'])} | {c.diff:.3g} {interval} "
                  f"| {c.verdict} |")
    print(f"\n(runs and logs in {work})")


if __name__ == "__main__":
    main()
