"""What makes a finetuning job cheaper without changing what it measures: evaluation windows of many tiles in one
forward (xgeo.finetune.loop.sliding_windows)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xgeo.finetune.loop import positions, sliding_window, sliding_windows


class Counting:
    """A per-pixel model (1x1 convolution: a window's output does not depend on its neighbours) counting its calls."""

    def __init__(self, cin: int = 3, cout: int = 2) -> None:
        self.weight = torch.randn(cout, cin, 1, 1, generator=torch.Generator().manual_seed(0))
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return F.conv2d(x, self.weight)


def test_sliding_windows_batch_the_windows_of_all_tiles():
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fn = Counting()
    out = sliding_windows(fn, images, window=32, stride=16, batch=16)
    per_image = len(positions(64, 32, 16)) ** 2  # 3 x 3 windows
    assert per_image == 9 and fn.calls == [16, 16, 13]  # 45 windows of 5 tiles in 3 forwards, not 5 x 2
    assert out.shape == (5, 2, 64, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.conv2d(images, fn.weight), rtol=1e-6, atol=1e-6)  # mean of equal values

    one = Counting()
    single = torch.stack([sliding_window(one, images[k], 32, 16, batch=16) for k in range(5)])
    assert one.calls == [9] * 5  # the per-image path: one forward per tile
    torch.testing.assert_close(out, single, rtol=0, atol=0)


def test_sliding_windows_of_tiles_smaller_than_the_window_and_one_window_each():
    images = torch.rand(7, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    fn = Counting()
    out = sliding_windows(fn, images, window=32, stride=16, batch=4)
    assert fn.calls == [4, 3] and out.shape == (7, 2, 20, 24)  # padded to 32, cropped back
    torch.testing.assert_close(out, F.conv2d(images, fn.weight), rtol=1e-6, atol=1e-6)


class Store(torch.utils.data.Dataset):
    """A dataset counting its reads; each sample is 1 KiB of float32."""

    def __init__(self, n: int) -> None:
        self.reads = [0] * n
        self.keys = ["x"]

    def __len__(self) -> int:
        return len(self.reads)

    def __getitem__(self, i: int) -> dict:
        self.reads[i] += 1
        return {"x": torch.full((256,), float(i)), "index": i}


def test_training_samples_are_read_once_within_the_cache_budget():
    from xgeo.finetune.run import SampleCache

    store = Store(10)
    ds = SampleCache(store, budget_bytes=6 * 1024)  # room for 6 of the 10 samples
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = [b for _ in range(5) for b in loader]  # 5 epochs
    assert sum(len(b["index"]) for b in seen) == 50
    cached = sorted(ds.samples)
    assert len(cached) == 6 and ds.left == 0
    assert all(store.reads[i] == 1 for i in cached)  # decoded once, served from memory 4 more times
    assert all(store.reads[i] == 5 for i in set(range(10)) - set(cached))  # past the budget: read each time
    for b in seen:
        torch.testing.assert_close(b["x"][:, 0], b["index"].float())  # the right sample every time
    assert ds.keys == ["x"] and len(ds) == 10  # the wrapped dataset's attributes
    off = SampleCache(Store(3), 0)  # finetune.cache_mb: 0
    off[0], off[0]
    assert off.ds.reads[0] == 2 and not off.samples
