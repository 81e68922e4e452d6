# Raw data (synthesised, or downloaded/verified by data.source) -> one Zarr v3 store per dataset.


rule raw:
    output:
        directory(f"{RAW}/{{dataset}}"),
    log:
        "logs/data/raw_{dataset}.log",
    message:
        f"raw {{wildcards.dataset}} (data.source: {PARAMS['data']['source']})"
    threads: PARAMS["workflow"]["data"]["threads"]
    resources:
        mem_mb=PARAMS["workflow"]["data"]["mem_mb"],
    shell:
        "{XGEO} data raw {wildcards.dataset} {output} {SETS} > {log} 2>&1"


rule convert:
    input:
        f"{RAW}/{{dataset}}",
    output:
        directory(f"{ZARR}/{{dataset}}.zarr"),
    log:
        "logs/data/convert_{dataset}.log",
    threads: PARAMS["workflow"]["data"]["threads"]
    resources:
        mem_mb=PARAMS["workflow"]["data"]["mem_mb"],
    shell:
        "{XGEO} data convert {wildcards.dataset} {input} {output} {SETS} > {log} 2>&1"


rule data:
    input:
        [store(d) for d in dict.fromkeys(PARAMS["data"]["pretrain"] + PARAMS["data"]["downstream"])],
