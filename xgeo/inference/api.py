"""``xgeo.load(path)``: a pretrained or finetuned model ready for inference, on the GPU when there is one.

- a pretraining checkpoint (``last.ckpt``) or a pretraining run directory holding one -> :class:`Encoder`;
- a finetuning run directory (``xgeo finetune ... --out DIR``, holding ``run.json`` and ``model.pt``) ->
  :class:`Finetuned`.

Both have ``.embed(x, sensor=...)``: ``x`` a numpy array or tensor (C, H, W) or (B, C, H, W) **in the sensor's
native units** (what the GeoTIFF holds: S2 reflectance x 10000, S1 dB, DSM metres, 8-bit RGB), H = W a multiple
of 32. The sensor's value convention and the per-band normalisation the model was trained with are applied (see
:mod:`xgeo.inference.normalize` for where the statistics come from; pass ``stats=`` to :func:`load` when a
pretraining checkpoint's stores are not on disk, or ``normalize=False`` with inputs already normalised).

Mixture-of-Experts blocks run without dropping tokens at inference (each layer's capacity raised to hold every
token), so a window's output does not depend on the other windows of its batch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, DataError, XGeoError
from ..sensors import get_sensor
from .normalize import Stats, check_stats, normalize, pretraining_stats, stats_from_path

MODEL_FILE = "model.pt"  # the finetuned network in a finetuning run directory (written by xgeo finetune)
CKPT_FILE = "last.ckpt"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def no_token_drop(model: torch.nn.Module) -> None:
    """Raise every native MoE layer's capacity so that no token is dropped (capacity >= tokens)."""
    from ..model.moe import MoE

    for m in model.modules():
        if isinstance(m, MoE):
            m.capacity_factor = float(m.num_experts) / m.top_k


def _as_batch(x, what: str) -> tuple[np.ndarray, bool]:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise XGeoError(f"{what}: expected an array (C, H, W) or (B, C, H, W), found shape {x.shape}")
    return x, False


def _check_square(x: np.ndarray, what: str) -> int:
    h, w = x.shape[-2:]
    if h != w or h % 32:
        raise XGeoError(f"{what}: expected square inputs whose side is a multiple of 32 (the encoder stride), found "
                        f"{h} x {w}; embed a scene of any size with xgeo.inference.embed_scene / `xgeo embed`")
    return int(h)


def _pool(maps: torch.Tensor, pool: str | None) -> torch.Tensor:
    if pool in (None, "none"):
        return maps
    if pool == "mean":
        return maps.mean(dim=(-2, -1))
    raise XGeoError(f"pool {pool!r}: expected none or mean")


class Encoder:
    """A pretrained XGeo: ``embed``, ``features`` and the per-sensor normalisation."""

    def __init__(self, model, meta: Mapping, stats: Stats, source: Path, device: torch.device) -> None:
        self.model = model.to(device).eval()
        no_token_drop(self.model)
        self.meta, self.source, self.device = dict(meta), source, device
        self._stats = dict(stats)

    @property
    def sensors(self) -> list[str]:
        return list(self.model.patch_embeds)

    @property
    def feature_strides(self) -> list[int]:
        return [self.model.config["patch_size"] * 2 ** s for s in range(len(self.model.config["depths"]))]

    @property
    def feature_channels(self) -> list[int]:
        return [int(self.model.config["embed_dim"] * 2 ** s) for s in range(len(self.model.config["depths"]))]

    def check_sensor(self, sensor: str) -> None:
        if sensor not in self.model.patch_embeds:
            raise CheckpointError(f"{self.source}: the model has no patch embedding for sensor {sensor!r}; it has "
                                  f"{self.sensors} (model.sensors of its pretraining)")

    def stats(self, sensor: str) -> tuple[np.ndarray, np.ndarray]:
        self.check_sensor(sensor)
        if sensor not in self._stats:
            raise DataError(
                f"{self.source}: no normalisation statistics for sensor {sensor!r}: the checkpoint does not store "
                f"them and the pretraining stores its params name were not found. Pass them: xgeo.load(path, "
                f"stats={{'{sensor}': (mean, std)}}) or --stats STORE.zarr / --stats STATS.json")
        return check_stats(self._stats[sensor], get_sensor(sensor).num_bands, f"sensor {sensor}")

    def normalize(self, raw: np.ndarray, sensor: str, bands: Sequence[str] | None = None,
                  valid: np.ndarray | None = None) -> np.ndarray:
        """(B, C, H, W) raw values (value convention already applied) -> normalised float32."""
        mean, std = self.stats(sensor)
        if bands is not None:
            idx = get_sensor(sensor).band_indices(bands)
            mean, std = mean[idx], std[idx]
        return np.stack([normalize(x, None if valid is None else valid[i], mean, std) for i, x in enumerate(raw)])

    @torch.no_grad()
    def features(self, x: torch.Tensor | np.ndarray, sensor: str, bands: Sequence[str] | None = None
                 ) -> list[torch.Tensor]:
        """Normalised (B, C, s, s) -> the encoder's four maps [(B, C_k, s / 4 / 2^k, ...)] (on ``self.device``)."""
        self.check_sensor(sensor)
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        self.model.set_input_size(_check_square(x, f"{sensor} input"))
        feats, _aux = self.model.forward_features(x, sensor, bands=None if bands is None else list(bands))
        return feats

    def embed(self, x, sensor: str, *, bands: Sequence[str] | None = None, stage: int = -1,
              pool: str | None = None, normalize: bool = True) -> torch.Tensor:
        """Features of stage ``stage`` (default the last) -> (B, C_s, H / stride, W / stride), or (B, C_s) with
        ``pool="mean"``; without the batch axis when ``x`` had none. ``x`` in the sensor's units (module doc)."""
        from ..data.stats import apply_value_convention

        self.check_sensor(sensor)
        batch, single = _as_batch(x, f"embed({sensor})")
        if normalize:
            conv = [apply_value_convention(b, get_sensor(sensor)) for b in batch]
            valid = None if all(v is None for _, v in conv) else np.stack(
                [np.ones(b.shape[1:], bool) if v is None else v.all(0) for b, (_, v) in zip(batch, conv)])
            batch = self.normalize(np.stack([c for c, _ in conv]), sensor, bands, valid)
        out = _pool(self.features(batch, sensor, bands)[stage], pool)
        return out[0] if single else out


