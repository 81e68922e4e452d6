"""The XGeo model: shapes, Eq. (1)/(2), masking, embeddings (band subsets, stacking, adaptation), the paper size,
checkpoints and the timm export."""
from __future__ import annotations

import json

import pytest
import timm
import torch

from xgeo.errors import CheckpointError, XGeoError
from xgeo.model import MODEL_SIZES, build_model
from xgeo.model import embed
from xgeo.model.checkpoint import export_timm, load_pretrained, save_checkpoint
from xgeo.sensors import get_sensor

GRID = 16  # demo: 64 px / patch 4


@pytest.fixture(scope="module")
def params(root):
    from xgeo.config import load_params

    return load_params(root / "params.yaml")


def _model(params, *overrides, seed=0):
    from xgeo.config import apply_overrides

    torch.manual_seed(seed)
    return build_model(apply_overrides(params, list(overrides)))


@pytest.fixture(scope="module")
def demo(params):
    return _model(params)


@pytest.fixture(scope="module")
def dense(params):
    from xgeo.config import apply_overrides

    torch.manual_seed(0)
    return build_model(apply_overrides(params, {"model.moe.enabled": False}))


def _mask(b, ratio=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, GRID, GRID, generator=g) < ratio).float()


def test_demo_forward_backward_every_sensor(demo):
    assert demo.config["size"] == "demo" and len(demo.moe_layers()) == 2
    assert demo.mask_token.shape == (1, 1, MODEL_SIZES["demo"]["embed_dim"])
    for sensor in demo.config["sensors"]:
        c = get_sensor(sensor).num_bands
        demo.zero_grad()
        x, mask = torch.randn(2, c, 64, 64), _mask(2)
        out = demo(x, sensor, mask)
        assert out["pred"].shape == (2, c, 64, 64)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        assert float(out["aux_loss"].detach()) > 0  # two MoE blocks, weighted by aux_weight
        assert torch.allclose(out["loss"], out["rec_loss"] + out["aux_loss"])
        out["loss"].backward()
        assert demo.patch_embeds[sensor].proj.weight.grad.abs().sum() > 0
        assert demo.decoders[sensor][0].weight.grad.abs().sum() > 0
        assert demo.mask_token.grad.abs().sum() > 0
        others = [s for s in demo.config["sensors"] if s != sensor]
        assert all(demo.decoders[s][0].weight.grad is None or (demo.decoders[s][0].weight.grad == 0).all()
                   for s in others)
    z, aux = demo.forward_encoder(torch.randn(1, 2, 64, 64), "s1")
    assert z.shape == (1, demo.num_features, 2, 2) and demo.num_features == 8 * 32


def test_aux_loss_is_the_weighted_sum_over_moe_blocks(demo):
    _, aux = demo.forward_encoder(torch.randn(2, 3, 64, 64), "rgb", _mask(2))
    expected = demo.config["moe"]["aux_weight"] * sum(float(m.aux_loss.detach()) for m in demo.moe_layers())
    assert float(aux.detach()) == pytest.approx(expected, rel=1e-6)
    assert all(float(m.last_stats["load"].sum()) > 0 for m in demo.moe_layers())


def test_self_and_cross_sensor_targets(dense):
    """Eq. (2): D_i(En(f_i(I_i))) against I_i; Eq. (1): D_j(En(f_i(I_i))) against the co-located I_j."""
    dense.eval()
    s1, s2, mask = torch.randn(2, 2, 64, 64), torch.randn(2, 13, 64, 64), _mask(2)
    with torch.no_grad():
        own = dense(s1, "s1", mask)
        cross = dense(s1, "s1", mask, target=s2, target_sensor="s2")
        z, _ = dense.forward_encoder(s1, "s1", mask)
    assert own["pred"].shape == (2, 2, 64, 64) and cross["pred"].shape == (2, 13, 64, 64)
    assert torch.allclose(cross["pred"], dense.forward_decoder(z, "s2"))
    # the masked L1 by hand: masked pixels of every channel, / number of masked pixels / channels
    pix = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).bool()  # (2, 64, 64)
    by_hand = (cross["pred"] - s2).abs().permute(1, 0, 2, 3)[:, pix].sum() / pix.sum() / 13
    assert float(cross["rec_loss"]) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(own["rec_loss"]) != pytest.approx(float(cross["rec_loss"]))


