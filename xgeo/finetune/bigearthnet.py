"""BigEarthNet-MM, 19-class multi-label scene classification (paper, section 4.1, Tables 3, 13, 14, Figure 3).

Inputs (``finetune.bigearthnet.inputs``, store modality keys): ``[s2, s1]`` (default: S2's 12 bands then S1's
VV, VH, 14 channels), ``[s2]`` or ``[s1]`` (Figure 3). ``method`` 2 (default, Figure 6 lower panel) stacks the
inputs as channels before one patch embedding built from the per-sensor ones; ``method`` 1 (Table 13) runs every
input through the same encoder with its own sensor's embedding and concatenates the four stages' features.
Tiles are resized (bilinear) to ``image_size`` when the store's tile size differs. No augmentation.

Loss: MultiLabelSoftMarginLoss (GFM). Metric: mAP over the whole evaluation split (``val``, as GFM and SeCo),
micro and macro (see :mod:`xgeo.metrics`), and AP per class, of the final model. ``protocol: literature`` adds the
cited papers' number, ``mAP_micro_per_batch``: the per-batch micro AP averaged, evaluated every epoch (or every
``literature_eval_every`` steps) and at the end, the best kept (with its step, ``mAP_micro_per_batch_best_step``).

Training subsets, drawn from the train split with ``numpy.random.default_rng(finetune.bigearthnet.subset_seed)``
and saved as ``train_ids.txt`` in the run directory:
- ``fraction`` f < 1: ``rng.choice(train, round(f * n), replace=False)`` (GFM's draw samples WITH replacement);
- ``per_class`` n ("n examples per class", Table 14): shuffle the train split with the rng and walk it once,
  keeping a sample when it is a positive of some class that has fewer than n positives kept so far; every class
  ends with min(n, its positives in the split) or more (a kept sample counts for all its labels), so the subset has
  at most 19 n samples and "about n per class" on average.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import multilabel_map, per_batch_micro_map
from ..errors import DataError, XGeoError
from .heads import ClassificationHead
from .base import FinetuneNet, InputSpec, Task, split_indices

LABEL = "multilabel"


def per_class_subset(targets: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions (sorted) of the greedy seeded subset with at least min(n, available) positives per class.

    targets: (N, K) {0, 1}.
    """
    need = np.minimum(n, targets.sum(0))
    have = np.zeros(targets.shape[1], dtype=np.int64)
    keep = []
    for i in rng.permutation(len(targets)):
        if (have >= need).all():
            break
        if (targets[i].astype(bool) & (have < need)).any():
            keep.append(i)
            have += targets[i].astype(np.int64)
    return np.sort(np.asarray(keep, dtype=np.int64))


