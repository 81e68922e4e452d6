"""What every downstream task shares: its settings, its store, its inputs, the network (the registry of tasks is
:mod:`xgeo.finetune.tasks`).

A task module (``bigearthnet``, ``vaihingen``, ``sen12ms_cr``, ``spacenet2``, ``change``, ``whu``) subclasses :class:`Task` and says
which modalities it reads, how a batch becomes the encoder's inputs and the target, its head, its loss and its
evaluation; :mod:`xgeo.finetune.run` drives them all through the one loop of :mod:`xgeo.finetune.loop`.

Settings of task T: ``finetune.optim`` (shared optimiser settings), overridden by ``finetune.T``, overridden by
``finetune.T.paper`` when ``profile`` is ``paper`` (the paper/GFM scale). ``epochs`` / ``warmup_epochs``, when set,
are turned into steps with the size of the training subset.
"""
from __future__ import annotations

import abc
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..catalog import get_dataset
from ..config import deep_merge
from ..errors import DataError, XGeoError
from ..sensors import get_sensor
from .loop import sliding_windows



@dataclass(frozen=True)
class InputSpec:
    """One image the encoder sees: a store modality, the sensor whose embedding reads it, its bands."""

    key: str
    sensor: str
    bands: tuple[str, ...]


def task_settings(params: Mapping, task: str) -> dict:
    """Resolved settings of one task (see the module doc)."""
    ft = params.get("finetune") or {}
    if task not in ft:
        raise XGeoError(f"params finetune.{task}: expected the settings of task {task!r}, found none "
                        f"(tasks in params: {sorted(k for k, v in ft.items() if isinstance(v, Mapping) and 'image_size' in v)})")
    own = copy.deepcopy(ft[task])
    paper = own.pop("paper", None) or {}
    s = deep_merge(ft.get("optim") or {}, own)
    if params.get("profile") == "paper":
        s = deep_merge(s, paper)
    return s


def store_path(params: Mapping, dataset: str) -> Path:
    return Path(params["paths"]["zarr"]) / f"{dataset}.zarr"


def open_task_store(params: Mapping, dataset: str):
    """The dataset's Zarr group; a missing store names its path and the commands that build it."""
    path = store_path(params, dataset)
    raw = Path(params["paths"]["raw"]) / dataset
    if not path.exists():
        raise DataError(f"{path}: expected the Zarr store of dataset {dataset!r}, found nothing. Build it with "
                        f"'xgeo data raw {dataset} {raw}' then 'xgeo data convert {dataset} {raw} {path}' "
                        f"(or 'snakemake --cores 2 {path}')")
    from ..data.store import open_store

    return open_store(path)


def split_indices(root, path: Path, split: str) -> np.ndarray:
    """Store indices of one split; an unknown or empty split is an error naming the store."""
    names = list(root.attrs["split_names"])
    if split not in names:
        raise DataError(f"{path}: expected a split among {names}, found request {split!r}")
    idx = np.flatnonzero(root["split"][:] == names.index(split))
    if idx.size == 0:
        counts = dict(root.attrs.get("splits", {}))
        raise DataError(f"{path}: split {split!r} has no samples (samples per split: {counts}); "
                        f"rebuild the store with data in that split")
    return idx


