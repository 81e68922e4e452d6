# Pretraining: one run per experiment (params experiments.<name>), shared by every table that finetunes from it.


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


rule pretrain:
    """Trains in run-<settings digest>/ (not an output, so an interrupted job keeps its checkpoint): rerun with
    --rerun-incomplete it resumes from that run's last.ckpt; changed settings start a new run directory."""
    input:
        pretrain_stores,
        plan=plan_check,
    output:
        ckpt=f"{CKPT}/{{experiment}}/last.ckpt",
        metrics=f"{CKPT}/{{experiment}}/metrics.jsonl",
    log:
        "logs/pretrain/{experiment}.log",
    params:
        launcher=launcher,
        settings=pretrain_digest,
        run=pretrain_run_dir,
    threads: PARAMS["workflow"]["pretrain"]["threads"]
    resources:
        gpu=PARAMS["workflow"]["pretrain"]["gpu"],
        mem_mb=PARAMS["workflow"]["pretrain"]["mem_mb"],
        # SLURM (snakemake-executor-plugin-slurm): the nodes, one task (a torchrun launcher) per node, its GPUs
        nodes=PARAMS["workflow"]["pretrain"].get("nodes", 1),
        tasks=PARAMS["workflow"]["pretrain"].get("nodes", 1),
        tasks_per_node=1,
        gres=f"gpu:{PARAMS['workflow']['pretrain']['gpu']}" if PARAMS["workflow"]["pretrain"]["gpu"] else "",
    shell:
        """
        resume=""
        if [ -f {params.run}/last.ckpt ]; then resume=--resume; fi
        {params.launcher} pretrain --experiment {wildcards.experiment} --out {params.run} $resume {SETS} > {log} 2>&1
        ln -f {params.run}/last.ckpt {output.ckpt} 2>/dev/null || cp {params.run}/last.ckpt {output.ckpt}
        cp {params.run}/metrics.jsonl {output.metrics}
        """


rule training_curves:
    input:
        f"{CKPT}/{{experiment}}/metrics.jsonl",
    output:
        report(
            f"{RESULTS}/figures/{{experiment}}/training_curves.png",
            caption="../report/curves.rst",
            category="Training curves",
            subcategory="{experiment}",
        ),
    shell:
        "{XGEO_PLOTS} curves {input} {output}"


rule reconstructions:
    """Figure 4: the reconstruction figures pretraining wrote, gathered for the report."""
    input:
        f"{CKPT}/{{experiment}}/last.ckpt",
    output:
        report(
            directory(f"{RESULTS}/figures/{{experiment}}/reconstructions"),
            patterns=["{name}.png"],
            caption="../report/reconstructions.rst",
            category="Reconstructions (Figure 4)",
            subcategory="{experiment}",
        ),
    params:
        figures=lambda w: f"{pretrain_run_dir(w)}/figures",
    shell:
        "{XGEO_PLOTS} gather {params.figures} {output}"
