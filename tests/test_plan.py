"""``xgeo plan``: passes on the demo profile with stores and on the paper profile without them; fails, naming the
key, on each broken invariant; the analytic FLOPs agree with torch's FLOP counter; ``--set`` values of the wrong
type are refused by every command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xgeo.config import ConfigError
from xgeo.plan import Plan, _check_windows, encoder_flops, make_plan, run_plan, PlanError

from test_finetune import SMALL
from test_pretrain import COUNTS, write_pretrain_stores

ROOT = Path(__file__).resolve().parents[1]
NO_GPUS = ["workflow.pretrain.gpu=0", "workflow.finetune.gpu=0"]


@pytest.fixture(scope="module")
def demo_zarr(tmp_path_factory) -> Path:
    """Every store of the demo profile: the four pretraining ones written directly, the four downstream ones
    synthesised in their layouts and converted."""
    from xgeo.config import load_params
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize

    base = tmp_path_factory.mktemp("plan_stores")
    zarr = write_pretrain_stores(base / "zarr")
    params = load_params(ROOT / "params.yaml", SMALL)
    for ds in ("bigearthnet", "vaihingen", "sen12ms-cr", "spacenet2"):
        synthesize(ds, base / "raw" / ds, params, seed=0)
        convert(ds, base / "raw" / ds, zarr / f"{ds}.zarr", params)
    return zarr


def test_demo_plan_with_stores_passes_and_reads_them(load, demo_zarr):
    from xgeo.data.store import store_info

    plan = run_plan(load(f"paths.zarr={demo_zarr}", *SMALL), measure=False)
    text = plan.text()
    assert plan.problems == []
    for ds, n in COUNTS.items():
        assert f": {ds} {store_info(demo_zarr / f'{ds}.zarr')['samples']} samples" in text
    assert "mask grid 4 x 4 (16 px cells): 10 of 16 masked" in text
    assert "group sen12ms: batch 4 per process (4 per step), loss weight 0.25" in text
    # heterogeneous epoch: the largest ceil(N_g / B_g) over the groups
    sizes = {"rgb": COUNTS["geopile"] + COUNTS["millionaid"], "sen12ms": COUNTS["sen12ms"], "mdas": COUNTS["mdas"]}
    spe = max(-(-sizes["rgb"] // 16), -(-sizes["sen12ms"] // 4), -(-sizes["mdas"] // 2))
    assert f"{spe} steps/epoch, 1500 steps, warm-up 100" in text
    ben = store_info(demo_zarr / "bigearthnet.zarr")["splits"]["train"]
    assert f"{-(-ben // 16)} steps/epoch, 100 steps, warm-up 10" in text


def test_paper_plan_without_stores(load):
    plan = run_plan(load("profile=paper", *NO_GPUS), stores=False, measure=False)
    text = plan.text()
    assert "input 192 px; stage grid/window 48/12 24/12 12/12 6/6" in text
    assert "mask grid 6 x 6 (32 px cells): 22 of 36 masked" in text
    assert "random 160 px crops of 256 px tiles" in text and "whole 256 px tiles, sliding 160 px windows" in text
    assert "resized 120 -> 128 px" in text
    assert "random 512 px crops of 512 px tiles" in text and "whole 512 px areas (tiles put back together)" in text
    assert "random 256 px crops of 650 px tiles" in text
    assert "group mdas: batch 12 per process (12 per step), loss weight 0.09375" in text


def test_paper_plan_on_this_machine_names_each_problem(load):
    """As a user would run it here: the overlay asks for GPUs and (before the pretraining crop) 64 px stores."""
    plan = make_plan(load("profile=paper"), stores=False, measure=False)
    keys = [p.split(":")[0] for p in plan.problems]
    assert keys[0] == "workflow.pretrain.gpu" and "workflow.finetune.gpu" in keys
    assert "8 GPU(s) per node asked for, torch sees no CUDA device" in plan.problems[0]
    missing = make_plan(load("profile=paper", *NO_GPUS, "paths.zarr=/nonexistent"),
                        stores=True, measure=False).problems
    assert len(missing) == 8 and all("store of dataset" in p and "missing" in p for p in missing)


@pytest.mark.parametrize("overrides, key, text", [
    (["pretrain.mask_patch=24"], "pretrain.mask_patch", "24 px does not divide the 64 px input"),
    (["finetune.sen12ms-cr.image_size=100"], "finetune.sen12ms-cr.image_size", "not a multiple of the encoder stride"),
    (["finetune.vaihingen.image_size=128"], "data.datasets.vaihingen.tile_size",
     "stored tiles of 64 px are smaller than the 128 px input"),
    (["data.datasets.sen12ms.tile_size=32"], "data.datasets.sen12ms.tile_size",
     "smaller than the 64 px pretraining input"),
    (["workflow.pretrain.gpu=2"], "workflow.pretrain.gpu", "2 GPU(s) per node asked for"),
    (["finetune.device=cuda"], "finetune.device", "'cuda' asked for"),
    (["workflow.finetune.gpu=2", "finetune.spacenet2.batch_size=7"],
     "finetune.spacenet2.batch_size", "7 is not a multiple of the 2 processes"),
])
def test_each_broken_invariant_fails_naming_the_key(load, overrides, key, text):
    params = load(*overrides)
    with pytest.raises(PlanError) as err:
        run_plan(params, stores=False, measure=False)
    lines = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert any(line.startswith(f"{key}:") and text in line for line in lines), lines


def test_missing_teacher_of_a_distillation_experiment(load):
    plan = make_plan(load(experiment="distill-clip"), stores=False, measure=False)
    assert any(p.startswith("pretrain.teacher: objective distill needs a local teacher weight file") and
               "weights/clip_vit_b16.pth" in p for p in plan.problems)


def test_window_that_does_not_divide_the_token_grid():
    plan = Plan()
    config = {"img_size": 192, "window_size": 10, "depths": [2, 2, 2, 2]}
    _check_windows(plan, "model.size", config, 192)
    assert plan.problems[0].startswith("model.size: at 192 px the window of stage 1 (10 tokens) does not divide its "
                                       "48 x 48 token grid")


@pytest.mark.parametrize("moe, tolerance", [(False, 0.03), (True, 0.08)])
def test_analytic_flops_match_torch_flop_counter(load, moe, tolerance):
    """Dense: within 3 % (norms, the position-bias MLP are not counted); MoE: the native experts compute their
    capacity buffer (capacity factor 1.25 over the tokens), which the analytic count (tokens x top_k) leaves out."""
    from torch.utils.flop_counter import FlopCounterMode

    from xgeo.model import build_model
    from xgeo.model.xgeo import model_config

    params = load(f"model.moe.enabled={str(moe).lower()}")
    model = build_model(params).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_encoder(torch.randn(2, 3, 64, 64), "rgb")
    analytic = 2 * encoder_flops(model_config(params), 64, 3)
    assert abs(counter.get_total_flops() / analytic - 1) < tolerance


def test_wrong_type_override_is_refused_by_every_command(tmp_path):
    for args in (["params"], ["plan", "--no-stores"], ["finetune", "bigearthnet", "--init", "random", "--out",
                                                         str(tmp_path / "x")]):
        res = subprocess.run([sys.executable, "-m", "xgeo.cli", *args, "--set", "model.moe.num_experts=many"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2
        assert res.stderr.strip() == ("error: --set model.moe.num_experts: expected an integer (>= 1) (params schema), "
                                      "found 'many' (a string)")
    assert not (tmp_path / "x").exists()


def test_override_types_follow_the_schema_then_the_replaced_value(load):
    assert load("pretrain.base_lr=1e-3")["pretrain"]["base_lr"] == 1e-3  # YAML 1.2 float, as dvc reads it
    assert load("finetune.bigearthnet.epochs=10")["finetune"]["bigearthnet"]["epochs"] == 10  # null: anything
    with pytest.raises(ConfigError, match=r"--set pretrain.mask_ratio: expected a number \(> 0, < 1\) \(params "
                                          r"schema\), found 'half'"):
        load("pretrain.mask_ratio=half")
    with pytest.raises(ConfigError, match=r"--set finetune.bigearthnet.image_size: expected an integer like the 64 "
                                          r"it replaces, found 1.5"):
        load("finetune.bigearthnet.image_size=1.5")
    with pytest.raises(ConfigError, match=r"experiments.bad model.moe.enabled: expected true or false"):
        from xgeo.config import apply_overrides, params_schema

        apply_overrides(load(), {"model.moe.enabled": "no way"}, source="experiments.bad", schema=params_schema())


def test_measured_step_time_runs_the_training_step(load):
    """The timing behind the plan's ETA (run on CUDA by `xgeo plan`), here on the CPU at demo size."""
    from xgeo.plan import measure_pretrain_step
    from xgeo.pretrain.groups import effective_groups

    params = load("pretrain.groups.rgb.batch_size=2", "pretrain.groups.sen12ms.batch_size=1",
                  "pretrain.groups.mdas.batch_size=1")
    seconds = measure_pretrain_step(params, effective_groups(params), 64, steps=1, device="cpu")
    assert 0.0 < seconds < 60.0
