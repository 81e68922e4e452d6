"""Masks (count, expansion to tokens, independent across a pair, seeded) and the cross-sensor target choice.

That one mask covers every channel of a sensor is checked through the loss in test_pretrain."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xgeo.errors import XGeoError
from xgeo.pretrain.masking import MaskGenerator, choose_cross


@pytest.mark.parametrize("img,mask_patch,ratio", [(192, 32, 0.6), (64, 16, 0.6), (64, 16, 0.3), (96, 32, 1.0)])
def test_mask_count_and_expansion(img, mask_patch, ratio):
    gen = MaskGenerator(img, mask_patch, 4, ratio)
    grid = img // mask_patch
    masks = gen(np.random.default_rng(0), 5)
    assert masks.shape == (5, img // 4, img // 4)
    cells = gen.grid_mask(np.random.default_rng(0), 5)
    assert (cells.reshape(5, -1).sum(1) == math.ceil(grid * grid * ratio)).all()
    # the token mask is the grid mask expanded by mask_patch / 4 in both directions
    scale = mask_patch // 4
    np.testing.assert_array_equal(masks, cells.repeat(scale, 1).repeat(scale, 2))
    assert (masks.reshape(5, -1).sum(1) == math.ceil(grid * grid * ratio) * scale * scale).all()


def test_paper_mask_has_22_of_36_cells():
    gen = MaskGenerator(192, 32, 4, 0.6)
    assert (gen.grid, gen.scale, gen.num_masked, gen.token_grid) == (6, 8, 22, 48)


def test_pair_masks_are_independent():
    """The two sensors of a co-located pair get independently drawn masks: over many draws, their overlap matches
    independence (E = 36 * 0.6 * 0.6 cells of 36 at 22/36 each) and is not the identity."""
    gen = MaskGenerator(192, 32, 4, 0.6)
    rng = np.random.default_rng(3)
    a = gen.grid_mask(rng, 2000).reshape(2000, -1)
    b = gen.grid_mask(rng, 2000).reshape(2000, -1)
    overlap = (a & b).sum(1).mean()
    expected = 36 * (22 / 36) ** 2
    assert abs(overlap - expected) < 0.15
    assert (a != b).any(1).mean() > 0.99


def test_masks_depend_only_on_the_generator_seed():
    gen = MaskGenerator(64, 16, 4, 0.6)
    np.random.seed(123)
    torch.manual_seed(5)
    a = gen(np.random.default_rng([0, 7]), 4)
    np.random.seed(999)
    torch.manual_seed(9)
    b = gen(np.random.default_rng([0, 7]), 4)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_cross_sensor_choice_frequency(ratio):
    n = 20000
    cross = choose_cross(np.random.default_rng(0), n, ratio)
    if ratio in (0.0, 1.0):
        assert cross.all() == bool(ratio) and cross.any() == bool(ratio)
    else:
        # binomial(20000, 0.5): std 70.7; 5 sigma
        assert abs(int(cross.sum()) - n * ratio) < 5 * math.sqrt(n * ratio * (1 - ratio))


def test_bad_mask_settings_are_named():
    with pytest.raises(XGeoError, match="mask_patch"):
        MaskGenerator(64, 24, 4, 0.6)
    with pytest.raises(XGeoError, match="mask_ratio"):
        MaskGenerator(64, 16, 4, 1.5)
    with pytest.raises(XGeoError, match="cross_ratio"):
        choose_cross(np.random.default_rng(0), 3, -0.1)
