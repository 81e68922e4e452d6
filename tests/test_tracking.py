"""MLflow tracking: params flattened, metrics with steps, no-op when disabled, nothing lost under parallel writers."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from xgeo import tracking


def test_resolve_store_relative_to_root(tmp_path):
    store = tracking.resolve_store({"mlflow": {"tracking_uri": "sqlite:///sub/mlflow.db"}}, root=tmp_path)
    assert store.db == (tmp_path / "sub" / "mlflow.db").resolve()
    assert store.uri == f"sqlite:///{store.db}"
    assert store.lock_path == store.db.with_name("mlflow.db.lock")
    assert store.artifacts == store.db.parent / "mlartifacts"
    absolute = tracking.resolve_store({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/a.db"}}, root="/elsewhere")
    assert absolute.db == (tmp_path / "a.db").resolve()
    with pytest.raises(tracking.TrackingError, match="tracking_uri"):
        tracking.resolve_store({"mlflow": {"tracking_uri": None}})


def test_disabled_is_noop(tmp_path, load):
    params = load("mlflow.enabled=false")
    with tracking.start_run(params, experiment="x", run_name="r") as run:
        run.log_params({"a": {"b": 1}})
        run.log_metrics({"loss": 1.0}, step=1)
    assert run.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_run_logs_params_metrics_tags_artifacts(tmp_path, load):
    params = load(experiment="xgeo")
    with tracking.start_run(params, experiment="unit", run_name="r1", tags={"xgeo.task": "bigearthnet"}) as run:
        run.log_params({"model": {"size": "demo", "moe": {"num_experts": 8}}})
        run.log_params({"model": {"size": "demo"}})  # same value again: skipped, not an error
        for step, loss in enumerate([3.0, 2.0, 1.5]):
            run.log_metrics({"loss": loss, "sensor": {"s2": loss / 2}}, step=step)
        note = tmp_path / "note.txt"
        note.write_text("hello")
        run.log_artifact(note)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        run.log_figure(fig, "figures/curve.png")
        plt.close(fig)
    got = tracking.get_run(params, run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["model.size"] == "demo"
    assert got.data.params["model.moe.num_experts"] == "8"
    assert got.data.metrics == {"loss": 1.5, "sensor.s2": 0.75}
    assert got.data.tags["xgeo.task"] == "bigearthnet"
    assert got.data.tags["xgeo.experiment"] == "xgeo"
    client = tracking._client(tracking.resolve_store(params))
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.5)]
    artifacts = tmp_path / "mlartifacts" / "unit"
    assert (next(artifacts.rglob("note.txt"))).read_text() == "hello"
    assert next(artifacts.rglob("curve.png")).stat().st_size > 0
    found = tracking.search_runs(params, "unit", "tags.`xgeo.task` = 'bigearthnet'")
    assert [r.info.run_id for r in found] == [run.run_id]
    assert tracking.get_run(params, "0" * 32) is None


def test_failed_block_marks_run_failed(load):
    params = load()
    with pytest.raises(RuntimeError):
        with tracking.start_run(params, experiment="unit") as run:
            raise RuntimeError("boom")
    assert tracking.get_run(params, run.run_id).info.status == "FAILED"


def test_bad_metric_names_key(load):
    params = load()
    with tracking.start_run(params, experiment="unit") as run:
        with pytest.raises(tracking.TrackingError, match="'acc'"):
            run.log_metrics({"acc": "high"})


def _worker(args):
    db, worker, runs, steps = args
    params = {"profile": "demo", "mlflow": {"enabled": True, "tracking_uri": f"sqlite:///{db}"}}
    ids = []
    for r in range(runs):
        with tracking.start_run(params, experiment="parallel", run_name=f"w{worker}r{r}", tags={"worker": worker}) as run:
            run.log_params({"worker": worker, "run": r})
            for step in range(steps):
                run.log_metrics({"value": worker * 1000 + r * 100 + step}, step=step)
        ids.append(run.run_id)
    return ids


def test_parallel_processes_lose_nothing(tmp_path):
    """Four processes create the store, runs and metrics at once: every run and every metric arrives."""
    db = tmp_path / "mlflow.db"
    workers, runs, steps = 4, 2, 5
    ctx = mp.get_context("spawn")  # fresh interpreters, like separate Snakemake jobs
    with ctx.Pool(workers) as pool:
        results = pool.map(_worker, [(db, w, runs, steps) for w in range(workers)])
    params = {"mlflow": {"enabled": True, "tracking_uri": f"sqlite:///{db}"}}
    client = tracking._client(tracking.resolve_store(params))
    found = tracking.search_runs(params, "parallel")
    assert sorted(r.info.run_id for r in found) == sorted(i for ids in results for i in ids)
    assert len(found) == workers * runs
    for w, ids in enumerate(results):
        for r, run_id in enumerate(ids):
            history = client.get_metric_history(run_id, "value")
            assert sorted((m.step, m.value) for m in history) == [(s, w * 1000 + r * 100 + s) for s in range(steps)]
            assert tracking.get_run(params, run_id).info.status == "FINISHED"
    assert Path(str(db) + ".lock").exists()


def test_experiments_open_on_runs_names_carry_the_experiment_and_stores_are_dataset_inputs(tmp_path, load):
    params = load(experiment="xgeo")
    with tracking.start_run(params, experiment="finetune", run_name="bigearthnet/random/f0.1/seed0") as run:
        run.log_input("bigearthnet:train", "0123456789abcdef", "train", 2000, tmp_path / "bigearthnet.zarr")
        run.log_input("bigearthnet:val", "0123456789abcdef", "val", 200, tmp_path / "bigearthnet.zarr")
    got = tracking.get_run(params, run.run_id)
    assert got.info.run_name == "xgeo/bigearthnet/random/f0.1/seed0"
    inputs = {d.dataset.name: d for d in got.inputs.dataset_inputs}
    assert set(inputs) == {"bigearthnet:train", "bigearthnet:val"}
    train = inputs["bigearthnet:train"]
    assert train.dataset.digest == "0123456789abcdef" and '"num_rows": 2000' in train.dataset.profile
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "train"
    client = tracking._client(tracking.resolve_store(params))
    exp = client.get_experiment_by_name("finetune")
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # an experiment of an older store, made without the tag, gets it on its next run
    client.delete_experiment_tag(exp.experiment_id, tracking.EXPERIMENT_KIND_TAG)
    assert tracking.EXPERIMENT_KIND_TAG not in client.get_experiment_by_name("finetune").tags
    with tracking.start_run(params, experiment="finetune", run_name="xgeo/again") as again:
        pass
    assert client.get_experiment_by_name("finetune").tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tracking.get_run(params, again.run_id).info.run_name == "xgeo/again"  # not prefixed twice
