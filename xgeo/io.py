"""Atomic writes: a temporary name beside the target, then one rename.

An interrupted stage leaves the previous good output (or nothing), never a half-written file or store.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``; on error remove it.

    For directories (Zarr stores) the old directory is moved aside and deleted only after the rename succeeded,
    so a failed rebuild leaves the earlier good store in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        tmp = _tmp_sibling(path)
    try:
        yield tmp
        if directory:
            old = None
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                old.rmdir()
                os.rename(path, old)
            os.rename(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj, **kwargs) -> None:
    kwargs.setdefault("indent", 2)
    write_text(path, json.dumps(obj, **kwargs) + "\n")


def npz_bytes(arrays) -> bytes:
    """``numpy.savez_compressed``'s archive of ``{name: array}``, with a fixed member timestamp (numpy stamps each
    member with the current time), so that the same arrays always give the same bytes."""
    import io
    import zipfile

    import numpy as np
    from numpy.lib import format as npy

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                npy.write_array(f, np.asanyarray(value), allow_pickle=True)
    return buf.getvalue()
