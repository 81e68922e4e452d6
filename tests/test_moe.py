"""The native MoE layer against a slow per-token reference, hand-made routings and tutel's formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xgeo.errors import XGeoError
from xgeo.model.moe import MoE, build_moe, capacity, gshard_loss, load_importance_loss, route, tutel_available


def reference_moe(moe: MoE, x: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, list[int]]:
    """Token by token, expert by expert, in float64, straight from the formulas (tutel's semantics).

    Returns (y (S, d), tokens processed per expert)."""
    S, d = x.shape
    E, k = moe.num_experts, moe.top_k
    xd = x.double()
    logits = xd @ moe.gate.weight.double().t()
    if noise is not None:
        logits = logits + moe.gate_noise * noise.double() / E
    probs = [torch.softmax(logits[i], 0).tolist() for i in range(S)]
    choices, gates = [], []
    for i in range(S):
        ranked = sorted(range(E), key=lambda e: -probs[i][e])[:k]
        g = [probs[i][e] for e in ranked]
        if k > 1:
            g = [v / sum(g) for v in g]
        choices.append(ranked)
        gates.append(g)
    order = sorted(range(S), key=lambda i: -max(probs[i])) if moe.batch_prioritized else list(range(S))
    cap = k * int(moe.capacity_factor * math.ceil(S / E))
    count = [0] * E
    keep = {}
    for j in range(k):  # every token's j-th choice queues behind all (j-1)-th choices
        for i in order:
            e = choices[i][j]
            keep[i, j] = count[e] < cap
            count[e] += 1
    y = torch.zeros(S, d, dtype=torch.float64)
    load = [0] * E
    for i in range(S):
        for j in range(k):
            if not keep[i, j]:
                continue
            e = choices[i][j]
            load[e] += 1
            h = F.gelu(xd[i] @ moe.w1[e].double() + moe.b1[e, 0].double())
            y[i] += gates[i][j] * (h @ moe.w2[e].double() + moe.b2[e, 0].double())
    return y, load


def _moe(**kw) -> MoE:
    torch.manual_seed(1)
    m = MoE(16, 24, **{"num_experts": 4, **kw})
    with torch.no_grad():  # larger gate weights than the 0.02 init, so routing is far from uniform
        m.gate.weight.normal_(0, 1.0)
        m.b1.normal_(0, 0.1)
        m.b2.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("top_k,bpr,cf", [(1, True, 1.25), (1, False, 0.5), (2, True, 0.75), (2, False, 1.0)])
def test_equals_slow_reference_without_noise(top_k, bpr, cf):
    moe = _moe(top_k=top_k, batch_prioritized=bpr, capacity_factor=cf).eval()
    x = torch.randn(40, 16)
    y = moe(x)
    ref, load = reference_moe(moe, x, noise=None)
    assert torch.allclose(y.double(), ref, atol=1e-5)
    assert moe.last_stats["load"].tolist() == load
    dropped = 1 - sum(load) / (40 * top_k)
    assert float(moe.last_stats["dropped"]) == pytest.approx(dropped)
    if cf < 1:
        assert dropped > 0  # the case really exercises capacity


@pytest.mark.parametrize("top_k", [1, 2])
def test_equals_slow_reference_with_gate_noise(top_k):
    moe = _moe(top_k=top_k, gate_noise=1.0).train()
    x = torch.randn(3, 10, 16)  # (B, L, C) as a Swin block calls its MLP
    torch.manual_seed(7)
    y = moe(x)
    torch.manual_seed(7)
    noise = torch.randn(30, 4)
    ref, load = reference_moe(moe, x.reshape(30, 16), noise=noise)
    assert y.shape == x.shape
    assert torch.allclose(y.reshape(30, 16).double(), ref, atol=1e-5)
    assert moe.last_stats["load"].tolist() == load
    assert moe.load_count.tolist() == [float(v) for v in load]  # accumulated in training


def _hand_moe(**kw) -> MoE:
    """dim = E = 4 and an identity gate: the input rows are the logits."""
    m = MoE(4, 8, num_experts=4, gate_noise=1.0, **kw).eval()
    with torch.no_grad():
        m.gate.weight.copy_(torch.eye(4))
    return m


def _hand_logits() -> torch.Tensor:
    """10 tokens: 6 to expert 0 with confidence rising with the index, 2 to expert 1, 2 to expert 2, none to 3."""
    rows = [[1.0 + i, 0, 0, 0] for i in range(6)] + [[0, 3.0, 0, 0]] * 2 + [[0, 0, 3.0, 0]] * 2
    return torch.tensor(rows)


def test_capacity_and_dropped_counts_on_a_hand_made_routing():
    assert capacity(10, 4, 1, 1.25) == 3  # 1 * int(1.25 * ceil(10 / 4))
    assert capacity(10, 4, 2, 1.25) == 6
    assert capacity(96, 8, 1, 1.0) == 12
    moe = _hand_moe(batch_prioritized=False)
    y = moe(_hand_logits())
    assert moe.last_stats["capacity"] == 3
    assert moe.last_stats["routed"].tolist() == [6, 2, 2, 0]
    assert moe.last_stats["load"].tolist() == [3, 2, 2, 0]
    assert float(moe.last_stats["dropped"]) == pytest.approx(3 / 10)
    # without priority the first three tokens of expert 0 are kept; dropped tokens output exactly 0
    assert (y[3:6] == 0).all() and (y[:3] != 0).any(dim=1).all() and (y[6:] != 0).any(dim=1).all()


def test_batch_prioritized_routing_keeps_the_most_confident_tokens():
    logits = _hand_logits()
    r = route(logits, 1, 1.25, batch_prioritized=True)
    # expert 0: the three most confident tokens (indices 5, 4, 3) take slots 0, 1, 2 in that order
    assert r.slots[3:6, 0].tolist() == [2, 1, 0]
    assert r.kept[:, 0].tolist() == [False] * 3 + [True] * 7
    r = route(logits, 1, 1.25, batch_prioritized=False)
    assert r.slots[:6, 0].tolist() == [0, 1, 2, 3, 4, 5]
    moe = _hand_moe(batch_prioritized=True)
    y = moe(logits)
    assert (y[:3] == 0).all() and (y[3:] != 0).any(dim=1).all()


def test_second_choices_queue_behind_first_choices():
    # 4 tokens all preferring expert 0 then expert 1; capacity 2 * int(1.0 * ceil(4 / 2)) = 4 per expert
    logits = torch.tensor([[2.0, 1.0]] * 4)
    r = route(logits, 2, 1.0, batch_prioritized=False)
    assert r.capacity == 4
    assert r.slots.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]]
    r = route(torch.tensor([[2.0, 1.0], [1.0, 2.0], [2.0, 1.0]]), 2, 1.0, batch_prioritized=False)
    # expert 0: first choices of tokens 0, 2 (slots 0, 1), then token 1's second choice (slot 2)
    assert r.experts.tolist() == [[0, 1], [1, 0], [0, 1]]
    assert r.slots.tolist() == [[0, 1], [0, 2], [1, 2]]
    assert torch.allclose(r.gates.sum(1), torch.ones(3))  # normalised over the k choices


def _phi(v: float) -> float:
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def test_aux_losses_on_hand_made_routings():
    E = 4
    balanced = torch.eye(E).repeat(3, 1) * 5.0  # 12 tokens, 3 per expert, same confidence
    assert float(gshard_loss(balanced.softmax(1), balanced.topk(1, 1).indices)) == pytest.approx(1.0)
    assert float(load_importance_loss(balanced, balanced, 1, 1.0)) == pytest.approx(0.0, abs=1e-12)
    collapsed = torch.tensor([[30.0, 0, 0, 0]] * 8)
    # GShard: E * mean p_0 * frac_0 = 4 * 1 * 1
    assert float(gshard_loss(collapsed.softmax(1), collapsed.topk(1, 1).indices)) == pytest.approx(4.0)
    # two tokens, two experts, logits [1, 0]: importance and smooth load by hand
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p0, p1 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))
    imp = [2 * p0, 2 * p1]
    var = lambda v: sum((a - sum(v) / len(v)) ** 2 for a in v) / (len(v) - 1)  # unbiased, as torch.var
    l_imp = var(imp) / ((sum(imp) / 2) ** 2 + 1e-10)
    sigma = 1.0 / 2  # gate_noise / E
    load = [2 * _phi((p0 - 1.0) / sigma), 2 * _phi((p1 - 1.0) / sigma)]  # threshold: the top noisy logit, 1.0
    l_load = var(load) / ((sum(load) / 2) ** 2 + 1e-10)
    assert float(load_importance_loss(logits, logits, 1, 1.0)) == pytest.approx((l_imp + l_load) / 2, rel=1e-6)
    assert float(gshard_loss(logits.softmax(1), logits.topk(1, 1).indices)) == pytest.approx(2 * p0, rel=1e-6)


def test_module_stores_the_configured_aux_loss():
    x = _hand_logits()
    moe = _hand_moe(aux_loss="gshard")
    moe(x)
    assert float(moe.aux_loss.detach()) == pytest.approx(float(gshard_loss(x.softmax(1), x.topk(1, 1).indices)))
    moe = _hand_moe(aux_loss="load_importance")
    moe(x)
    assert float(moe.aux_loss.detach()) == pytest.approx(float(load_importance_loss(x, x, 1, 1.0)))


def test_gradients_reach_the_gate_and_every_used_expert_only():
    moe = _hand_moe(batch_prioritized=True)
    x = _hand_logits().clone().requires_grad_(True)
    moe(x).pow(2).sum().backward()  # the output only: the aux loss would move the gate anyway
    assert moe.gate.weight.grad.abs().sum() > 0
    for e in range(3):  # experts 0, 1, 2 process tokens
        for p in (moe.w1, moe.b1, moe.w2, moe.b2):
            assert p.grad[e].abs().sum() > 0, e
    for p in (moe.w1, moe.b1, moe.w2, moe.b2):  # expert 3 receives no token
        assert (p.grad[3] == 0).all()
    assert (x.grad[:3] == 0).all() and (x.grad[3:] != 0).any(dim=1).all()  # dropped tokens: no path through MoE
    moe.zero_grad()
    moe(_hand_logits())
    moe.aux_loss.backward()
    assert moe.gate.weight.grad.abs().sum() > 0


def test_gate_runs_in_fp32_under_bf16_autocast():
    moe = _moe().eval()
    x = torch.randn(20, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = moe.noisy_logits(x)
        y = moe(x)
    assert logits.dtype == torch.float32
    assert y.dtype == x.dtype and torch.allclose(y, moe(x), atol=0.05)


def test_bad_moe_settings_are_clear_errors():
    with pytest.raises(XGeoError, match="aux_loss"):
        MoE(8, 8, aux_loss="switch")
    with pytest.raises(XGeoError, match="gate_noise"):
        MoE(8, 8, gate_noise=0.0)
    with pytest.raises(XGeoError, match="top_k"):
        MoE(8, 8, num_experts=2, top_k=3)
    with pytest.raises(XGeoError, match="backend"):
        build_moe(8, 8, {"backend": "deepspeed", "num_experts": 2, "top_k": 1, "capacity_factor": 1.0,
                         "gate_noise": 1.0})


CFG = {"backend": "tutel", "num_experts": 4, "top_k": 1, "capacity_factor": 1.25, "gate_noise": 1.0,
       "aux_loss": "load_importance", "batch_prioritized": True}


@pytest.mark.skipif(tutel_available(), reason="tutel is installed")
def test_tutel_backend_without_tutel_says_how_to_install():
    with pytest.raises(XGeoError, match="NO_CUDA=1"):
        build_moe(16, 32, CFG)


@pytest.mark.skipif(not tutel_available(), reason="tutel is not installed (not on PyPI)")
def test_tutel_backend_runs_and_marks_experts():
    layer = build_moe(16, 32, CFG)
    y = layer(torch.randn(2, 8, 16))
    assert y.shape == (2, 8, 16) and torch.isfinite(layer.aux_loss)
    assert layer.expert_parameters() and all(p.skip_allreduce for p in layer.expert_parameters())


# ---------------------------------------------------------------------------------- expert-parallel checkpoints
class _ShardedExperts(torch.nn.Module):
    """A rank's shard of E experts, checkpointed through the tutel backend's own hooks (tutel itself absent)."""

    def __init__(self, num_experts, rank, world):
        super().__init__()
        from xgeo.model.moe import _gather_expert_state, _shard_expert_state

        self.rank, self.world = rank, world
        local = num_experts // world
        # tutel-like layouts: experts on axis 1 of fc1 (1, E_local, h, d), on axis 0 of the biases
        self.fc1_w = torch.nn.Parameter(torch.zeros(1, local, 6, 4))
        self.fc1_bias = torch.nn.Parameter(torch.zeros(local, 1, 6))
        self.gate = torch.nn.Linear(4, num_experts, bias=False)  # replicated: not an expert parameter
        self._register_state_dict_hook(_gather_expert_state)
        self.register_load_state_dict_pre_hook(_shard_expert_state)

    def expert_parameter_names(self):
        return ["fc1_w", "fc1_bias"]


def _full_experts(E):
    return {"fc1_w": torch.arange(E * 24, dtype=torch.float32).view(1, E, 6, 4),
            "fc1_bias": torch.arange(E * 6, dtype=torch.float32).view(E, 1, 6)}


def _two_rank_save(rank, world, init, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    m = _ShardedExperts(4, rank, world)
    full = _full_experts(4)
    with torch.no_grad():  # rank r holds experts 2r, 2r + 1
        m.fc1_w.copy_(full["fc1_w"][:, 2 * rank: 2 * rank + 2])
        m.fc1_bias.copy_(full["fc1_bias"][2 * rank: 2 * rank + 2])
    state = m.state_dict()  # every rank: a collective
    if rank == 0:
        torch.save(state, out)
    dist.destroy_process_group()


def test_expert_parallel_checkpoint_holds_every_expert_and_loads_with_other_process_counts(tmp_path):
    """Two gloo processes, 2 experts each: the saved state holds all 4 experts in rank order; it loads into one
    process (all 4) and into rank 2 of 4 processes (expert 2 only)."""
    import torch.multiprocessing as mp

    out = tmp_path / "experts.pt"
    mp.spawn(_two_rank_save, args=(2, f"file://{tmp_path}/pg", str(out)), nprocs=2, join=True)
    state = torch.load(out)
    full = _full_experts(4)
    # both ranks' shards, stacked in rank order
    assert state["fc1_w"].shape == (2, 1, 2, 6, 4)
    assert torch.equal(torch.cat(list(state["fc1_w"]), 1), full["fc1_w"])
    assert torch.equal(torch.cat(list(state["fc1_bias"]), 0), full["fc1_bias"])
    two = _ShardedExperts(4, 1, 2)
    two.load_state_dict(state)
    assert torch.equal(two.fc1_w, full["fc1_w"][:, 2:])
    one = _ShardedExperts(4, 0, 1)
    one.load_state_dict(state)
    assert torch.equal(one.fc1_w, full["fc1_w"])
    quarter = _ShardedExperts(4, 2, 4)
    quarter.load_state_dict(state)
    assert torch.equal(quarter.fc1_w, full["fc1_w"][:, 2:3]) and torch.equal(quarter.fc1_bias, full["fc1_bias"][2:3])
    with pytest.raises(XGeoError, match="cannot be split over 3 processes"):
        _ShardedExperts(3, 0, 3).load_state_dict(state)
    # a one-process checkpoint (all 4 experts, stacked once) loads into 2 processes
    one_state = one.state_dict()
    assert one_state["fc1_w"].shape == (1, 1, 4, 6, 4)
    again = _ShardedExperts(4, 1, 2)
    again.load_state_dict(one_state)
    assert torch.equal(again.fc1_bias, full["fc1_bias"][2:])


def test_expert_biases_out_of_weight_decay_and_one_init_for_both_backends():
    from xgeo.model.moe import init_moe_parameters, is_bias

    assert [is_bias(n) for n in ("blocks.1.mlp.b1", "layer.experts.batched_fc1_bias", "mlp.w1", "x.fc2_w")] == \
        [True, True, False, False]
    torch.manual_seed(3)
    native = MoE(32, 64, num_experts=4)
    # tutel's names and layouts: the same init, by name (weights trunc normal 0.02, biases zero)
    tutel_like = [("experts.batched_fc1_w", torch.ones(1, 4, 64, 32)), ("experts.batched_fc1_bias", torch.ones(4, 1, 64)),
                  ("experts.batched_fc2_w", torch.ones(1, 4, 64, 32)), ("gates.0.wg.weight", torch.ones(4, 32))]
    init_moe_parameters(tutel_like)
    for (name, t), ref in zip(tutel_like, (native.w1, native.b1, native.w2, native.gate.weight)):
        if is_bias(name):
            assert not t.any() and not ref.any(), name
        else:
            assert float(t.std()) == pytest.approx(0.02, rel=0.15) and float(ref.std()) == pytest.approx(0.02, rel=0.15)
