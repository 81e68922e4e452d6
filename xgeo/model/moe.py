"""Sparse Mixture of Experts in place of a Swin block's MLP (paper section 3.4, Table 11).

Native router with tutel's semantics (the library Swin-MoE uses), S tokens, E experts, top-k:

    logits   = x W_g                      fp32, no bias
    l~       = logits + gate_noise * N(0, 1) / E          (training only)
    p        = softmax(l~)                (S, E)
    e_i^j    = j-th largest p_i,  g_i^j = p_i[e_i^j]      (renormalised over the k choices when k > 1)
    capacity = k * int(cf * ceil(S / E))
    slot     = how many token-choices went to that expert before this one; the order is choice-major
               (all first choices, then all second ones) and, with batch-prioritised routing, tokens by
               descending max p within each choice
    y_i      = sum_j g_i^j * FFN_{e_i^j}(x_i) over the choices with slot < capacity (dropped: 0, the block's
               residual carries the token),  FFN_e(x) = act(x W1_e + b1_e) W2_e + b2_e

Experts run batched: the kept token-choices are scattered into an (E, capacity, d) buffer and one ``baddbmm``
per layer computes every expert at once; no Python loop over tokens or experts.

Auxiliary losses (``aux_loss``), both differentiable in the gate:
- ``load_importance`` (tutel's default, used by Swin-MoE): (l_imp + l_load) / 2 with
  l_imp = Var(Imp) / (Mean(Imp)^2 + 1e-10), Imp_e = sum_i softmax(logits)_ie (noise free), and l_load the same over
  Load_e = sum_i Phi((softmax(logits)_ie - t_i) / (gate_noise / E)), t_i the k-th largest noisy logit.
  (tutel compares a probability with a logit here; kept as it computes it. Var is the unbiased variance.)
- ``gshard``: E * sum_e mean_i(p_ie) * frac_e, frac_e the share of first choices of expert e (1 when balanced).

``backend: tutel`` wraps ``tutel.moe.moe_layer`` with the same configuration when tutel is installed. The two
backends' state dicts map onto each other (``native_to_tutel`` / ``tutel_to_native``); each layer's load hook applies
the mapping, so a checkpoint of either backend, written by any number of processes, loads into the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XGeoError

AUX_LOSSES = ("load_importance", "gshard")
TUTEL_INSTALL = ("tutel is not on PyPI: install it from its repository, e.g. "
                 "`NO_CUDA=1 pip install git+https://github.com/microsoft/tutel@main` for a CPU build "
                 "(drop NO_CUDA=1 on a CUDA machine), or set model.moe.backend: native")


def is_bias(name: str) -> bool:
    """An expert bias in either backend (native b1 / b2, tutel's *bias*): no weight decay, zero init."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("b1", "b2") or "bias" in leaf


def init_moe_parameters(named: list[tuple[str, torch.Tensor]]) -> None:
    """The one initialisation of both backends: the init timm gives the dense MLP's Linear layers (trunc normal
    std 0.02 for weights and the gate, zero biases), drawn from the global RNG in the order given."""
    with torch.no_grad():
        for name, p in named:
            if is_bias(name):
                nn.init.zeros_(p)
            else:
                nn.init.trunc_normal_(p, std=0.02)


# ------------------------------------------------------------------------------------- expert-parallel checkpoints
# A rank of the tutel backend holds E / N experts. Its checkpoint entry for an expert tensor of local shape S is every
# rank's shard stacked, (N, *S): written by any N, it loads with any M dividing E. The expert axis need not be
# known: it is the axis where the saved shard and this rank's shard differ (the shards are concatenated along it
# and cut again); with N == M each rank takes its own shard.
def gather_experts(local: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's shard stacked in rank order: (N, *local.shape); (1, *local.shape) on one process.
    Every rank must call it (a collective)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return local.unsqueeze(0)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.stack(parts)


def shard_experts(saved: torch.Tensor, shape: torch.Size, rank: int, world: int, name: str = "experts") -> torch.Tensor:
    """This rank's part (of ``shape``) of a saved expert tensor: stacked shards (N, *S) or all experts at once."""
    shards = saved if saved.ndim == len(shape) + 1 else saved.unsqueeze(0)
    if tuple(shards.shape[1:]) == tuple(shape):
        if shards.shape[0] == world:
            return shards[rank]
        if world == 1 and shards.shape[0] == 1:
            return shards[0]
        raise XGeoError(f"checkpoint {name}: saved by {shards.shape[0]} process(es) with {tuple(shape)} each; "
                        f"this run has {world} processes of the same shape, so the expert counts differ")
    differ = [d for d, (a, b) in enumerate(zip(shards.shape[1:], shape)) if a != b]
    if len(shards.shape) - 1 != len(shape) or len(differ) != 1:
        raise XGeoError(f"checkpoint {name}: shards of shape {tuple(shards.shape[1:])} do not fit experts of shape "
                        f"{tuple(shape)}")
    dim = differ[0]
    full = torch.cat(list(shards), dim)
    if full.shape[dim] != shape[dim] * world:
        raise XGeoError(f"checkpoint {name}: {full.shape[dim]} experts cannot be split over {world} processes of "
                        f"{shape[dim]} experts each; use a number of processes that divides {full.shape[dim]}")
    return full.narrow(dim, rank * shape[dim], shape[dim]).clone()


# ------------------------------------------------------------------------------------ tutel <-> native state dicts
# tutel's expert FFN (tutel/experts/ffn.py, FusedExpertsNetwork) holds per rank, for its E_l = E / N experts:
#   batched_fc1_w (E_l, h, d)  fc1's Linear weight (out x in) per expert    native w1 (E, d, h) = its transpose
#   batched_fc2_w (E_l, h, d)  fc2's weight transposed (in x out)           native w2 (E, h, d) as it is
#   batched_fc1_bias (E_l, h), batched_fc2_bias (E_l, d)                     native b1 (E, 1, h), b2 (E, 1, d)
# and its gate gates.0.wg.weight (E, d) (native gate.weight) and the buffer _num_global_experts. In a TutelMoE these
# sit under ``layer.``; its state dict stacks every rank's expert shard in rank order, (N, E_l, ...), and rank r holds
# the global experts r * E_l .. (r + 1) * E_l - 1, so flattening the first two axes gives the experts in order.
# As tutel's own loader does (MOELayer._load_from_state_dict), a saved expert tensor is read by element count, so
# the stacking, and tutel versions storing the same values under another view, map alike.
TUTEL_PREFIX = "layer."
TUTEL_GATE = "layer.gates.0.wg.weight"
TUTEL_EXPERTS = {"w1": "layer.experts.batched_fc1_w", "b1": "layer.experts.batched_fc1_bias",
                 "w2": "layer.experts.batched_fc2_w", "b2": "layer.experts.batched_fc2_bias"}
TUTEL_NUM_EXPERTS = "layer._num_global_experts"
NATIVE_KEYS = ("gate.weight", "w1", "b1", "w2", "b2")


def _experts_view(t: torch.Tensor, shape: tuple[int, ...], key: str) -> torch.Tensor:
    if t.numel() != int(torch.tensor(shape).prod()):
        raise XGeoError(f"checkpoint {key}: expected {'x'.join(map(str, shape))} values (experts x ...), found a "
                        f"tensor of shape {tuple(t.shape)}; was it written by a model of another size?")
    return t.reshape(shape)


def is_tutel_state(state: Mapping, prefix: str = "") -> bool:
    return prefix + TUTEL_GATE in state


def is_native_state(state: Mapping, prefix: str = "") -> bool:
    return prefix + "w1" in state and prefix + "gate.weight" in state


def tutel_to_native(state: dict, prefix: str = "") -> dict:
    """The MoE layer under ``prefix`` of a tutel-backend state dict (any process count) in the native layout.
    Other keys are kept; tutel's ``_num_global_experts`` is dropped (the gate's rows are the experts)."""
    out = {k: v for k, v in state.items() if not k.startswith(prefix + TUTEL_PREFIX)}
    gate = state[prefix + TUTEL_GATE]
    E, d = gate.shape
    fc1 = state[prefix + TUTEL_EXPERTS["w1"]]
    bias1 = state.get(prefix + TUTEL_EXPERTS["b1"])
    h = bias1.numel() // E if bias1 is not None else fc1.numel() // (E * d)  # the expert hidden width
    out[prefix + "gate.weight"] = gate.clone()
    out[prefix + "w1"] = _experts_view(fc1, (E, h, d), prefix + TUTEL_EXPERTS["w1"]).transpose(1, 2).contiguous()
    out[prefix + "w2"] = _experts_view(state[prefix + TUTEL_EXPERTS["w2"]], (E, h, d), prefix + TUTEL_EXPERTS["w2"]).clone()
    for name, width in (("b1", h), ("b2", d)):
        key = prefix + TUTEL_EXPERTS[name]
        out[prefix + name] = (_experts_view(state[key], (E, 1, width), key).clone() if key in state
                              else gate.new_zeros(E, 1, width))  # a tutel FFN built without biases
    stray = [k for k in state if k.startswith(prefix + TUTEL_PREFIX) and k not in
             {prefix + TUTEL_GATE, prefix + TUTEL_NUM_EXPERTS, *(prefix + v for v in TUTEL_EXPERTS.values())}]
    if stray:
        raise XGeoError(f"checkpoint: tutel MoE entries with no native counterpart: {stray[:4]} (a gate or expert "
                        f"type other than top-k over FFN experts)")
    return out


def native_to_tutel(state: dict, prefix: str = "") -> dict:
    """The MoE layer under ``prefix`` of a native state dict in the tutel backend's layout, as one process saves it
    (every expert in one stacked shard, (1, E, ...)); it loads with any number of processes dividing E."""
    out = {k: v for k, v in state.items() if k not in {prefix + n for n in NATIVE_KEYS}}
    w1, w2 = state[prefix + "w1"], state[prefix + "w2"]
    E, d, h = w1.shape
    out[prefix + TUTEL_GATE] = state[prefix + "gate.weight"].clone()
    out[prefix + TUTEL_EXPERTS["w1"]] = w1.transpose(1, 2).contiguous().unsqueeze(0)
    out[prefix + TUTEL_EXPERTS["w2"]] = w2.clone().unsqueeze(0)
    out[prefix + TUTEL_EXPERTS["b1"]] = state[prefix + "b1"].reshape(1, E, h).clone()
    out[prefix + TUTEL_EXPERTS["b2"]] = state[prefix + "b2"].reshape(1, E, d).clone()
    out[prefix + TUTEL_NUM_EXPERTS] = torch.tensor(E)
    return out


def capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """tutel's capacity per expert: k * int(cf * ceil(S / E))."""
    return top_k * int(capacity_factor * ((num_tokens + num_experts - 1) // num_experts))


@dataclass
class Routing:
    """Where every token-choice goes. S tokens, k choices.

    experts, slots: (S, k) long; gates: (S, k) float (differentiable); kept: (S, k) bool (slot < capacity);
    scores: (S, E) softmax of the (noisy) logits; capacity: slots per expert.
    """

    experts: torch.Tensor
    gates: torch.Tensor
    slots: torch.Tensor
    kept: torch.Tensor
    scores: torch.Tensor
    capacity: int


def route(noisy_logits: torch.Tensor, top_k: int, capacity_factor: float, batch_prioritized: bool) -> Routing:
    """Top-k routing with capacity. noisy_logits: (S, E) fp32 (noise already added when training)."""
    S, E = noisy_logits.shape
    k = min(top_k, E)
    scores = noisy_logits.softmax(dim=1)
    top = scores.topk(k, dim=1)
    experts, gates = top.indices, top.values
    if k > 1:  # tutel's normalize_gate: the k gates of a token sum to one
        gates = gates / gates.sum(dim=1, keepdim=True).clamp_min(torch.finfo(gates.dtype).eps)
    if batch_prioritized:  # confident tokens first, so capacity drops the least certain ones
        order = torch.argsort(-scores.detach().max(dim=1).values, stable=True)
    else:
        order = torch.arange(S, device=scores.device)
    onehot = F.one_hot(experts[order].t(), E)  # (k, S, E) in priority order, choice-major
    # slot = running count per expert over (choice, token) flattened: the j-th choices queue behind all (j-1)-th
    positions = onehot.reshape(k * S, E).cumsum(0).reshape(k, S, E) - 1
    slots_sorted = (positions * onehot).sum(-1)  # (k, S)
    slots = torch.empty_like(slots_sorted)
    slots[:, order] = slots_sorted
    slots = slots.t().contiguous()  # (S, k)
    cap = capacity(S, E, k, capacity_factor)
    return Routing(experts, gates, slots, slots < cap, scores, cap)


def importance_loss(probs: torch.Tensor) -> torch.Tensor:
    """Var(Imp) / (Mean(Imp)^2 + 1e-10), Imp_e = sum_i probs_ie. probs: (S, E) noise-free softmax."""
    imp = probs.float().sum(0)
    return imp.var() / (imp.mean() ** 2 + 1e-10)


def load_loss(probs: torch.Tensor, noisy_logits: torch.Tensor, top_k: int, gate_noise: float) -> torch.Tensor:
    """Smooth load estimate of tutel: Load_e = sum_i Phi((probs_ie - t_i) / (gate_noise / E)), then Var / Mean^2."""
    E = probs.shape[1]
    threshold = noisy_logits.topk(min(top_k, E), dim=1).values[:, -1:]
    normal = torch.distributions.Normal(torch.zeros((), device=probs.device),
                                        torch.full((), gate_noise / E, device=probs.device))
    load = normal.cdf(probs.float() - threshold.float()).sum(0)
    return load.var() / (load.mean() ** 2 + 1e-10)


def load_importance_loss(logits: torch.Tensor, noisy_logits: torch.Tensor, top_k: int,
                         gate_noise: float) -> torch.Tensor:
    """(l_imp + l_load) / 2 as tutel computes it. logits, noisy_logits: (S, E)."""
    probs = logits.softmax(dim=1)
    return (importance_loss(probs) + load_loss(probs, noisy_logits, top_k, gate_noise)) / 2


def gshard_loss(scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """E * sum_e mean_i(scores_ie) * frac_e, frac_e the share of first choices. scores (S, E), experts (S, k)."""
    S, E = scores.shape
    frac = F.one_hot(experts[:, 0], E).to(scores.dtype).mean(0)
    return E * (scores.mean(0) * frac).sum()


class MoE(nn.Module):
    """Top-k sparse MoE of E expert FFNs; a drop-in for a Swin block's MLP.

    forward(x: (..., d)) -> (..., d); stores ``self.aux_loss`` (a scalar tensor, unweighted) and ``self.last_stats``
    = {"load": (E,) token-choices each expert processed, "routed": (E,) assigned before capacity,
    "dropped": float, the fraction of token-choices beyond capacity, "capacity": int}. ``load_count`` (E,)
    accumulates the processed tokens over training forwards (persistent: the timm export weights experts by it).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int = 8, top_k: int = 1, capacity_factor: float = 1.25,
                 gate_noise: float = 1.0, aux_loss: str = "load_importance", batch_prioritized: bool = True,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        if aux_loss not in AUX_LOSSES:
            raise XGeoError(f"params.yaml: model.moe.aux_loss is {aux_loss!r}; expected one of {list(AUX_LOSSES)}")
        if aux_loss == "load_importance" and gate_noise <= 0:
            raise XGeoError("params.yaml: model.moe.aux_loss load_importance needs model.moe.gate_noise > 0 "
                            f"(it is the scale of the smooth load estimate), found {gate_noise}; use gshard instead")
        if not 1 <= top_k <= num_experts:
            raise XGeoError(f"params.yaml: model.moe.top_k is {top_k}; expected 1..num_experts ({num_experts})")
        self.dim, self.hidden, self.num_experts, self.top_k = dim, hidden, num_experts, top_k
        self.capacity_factor, self.gate_noise = capacity_factor, gate_noise
        self.aux_kind, self.batch_prioritized = aux_loss, batch_prioritized
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, 1, dim))
        self.act = act_layer()
        self.register_buffer("load_count", torch.zeros(num_experts, dtype=torch.float64))
        self.reset_parameters()
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.last_stats: dict = {}
        self.register_load_state_dict_pre_hook(_native_from_tutel)

    def reset_parameters(self) -> None:
        init_moe_parameters([("gate.weight", self.gate.weight), ("w1", self.w1), ("b1", self.b1), ("w2", self.w2),
                             ("b2", self.b2)])

    def expert_parameters(self) -> list[nn.Parameter]:
        return [self.w1, self.b1, self.w2, self.b2]

    def noisy_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (S, d) -> (logits, noisy logits), both (S, E) fp32 even under autocast."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.gate.weight.float())
        if self.training and self.gate_noise > 0:
            return logits, logits + self.gate_noise * torch.randn_like(logits) / self.num_experts
        return logits, logits

    def experts_forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Dispatch kept token-choices into (E, C', d), run every expert with one bmm per layer, combine. -> (S, d).

        C' is the capacity C on CUDA (static shapes: no host-device sync, one graph for torch.compile). On the CPU,
        where reading a count costs nothing, C' is the largest number of kept choices of any expert: the rows past
        it are padding in every expert, whose outputs tutel computes and throws away, so the result is the same
        and the expert GEMMs skip up to (cf - 1) / cf of their rows (20 % at cf 1.25 with balanced routing).
        Dropped choices are scattered to a spare row past the buffer (no boolean indexing) and gathered back from
        row 0 with a zero weight.
        """
        S, d = x.shape
        E, k = self.num_experts, routing.experts.shape[1]
        C = routing.capacity
        if x.device.type == "cpu":
            C = max(1, min(C, int(routing.slots.masked_fill(~routing.kept, -1).max()) + 1))
        kept = routing.kept  # every kept slot is < C'
        rows = routing.experts * C + routing.slots  # (S, k) token-major
        src = x.repeat_interleave(k, dim=0) if k > 1 else x
        spare = E * C
        # kept rows are unique; only the spare row accumulates (and is discarded)
        dispatch = torch.where(kept, rows, spare).reshape(-1)
        buffer = x.new_zeros(spare + 1, d).index_put((dispatch,), src, accumulate=True)[:spare].view(E, C, d)
        h = self.act(torch.baddbmm(self.b1.to(x.dtype), buffer, self.w1.to(x.dtype)))
        out = torch.baddbmm(self.b2.to(h.dtype), h, self.w2.to(h.dtype)).view(spare, d)
        weight = (routing.gates * kept).reshape(-1, 1).to(out.dtype)  # 0 for dropped choices
        combine = torch.where(kept, rows, 0).reshape(-1)
        return (out[combine] * weight).view(S, k, d).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits, noisy = self.noisy_logits(tokens)
        routing = route(noisy, self.top_k, self.capacity_factor, self.batch_prioritized)
        if self.aux_kind == "gshard":
            self.aux_loss = gshard_loss(routing.scores, routing.experts)
        else:
            self.aux_loss = load_importance_loss(logits, noisy, self.top_k, self.gate_noise)
        y = self.experts_forward(tokens, routing)
        with torch.no_grad():
            onehot = F.one_hot(routing.experts, self.num_experts)  # (S, k, E)
            routed = onehot.sum((0, 1)).float()
            load = (onehot * routing.kept.unsqueeze(-1)).sum((0, 1)).float()
            self.last_stats = {"load": load, "routed": routed, "capacity": routing.capacity,
                               "dropped": float(1.0 - load.sum() / routed.sum().clamp_min(1))}
            if self.training:
                self.load_count += load.to(self.load_count.dtype)
        return y.to(x.dtype).reshape(shape)

    def expert_weights(self) -> torch.Tensor:
        """(E,) share of the tokens each expert processed in training (uniform before any training step)."""
        total = self.load_count.sum()
        if total <= 0:
            return torch.full((self.num_experts,), 1.0 / self.num_experts, dtype=torch.float64)
        return self.load_count / total

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, experts={self.num_experts}, top_k={self.top_k}, "
                f"capacity_factor={self.capacity_factor}, gate_noise={self.gate_noise}, aux={self.aux_kind}, "
                f"batch_prioritized={self.batch_prioritized}")


class TutelMoE(nn.Module):
    """The same layer through ``tutel.moe.moe_layer`` (expert parallel over ranks; experts carry skip_allreduce).

    Each rank holds E / world_size experts, as Swin-MoE does. Its state dict holds ALL experts: saving gathers every
    rank's shard (``gather_experts``; every rank takes part), loading keeps this rank's part (``shard_experts``), so
    a checkpoint written by N processes loads with any M dividing E, and (``tutel_to_native``) into the native
    backend; a native checkpoint loads here (``native_to_tutel``). Parameters start as the native backend's from the
    same RNG state: a native layer is drawn (every rank draws all E experts) and this rank keeps its shard, so both
    backends and any process count start from the same model (tutel's ``seeds`` re-seed the global RNG while the
    layer is built; that runs in a forked RNG). ``load_count`` is kept for the native layout (the timm export weights
    experts by it) but not updated: tutel keeps its routing internal, as it does ``last_stats`` (left empty).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int = 8, top_k: int = 1, capacity_factor: float = 1.25,
                 gate_noise: float = 1.0, aux_loss: str = "load_importance", batch_prioritized: bool = True,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        try:
            from tutel import moe as tutel_moe
        except ImportError:
            raise XGeoError(f"params.yaml: model.moe.backend is tutel but `import tutel` fails; {TUTEL_INSTALL}") from None
        if aux_loss not in AUX_LOSSES:
            raise XGeoError(f"params.yaml: model.moe.aux_loss is {aux_loss!r}; expected one of {list(AUX_LOSSES)}")
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        if num_experts % world:
            raise XGeoError(f"params.yaml: model.moe.num_experts ({num_experts}) must be a multiple of the number "
                            f"of processes ({world}) for the tutel backend")
        self.num_experts, self.top_k = num_experts, top_k
        act = act_layer()
        fork = torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else [])
        with fork:
            self.layer = tutel_moe.moe_layer(
            gate_type={"type": "top", "k": top_k, "capacity_factor": capacity_factor, "gate_noise": gate_noise,
                       "fp32_gate": True},
            model_dim=dim,
            experts={"type": "ffn", "count_per_node": num_experts // world, "hidden_size_per_expert": hidden,
                     "activation_fn": act},
                scan_expert_func=lambda name, param: setattr(param, "skip_allreduce", True),
                seeds=(1, rank + 1, rank + 1),  # Swin-MoE: one gate seed for all, expert seeds per rank
                batch_prioritized_routing=batch_prioritized,
                is_gshard_loss=aux_loss == "gshard",
            )
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.last_stats: dict = {}
        self.rank, self.world = rank, world
        self.register_buffer("load_count", torch.zeros(num_experts, dtype=torch.float64))
        self._register_state_dict_hook(_gather_expert_state)
        self.register_load_state_dict_pre_hook(_shard_expert_state)
        # the native backend's initialisation, drawn as it draws it (all E experts), this rank's shard kept
        native = MoE(dim, hidden, num_experts, top_k, capacity_factor, gate_noise, aux_loss, batch_prioritized)
        self.load_state_dict(native.state_dict())

    def expert_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if getattr(p, "skip_allreduce", False)]

    def expert_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if getattr(p, "skip_allreduce", False)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ranks may hold different numbers of tokens (a step's groups differ between ranks): tutel then takes the
        # capacity from the largest rank's count (one all-reduce), so every rank's all-to-all buffers agree
        y = self.layer(x, inequivalent_tokens=self.world > 1)
        self.aux_loss = y.l_aux
        return y


def _gather_expert_state(module, state: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: every expert tensor of this rank replaced by all ranks' shards, stacked."""
    for name in module.expert_parameter_names():
        if prefix + name in state:
            state[prefix + name] = gather_experts(state[prefix + name])


def _replace_layer_state(state: dict, prefix: str, convert) -> None:
    """In place (a load pre-hook's dict): the entries under ``prefix`` replaced by ``convert`` of them."""
    mine = {k: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
    state.update(convert(mine, prefix))


def _native_from_tutel(module, state: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook of the native layer: a tutel-backend layer's entries mapped to the native layout
    (a tutel checkpoint without ``load_count``: zeros, i.e. uniform expert weights)."""
    if is_tutel_state(state, prefix):
        _replace_layer_state(state, prefix, tutel_to_native)
        state.setdefault(prefix + "load_count", torch.zeros(module.num_experts, dtype=torch.float64))


def _shard_expert_state(module, state: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: a native layer's entries mapped to tutel's layout, then a checkpoint's expert
    tensors (stacked shards of any process count) cut to this rank's part."""
    if is_native_state(state, prefix):
        _replace_layer_state(state, prefix, native_to_tutel)
    if isinstance(getattr(module, "load_count", None), torch.Tensor):  # a tutel checkpoint of before load_count
        state.setdefault(prefix + "load_count", torch.zeros_like(module.load_count))
    params = dict(module.named_parameters())
    for name in module.expert_parameter_names():
        key = prefix + name
        if key in state:
            state[key] = shard_experts(state[key], params[name].shape, module.rank, module.world, key)


def build_moe(dim: int, hidden: int, cfg: dict, act_layer: type[nn.Module] = nn.GELU) -> nn.Module:
    """An MoE layer from the ``model.moe`` section of params.yaml."""
    backend = cfg.get("backend", "native")
    kwargs = dict(num_experts=int(cfg["num_experts"]), top_k=int(cfg["top_k"]),
                  capacity_factor=float(cfg["capacity_factor"]), gate_noise=float(cfg["gate_noise"]),
                  aux_loss=cfg.get("aux_loss", "load_importance"),
                  batch_prioritized=bool(cfg.get("batch_prioritized", True)), act_layer=act_layer)
    if backend == "native":
        return MoE(dim, hidden, **kwargs)
    if backend == "tutel":
        return TutelMoE(dim, hidden, **kwargs)
    raise XGeoError(f"params.yaml: model.moe.backend is {backend!r}; expected native or tutel")


def tutel_available() -> bool:
    try:
        import tutel  # noqa: F401
    except ImportError:
        return False
    return True

