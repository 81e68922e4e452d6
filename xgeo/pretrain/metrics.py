"""What a pretraining run logs: ``metrics.jsonl`` (one record per logged step) and the same record for MLflow."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..io import write_text

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, each line appended with one write and fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate(self, step: int) -> None:
        """Keep the lines of steps <= ``step`` (a resumed run rewrites what followed its checkpoint)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError):
                break  # a line cut by a kill: everything after it is lost anyway
        write_text(self.path, "".join(line + "\n" for line in keep))

    def append(self, record: dict) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def log_record(done, sampler, loss, logs, lr, grad_norm, weights, samples_per_s, info) -> dict:
    """The record of step ``done``: scalars averaged over ranks, group weights, per-expert load shares."""
    scalars = {"loss": loss.detach().float(), "grad_norm": torch.as_tensor(grad_norm).detach().float()}
    scalars.update({k: v.float() for k, v in logs.items() if v.ndim == 0})
    names = sorted(scalars)
    values = torch.stack([scalars[k].reshape(()).cpu() for k in names]).double()
    if info.enabled:
        import torch.distributed as dist

        values = values.to(info.device)
        dist.all_reduce(values)  # mean over ranks: the loss of the global batch
        values = values.cpu() / info.world_size
    record: dict[str, Any] = {"step": done, "epoch": sampler.epoch_of(done - 1), "lr": lr,
                              "samples_per_s": samples_per_s}
    record.update({k: float(v) for k, v in zip(names, values)})
    record.update({f"weight/{g}": w for g, w in weights.items()})
    for k, v in logs.items():
        if v.ndim == 1:
            record[k] = [round(float(x), 6) for x in v]
    return record


def mlflow_metrics(record: dict) -> dict:
    out = {}
    for k, v in record.items():
        if k == "step":
            continue
        if isinstance(v, list):  # expert load per MoE block -> one metric per expert
            out.update({f"{k}/expert{e}": x for e, x in enumerate(v)})
        else:
            out[k] = v
    return out
