"""The paper's shapes in pretraining: RandomResizedCrop of stored tiles to the model input (the same box and flip for
both images of a pair), 22 of 36 mask cells at 192 px, the per-group loss weights, a 2-step run at the paper's
geometry on stores written at the paper's tile sizes, and Table 5 teachers (a timm ViT, a SwinV2) at 192 px."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_pretrain import TINY, read_metrics, write_store

# the paper's geometry (192 px, window 12, mask patch 32) on the demo width: fast on a CPU
PAPER_SHAPES = ["model.img_size=192", "model.window_size=12", "pretrain.mask_patch=32"]
PAPER_TILES = {"geopile": 256, "millionaid": 256, "sen12ms": 256, "mdas": 384}  # overlays/paper.yaml


def _sampler(n):
    from xgeo.pretrain.sampler import Group, PretrainSampler

    return PretrainSampler([Group("g", ("d",), (n,), 2)], seed=0)


def test_crop_is_shared_by_a_pair_and_deterministic():
    """A co-located pair at two pixel sizes (b = a averaged 2 x 2) gets the same crop box and flip: after the crop
    to 48 px, b matches a (correlation ~1); the crop draws area share and aspect inside the configured ranges."""
    from xgeo.pretrain.data import GroupLayout, StepData, crop_box

    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(6, 1, 8, 8, generator=g)
    a = torch.nn.functional.interpolate(coarse, size=(128, 128), mode="bicubic", align_corners=False)
    b = torch.nn.functional.avg_pool2d(a, 2)
    samples = [{"a": a[i], "b": b[i]} for i in range(6)]
    layout = {"g": GroupLayout("g", {"a": "s1", "b": "s1"}, {"a": "b", "b": "a"})}
    crop = {"scale": [0.3, 0.6], "ratio": [0.75, 1.333]}
    data = StepData(_sampler(6), {"d": samples}, layout, 16, 4, 0.6, 0.5, seed=0, rank=0, total_steps=10,
                    img_size=48, crop=crop)
    for step in range(5):
        gb = data[step]["g"]
        x, y = gb["images"]["a"], gb["images"]["b"]
        assert x.shape == y.shape == (2, 1, 48, 48)
        for i in range(2):
            r = np.corrcoef(x[i].flatten(), y[i].flatten())[0, 1]
            assert r > 0.98, (step, i, r)
            # a crop of less than 60 % of the tile, resized: not the whole tile
            whole = torch.nn.functional.interpolate(a[:1], size=(48, 48), mode="bilinear")[0]
            assert not torch.allclose(x[i], whole, atol=1e-2)
        assert torch.equal(data[step]["g"]["images"]["a"], x)  # deterministic in the step
    rng = np.random.default_rng(0)
    boxes = [crop_box(rng, [0.67, 1.0], [0.75, 4 / 3]) for _ in range(500)]
    areas = [h * w for _, _, h, w in boxes]
    ratios = [w / h for _, _, h, w in boxes]
    assert 0.67 - 1e-9 <= min(areas) and max(areas) <= 1.0 and min(ratios) >= 0.75 - 1e-9 and max(ratios) <= 4 / 3
    assert all(0 <= t and t + h <= 1 + 1e-9 and 0 <= l and l + w <= 1 + 1e-9 for t, l, h, w in boxes)


def test_mask_patch_32_at_192_masks_22_of_36_cells():
    from xgeo.pretrain.masking import MaskGenerator

    gen = MaskGenerator(192, 32, 4, 0.6)
    assert (gen.grid, gen.num_masked, gen.scale) == (6, 22, 8)  # ceil(0.6 * 36) = 22
    masks = gen(np.random.default_rng(0), 3)
    assert masks.shape == (3, 48, 48)
    assert (masks.reshape(3, 6, 8, 6, 8)[:, :, 0, :, 0].reshape(3, -1).sum(1) == 22).all()
    assert (masks.reshape(3, -1).sum(1) == 22 * 64).all()


def test_loss_weights_scale_each_groups_loss(load, tmp_path):
    """total = aux + sum_g w_g L_g: changing one group's weight changes the loss by (dw) L_g (fails if the weight is
    dropped from the loss and only logged)."""
    from test_pretrain import write_pretrain_stores
    from test_pretrain import _step_data
    from xgeo.model import build_model
    from xgeo.pretrain.objective import CrossSensorObjective

    params = load(f"paths.zarr={write_pretrain_stores(tmp_path / 'zarr', {'geopile': 2, 'millionaid': 2, 'sen12ms': 2, 'mdas': 2})}",
                  *TINY)
    data, layouts = _step_data(params)
    torch.manual_seed(0)
    model = build_model(params).eval()
    batch = data[0]
    with torch.no_grad():
        one, logs = CrossSensorObjective(model, layouts, {"rgb": 1.0, "sen12ms": 1.0, "mdas": 1.0})(batch)
        heavy, _ = CrossSensorObjective(model, layouts, {"rgb": 1.0, "sen12ms": 3.0, "mdas": 0.5})(batch)
    groups = {g: float(logs[f"loss/group/{g}"]) for g in ("rgb", "sen12ms", "mdas")}
    assert min(groups.values()) > 0.05
    assert float(one) == pytest.approx(float(logs["aux_loss"]) + sum(groups.values()), rel=1e-5)
    assert float(heavy) - float(one) == pytest.approx(2.0 * groups["sen12ms"] - 0.5 * groups["mdas"], rel=1e-4)


def _paper_stores(root):
    root.mkdir(parents=True, exist_ok=True)
    for i, (ds, size) in enumerate(PAPER_TILES.items()):
        write_store(root / f"{ds}.zarr", ds, 2, seed=i, size=size)
    return root


def _spy_encode(monkeypatch):
    from xgeo.model.xgeo import XGeo

    seen = []
    encode = XGeo.encode

    def spy(self, items, **kw):
        seen.append([(s, tuple(x.shape), None if m is None else m.clone()) for s, x, m, *_ in items])
        return encode(self, items, **kw)

    monkeypatch.setattr(XGeo, "encode", spy)
    return seen


def _check_paper_step(seen, sensors):
    """Every image the encoder saw was 192 px; every mask had 22 of 36 cells of 32 px masked."""
    steps = [s for s in seen if all(m is not None for _, _, m in s)]  # training steps (figures: first samples)
    assert len(steps) >= 2
    for items in steps:
        assert {s for s, _, _ in items} == sensors
        for sensor, shape, mask in items:
            assert shape[-2:] == (192, 192), (sensor, shape)
            cells = mask.reshape(shape[0], 6, 8, 6, 8)[:, :, 0, :, 0].reshape(shape[0], -1)
            assert (cells.sum(1) == 22).all() and int(mask.sum()) == 22 * 64 * shape[0]


def test_paper_shape_pretraining_two_steps(load, tmp_path, monkeypatch):
    """Stores at the paper's tile sizes (256 / 384 px), the paper's input (192 px, window 12, mask patch 32) on the
    demo width, all groups at batch 1: the encoder sees 192 px, 22 of 36 cells masked, finite losses."""
    from xgeo.pretrain.train import pretrain

    seen = _spy_encode(monkeypatch)
    params = load(f"paths.zarr={_paper_stores(tmp_path / 'zarr')}", "mlflow.enabled=false", *TINY, *PAPER_SHAPES,
                  "pretrain.groups.rgb.batch_size=1")
    assert params["pretrain"]["crop"] == {"scale": [0.67, 1.0], "ratio": [0.75, 1.333]}
    result = pretrain(params, tmp_path / "run", steps=2, checkpoint_every=2)
    _check_paper_step(seen, {"rgb", "s1", "s2", "dsm"})
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "rec_loss", "aux_loss", "loss/s1", "loss/dsm"))
    assert result["schedule"]["source"] == "steps"


@pytest.mark.slow
def test_paper_model_pretraining_two_steps(load, tmp_path, monkeypatch):
    """The same with the paper's model (SwinV2-Base, 8 experts; minutes on a CPU)."""
    from xgeo.pretrain.train import pretrain

    seen = _spy_encode(monkeypatch)
    params = load(f"paths.zarr={_paper_stores(tmp_path / 'zarr')}", "mlflow.enabled=false", *TINY,
                  "model.size=paper", "pretrain.mask_patch=32", "pretrain.groups.rgb.batch_size=1")
    pretrain(params, tmp_path / "run", steps=2, checkpoint_every=2)
    _check_paper_step(seen, {"rgb", "s1", "s2", "dsm"})
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run" / "metrics.jsonl"))


