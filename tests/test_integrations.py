"""The encoder in timm (registered names, local checkpoint file, forward_intermediates) and in TerraTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xgeo.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from xgeo.config import load_params
    from xgeo.model import build_model
    from xgeo.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(load_params(ROOT / "params.yaml"))
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    save_checkpoint(path, model, params={"note": "plain params"}, rng={"numpy": np.random.default_rng(0).bit_generator.state})
    return path


def test_timm_names_are_registered_when_xgeo_is_imported():
    import subprocess
    import sys

    # xgeo imported before timm: registration happens when timm is imported
    code = "import xgeo, timm; print(sorted(timm.list_models('xgeo_*')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['xgeo_swinv2_base', 'xgeo_swinv2_demo']"


def test_timm_loads_a_local_checkpoint_and_gives_the_features_of_xgeo_load(ckpt):
    import timm

    import xgeo

    model = timm.create_model("xgeo_swinv2_demo", pretrained=True, pretrained_cfg_overlay={"file": str(ckpt)},
                              sensor="s2").eval()
    assert model.xgeo.moe_layers()  # MoE blocks included
    x = torch.randn(2, 13, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
    reference = xgeo.load(ckpt, device="cpu").features(x, "s2")
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    for a, b in zip(maps, reference):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(final, reference[-1])
    assert len(last2) == 2 and last2[0].shape[1] == 128
    # a classifier head on top, other sensor and input size
    clf = timm.create_model("xgeo_swinv2_demo", pretrained=True, pretrained_cfg_overlay={"file": str(ckpt)},
                            sensor="s1", num_classes=7, img_size=96)
    assert tuple(clf(torch.randn(3, 2, 96, 96)).shape) == (3, 7)
    with pytest.raises(CheckpointError, match="size 'demo'; xgeo_swinv2_base is size 'paper'"):
        timm.create_model("xgeo_swinv2_base", pretrained=True, pretrained_cfg_overlay={"file": str(ckpt)})
    with pytest.raises(CheckpointError, match="local files"):
        timm.create_model("xgeo_swinv2_demo", pretrained=True)
