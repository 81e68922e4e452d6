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


def test_homogeneous_one_dataset_per_step_covering_every_dataset():
    s = PretrainSampler(GROUPS, seed=1, mode="homogeneous")
    per = {"geopile": math.ceil(23 / 4), "millionaid": math.ceil(17 / 4), "sen12ms": math.ceil(13 / 2), "mdas": 5}
    assert s.steps_per_epoch == sum(per.values())
    seen = Counter()
    order = []
    for step in range(s.steps_per_epoch):
        b = s.batch(step)
        assert len(b) == 1
        (group, items), = b.items()
        datasets = {d for d, _ in items}
        assert len(datasets) == 1
        order.append(datasets.pop())
        seen.update(items)
    assert order[:4] == ["geopile", "millionaid", "sen12ms", "mdas"]  # round-robin
    assert Counter(order) == Counter(per)
    for g in GROUPS:
        for d, n in zip(g.datasets, g.sizes):
            assert {i for (dd, i) in seen if dd == d} == set(range(n))


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
