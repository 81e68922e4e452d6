"""`xgeo ui` serves this project's MLflow store on 127.0.0.1; headless Chromium shows the runs and their metrics."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from xgeo import tracking

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def ui(tmp_path, load, root):
    """Two finished runs in a fresh store, and `xgeo ui` serving it; yields (base url, params, run ids)."""
    params = load()
    ids = {}
    for name, loss in (("ui-run-alpha", 0.25), ("ui-run-beta", 0.125)):
        with tracking.start_run(params, experiment="finetune", run_name=name, tags={"xgeo.task": "bigearthnet"}) as run:
            run.log_params({"model": {"size": "demo"}})
            run.log_metrics({"mAP_micro": 1 - loss, "loss": loss}, step=3)
        ids[name] = run.run_id
    port = free_port()
    cmd = [sys.executable, "-m", "xgeo.cli", "ui", "--port", str(port), "--params", str(root / "params.yaml"),
           "--set", params_uri(params)]
    log = open(tmp_path / "ui.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180  # a loaded 2-core machine can take minutes to import mlflow's server
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"xgeo ui did not come up: {(tmp_path / 'ui.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, params, ids
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group of the server started above (mlflow and its workers)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def params_uri(params) -> str:
    return f"mlflow.tracking_uri={params['mlflow']['tracking_uri']}"


def test_ui_refuses_public_host(load):
    with pytest.raises(tracking.TrackingError, match="127.0.0.1"):
        tracking.serve_ui(load(), host="0.0.0.0", port=5000)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_ui_shows_runs_and_metrics(ui, tmp_path, root):
    base, params, ids = ui
    exp = post(base + "/api/2.0/mlflow/experiments/search", {"max_results": 10})
    exp_id = next(e["experiment_id"] for e in exp["experiments"] if e["name"] == "finetune")
    runs = post(base + "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    got = {r["info"]["run_name"]: {m["key"]: m["value"] for m in r["data"]["metrics"]} for r in runs}
    assert got == {"ui-run-alpha": {"mAP_micro": 0.75, "loss": 0.25}, "ui-run-beta": {"mAP_micro": 0.875, "loss": 0.125}}

    # the experiment is tagged for the model-training view, so MLflow 3 opens it on its runs, not the GenAI overview
    tags = {t["key"]: t["value"] for t in next(e for e in exp["experiments"] if e["name"] == "finetune")["tags"]}
    assert tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    # the page `xgeo ui` sends a person to: the experiment itself (no /runs in the address) in the model-training
    # view (MLflow 3.17 keeps the GenAI/model-training switch in the browser and takes it from ?workflowType=)
    page = f"{base}/#/experiments/{exp_id}{tracking.UI_VIEW}"
    profile = tmp_path / "chromium-profile"
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
              "--window-size=1400,900"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=90).stdout
    for name in ids:
        assert name in dom, f"run {name} not on the first page {page}"
    assert "<title>Runs - " in dom and "Token Usage" not in dom  # the runs table, not the GenAI overview
    # the address `xgeo ui` prints for the experiment (its shared view) shows the metric columns and their values
    # on the runs table itself
    assert tags[tracking.SHARED_VIEW_TAG + tracking.UI_SHARE_KEY]
    view = f"{base}/#/experiments/{exp_id}/runs{tracking.UI_VIEW}&viewStateShareKey={tracking.UI_SHARE_KEY}"
    assert view in (tmp_path / "ui.log").read_text()
    dom_view = subprocess.run([*common, "--dump-dom", view], capture_output=True, text=True, timeout=90).stdout
    for name in ids:
        assert name in dom_view, f"run {name} not on the first page {view}"
    assert "mAP_micro" in dom_view and "0.875" in dom_view and "0.75" in dom_view, view
    # the run page shows the metric values
    run_page = f"{base}/#/experiments/{exp_id}/runs/{ids['ui-run-beta']}"
    dom_run = subprocess.run([*common, "--dump-dom", run_page], capture_output=True, text=True, timeout=90).stdout
    assert "mAP_micro" in dom_run and "0.875" in dom_run
    shot = tmp_path / "mlflow-ui.png"
    subprocess.run([*common, f"--screenshot={shot}", page], capture_output=True, timeout=90)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    figures = root / "results" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, figures / "mlflow-ui.png")
