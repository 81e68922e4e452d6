"""What shaped a finetuning run, as a digest: the run records it, a table cell is built only from matching runs.

:func:`finetune_settings` collects every setting a finetuning run's numbers depend on:

- ``profile`` and the whole ``model`` section;
- ``experiment`` (the pretraining variant), ``pretraining`` (the experiment whose checkpoint it starts from, see
  :func:`xgeo.config.pretraining_of`) and ``weights_sha256``, the SHA-256 of the initial weight file (the
  pretraining checkpoint or a timm state dict; none for ``random``);
- ``task``, the task's resolved settings (``finetune.optim`` + ``finetune.<task>``, the paper overlay when the
  profile is ``paper``, variants included), ``fraction``, ``finetune.new_sensors`` and ``finetune.eval_batch_size``;
- ``data``: ``data.source`` and ``data.datasets.<task>`` (the synthetic sizes change the data);
- ``seed`` (the finetuning replicate) and ``steps_override`` (``--steps``; None for the task's schedule).

The finetune command writes ``settings`` and ``settings_digest`` to ``run.json``; the table builder recomputes the
settings of every cell from the current params and the current checkpoint and names the keys that differ
(:func:`differences`), so a demo run, a ``--steps 0`` run or a run of an older checkpoint never lands in a table
unmarked.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .config import flatten, pretraining_of

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 of a file (cached per path, size and mtime), or None when the file does not exist."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def digest(obj: Any) -> str:
    """A short hash of JSON-able settings (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finetune_settings(params: Mapping, task: str, weights: str | os.PathLike | None, fraction: float | None,
                      steps_override: int | None) -> dict:
    """Every setting that shapes a finetuning run of ``task`` (see the module doc).

    weights: the initial weight file (None for a random initialisation).
    """
    from .finetune.tasks import task_settings

    s = task_settings(params, task)
    experiment = params.get("experiment")
    ft = params.get("finetune") or {}
    return {
        "profile": params.get("profile"),
        "model": params.get("model"),
        "experiment": experiment,
        "pretraining": pretraining_of(params, experiment) if experiment and weights is not None else None,
        "weights_sha256": None if weights is None else file_digest(weights),
        "task": task,
        "task_settings": s,
        "fraction": float(s.get("fraction", 1.0) if fraction is None else fraction),
        "new_sensors": ft.get("new_sensors"),
        "eval_batch_size": ft.get("eval_batch_size"),
        "data": {"source": (params.get("data") or {}).get("source"),
                 "dataset": ((params.get("data") or {}).get("datasets") or {}).get(task)},
        "seed": params.get("seed"),
        "steps_override": None if steps_override is None else int(steps_override),
    }


def differences(recorded: Mapping, expected: Mapping, limit: int = 3) -> list[str]:
    """``key: run <recorded>, params <expected>`` for the (first ``limit``) settings that differ."""
    a = flatten(json.loads(json.dumps(recorded, default=str)))
    b = flatten(json.loads(json.dumps(expected, default=str)))
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    out = [f"{k}: run {_short(a.get(k, '<absent>'))}, params {_short(b.get(k, '<absent>'))}" for k in keys[:limit]]
    if len(keys) > limit:
        out.append(f"and {len(keys) - limit} more")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:16] + "..."
