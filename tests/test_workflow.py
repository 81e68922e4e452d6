"""Snakemake workflow: schema validation on start, the dry-run DAG of the tables, profile and --config overrides."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def workdir(tmp_path, root):
    """A directory with the project's params, overlays and literature: the workflow runs there, nothing is built."""
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "overlays", tmp_path / "overlays")
    (tmp_path / "results").mkdir()
    shutil.copy(root / "results" / "literature.csv", tmp_path / "results" / "literature.csv")
    return tmp_path


def snakemake(root: Path, workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(workdir), "--cores", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=workdir)


def job_counts(text: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: {rule: count}."""
    block = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m.group(1) != "total"}


def test_schema_rejects_bad_params(root, workdir):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["pretrain"]["steps"] = "many"
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    res = snakemake(root, workdir, "-n", "results/table3.csv")
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert "'many' is not of type 'integer'" in text
    assert "steps" in text


def test_schema_rejects_unknown_section(root, workdir):
    with open(workdir / "params.yaml", "a") as fh:
        fh.write("\npretrian: {steps: 3}\n")
    res = snakemake(root, workdir, "-n", "results/table3.csv")
    assert res.returncode != 0
    assert "'pretrian' was unexpected" in res.stdout + res.stderr


def test_table3_dag(root, workdir):
    res = snakemake(root, workdir, "-n", "results/table3.csv")
    assert res.returncode == 0, res.stderr
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    n_data = len(set(params["data"]["pretrain"]) | set(params["data"]["downstream"]))
    reps = params["tables"]["replicates"]
    assert reps >= 2
    assert job_counts(res.stdout) == {
        "raw": n_data, "convert": n_data, "pretrain": 1, "table": 1,
        # XGeo and Random (IN-22k weights absent): BEN 10 % and 100 %, and one cell of each other task; one job
        # per cell runs its tables.replicates finetuning seeds (seed, seed + 1, ...)
        "finetune_bigearthnet": 4, "finetune_sen12ms_cr": 2, "finetune_spacenet2": 2, "finetune_vaihingen": 2,
    }
    assert "results/runs/xgeo/bigearthnet/xgeo/f0.1/seed0/metrics.json" in res.stdout
    assert f"results/runs/xgeo/bigearthnet/random/f1/seed{reps - 1}/metrics.json" in res.stdout
    shell = snakemake(root, workdir, "-n", "-p", "results/table3.csv").stdout
    seeds = ",".join(str(params["seed"] + k) for k in range(reps))
    assert f"--out results/runs/xgeo/bigearthnet/xgeo/f0.1/seed{{seed}} --fraction 0.1" in shell
    assert shell.count(f"--seeds {seeds} ") == 10 and "--set seed=" not in shell
    assert "checkpoints/xgeo/last.ckpt" in res.stdout


def test_ablation_tables_share_pretrainings(root, workdir):
    res = snakemake(root, workdir, "-n", "results/table7.csv", "results/table6.csv", "results/table13.csv")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    # Table 7: five pretraining variants (one of them xgeo, shared with Tables 6 and 13); Table 6 adds homogeneous
    assert counts["pretrain"] == 6
    pretrained = set(re.findall(r"checkpoints/([\w-]+)/last\.ckpt", res.stdout))
    assert pretrained == {"xgeo", "homogeneous", "dense-nocross", "moe-nocross", "dense-cross50", "moe-cross100"}
    assert "results/runs/xgeo/bigearthnet/xgeo/f0.01-fusion_separate/seed0/metrics.json" in res.stdout


def test_profile_paper_and_config_overrides(root, workdir):
    demo = snakemake(root, workdir, "-n", "-p", "results/table3.csv")
    paper = snakemake(root, workdir, "-n", "-p", "results/table3.csv", "--config", "profile=paper", "pretrain={steps: 7}")
    assert demo.returncode == 0 and paper.returncode == 0, paper.stderr
    assert "data.source: synthetic" in demo.stdout and "data.source: remote" not in demo.stdout
    assert "data.source: remote" in paper.stdout  # overlays/paper.yaml reached the workflow
    assert "--set profile=demo" in demo.stdout and "--set profile=paper" not in demo.stdout
    commands = [line for line in paper.stdout.splitlines() if " -m xgeo.cli " in line]
    assert commands and all("--set profile=paper" in c and "--set pretrain.steps=7" in c for c in commands)


def test_dvc_pipeline_lists_every_table_and_shared_pretraining(root):
    """`dvc repro` needs the committed .dvc/ and a dvc.yaml whose foreach stages resolve against params.yaml."""
    dvc = Path(sys.executable).with_name("dvc")
    res = subprocess.run([str(dvc), "stage", "list", "--name-only"], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    stages = set(res.stdout.split())
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert {f"table@{t}" for t in params["tables"]["build"]} <= stages
    assert {f"zarr@{d}" for d in params["data"]["datasets"]} <= stages
    assert {"pretrain@xgeo", "pretrain@moe-cross100", "pretrain@s1-only"} <= stages


def test_finetune_rules_pass_their_gpus_on(root, workdir):
    """workflow.finetune.gpu > 1: every finetune job runs under torchrun with one process per GPU."""
    res = snakemake(root, workdir, "-n", "-p", "results/table3.csv", "--config",
                    "workflow={finetune: {gpu: 2, threads: 1, mem_mb: 4000}}")
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if " finetune " in line and "xgeo.cli" in line]
    assert len(lines) == 10  # 10 cells of Table 3, one job each (all its finetuning seeds)
    assert all("-m torch.distributed.run --standalone --nproc_per_node 2 -m xgeo.cli finetune" in c for c in lines)
    one = snakemake(root, workdir, "-n", "-p", "results/table3.csv")
    assert "torch.distributed.run" not in one.stdout


def test_paper_profile_runs_the_plan_before_training(root, workdir):
    """Under profile=paper each experiment's `xgeo plan` precedes its pretraining and finetuning jobs; a plan that
    fails stops the run before any of them starts."""
    res = snakemake(root, workdir, "-n", "-p", "results/table3.csv", "--config", "profile=paper")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["plan"] == 1 and counts["pretrain"] == 1
    assert "plan --no-stores --no-measure --experiment xgeo" in res.stdout
    dag = snakemake(root, workdir, "--dag", "dot", "--config", "profile=paper", "--", "results/table3.csv")
    nodes = dict(re.findall(r'(\d+)\[label = "(\w+)', dag.stdout))
    edges = re.findall(r"(\d+) -> (\d+)", dag.stdout)
    after_plan = {nodes[b] for a, b in edges if nodes[a] == "plan"}
    assert {"pretrain", "finetune_bigearthnet", "finetune_vaihingen", "finetune_sen12ms_cr",
            "finetune_spacenet2"} <= after_plan
    demo = snakemake(root, workdir, "-n", "results/table3.csv")
    assert "plan" not in job_counts(demo.stdout)


def test_pretrain_launcher_per_node_count(root, workdir):
    """One node with several GPUs: torchrun --standalone; nodes > 1: srun starts one torchrun per node, meeting at
    a c10d rendezvous on the allocation's first node."""
    multi = snakemake(root, workdir, "-n", "-p", "--config",
                      "workflow={pretrain: {gpu: 4, nodes: 2, threads: 2, mem_mb: 8000}}", "--",
                      "checkpoints/xgeo/last.ckpt")
    assert multi.returncode == 0, multi.stderr
    line = next(x for x in multi.stdout.splitlines() if " pretrain --experiment xgeo" in x)
    assert line.strip().startswith("srun --nodes 2 --ntasks-per-node 1")
    assert "-m torch.distributed.run --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint" in line
    assert '--rdzv-id "xgeo-$SLURM_JOB_ID"' in line and "--standalone" not in line
    one = snakemake(root, workdir, "-n", "-p", "--config", "workflow={pretrain: {gpu: 2, threads: 2, mem_mb: 8000}}",
                    "--", "checkpoints/xgeo/last.ckpt")
    line = next(x for x in one.stdout.splitlines() if " pretrain --experiment xgeo" in x)
    assert "-m torch.distributed.run --standalone --nproc_per_node 2 -m xgeo.cli pretrain" in line
    assert "srun" not in line


def test_snakemake_lint_is_clean(root, workdir):
    """Every rule declares its conda env, log and the settings it uses as params (Snakemake's own provenance)."""
    proc = snakemake(root, workdir, "--lint")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in text, text[-3000:]
    assert "Congratulations, your workflow is in a good condition" in text


def dry_run_jobs(text: str) -> list[dict]:
    """The job blocks of a dry run: [{'rule': name, 'wildcards': '...', 'priority': n, 'threads': n}]."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", text, flags=re.M)[1:]:
        rule = block.split(":", 1)[0].strip()
        fields = dict(re.findall(r"^\s+(wildcards|priority|threads): (.*)$", block, re.M))
        jobs.append({"rule": rule, "wildcards": fields.get("wildcards", ""),
                     "priority": int(fields.get("priority", 0)), "threads": int(fields.get("threads", 1))})
    return jobs


def test_critical_path_is_scheduled_first(root, workdir):
    """Pretraining data -> pretrain carry a priority above every other job of table3 (Snakemake starts them first)
    and the demo's pretraining takes one core, so a 1-thread job can run beside it instead of it waiting for both."""
    res = snakemake(root, workdir, "-n", "results/table3.csv")
    assert res.returncode == 0, res.stderr
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    jobs = dry_run_jobs(res.stdout)
    assert params["workflow"]["pretrain"]["threads"] == 1
    pretrain = [j for j in jobs if j["rule"] == "pretrain"]
    assert len(pretrain) == 1 and pretrain[0]["threads"] == 1 and pretrain[0]["priority"] > 0
    critical = {f"dataset={d}" for d in params["data"]["pretrain"]}
    # the raw jobs (same priority function) print their message instead of their fields in a dry run
    data_jobs = [j for j in jobs if j["rule"] == "convert"]
    assert len(data_jobs) == len(set(params["data"]["pretrain"]) | set(params["data"]["downstream"]))
    for j in data_jobs:
        assert j["priority"] == (pretrain[0]["priority"] if j["wildcards"] in critical else 0), j
    others = [j for j in jobs if j["rule"] not in ("raw", "convert", "pretrain")]
    assert others and max(j["priority"] for j in others) < pretrain[0]["priority"]


def test_profile_demo_long_changes_only_the_table3_finetuning_schedule(root):
    """overlays/demo-long.yaml: the demo with 300 finetuning steps (30 warm-up) for the four Table 3 tasks."""
    from xgeo.config import load_params

    demo = load_params(root / "params.yaml")
    long = load_params(root / "params.yaml", ["profile=demo-long"])
    tasks = ("bigearthnet", "vaihingen", "sen12ms-cr", "spacenet2")
    assert [demo["finetune"][t]["steps"] for t in tasks] == [100] * 4
    assert [(long["finetune"][t]["steps"], long["finetune"][t]["warmup_steps"]) for t in tasks] == [(300, 30)] * 4
    for t in tasks:  # the rest of each task's settings is the demo's
        demo["finetune"][t].update(steps=300, warmup_steps=30)
    assert dict(demo, profile="demo-long") == long


def test_documented_snakemake_commands_name_their_targets_before_config(root):
    """`--config` takes every following word as a key=value pair: a target after it is a Snakemake error."""
    docs = [root / "README.md", root / "Snakefile", *sorted((root / "overlays").glob("*.yaml")),
            root / "workflow" / "profiles" / "slurm" / "config.yaml"]
    bad = []
    for path in docs:
        for line in path.read_text().splitlines():
            for cmd in re.findall(r"snakemake [^`#\n]*", line):
                words = re.split(r"\s{2,}|\s\(", cmd.strip())[0].split()  # the command, not the comment after it
                if "--config" in words and any("=" not in w and not w.startswith(("-", '"', "'", "...")) and
                                               not w.endswith(('"', "'", "}"))
                                               for w in words[words.index("--config") + 1:]):
                    bad.append(f"{path.name}: {cmd.strip()}")
    assert not bad, bad
