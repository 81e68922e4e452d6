"""The ``xgeo`` command line. Every command takes ``--params FILE`` and repeated ``--set key.path=value``.

Commands import their implementation lazily so that ``xgeo --help`` stays fast.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from .config import load_params
from .errors import XGeoError


def params_options(func):
    """Add --params/--set/--experiment and pass the resolved params dict as ``params``."""

    @click.option("--params", "params_file", type=click.Path(dir_okay=False), default=None,
                  help="parameters file (default: $XGEO_PARAMS or ./params.yaml)")
    @click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                  help="override a key of params.yaml (repeatable), like dvc exp run -S")
    @click.option("--experiment", default=None, help="apply the overrides of experiments.<NAME> in params.yaml")
    @functools.wraps(func)
    def wrapper(*args, params_file=None, overrides=(), experiment=None, **kwargs):
        params = load_params(params_file, overrides, experiment=experiment)
        return func(*args, params=params, **kwargs)

    return wrapper


class _Group(click.Group):
    """Turns XGeoError (and the OSErrors of missing files) into one clear line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (XGeoError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
            if os.environ.get("XGEO_DEBUG"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xgeo")
def main() -> None:
    """XGeo: multi-sensor geospatial foundation-model pretraining (data, pretrain, finetune, tables)."""


@main.command("params")
@params_options
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of YAML")
def params_cmd(params: dict, as_json: bool) -> None:
    """Print the resolved parameters (params.yaml + profile overlay + experiment + --set)."""
    import yaml

    click.echo(json.dumps(params, indent=2) if as_json else yaml.safe_dump(params, sort_keys=False))


# ----------------------------------------------------------------------------------------------------------- data
@main.group(cls=_Group)
def data() -> None:
    """Download, synthesise, convert and inspect datasets."""


def _with_layout(params: dict, dataset: str, layout: str | None, split_files=()) -> dict:
    """--layout NAME and --split-file SPLIT=PATH as data.datasets.<id>.layout / .split_files."""
    from .catalog import get_dataset

    get_dataset(dataset)  # an unknown id: one clear line
    dp = params["data"]["datasets"].setdefault(dataset, {})
    if layout is not None:
        dp["layout"] = layout
    for item in split_files:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise XGeoError(f"--split-file: expected SPLIT=PATH (e.g. train=/data/train_list.txt), found {item!r}")
        dp.setdefault("split_files", {})[split] = str(Path(path).absolute())
    return params


_LAYOUT_HELP = "the on-disk layout (default: detected; data.datasets.<id>.layout)"


@data.command("download")
@click.argument("dataset")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--layout", default=None, help="which release to fetch when there are several (bigearthnet: original = v1, v2 = reBEN)")
@params_options
def data_download(dataset: str, directory: str, layout: str | None, params: dict) -> None:
    """Download DATASET into DIRECTORY (resumable, verified), or verify what the user placed there."""
    from .data.download import download_dataset

    download_dataset(dataset, Path(directory), _with_layout(params, dataset, layout))


@data.command("synth")
@click.argument("dataset")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=None, help="random seed (default: params seed)")
@click.option("--layout", default=None, help="write this layout of the dataset (default: its original release)")
@params_options
def data_synth(dataset: str, directory: str, seed: int | None, layout: str | None, params: dict) -> None:
    """Write a synthetic DATASET in one of its real on-disk layouts into DIRECTORY."""
    from .data.synth import synthesize

    synthesize(dataset, Path(directory), params, seed=params["seed"] if seed is None else seed, layout=layout)


@data.command("raw")
@click.argument("dataset")
@click.argument("directory", type=click.Path(file_okay=False))
@params_options
def data_raw(dataset: str, directory: str, params: dict) -> None:
    """The raw stage: synthesise (data.source=synthetic) or download (data.source=remote) DATASET."""
    source = params["data"]["source"]
    if source == "synthetic":
        from .data.synth import synthesize

        synthesize(dataset, Path(directory), params, seed=params["seed"])
    elif source == "remote":
        from .data.download import download_dataset

        download_dataset(dataset, Path(directory), params)
    else:
        raise XGeoError(f"params data.source: expected 'synthetic' or 'remote', found {source!r}")


@data.command("convert")
@click.argument("dataset")
@click.argument("raw_dir", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--tile-size", type=int, default=None, help="tile size in pixels (default: data.datasets.<id>.tile_size)")
@click.option("--layout", default=None, help=_LAYOUT_HELP)
@click.option("--split-file", "split_files", multiple=True, metavar="SPLIT=PATH",
              help="a split file given by path (repeatable; bigearthnet v2: metadata=PATH)")
@click.option("--part", default=None, metavar="K/N", help="convert part K of N into OUT.parts/K-of-N.zarr (then 'xgeo data merge OUT')")
@click.option("--workers", type=int, default=None, help="decoding processes (default: data.convert.workers)")
@params_options
def data_convert(dataset: str, raw_dir: str, out: str, tile_size: int | None, layout: str | None, split_files,
                 part: str | None, workers: int | None, params: dict) -> None:
    """Read DATASET from its layout in RAW_DIR, tile it and write one Zarr v3 store OUT (or one part of it)."""
    from .data.convert import convert, parse_part

    params = _with_layout(params, dataset, layout, split_files)
    written = convert(dataset, Path(raw_dir), Path(out), params, tile_size=tile_size,
                      part=parse_part(part) if part else None, workers=workers)
    click.echo(f"wrote {written}")


@data.command("merge")
@click.argument("out", type=click.Path())
@params_options
def data_merge(out: str, params: dict) -> None:
    """Assemble the parts OUT.parts/K-of-N.zarr into the store OUT (all parts present, same settings)."""
    from .data.convert import merge

    click.echo(f"wrote {merge(Path(out), params)}")


@data.command("info")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@params_options
def data_info(store: str, as_json: bool, params: dict) -> None:
    """Samples per split and, per sensor, shape, dtype and band statistics of a Zarr STORE."""
    from .data.store import format_info, store_info

    info = store_info(Path(store))
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))