def _finetuned_net(state: Mapping, source: Path):
    """Rebuild the finetuned network (backbone + head) of a ``model.pt`` and load its weights."""
    from ..finetune import heads
    from ..finetune.backbone import Backbone
    from ..finetune.tasks import FinetuneNet, InputSpec as TaskInput
    from ..model.embed import SensorEmbedding
    from ..model.xgeo import XGeo

    config = dict(state["model_config"])
    model = XGeo(config)
    specs = [TaskInput(i["key"], i["sensor"], tuple(i["bands"])) for i in state["inputs"]]
    for spec in specs:  # sensors the task adapted into the model; their weights are in the state dict
        if spec.sensor not in model.patch_embeds:
            model.patch_embeds[spec.sensor] = SensorEmbedding(get_sensor(spec.sensor).num_bands,
                                                              config["embed_dim"], sensor=spec.sensor)
    size = int(state["image_size"])
    model.set_input_size(size)
    backbone = Backbone(model, specs, int(state.get("method") or 2), size)
    sd = state["net"]
    kind = state["head"]
    if kind == "ClassificationHead":
        head = heads.ClassificationHead(backbone.channels, sd["head.fc.weight"].shape[0])
    elif kind == "UPerHead":
        w = sd["head.classifier.weight"]
        head = heads.UPerHead(backbone.channels, w.shape[0], width=w.shape[1])
    elif kind == "SimMIMDecoder":
        head = heads.SimMIMDecoder(backbone.channels, sd["head.decoder.0.weight"].shape[0] // 32 ** 2)
    else:
        raise CheckpointError(f"{source}: unknown head {kind!r} (expected ClassificationHead, UPerHead or "
                              f"SimMIMDecoder)")
    net = FinetuneNet(backbone, head)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: the weights do not fit the network it describes: "
                              f"{str(exc).splitlines()[0]}") from None
    return net.eval()