# ---------------------------------------------------------------------------------------------- Table 5 teachers
TEACHERS = {
    "vit": ("vit_tiny_patch16_224", {"embed_dim": 32, "depth": 1, "num_heads": 1}, 224),  # pos embed 14 x 14 -> 12
    "swinv2": ("swinv2_tiny_window8_256", {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}, 256),
}


def _teacher_file(tmp_path, name):
    import timm

    arch, kwargs, size = TEACHERS[name]
    torch.manual_seed(0)
    teacher = timm.create_model(arch, pretrained=False, num_classes=0, img_size=size, **kwargs)
    path = tmp_path / f"{name}.pth"
    torch.save(teacher.state_dict(), path)
    return arch, kwargs, path, teacher


@pytest.mark.parametrize("name,objective", [("vit", "distill"), ("swinv2", "eva")])
def test_teachers_distil_at_192(load, tmp_path, monkeypatch, name, objective):
    """A timm ViT saved at 224 px and a SwinV2 saved at 256 px distil a 192 px student (paper shapes, batch 1)."""
    import yaml

    from xgeo.pretrain.train import pretrain

    arch, kwargs, path, _ = _teacher_file(tmp_path, name)
    seen = _spy_encode(monkeypatch)
    params = load(f"paths.zarr={_paper_stores(tmp_path / 'zarr')}", "mlflow.enabled=false", *TINY, *PAPER_SHAPES,
                  "pretrain.groups.rgb.batch_size=1", f"pretrain.objective={objective}",
                  f"pretrain.teacher={{arch: {arch}, path: {path}, kwargs: {yaml.safe_dump(kwargs, default_flow_style=True).strip()}}}")
    pretrain(params, tmp_path / "run", steps=2, checkpoint_every=2)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(math.isfinite(r["feat_loss"]) and math.isfinite(r["loss"]) for r in rows)
    assert all((r["rec_loss"] == 0.0) == (objective == "eva") for r in rows)
    _check_paper_step(seen, {"rgb", "s1", "s2", "dsm"})
    # one encoder pass per step (the same MoE routing as training from scratch), not one per sensor
    assert all(len(items) == 5 for items in seen if all(m is not None for _, _, m in items))  # rgb, s1, s2, rgb, dsm


