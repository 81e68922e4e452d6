"""MLflow tracking: one SQLite store in the project, safe when parallel Snakemake jobs log at once.

Usage (every stage):

    with tracking.start_run(params, experiment="finetune", run_name="bigearthnet/xgeo/f0.1", tags={...}) as run:
        run.log_params(params)                # nested params are flattened to dotted keys
        run.log_metrics({"loss": 0.3}, step=10)
        run.log_figure(fig, "figures/reconstruction.png")
        run.log_artifact(path)
    run.run_id                                # None when mlflow.enabled is false

Why a lock: SQLite allows one writer; several processes writing through SQLAlchemy at once fail with
"database is locked" (and MLflow's first access runs schema migrations, which must not race). Every call that
touches the store therefore takes an exclusive ``fcntl`` lock on ``<db>.lock`` beside the database, and a call
that still meets "database is locked" (a reader outside xgeo, e.g. ``mlflow ui``) is retried with back-off.

Experiments: the runs of a stage live in ``pretrain`` and ``finetune`` (one finetuning run is often cited by several
tables, e.g. Tables 3, 6, 7 and 13 share the XGeo row); each table has its own experiment (``table3``, ``table7``,
...) holding one run per build of that table: the CSV as an artifact, every reproduced cell as a metric and the ids
of the runs it cites as tags. The cited runs get the tag ``xgeo.table.<name>`` (their row), so filtering the
finetune experiment by ``tags.`xgeo.table.table3``` lists exactly a table's runs. The table builders find runs through
the ``mlflow_run_id`` in each run directory's ``run.json`` and check it here (:func:`get_run`); the tags
``xgeo.stage``, ``xgeo.experiment``, ``xgeo.task``, ``xgeo.init``, ``xgeo.fraction`` make runs searchable in the UI.

mlflow is imported lazily: importing it takes seconds, and ``xgeo --help`` or a disabled tracker should not pay that.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .config import flatten
from .errors import XGeoError

# MLflow 3.x opens an experiment on the view of its kind (the React app reads this experiment tag; without it a
# new experiment opens on the GenAI overview); "custom_model_development" is the model-training view
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# ...but MLflow 3.17's UI keeps a GenAI / model-training switch per browser (default GenAI, overview page first) that
# only the address overrides: `xgeo ui` links experiments with this query so they open on their runs table
UI_VIEW = "?workflowType=machine_learning"
# ...and its runs table shows attribute columns only (Source, Models, Dataset) until a person picks metric columns in
# their browser (kept in its local storage). A shared view (experiment tag mlflow.sharedViewState.<key>, JSON of the
# page state, opened by ?viewStateShareKey=<key>) sets the columns for whoever opens that address: `xgeo ui` writes
# one per experiment with its headline metrics (set_metric_views) and prints those addresses
UI_SHARE_KEY = "xgeo-metrics"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
HEADLINE_METRICS = ("mAP_micro", "mAP_micro_per_batch", "mAP_macro", "mIoU", "mIoU_all", "OA", "F1", "IoU", "SAM",
                    "MAE", "PSNR", "SSIM", "loss", "final_train_loss", "train_loss")
UI_METRIC_COLUMNS = 8
LOCK_SUFFIX = ".lock"
ARTIFACTS_DIR = "mlartifacts"
RETRIES = 20
RETRY_BASE_S = 0.05
PARAM_VALUE_MAX = 6000  # MLflow's limit on one param value (characters)
BATCH_PARAMS = 100      # MLflow's limit on params per log_batch call
BATCH_METRICS = 1000    # MLflow's limit on metrics per log_batch call


class TrackingError(XGeoError):
    """The MLflow store is misconfigured or cannot be written."""


@dataclass(frozen=True)
class Store:
    """Where a project's MLflow data lives: ``uri`` for SQLAlchemy, ``db`` the SQLite file, ``artifacts`` the root."""

    uri: str
    db: Path | None
    artifacts: Path

    @property
    def lock_path(self) -> Path | None:
        return None if self.db is None else self.db.with_name(self.db.name + LOCK_SUFFIX)


