"""Layouts users hold: each dataset's other layouts written from the same synthetic content (the dataset module's
ARRANGE re-arrangers), detected and read into identical stores; split files by path; bad layouts and mixed folders;
partitioned conversion equal to a single pass; the registry's one-module-per-dataset shape."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from test_convert import demo_params
from xgeo.data import datasets as registry
from xgeo.data.convert import convert, merge, part_path, parts_dir
from xgeo.data.synth import synthesize
from xgeo.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
# tiny scales: a few files per layout
SMALL = {
    "sen12ms": ("data.datasets.sen12ms.synth={scenes_per_season: 1, patches_per_scene: 2, size: 64}",),
    "bigearthnet": ("data.datasets.bigearthnet.synth.patches={train: 4, val: 2, test: 2}",),
    "mdas": ("data.datasets.mdas.synth={sub_areas: 2, rgb_size: [150, 180]}",),
    # TorchGeo holds two of GeoPile's sources: RESISC45 and PatternNet
    "geopile": ("data.datasets.geopile.synth.sources=[RESISC45, PatternNet]",
                "data.datasets.geopile.synth.images_per_class=2"),
}
_RAW: dict[tuple[str, str], Path] = {}
_STORE: dict[tuple[str, str], Path] = {}


def params_of(dataset: str, *more: str) -> dict:
    return demo_params(*SMALL.get(dataset, ()), *more)


def raw_in(tmp_path_factory, dataset: str, layout: str) -> Path:
    """The same synthetic content (seed 0) written in ``layout``; once per session."""
    if (dataset, layout) not in _RAW:
        d = tmp_path_factory.mktemp(f"raw-{dataset}-{layout}") / "raw"
        synthesize(dataset, d, params_of(dataset), seed=0, layout=layout)
        _RAW[dataset, layout] = d
    return _RAW[dataset, layout]


def store_in(tmp_path_factory, dataset: str, layout: str) -> Path:
    if (dataset, layout) not in _STORE:
        out = tmp_path_factory.mktemp(f"zarr-{dataset}-{layout}") / "store.zarr"
        convert(dataset, raw_in(tmp_path_factory, dataset, layout), out, params_of(dataset))
        _STORE[dataset, layout] = out
    return _STORE[dataset, layout]


def assert_same_store(a: Path, b: Path, stats_exact: bool = True) -> None:
    """Same arrays (every array of the store, exactly) and the same statistics."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    names_a = sorted(k for k, _ in ga.arrays()) + sorted(f"{g}/{k}" for g, grp in ga.groups() for k, _ in grp.arrays())
    names_b = sorted(k for k, _ in gb.arrays()) + sorted(f"{g}/{k}" for g, grp in gb.groups() for k, _ in grp.arrays())
    assert names_a == names_b
    for name in names_a:
        x, y = ga[name][:], gb[name][:]
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    for key in ga.attrs["modalities"]:
        sa, sb = ga[f"{key}/data"].attrs["stats"], gb[f"{key}/data"].attrs["stats"]
        assert sorted(sa) == sorted(sb)
        for field in sa:
            x, y = np.array(sa[field], dtype=float), np.array(sb[field], dtype=float)
            if stats_exact:
                assert np.array_equal(x, y, equal_nan=True), (key, field)
            else:
                assert np.allclose(x, y, rtol=1e-12, atol=1e-9, equal_nan=True), (key, field)


# ------------------------------------------------------------------------------------------------- one home
def test_each_dataset_one_module_and_nothing_imports_the_registry():
    folder = ROOT / "xgeo" / "data" / "datasets"
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in registry._MODULES) == modules
    assert len(registry.CATALOG) == len(modules) == 14
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = (node.module or "")
                # members import the base (spec), the shared machinery and at most a sibling, never the registry
                assert not (node.level == 1 and target == ""), f"{name} imports the registry"
                assert "catalog" not in target and target not in ("readers", "synth", "convert"), (name, target)
        mod = getattr(registry, name)
        assert mod.SPEC.id in registry.CATALOG and mod.__doc__ and "Citation" in mod.__doc__


