"""Which samples each step reads: heterogeneous batches (paper, sections 3.4, B.1) or dataset-homogeneous ones (Table 6).

Heterogeneous (Muppet-style): every step holds a sub-batch of every sensor group, ``batch_size`` samples of group g
per rank. A group's data is the concatenation of its datasets. One epoch is ``max_g ceil(N_g / (B_g * world))``
steps, so the largest group (in steps) is read once; a group that runs out starts a new permutation, so every
group's data is read at least once per epoch, the way the paper iterates "every type of sensor once" per epoch.

Homogeneous (Table 6): every step's batch comes from ONE dataset, at its group's batch size. An epoch sees as many
samples as a heterogeneous one: it has ``G x`` the heterogeneous steps per epoch (G groups), cycling round-robin over
the groups, so every group contributes the same ``steps_per_epoch(heterogeneous) x B_g`` samples as in a
heterogeneous epoch. Within a group, the batches of an epoch are shared among its datasets in proportion to their
sizes (largest remainder), in an order drawn per epoch; each dataset reads the endless concatenation of its own
permutations, so over epochs every sample of a dataset is read equally often.

The order is a pure function of (seed, epoch, step within the epoch): permutation ``k`` of group ``g`` in epoch ``e``
is drawn from ``numpy.random.default_rng([seed, e, g, k])``. Ranks share the permutation and read disjoint
shards of each global batch (rank r takes slots ``[r * B, (r + 1) * B)``). The sampler's state is therefore its
configuration and its step; ``state_dict`` stores both and ``load_state_dict`` refuses a sampler of another shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, XGeoError

MODES = ("heterogeneous", "homogeneous")


@dataclass(frozen=True)
class Group:
    """A sensor group: its datasets (names), their sample counts, and its per-rank batch size."""

    name: str
    datasets: tuple[str, ...]
    sizes: tuple[int, ...]
    batch_size: int

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def locate(self, flat: np.ndarray) -> list[tuple[str, int]]:
        """Map indices into the concatenation of the group's datasets to (dataset, index in it)."""
        bounds = np.cumsum((0,) + self.sizes)
        which = np.searchsorted(bounds, flat, side="right") - 1
        return [(self.datasets[d], int(i - bounds[d])) for d, i in zip(which, flat)]