def test_decoder_is_simmim_conv_and_pixel_shuffle(dense):
    """D_i runs as a matrix product but computes SimMIM's 1x1 conv + PixelShuffle, with the same parameter names."""
    dec = dense.decoders["s2"]
    assert [n for n, _ in dec.named_parameters()] == ["0.weight", "0.bias"]
    z = torch.randn(2, dense.num_features, 2, 2, requires_grad=True)
    ref = torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(z, dec[0].weight, dec[0].bias), 32)
    out = dec(z)
    assert out.shape == (2, get_sensor("s2").num_bands, 64, 64) and torch.allclose(out, ref, atol=1e-5)
    w = torch.randn_like(out)
    g_out = torch.autograd.grad((out * w).sum(), [z, dec[0].weight])
    g_ref = torch.autograd.grad((ref * w).sum(), [z, dec[0].weight])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(g_out, g_ref))


def test_forward_loss_exact_values(dense):
    target = torch.zeros(1, 2, 8, 8)
    pred = torch.zeros(1, 2, 8, 8)
    pred[:, 0] = 2.0  # error 2 in one of two channels: mean over channels 1
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # 2 x 2 grid of 4 x 4 px cells
    assert float(dense.forward_loss(target, pred, mask)) == pytest.approx(2 * 32 / (32 + 1e-5) / 2)
    pred[:, :, :4, :4] = 0.0  # the first masked cell is now exact
    assert float(dense.forward_loss(target, pred, mask)) == pytest.approx(2 * 16 / (32 + 1e-5) / 2)
    assert float(dense.forward_loss(target, pred, torch.zeros(1, 2, 2))) == 0.0


def test_mask_token_replaces_masked_patches(dense):
    dense.eval()
    full = torch.ones(1, GRID, GRID)
    with torch.no_grad():
        a, _ = dense.forward_encoder(torch.randn(1, 3, 64, 64), "rgb", full)
        b, _ = dense.forward_encoder(torch.randn(1, 3, 64, 64), "rgb", full)
        c, _ = dense.forward_encoder(torch.randn(1, 3, 64, 64), "rgb", torch.zeros(1, GRID, GRID))
    assert torch.allclose(a, b, atol=1e-6)  # nothing of the image is seen when everything is masked
    assert not torch.allclose(a, c, atol=1e-3)


def test_band_subset_uses_the_sensors_kernels(dense):
    """BigEarthNet S2 without B10 = the full embedding with B10 set to zero."""
    dense.eval()
    bands = [b for b in get_sensor("s2").band_names if b != "B10"]
    x12 = torch.randn(2, 12, 64, 64)
    x13 = torch.cat([x12[:, :10], torch.zeros(2, 1, 64, 64), x12[:, 10:]], 1)
    with torch.no_grad():
        sub, _ = dense.forward_features(x12, "s2", bands=bands)
        full, _ = dense.forward_features(x13, "s2")
    assert [f.shape for f in sub] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(sub, full))
    with pytest.raises(XGeoError, match="B13"):
        dense.forward_features(x12, "s2", bands=bands[:-1] + ["B13"])
    with pytest.raises(XGeoError, match="expects"):
        dense.forward_encoder(x12, "s2")


def test_stacked_embedding_equals_the_sum_form(dense):
    bands = [b for b in get_sensor("s2").band_names if b != "B10"]
    stacked = embed.stacked_embedding(dense, [("s2", bands), ("s1", None)])
    assert stacked.in_chans == 14 and stacked.band_names[0] == "s2:B01" and stacked.band_names[-1] == "s1:VH"
    s2, s1 = torch.randn(2, 12, 64, 64), torch.randn(2, 2, 64, 64)
    e2, e1 = dense.patch_embeds["s2"], dense.patch_embeds["s1"]
    with torch.no_grad():
        got = stacked(torch.cat([s2, s1], 1))
        conv2 = torch.nn.functional.conv2d(s2, e2.proj.weight[:, e2.band_indices(bands)], e2.proj.bias, stride=4)
        conv1 = torch.nn.functional.conv2d(s1, e1.proj.weight, e1.proj.bias, stride=4)
        mean = ((conv2 + conv1) / 2).permute(0, 2, 3, 1)
        want = torch.nn.functional.layer_norm(mean, (mean.shape[-1],), (e2.norm.weight + e1.norm.weight) / 2,
                                              (e2.norm.bias + e1.norm.bias) / 2)
    assert torch.allclose(got, want, atol=1e-5)
    dense.patch_embeds["s2+s1"] = stacked
    feats, _ = dense.forward_features(torch.cat([s2, s1], 1), "s2+s1")
    del dense.patch_embeds["s2+s1"]
    assert feats[-1].shape == (2, 256, 2, 2)


