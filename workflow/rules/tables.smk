# Paper tables and Figure 3 from the finetuning runs (and results/literature.csv for the cited rows).


rule table:
    input:
        table_inputs,
    output:
        report(f"{RESULTS}/{{table}}.csv", caption="../report/table.rst", category="Tables"),
    log:
        "logs/tables/{table}.log",
    params:
        xgeo=XGEO,
        sets=SETS,
    conda:
        "../../envs/xgeo.yaml"
    shell:
        "{params.xgeo} table {wildcards.table} --out {output} {params.sets} > {log} 2>&1"


rule figure3:
    input:
        run_outputs(xtables.required_cells("figure3", PARAMS)),
    output:
        report(f"{RESULTS}/figures/figure3.png", caption="../report/figure3.rst", category="Figure 3"),
    log:
        "logs/tables/figure3.log",
    params:
        plots=XGEO_PLOTS,
    conda:
        "../../envs/xgeo.yaml"
    shell:
        "{params.plots} figure3 {output} > {log} 2>&1"


rule figures:
    """Training curves and reconstructions of every pretraining the built tables use."""
    input:
        [f"{RESULTS}/figures/{e}/training_curves.png" for e in PARAMS["experiments"]
         if any(c.init == "xgeo" and pretraining_of(PARAMS, c.experiment) == e
                for t in PARAMS["tables"]["build"] for c in xtables.required_cells(t, PARAMS))],
