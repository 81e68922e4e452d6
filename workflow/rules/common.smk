# Helpers shared by the rules: resolved params (profile overlay + experiments + --config overrides), paths, inputs.
import functools
import hashlib
import json
import shlex
import sys

from snakemake.utils import validate

from xgeo import tables as xtables
from xgeo.catalog import CATALOG
from xgeo.config import load_params, pretraining_of

PARAMS_FILE = os.environ.get("XGEO_PARAMS", "params.yaml")

def config_overrides(config):
    """--set arguments for what `snakemake --config` changed: the profile, and every leaf that differs from the file.

    `--config profile=paper` or `--config "pretrain={steps: 7}"`: Snakemake merges these into the params file's
    mapping; the CLI re-reads the file, so each changed leaf travels as --set key.path=value.
    """
    from xgeo.config import flatten, parse_value, read_yaml

    base = flatten(read_yaml(PARAMS_FILE))
    out = [f"profile={config.get('profile', 'demo')}"]
    for key, value in flatten(config).items():
        # Snakemake leaves nested --config values as strings: read them as YAML, as --set does
        value = parse_value(value) if isinstance(value, str) else value
        if key != "profile" and (key not in base or base[key] != value):
            out.append(f"{key}={json.dumps(value)}")
    return out


OVERRIDES = config_overrides(config)
# every CLI call sees the same parameters as this workflow
SETS = " ".join(f"--params {shlex.quote(PARAMS_FILE)}".split() + [f"--set {shlex.quote(o)}" for o in OVERRIDES])
PARAMS = load_params(PARAMS_FILE, OVERRIDES)
# the resolved parameters (file + profile overlay + --config) are what the jobs will see: check those
validate(PARAMS, "../schemas/params.schema.yaml", set_default=False)
# the CLI of the interpreter running Snakemake (no reliance on PATH)
XGEO = f"{shlex.quote(sys.executable)} -m xgeo.cli"
# figures (xgeo.plots has a small command line of its own: curves, gather, figure3)
XGEO_PLOTS = f"{shlex.quote(sys.executable)} -m xgeo.plots {SETS}"

RAW = PARAMS["paths"]["raw"]
ZARR = PARAMS["paths"]["zarr"]
CKPT = PARAMS["paths"]["checkpoints"]
RUNS = PARAMS["paths"]["runs"]
RESULTS = PARAMS["paths"]["results"]
TASKS = ("bigearthnet", "vaihingen", "sen12ms-cr", "spacenet2")
TASKS += ("oscd", "dsifn", "whu")  # the appendix suite (Tables 8 and 9)
# the finetuning seeds of every cell (tables.replicates): one finetune job runs them all (finetune.smk)
FINETUNE_SEEDS = xtables.seeds(PARAMS)


wildcard_constraints:
    dataset="|".join(CATALOG),
    experiment="|".join(PARAMS["experiments"]),
    init=r"[A-Za-z0-9_]+",
    setting=r"[0-9.]+(-[A-Za-z0-9_]+)?",
    pretrain=r"(-pretrain[0-9]+)?",  # a run directory's pretraining seed, if any (tables.pretrain_replicates > 1)
    table=r"table[0-9]+",


@functools.cache
def exp_params(experiment):
    """Resolved params of one experiment (profile, experiment overrides, --config overrides)."""
    return load_params(PARAMS_FILE, OVERRIDES, experiment=experiment)


def digest(obj):
    """A short hash of resolved settings: a rule's params change (and Snakemake reruns it) when they change."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def pretrain_digest(wildcards):
    p = exp_params(wildcards.experiment)
    pseed = getattr(wildcards, "pseed", None)  # a pretraining replicate (rule pretrain_replicate)
    p = p if pseed is None else dict(p, seed=int(pseed))
    return digest({k: p.get(k) for k in ("seed", "data", "model", "pretrain")})


def pretrain_run_dir(wildcards):
    """Where a pretraining trains: one directory per experiment and settings, kept across interrupted jobs."""
    return f"{CKPT}/{wildcards.experiment}/run-{pretrain_digest(wildcards)}"


def finetune_digest(wildcards):
    p = exp_params(wildcards.experiment)
    # every setting xgeo.provenance records, so Snakemake reruns a finetune when one changes
    return digest([FINETUNE_SEEDS, wildcards.pretrain, p.get("profile"), p.get("model"), p.get("finetune"),
                   p["data"]["source"], p["data"]["datasets"], finetune_extra_sets(wildcards)])


def store(dataset):
    return f"{ZARR}/{dataset}.zarr"


def pretrain_stores(wildcards):
    """The Zarr stores of the experiment's pretraining groups."""
    from xgeo.pretrain.groups import effective_groups

    groups = effective_groups(exp_params(wildcards.experiment))
    return sorted({store(d) for g in groups.values() for d in g["datasets"]})


def split_setting(setting):
    """'0.1-fusion_separate' -> (0.1, 'fusion_separate'); '1' -> (1.0, None)."""
    fraction, _, variant = setting.partition("-")
    return float(fraction), variant or None


