"""Fetch a catalogued dataset into DIR: resumable HTTP downloads, md5 checks, safe extraction, manual sources.

``download_dataset(dataset, directory, params)`` walks the dataset's :class:`~xgeo.catalog.Source` entries:

* **Automatic sources** (a URL, ``manual=False``) are downloaded to ``DIR/<filename>.part``; a cut transfer resumes
  with an HTTP ``Range`` request (a server that answers 200 instead of 206 is read again from byte 0); network
  errors, time-outs and HTTP 5xx/408/429 are retried ``data.download.retries`` times with exponential back-off
  (``backoff_s``, ``2 * backoff_s``, ``4 * backoff_s``, ...; an attempt that added bytes resets the count). The
  ``.part`` becomes ``DIR/<filename>`` only once its md5 matches the catalog; a mismatch removes it and raises
  :class:`~xgeo.errors.ChecksumError`. A file already in place with the right md5 is not fetched again. Sources
  without a published md5 are downloaded and the md5 found is recorded in ``DIR/.xgeo-download.json``.
* **Manual sources** (``manual=True``: behind a login, a form or a requester-pays bucket) are described: what to
  fetch, the exact path to put it at, its md5. What the user placed is then verified (never deleted) and extracted.
  Required manual files that are absent are listed in one :class:`~xgeo.errors.DataError` (the CLI exits with 2);
  sources whose instructions call them optional (Vaihingen's eroded ground truth) are only reported.
* **Stand-in parts of a manual folder** (GeoPile: the folder ``GeoPileV0`` comes from a OneDrive share; RESISC45 and
  PatternNet have stable mirrors). The mirrors are part of that folder, so they are not fetched when the folder is
  present. When it is absent the command stops with the instructions, unless ``data.download.allow_partial`` is
  true: then the mirrors are downloaded and extracted into ``DIR/GeoPileV0/`` and the run succeeds with a warning
  that only this subset of the corpus is there. A folder holding nothing but those mirrors still counts as absent.

Archives (zip, tar, tar.gz/tgz, tar.bz2, tar.xz, and tar.zst when the ``zstandard`` package is importable) are
extracted into a hidden temporary directory in DIR, every member checked first (no absolute paths, no ``..``,
no links resolving outside, no device files or FIFOs), then moved into place; the manifest records each finished
extraction (archive md5 and top-level entries) so it is not redone. Archives are kept, so a later run verifies
instead of downloading again; an archive the user deletes after its extraction is not fetched again as long as the
extracted top-level entries are still in place.

The manifest ``DIR/.xgeo-download.json`` (written atomically) also caches each verified file's md5 with its size and
modification time: a file unchanged since it was verified is not hashed again.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

from ..version import __version__
from .datasets import LAYOUTS, get_dataset
from .spec import DatasetSpec, Source
from ..errors import ChecksumError, DataError, XGeoError
from ..io import write_json

MANIFEST = ".xgeo-download.json"
PART_SUFFIX = ".part"
_EXTRACT_PREFIX = ".xgeo-extract-"
# statuses worth another attempt besides every 5xx: request timeout, too many requests
_RETRY_STATUS = {408, 429}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_ZST_SUFFIXES = (".tar.zst", ".tzst")

# the sleep between attempts; tests replace it to record the back-off without waiting
_sleep = time.sleep


def _say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class DownloadOptions:
    """``data.download`` of params.yaml."""

    retries: int = 5
    backoff_s: float = 2.0
    timeout_s: float = 60.0
    chunk_bytes: int = 1 << 20
    allow_partial: bool = False

    @classmethod
    def from_params(cls, params: dict) -> "DownloadOptions":
        try:
            cfg = params["data"]["download"]
        except (KeyError, TypeError):
            raise XGeoError("params: expected a mapping data.download (retries, backoff_s, timeout_s, chunk_bytes), "
                            "found none; see params.yaml") from None
        known = {f: cfg[f] for f in cls.__dataclass_fields__ if f in cfg}
        opts = cls(**known)
        if int(opts.retries) < 0 or float(opts.backoff_s) < 0 or float(opts.timeout_s) <= 0 or int(opts.chunk_bytes) <= 0:
            raise XGeoError(f"params data.download: expected retries >= 0, backoff_s >= 0, timeout_s > 0 and "
                            f"chunk_bytes > 0, found {cfg}")
        return opts

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next attempt after ``failures`` consecutive failed attempts (1-based)."""
        return float(self.backoff_s) * 2.0 ** (failures - 1)


