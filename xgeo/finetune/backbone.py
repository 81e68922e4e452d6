"""The encoder a downstream task finetunes, and where its weights come from (``--init``).

``--init``:
- ``random``: ``xgeo.model.build_model(params)``, untrained.
- PATH of an xgeo checkpoint (``last.ckpt``): ``load_pretrained``; per-sensor patch embeddings are matched by
  sensor name; a dataset carrying a band subset (BigEarthNet S2 without B10) uses its sensor's embedding with those
  bands; an embedding whose channel count differs from the sensor registry's is refused (CheckpointError). A sensor
  the checkpoint lacks (Vaihingen's IRRG, WorldView-3 PAN and MUL) gets an embedding adapted by band wavelength
  from the checkpoint's optical embeddings (``xgeo.model.embed``: each new band takes the kernel of the pretrained
  band nearest in central wavelength; a band without a wavelength, e.g. DSM height, needs its sensor in the
  checkpoint).
- PATH of a timm Swin/SwinV2 state dict (.pth/.pt/.bin/.safetensors, e.g. ImageNet-22k weights): loaded into the
  encoder with timm's ``checkpoint_filter_fn`` (stage layout, relative-position buffers; MoE blocks take the dense
  MLP in every expert); its 3-channel RGB patch embedding is adapted to every input sensor (GFM convention:
  RGB kernels copied into the matching bands, see ``xgeo.model.embed``).
- a NAME (``in22k``, ``imagenet``): the file of ``finetune.weights.NAME``; nothing is downloaded, ever.

Stacked inputs (Figure 6, method 2): one patch embedding over the concatenated channels, built from the
per-sensor embeddings by ``xgeo.model.embed.stacked_embedding`` (kernels of each sensor side by side; see there
for the bias and scaling). Method 1: the same encoder run once per input with its own sensor's embedding, the
four stages' features concatenated along channels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, XGeoError
from ..sensors import get_sensor
from .base import InputSpec

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def _read_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: expected a torch checkpoint or state dict, could not read it: {exc}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (xgeo checkpoint or state dict), found {type(obj).__name__}")
    return obj


def resolve_init(init: str, params: Mapping) -> tuple[str, Path | None]:
    """-> (kind, path): kind is random | xgeo | timm."""
    if init == "random":
        return "random", None
    path = Path(init)
    if path.exists():
        if path.suffix == ".ckpt":  # xgeo pretrain writes last.ckpt; not read twice (paper-size files are large)
            return "xgeo", path
        obj = _read_state(path)
        return ("xgeo" if "model_config" in obj else "timm"), path
    if "/" in init or path.suffix in WEIGHT_SUFFIXES:
        raise XGeoError(f"--init {init}: no such file (expected an xgeo checkpoint or a timm state dict)")
    weights = (params.get("finetune") or {}).get("weights") or {}
    target = weights.get(init)
    hint = (f"put a timm Swin/SwinV2 state dict (e.g. checkpoints/timm/{init}.pth) on disk and set "
            f"finetune.weights.{init}: PATH in params.yaml (or --set finetune.weights.{init}=PATH); "
            f"nothing is downloaded from any hub")
    if target is None:
        raise XGeoError(f"--init {init}: no weights are configured under finetune.weights.{init} "
                        f"(known names: {sorted(weights)}); {hint}")
    if not Path(target).exists():
        raise XGeoError(f"--init {init}: finetune.weights.{init} is {target}, no such file; {hint}")
    return "timm", Path(target)


class Backbone(nn.Module):
    """forward(xs: [(B, C_i, H, W)] in ``inputs`` order) -> ([4 maps (B, C_s, H/4/2^s, W/4/2^s)], aux_loss)."""

    def __init__(self, model: nn.Module, inputs: Sequence[InputSpec], method: int = 2, image_size: int = 64) -> None:
        super().__init__()
        from ..model import embed

        self.model = model
        self.inputs = list(inputs)
        self.method = method
        self.stacked = None
        if method == 2 and len(self.inputs) > 1:
            self.stacked = "+".join(i.key for i in self.inputs)
            self.model.patch_embeds[self.stacked] = embed.stacked_embedding(
                model, [(i.sensor, list(i.bands)) for i in self.inputs])
        # the pretraining decoders and other sensors' embeddings take no part in finetuning
        model.decoders = nn.ModuleDict()
        used = {self.stacked} if self.stacked else {i.sensor for i in self.inputs}
        for name in list(model.patch_embeds.keys()):
            if name not in used:
                del model.patch_embeds[name]
        with torch.no_grad():
            probe = [torch.zeros(1, len(i.bands), image_size, image_size) for i in self.inputs]
            self.channels = [f.shape[1] for f in self.forward(probe)[0]]

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.stacked:
            return self.model.forward_features(torch.cat(xs, 1), self.stacked)
        feats, aux = None, 0.0
        for spec, x in zip(self.inputs, xs):
            f, a = self.model.forward_features(x, spec.sensor, bands=list(spec.bands))
            feats = f if feats is None else [torch.cat([p, q], 1) for p, q in zip(feats, f)]
            aux = aux + a
        return feats, aux


def _check_embeddings(model: nn.Module, path: Path, specs: Sequence[InputSpec], pretrained: bool,
                      new_sensors: str = "error") -> list[str]:
    """Sensors of ``specs`` missing from the model (to adapt); refuses an embedding of another width and, for a
    pretrained model, a missing sensor with bands that have no wavelength to match (SAR, DSM), unless
    ``new_sensors`` is ``adapt`` (``finetune.new_sensors``: those bands then start from the mean kernel of the
    checkpoint's bands, as :func:`xgeo.model.embed.adapt_embedding` does, and are learnt in finetuning)."""
    if new_sensors not in ("error", "adapt"):
        raise XGeoError(f"params finetune.new_sensors is {new_sensors!r}; expected error or adapt")
    missing = []
    for spec in specs:
        sensor = get_sensor(spec.sensor)
        if spec.sensor not in model.patch_embeds:
            unmatched = [b.name for b in sensor.bands if b.wavelength_nm is None]
            if pretrained and unmatched and new_sensors == "error":
                raise CheckpointError(
                    f"{path}: the checkpoint has embeddings for {sorted(model.patch_embeds)}, not for "
                    f"{spec.sensor!r}, whose bands {unmatched} have no wavelength to adapt from; finetune from a "
                    f"checkpoint pretrained with {spec.sensor}, leave {spec.key!r} out of the task's inputs, or "
                    f"set finetune.new_sensors: adapt to start it from the mean of the checkpoint's kernels")
            missing.append(spec.sensor)
            continue
        conv = next(m for m in model.patch_embeds[spec.sensor].modules() if isinstance(m, nn.Conv2d))
        if conv.in_channels != sensor.num_bands:
            raise CheckpointError(f"{path}: the {spec.sensor} patch embedding takes {conv.in_channels} channels; "
                                  f"expected the {sensor.num_bands} bands of sensor {spec.sensor} "
                                  f"({list(sensor.band_names)}): a checkpoint of another sensor configuration")
        unknown = [b for b in spec.bands if sensor.aliases.get(b, b) not in sensor.band_names]
        if unknown:
            raise CheckpointError(f"{path}: bands {unknown} are not bands of sensor {spec.sensor}")
    return missing


def build_backbone(init: str, params: Mapping, specs: Sequence[InputSpec], image_size: int,
                   settings: Mapping) -> tuple[Backbone, dict]:
    """The finetuning backbone for ``specs`` from ``init`` -> (backbone, {"init", "kind", "adapted"})."""
    from ..model import build_model, embed

    kind, path = resolve_init(init, params)
    adapted: list[str] = []
    if kind == "xgeo":
        from ..model.checkpoint import load_pretrained

        try:
            model, _meta = load_pretrained(path)
        except RuntimeError as exc:  # load_state_dict's size mismatch (e.g. an embedding of other channel count)
            raise CheckpointError(f"{path}: its weights do not fit the model of its own model_config: "
                                  f"{str(exc).splitlines()[-1].strip()}") from None
    else:
        model = build_model(params)
    if kind == "timm":
        adapted = embed.load_timm_encoder(model, _read_state(path), [s.sensor for s in specs], source=path)
    new_sensors = str((params.get("finetune") or {}).get("new_sensors", "error"))
    for sensor in _check_embeddings(model, path or Path("random init"), specs, pretrained=kind == "xgeo",
                                    new_sensors=new_sensors):
        model.patch_embeds[sensor] = embed.adapt_embedding(model, sensor)
        adapted.append(sensor)
    model.set_input_size(image_size)
    # a short label for run names: random, the weights' name, checkpoints/<experiment>/last.ckpt -> experiment
    if kind == "random" or init in ((params.get("finetune") or {}).get("weights") or {}):
        name = init
    else:
        name = (path.parent.name or path.stem) if kind == "xgeo" else path.stem
    backbone = Backbone(model, specs, int(settings.get("method", 2)), image_size)
    return backbone, {"init": name, "kind": kind, "adapted": adapted}
