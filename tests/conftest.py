"""Shared fixtures. Tests run on a 2-core CPU offline; keep each test small (see README: test budget)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def load(tmp_path):
    """load(*overrides) -> params from the repo's params.yaml with --set overrides; mlflow goes to tmp_path."""
    from xgeo.config import load_params

    def _load(*overrides: str, experiment: str | None = None) -> dict:
        base = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
        return load_params(ROOT / "params.yaml", [*base, *overrides], experiment=experiment)

    return _load


def make_store(base: Path, dataset: str, overrides: list[str]) -> Path:
    """Synthesise ``dataset`` in its real layout under ``base/raw`` with params.yaml + ``overrides`` and convert it to
    ``base/zarr/<dataset>.zarr``; returns the zarr folder (``paths.zarr``)."""
    from xgeo.config import load_params
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize

    params = load_params(ROOT / "params.yaml", overrides)
    synthesize(dataset, base / "raw", params, seed=0)
    convert(dataset, base / "raw", base / "zarr" / f"{dataset}.zarr", params)
    return base / "zarr"
