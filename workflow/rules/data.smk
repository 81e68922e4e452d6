# Raw data (synthesised, or downloaded/verified by data.source) -> one Zarr v3 store per dataset.


# The raw folder is named by path, not declared as a directory() output: Snakemake deletes a directory output
# before rerunning a job, which would throw away resumable .part downloads and the files a user placed by hand.
# The flag file is written only after `xgeo data raw` succeeded.
rule raw:
    output:
        touch(f"{RAW}/{{dataset}}.done"),
    params:
        directory=lambda wildcards: f"{RAW}/{wildcards.dataset}",
    log:
        "logs/data/raw_{dataset}.log",
    message:
        f"raw {{wildcards.dataset}} (data.source: {PARAMS['data']['source']})"
    threads: PARAMS["workflow"]["data"]["threads"]
    resources:
        mem_mb=PARAMS["workflow"]["data"]["mem_mb"],
    shell:
        "{XGEO} data raw {wildcards.dataset} {params.directory} {SETS} > {log} 2>&1"


rule convert:
    input:
        f"{RAW}/{{dataset}}.done",
    params:
        raw=lambda wildcards: f"{RAW}/{wildcards.dataset}",
    output:
        directory(f"{ZARR}/{{dataset}}.zarr"),
    log:
        "logs/data/convert_{dataset}.log",
    threads: PARAMS["workflow"]["data"]["threads"]
    resources:
        mem_mb=PARAMS["workflow"]["data"]["mem_mb"],
    shell:
        "{XGEO} data convert {wildcards.dataset} {params.raw} {output} {SETS} > {log} 2>&1"


rule data:
    input:
        [store(d) for d in dict.fromkeys(PARAMS["data"]["pretrain"] + PARAMS["data"]["downstream"])],
