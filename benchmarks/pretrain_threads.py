"""Speed-up of one demo pretraining step from 1 to N intra-op threads: does `workflow.pretrain.threads: 2` pay for
the second core, or does the pipeline finish sooner with pretraining on 1 thread and another job on the other core?

The step is ``benchmarks/pretrain_step.py``'s (the demo model of params.yaml, its per-group batch, the whole
optimizer step). The thread counts alternate step by step in one process (1, N, 1, N, ...), so a busy shared
machine slows both alike; medians after untimed warm-up steps. Wall seconds per step and CPU seconds per step
(user + sys of the process) are both shown: on an idle machine the wall ratio is the speed-up a 2-thread job gets,
the CPU ratio what the second core costs.

    .venv/bin/python benchmarks/pretrain_threads.py [--threads 1 2] [--steps 20] [--warmup 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per thread count")
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)

    import torch

    from pretrain_step import _setup

    step, images, _ = _setup("demo", False, torch.device("cpu"), None, "tuned")
    wall = {n: [] for n in args.threads}
    cpu = {n: [] for n in args.threads}
    for i in range(args.warmup + args.steps):
        for n in args.threads:
            torch.set_num_threads(n)
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            if i >= args.warmup:
                wall[n].append(time.perf_counter() - w0)
                cpu[n].append(time.process_time() - c0)
    base = args.threads[0]
    w_base = statistics.median(wall[base])
    print(f"demo pretraining step ({images} images), {args.steps} timed steps per thread count, interleaved; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print("| threads | wall ms/step | CPU ms/step | speed-up (wall) | CPU / wall |")
    print("|---|---|---|---|---|")
    rows = {}
    for n in args.threads:
        w, c = statistics.median(wall[n]), statistics.median(cpu[n])
        rows[n] = {"wall_s": w, "cpu_s": c, "speedup": w_base / w}
        print(f"| {n} | {1e3 * w:.0f} | {1e3 * c:.0f} | {w_base / w:.2f}x | {c / w:.2f} |")
    return rows


if __name__ == "__main__":
    main()
