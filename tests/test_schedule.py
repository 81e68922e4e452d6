"""Pretraining schedules: epochs -> steps through the sampler's steps per epoch, the demo's steps, the ablation
schedule of every experiment but the base one, and Table 6's homogeneous runs at equal samples."""
from __future__ import annotations

import pytest

from xgeo.errors import XGeoError
from xgeo.pretrain.schedule import WarmupMultiStep, resolve_schedule, steps_per_epoch

GROUPS = {"rgb": {"datasets": ["geopile", "millionaid"], "batch_size": 4},
          "sen12ms": {"datasets": ["sen12ms"], "batch_size": 2}, "mdas": {"datasets": ["mdas"], "batch_size": 1}}
SIZES = {"geopile": 23, "millionaid": 17, "sen12ms": 13, "mdas": 5}


def test_steps_per_epoch_from_group_sizes():
    assert steps_per_epoch(GROUPS, SIZES) == 10  # max(ceil(40 / 4), ceil(13 / 2), ceil(5 / 1))
    assert steps_per_epoch(GROUPS, SIZES, world_size=2) == 5  # max(ceil(40 / 8), ceil(13 / 4), ceil(5 / 2))
    assert steps_per_epoch(GROUPS, SIZES, mode="homogeneous") == 30  # 3 groups x 10
    with pytest.raises(XGeoError, match="mdas"):
        steps_per_epoch(GROUPS, {"geopile": 1, "millionaid": 1, "sen12ms": 1})


def test_paper_epochs_become_steps(load):
    params = load("profile=paper")
    s = resolve_schedule(params, 1234)
    assert s == {"total_steps": 800 * 1234, "warmup_steps": 10 * 1234, "milestones": [700 * 1234],
                 "steps_per_epoch": 1234, "source": "epochs", "ablation": False}
    # the ablation tables' pretraining: 100 epochs, 10 warm-up, no milestone; the base experiment keeps 800
    ablation = resolve_schedule(load("profile=paper", experiment="moe-nocross"), 1234)
    assert (ablation["total_steps"], ablation["warmup_steps"], ablation["milestones"], ablation["ablation"]) == \
        (100 * 1234, 10 * 1234, [], True)
    assert resolve_schedule(load("profile=paper", experiment="xgeo"), 1234)["total_steps"] == 800 * 1234


def test_demo_steps_and_homogeneous_scaling(load):
    s = resolve_schedule(load(), 7)
    assert (s["total_steps"], s["warmup_steps"], s["milestones"], s["source"]) == (1500, 100, [], "steps")
    assert resolve_schedule(load("pretrain.milestones=[1000]"), 7)["milestones"] == [1000]
    # Table 6: a homogeneous step holds one group's batch, so it takes 3 steps (3 groups) per heterogeneous one
    h = resolve_schedule(load(experiment="homogeneous"), 21)
    assert (h["total_steps"], h["warmup_steps"]) == (4500, 300)
    # the demo has no ablation schedule: ablation experiments train as long as the base one
    assert resolve_schedule(load(experiment="moe-nocross"), 7)["total_steps"] == 1500


def test_bad_epochs_are_refused(load):
    with pytest.raises(XGeoError, match="milestone_epochs"):
        resolve_schedule(load("pretrain.epochs=10", "pretrain.milestone_epochs=[12]"), 5)


def test_warmup_multistep():
    f = WarmupMultiStep(1e-3, 0.0, 10, [20], 0.1)
    assert [round(f(s) * 1e-3, 8) for s in (0, 5, 10, 19, 20, 30)] == [0.0, 5e-4, 1e-3, 1e-3, 1e-4, 1e-4]


def test_ablation_tables_finetune_from_the_ablation_pretraining(load):
    """Paper profile: the XGeo rows of Tables 5, 6, 7, 10, 13, 14 finetune from xgeo-ablation (100 epochs), Table 3's
    from xgeo (800 epochs); the demo keeps one pretraining (no ablation experiment)."""
    from xgeo import tables

    paper = load("profile=paper")
    assert resolve_schedule(load("profile=paper", experiment="xgeo-ablation"), 10)["total_steps"] == 1000
    experiments = {name: {c.experiment for c in tables.required_cells(name, paper) if c.init == "xgeo"}
                   for name in ("table3", "table6", "table13")}
    assert experiments == {"table3": {"xgeo"}, "table6": {"homogeneous", "xgeo-ablation"},
                           "table13": {"xgeo-ablation"}}
    demo = load()
    assert {c.experiment for c in tables.required_cells("table6", demo) if c.init == "xgeo"} == {"homogeneous", "xgeo"}