class PretrainSampler:
    """Per-step sample indices for every group, for one rank.

    Args:
        groups: the sensor groups, in params order (the first group sets the learning-rate reference).
        seed: ``params.seed``.
        mode: ``heterogeneous`` | ``homogeneous`` (``pretrain.batching``).
        rank, world_size: this process's shard of every global batch.
    """

    def __init__(self, groups: list[Group], seed: int, mode: str = "heterogeneous", rank: int = 0,
                 world_size: int = 1) -> None:
        if mode not in MODES:
            raise XGeoError(f"params pretrain.batching: expected one of {list(MODES)}, found {mode!r}")
        for g in groups:
            if g.batch_size < 1:
                raise XGeoError(f"params pretrain.groups.{g.name}.batch_size: expected >= 1, found {g.batch_size}")
            for d, n in zip(g.datasets, g.sizes):
                if n < 1:
                    raise XGeoError(f"pretraining dataset {d!r} (group {g.name!r}) has no samples")
        self.groups = list(groups)
        self.seed = int(seed)
        self.mode = mode
        self.rank = rank
        self.world_size = world_size
        self.step = 0  # steps already taken; the next batch is batch(self.step)
        self._perm_cache: dict[tuple, np.ndarray] = {}
        # homogeneous: batches of each dataset per epoch, its group's heterogeneous batches shared by size
        self._dataset_batches = [self._share(self.heterogeneous_steps_per_epoch, g.sizes) for g in self.groups]

    # ------------------------------------------------------------------------------------------ epoch geometry
    def global_batch(self, g: Group) -> int:
        return g.batch_size * self.world_size

    @staticmethod
    def _share(total: int, sizes: tuple[int, ...]) -> list[int]:
        """``total`` split in proportion to ``sizes`` (largest remainder, ties to the first)."""
        exact = [total * n / sum(sizes) for n in sizes]
        out = [math.floor(x) for x in exact]
        for i in sorted(range(len(sizes)), key=lambda i: -(exact[i] - out[i]))[: total - sum(out)]:
            out[i] += 1
        return out

    @property
    def heterogeneous_steps_per_epoch(self) -> int:
        """Steps in which the group with the most batches reads its data once: max_g ceil(N_g / (B_g * world))."""
        return max(math.ceil(g.size / self.global_batch(g)) for g in self.groups)

    @property
    def steps_per_epoch(self) -> int:
        if self.mode == "homogeneous":
            return len(self.groups) * self.heterogeneous_steps_per_epoch
        return self.heterogeneous_steps_per_epoch

    def _dataset_order(self, epoch: int, gi: int) -> np.ndarray:
        """Dataset index of each of group gi's batches in an epoch (a per-epoch shuffle of the size shares)."""
        labels = np.repeat(np.arange(len(self.groups[gi].datasets)), self._dataset_batches[gi])
        return np.random.default_rng([self.seed, epoch, gi, 2000]).permutation(labels)

    def _perm(self, key: tuple, n: int) -> np.ndarray:
        if key not in self._perm_cache:
            if len(self._perm_cache) > 64:
                self._perm_cache.clear()
            self._perm_cache[key] = np.random.default_rng([self.seed, *key]).permutation(n)
        return self._perm_cache[key]

    def _stream(self, key: tuple, n: int, start: int, stop: int) -> np.ndarray:
        """Items [start, stop) of the endless concatenation of fresh permutations of range(n) (seeded by key + k)."""
        out = []
        pos = start
        while pos < stop:
            k, off = divmod(pos, n)
            take = min(stop - pos, n - off)
            out.append(self._perm((*key, k), n)[off: off + take])
            pos += take
        return np.concatenate(out)

    # ------------------------------------------------------------------------------------------------ batches
    def batch(self, step: int) -> dict[str, list[tuple[str, int]]]:
        """Sample indices of global step ``step`` (0-based) for this rank: {group: [(dataset, index), ...]}.

        Heterogeneous: every group, ``batch_size`` samples each. Homogeneous: one group, one dataset.
        """
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self.mode == "heterogeneous":
            out = {}
            for gi, g in enumerate(self.groups):
                gb = self.global_batch(g)
                lo = pos * gb + self.rank * g.batch_size
                idx = self._stream((epoch, gi), g.size, lo, lo + g.batch_size)
                out[g.name] = g.locate(idx)
            return out
        gi, j = pos % len(self.groups), pos // len(self.groups)  # round-robin over the groups
        g = self.groups[gi]
        order = self._dataset_order(epoch, gi)
        di = int(order[j])
        # batches of dataset di read before this one: earlier epochs' share, then this epoch's earlier ones
        k = epoch * self._dataset_batches[gi][di] + int((order[:j] == di).sum())
        lo = k * self.global_batch(g) + self.rank * g.batch_size
        # one endless stream of permutations per dataset (key carries the dataset index, not the epoch)
        idx = self._stream((gi, 1000 + di), g.sizes[di], lo, lo + g.batch_size)
        return {g.name: [(g.datasets[di], int(i)) for i in idx]}

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    # ---------------------------------------------------------------------------------------------- state
    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "world_size": self.world_size,
            "groups": {g.name: {"datasets": list(g.datasets), "sizes": list(g.sizes), "batch_size": g.batch_size}
                       for g in self.groups},
        }

    def state_dict(self) -> dict:
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        return {**self.describe(), "step": self.step, "epoch": epoch, "position": pos}

    def load_state_dict(self, state: dict) -> None:
        mine = self.describe()
        diff = [k for k in mine if state.get(k) != mine[k]]
        if diff:
            details = "; ".join(f"{k}: checkpoint {state.get(k)!r}, now {mine[k]!r}" for k in diff)
            raise CheckpointError(
                f"the checkpoint's sampler differs from this run's ({details}); resume with the same data, "
                f"groups, seed and number of processes, or start a new run directory"
            )
        self.step = int(state["step"])