# ------------------------------------------------------------------------------------------------------- pretrain
@main.command("pretrain")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory (last.ckpt, metrics.jsonl)")
@click.option("--steps", type=int, default=None, help="total optimisation steps (default: pretrain.steps)")
@click.option("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: pretrain.checkpoint_every)")
@click.option("--resume", is_flag=True, help="continue from OUT/last.ckpt exactly where it stopped")
@params_options
def pretrain_cmd(out: str, steps: int | None, checkpoint_every: int | None, resume: bool, params: dict) -> None:
    """Cross-sensor MoE SimMIM pretraining from the stores named in params (works under torchrun)."""
    from .pretrain.train import pretrain

    pretrain(params, Path(out), steps=steps, checkpoint_every=checkpoint_every, resume=resume)


@main.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--sensor", default=None, help="sensor whose patch embedding becomes timm's patch_embed (default: first)")
@params_options
def export_cmd(checkpoint: str, out: str, sensor: str | None, params: dict) -> None:
    """Export the pretrained encoder as a state dict that timm's SwinV2 of the same size loads."""
    from .model.checkpoint import export_timm

    info = export_timm(Path(checkpoint), Path(out), sensor=sensor)
    click.echo(
        f"wrote {info['path']}: load with timm.create_model({info['model_name']!r}, pretrained=False, "
        + ", ".join(f"{k}={v!r}" for k, v in info["kwargs"].items())
        + f") then load_state_dict(torch.load(...)); patch_embed from sensor {info['sensor']!r}"
        + ("" if info["exact"] else "; MoE blocks exported as the load-weighted average of their experts (approximate)")
    )


# ------------------------------------------------------------------------------------------------------- finetune
@main.command("finetune")
@click.argument("task")
@click.option("--init", "init", required=True,
              help="random | PATH to an xgeo checkpoint (.ckpt) | PATH to a timm Swin/SwinV2 state dict (.pth/.safetensors)")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--fraction", type=float, default=None, help="fraction of the training split (BigEarthNet: 0.01, 0.1, 1.0)")
@click.option("--steps", type=int, default=None)
@click.option("--seeds", default=None, metavar="K,K,...",
              help="finetuning seeds run in turn in this process, each as with --set seed=K; --out then names "
                   "each run's directory with {seed} (default: the one seed of params)")
@params_options
def finetune_cmd(task: str, init: str, out: str, fraction: float | None, steps: int | None, seeds: str | None,
                 params: dict) -> None:
    """Finetune and evaluate TASK (bigearthnet | vaihingen | sen12ms-cr | spacenet2 | oscd | dsifn | whu); writes metrics.json and predictions.npz."""
    from .finetune.run import finetune_seeds

    finetune_seeds(task, init, out, params, _seed_list(seeds) if seeds else [int(params.get("seed", 0))],
                   fraction=fraction, steps=steps)


def _seed_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]."""
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise XGeoError(f"finetune --seeds {text!r}: expected integers separated by commas (e.g. 0,1,2)") from None


# ----------------------------------------------------------------------------------------------------------- plan
@main.command("plan")
@click.option("--no-stores", is_flag=True, help="read no store: stored sizes from params (before the data exist)")
@click.option("--no-measure", is_flag=True, help="skip the timed steps on CUDA")
@params_options
def plan_cmd(no_stores: bool, no_measure: bool, params: dict) -> None:
    """Print each stage's concrete settings and fail, one line per problem, on a broken invariant."""
    from .plan import make_plan

    plan = make_plan(params, stores=not no_stores, measure=not no_measure)
    click.echo(plan.text())
    if plan.problems:
        for problem in plan.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(2)
    click.echo("plan: ok")