def test_eva_regresses_the_final_features_and_aux_is_added_once(load, tmp_path):
    """EVA's target is the teacher's final (normed) features, distill's a Swin's stage 3; the aux loss enters the
    total once, unweighted by any group."""
    from test_pretrain import _step_data, write_pretrain_stores
    from xgeo.model import build_model
    from xgeo.pretrain.distill import DistillObjective, build_teacher

    arch, kwargs, path, _ = _teacher_file(tmp_path, "swinv2")
    teacher = build_teacher({"arch": arch, "path": str(path), "kwargs": kwargs}, 64)
    params = load(f"paths.zarr={write_pretrain_stores(tmp_path / 'zarr', {'geopile': 2, 'millionaid': 2, 'sen12ms': 2, 'mdas': 2})}", *TINY)
    data, layouts = _step_data(params)
    torch.manual_seed(0)
    model = build_model(params).eval()
    x = torch.randn(2, 3, 64, 64)
    eva = DistillObjective(model, layouts, {"rgb": 1.0, "sen12ms": 1.0, "mdas": 1.0}, teacher, "eva")
    target = eva.teacher_features(x, "rgb", (2, 2))
    assert torch.allclose(target, teacher.forward_features(x), atol=1e-5)  # NHWC, after the final norm
    distill = DistillObjective(model, layouts, {"rgb": 1.0, "sen12ms": 1.0, "mdas": 1.0}, teacher, "distill")
    stage3 = teacher.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
    assert torch.allclose(distill.teacher_features(x, "rgb", (4, 4)), stage3.permute(0, 2, 3, 1), atol=1e-5)
    batch = data[0]
    with torch.no_grad():
        w1 = DistillObjective(model, layouts, {"rgb": 1.0, "sen12ms": 1.0, "mdas": 1.0}, teacher, "distill")
        w1.proj.load_state_dict(distill.proj.state_dict())
        total, logs = w1(batch)
    groups = sum(float(logs[f"loss/group/{g}"]) for g in ("rgb", "sen12ms", "mdas"))
    assert float(logs["aux_loss"]) > 0
    assert float(total) == pytest.approx(groups + float(logs["aux_loss"]), rel=1e-5)


def test_bare_teacher_path_needs_a_timm_name(tmp_path):
    from xgeo.errors import XGeoError
    from xgeo.pretrain.distill import teacher_spec

    with pytest.raises(XGeoError, match=r"clip_vit_b16\.pth.*not a timm model name.*\{arch: "):
        teacher_spec("weights/clip_vit_b16.pth")
    assert teacher_spec("weights/vit_tiny_patch16_224.pth")["arch"] == "vit_tiny_patch16_224"


def test_tiles_smaller_than_the_input_are_named():
    from xgeo.pretrain.data import GroupLayout, small_tiles

    stores = {"sen12ms": {"path": "z/sen12ms.zarr", "shapes": {"s1": (4, 2, 256, 256), "s2": (4, 13, 256, 256)}},
              "mdas": {"path": "z/mdas.zarr", "shapes": {"rgb": (4, 3, 96, 96), "dsm": (4, 1, 96, 96)}}}
    layouts = {"sen12ms": GroupLayout("sen12ms", {"s1": "s1", "s2": "s2"}, {}),
               "mdas": GroupLayout("mdas", {"rgb": "rgb", "dsm": "dsm"}, {})}
    params = {"pretrain": {"groups": {"sen12ms": {"datasets": ["sen12ms"]}, "mdas": {"datasets": ["mdas"]}}}}
    lines = small_tiles(stores, layouts, params, 192)
    assert len(lines) == 2 and all("mdas.zarr" in s and "96 x 96 px" in s and "data.datasets.mdas.tile_size" in s
                                   for s in lines)
    assert small_tiles(stores, layouts, params, 96) == []