def resolve_store(params: Mapping, root: str | os.PathLike | None = None) -> Store:
    """Resolve ``mlflow.tracking_uri`` of params: a relative SQLite path is taken against ``root`` (default: cwd).

    ``sqlite:///mlflow.db`` -> ``<root>/mlflow.db``; ``sqlite:////abs/mlflow.db`` stays absolute. Artifacts of
    experiments created here go to ``<db dir>/mlartifacts`` so that nothing lands in whatever directory a job runs in.
    Other URIs (``http://...``, ``postgresql://...``) are passed through; their artifacts root is ``<root>/mlartifacts``.
    """
    conf = params.get("mlflow", {}) or {}
    uri = conf.get("tracking_uri")
    if not uri or not isinstance(uri, str):
        raise TrackingError(f"params mlflow.tracking_uri: expected a URI such as 'sqlite:///mlflow.db', found {uri!r}")
    base = Path(root) if root is not None else Path.cwd()
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        db = Path(uri[len(prefix):])
        if not db.is_absolute():
            db = base / db
        db = db.resolve()
        return Store(uri=f"sqlite:///{db}", db=db, artifacts=db.parent / ARTIFACTS_DIR)
    if uri.startswith("sqlite:"):
        raise TrackingError(f"params mlflow.tracking_uri: expected 'sqlite:///<path>' for SQLite, found {uri!r}")
    return Store(uri=uri, db=None, artifacts=(base / ARTIFACTS_DIR).resolve())


@contextlib.contextmanager
def _store_lock(store: Store) -> Iterator[None]:
    """Exclusive lock beside the SQLite file for one write (no-op for server URIs, which serialise themselves)."""
    if store.lock_path is None:
        yield
        return
    store.lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(store.lock_path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_locked_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _locked_call(store: Store, func, *args, **kwargs):
    """Run one store operation under the lock; retry (with back-off) when SQLite still reports a lock."""
    for attempt in range(RETRIES):
        try:
            with _store_lock(store):
                return func(*args, **kwargs)
        except Exception as exc:  # sqlalchemy.exc.OperationalError or MlflowException wrapping it
            if not _is_locked_error(exc) or attempt == RETRIES - 1:
                raise
            time.sleep(RETRY_BASE_S * (2 ** min(attempt, 6)))
    raise AssertionError("unreachable")  # pragma: no cover


_CLIENTS: dict[str, Any] = {}


def _client(store: Store):
    """One MlflowClient per store and process; the first one creates (migrates) the database under the lock."""
    if store.uri not in _CLIENTS:
        from mlflow.tracking import MlflowClient

        if store.db is not None:
            store.db.parent.mkdir(parents=True, exist_ok=True)
        def create():
            # the store (and its schema migration) is created on first use: both inside the lock
            client = MlflowClient(tracking_uri=store.uri)
            client._tracking_client.store
            return client

        client = _locked_call(store, create)
        _CLIENTS[store.uri] = client
    return _CLIENTS[store.uri]


def _experiment_id(store: Store, client, name: str) -> str:
    def get_or_create() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND_TAG) is None:  # a store made before the tag was set
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        location = (store.artifacts / _safe_name(name)).as_uri()
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})

    return _locked_call(store, get_or_create)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= PARAM_VALUE_MAX else text[: PARAM_VALUE_MAX - 3] + "..."