# --------------------------------------------------------------------------------------------------- manifest
class Manifest:
    """``DIR/.xgeo-download.json``: verified files ``{rel: {md5, bytes, mtime_ns, url}}`` and finished
    extractions ``{rel: {md5, into, entries}}``. Paths are relative to DIR, POSIX style."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / MANIFEST
        self.data: dict = {"files": {}, "extracted": {}}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict):
                    self.data["files"].update(data.get("files", {}))
                    self.data["extracted"].update(data.get("extracted", {}))
            except (OSError, json.JSONDecodeError) as exc:
                # only a cache of what was verified: starting it afresh costs a re-hash, never a wrong answer
                _say(f"warning: {self.path}: unreadable ({exc}); files will be verified again")

    def save(self) -> None:
        self.data["xgeo_version"] = __version__
        write_json(self.path, self.data, sort_keys=True)

    def known_md5(self, rel: str, path: Path) -> str | None:
        """The md5 recorded for ``rel`` if the file still has the size and mtime it had when it was hashed."""
        entry = self.data["files"].get(rel)
        if not entry:
            return None
        st = path.stat()
        if entry.get("bytes") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return entry.get("md5")
        return None

    def record_file(self, rel: str, path: Path, md5: str, url: str | None) -> None:
        st = path.stat()
        self.data["files"][rel] = {"md5": md5, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "url": url}
        self.save()

    def extraction(self, rel: str) -> dict | None:
        return self.data["extracted"].get(rel)

    def record_extraction(self, rel: str, md5: str, into: str, entries: list[str]) -> None:
        self.data["extracted"][rel] = {"md5": md5, "into": into, "entries": sorted(entries)}
        self.save()


# ------------------------------------------------------------------------------------------------------ md5
def file_md5(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, md5: str | None, opts: DownloadOptions, manifest: Manifest | None = None,
            rel: str | None = None) -> str:
    """md5 of ``path`` (from the manifest when the file is unchanged since it was hashed); raise ChecksumError if
    it differs from ``md5`` (None: nothing to compare with)."""
    found = manifest.known_md5(rel, path) if manifest is not None and rel is not None else None
    if found is None:
        found = file_md5(path, int(opts.chunk_bytes))
    if md5 is not None and found != md5.lower():
        raise ChecksumError(f"{path}: md5 mismatch: expected {md5.lower()}, found {found}")
    return found


# ------------------------------------------------------------------------------------------------- download
class _Retry(Exception):
    """A failed attempt worth repeating (network error, time-out, cut transfer, HTTP 5xx)."""


class _PartFile:
    """The ``.part`` file of a download and the running md5 of its bytes, kept across attempts."""

    def __init__(self, path: Path, chunk_bytes: int):
        self.path = path
        self.hasher = hashlib.md5()
        self.size = 0
        if path.exists():
            # a transfer cut in an earlier run: its bytes seed the md5
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(chunk_bytes), b""):
                    self.hasher.update(block)
                    self.size += len(block)

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.md5()
        self.size = 0

    def append(self, f: IO[bytes], block: bytes) -> None:
        f.write(block)
        self.hasher.update(block)
        self.size += len(block)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of a ``Content-Range: bytes a-b/total`` or ``bytes */total`` header."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def _attempt(url: str, part: _PartFile, opts: DownloadOptions, label: str) -> None:
    """One HTTP request that appends to ``part``; returns when the server's bytes are all there, else raises."""
    headers = {"User-Agent": f"xgeo/{__version__}", "Accept-Encoding": "identity"}
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=float(opts.timeout_s))
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and part.size:
            # nothing left after our offset: complete if the server's total is what we hold
            _, total = _content_range(exc.headers.get("Content-Range"))
            if total == part.size:
                return
            part.restart()
            raise _Retry(f"HTTP 416 for bytes {part.size}- (server size {total}); starting again from byte 0") from None
        if exc.code >= 500 or exc.code in _RETRY_STATUS:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise DataError(
            f"{url}: HTTP {exc.code} {exc.reason} while fetching {label}; expected the file to be there. "
            "The source may have moved: update its Source in xgeo/data/datasets/<id>.py, or place the file by hand"
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, time-out
        raise _Retry(f"{type(exc).__name__}: {exc}") from None
    with response:
        status = response.status
        first, total = _content_range(response.headers.get("Content-Range"))
        length = response.headers.get("Content-Length")
        if status == 206 and first != part.size:
            part.restart()
            raise _Retry(f"HTTP 206 from byte {first}, expected byte {part.size}; starting again from byte 0")
        if status == 206:
            mode = "ab"
        else:
            if part.size:
                # 200 to a Range request: the body is the whole file, so the part starts again
                _say(f"{label}: server ignored the resume request (HTTP {status}); downloading from byte 0")
            part.restart()
            mode = "wb"
            total = int(length) if length is not None and status == 200 else total
        if total is None and length is not None:
            total = part.size + int(length)
        bar = tqdm(total=total, initial=part.size, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                   dynamic_ncols=True, mininterval=0.5, leave=False)
        with bar, open(part.path, mode) as f:
            while True:
                try:
                    block = response.read(int(opts.chunk_bytes))
                except (OSError, http.client.HTTPException) as exc:  # reset, time-out, IncompleteRead
                    raise _Retry(f"{type(exc).__name__} after {part.size} bytes: {exc}") from None
                if not block:
                    break
                part.append(f, block)
                bar.update(len(block))
    if total is not None and part.size != total:
        if part.size > total:
            part.restart()
        # http.client returns a short body without an error when the peer closes early
        raise _Retry(f"connection closed after {part.size} of {total} bytes")


def _download(url: str, path: Path, md5: str | None, opts: DownloadOptions) -> str:
    """Fetch ``url`` to ``path`` through ``path.part`` (resumed if present); return the md5 of the file.

    The ``.part`` is renamed to ``path`` only after the md5 matched; a mismatch removes it and raises ChecksumError.
    After ``opts.retries`` consecutive failed attempts a DataError says what failed; the ``.part`` stays so the next
    run resumes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(path.with_name(path.name + PART_SUFFIX), int(opts.chunk_bytes))
    if part.size:
        _say(f"{path.name}: resuming after {part.size} bytes")
    failures = 0
    while True:
        before = part.size
        try:
            _attempt(url, part, opts, path.name)
            break
        except _Retry as exc:
            failures = (0 if part.size > before else failures) + 1
            if failures > int(opts.retries):
                raise DataError(
                    f"{url}: download of {path} failed after {failures} attempts in a row; last error: {exc}. "
                    f"Kept {part.size} bytes in {part.path}: run the command again to resume"
                ) from None
            wait = opts.delay(failures)
            _say(f"{path.name}: {exc}; retry {failures}/{int(opts.retries)} in {wait:g} s")
            _sleep(wait)
    found = part.hasher.hexdigest()
    if md5 is not None and found != md5.lower():
        part.restart()
        raise ChecksumError(
            f"{path}: md5 mismatch after download from {url}: expected {md5.lower()}, found {found}; "
            "the bad file was removed, run the command again to fetch it afresh"
        )
    os.replace(part.path, path)
    return found


# -------------------------------------------------------------------------------------------------- extract
def archive_kind(name: str) -> str | None:
    """'zip', 'tar' or 'tar.zst' from a file name; None for a file that is not an archive we extract."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(_ZST_SUFFIXES):
        return "tar.zst"
    if lower.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def _refuse(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"{archive}: refusing to extract member {member!r}: {why}; expected relative paths that stay "
                     "inside the destination and only files, folders and links within it. The archive was not "
                     "extracted; delete it if it is not the file you meant to fetch")


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path components of a member name, refusing absolute paths and '..' (either separator)."""
    if "\x00" in name:
        raise _refuse(archive, name, "a NUL byte in the name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _refuse(archive, name, "an absolute path")
    if ".." in re.split(r"[/\\]", name):
        raise _refuse(archive, name, "a '..' component")
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _check_link(archive: Path, member: str, parts: tuple[str, ...], target: str, hard: bool) -> None:
    """Refuse a link whose target is absolute or leaves the destination (resolved as text from the member's folder,
    or from the archive root for a tar hard link)."""
    kind = "hard link" if hard else "symbolic link"
    if not target or target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target):
        raise _refuse(archive, member, f"a {kind} to the absolute path {target!r}")
    resolved = [] if hard else list(parts[:-1])
    for p in re.split(r"[/\\]", target):
        if p in ("", "."):
            continue
        if p == "..":
            if not resolved:
                raise _refuse(archive, member, f"a {kind} to {target!r}, outside the destination")
            resolved.pop()
        else:
            resolved.append(p)
    if hard and not resolved:
        raise _refuse(archive, member, f"a {kind} to the destination folder itself")


def _check_tar_member(archive: Path, info: tarfile.TarInfo) -> None:
    parts = _member_parts(archive, info.name)
    if info.ischr() or info.isblk():
        raise _refuse(archive, info.name, "a device file")
    if info.isfifo():
        raise _refuse(archive, info.name, "a FIFO")
    if info.issym() or info.islnk():
        _check_link(archive, info.name, parts, info.linkname, hard=info.islnk())
    elif not (info.isreg() or info.isdir()):
        raise _refuse(archive, info.name, f"an unsupported member type {info.type!r}")


def _tar_filter(archive: Path):
    """A tarfile extraction filter: our checks (clear messages), then the standard library's 'data' filter,
    which also resolves links on disk (catching chains of links that only escape once earlier ones exist)."""

    def check(info: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        _check_tar_member(archive, info)
        return tarfile.data_filter(info, dest)

    return check


def _open_tar(archive: Path, f: IO[bytes]) -> tarfile.TarFile:
    if archive_kind(archive.name) == "tar.zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{archive}: a .tar.zst archive needs the Python package 'zstandard', which is not "
                            "installed; install it (pip install zstandard) and run the command again") from None
        # stream mode: the archive is read once, front to back
        return tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(f), mode="r|")
    return tarfile.open(fileobj=f, mode="r|*")


def _extract_tar(archive: Path, tmp: Path) -> None:
    with open(archive, "rb") as f, _open_tar(archive, f) as tf:
        try:
            members = tqdm(tf, desc=f"extract {archive.name}", unit="file", leave=False, mininterval=0.5)
            tf.extractall(tmp, members=members, filter=_tar_filter(archive))
        except tarfile.FilterError as exc:
            raise _refuse(archive, exc.tarinfo.name, str(exc)) from None


def _zip_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) & 0xFFFF


def _extract_zip(archive: Path, tmp: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        links = []
        for info in infos:  # every member checked before anything is written
            parts = _member_parts(archive, info.filename)
            mode = _zip_mode(info)
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                raise _refuse(archive, info.filename, "a device file")
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                raise _refuse(archive, info.filename, "a FIFO or socket")
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "surrogateescape")
                _check_link(archive, info.filename, parts, target, hard=False)
                links.append((parts, target))
        for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", leave=False, mininterval=0.5):
            if not stat.S_ISLNK(_zip_mode(info)):
                zf.extract(info, tmp)
        # zipfile writes links as small text files; make them links, each resolved on disk to stay inside
        root = os.path.realpath(tmp)
        for parts, target in links:
            where = tmp.joinpath(*parts)
            where.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, where)
            if os.path.commonpath([os.path.realpath(where), root]) != root:
                raise _refuse(archive, "/".join(parts), f"a symbolic link to {target!r}, outside the destination")


def _damaged_errors() -> tuple[type[BaseException], ...]:
    """What reading a truncated or corrupt archive raises (zstandard's own error when that package is loaded)."""
    zstd = sys.modules.get("zstandard")
    extra = (zstd.ZstdError,) if zstd is not None and hasattr(zstd, "ZstdError") else ()
    return (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, *extra)


def _merge(src: Path, dst: Path, archive: Path) -> None:
    """Move ``src`` to ``dst``; folders that exist on both sides are merged, files replaced."""
    if dst.is_symlink() or not dst.exists():
        if dst.is_symlink():
            dst.unlink()
        os.replace(src, dst)
    elif dst.is_dir() and src.is_dir() and not src.is_symlink():
        for child in sorted(src.iterdir()):
            _merge(child, dst / child.name, archive)
    elif dst.is_dir():
        raise DataError(f"{archive}: member {src.name!r} is a file but {dst} is a folder; move the folder away "
                        "and run the command again")
    else:
        os.replace(src, dst)


def _extract(archive: Path, destination: Path) -> list[str]:
    """Extract ``archive`` (zip / tar[.gz|.bz2|.xz|.zst]) into ``destination``; return its top-level entries.

    Members go into a hidden temporary folder inside ``destination`` (same file system), every member checked
    (:func:`_check_tar_member`, :func:`_extract_zip`); only a complete, checked extraction is moved into place.
    A refused member raises DataError naming the archive and the member.
    """
    kind = archive_kind(archive.name)
    if kind is None:
        raise DataError(f"{archive}: expected a .zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz or .tar.zst archive to "
                        "extract, found another file type; set extract=False on its Source in xgeo/data/datasets/<id>.py")
    destination.mkdir(parents=True, exist_ok=True)
    for stale in destination.glob(f"{_EXTRACT_PREFIX}{archive.name}.*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_EXTRACT_PREFIX}{archive.name}.", dir=destination))
    try:
        try:
            if kind == "zip":
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
        except _damaged_errors() as exc:
            raise DataError(f"{archive}: expected a readable {kind} archive, found a damaged one ({exc}); "
                            "delete it and run the command again") from None
        entries = sorted(p.name for p in tmp.iterdir())
        for name in entries:
            _merge(tmp / name, destination / name, archive)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entries


# ------------------------------------------------------------------------------------------------ per source
def _rel(source: Source) -> str:
    parts = PurePosixPath(source.filename).parts
    if not parts or PurePosixPath(source.filename).is_absolute() or ".." in parts:
        raise XGeoError(f"xgeo/data/datasets/<id>.py: Source filename {source.filename!r}: expected a relative path inside DIR")
    return PurePosixPath(*parts).as_posix()


def is_optional(source: Source) -> bool:
    """The catalog marks a part a dataset can do without by the word 'optional' in its instructions."""
    return re.search(r"\boptional\b", source.instructions, re.IGNORECASE) is not None


def _extracted(source: Source, directory: Path, md5: str | None, manifest: Manifest, into: Path | None) -> bool:
    """True if the manifest records this archive (``md5``; None: the catalog has none, any recorded) extracted into
    ``into`` and its top-level entries still exist."""
    into = directory if into is None else into
    done = manifest.extraction(_rel(source))
    return bool(done and (md5 is None or done.get("md5") == md5.lower())
                and done.get("into") == into.relative_to(directory).as_posix()
                and all((into / e).exists() for e in done.get("entries", [])))


def _extract_once(source: Source, directory: Path, md5: str, manifest: Manifest, into: Path | None = None) -> None:
    """Extract a verified archive unless that archive (same md5) was already extracted there."""
    rel = _rel(source)
    into = directory if into is None else into
    if _extracted(source, directory, md5, manifest, into):
        _say(f"{rel}: already extracted")
        return
    _say(f"{rel}: extracting into {into}")
    entries = _extract(directory / rel, into)
    manifest.record_extraction(rel, md5, into.relative_to(directory).as_posix(), entries)


def fetch(source: Source, directory: Path, opts: DownloadOptions, manifest: Manifest,
          into: Path | None = None) -> Path:
    """Download one automatic source into ``directory`` (skipped when already verified), then extract it
    (into ``into``, default ``directory``) when ``source.extract`` says so. Returns the file's path."""
    if source.url is None:
        raise XGeoError(f"xgeo/data/datasets/<id>.py: Source {source.filename!r} has no URL and is not marked manual")
    rel = _rel(source)
    path = directory / rel
    if not path.exists() and source.extract and _extracted(source, directory, source.md5, manifest, into):
        # the user may delete a big archive once it is extracted; its content is what the readers need
        _say(f"{rel}: archive removed after a verified extraction whose content is in place; not fetched again")
        return path
    md5 = None
    if path.exists():
        try:
            md5 = _verify(path, source.md5, opts, manifest, rel)
            _say(f"{rel}: already downloaded and verified (md5 {md5}); not fetched again")
        except ChecksumError as exc:
            _say(f"{exc}; removing it and downloading again")
            path.unlink()
    if md5 is None:
        md5 = _download(source.url, path, source.md5, opts)
        if source.md5 is None:
            _say(f"{rel}: downloaded; the catalog has no md5 for it, found {md5} (recorded in {manifest.path.name})")
        else:
            _say(f"{rel}: downloaded, md5 {md5} verified")
    manifest.record_file(rel, path, md5, source.url)
    if source.extract:
        _extract_once(source, directory, md5, manifest, into)
    return path


def is_folder(source: Source) -> bool:
    """A manual source that is a folder the user unpacks by hand (GeoPile's GeoPileV0), not an archive."""
    return source.manual and source.url is None and not source.extract and archive_kind(source.filename) is None


def _describe(source: Source, directory: Path) -> str:
    target = directory / _rel(source)
    what = "folder" if is_folder(source) else "file"
    how = re.sub(r"\bDIR\b", str(directory), source.instructions)
    lines = [f"  {source.filename}{' (optional)' if is_optional(source) else ''}",
             f"    put the {what} at: {target}"]
    if what == "file":
        lines.append(f"    expected md5: {source.md5 or 'not published (recorded when first verified)'}")
    if source.url:
        lines.append(f"    url: {source.url}")
    if how:
        lines.append(f"    how: {how}")
    return "\n".join(lines)


def _folder_entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()


def _verify_manual(source: Source, directory: Path, opts: DownloadOptions, manifest: Manifest,
                   standin_entries: set[str]) -> bool:
    """True if the user placed ``source``; a placed file is md5-checked (ChecksumError, the file is kept) and
    extracted. A folder counts as placed when it holds more than the stand-in parts extracted into it."""
    rel = _rel(source)
    path = directory / rel
    if is_folder(source):
        entries = _folder_entries(path)
        if entries - standin_entries:
            _say(f"{rel}: folder present ({len(entries)} entries)")
            return True
        return False
    if not path.is_file():
        if source.extract and _extracted(source, directory, source.md5, manifest, None):
            _say(f"{rel}: archive removed after a verified extraction whose content is in place")
            return True
        return False
    try:
        md5 = _verify(path, source.md5, opts, manifest, rel)
    except ChecksumError as exc:
        raise ChecksumError(f"{exc}; the file was left in place: fetch it again as described above") from None
    _say(f"{rel}: present, md5 {md5} {'verified' if source.md5 else '(no published md5; recorded)'}")
    manifest.record_file(rel, path, md5, None)
    if source.extract:
        _extract_once(source, directory, md5, manifest)
    return True


def download_dataset(dataset: str, directory: Path, params: dict) -> None:
    """Fetch every source of ``dataset`` into ``directory`` and verify what the user placed there by hand.

    See the module docstring for the rules (resume, retries, md5, extraction, manual sources, GeoPile's mirrors).
    Raises DataError listing the required manual files that are still missing, after doing everything else.
    """
    spec: DatasetSpec = get_dataset(dataset)
    # files of one layout only (BigEarthNet v1 or v2): data.datasets.<id>.layout, else the first layout's
    layout = (params.get("data", {}).get("datasets", {}).get(dataset) or {}).get("layout")
    names = list(LAYOUTS[dataset])
    if layout is not None and layout not in names:
        raise XGeoError(f"{dataset}: expected a layout among {names} to download, found {layout!r}")
    layout = layout or names[0]
    sources = [s for s in spec.sources if s.layout in (None, layout)]
    opts = DownloadOptions.from_params(params)
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(directory)

    manual = [s for s in sources if s.manual]
    automatic = [s for s in sources if not s.manual]
    folders = [s for s in manual if is_folder(s)]
    # automatic parts of a manual folder (GeoPile's mirrors) are extracted into that folder
    home = directory / _rel(folders[0]) if folders else None
    standin_entries: set[str] = set()
    if home is not None:
        for s in automatic:
            done = manifest.extraction(_rel(s))
            if done and done.get("into") == home.relative_to(directory).as_posix():
                standin_entries.update(done.get("entries", []))

    missing: list[Source] = []
    if manual:
        _say(f"{spec.id}: {len(manual)} part(s) must be fetched by hand (behind a login, a form or a paid bucket):")
        for s in manual:
            _say(_describe(s, directory))
        for s in manual:
            if not _verify_manual(s, directory, opts, manifest, standin_entries):
                if is_optional(s):
                    _say(f"{_rel(s)}: optional and not present; going on without it")
                else:
                    missing.append(s)

    home_missing = home is not None and any(s in missing for s in folders)
    partial = False
    for s in automatic:
        if home is not None and not home_missing:
            _say(f"{_rel(s)}: not needed, {home} is present (it holds this part)")
            continue
        if home is not None and not opts.allow_partial:
            continue
        fetch(s, directory, opts, manifest, into=home)
        partial = home is not None
    if partial:
        missing = [s for s in missing if s not in folders]
        _say(f"warning: {spec.id}: {home} holds only the mirrored parts "
             f"({', '.join(s.filename for s in automatic)}), not the whole corpus; place the full folder there for "
             "the paper's data (data.download.allow_partial is true)")
    if missing:
        lines = "\n".join(f"  {directory / _rel(s)}" + (f"  (md5 {s.md5})" if s.md5 else "") for s in missing)
        hint = ""
        if home_missing and not opts.allow_partial:
            hint = ("\nOr go on with the parts that have mirrors only ("
                    + ", ".join(s.filename for s in automatic)
                    + "): --set data.download.allow_partial=true")
        raise DataError(f"{spec.id}: {len(missing)} required part(s) are missing from {directory}; expected them "
                        f"placed by hand as described above:\n{lines}{hint}")
    _say(f"{spec.id}: all sources present and verified in {directory}")