# --------------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("dataset,layout", [("sen12ms", "torchgeo"), ("bigearthnet", "torchgeo"),
                                            ("bigearthnet", "v2"), ("mdas", "torchgeo"), ("geopile", "torchgeo")])
def test_same_content_two_layouts_identical_stores(tmp_path_factory, dataset, layout):
    original = store_in(tmp_path_factory, dataset, "original")
    other = store_in(tmp_path_factory, dataset, layout)
    assert zarr.open_group(str(original), mode="r").attrs["layout"] == "original"
    assert zarr.open_group(str(other), mode="r").attrs["layout"] == layout
    assert zarr.open_group(str(other), mode="r")["ids"].shape[0] > 0
    assert_same_store(original, other)


def test_torchgeo_file_names(tmp_path_factory):
    """The names TorchGeo's dataset classes open (torchgeo/datasets/{sen12ms,bigearthnet,mdas,resisc45,patternnet}.py)."""
    assert (raw_in(tmp_path_factory, "sen12ms", "torchgeo") / "train_list.txt").is_file()
    assert (raw_in(tmp_path_factory, "sen12ms", "torchgeo") / "test_list.txt").is_file()
    ben = raw_in(tmp_path_factory, "bigearthnet", "torchgeo")
    assert all((ben / f"bigearthnet-{s}.csv").is_file() for s in ("train", "val", "test"))
    mdas = raw_in(tmp_path_factory, "mdas", "torchgeo") / "Augsburg_data_4_publication"
    assert (mdas / "sub_area_1" / "3K_RGB_sub_area1.tif").is_file()
    assert (mdas / "sub_area_2" / "3K_DSM_sub_area2.tif").is_file()
    gp = raw_in(tmp_path_factory, "geopile", "torchgeo")
    assert list((gp / "NWPU-RESISC45").glob("*/*.jpg")) and list((gp / "PatternNet" / "images").glob("*/*.jpg"))
    v2 = raw_in(tmp_path_factory, "bigearthnet", "v2")
    import pyarrow.parquet as pq

    table = pq.read_table(v2 / "metadata.parquet")
    assert {"patch_id", "s1_name", "split", "labels"} <= set(table.column_names)
    assert set(table.column("split").to_pylist()) == {"train", "validation", "test"}
    row = table.slice(0, 1).to_pylist()[0]
    tile_dir = "_".join(row["patch_id"].split("_")[:-2])
    assert (v2 / "BigEarthNet-S2" / tile_dir / row["patch_id"] / f"{row['patch_id']}_B8A.tif").is_file()


def test_split_files_given_by_path(tmp_path_factory, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_in(tmp_path_factory, "sen12ms", "torchgeo"), raw)
    lists = tmp_path / "elsewhere"
    lists.mkdir()
    for s in ("train", "test"):
        shutil.move(raw / f"{s}_list.txt", lists / f"{s}_list.txt")
    with pytest.raises(DataError, match="found none recognised"):
        convert("sen12ms", raw, tmp_path / "no.zarr", params_of("sen12ms"))
    p = params_of("sen12ms")
    p["data"]["datasets"]["sen12ms"]["split_files"] = {s: str(lists / f"{s}_list.txt") for s in ("train", "test")}
    convert("sen12ms", raw, tmp_path / "s.zarr", p)
    assert_same_store(store_in(tmp_path_factory, "sen12ms", "original"), tmp_path / "s.zarr")


def test_unrecognised_layout_lists_layouts_and_first_files(tmp_path):
    raw = tmp_path / "raw"
    (raw / "something").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        convert("bigearthnet", raw, tmp_path / "x.zarr", params_of("bigearthnet"))
    msg = str(exc.value)
    for expected in ("original: ", f"{raw}/BigEarthNet-v1.0", "torchgeo: ", "v2: ", f"{raw}/BigEarthNet-S2"):
        assert expected in msg, msg
    assert not (tmp_path / "x.zarr").exists()


