# Pretraining: one run per experiment (params experiments.<name>), shared by every table that finetunes from it.


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
        sets=SETS,
        launcher=launcher,
        settings=pretrain_digest,
        run=pretrain_run_dir,
    priority: CRITICAL_PRIORITY  # the critical path (common.smk): started as soon as its stores exist
    threads: PARAMS["workflow"]["pretrain"]["threads"]
    resources:
        gpu=PARAMS["workflow"]["pretrain"]["gpu"],
        mem_mb=PARAMS["workflow"]["pretrain"]["mem_mb"],
        # SLURM (snakemake-executor-plugin-slurm): the nodes, one task (a torchrun launcher) per node, its GPUs
        nodes=PARAMS["workflow"]["pretrain"].get("nodes", 1),
        tasks=PARAMS["workflow"]["pretrain"].get("nodes", 1),
        tasks_per_node=1,
        gres=f"gpu:{PARAMS['workflow']['pretrain']['gpu']}" if PARAMS["workflow"]["pretrain"]["gpu"] else "",
    conda:
        "../../envs/xgeo.yaml"
    shell:
        """
        resume=""
        if [ -f {params.run}/last.ckpt ]; then resume=--resume; fi
        {params.launcher} pretrain --experiment {wildcards.experiment} --out {params.run} $resume {params.sets} > {log} 2>&1
        ln -f {params.run}/last.ckpt {output.ckpt} 2>/dev/null || cp {params.run}/last.ckpt {output.ckpt}
        cp {params.run}/metrics.jsonl {output.metrics}
        """


rule pretrain_replicate:
    """tables.pretrain_replicates > 1: the experiment pretrained again with seed {pseed} (its own run directory),
    for the table rows that span pretraining seeds; not in the DAG when it is 1."""
    wildcard_constraints:
        pseed="[0-9]+",
    input:
        pretrain_stores,
        plan=plan_check,
    output:
        ckpt=f"{CKPT}/{{experiment}}/pretrain{{pseed}}/last.ckpt",
        metrics=f"{CKPT}/{{experiment}}/pretrain{{pseed}}/metrics.jsonl",
    log:
        "logs/pretrain/{experiment}-pretrain{pseed}.log",
    params:
        sets=SETS,
        launcher=launcher,
        settings=pretrain_digest,
        run=pretrain_run_dir,
    threads: PARAMS["workflow"]["pretrain"]["threads"]
    resources:
        gpu=PARAMS["workflow"]["pretrain"]["gpu"],
        mem_mb=PARAMS["workflow"]["pretrain"]["mem_mb"],
        nodes=PARAMS["workflow"]["pretrain"].get("nodes", 1),
        tasks=PARAMS["workflow"]["pretrain"].get("nodes", 1),
        tasks_per_node=1,
        gres=f"gpu:{PARAMS['workflow']['pretrain']['gpu']}" if PARAMS["workflow"]["pretrain"]["gpu"] else "",
    conda:
        "../../envs/xgeo.yaml"
    shell:
        """
        resume=""
        if [ -f {params.run}/last.ckpt ]; then resume=--resume; fi
        {params.launcher} pretrain --experiment {wildcards.experiment} --out {params.run} $resume {params.sets} --set seed={wildcards.pseed} > {log} 2>&1
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
    log:
        "logs/figures/{experiment}/training_curves.log",
    params:
        plots=XGEO_PLOTS,
    conda:
        "../../envs/xgeo.yaml"
    shell:
        "{params.plots} curves {input} {output} > {log} 2>&1"


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
    log:
        "logs/figures/{experiment}/reconstructions.log",
    params:
        plots=XGEO_PLOTS,
        figures=lambda w: f"{pretrain_run_dir(w)}/figures",
    conda:
        "../../envs/xgeo.yaml"
    shell:
        "{params.plots} gather {params.figures} {output} > {log} 2>&1"