def to_unit(x: torch.Tensor, sensor: str) -> torch.Tensor:
    """Sensor units -> [0, 1] with the sensor's valid range (S2: x / 10000; WorldView-3 11-bit: x / 2047), clipped."""
    lo, hi = get_sensor(sensor).valid_range
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def random_crop(tensors: Sequence[torch.Tensor], size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """The same random size x size window of each sample in every tensor (..., H, W) of one batch."""
    h, w = tensors[0].shape[-2:]
    if h <= size and w <= size:
        return list(tensors)
    out = [[] for _ in tensors]
    for b in range(tensors[0].shape[0]):
        y = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        for o, t in zip(out, tensors):
            o.append(t[b, ..., y:y + size, x:x + size])
    return [torch.stack(o) for o in out]


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> at least size x size (replicated edge), for tiles smaller than the model's input."""
    ph, pw = max(0, size - x.shape[-2]), max(0, size - x.shape[-1])
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


class FinetuneNet(nn.Module):
    """Backbone (four Swin stages) + task head. forward(xs) -> (output, aux_loss)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        features, aux = self.backbone(xs)
        return self.head(features, tuple(xs[0].shape[-2:])), aux


class Task(abc.ABC):
    """Base of the four tasks. Subclasses set ``name``, ``dataset``, ``labels`` and implement the hooks."""

    name: str = ""
    dataset: str = ""
    labels: tuple[str, ...] = ()
    metric: str = ""  # the headline metric (higher is better unless ``lower_is_better``)
    lower_is_better: bool = False

    def __init__(self, params: Mapping, settings: Mapping) -> None:
        self.params = params
        self.s = dict(settings)
        self.spec = get_dataset(self.dataset)
        self.path = store_path(params, self.dataset)
        self.root = open_task_store(params, self.dataset)
        self.modalities: dict[str, Any] = dict(self.root.attrs["modalities"])
        self.image_size = int(self.s["image_size"])
        self.gen = torch.Generator().manual_seed(int(params.get("seed", 0)))
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per modality (mean, std), set by bind()
        self.device = torch.device("cpu")  # where the network runs (set by xgeo.finetune.run); batches come on the CPU

    def for_seed(self, params: Mapping) -> "Task":
        """This task for a run with ``params`` (the same but for ``seed``: another finetuning seed of the same
        command): a shallow copy sharing the opened store and settings, with its own params and random stream."""
        t = copy.copy(self)
        t.params = params
        t.gen = torch.Generator().manual_seed(int(params.get("seed", 0)))
        return t

    def bind(self, ds) -> None:
        """Take the normalisation statistics of the store from a ZarrDataset of it."""
        self.stats = {k: ds.stats(k) for k in ds.keys}

    # -- hooks -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def input_specs(self) -> list[InputSpec]:
        """Implemented by each task."""

    def read_keys(self) -> list[str]:
        """Store modalities a sample must carry (inputs and targets)."""
        return [i.key for i in self.input_specs()]

    @abc.abstractmethod
    def build_head(self, channels: Sequence[int]) -> nn.Module:
        """Implemented by each task."""

    @abc.abstractmethod
    def step_loss(self, net: FinetuneNet, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(task loss, MoE aux loss) of one training batch."""

    @abc.abstractmethod
    def evaluate(self, net: FinetuneNet, ds, loader, out: Path) -> tuple[dict, dict, list]:
        """Metrics over the whole evaluation set ``ds`` (batched by ``loader``) ->
        (metrics, arrays for predictions.npz, [(matplotlib figure, artifact name)])."""

    # -- shared ------------------------------------------------------------------------------------------------
    def spec_for(self, key: str) -> InputSpec:
        if key not in self.modalities:
            raise DataError(f"{self.path}: expected modality {key!r} for task {self.name} (store has "
                            f"{sorted(self.modalities)}); check finetune.{self.name}.inputs")
        m = self.modalities[key]
        return InputSpec(key, m["sensor"], tuple(m["bands"]))

    def unit(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Normalised modality ``key`` (B, C, H, W) -> the sensor's units -> [0, 1] (see :func:`to_unit`)."""
        mean, std = (torch.from_numpy(a).to(x.device)[:, None, None] for a in self.stats[key])
        raw = x * std + mean
        return to_unit(raw, self.modalities[key]["sensor"])

    @property
    def protocol(self) -> str | None:
        return None

    def train_indices(self, fraction: float | None, out: Path) -> tuple[np.ndarray, dict]:
        """Store indices of the training samples and a description for run.json.

        ``fraction`` f (default ``finetune.<task>.fraction``, else 1): all of the train split when f = 1, else
        ``numpy.random.default_rng(subset_seed).choice(train, round(f n), replace=False)``, sorted; the ids of
        the chosen samples are written to ``out/train_ids.txt``.
        """
        train = split_indices(self.root, self.path, "train")
        seed = int(self.s.get("subset_seed", self.params.get("seed", 0)))
        fraction = float(self.s.get("fraction", 1.0) if fraction is None else fraction)
        if not 0.0 < fraction <= 1.0:
            raise XGeoError(f"finetune {self.name}: expected a fraction in (0, 1], found {fraction}")
        n = max(1, int(round(fraction * len(train))))
        chosen = np.sort(np.random.default_rng(seed).choice(train, n, replace=False)) if n < len(train) else train
        return chosen, self._save_ids(chosen, out, {"subset": f"fraction {fraction}", "fraction": fraction,
                                                    "subset_seed": seed})

    def _save_ids(self, chosen: np.ndarray, out: Path, info: dict) -> dict:
        from ..io import write_text

        ids = np.asarray(self.root["ids"][:])[chosen]
        write_text(out / "train_ids.txt", "".join(f"{i}\n" for i in ids))
        return dict(info, train_samples=int(len(chosen)))

    def eval_split(self) -> str:
        return str(self.s.get("eval_split", "test"))

    def make_dataset(self, split: str | None, indices=None):
        from ..data.dataset import ZarrDataset

        return ZarrDataset(self.path, modalities=self.read_keys(), split=split, indices=indices,
                           labels=self.labels, valid=self.nodata())

    def during_training(self, ds, loader, n_train: int, steps: int):
        """An on_step(step, net) callback evaluating on ``ds`` during training (e.g. BigEarthNet's best-epoch
        literature protocol), or None."""
        return None

    def nodata(self) -> dict[str, float | None]:
        """Modalities whose per-pixel validity a sample carries (``valid/<key>``) -> their nodata value (None: the
        one convert recorded in the store); see :class:`xgeo.data.dataset.ZarrDataset`."""
        return {}

    def steps_for(self, n_train: int) -> tuple[int, int]:
        """(total steps, warm-up steps) from steps/epochs and warmup_steps/warmup_epochs."""
        per_epoch = max(1, math.ceil(n_train / int(self.s["batch_size"])))
        steps = int(self.s["epochs"]) * per_epoch if self.s.get("epochs") else int(self.s["steps"])
        warm = (int(self.s["warmup_epochs"]) * per_epoch if self.s.get("warmup_epochs")
                else int(self.s.get("warmup_steps", 0)))
        return steps, min(warm, steps)

    def sample_tiles(self, n: int) -> np.ndarray:
        """Positions (in the evaluation set) of the fixed sample of tiles kept in predictions.npz: evenly spaced."""
        k = int(self.params["finetune"].get("prediction_tiles", 64))
        if n <= k:
            return np.arange(n)
        return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


class ImageTask(Task):
    """Image-to-image tasks (cloud removal, pan-sharpening): SimMIM decoder, L1 loss on [0, 1], sliding-window
    evaluation over whole tiles, MAE / SAM / SSIM / PSNR (predictions clipped to [0, 1])."""

    target_sensor: str = ""
    metric = "SAM"
    lower_is_better = True

    @abc.abstractmethod
    def prepare(self, batch: dict) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """-> (encoder inputs [(B, C_i, H, W)], target on [0, 1] (B, C_t, H, W), base on [0, 1] or None).

        The network predicts ``target - base`` when a base is given (pan-sharpening: the upsampled MUL)."""

    def valid_mask(self, batch: dict) -> torch.Tensor | None:
        """(B, H, W) bool on the target's grid: the pixels the metrics count (nodata left out); None: every pixel."""
        return None

    def build_head(self, channels: Sequence[int]) -> nn.Module:
        from .heads import SimMIMDecoder

        return SimMIMDecoder(channels, get_sensor(self.target_sensor).num_bands if self.out_bands is None
                             else len(self.out_bands))

    out_bands: tuple[str, ...] | None = None

    def step_loss(self, net: FinetuneNet, batch: dict):
        xs, target, base = self.prepare(batch)
        parts = [*xs, target] + ([base] if base is not None else [])
        parts = random_crop([pad_to(p, self.image_size) for p in parts], self.image_size, self.gen)
        xs, target = parts[: len(xs)], parts[len(xs)]
        pred, aux = net(xs)
        if base is not None:
            pred = pred + parts[-1]
        return F.l1_loss(pred, target), aux

    def predict(self, net: FinetuneNet, xs: list[torch.Tensor], base: torch.Tensor | None,
                batch: int = 8) -> torch.Tensor:
        """Whole tiles (B, C_i, H, W) -> predictions on [0, 1] (B, C_t, H, W), by sliding windows; the windows of
        all B tiles go through the network ``batch`` at a time (``finetune.eval_batch_size`` in evaluate)."""
        sizes = [x.shape[1] for x in xs]
        stride = int(self.s.get("eval_stride") or self.image_size // 2)
        fn = lambda t: net(list(torch.split(t, sizes, 1)))[0]  # noqa: E731
        preds = sliding_windows(fn, torch.cat(xs, 1), self.image_size, stride, batch=batch, device=self.device)
        if base is not None:
            preds = preds + base
        return preds.clamp(0.0, 1.0)

    @torch.no_grad()
    def evaluate(self, net: FinetuneNet, ds, loader, out: Path) -> tuple[dict, dict, list]:
        from ..metrics import ImageMeter

        net.eval()
        meter = ImageMeter(1.0)
        keep = set(self.sample_tiles(len(ds)).tolist())
        saved: dict[str, list] = {"outputs": [], "targets": [], "inputs": [], "index": [], "valid": []}
        pos = 0
        for batch in loader:
            xs, target, base = self.prepare(batch)
            pred = self.predict(net, xs, base, batch=loader.batch_size or 8)
            valid = self.valid_mask(batch)
            meter.update(pred, target, valid)
            for b in range(pred.shape[0]):
                if pos + b in keep:
                    saved["outputs"].append(pred[b].float().numpy())
                    saved["targets"].append(target[b].float().numpy())
                    saved["inputs"].append(self.display_input(batch, b))
                    saved["index"].append(int(batch["index"][b]))
                    saved["valid"].append(np.ones(pred.shape[-2:], bool) if valid is None else valid[b].cpu().numpy())
            pos += pred.shape[0]
        m = meter.compute()
        arrays = {k: np.stack(v) for k, v in saved.items()}
        arrays.update(data_range=np.float64(1.0), complete=np.bool_(len(keep) == len(ds)))
        if len(keep) == len(ds):
            # the whole set is saved: report the metrics of exactly the saved (float32) arrays
            from ..metrics import image_scores

            m = image_scores(arrays["outputs"], arrays["targets"], valid=arrays["valid"])
        bands = list(self.out_bands or get_sensor(self.target_sensor).band_names)
        result = {"MAE": m["MAE"], "SAM": m["SAM"], "SSIM": m["SSIM"], "PSNR": m["PSNR"],
                  "MAE_per_band": dict(zip(bands, m["MAE_per_band"])),
                  "PSNR_per_band": dict(zip(bands, m["PSNR_per_band"])),
                  "PSNR_undefined_images": m["PSNR_undefined_images"],
                  "SSIM_undefined_images": m["SSIM_undefined_images"], "metrics_note": m["note"],
                  "eval_split": self.eval_split(), "eval_samples": len(ds), "scale": self.scale_note}
        return result, arrays, self.figures(arrays)

    scale_note = ""

    @abc.abstractmethod
    def display_input(self, batch: dict, b: int) -> np.ndarray:
        """An input image (C, H, W) kept beside the prediction for the qualitative figure."""

    def figures(self, arrays: dict) -> list:
        return []
