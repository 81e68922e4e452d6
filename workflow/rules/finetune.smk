# Finetune-evaluate: one rule per downstream task, parameterised by experiment, init and setting (fraction[-variant]).
#   results/runs/{experiment}/{task}/{init}/f{fraction}[-{variant}]/seed{seed}/{metrics.json, predictions.npz, run.json}
# one run per finetuning seed (tables.replicates of them: seed, seed + 1, ...); a table cell is their mean ± std
# workflow.finetune.gpu: the job's GPUs; more than one runs the task data-parallel under torchrun (evaluation on rank 0).


for _task in TASKS:

    rule:
        name:
            f"finetune_{_task.replace('-', '_')}"
        input:
            unpack(finetune_inputs(_task)),
            plan=plan_check,
        output:
            metrics=f"{RUNS}/{{experiment}}/{_task}/{{init}}/f{{setting}}/seed{{seed}}/metrics.json",
            predictions=f"{RUNS}/{{experiment}}/{_task}/{{init}}/f{{setting}}/seed{{seed}}/predictions.npz",
            run=f"{RUNS}/{{experiment}}/{_task}/{{init}}/f{{setting}}/seed{{seed}}/run.json",
        log:
            f"logs/finetune/{{experiment}}/{_task}/{{init}}/f{{setting}}/seed{{seed}}.log",
        params:
            sets=SETS,
            task=_task,
            launcher=finetune_launcher,
            settings=finetune_digest,
            init=lambda w, input: input.get("weights", "random"),
            fraction=lambda w: split_setting(w.setting)[0],
            variant=finetune_extra_sets,
            out=lambda w, output: os.path.dirname(output.metrics),
            seed=finetune_seed,
        threads: PARAMS["workflow"]["finetune"]["threads"]
        resources:
            gpu=PARAMS["workflow"]["finetune"]["gpu"],
            mem_mb=PARAMS["workflow"]["finetune"]["mem_mb"],
        conda:
            "../../envs/xgeo.yaml"
        shell:
            "{params.launcher} finetune {params.task} --init {params.init} --out {params.out} --fraction {params.fraction}"
            " --experiment {wildcards.experiment} {params.sets} {params.variant} --set seed={params.seed} > {log} 2>&1"
