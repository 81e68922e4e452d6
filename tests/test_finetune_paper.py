"""The finetune tasks at the paper's shapes (profile paper): stores written at the paper's tile sizes
(overlays/paper.yaml), 2 finetuning steps and the evaluation, asserting what the network sees in training (the
crops) and in evaluation (whole patches, images and areas) and the output shapes.

The default suite runs the demo width at the paper's shapes; ``pytest -m slow`` runs the paper-size model too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xgeo.finetune import tasks as ft_tasks

ROOT = Path(__file__).resolve().parents[1]
# synthetic raw data large enough for the paper's tiles; a handful of samples per split
SYNTH = [
    "data.datasets.bigearthnet.synth.patches={train: 8, val: 4, test: 2}",
    "data.datasets.sen12ms-cr.synth={patches_per_roi: 1, size: 256, rois: {train: 1, val: 1, test: 1}}",
    "data.datasets.vaihingen.synth={size: [520, 560], areas: {train: 1, test: 1}}",
    "data.datasets.spacenet2.synth={aois: [AOI_2_Vegas], images_per_aoi: 5, pan_size: 650}",
]
TASKS = ("bigearthnet", "sen12ms-cr", "vaihingen", "spacenet2")


@pytest.fixture(scope="module")
def paper_zarr(tmp_path_factory) -> Path:
    from xgeo.config import load_params
    from xgeo.data.convert import convert
    from xgeo.data.synth import synthesize

    base = tmp_path_factory.mktemp("paper_stores")
    params = load_params(ROOT / "params.yaml", ["profile=paper", *SYNTH])
    for ds in TASKS:
        synthesize(ds, base / "raw" / ds, params, seed=0)
        convert(ds, base / "raw" / ds, base / "zarr" / f"{ds}.zarr", params)
    return base / "zarr"


def small(task: str) -> list[str]:
    """Paper settings with batches of 2 (and a narrow UPerNet head at demo width)."""
    out = [f"finetune.{task}.paper.batch_size=2", "finetune.eval_batch_size=2", "mlflow.enabled=false"]
    return out


@pytest.fixture
def recorded(monkeypatch):
    """Input and output shapes of every call of the finetuning network, with whether it was training."""
    calls: list[tuple[bool, tuple, tuple]] = []
    forward = ft_tasks.FinetuneNet.forward

    def spy(self, xs):
        out, aux = forward(self, xs)
        calls.append((self.training, tuple(xs[0].shape), tuple(out.shape)))
        return out, aux

    monkeypatch.setattr(ft_tasks.FinetuneNet, "forward", spy)
    return calls


# per task: (store tile (H, W) of the first input, its training input (B, C, H, W), its evaluation window (C, H, W)
# (the first input: S2, cloudy S2, IRRG, PAN; the others are stacked onto it in the backbone),
# output per training step (C_out, H, W) or (K,), saved evaluation output (C_out, H, W) or None)
EXPECTED = {
    "bigearthnet": ((120, 120), (2, 12, 128, 128), (12, 128, 128), (19,), None),
    "sen12ms-cr": ((256, 256), (2, 13, 160, 160), (13, 160, 160), (13, 160, 160), (13, 256, 256)),
    "vaihingen": ((512, 512), (2, 3, 512, 512), (3, 512, 512), (6, 512, 512), (512, 512)),
    "spacenet2": ((650, 650), (2, 1, 256, 256), (1, 256, 256), (8, 256, 256), (8, 650, 650)),
}


def run_paper_shapes(task, size, load, paper_zarr, tmp_path, recorded):
    from xgeo.data.dataset import ZarrDataset
    from xgeo.finetune.run import finetune

    extra = [f"finetune.vaihingen.paper.head_width=64"] if size == "demo" else []
    params = load("profile=paper", f"model.size={size}", f"paths.zarr={paper_zarr}", *SYNTH, *small(task), *extra)
    tile, train_in, window, train_out, saved = EXPECTED[task]
    t = ft_tasks.get_task(task, params)
    key = t.input_specs()[0].key
    assert tuple(ZarrDataset(t.path, modalities=[key], split=None)[0][key].shape[-2:]) == tile
    res = finetune(task, "random", tmp_path / "run", params, steps=2)
    train_calls = [c for c in recorded if c[0]]
    eval_calls = [c for c in recorded if not c[0]]
    assert len(train_calls) == 2 and all(c[1] == train_in for c in train_calls)
    assert all(c[2][1:] == train_out for c in train_calls)
    assert eval_calls and all(c[1][1:] == window for c in eval_calls)
    npz = np.load(tmp_path / "run" / "predictions.npz")
    if task == "bigearthnet":
        assert npz["scores"].shape == (4, 19) and res["eval_samples"] == 4
    elif task == "vaihingen":
        # the whole test area (520 x 560, four overlapping 512 px tiles) is predicted once: every labelled pixel
        # counts once, more than one tile holds and no more than the area
        assert npz["outputs"].shape[1:] == saved and res["eval_samples"] == 4
        assert 512 * 512 < npz["confusion"].sum() <= 520 * 560
    else:
        assert npz["outputs"].shape[1:] == saved and np.isfinite(npz["outputs"]).all()
        assert res["eval_samples"] == len(npz["outputs"])
    for k in ("final_train_loss",):
        assert np.isfinite(res[k])


@pytest.mark.parametrize("task", TASKS)
def test_paper_shapes_demo_width(task, load, paper_zarr, tmp_path, recorded):
    run_paper_shapes(task, "demo", load, paper_zarr, tmp_path, recorded)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_paper_shapes_paper_model(task, load, paper_zarr, tmp_path, recorded):
    run_paper_shapes(task, "paper", load, paper_zarr, tmp_path, recorded)


def test_vaihingen_tile_ids_place_tiles_where_their_transforms_do(paper_zarr):
    """The evaluation mosaics each area from the row/col of its tile ids (area<N>_r<row>_c<col>): the same places
    as the tiles' own affine transforms give (so the re-assembled area is the area as georeferenced)."""
    import re

    from xgeo.data.store import open_store

    root = open_store(paper_zarr / "vaihingen.zarr")
    ids = [str(i) for i in root["ids"][:]]
    transforms = root["irrg/transform"][:]
    areas: dict[str, list] = {}
    for sid, t in zip(ids, transforms):
        m = re.match(r"^(?P<area>.+)_r(?P<r>\d+)_c(?P<c>\d+)$", sid)
        areas.setdefault(m["area"], []).append((int(m["r"]), int(m["c"]), t))
    assert len(areas) == 2 and all(len(tiles) == 4 for tiles in areas.values())  # 520 x 560: 2 x 2 tiles of 512
    for tiles in areas.values():
        r0, c0, t0 = next(x for x in tiles if x[0] == 0 and x[1] == 0)
        for r, c, t in tiles:
            # affine (a, b, c, d, e, f): x = a col + c, y = e row + f
            assert (t[5] - t0[5]) / t0[4] == pytest.approx(r) and (t[2] - t0[2]) / t0[0] == pytest.approx(c)
