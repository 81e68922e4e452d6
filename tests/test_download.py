"""Downloads, resume, retries, checksums, safe extraction and manual sources, all offline against a local HTTP server
on 127.0.0.1 that serves bytes the tests make and can cut a transfer, fail with 500, stall, or ignore Range."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from xgeo import catalog
from xgeo.catalog import Source
from xgeo.cli import main
from xgeo.data import download as dl
from xgeo.errors import ChecksumError, DataError, XGeoError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- the server
class _Handler(BaseHTTPRequestHandler):
    server: "FaultyServer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        srv = self.server
        with srv.lock:
            srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
            fail, stall = srv.fail_times > 0, srv.stall_times > 0
            srv.fail_times -= fail
            srv.stall_times -= stall
            cut, srv.cut_after = srv.cut_after, None
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if fail:
            self.send_error(500)
            return
        if stall:
            time.sleep(srv.stall_s)
            self.close_connection = True
            return
        start, rng = 0, self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if cut is not None:
            # the peer goes away mid-transfer: fewer bytes than Content-Length, then EOF
            self.wfile.write(payload[:cut])
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


class FaultyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.fail_times = 0      # answer 500 this many times, then serve
        self.stall_times = 0     # send nothing for stall_s this many times, then serve
        self.stall_s = 1.0
        self.cut_after: int | None = None  # the next transfer stops after this many bytes
        self.ignore_range = False

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out leaves a broken pipe behind; that is the point of the test

    def add(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


@pytest.fixture
def server():
    srv = FaultyServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def opts():
    return dl.DownloadOptions(retries=3, backoff_s=0.5, timeout_s=5.0, chunk_bytes=4096)


@pytest.fixture
def sleeps(monkeypatch):
    delays: list[float] = []
    monkeypatch.setattr(dl, "_sleep", delays.append)
    return delays


def _payload(n: int = 50_000, seed: int = 0) -> bytes:
    return bytes((i * 131 + seed * 7 + (i >> 8)) % 251 for i in range(n))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------------------------------- download
def test_resume_after_cut(server, opts, sleeps, tmp_path):
    data = _payload()
    url = server.add("a.bin", data)
    server.cut_after = 12_345
    found = dl._download(url, tmp_path / "a.bin", md5(data), opts)
    assert found == md5(data)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert not (tmp_path / "a.bin.part").exists()
    assert [r["range"] for r in server.requests] == [None, "bytes=12345-"]
    assert sleeps == [0.5]  # one failure (that made progress): the first back-off step


def test_resume_part_from_earlier_run(server, opts, sleeps, tmp_path):
    data = _payload()
    url = server.add("a.bin", data)
    (tmp_path / "a.bin.part").write_bytes(data[:30_000])
    dl._download(url, tmp_path / "a.bin", md5(data), opts)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=30000-"]
    assert sleeps == []


def test_server_ignoring_range_restarts_cleanly(server, opts, sleeps, tmp_path):
    data = _payload()
    url = server.add("a.bin", data)
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes from another version" * 10)
    dl._download(url, tmp_path / "a.bin", md5(data), opts)
    assert (tmp_path / "a.bin").read_bytes() == data  # not appended to the stale part
    assert [r["range"] for r in server.requests] == ["bytes=320-"]


def test_complete_part_answered_416(server, opts, sleeps, tmp_path):
    data = _payload(10_000)
    url = server.add("a.bin", data)
    (tmp_path / "a.bin.part").write_bytes(data)  # cut after the last byte, before the rename
    dl._download(url, tmp_path / "a.bin", md5(data), opts)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=10000-"]


def test_retries_with_exponential_backoff(server, opts, sleeps, tmp_path):
    data = _payload(20_000)
    url = server.add("a.bin", data)
    server.fail_times = 3
    dl._download(url, tmp_path / "a.bin", md5(data), opts)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(server.requests) == 4


def test_gives_up_after_retries(server, sleeps, tmp_path):
    url = server.add("a.bin", _payload(1000))
    server.fail_times = 10
    opts = dl.DownloadOptions(retries=2, backoff_s=3.0, timeout_s=5.0, chunk_bytes=4096)
    with pytest.raises(DataError) as err:
        dl._download(url, tmp_path / "a.bin", None, opts)
    assert sleeps == [3.0, 6.0]
    assert len(server.requests) == 3
    assert "HTTP 500" in str(err.value) and url in str(err.value) and "3 attempts" in str(err.value)
    assert not (tmp_path / "a.bin").exists()


def test_timeout_is_retried(server, sleeps, tmp_path):
    data = _payload(5000)
    url = server.add("a.bin", data)
    server.stall_times, server.stall_s = 1, 10.0  # the client gives up long before; the server thread is a daemon
    opts = dl.DownloadOptions(retries=2, backoff_s=0.25, timeout_s=1.0, chunk_bytes=4096)
    dl._download(url, tmp_path / "a.bin", md5(data), opts)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert sleeps == [0.25]


def test_not_found_is_not_retried(server, opts, sleeps, tmp_path):
    url = server.add("a.bin", b"x")
    with pytest.raises(DataError, match=r"HTTP 404.*xgeo/data/datasets/<id>.py"):
        dl._download(url.replace("a.bin", "moved.bin"), tmp_path / "a.bin", None, opts)
    assert sleeps == [] and len(server.requests) == 1


def test_checksum_mismatch_removes_the_file(server, opts, sleeps, tmp_path):
    data = _payload(8000)
    url = server.add("a.bin", data)
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as err:
        dl._download(url, tmp_path / "a.bin", wrong, opts)
    message = str(err.value)
    assert str(tmp_path / "a.bin") in message and wrong in message and md5(data) in message
    assert list(tmp_path.iterdir()) == []  # neither the final file nor the .part


def test_skip_when_already_verified(server, opts, tmp_path, capsys):
    data = _payload(8000)
    src = Source(server.add("a.bin", data), "a.bin", md5(data), extract=False)
    (tmp_path / "a.bin").write_bytes(data)
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    assert server.requests == []
    assert "already downloaded and verified" in capsys.readouterr().out
    manifest = json.loads((tmp_path / dl.MANIFEST).read_text())
    assert manifest["files"]["a.bin"]["md5"] == md5(data)


def test_wrong_existing_file_is_fetched_again(server, opts, tmp_path):
    data = _payload(8000)
    src = Source(server.add("a.bin", data), "a.bin", md5(data), extract=False)
    (tmp_path / "a.bin").write_bytes(b"truncated")
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    assert (tmp_path / "a.bin").read_bytes() == data and len(server.requests) == 1


def test_unknown_md5_is_recorded(server, opts, tmp_path):
    data = _payload(9000, seed=3)
    src = Source(server.add("sub/b.bin", data), "sub/b.bin", None, extract=False)
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    manifest = json.loads((tmp_path / dl.MANIFEST).read_text())
    assert manifest["files"]["sub/b.bin"]["md5"] == md5(data)
    assert manifest["files"]["sub/b.bin"]["bytes"] == 9000
    # a second run trusts the manifest (same size and mtime) and asks nothing
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    assert len(server.requests) == 1


# -------------------------------------------------------------------------------------------------- archives
FILES = {"top/a.txt": b"alpha\n", "top/sub/b.bin": bytes(range(256)) * 3, "top/empty.txt": b"", "c.txt": b"see"}


def _tar_bytes(mode: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _zip_bytes(entries: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (modes or {}).get(name, 0o100644) << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: file bytes, 'dir', or 'link:<target>'."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = f"link:{os.readlink(p)}" if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes())
    return out


def test_good_tar_gz_extracted_exactly(tmp_path):
    members = [_file(n, d) for n, d in FILES.items()] + [_special("top/link_to_a", tarfile.SYMTYPE, "a.txt"),
                                                         _special("top/hard_a", tarfile.LNKTYPE, "top/a.txt")]
    archive = tmp_path / "good.tar.gz"
    archive.write_bytes(_tar_bytes("w:gz", members))
    dest = tmp_path / "out"
    entries = dl._extract(archive, dest)
    assert entries == ["c.txt", "top"]
    expected = {**FILES, "top": "dir", "top/sub": "dir", "top/link_to_a": "link:a.txt", "top/hard_a": b"alpha\n"}
    assert _tree(dest) == expected
    assert (dest / "top/link_to_a").read_bytes() == b"alpha\n"


def test_good_zip_extracted_exactly_and_merged(tmp_path):
    archive = tmp_path / "good.zip"
    archive.write_bytes(_zip_bytes(FILES))
    dest = tmp_path / "out"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "kept.txt").write_bytes(b"from another archive")
    assert dl._extract(archive, dest) == ["c.txt", "top"]
    assert _tree(dest) == {**FILES, "top": "dir", "top/sub": "dir", "top/kept.txt": b"from another archive"}


_MALICIOUS_TAR = {
    "tar-absolute": ([_file("/tmp/xgeo-evil-abs.txt", b"x")], "/tmp/xgeo-evil-abs.txt", "absolute path"),
    "tar-dotdot": ([_file("ok.txt", b"ok"), _file("sub/../../evil.txt", b"x")], "sub/../../evil.txt", "'..'"),
    "tar-symlink-etc": ([_special("etc", tarfile.SYMTYPE, "/etc")], "etc", "absolute path '/etc'"),
    "tar-symlink-up": ([_special("a/up", tarfile.SYMTYPE, "../../outside")], "a/up", "outside the destination"),
    "tar-hardlink-out": ([_special("h", tarfile.LNKTYPE, "../outside.txt")], "h", "outside the destination"),
    "tar-hardlink-abs": ([_special("h", tarfile.LNKTYPE, "/etc/passwd")], "h", "absolute path"),
    "tar-chardev": ([_special("dev/null", tarfile.CHRTYPE)], "dev/null", "device file"),
    "tar-blockdev": ([_special("sda", tarfile.BLKTYPE)], "sda", "device file"),
    "tar-fifo": ([_special("pipe", tarfile.FIFOTYPE)], "pipe", "FIFO"),
    # each link stays inside when read as text, but the second resolves through the first to the parent on disk
    "tar-symlink-chain": ([_special("x/up", tarfile.SYMTYPE, ".."), _special("esc", tarfile.SYMTYPE, "x/up/.."),
                           _file("esc/evil.txt", b"x")], "esc", "outside the destination"),
}
_MALICIOUS_ZIP = {
    "zip-dotdot": ({"good.txt": b"ok", "../evil.txt": b"x"}, None, "../evil.txt", "'..'"),
    "zip-absolute": ({"/tmp/xgeo-evil-abs.txt": b"x"}, None, "/tmp/xgeo-evil-abs.txt", "absolute path"),
    "zip-backslash": ({"a\\..\\..\\evil.txt": b"x"}, None, "a\\..\\..\\evil.txt", "'..'"),
    "zip-symlink-out": ({"link": b"../../etc"}, {"link": 0o120777}, "link", "outside the destination"),
    "zip-fifo": ({"pipe": b""}, {"pipe": 0o010644}, "pipe", "FIFO"),
}


def _assert_refused(archive: Path, dest: Path, member: str, why: str, before: dict) -> None:
    with pytest.raises(DataError) as err:
        dl._extract(archive, dest)
    message = str(err.value)
    assert str(archive) in message and repr(member) in message and why in message, message
    assert _tree(dest) == {}  # the temporary folder is gone, nothing moved into place
    assert _tree(archive.parent) == {**before, "out": "dir"}  # nothing written beside the destination either
    assert not Path("/tmp/xgeo-evil-abs.txt").exists()


@pytest.mark.parametrize("case", sorted(_MALICIOUS_TAR))
def test_malicious_tar_refused(tmp_path, case):
    members, member, why = _MALICIOUS_TAR[case]
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tar_bytes("w", members))
    _assert_refused(archive, tmp_path / "out", member, why, _tree(tmp_path))


@pytest.mark.parametrize("case", sorted(_MALICIOUS_ZIP))
def test_malicious_zip_refused(tmp_path, case):
    entries, modes, member, why = _MALICIOUS_ZIP[case]
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_bytes(entries, modes))
    _assert_refused(archive, tmp_path / "out", member, why, _tree(tmp_path))


def test_damaged_archive_named(tmp_path):
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(_tar_bytes("w:gz", [_file("a.bin", _payload(40_000))])[:300])
    with pytest.raises(DataError, match=re.escape(str(archive)) + r".*damaged"):
        dl._extract(archive, tmp_path / "out")
    assert _tree(tmp_path / "out") == {}


def test_tar_zst_without_zstandard_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails as if it were not installed
    archive = tmp_path / "x.tar.zst"
    archive.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(DataError, match=re.escape(str(archive)) + r".*'zstandard'.*pip install zstandard"):
        dl._extract(archive, tmp_path / "out")


def test_tar_zst_extracted_when_zstandard_present(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    archive = tmp_path / "x.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(_tar_bytes("w", [_file(n, d) for n, d in FILES.items()])))
    dl._extract(archive, tmp_path / "out")
    assert {k: v for k, v in _tree(tmp_path / "out").items() if v != "dir"} == FILES


def test_extraction_not_redone(server, opts, tmp_path, capsys):
    data = _zip_bytes(FILES)
    src = Source(server.add("good.zip", data), "good.zip", md5(data))
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    (tmp_path / "top/a.txt").write_bytes(b"edited after extraction")
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    assert (tmp_path / "top/a.txt").read_bytes() == b"edited after extraction"
    assert "good.zip: already extracted" in capsys.readouterr().out
    assert len(server.requests) == 1
    (tmp_path / "top").rename(tmp_path / "moved")  # an entry gone: extracted again
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    assert (tmp_path / "top/a.txt").read_bytes() == FILES["top/a.txt"]
    (tmp_path / "good.zip").unlink()  # archive deleted to save space, content in place: not fetched again
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    assert len(server.requests) == 1 and not (tmp_path / "good.zip").exists()
    (tmp_path / "c.txt").unlink()  # content gone too: fetched and extracted again
    dl.fetch(src, tmp_path, opts, dl.Manifest(tmp_path))
    assert len(server.requests) == 2 and (tmp_path / "c.txt").read_bytes() == FILES["c.txt"]


# ----------------------------------------------------------------------------------------------- whole dataset
@pytest.fixture
def params(load):
    return load("data.download.backoff_s=0", "data.download.timeout_s=5")


def _with_sources(monkeypatch, dataset: str, sources: tuple[Source, ...]) -> None:
    spec = dataclasses.replace(catalog.CATALOG[dataset], sources=sources)
    monkeypatch.setitem(catalog.CATALOG, dataset, spec)


def test_manual_missing_lists_paths(tmp_path, params, capsys):
    with pytest.raises(DataError) as err:
        dl.download_dataset("vaihingen", tmp_path, params)
    message = str(err.value)
    image, labels, eroded = catalog.CATALOG["vaihingen"].sources
    for s in (image, labels):
        assert f"{tmp_path / s.filename}  (md5 {s.md5})" in message
    assert eroded.filename not in message  # optional: reported, not required
    out = capsys.readouterr().out
    assert f"put the file at: {tmp_path / image.filename}\n    expected md5: {image.md5}" in out
    assert "ISPRS data request form" in out and f"{eroded.filename}: optional and not present" in out


def test_manual_instructions_name_the_directory(tmp_path, params, capsys):
    with pytest.raises(DataError):
        dl.download_dataset("spacenet2", tmp_path, params)
    out = capsys.readouterr().out
    aws = "aws s3 cp s3://spacenet-dataset/spacenet/SN2_buildings/tarballs/SN2_buildings_train_AOI_2_Vegas.tar.gz"
    assert f"{aws} {tmp_path}/" in out


def test_manual_present_verified_and_extracted(tmp_path, params, monkeypatch):
    image = _zip_bytes({"top/top_mosaic_09cm_area1.tif": b"II*\x00fake", "dsm/dsm_09cm_matching_area1.tif": b"II*\x00"})
    labels = _zip_bytes({"gts_for_participants/top_mosaic_09cm_area1.tif": b"II*\x00lbl"})
    _with_sources(monkeypatch, "vaihingen", (
        Source(None, "V.zip", md5(image), manual=True, instructions="ask ISPRS"),
        Source(None, "GT.zip", md5(labels), manual=True, instructions="same request"),
        Source(None, "ERODED.zip", None, manual=True, instructions="eroded labels; optional"),
    ))
    (tmp_path / "V.zip").write_bytes(image)
    (tmp_path / "GT.zip").write_bytes(labels)
    dl.download_dataset("vaihingen", tmp_path, params)
    assert (tmp_path / "top/top_mosaic_09cm_area1.tif").read_bytes() == b"II*\x00fake"
    assert (tmp_path / "gts_for_participants/top_mosaic_09cm_area1.tif").read_bytes() == b"II*\x00lbl"
    manifest = json.loads((tmp_path / dl.MANIFEST).read_text())
    assert manifest["files"]["V.zip"]["md5"] == md5(image)
    assert manifest["extracted"]["GT.zip"]["entries"] == ["gts_for_participants"]


def test_manual_wrong_md5_kept_and_named(tmp_path, params, monkeypatch):
    _with_sources(monkeypatch, "millionaid", (Source(None, "train.zip", "1" * 32, manual=True),))
    (tmp_path / "train.zip").write_bytes(b"not the archive")
    with pytest.raises(ChecksumError) as err:
        dl.download_dataset("millionaid", tmp_path, params)
    assert str(tmp_path / "train.zip") in str(err.value) and "1" * 32 in str(err.value)
    assert md5(b"not the archive") in str(err.value)
    assert (tmp_path / "train.zip").exists()  # a file the user placed is never deleted


def _geopile(monkeypatch, server) -> dict[str, bytes]:
    parts = {"NWPU-RESISC45.zip": _zip_bytes({"NWPU-RESISC45/airport/airport_001.jpg": b"\xff\xd8r45"}),
             "PatternNet.zip": _zip_bytes({"PatternNet/images/beach/beach001.jpg": b"\xff\xd8pn"})}
    spec = catalog.CATALOG["geopile"]
    _with_sources(monkeypatch, "geopile", (spec.sources[0],) + tuple(
        dataclasses.replace(s, url=server.add(s.filename, parts[s.filename]), md5=md5(parts[s.filename]))
        for s in spec.sources[1:]))
    return parts


def test_geopile_folder_present_skips_mirrors(tmp_path, params, monkeypatch, server, capsys):
    _geopile(monkeypatch, server)
    (tmp_path / "GeoPileV0/NAIP/c0").mkdir(parents=True)
    dl.download_dataset("geopile", tmp_path, params)
    assert server.requests == []
    assert "NWPU-RESISC45.zip: not needed" in capsys.readouterr().out


def test_geopile_partial_only_when_allowed(tmp_path, params, monkeypatch, server, load):
    _geopile(monkeypatch, server)
    with pytest.raises(DataError, match=r"GeoPileV0(.|\n)*allow_partial=true"):
        dl.download_dataset("geopile", tmp_path, params)
    assert server.requests == []
    dl.download_dataset("geopile", tmp_path, load("data.download.allow_partial=true"))
    assert _tree(tmp_path / "GeoPileV0")["NWPU-RESISC45/airport/airport_001.jpg"] == b"\xff\xd8r45"
    assert _tree(tmp_path / "GeoPileV0")["PatternNet/images/beach/beach001.jpg"] == b"\xff\xd8pn"
    assert len(server.requests) == 2
    # the mirrors alone do not make the manual folder present
    with pytest.raises(DataError, match="GeoPileV0"):
        dl.download_dataset("geopile", tmp_path, params)
    assert len(server.requests) == 2


def test_unknown_dataset(tmp_path, params):
    with pytest.raises(XGeoError, match="unknown dataset 'nope'"):
        dl.download_dataset("nope", tmp_path, params)


# ------------------------------------------------------------------------------------------------------- CLI
def _cli(*args: str):
    base = ["--params", str(ROOT / "params.yaml"), "--set", "data.download.backoff_s=0"]
    return CliRunner().invoke(main, ["data", "download", *args, *base])


def test_cli_download_against_local_server(tmp_path, monkeypatch, server, sleeps):
    data = _zip_bytes({"Augsburg_data_4_publication/sub_area_1/3K_DSM.tif": b"II*\x00dsm",
                       "Augsburg_data_4_publication/sub_area_1/3K_RGB.tif": b"II*\x00rgb"})
    name = "Augsburg_data_4_publication.zip"
    _with_sources(monkeypatch, "mdas", (Source(server.add(name, data), name, md5(data)),))
    server.cut_after = 100
    out = tmp_path / "mdas"
    result = _cli("mdas", str(out))
    assert result.exit_code == 0, result.output
    assert (out / name).read_bytes() == data
    assert (out / "Augsburg_data_4_publication/sub_area_1/3K_DSM.tif").read_bytes() == b"II*\x00dsm"
    assert [r["range"] for r in server.requests] == [None, "bytes=100-"]
    again = _cli("mdas", str(out))
    assert again.exit_code == 0 and "already downloaded and verified" in again.output
    assert "already extracted" in again.output and len(server.requests) == 2


def test_cli_manual_missing_exits_2(tmp_path):
    result = _cli("spacenet2", str(tmp_path))
    assert result.exit_code == 2
    sources = catalog.CATALOG["spacenet2"].sources
    assert f"error: spacenet2: {len(sources)} required part(s) are missing" in result.output
    for s in sources:
        assert f"{tmp_path / s.filename}  (md5 {s.md5})" in result.output
