# `xgeo plan` before training: under the paper profile every pretraining and finetuning job depends on the plan of
# its experiment, so a misconfigured cluster run (GPUs, sizes, mask, windows, teachers, --config types) fails in
# seconds, before any data is downloaded or any job waits in the queue. The demo profile skips it.


rule plan:
    """Stored sizes come from params (--no-stores: the stores may not exist yet); the job asks for the pretraining's
    GPUs so that, on a cluster, the GPU check runs where the training will."""
    output:
        f"{RESULTS}/plan/{{experiment}}.txt",
    log:
        "logs/plan/{experiment}.log",
    priority: 100  # before the downloads and conversions, which do not wait for it
    resources:
        gpu=PARAMS["workflow"]["pretrain"]["gpu"],
    params:
        xgeo=XGEO,
        sets=SETS,
    conda:
        "../../envs/xgeo.yaml"
    shell:
        "{params.xgeo} plan --no-stores --no-measure --experiment {wildcards.experiment} {params.sets} > {log} 2>&1"
        " && cp {log} {output}"