def test_adapt_embedding_matches_bands_by_wavelength(dense):
    irrg = embed.adapt_embedding(dense, "irrg")
    w = irrg.proj.weight
    rgb, s2 = dense.patch_embeds["rgb"].proj.weight, dense.patch_embeds["s2"].proj.weight
    assert torch.equal(w[:, 0], s2[:, 7])  # NIR 842 nm <- S2 B08 (832.8 nm)
    assert torch.equal(w[:, 1], rgb[:, 0]) and torch.equal(w[:, 2], rgb[:, 1])  # R, G <- rgb (0 nm apart)
    far = embed.adapt_embedding(dense, "irrg", tolerance_nm=1.0)  # NIR has no band within 1 nm
    all_kernels = torch.cat([e.proj.weight for e in dense.patch_embeds.values()], 1)
    assert torch.allclose(far.proj.weight[:, 0], all_kernels.mean(1)) and torch.equal(far.proj.weight[:, 1], rgb[:, 0])
    assert irrg(torch.randn(1, 3, 64, 64)).shape == (1, 16, 16, 32)
    rgb_kernel = torch.randn(32, 3, 4, 4)
    s2k = embed.adapt_rgb_kernel(rgb_kernel, "s2")
    assert torch.equal(s2k[:, 3], rgb_kernel[:, 0]) and torch.equal(s2k[:, 2], rgb_kernel[:, 1])  # B04<-R, B03<-G
    assert torch.equal(s2k[:, 1], rgb_kernel[:, 2]) and torch.allclose(s2k[:, 7], rgb_kernel.mean(1))  # B08: mean
    assert torch.allclose(embed.adapt_rgb_kernel(rgb_kernel, "s1"), rgb_kernel.mean(1, keepdim=True).expand(-1, 2, -1, -1))


def test_timm_weights_load_into_the_encoder(params):
    """A timm SwinV2 state dict: dense model = timm's features; MoE blocks hold the dense MLP in every expert."""
    kw = {k: MODEL_SIZES["demo"][k] for k in ("embed_dim", "depths", "num_heads", "img_size", "window_size")}
    torch.manual_seed(3)
    ref = timm.create_model("swinv2_base_window12_192", pretrained=False, in_chans=3, **kw).eval()
    for moe in (False, True):
        model = _model(params, f"model.moe.enabled={str(moe).lower()}").eval()
        assert embed.load_timm_encoder(model, ref.state_dict(), ["rgb", "s2"]) == ["rgb", "s2"]
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            z, _ = model.forward_encoder(x, "rgb")
            want = ref.forward_features(x).permute(0, 3, 1, 2)
        if moe:
            m = model.moe_layers()[0]
            fc1 = ref.layers[2].blocks[1].mlp.fc1.weight
            assert all(torch.equal(m.w1[e], fc1.t()) for e in range(m.num_experts))
        else:
            assert torch.allclose(z, want, atol=1e-5)
    with pytest.raises(CheckpointError, match="patch_embed"):
        embed.load_timm_encoder(model, {"layers.0.x": torch.zeros(1)}, ["rgb"])


def test_set_input_size_runs_other_sizes(params):
    model = _model(params, "model.moe.enabled=false")
    with pytest.raises(XGeoError, match="set_input_size"):
        model.forward_encoder(torch.randn(1, 3, 128, 128), "rgb")
    model.set_input_size(128)
    feats, _ = model.forward_features(torch.randn(1, 3, 128, 128), "rgb")
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert model.encoder.layers[0].blocks[0].window_size == (8, 8)  # window scales with the token grid
    with pytest.raises(XGeoError, match="multiple"):
        model.set_input_size(100)