def finetune_inputs(task):
    """Input function of a finetune rule: the task's store and the initial weights of {init}."""

    def inputs(wildcards):
        out = {"store": store(task)}
        if wildcards.init == "xgeo":
            pseed = pretrain_seed(wildcards)
            out["weights"] = str(xtables.pretrain_checkpoint(PARAMS, wildcards.experiment, pseed))
        elif wildcards.init != "random":
            out["weights"] = str(xtables.init_weights(PARAMS, wildcards.init))
        return out

    return inputs


def pretrain_seed(wildcards):
    """The pretraining seed p of a finetune job's run directories seed<k>-pretrain<p> (None: seed<k>)."""
    return xtables.parse_replicate(f"seed0{wildcards.pretrain}")[1]


def finetune_out(wildcards, output):
    """xgeo finetune --out of a job: its run directories seed<k>[-pretrain<p>] as the template seed{seed}[...]."""
    return os.path.join(os.path.dirname(os.path.dirname(output.metrics[0])), f"seed{{seed}}{wildcards.pretrain}")


def finetune_extra_sets(wildcards):
    """--set arguments of the run's finetune variant (tables.variants.<name>)."""
    _, variant = split_setting(wildcards.setting)
    return " ".join(f"--set {shlex.quote(o)}" for o in xtables.variant_overrides(PARAMS, variant))


def run_outputs(cells):
    """metrics.json of every replicate (tables.replicates finetuning seeds) of each cell."""
    return [f"{d}/metrics.json" for c in cells for _, d in c.replicate_dirs(PARAMS)]


def table_inputs(wildcards):
    return run_outputs(xtables.required_cells(wildcards.table, PARAMS)) + [f"{RESULTS}/literature.csv"]


# ---- used by data.smk


def convert_parts(dataset):
    """data.convert.parts.<dataset>: parts converted as separate jobs (default 1: one pass)."""
    return int(PARAMS["data"]["convert"].get("parts", {}).get(dataset, 1))


def convert_inputs(wildcards):
    n = convert_parts(wildcards.dataset)
    if n == 1:
        return [f"{RAW}/{wildcards.dataset}.done"]
    return [f"{ZARR}/{wildcards.dataset}.zarr.parts/{k}-of-{n}.zarr" for k in range(1, n + 1)]


# ---- used by plan.smk


def plan_check(wildcards):
    """The plan of the job's experiment under the paper profile; nothing under the demo profile."""
    if PARAMS.get("profile") != "paper":
        return []
    return [f"{RESULTS}/plan/{wildcards.experiment}.txt"]


# ---- used by pretrain.smk


RDZV_PORT = 29400  # torchrun's c10d default, on the first node of the allocation


def launcher(wildcards, resources):
    """How the pretraining starts: one process per GPU under torchrun when the job has more than one GPU
    (--standalone on one node); with workflow.pretrain.nodes > 1, srun starts one torchrun per node of the SLURM
    allocation and they meet at a c10d rendezvous on the allocation's first node; the plain CLI otherwise."""
    python = shlex.quote(sys.executable)
    nodes = int(PARAMS["workflow"]["pretrain"].get("nodes", 1))
    per_node = max(1, resources.gpu)
    if nodes > 1:
        return (f"srun --nodes {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 "
                f"{python} -m torch.distributed.run --nnodes {nodes} --nproc_per_node {per_node} "
                f"--rdzv-backend c10d "
                f'--rdzv-endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):{RDZV_PORT}" '
                f'--rdzv-id "xgeo-$SLURM_JOB_ID" -m xgeo.cli')
    if resources.gpu > 1:
        return f"{python} -m torch.distributed.run --standalone --nproc_per_node {resources.gpu} -m xgeo.cli"
    return XGEO


# ---- used by finetune.smk


def finetune_launcher(wildcards, resources):
    """One process per GPU under torchrun when the job has more than one GPU; the plain CLI otherwise."""
    if resources.gpu > 1:
        return (f"{shlex.quote(sys.executable)} -m torch.distributed.run --standalone "
                f"--nproc_per_node {resources.gpu} -m xgeo.cli")
    return XGEO


# ---- scheduling. The critical path of a run is pretraining data -> pretrain -> the finetunes from its checkpoint:
# the raw and convert jobs of the pretraining stores (data.smk) and the pretrain rule carry CRITICAL_PRIORITY, so
# Snakemake starts them before the downstream data and the finetunes from other weights, which fill the other cores.
# (A rule's priority: applies to its own jobs only; Snakemake does not raise the jobs they wait for.)
CRITICAL_PRIORITY = 50


@functools.cache
def pretrain_datasets():
    """Every dataset some experiment pretrains on: data.pretrain and the datasets of each experiment's groups."""
    from xgeo.pretrain.groups import effective_groups

    names = set(PARAMS["data"]["pretrain"])
    for experiment in [None, *PARAMS.get("experiments", {})]:
        names |= {d for g in effective_groups(exp_params(experiment)).values() for d in g["datasets"]}
    return names


def data_priority(wildcards):
    """CRITICAL_PRIORITY for the raw data and stores that pretraining reads, 0 for the others."""
    return CRITICAL_PRIORITY if wildcards.dataset in pretrain_datasets() else 0
