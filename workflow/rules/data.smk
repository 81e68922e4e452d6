# Raw data (synthesised, or downloaded/verified by data.source) -> one Zarr v3 store per dataset.
# The stores that pretraining reads go first (priority: data_priority, common.smk).


# The raw folder is named by path, not declared as a directory() output: Snakemake deletes a directory output
# before rerunning a job, which would throw away resumable .part downloads and the files a user placed by hand.
# The flag file is written only after `xgeo data raw` succeeded.
rule raw:
    output:
        touch(f"{RAW}/{{dataset}}.done"),
    params:
        xgeo=XGEO,
        sets=SETS,
        directory=lambda wildcards: f"{RAW}/{wildcards.dataset}",
    log:
        "logs/data/raw_{dataset}.log",
    message:
        f"raw {{wildcards.dataset}} (data.source: {PARAMS['data']['source']})"
    priority: data_priority
    threads: PARAMS["workflow"]["data"]["threads"]
    resources:
        mem_mb=PARAMS["workflow"]["data"]["mem_mb"],
    conda:
        "../../envs/xgeo.yaml"
    shell:
        "{params.xgeo} data raw {wildcards.dataset} {params.directory} {params.sets} > {log} 2>&1"


# One part of a partitioned conversion (the SLURM profile runs each as its own job; a killed part reruns alone).
rule convert_part:
    wildcard_constraints:
        dataset="[A-Za-z0-9-]+",
        k="[0-9]+",
        n="[0-9]+",
    input:
        f"{RAW}/{{dataset}}.done",
    params:
        xgeo=XGEO,
        sets=SETS,
        raw=lambda wildcards: f"{RAW}/{wildcards.dataset}",
        store=lambda wildcards: f"{ZARR}/{wildcards.dataset}.zarr",
    output:
        temp(directory(f"{ZARR}/{{dataset}}.zarr.parts/{{k}}-of-{{n}}.zarr")),
    log:
        "logs/data/convert_{dataset}_part{k}-of-{n}.log",
    priority: data_priority
    threads: PARAMS["workflow"]["data"]["threads"]
    resources:
        mem_mb=PARAMS["workflow"]["data"]["mem_mb"],
    conda:
        "../../envs/xgeo.yaml"
    shell:
        "{params.xgeo} data convert {wildcards.dataset} {params.raw} {params.store} --part {wildcards.k}/{wildcards.n} "
        "--workers {threads} {params.sets} > {log} 2>&1"


# One pass (data.convert.parts.<dataset> = 1), or the merge of the parts: a store is complete only after it.
rule convert:
    wildcard_constraints:
        dataset="[A-Za-z0-9-]+",
    input:
        convert_inputs,
    params:
        xgeo=XGEO,
        sets=SETS,
        raw=lambda wildcards: f"{RAW}/{wildcards.dataset}",
        command=lambda wildcards, output, threads: (
            f"convert {wildcards.dataset} {RAW}/{wildcards.dataset} {output[0]} --workers {threads}"
            if convert_parts(wildcards.dataset) == 1
            else f"merge {output[0]}"
        ),
    output:
        directory(f"{ZARR}/{{dataset}}.zarr"),
    log:
        "logs/data/convert_{dataset}.log",
    priority: data_priority
    threads: PARAMS["workflow"]["data"]["threads"]
    resources:
        mem_mb=PARAMS["workflow"]["data"]["mem_mb"],
    conda:
        "../../envs/xgeo.yaml"
    shell:
        "{params.xgeo} data {params.command} {params.sets} > {log} 2>&1"


rule data:
    input:
        [store(d) for d in dict.fromkeys(PARAMS["data"]["pretrain"] + PARAMS["data"]["downstream"])],