def test_encode_is_one_pass_equal_to_each_sensor_alone(dense):
    """XGeo.encode concatenates a step's sensors along the batch and encodes once; for the dense model (no routing
    shared across the batch) each item's z equals forward_encoder of that item alone, with the mask token applied."""
    torch.manual_seed(0)
    dense.eval()
    items = [("rgb", torch.randn(2, 3, 64, 64), _mask(2)), ("s1", torch.randn(1, 2, 64, 64), None),
             ("s2", torch.randn(3, 13, 64, 64), _mask(3, seed=1))]
    calls = []
    hook = dense.encoder.layers[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        zs, aux = dense.encode(items)
    finally:
        hook.remove()
    assert calls == [6]  # one encoder pass over the 2 + 1 + 3 images
    assert [tuple(z.shape) for z in zs] == [(2, dense.num_features, 2, 2), (1, dense.num_features, 2, 2),
                                            (3, dense.num_features, 2, 2)]
    for (sensor, x, mask), z in zip(items, zs):
        alone, _ = dense.forward_encoder(x, sensor, mask)
        assert torch.allclose(z, alone, atol=1e-5)
    _, _, stages = dense.encode(items, return_stages=True)
    assert [tuple(f.shape[-2:]) for f in stages[2]] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert torch.equal(stages[2][-1], zs[2])


def test_every_path_refuses_an_input_of_another_size(params):
    """The model runs only at its img_size (windows and masks depend on it): encode, forward_encoder, forward,
    forward_features all name the sensor, the expected and the found size."""
    model = _model(params, "model.moe.enabled=false")
    x = torch.randn(1, 3, 96, 96)
    calls = [lambda: model.encode([("rgb", torch.randn(1, 3, 64, 64), None), ("rgb", x, None)]),
             lambda: model.forward_encoder(x, "rgb"), lambda: model.forward(x, "rgb", torch.zeros(1, 24, 24)),
             lambda: model.forward_features(x, "rgb")]
    for call in calls:
        with pytest.raises(XGeoError, match=r"rgb input of shape \(1, 3, 96, 96\): expected \(B, C, 64, 64\).*found \(96, 96\)"):
            call()


def test_unknown_sensor_and_bad_config_are_clear_errors(params, demo):
    with pytest.raises(XGeoError, match="wv3_pan"):
        demo.forward_encoder(torch.randn(1, 1, 64, 64), "wv3_pan")
    with pytest.raises(XGeoError, match="token grid"):
        demo.forward_encoder(torch.randn(1, 3, 64, 64), "rgb", torch.ones(1, 4, 4))
    with pytest.raises(XGeoError, match="model.size"):
        _model(params, "model.size=huge")
    with pytest.raises(XGeoError, match="unknown sensor"):
        _model(params, "model.sensors=[rgb, lidar]")
    with pytest.raises(XGeoError, match="NO_CUDA=1"):
        _model(params, "model.moe.backend=tutel") if not _tutel() else pytest.skip("tutel installed")


def _tutel():
    from xgeo.model.moe import tutel_available

    return tutel_available()


def test_paper_size_builds_runs_and_has_the_expected_parameter_count(params):
    from xgeo.config import apply_overrides

    p = apply_overrides(params, {"model.size": "paper"})
    torch.manual_seed(0)
    model = build_model(p)
    # independent count: timm's SwinV2-Base (headless) without its 3-channel patch embedding, plus ours
    with torch.device("meta"):
        base = sum(t.numel() for t in timm.create_model("swinv2_base_window12_192", num_classes=0).parameters())
    C_e, C_m, E, dim, hidden = 128, 1024, 8, 512, 2048
    channels = [get_sensor(s).num_bands for s in p["model"]["sensors"]]
    expected = base - (3 * C_e * 16 + C_e + 2 * C_e)
    expected += sum(c * C_e * 16 + C_e + 2 * C_e for c in channels)  # per-sensor conv + LayerNorm
    expected += C_e  # mask token
    expected += sum(C_m * 32 * 32 * c + 32 * 32 * c for c in channels)  # decoders
    expected += 9 * ((E - 1) * (2 * dim * hidden + hidden + dim) + dim * E)  # blocks 1..17 of stage 3: experts + gate
    assert sum(t.numel() for t in model.parameters()) == expected
    assert len(model.moe_layers()) == 9
    assert [n for n, _ in model.encoder.named_modules() if n.endswith("mlp") and "blocks" in n
            and type(_).__name__ == "MoE"] == [f"layers.2.blocks.{j}.mlp" for j in range(1, 18, 2)]
    # one forward + backward at batch 1 on the CPU (at 64 px: same weights, windows scaled by timm; 192 px is slow)
    model.set_input_size(64)
    out = model(torch.randn(1, 13, 64, 64), "s2", _mask(1))
    out["loss"].backward()
    assert out["pred"].shape == (1, 13, 64, 64) and torch.isfinite(out["loss"])
    assert model.moe_layers()[0].gate.weight.grad is not None


@pytest.mark.slow
def test_paper_size_forward_backward_at_192(params):
    from xgeo.config import apply_overrides

    model = build_model(apply_overrides(params, {"model.size": "paper"}))
    mask = (torch.rand(1, 48, 48) < 0.6).float()
    out = model(torch.randn(1, 13, 192, 192), "s2", mask)
    out["loss"].backward()
    assert out["pred"].shape == (1, 13, 192, 192) and torch.isfinite(out["loss"])


def test_checkpoint_round_trip_and_errors(params, demo, tmp_path):
    path = tmp_path / "last.ckpt"
    demo.eval()
    save_checkpoint(path, demo, step=7)
    model, meta = load_pretrained(path, params)
    assert meta["step"] == 7 and meta["model_config"] == demo.config and "xgeo_version" in meta
    x = torch.randn(1, 13, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_encoder(x, "s2")[0], demo.forward_encoder(x, "s2")[0])
    from xgeo.config import apply_overrides

    with pytest.raises(CheckpointError, match=r"model_config.moe.num_experts: checkpoint 8, params 4"):
        load_pretrained(path, apply_overrides(params, {"model.moe.num_experts": 4}))
    # the trainer's form: a complete checkpoint dict
    save_checkpoint(tmp_path / "t.ckpt", {"model": demo.state_dict(), "model_config": demo.config, "step": 3})
    assert load_pretrained(tmp_path / "t.ckpt")[1]["step"] == 3
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_pretrained(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_pretrained(tmp_path / "missing.ckpt")
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"model": {"x": torch.zeros(1)}, "model_config": demo.config}, wrong)
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(wrong)