class BigEarthNet(Task):
    name = "bigearthnet"
    dataset = "bigearthnet"
    labels = (LABEL,)
    metric = "mAP_micro"

    def __init__(self, params, settings) -> None:
        super().__init__(params, settings)
        if "labels" not in self.root or LABEL not in self.root["labels"]:
            raise DataError(f"{self.path}: expected labels/{LABEL} (N, 19), found none")
        arr = self.root[f"labels/{LABEL}"]
        self.class_names = list(arr.attrs.get("class_names") or [f"class{i}" for i in range(arr.shape[1])])
        self.method = int(self.s.get("method", 2))
        if self.method not in (1, 2):
            raise XGeoError(f"params finetune.bigearthnet.method: expected 1 (separate shared encoders) or 2 "
                            f"(stacked channels), found {self.method}")

    def input_specs(self) -> list[InputSpec]:
        return [self.spec_for(k) for k in self.s["inputs"]]

    def _targets(self, idx: np.ndarray) -> np.ndarray:
        y = self.root[f"labels/{LABEL}"][:][idx]
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise DataError(f"{self.path}/labels/{LABEL}: expected 0/1 labels for the {len(self.class_names)} "
                            f"classes, found values {np.unique(y[bad])[:5].tolist()}")
        return y

    def train_indices(self, fraction: float | None, out: Path) -> tuple[np.ndarray, dict]:
        per_class = self.s.get("per_class")
        if not per_class:
            return super().train_indices(fraction, out)
        train = split_indices(self.root, self.path, "train")
        seed = int(self.s.get("subset_seed", self.params.get("seed", 0)))
        chosen = train[per_class_subset(self._targets(train), int(per_class), np.random.default_rng(seed))]
        return chosen, self._save_ids(chosen, out, {"subset": f"{int(per_class)} per class",
                                                    "per_class": int(per_class), "fraction": None,
                                                    "subset_seed": seed})

    def eval_split(self) -> str:
        return str(self.s.get("eval_split", "val"))

    def build_head(self, channels: Sequence[int]) -> nn.Module:
        return ClassificationHead(channels, len(self.class_names))

    @property
    def protocol(self) -> str:
        """whole_set (micro mAP over the whole evaluation set) | literature (also the per-batch average)."""
        protocol = str(self.s.get("protocol") or "whole_set")
        if protocol not in ("whole_set", "literature"):
            raise XGeoError(f"params finetune.bigearthnet.protocol: expected whole_set or literature, found "
                            f"{protocol!r}")
        return protocol

    literature_history: list = []   # (step, per-batch micro mAP) of the evaluations during training
    literature_final_step: int = 0

    def during_training(self, ds, loader, n_train: int, steps: int):
        """With ``protocol: literature``: on_step(step, net) evaluating the per-batch micro mAP on ``ds`` every
        ``literature_eval_every`` steps (null: every epoch, ceil(n_train / batch_size) steps), as GFM and SeCo
        evaluate each epoch and keep the best; :meth:`evaluate` adds the final model and reports the maximum.
        The network's mode and the random streams are restored, so training runs as without it. None otherwise."""
        self.literature_history, self.literature_final_step = [], int(steps)
        if self.protocol != "literature":
            return None
        every = self.s.get("literature_eval_every")
        every = int(every) if every else max(1, -(-int(n_train) // int(self.s["batch_size"])))
        if every < 1:
            raise XGeoError(f"params finetune.bigearthnet.literature_eval_every: expected a step count >= 1 or null, "
                            f"found {every}")

        def on_step(step: int, net) -> None:
            if step % every or step == steps:  # the final model is evaluated by evaluate()
                return
            training, rng = net.training, torch.get_rng_state()
            cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            try:
                with torch.no_grad():
                    net.eval()
                    scores, targets = [], []
                    for batch in loader:
                        logits, _ = net([x.to(self.device) for x in self._inputs(batch)])
                        scores.append(torch.sigmoid(logits.float()).cpu().numpy())
                        targets.append(batch[f"labels/{LABEL}"].numpy().astype(np.uint8))
                value = per_batch_micro_map(np.concatenate(scores), np.concatenate(targets), loader.batch_size)
                self.literature_history.append((int(step), value))
            finally:
                net.train(training)
                torch.set_rng_state(rng)
                if cuda is not None:
                    torch.cuda.set_rng_state_all(cuda)

        return on_step

    def _inputs(self, batch: dict) -> list[torch.Tensor]:
        xs = [batch[i.key] for i in self.input_specs()]
        if xs[0].shape[-1] != self.image_size:
            xs = [F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
                  for x in xs]
        return xs

    def _check(self, y: torch.Tensor) -> None:
        bad = (y != 0) & (y != 1)
        if bool(bad.any()):
            raise DataError(f"{self.path}/labels/{LABEL}: expected 0/1 labels for the {len(self.class_names)} "
                            f"classes, found values {torch.unique(y[bad])[:5].tolist()}")

    def step_loss(self, net: FinetuneNet, batch: dict):
        y = batch[f"labels/{LABEL}"]
        self._check(y)
        logits, aux = net(self._inputs(batch))
        return nn.functional.multilabel_soft_margin_loss(logits, y), aux

    @torch.no_grad()
    def evaluate(self, net: FinetuneNet, ds, loader, out: Path) -> tuple[dict, dict, list]:
        net.eval()
        scores, targets, index = [], [], []
        for batch in loader:
            logits, _ = net([x.to(self.device) for x in self._inputs(batch)])
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
            self._check(batch[f"labels/{LABEL}"])
            targets.append(batch[f"labels/{LABEL}"].numpy().astype(np.uint8))
            index.append(batch["index"].numpy())
        scores, targets = np.concatenate(scores), np.concatenate(targets)
        # metrics from exactly the arrays saved, so predictions.npz reproduces metrics.json bit for bit
        m = multilabel_map(scores, targets)
        result = {"mAP_micro": m["mAP_micro"], "mAP_macro": m["mAP_macro"],
                  "AP_per_class": dict(zip(self.class_names, m["AP_per_class"])),
                  "classes_without_positives": [self.class_names[k] for k in m["classes_without_positives"]],
                  "eval_split": self.eval_split(), "eval_samples": int(len(scores))}
        if self.protocol == "literature":
            # the cited papers' way beside ours: per-batch micro AP averaged, the best of the evaluations made during
            # training (see during_training) and of this final one; mAP_micro stays the final model's
            final = per_batch_micro_map(scores, targets, loader.batch_size)
            history = [*self.literature_history, (self.literature_final_step, final)]
            best_step, best = max(history, key=lambda h: (h[1], -h[0]))  # the earliest of equal maxima
            result.update(mAP_micro_per_batch=best, mAP_micro_per_batch_best_step=best_step,
                          mAP_micro_per_batch_final=final, mAP_micro_per_batch_evaluations=len(history))
        arrays = {"scores": scores, "targets": targets, "labels": (scores >= 0.5).astype(np.uint8),
                  "index": np.concatenate(index), "class_names": np.asarray(self.class_names)}
        return result, arrays, []
