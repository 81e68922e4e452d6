"""MoE checkpoints across backends and process counts: the tutel <-> native state-dict mapping (on hand-built state
dicts in tutel's layout, run everywhere) and, where tutel is installed, real tutel layers: one process and two gloo
processes with the experts sharded, saved and loaded into the native backend and into tutel with another process
count, giving the same outputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xgeo.errors import XGeoError
from xgeo.model.moe import MoE, build_moe, native_to_tutel, tutel_available, tutel_to_native

E, D, H = 4, 8, 12  # experts, model width, expert hidden width (H != D: a transposition cannot pass unnoticed)
CFG = {"backend": "tutel", "num_experts": E, "top_k": 1, "capacity_factor": 4.0, "gate_noise": 1.0,
       "aux_loss": "load_importance", "batch_prioritized": True}


def _native(seed: int = 0, **kw) -> MoE:
    torch.manual_seed(seed)
    m = MoE(D, H, num_experts=E, **kw)
    with torch.no_grad():  # non-zero biases and loads, as after training
        m.b1.normal_(0, 0.1)
        m.b2.normal_(0, 0.1)
        m.load_count.copy_(torch.tensor([5.0, 1.0, 0.0, 2.0], dtype=torch.float64))
    return m.eval()


def _tutel_layout(world: int, seed: int = 1) -> tuple[dict, dict]:
    """A tutel-backend layer's state dict as ``world`` processes save it (tutel/experts/ffn.py per rank:
    batched_fc1_w (E_l, H, D) = fc1.weight, batched_fc2_w (E_l, H, D) = fc2.weight.t(), biases (E_l, H) and
    (E_l, D); stacked in rank order), and the per-expert Linear layers it was built from."""
    g = torch.Generator().manual_seed(seed)
    fc1 = [torch.nn.Linear(D, H) for _ in range(E)]
    fc2 = [torch.nn.Linear(H, D) for _ in range(E)]
    with torch.no_grad():
        for lin in fc1 + fc2:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)
    local = E // world
    stack = lambda ts: torch.stack([torch.stack(ts[r * local:(r + 1) * local]) for r in range(world)])  # noqa: E731
    state = {"layer.gates.0.wg.weight": torch.randn(E, D, generator=g),
             "layer._num_global_experts": torch.tensor(E),
             "layer.experts.batched_fc1_w": stack([l.weight.detach() for l in fc1]),
             "layer.experts.batched_fc2_w": stack([l.weight.detach().t() for l in fc2]),
             "layer.experts.batched_fc1_bias": stack([l.bias.detach() for l in fc1]),
             "layer.experts.batched_fc2_bias": stack([l.bias.detach() for l in fc2])}
    return state, {"fc1": fc1, "fc2": fc2, "gate": state["layer.gates.0.wg.weight"]}


def test_native_tutel_native_round_trip_is_exact():
    m = _native()
    state = m.state_dict()
    tutel = native_to_tutel(state)
    assert tutel["layer.experts.batched_fc1_w"].shape == (1, E, H, D)  # one process's save, every expert
    assert tutel["layer.experts.batched_fc1_bias"].shape == (1, E, H) and int(tutel["layer._num_global_experts"]) == E
    back = tutel_to_native(tutel)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)
    # through the layer's own load hook, with strict key checking
    other = MoE(D, H, num_experts=E)
    other.load_state_dict(tutel)
    assert all(torch.equal(other.state_dict()[k], state[k]) for k in state)
    # with a prefix, inside a larger state dict: the other entries untouched
    whole = {f"blocks.1.mlp.{k}": v for k, v in state.items()} | {"norm.weight": torch.ones(3)}
    t = native_to_tutel(whole, "blocks.1.mlp.")
    assert "blocks.1.mlp.layer.experts.batched_fc2_w" in t and torch.equal(t["norm.weight"], whole["norm.weight"])
    assert set(tutel_to_native(t, "blocks.1.mlp.")) == set(whole)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_tutel_layout_loads_into_native_and_computes_tutels_ffn(world):
    """A state dict in tutel's layout, written by 1, 2 or 4 processes, loads into the native layer, whose experts
    then compute tutel's FFN (act(x fc1^T + b1) fc2^T + b2 per expert, ffn.py's forward) on the tokens routed to
    them, each scaled by its gate."""
    state, ref = _tutel_layout(world)
    m = MoE(D, H, num_experts=E, capacity_factor=4.0).eval()  # capacity for every token: nothing dropped
    m.load_state_dict(state)
    assert torch.equal(m.load_count, torch.zeros(E, dtype=torch.float64))  # no loads recorded in tutel: uniform
    assert torch.equal(m.gate.weight, ref["gate"])
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = m(x)
        probs = F.linear(x, ref["gate"]).softmax(-1)
        gate, expert = probs.max(-1)
        want = torch.stack([gate[i] * ref["fc2"][e](F.gelu(ref["fc1"][e](x[i]))) for i, e in enumerate(expert.tolist())])
    assert len(set(expert.tolist())) > 1  # more than one expert in use
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)


def test_mapping_errors_name_the_entry():
    state, _ = _tutel_layout(2)
    state["layer.experts.batched_fc1_w"] = state["layer.experts.batched_fc1_w"][:, :1]  # half the experts
    with pytest.raises(XGeoError, match=r"layer.experts.batched_fc1_w.*4x12x8"):
        tutel_to_native(state)
    state, _ = _tutel_layout(2)
    state["layer.gates.1.wg.weight"] = torch.zeros(E, D)
    with pytest.raises(XGeoError, match="no native counterpart.*gates.1.wg.weight"):
        tutel_to_native(state)


# ------------------------------------------------------------------------------------------- with tutel installed
needs_tutel = pytest.mark.skipif(not tutel_available(), reason="tutel is not installed (not on PyPI; see TUTEL_INSTALL)")


@needs_tutel
def test_tutel_starts_as_native_and_computes_the_same():
    torch.manual_seed(0)
    t = build_moe(D, H, CFG).eval()
    torch.manual_seed(0)
    n = build_moe(D, H, {**CFG, "backend": "native"}).eval()
    assert torch.equal(t.layer.experts.batched_fc1_w, n.w1.transpose(1, 2))  # the same draws, in tutel's layout
    assert torch.equal(t.layer.gates[0].wg.weight, n.gate.weight)
    back = MoE(D, H, num_experts=E)
    back.load_state_dict(t.state_dict())
    assert all(torch.equal(back.state_dict()[k], v) for k, v in n.state_dict().items())
    x = torch.randn(2, 20, D)
    with torch.no_grad():
        torch.testing.assert_close(t(x), n(x), rtol=1e-5, atol=1e-6)
    # a native checkpoint loads into tutel
    m = _native(seed=3, capacity_factor=CFG["capacity_factor"])
    t.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(t(x), m(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(t.load_count, m.load_count)


def _two_rank_train_and_save(rank, world, init, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    layer = build_moe(D, H, CFG)
    assert layer.layer.experts.batched_fc1_w.shape[0] == E // world  # experts sharded over the ranks
    # each rank its own tokens, and a different number of them (tutel's capacity then comes from the largest)
    x = torch.randn(3, 16 + 8 * rank, D, generator=torch.Generator().manual_seed(10 + rank))
    # one training step of the experts (their gradients stay on their rank; tutel's all-to-all brings the tokens)
    opt = torch.optim.SGD(layer.expert_parameters(), lr=0.5)
    (layer(x).square().mean() + layer.aux_loss).backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        y = layer(x)
    state = layer.state_dict()  # every rank: gathers every rank's experts
    if rank == 0:
        torch.save({"state": state}, out)
    torch.save({"x": x, "y": y}, f"{out}.rank{rank}")
    dist.destroy_process_group()


@needs_tutel
def test_two_gloo_processes_checkpoint_loads_into_native_and_one_tutel_process(tmp_path):
    """Two gloo processes, 2 experts each, train a step and save; the checkpoint, loaded into the native backend
    and into tutel on one process, gives each rank's outputs on that rank's tokens."""
    import torch.multiprocessing as mp

    out = tmp_path / "moe.pt"
    mp.spawn(_two_rank_train_and_save, args=(2, f"file://{tmp_path}/pg", str(out)), nprocs=2, join=True)
    state = torch.load(out)["state"]
    assert state["layer.experts.batched_fc1_w"].shape == (2, E // 2, H, D)
    torch.manual_seed(0)
    init = MoE(D, H, num_experts=E)
    native = MoE(D, H, num_experts=E, capacity_factor=CFG["capacity_factor"]).eval()
    native.load_state_dict(state)
    # the step moved every expert, rank 1's too (not a copy of rank 0's)
    assert all(not torch.equal(native.w1[e], init.w1[e]) for e in range(E))
    assert not torch.equal(native.w1[2:], native.w1[:2])
    single = build_moe(D, H, CFG).eval()
    single.load_state_dict(state)
    for rank in (0, 1):
        run = torch.load(f"{out}.rank{rank}")
        with torch.no_grad():
            torch.testing.assert_close(native(run["x"]), run["y"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(single(run["x"]), run["y"], rtol=1e-5, atol=1e-6)
    # and back: the native weights in tutel's layout are the gathered shards
    again = native_to_tutel(native.state_dict())
    assert torch.equal(again["layer.experts.batched_fc1_w"].reshape(E, H, D),
                       state["layer.experts.batched_fc1_w"].reshape(E, H, D))


# ------------------------------------------------------------------------------------------------- whole models
def _demo(load, backend: str, seed: int = 0):
    from xgeo.model import build_model

    params = load("model.size=demo", f"model.moe.backend={backend}")
    torch.manual_seed(seed)
    return build_model(params).eval(), params


def test_a_tutel_checkpoint_loads_into_the_native_model(load, tmp_path):
    """A whole model's checkpoint in the tutel backend's layout (two processes' shards, hand-built from a native
    model) and ``model_config.moe.backend: tutel`` loads with load_pretrained as the native model, no tutel needed,
    with and without params naming the native backend; a mismatch other than the backend is still refused."""
    from xgeo.errors import CheckpointError
    from xgeo.model.checkpoint import load_pretrained, save_checkpoint

    model, params = _demo(load, "native")
    prefixes = [n + "." for n, m in model.named_modules() if isinstance(m, MoE)]
    assert prefixes
    state = model.state_dict()
    for p in prefixes:
        state = native_to_tutel(state, p)
        for key in ("batched_fc1_w", "batched_fc2_w", "batched_fc1_bias", "batched_fc2_bias"):  # as 2 ranks save it
            t = state[f"{p}layer.experts.{key}"]
            state[f"{p}layer.experts.{key}"] = t.reshape(2, t.shape[1] // 2, *t.shape[2:])
    config = {**model.config, "moe": {**model.config["moe"], "backend": "tutel"}}
    save_checkpoint(tmp_path / "tutel.ckpt", {"model": state, "model_config": config})
    x = torch.randn(1, 13, 64, 64)
    for args in ((), (params,)):
        loaded, meta = load_pretrained(tmp_path / "tutel.ckpt", *args)
        assert meta["model_config"]["moe"]["backend"] == "tutel"
        assert all(isinstance(m, MoE) for n, m in loaded.named_modules() if n + "." in prefixes)
        with torch.no_grad():
            assert torch.equal(loaded.forward_encoder(x, "s2")[0], model.forward_encoder(x, "s2")[0])
    from xgeo.config import apply_overrides

    with pytest.raises(CheckpointError, match="model_config.moe.num_experts"):
        load_pretrained(tmp_path / "tutel.ckpt", apply_overrides(params, {"model.moe.num_experts": 4}))


@needs_tutel
def test_tutel_model_checkpoint_loads_as_native_and_native_as_tutel(load, tmp_path):
    from xgeo.model.checkpoint import load_pretrained, save_checkpoint
    from xgeo.model.moe import TutelMoE

    tutel, params = _demo(load, "tutel")
    native, _ = _demo(load, "native")  # same seed: the same model (both backends initialise alike)
    x = torch.randn(1, 13, 64, 64)
    with torch.no_grad():
        want = native.forward_encoder(x, "s2")[0]
        torch.testing.assert_close(tutel.forward_encoder(x, "s2")[0], want, rtol=1e-5, atol=1e-5)
    save_checkpoint(tmp_path / "t.ckpt", tutel)
    loaded, _ = load_pretrained(tmp_path / "t.ckpt")
    assert not any(isinstance(m, TutelMoE) for m in loaded.modules())
    save_checkpoint(tmp_path / "n.ckpt", native)
    as_tutel, _ = load_pretrained(tmp_path / "n.ckpt", params)
    assert any(isinstance(m, TutelMoE) for m in as_tutel.modules())
    with torch.no_grad():
        assert torch.equal(loaded.forward_encoder(x, "s2")[0], want)
        torch.testing.assert_close(as_tutel.forward_encoder(x, "s2")[0], want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- optimizer state of sharded experts
def _two_rank_optimizer(rank, world, init, out):
    import torch.distributed as dist

    from xgeo.pretrain import state as run_state
    from xgeo.pretrain.distributed import DistInfo

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    info = DistInfo(rank=rank, world_size=world)
    shared = torch.nn.Parameter(torch.ones(3))
    experts = torch.nn.Parameter(torch.ones(2, 3))  # this rank's experts: its own gradients, its own moments
    experts.skip_allreduce = True
    opt = torch.optim.AdamW([{"params": [shared]}, {"params": [experts], "weight_decay": 0.0}], lr=0.1)
    shared.grad = torch.full((3,), 0.5)
    experts.grad = torch.full((2, 3), float(rank + 1))
    opt.step()
    sd, ranks = run_state.optimizer_state(opt, info)  # every rank
    if rank == 0:
        torch.save({"optimizer": sd, "optimizer_experts": ranks}, out)
    dist.barrier()
    fresh = torch.optim.AdamW([{"params": [shared]}, {"params": [experts], "weight_decay": 0.0}], lr=0.1)
    run_state.load_optimizer_state(out, fresh, torch.load(out, weights_only=False), info)
    torch.save({"own": opt.state_dict()["state"], "loaded": fresh.state_dict()["state"]}, f"{out}.rank{rank}")
    dist.destroy_process_group()


def test_resume_gives_each_rank_its_own_expert_moments(tmp_path):
    """Two gloo processes whose experts had different gradients: the checkpoint keeps both ranks' Adam moments and
    a resume gives each rank its own (rank 0's optimizer state dict alone would give rank 1 rank 0's)."""
    import torch.multiprocessing as mp

    from xgeo.errors import CheckpointError
    from xgeo.pretrain import state as run_state
    from xgeo.pretrain.distributed import DistInfo

    out = tmp_path / "opt.pt"
    mp.spawn(_two_rank_optimizer, args=(2, f"file://{tmp_path}/pg", str(out)), nprocs=2, join=True)
    runs = [torch.load(f"{out}.rank{r}") for r in (0, 1)]
    assert not torch.equal(runs[0]["own"][1]["exp_avg_sq"], runs[1]["own"][1]["exp_avg_sq"])
    for run in runs:
        for i in (0, 1):
            for k in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(run["loaded"][i][k], run["own"][i][k]), (i, k)
    ckpt = torch.load(out, weights_only=False)
    assert set(ckpt["optimizer_experts"][1]) == {1}  # only the expert entries travel per rank
    one = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 3))])
    with pytest.raises(CheckpointError, match="of 2 process.*resumed with 1"):
        run_state.load_optimizer_state(out, one, ckpt, DistInfo())


def _torchrun(tmp_path, out, steps, every, sets, *extra):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(root / "tests" / "pretrain_with_callbacks.py"),
           str(out), str(steps), str(every), *extra]
    for o in sets:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{root}:{os.environ.get('PYTHONPATH', '')}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@needs_tutel
def test_two_process_tutel_pretraining_resumes_exactly_and_loads_as_native(tmp_path):
    """torchrun, 2 gloo processes, tutel backend (experts sharded): a run killed after step 3 and resumed from its
    step-2 checkpoint logs the losses of an uninterrupted run (each rank's experts come back, not rank 0's; the
    expert moments here are too small, about 1e-10, for the losses to tell them apart within 1e-6: that is
    test_resume_gives_each_rank_its_own_expert_moments); the checkpoint loads as a native model on one process."""
    from test_pretrain import TINY, read_metrics, write_pretrain_stores

    from xgeo.model.checkpoint import load_pretrained

    zarr = write_pretrain_stores(tmp_path / "zarr")
    sets = [f"paths.zarr={zarr}", "mlflow.enabled=false", "model.moe.backend=tutel", *TINY]
    proc = _torchrun(tmp_path, tmp_path / "whole", 4, 2, sets)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = _torchrun(tmp_path, tmp_path / "killed", 4, 2, sets, "--kill-at", "3")
    assert proc.returncode != 0
    proc = _torchrun(tmp_path, tmp_path / "killed", 4, 2, sets, "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    whole, resumed = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("whole", "killed"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    keys = [k for k in whole[0] if k.startswith("loss") or k in ("rec_loss", "aux_loss", "lr", "grad_norm")]
    assert "loss" in keys and "aux_loss" in keys
    for a, b in zip(whole, resumed):
        for k in keys:
            assert b[k] == pytest.approx(a[k], abs=1e-6, rel=0), (a["step"], k)
    model, meta = load_pretrained(tmp_path / "whole" / "last.ckpt")
    assert meta["model_config"]["moe"]["backend"] == "tutel"
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    assert layers and all(not torch.equal(m.w1[: m.num_experts // 2], m.w1[m.num_experts // 2:]) for m in layers)
    with torch.no_grad():
        feats = model.forward_encoder(torch.randn(1, 13, 64, 64), "s2")[0]
    assert torch.isfinite(feats).all()