def test_timm_export_loads_strictly_and_matches(params, dense, demo, tmp_path):
    save_checkpoint(tmp_path / "dense.ckpt", dense)
    info = export_timm(tmp_path / "dense.ckpt", tmp_path / "enc.pth", sensor="s2")
    assert info["exact"] and info["kwargs"]["in_chans"] == 13
    assert json.loads((tmp_path / "enc.pth.json").read_text())["model_name"] == "swinv2_base_window12_192"
    t = timm.create_model(info["model_name"], pretrained=False, **info["kwargs"]).eval()
    t.load_state_dict(torch.load(tmp_path / "enc.pth"), strict=True)
    dense.eval()
    x = torch.randn(2, 13, 64, 64)
    with torch.no_grad():
        assert torch.allclose(t.forward_features(x).permute(0, 3, 1, 2), dense.forward_encoder(x, "s2")[0], atol=1e-5)
    # MoE: a dense MLP = the experts weighted by their recorded load
    m = demo.moe_layers()[0]
    saved = m.load_count.clone()
    m.load_count.copy_(torch.tensor([3.0, 1.0, 0, 0, 0, 0, 0, 0], dtype=torch.float64))
    save_checkpoint(tmp_path / "moe.ckpt", demo)
    m.load_count.copy_(saved)
    info = export_timm(tmp_path / "moe.ckpt", tmp_path / "moe.pth")
    assert not info["exact"] and info["sensor"] == "rgb"
    state = torch.load(tmp_path / "moe.pth")
    t = timm.create_model(info["model_name"], pretrained=False, **info["kwargs"])
    t.load_state_dict(state, strict=True)
    want = (0.75 * m.w1[0] + 0.25 * m.w1[1]).t()
    assert torch.allclose(state["layers.2.blocks.1.mlp.fc1.weight"], want, atol=1e-7)
    with pytest.raises(CheckpointError, match="irrg"):
        export_timm(tmp_path / "moe.ckpt", tmp_path / "x.pth", sensor="irrg")


def test_expert_parameters_and_weight_decay_names(demo, dense):
    names = demo.expert_parameter_names()
    assert len(names) == 2 * 4 and all(n.startswith("encoder.layers.2.blocks.") for n in names)
    assert dense.expert_parameter_names() == [] and dense.moe_layers() == []
    nwd = demo.no_weight_decay()
    assert "mask_token" in nwd and "encoder.layers.2.blocks.1.mlp.b1" in nwd
    assert "encoder.layers.2.blocks.1.mlp.w1" not in nwd