# ------------------------------------------------------------------------------------------------------ inference
def _pairs(items, option: str, split_list: bool = False) -> dict:
    """('KEY=VALUE', ...) -> {KEY: VALUE} (VALUE split on commas when ``split_list``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise XGeoError(f"{option} {item!r}: expected KEY=VALUE")
        out[key] = [v.strip() for v in value.split(",")] if split_list else value
    return out


@main.command("embed")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--sensor", "images", multiple=True, required=True, metavar="SENSOR=IMAGE",
              help="an image of SENSOR (a GeoTIFF path or GDAL URL); repeat for co-located sensors (the first sets the grid)")
@click.option("--bands", multiple=True, metavar="SENSOR=NAME,...", help="the names of the file's bands, in file order")
@click.option("--stage", type=int, default=-1, show_default=True, help="encoder stage 0-3 (-1: the last)")
@click.option("--pool", type=click.Choice(["none", "mean"]), default="none", show_default=True,
              help="none: the feature map; mean: one vector per window")
@click.option("--window", type=int, default=None, help="window size in pixels, a multiple of 32 (default: the model's)")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--stats", default=None, help="normalisation statistics: a Zarr store or JSON {sensor: {mean, std}}")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--overwrite", is_flag=True, help="replace OUT if it exists")
@params_options
def embed_cmd(checkpoint: str, out: str, images, bands, stage: int, pool: str, window: int | None, batch_size: int,
              stats: str | None, device: str, overwrite: bool, params: dict) -> None:
    """Features of whole scenes from a pretraining CHECKPOINT -> OUT (.tif or .zarr feature map, .parquet with --pool mean)."""
    from .inference.align import InputSpec
    from .inference.api import Encoder, load
    from .inference.embed import embed_scene
    from .inference.writers import check_output
    from .sensors import get_sensor

    paths, names = _pairs(images, "--sensor"), _pairs(bands, "--bands", split_list=True)
    for sensor in [*paths, *names]:
        try:
            get_sensor(sensor)
        except KeyError as exc:
            raise XGeoError(str(exc.args[0])) from None
    check_output(out, overwrite)  # before loading the model
    encoder = load(checkpoint, stats=stats, device=device)
    if not isinstance(encoder, Encoder):
        raise XGeoError(f"{checkpoint}: a finetuning run directory; embed takes a pretraining checkpoint (last.ckpt)")
    unknown = [k for k in names if k not in paths]
    if unknown:
        raise XGeoError(f"--bands names {unknown}, which have no --sensor image")
    specs = [InputSpec(s, s, p, get_sensor(s).band_names, names.get(s)) for s, p in paths.items()]
    info = embed_scene(encoder, specs,
                       out, stage=stage, pool=pool, window=window, batch_size=batch_size, overwrite=overwrite)
    click.echo(f"wrote {info['out']}: {info['windows']} windows ({info['skipped']} nodata, skipped), grid "
               f"{info['grid'][0]} x {info['grid'][1]}, {info['channels']} channels")


@main.command("predict")
@click.argument("run_dir", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--sensor", "images", multiple=True, required=True, metavar="KEY=IMAGE",
              help="the image of the task's input KEY (e.g. irrg, dsm; s2_cloudy, s1; pan, mul; s2, s1)")
@click.option("--bands", multiple=True, metavar="KEY=NAME,...", help="the names of the file's bands, in file order")
@click.option("--task", "expect_task", default=None, help="refuse a run directory of another task")
@click.option("--window", type=int, default=None, help="window size in pixels (default: the task's image_size)")
@click.option("--stride", type=int, default=None, help="window stride (default: window / 2)")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--overwrite", is_flag=True, help="replace OUT if it exists")
@params_options
def predict_cmd(run_dir: str, out: str, images, bands, expect_task: str | None, window: int | None,
                stride: int | None, batch_size: int, device: str, overwrite: bool, params: dict) -> None:
    """Apply a finetuned task (RUN_DIR of xgeo finetune) to whole scenes -> OUT.tif (COG)."""
    from .inference.api import Finetuned, load
    from .inference.predict import predict_scene
    from .inference.writers import check_output

    check_output(out, overwrite)  # before loading the model
    model = load(run_dir, device=device)
    if not isinstance(model, Finetuned):
        raise XGeoError(f"{run_dir}: not a finetuning run directory (expected run.json and model.pt from "
                        f"xgeo finetune); embed a pretraining checkpoint with xgeo embed")
    info = predict_scene(model, _pairs(images, "--sensor"), out, window=window, stride=stride,
                         batch_size=batch_size, file_bands=_pairs(bands, "--bands", split_list=True),
                         overwrite=overwrite, expect_task=expect_task)
    click.echo(f"wrote {info['out']} ({info['task']}, window {info['window']}, {info['skipped']} nodata windows skipped)")


# --------------------------------------------------------------------------------------------------------- tables
@main.command("table")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="default: results/<name>.csv")
@params_options
def table_cmd(name: str, out: str | None, params: dict) -> None:
    """Build a paper table (table3, table4, ...) as CSV from the runs recorded in MLflow and results/runs."""
    from .tables import build_table

    build_table(name, params, Path(out) if out else None)


@main.command("ui")
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, default=5000)
@params_options
def ui_cmd(host: str, port: int, params: dict) -> None:
    """Serve the MLflow UI for this project's tracking store."""
    from .tracking import serve_ui

    serve_ui(params, host=host, port=port)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
