"""runtime.cpu_allocator: validation, and what the tuned setting changes (page faults of large tensors)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xgeo.errors import XGeoError
from xgeo.runtime import CPU_ALLOCATORS, _glibc_mallopt, configure

# In a fresh process: allocate and fill a 40 MiB tensor (above glibc's largest mmap threshold) 50 times, count the
# minor page faults of the last 30. With mmap each allocation faults its ~10k pages in again; kept in the heap the
# first few allocations grow it (small allocations in between fragment it) and after that they reuse its pages.
PROBE = """
import json, resource, sys
import torch
from xgeo.runtime import configure
on = configure({"runtime": {"cpu_allocator": sys.argv[1]}}, "cpu")
for _ in range(20):
    torch.empty(10 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    torch.empty(10 * 2**20).fill_(1.0)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, **on}))
"""


def test_bad_mode_is_a_clear_error():
    with pytest.raises(XGeoError, match=r"runtime.cpu_allocator is 'fast'.*tuned"):
        configure({"runtime": {"cpu_allocator": "fast"}}, "cuda")
    assert configure({}, "cuda") == {"cpu_allocator": "system"}  # device memory is PyTorch's own cache


def test_params_yaml_names_a_known_mode(load):
    assert load()["runtime"]["cpu_allocator"] in CPU_ALLOCATORS


def _probe(mode: str) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.skipif(_glibc_mallopt() is None, reason="the tuned allocator applies to Linux/glibc only")
def test_tuned_allocator_reuses_large_tensors():
    system, tuned = _probe("system"), _probe("tuned")
    assert system["cpu_allocator"] == "system" and tuned["cpu_allocator"] == "tuned"
    # with mmap every allocation faults its pages in again (10240 of 4 KiB; ~20 if huge pages are on)
    assert system["faults"] >= 30 * 10
    assert tuned["faults"] < system["faults"] / 10
