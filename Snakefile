# xgeo: the paper's pipeline. raw data -> Zarr -> pretraining (one per experiment) -> finetuning -> tables + figures.
#   snakemake --cores all results/table3.csv                  the embedded default (synthetic data, demo model)
#   snakemake --cores all results/table3.csv --config profile=paper    Table 11 settings, real data (overlays/paper.yaml)
#   snakemake --cores 2 results/table3.csv --config "pretrain={steps: 20}"   any key of params.yaml, passed to the CLI as --set
#   snakemake --report report.html                            tables, Figure 3, Figure 4 reconstructions, training curves
# Every rule calls the xgeo CLI; params.yaml (validated on start) is the one configuration.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.environ.get("XGEO_PARAMS", "params.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        tables=expand(f"{RESULTS}/{{table}}.csv", table=PARAMS["tables"]["build"]),
        figures=f"{RESULTS}/figures/figure3.png",