class Finetuned:
    """A finetuned task network (``xgeo finetune``'s run directory).

    ``inputs``: [{key, sensor, bands}] the task reads, in order; ``output``: classes (segmentation) | multilabel
    (scene scores per window) | image (cloud removal, pan-sharpening: the target sensor's units).
    """

    def __init__(self, state: Mapping, run: Mapping, source: Path, device: torch.device) -> None:
        self.source, self.device, self.run = source, device, dict(run)
        self.task = str(state["task"])
        self.inputs = [dict(i) for i in state["inputs"]]
        self.image_size = int(state["image_size"])
        self.info = {k: state.get(k) for k in ("class_names", "colours", "ignore_index", "out_bands",
                                               "target_sensor", "protocol", "residual_key")}
        self.output = {"ClassificationHead": "multilabel", "UPerHead": "classes"}.get(state["head"], "image")
        self.net = _finetuned_net(state, source).to(device)
        no_token_drop(self.net)
        self._stats = {k: (np.asarray(v[0], np.float32), np.asarray(v[1], np.float32))
                       for k, v in (state.get("stats") or {}).items()}

    @property
    def keys(self) -> list[str]:
        return [i["key"] for i in self.inputs]

    def stats(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        spec = next((i for i in self.inputs if i["key"] == key), None)
        if spec is None or key not in self._stats:
            raise CheckpointError(f"{self.source}: no normalisation statistics for input {key!r} (inputs {self.keys})")
        return check_stats(self._stats[key], len(spec["bands"]), f"input {key}")

    def normalize(self, raw: np.ndarray, key: str, valid: np.ndarray | None = None) -> np.ndarray:
        mean, std = self.stats(key)
        return np.stack([normalize(x, None if valid is None else valid[i], mean, std) for i, x in enumerate(raw)])

    @torch.no_grad()
    def forward(self, xs: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Normalised inputs in ``keys`` order, each (B, C_i, s, s) -> the head's output (logits / image in [0, 1]
        before the residual's base / multilabel logits)."""
        ts = [torch.as_tensor(x, dtype=torch.float32).to(self.device) for x in xs]
        self.net.backbone.model.set_input_size(_check_square(ts[0], f"{self.task} input"))
        out, _aux = self.net(ts)
        return out

    def embed(self, x, sensor: str | None = None, *, stage: int = -1, pool: str | None = None,
              normalize: bool = True) -> torch.Tensor:
        """The finetuned backbone's features. ``x``: {input key: array} (all inputs), or one array for a task of
        one input (``sensor`` its key). Arrays in the sensors' units (see the module doc)."""
        from ..data.stats import apply_value_convention

        if not isinstance(x, Mapping):
            if len(self.inputs) != 1 and sensor is None:
                raise XGeoError(f"{self.source}: task {self.task} reads {self.keys}; pass a dict of arrays")
            x = {sensor or self.keys[0]: x}
        missing = [k for k in self.keys if k not in x]
        if missing:
            raise XGeoError(f"{self.source}: task {self.task} reads inputs {self.keys}; missing {missing}")
        xs, single = [], False
        for spec in self.inputs:
            batch, single = _as_batch(x[spec["key"]], f"embed({spec['key']})")
            if normalize:
                conv = [apply_value_convention(b, get_sensor(spec["sensor"])) for b in batch]
                valid = np.stack([np.ones(b.shape[1:], bool) if v is None else v.all(0) for b, (_, v) in
                                  zip(batch, conv)])
                batch = self.normalize(np.stack([c for c, _ in conv]), spec["key"], valid)
            xs.append(torch.as_tensor(batch, dtype=torch.float32).to(self.device))
        self.net.backbone.model.set_input_size(_check_square(xs[0], f"{self.task} input"))
        with torch.no_grad():
            feats, _aux = self.net.backbone(xs)
        out = _pool(feats[stage], pool)
        return out[0] if single else out


def _search_roots(path: Path) -> list[Path]:
    """Where a checkpoint's relative ``paths.zarr`` may be: the working directory, then the checkpoint's parents."""
    roots = [Path.cwd()] + list(path.resolve().parents)
    return list(dict.fromkeys(roots))


def load(path: str | os.PathLike, *, stats: Mapping | str | os.PathLike | None = None,
         device: str | torch.device | None = None) -> Encoder | Finetuned:
    """The model of a pretraining checkpoint / run directory (:class:`Encoder`) or of a finetuning run directory
    (:class:`Finetuned`), in eval mode on ``device`` (default: CUDA when available).

    ``stats``: per-sensor normalisation statistics for a pretraining checkpoint, ``{sensor: (mean, std)}`` or the
    path of a Zarr store / JSON file (they override those found from the checkpoint's params).
    """
    path = Path(path)
    dev = pick_device(device)
    if path.is_dir():
        if (path / MODEL_FILE).is_file() or (path / "run.json").is_file():
            return _load_finetuned(path, dev)
        if (path / CKPT_FILE).is_file():
            path = path / CKPT_FILE
        else:
            raise CheckpointError(f"{path}: expected a finetuning run directory (run.json, {MODEL_FILE}) or a "
                                  f"pretraining run directory ({CKPT_FILE}); found neither")
    from ..model.checkpoint import load_pretrained

    model, meta = load_pretrained(path)
    found = pretraining_stats(meta.get("params"), _search_roots(path))
    if stats is not None:
        given = stats_from_path(stats) if isinstance(stats, (str, os.PathLike)) else dict(stats)
        found.update(given)
    return Encoder(model, meta, found, path, dev)


def _load_finetuned(path: Path, device: torch.device) -> Finetuned:
    import json

    run = {}
    if (path / "run.json").is_file():
        try:
            run = json.loads((path / "run.json").read_text())
        except ValueError as exc:
            raise CheckpointError(f"{path / 'run.json'}: not valid JSON ({exc})") from None
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise CheckpointError(f"{path}: a finetuning run ({run.get('task', 'unknown task')}) without {MODEL_FILE}: "
                              f"it was written before xgeo finetune saved the finetuned network; re-run "
                              f"`xgeo finetune {run.get('task', 'TASK')} --init ... --out {path}`")
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{model_file}: not a readable model file ({type(exc).__name__}: {exc}); truncated? "
                              f"Re-run the finetuning that writes it") from None
    if not isinstance(state, dict) or state.get("format") != "xgeo-finetuned":
        raise CheckpointError(f"{model_file}: expected an xgeo finetuned model (format xgeo-finetuned)")
    return Finetuned(state, run, path, device)