@dataclass
class Run:
    """A live MLflow run. Methods are safe to call from parallel processes logging to the same store."""

    store: Store
    client: Any
    run_id: str
    experiment_id: str
    _logged_params: dict = field(default_factory=dict)

    def log_params(self, params: Mapping) -> None:
        """Log (nested) params as dotted keys; a key already logged with the same value is skipped."""
        from mlflow.entities import Param

        flat = {k: _param_value(v) for k, v in flatten(params).items()}
        new = {k: v for k, v in flat.items() if self._logged_params.get(k) != v}
        items = [Param(k, v) for k, v in sorted(new.items())]
        for i in range(0, len(items), BATCH_PARAMS):
            _locked_call(self.store, self.client.log_batch, self.run_id, params=items[i : i + BATCH_PARAMS])
        self._logged_params.update(new)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics (nested dicts flattened); non-numeric values are refused with the key named."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in flatten(metrics).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TrackingError(f"log_metrics: metric {key!r} must be a number, found {value!r}") from None
            items.append(Metric(key, number, now, int(step or 0)))
        for i in range(0, len(items), BATCH_METRICS):
            _locked_call(self.store, self.client.log_batch, self.run_id, metrics=items[i : i + BATCH_METRICS])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), _param_value(v)) for k, v in tags.items()]
        if items:
            _locked_call(self.store, self.client.log_batch, self.run_id, tags=items)

    def log_input(self, name: str, digest: str, split: str, samples: int, source: str | os.PathLike) -> None:
        """Record a store the run read as an MLflow dataset input (the run page's "Datasets used"): its name, a
        digest of its content, the split (the input's context tag) and the sample count (the dataset's profile)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=str(digest)[:36], source_type="local",
                          source=json.dumps({"uri": str(source)}), profile=json.dumps({"num_rows": int(samples)}))
        entry = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", split)])
        _locked_call(self.store, self.client.log_inputs, self.run_id, datasets=[entry])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory) into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, fig, artifact_file: str) -> None:
        """Save a matplotlib figure as ``artifact_file`` (e.g. ``figures/reconstruction.png``) in the run."""
        name = Path(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / name.name
            fig.savefig(out, dpi=120, bbox_inches="tight")
            parent = str(name.parent) if str(name.parent) != "." else None
            self.log_artifact(out, parent)


class NoOpRun:
    """Stands in for :class:`Run` when ``mlflow.enabled`` is false: every call does nothing, ``run_id`` is None."""

    run_id = None
    experiment_id = None

    def log_params(self, params: Mapping) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_input(self, name: str, digest: str, split: str, samples: int, source: str | os.PathLike) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_figure(self, fig, artifact_file: str) -> None:
        pass


def enabled(params: Mapping) -> bool:
    return bool((params.get("mlflow") or {}).get("enabled", False))


@contextlib.contextmanager
def start_run(
    params: Mapping,
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Run | NoOpRun]:
    """Open a run in ``experiment`` (created if new); it ends FINISHED, or FAILED when the block raises.

    Tags: ``xgeo.profile`` and ``xgeo.experiment`` (the params' experiment, when set) are added to ``tags``; the
    run's name starts with the params' experiment (``xgeo/bigearthnet/xgeo/f0.1/seed0``) so runs of different
    pretraining variants are told apart in the UI's run list.
    """
    if not enabled(params):
        yield NoOpRun()
        return
    store = resolve_store(params)
    client = _client(store)
    experiment_id = _experiment_id(store, client, experiment)
    all_tags = {"xgeo.profile": params.get("profile", "demo")}
    if params.get("experiment"):
        all_tags["xgeo.experiment"] = params["experiment"]
    all_tags.update({str(k): _param_value(v) for k, v in (tags or {}).items()})
    if run_name and params.get("experiment") and run_name.split("/")[0] != params["experiment"]:
        run_name = f"{params['experiment']}/{run_name}"
    mlflow_run = _locked_call(store, client.create_run, experiment_id, tags=all_tags, run_name=run_name)
    run = Run(store=store, client=client, run_id=mlflow_run.info.run_id, experiment_id=experiment_id)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        _locked_call(store, client.set_terminated, run.run_id, status)


def get_run(params: Mapping, run_id: str):
    """The MLflow run ``run_id`` of this project's store (``mlflow.entities.Run``), or None when it is not there."""
    from mlflow.exceptions import MlflowException

    store = resolve_store(params)
    client = _client(store)
    try:
        return _locked_call(store, client.get_run, run_id)
    except MlflowException:
        return None


def set_tags(params: Mapping, run_id: str, tags: Mapping[str, Any]) -> None:
    """Add tags to an existing run (the table builders mark the runs each table cites)."""
    from mlflow.entities import RunTag

    store = resolve_store(params)
    client = _client(store)
    items = [RunTag(str(k), _param_value(v)) for k, v in tags.items()]
    if items:
        _locked_call(store, client.log_batch, run_id, tags=items)


def search_runs(params: Mapping, experiment: str, filter_string: str = "") -> list:
    """Runs of ``experiment`` matching an MLflow filter (e.g. ``tags.`xgeo.task` = 'bigearthnet'``), newest first."""
    store = resolve_store(params)
    client = _client(store)
    exp = _locked_call(store, client.get_experiment_by_name, experiment)
    if exp is None:
        return []
    return _locked_call(
        store, client.search_runs, [exp.experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"]
    )


def ui_command(params: Mapping, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` command line serving this project's store (UI + REST API)."""
    store = resolve_store(params)
    store.artifacts.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", store.uri,
        "--default-artifact-root", store.artifacts.as_uri(),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]


def metric_view(metric_keys) -> dict:
    """The shared-view state of a runs table showing ``metric_keys``' headline metrics (HEADLINE_METRICS first, then
    the others by name; UI_METRIC_COLUMNS at most) after the run name, date and dataset."""
    keys = set(metric_keys)
    chosen = [k for k in HEADLINE_METRICS if k in keys] + sorted(keys - set(HEADLINE_METRICS))
    # metrics only: the table renders the columns that fit its width, MLflow's Source / Models columns would push
    # the metrics out of a laptop-sized window
    return {"selectedColumns": [f"metrics.`{k}`" for k in chosen[:UI_METRIC_COLUMNS]]}


def set_metric_views(params: Mapping) -> dict[str, str]:
    """Write each experiment's shared view (its runs' metric columns) into the store; -> {experiment name: page
    address (after the host) opening its runs table with those columns}."""
    store = resolve_store(params)
    client = _client(store)
    pages = {}
    for exp in _locked_call(store, client.search_experiments):
        runs = _locked_call(store, client.search_runs, [exp.experiment_id], max_results=500)
        view = metric_view({k for r in runs for k in r.data.metrics})
        _locked_call(store, client.set_experiment_tag, exp.experiment_id, SHARED_VIEW_TAG + UI_SHARE_KEY,
                     json.dumps(view))
        # the runs tab's route: the shared view is read there (MLflow 3.17)
        pages[exp.name] = f"/#/experiments/{exp.experiment_id}/runs{UI_VIEW}&viewStateShareKey={UI_SHARE_KEY}"
    return pages


def serve_ui(params: Mapping, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve the MLflow UI for this project's store in the foreground until interrupted (Ctrl-C).

    The store is created first (under the lock) so the server never races a job's migration.
    """
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise TrackingError(f"xgeo ui --host: serves on the loopback interface only (127.0.0.1), found {host!r}")
    store = resolve_store(params)
    _client(store)
    pages = set_metric_views(params)
    print(f"xgeo ui: MLflow UI for {store.uri} at http://{host}:{port}/#/experiments{UI_VIEW} "
          f"(the model-training view: runs first; Ctrl-C stops it)", flush=True)
    for name, page in sorted(pages.items()):
        print(f"  {name}: runs with their metrics at http://{host}:{port}{page}", flush=True)
    cmd = ui_command(params, host, port)
    # become the server process: Ctrl-C and SIGTERM then reach mlflow directly, no orphaned server is left behind
    os.execv(cmd[0], cmd)