def test_two_layouts_mixed_in_one_folder(tmp_path_factory, tmp_path):
    """SEN12MS with both split-list places; BigEarthNet with v1 and v2 folders: one clear error; --layout chooses."""
    raw = tmp_path / "raw"
    shutil.copytree(raw_in(tmp_path_factory, "sen12ms", "original"), raw)
    for s in ("train", "test"):
        shutil.copy(raw / "splits" / f"{s}_list.txt", raw / f"{s}_list.txt")
    good = tmp_path / "good.zarr"
    shutil.copytree(store_in(tmp_path_factory, "sen12ms", "original"), good)
    with pytest.raises(DataError, match=r"found files of 2 mixed in one folder \(original, torchgeo\).*--layout"):
        convert("sen12ms", raw, good, params_of("sen12ms"))
    assert_same_store(store_in(tmp_path_factory, "sen12ms", "original"), good)  # the earlier store survives
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".good.zarr")]
    p = params_of("sen12ms")
    p["data"]["datasets"]["sen12ms"]["layout"] = "torchgeo"  # what --layout torchgeo sets
    convert("sen12ms", raw, tmp_path / "chosen.zarr", p)
    assert zarr.open_group(str(tmp_path / "chosen.zarr"), mode="r").attrs["layout"] == "torchgeo"

    ben = tmp_path / "ben"
    shutil.copytree(raw_in(tmp_path_factory, "bigearthnet", "original"), ben)
    for d in ("BigEarthNet-S1", "BigEarthNet-S2"):
        shutil.copytree(raw_in(tmp_path_factory, "bigearthnet", "v2") / d, ben / d)
    shutil.copy(raw_in(tmp_path_factory, "bigearthnet", "v2") / "metadata.parquet", ben)
    with pytest.raises(DataError, match=r"mixed in one folder \(original, v2\)"):
        convert("bigearthnet", ben, tmp_path / "b.zarr", params_of("bigearthnet"))
    assert not (tmp_path / "b.zarr").exists()


def test_split_list_naming_files_of_another_layout(tmp_path_factory, tmp_path):
    """v1 split csv files over reBEN's folders: the csv names v1 patches, not found where this layout has them."""
    raw = tmp_path / "raw"
    shutil.copytree(raw_in(tmp_path_factory, "bigearthnet", "v2"), raw)
    (raw / "metadata.parquet").unlink()
    v1 = raw_in(tmp_path_factory, "bigearthnet", "torchgeo")
    first_v1 = (v1 / "bigearthnet-train.csv").read_text().split(",")[0]
    (raw / "BigEarthNet-v1.0").mkdir()
    (raw / "BigEarthNet-S1-v1.0").mkdir()
    for s in ("train", "val", "test"):
        shutil.copy(v1 / f"bigearthnet-{s}.csv", raw / f"bigearthnet-{s}.csv")
    with pytest.raises(DataError) as exc:
        convert("bigearthnet", raw, tmp_path / "x.zarr", params_of("bigearthnet"))
    msg = str(exc.value)
    assert "bigearthnet-train.csv: line 1 names" in msg and first_v1 in msg and "layout torchgeo" in msg, msg
    assert not (tmp_path / "x.zarr").exists()

    sen = tmp_path / "sen"
    shutil.copytree(raw_in(tmp_path_factory, "sen12ms", "original"), sen)
    (sen / "splits" / "train_list.txt").write_text(f"{first_v1}\n")
    with pytest.raises(DataError, match=r"train_list.txt: expected s2 file names like ROIs1158_spring_s2_1_p30.tif"):
        convert("sen12ms", sen, tmp_path / "y.zarr", params_of("sen12ms"))


