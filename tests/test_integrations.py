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


TERRATORCH_CONFIG = """
model:
  class_path: terratorch.tasks.SemanticSegmentationTask
  init_args:
    model_factory: EncoderDecoderFactory
    model_args:
      backbone: xgeo_swinv2_demo
      backbone_ckpt_path: {ckpt}
      backbone_sensor: s2
      decoder: FCNDecoder
      decoder_channels: 16
      num_classes: 3
    loss: ce
    ignore_index: -1
    lr: 1.0e-3
    freeze_backbone: false
"""


def test_terratorch_config_finetunes_an_xgeo_checkpoint_one_step(ckpt):
    pytest.importorskip("terratorch")
    import lightning.pytorch as pl
    import yaml
    from terratorch.registry import BACKBONE_REGISTRY
    from terratorch.tasks import SemanticSegmentationTask

    import xgeo

    assert "xgeo_swinv2_demo" in BACKBONE_REGISTRY and "terratorch_xgeo_swinv2_base" in BACKBONE_REGISTRY
    config = yaml.safe_load(TERRATORCH_CONFIG.format(ckpt=ckpt))["model"]
    task = SemanticSegmentationTask(**config["init_args"])
    backbone = task.model.encoder
    assert type(backbone).__name__ == "XGeoBackbone" and backbone.out_channels == [32, 64, 128, 256]

    x = torch.randn(4, 13, 64, 64)
    reference = xgeo.load(ckpt, device="cpu").features(x, "s2")
    backbone.eval()
    with torch.no_grad():
        for a, b in zip(backbone(x), reference):  # the checkpoint's features (MoE capacity aside: none dropped here)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(13, 64, 64, generator=g), "mask": torch.randint(0, 3, (64, 64), generator=g)}
            for _ in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=loader)
    assert trainer.global_step == 1
    changed = [k for k, v in backbone.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any(k.startswith("model.encoder.layers.2") for k in changed)  # MoE stage trained
    assert any(k.startswith("model.patch_embeds.s2") for k in changed)


def test_terratorch_registration_fills_any_registry_of_the_documented_interface():
    from xgeo.integrations import terratorch as tt

    class Registry(set):  # TerraTorch's Registry: a set of names, register(fn) files fn under fn.__name__
        def __init__(self):
            super().__init__()
            self.fns = {}

        def register(self, fn):
            self.add(fn.__name__)
            self.fns[fn.__name__] = fn
            return fn

    reg = Registry()
    tt.register(reg)
    assert reg == {"xgeo_swinv2_demo", "xgeo_swinv2_base"}
    backbone = reg.fns["xgeo_swinv2_demo"](sensor="s1", img_size=96)
    feats = backbone(torch.randn(1, 2, 96, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 24, 24), (64, 12, 12), (128, 6, 6), (256, 3, 3)]
    with pytest.raises(CheckpointError, match="local files"):
        reg.fns["xgeo_swinv2_demo"](pretrained=True)
