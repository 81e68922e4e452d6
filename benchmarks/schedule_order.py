"""When does Snakemake start the pretraining job? A model of the default run's DAG, scheduled by Snakemake itself.

The model: 4 pretraining-data jobs -> pretrain -> N finetunes from its checkpoint; N finetunes from random weights
and 4 downstream-data jobs beside them (every finetune reads the first downstream store). Jobs sleep for their duration (in time units of ``--unit`` seconds), so the
measurement does not depend on the machine's load. Run with ``--cores 2`` as the default pipeline on 2 cores, once
per configuration: the old one (pretrain on 2 threads, no priorities), priorities alone, and the new one (pretrain
on 1 thread, the pretraining data and pretrain with priority 50, as ``workflow/rules/common.smk``). The lower bound
of the makespan is the total work over 2 cores. Prints when pretraining starts
and the makespan, from the jobs' own start and end stamps.

    .venv/bin/python benchmarks/schedule_order.py [--unit 0.5] [--finetunes 8] [--pretrain 16] [--speedup 1.2]

Durations: data 1 unit, finetune 2 units, pretrain ``--pretrain`` units on 1 thread (``--pretrain / --speedup`` on 2).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

SNAKEFILE = '''
N = {finetunes}
rule all:
    input: expand("ft_xgeo_{{i}}", i=range(N)), expand("ft_random_{{i}}", i=range(N)), expand("store_down_{{d}}", d=range(4))
rule data:
    output: "store_{{kind}}_{{d}}"
    priority: lambda w: {priority} if w.kind == "pre" else 0
    shell: "echo start $(date +%s.%N) > {{output}}; sleep {unit}; echo end $(date +%s.%N) >> {{output}}"
rule pretrain:
    input: expand("store_pre_{{d}}", d=range(4))
    output: "ckpt"
    threads: {threads}
    priority: {priority}
    shell: "echo start $(date +%s.%N) > {{output}}; sleep {pretrain_s}; echo end $(date +%s.%N) >> {{output}}"
rule ft_xgeo:
    input: "ckpt", "store_down_0"
    output: "ft_xgeo_{{i}}"
    shell: "echo start $(date +%s.%N) > {{output}}; sleep {ft_s}; echo end $(date +%s.%N) >> {{output}}"
rule ft_random:
    input: "store_down_0"
    output: "ft_random_{{i}}"
    shell: "echo start $(date +%s.%N) > {{output}}; sleep {ft_s}; echo end $(date +%s.%N) >> {{output}}"
'''


def run(threads: int, priority: int, args) -> dict:
    pretrain_s = args.unit * args.pretrain / (args.speedup if threads > 1 else 1.0)
    text = SNAKEFILE.format(finetunes=args.finetunes, priority=priority, unit=args.unit, threads=threads,
                            pretrain_s=round(pretrain_s, 3), ft_s=2 * args.unit)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Snakefile").write_text(text)
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "-q", "all", "-d", tmp, "-s",
                        str(Path(tmp, "Snakefile")), "all"], check=True, capture_output=True, text=True)
        stamps = {}
        for f in Path(tmp).iterdir():
            if f.name.startswith(("store_", "ckpt", "ft_")):
                lines = dict(line.split() for line in f.read_text().splitlines())
                stamps[f.name] = (float(lines["start"]), float(lines["end"]))
    t0 = min(s for s, _ in stamps.values())
    return {"pretrain_start": (stamps["ckpt"][0] - t0) / args.unit,
            "makespan": (max(e for _, e in stamps.values()) - t0) / args.unit}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unit", type=float, default=0.5, help="seconds per time unit")
    ap.add_argument("--finetunes", type=int, default=8, help="finetunes per initialisation")
    ap.add_argument("--pretrain", type=float, default=16, help="pretraining units on 1 thread")
    ap.add_argument("--speedup", type=float, default=1.2, help="speed-up of pretraining on 2 threads")
    args = ap.parse_args(argv)
    rows = []
    configs = (("old: 2 threads, no priority", 2, 0), ("2 threads, priority 50", 2, 50),
               ("new: 1 thread, priority 50", 1, 50))
    for name, threads, priority in configs:
        r = run(threads, priority, args)
        rows.append({"config": name, **r})
    base = rows[0]["makespan"]
    work = 8 + args.pretrain + 4 * args.finetunes
    print(f"Snakemake, --cores 2, {args.finetunes} + {args.finetunes} finetunes of 2 units, pretraining "
          f"{args.pretrain:g} units on 1 thread ({args.speedup:g}x on 2), data jobs 1 unit; times in units; "
          f"lower bound of the makespan (1-thread work / 2 cores) {work / 2:g}")
    print("| configuration | pretraining starts | makespan | makespan vs old |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['pretrain_start']:.1f} | {r['makespan']:.1f} | {r['makespan'] / base:.2f} |")
    return rows


if __name__ == "__main__":
    main()
