"""Heterogeneous and dataset-homogeneous batches: coverage per epoch, shards per rank, state."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from xgeo.errors import CheckpointError
from xgeo.pretrain.sampler import Group, PretrainSampler

GROUPS = [Group("rgb", ("geopile", "millionaid"), (23, 17), 4), Group("sen12ms", ("sen12ms",), (13,), 2),
          Group("mdas", ("mdas",), (5,), 1)]


def drawn(sampler, steps):
    out = {g.name: [] for g in GROUPS}
    for s in steps:
        for g, items in sampler.batch(s).items():
            out[g] += items
    return out


def test_heterogeneous_every_group_every_step_and_once_per_epoch():
    s = PretrainSampler(GROUPS, seed=0)
    assert s.steps_per_epoch == max(math.ceil(40 / 4), math.ceil(13 / 2), 5) == 10
    for step in range(25):
        b = s.batch(step)
        assert {g: len(v) for g, v in b.items()} == {"rgb": 4, "sen12ms": 2, "mdas": 1}
    for epoch in range(2):
        got = drawn(s, range(epoch * 10, (epoch + 1) * 10))
        for g in GROUPS:
            universe = {(d, i) for d, n in zip(g.datasets, g.sizes) for i in range(n)}
            # the first N_g draws of a group in an epoch are exactly its data, each sample once
            assert Counter(got[g.name][: g.size]) == Counter(universe)
            assert set(got[g.name]) == universe
    # shorter groups started new permutations: mdas read its 5 samples twice in a 10-step epoch
    assert Counter(drawn(s, range(10))["mdas"]) == Counter({("mdas", i): 2 for i in range(5)})
    # the order differs between epochs
    assert drawn(s, range(10))["rgb"] != drawn(s, range(10, 20))["rgb"]


def test_ranks_read_disjoint_shards_of_the_same_global_batch():
    single = PretrainSampler(GROUPS, seed=4, world_size=2)  # rank 0
    other = PretrainSampler(GROUPS, seed=4, rank=1, world_size=2)
    assert single.steps_per_epoch == math.ceil(40 / 8)
    for step in range(single.steps_per_epoch):
        a, b = single.batch(step), other.batch(step)
        assert not set(a["rgb"]) & set(b["rgb"])
    got = [x for s in (single, other) for step in range(5) for x in s.batch(step)["rgb"]]
    assert len(set(got)) == 40  # together the two ranks read the rgb group once


def test_homogeneous_one_dataset_per_step_and_as_many_samples_per_epoch_as_heterogeneous():
    """Table 6: a homogeneous epoch reads one dataset per step and the same samples per group as a heterogeneous one."""
    het = PretrainSampler(GROUPS, seed=1)
    s = PretrainSampler(GROUPS, seed=1, mode="homogeneous")
    assert s.steps_per_epoch == 3 * het.steps_per_epoch == 30
    for epoch in range(2):
        per_group, per_dataset, order = Counter(), Counter(), []
        for step in range(epoch * 30, (epoch + 1) * 30):
            b = s.batch(step)
            assert len(b) == 1
            (group, items), = b.items()
            datasets = {d for d, _ in items}
            assert len(datasets) == 1
            order.append(group)
            per_group[group] += len(items)
            per_dataset[datasets.pop()] += 1
        assert order[:3] == ["rgb", "sen12ms", "mdas"]  # round-robin over the groups
        # samples per epoch and per group: exactly the heterogeneous epoch's (10 steps x B_g)
        assert dict(per_group) == {"rgb": 40, "sen12ms": 20, "mdas": 10}
        assert sum(per_group.values()) == sum(len(v) for st in range(10) for v in het.batch(st).values())
        # the rgb group's 10 batches shared by size: 23 / 40 and 17 / 40 of 10 -> 6 and 4
        assert (per_dataset["geopile"], per_dataset["millionaid"]) == (6, 4)
    # each dataset reads a stream of its own permutations: its first N_d draws are its samples, once each
    draws = {d: [] for g in GROUPS for d in g.datasets}
    for step in range(60):
        for items in s.batch(step).values():
            for d, i in items:
                draws[d].append(i)
    for g in GROUPS:
        for d, n in zip(g.datasets, g.sizes):
            assert sorted(draws[d][:n]) == list(range(n)), d


def test_state_round_trip_and_mismatch():
    s = PretrainSampler(GROUPS, seed=0)
    s.step = 37
    state = s.state_dict()
    assert (state["epoch"], state["position"]) == (3, 7)
    t = PretrainSampler(GROUPS, seed=0)
    t.load_state_dict(state)
    assert t.step == 37 and t.batch(37) == s.batch(37)
    with pytest.raises(CheckpointError, match="seed"):
        PretrainSampler(GROUPS, seed=1).load_state_dict(state)
    with pytest.raises(CheckpointError, match="world_size"):
        PretrainSampler(GROUPS, seed=0, world_size=2).load_state_dict(state)
