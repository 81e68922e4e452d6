# Finetune-evaluate: one rule per downstream task, parameterised by experiment, init and setting (fraction[-variant]).
#   results/runs/{experiment}/{task}/{init}/f{fraction}[-{variant}]/seed{k}[-pretrain{p}]/{metrics.json, predictions.npz, run.json}
# one job per cell (and pretraining replicate) runs every finetuning seed k (tables.replicates of them: seed,
# seed + 1, ...) in turn in one process (xgeo finetune --seeds), each seed its own run directory; a table cell is
# their mean ± std.
# workflow.finetune.gpu: the job's GPUs; more than one runs the task data-parallel under torchrun (evaluation on rank 0).


def _replicate_outputs(task, name):
    return [f"{RUNS}/{{experiment}}/{task}/{{init}}/f{{setting}}/seed{k}{{pretrain}}/{name}" for k in FINETUNE_SEEDS]


for _task in TASKS:

    rule:
        name:
            f"finetune_{_task.replace('-', '_')}"
        input:
            unpack(finetune_inputs(_task)),
            plan=plan_check,
        output:
            metrics=_replicate_outputs(_task, "metrics.json"),
            predictions=_replicate_outputs(_task, "predictions.npz"),
            run=_replicate_outputs(_task, "run.json"),
        log:
            f"logs/finetune/{{experiment}}/{_task}/{{init}}/f{{setting}}/seeds{{pretrain}}.log",
        params:
            sets=SETS,
            task=_task,
            launcher=finetune_launcher,
            settings=finetune_digest,
            init=lambda w, input: input.get("weights", "random"),
            fraction=lambda w: split_setting(w.setting)[0],
            variant=finetune_extra_sets,
            out=finetune_out,
            seeds=",".join(map(str, FINETUNE_SEEDS)),
        threads: PARAMS["workflow"]["finetune"]["threads"]
        resources:
            gpu=PARAMS["workflow"]["finetune"]["gpu"],
            mem_mb=PARAMS["workflow"]["finetune"]["mem_mb"],
        conda:
            "../../envs/xgeo.yaml"
        shell:
            "{params.launcher} finetune {params.task} --init {params.init} --out {params.out} --fraction {params.fraction}"
            " --experiment {wildcards.experiment} {params.sets} {params.variant} --seeds {params.seeds} > {log} 2>&1"