def test_cli_layout_split_file_and_unknown_dataset(tmp_path_factory, tmp_path):
    from click.testing import CliRunner

    from xgeo.cli import main

    runner = CliRunner()
    for args in (["data", "convert", "sentinel9", str(tmp_path), str(tmp_path / "o.zarr")],
                 ["data", "synth", "sentinel9", str(tmp_path / "s")], ["data", "download", "sentinel9", str(tmp_path / "d")],
                 ["data", "raw", "sentinel9", str(tmp_path / "r")]):
        res = runner.invoke(main, [*args, "--params", str(ROOT / "params.yaml")])
        assert res.exit_code == 2, res.output
        assert "unknown dataset 'sentinel9'" in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    raw = tmp_path / "raw"
    shutil.copytree(raw_in(tmp_path_factory, "sen12ms", "torchgeo"), raw)
    shutil.move(raw / "train_list.txt", tmp_path / "tr.txt")
    shutil.move(raw / "test_list.txt", tmp_path / "te.txt")
    res = runner.invoke(main, ["data", "convert", "sen12ms", str(raw), str(tmp_path / "c.zarr"), "--layout", "torchgeo",
                               "--split-file", f"train={tmp_path / 'tr.txt'}", "--split-file", f"test={tmp_path / 'te.txt'}",
                               "--params", str(ROOT / "params.yaml"), *(f"--set={s}" for s in SMALL["sen12ms"])])
    assert res.exit_code == 0, res.output
    assert_same_store(store_in(tmp_path_factory, "sen12ms", "original"), tmp_path / "c.zarr")
    res = runner.invoke(main, ["data", "convert", "sen12ms", str(raw), str(tmp_path / "d.zarr"), "--layout", "nope",
                               "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 2 and "expected a layout among ['original', 'torchgeo'], found --layout 'nope'" in res.output


# ------------------------------------------------------------------------------------------------- partitions
@pytest.mark.parametrize("dataset,n", [("sen12ms", 3), ("mdas", 2)])
def test_partitioned_equals_single_pass(tmp_path_factory, tmp_path, dataset, n):
    """Arrays exact; count/min/max exact, mean/std to float rounding; percentiles within one bin (MDAS's DSM has an
    adaptive histogram; fixed-bin sensors are exact)."""
    raw, single = raw_in(tmp_path_factory, dataset, "original"), store_in(tmp_path_factory, dataset, "original")
    out = tmp_path / "p.zarr"
    for k in range(1, n + 1):
        assert convert(dataset, raw, out, params_of(dataset), part=(k, n)) == part_path(out, k, n)
        assert not out.exists()  # a store is complete only after the merge
    merge(out, params_of(dataset))
    ga, gb = zarr.open_group(str(single), mode="r"), zarr.open_group(str(out), mode="r")
    assert gb.attrs["parts"] == n and gb.attrs["splits"] == ga.attrs["splits"]
    for name in ("ids", "split") + tuple(f"{k}/{a}" for k in ga.attrs["modalities"] for a in ("data", "crs", "transform")):
        assert np.array_equal(ga[name][:], gb[name][:], equal_nan=ga[name].dtype.kind == "f"), name
    # the merge copies the parts' compressed chunks: the shard files are byte for byte those of the single pass
    shards = sorted(p.relative_to(single) for p in single.glob("*/data/c/**/*") if p.is_file())
    assert shards and shards == sorted(p.relative_to(out) for p in out.glob("*/data/c/**/*") if p.is_file())
    assert all((single / s).read_bytes() == (out / s).read_bytes() for s in shards)
    for key in ga.attrs["modalities"]:
        sa, sb = ga[f"{key}/data"].attrs["stats"], gb[f"{key}/data"].attrs["stats"]
        for field in ("count", "min", "max"):
            assert sa[field] == sb[field], (key, field)
        for field in ("mean", "std"):
            assert np.allclose(sa[field], sb[field], rtol=1e-12, atol=1e-9), (key, field)
        bin_width = 2 * np.array(sb["p_error"])
        for field in ("p1", "p99"):
            assert np.all(np.abs(np.array(sa[field]) - np.array(sb[field])) <= bin_width + 1e-9), (key, field)


def test_merge_refuses_missing_part_and_different_settings(tmp_path_factory, tmp_path):
    raw = raw_in(tmp_path_factory, "sen12ms", "original")
    out = tmp_path / "p.zarr"
    good = store_in(tmp_path_factory, "sen12ms", "original")
    shutil.copytree(good, out)  # an earlier good store at OUT survives every failed merge
    convert("sen12ms", raw, out, params_of("sen12ms"), part=(1, 3))
    convert("sen12ms", raw, out, params_of("sen12ms"), part=(3, 3))
    with pytest.raises(DataError, match=r"expected all 3 parts, found part\(s\) \[2\] missing.*2-of-3.zarr"):
        merge(out, params_of("sen12ms"))
    convert("sen12ms", raw, out, params_of("sen12ms", "data.convert.compression_level=5"), part=(2, 3))
    with pytest.raises(DataError, match=r"2-of-3.zarr: expected the settings of 1-of-3.zarr, found different "
                                        r"compression_level \(3 vs 5\)"):
        merge(out, params_of("sen12ms"))
    convert("sen12ms", raw, out, params_of("sen12ms"), part=(1, 2))
    with pytest.raises(DataError, match=r"expected the parts of one partition, found parts of \[2, 3\] parts"):
        merge(out, params_of("sen12ms"))
    assert_same_store(good, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.zarr")]


def test_killed_part_reruns_alone(tmp_path_factory, tmp_path, monkeypatch):
    """A part that dies leaves no part store; the others are kept; rerunning it alone completes the merge."""
    from xgeo.data.datasets import sen12ms

    raw = raw_in(tmp_path_factory, "sen12ms", "original")
    out = tmp_path / "p.zarr"
    convert("sen12ms", raw, out, params_of("sen12ms"), part=(1, 2))
    stamp = (part_path(out, 1, 2) / "zarr.json").stat().st_mtime_ns
    layout = sen12ms.LAYOUTS["original"]
    calls = []

    def dies(raw_, unit, spec, params):
        calls.append(unit)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed mid-part
        yield from layout.read(raw_, unit, spec, params)

    monkeypatch.setitem(registry.LAYOUTS["sen12ms"], "original", layout.__class__(
        layout.name, layout.description, layout.expects, layout.plan, dies, layout.split_lists))
    with pytest.raises(KeyboardInterrupt):
        convert("sen12ms", raw, out, params_of("sen12ms"), part=(2, 2))
    assert not part_path(out, 2, 2).exists()
    assert sorted(p.name for p in parts_dir(out).iterdir()) == ["1-of-2.zarr"]  # no temp folder, part 1 kept
    with pytest.raises(DataError, match=r"part\(s\) \[2\] missing"):
        merge(out, params_of("sen12ms"))
    monkeypatch.undo()
    convert("sen12ms", raw, out, params_of("sen12ms"), part=(2, 2))
    assert (part_path(out, 1, 2) / "zarr.json").stat().st_mtime_ns == stamp  # part 1 not redone
    merge(out, params_of("sen12ms"))
    assert_same_store(store_in(tmp_path_factory, "sen12ms", "original"), out, stats_exact=False)


def test_decoding_in_worker_processes_is_identical(tmp_path_factory, tmp_path):
    out = tmp_path / "w.zarr"
    convert("geopile", raw_in(tmp_path_factory, "geopile", "original"), out, params_of("geopile"), workers=2)
    assert_same_store(store_in(tmp_path_factory, "geopile", "original"), out)


def test_part_of_too_few_files(tmp_path_factory, tmp_path):
    raw = raw_in(tmp_path_factory, "mdas", "original")  # 2 sub areas
    with pytest.raises(DataError, match="expected at least 3 files to split into 3 parts, found 2"):
        convert("mdas", raw, tmp_path / "x.zarr", params_of("mdas"), part=(3, 3))


def test_snakemake_scatters_parts(tmp_path):
    """data.convert.parts.<id> = 3: three convert_part jobs (separate cluster jobs), then one merge."""
    import subprocess
    import sys

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "overlays", tmp_path / "overlays")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "2", "-n",
           "-p", "data/zarr/sen12ms.zarr", "data/zarr/mdas.zarr", "--config", "data={convert: {parts: {sen12ms: 3}}}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for k in (1, 2, 3):
        assert f"data convert sen12ms data/raw/sen12ms data/zarr/sen12ms.zarr --part {k}/3 --workers" in out
    assert "data merge data/zarr/sen12ms.zarr" in out
    assert "data convert mdas data/raw/mdas data/zarr/mdas.zarr --workers" in out and "--part 1/1" not in out


def test_download_knows_bigearthnet_v2_sources(tmp_path, monkeypatch):
    """--layout v2 fetches reBEN (Zenodo 10891137) instead of v1; the archives with TorchGeo's md5s, metadata.parquet
    with md5 None = recorded at first download, then verified."""
    from xgeo.data import download as dl

    fetched = []
    monkeypatch.setattr(dl, "fetch", lambda source, directory, opts, manifest, into=None: fetched.append(source))
    p = params_of("bigearthnet")
    dl.download_dataset("bigearthnet", tmp_path / "v1", p)
    assert [s.filename for s in fetched] == ["BigEarthNet-S1-v1.0.tar.gz", "BigEarthNet-S2-v1.0.tar.gz",
                                             "splits/train.csv", "splits/val.csv", "splits/test.csv"]
    fetched.clear()
    p["data"]["datasets"]["bigearthnet"]["layout"] = "v2"
    dl.download_dataset("bigearthnet", tmp_path / "v2", p)
    assert [s.filename for s in fetched] == ["BigEarthNet-S1.tar.zst", "BigEarthNet-S2.tar.zst", "metadata.parquet"]
    assert all(s.url.startswith("https://zenodo.org/records/10891137/files/") for s in fetched)
    assert [s.extract for s in fetched] == [True, True, False]
    assert [s.md5 for s in fetched] == ["a55eaa2cdf6a917e296bd6601ec1e348", "2245ed2d1a93f6ce637d839bc856396e", None]
    p["data"]["datasets"]["bigearthnet"]["layout"] = "v3"
    with pytest.raises(Exception, match=r"expected a layout among \['original', 'torchgeo', 'v2'\]"):
        dl.download_dataset("bigearthnet", tmp_path / "v3", p)


def test_uncompressed_store_read_fast_path(tmp_path_factory, tmp_path):
    """compression_level 0: tiles stored as raw bytes; the loader's fast path reads them (no decoding) and they equal
    the zstd store's; merging parts of it works the same."""
    from xgeo.data.dataset import ZarrDataset
    from xgeo.data.store import ChunkReader

    raw = raw_in(tmp_path_factory, "sen12ms", "original")
    p = params_of("sen12ms", "data.convert.compression_level=0")
    convert("sen12ms", raw, tmp_path / "u.zarr", p)
    meta = zarr.open_array(str(tmp_path / "u.zarr" / "s2" / "data"), mode="r").metadata.to_dict()
    assert [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]] == ["bytes"]
    reader = ChunkReader(tmp_path / "u.zarr", "s2/data")
    assert reader.per_shard is not None and not reader._compressed
    ref = zarr.open_group(str(store_in(tmp_path_factory, "sen12ms", "original")), mode="r")
    for i in (0, len(reader) - 1):
        assert np.array_equal(reader[i], ref["s2/data"][i])
    a, b = ZarrDataset(tmp_path / "u.zarr", split="train"), ZarrDataset(store_in(tmp_path_factory, "sen12ms", "original"))
    torch_eq = [bool((a[i][k] == b[i][k]).all()) for i in (0, 3) for k in ("s1", "s2")]
    assert all(torch_eq)
    for k in (1, 2):
        convert("sen12ms", raw, tmp_path / "m.zarr", p, part=(k, 2))
    merge(tmp_path / "m.zarr", p)
    assert_same_store(tmp_path / "u.zarr", tmp_path / "m.zarr", stats_exact=False)
