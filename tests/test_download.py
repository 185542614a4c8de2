"""ebnn.data.download against a real HTTP server on 127.0.0.1 serving the MNIST files."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from ebnn.data import DataError, download, load_dataset
from ebnn.data.download import REMOTE, _unpack, fetch

T10K = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


class FileServer(ThreadingHTTPServer):
    """Serves files from ``root``; honours ``Range: bytes=N-`` when ``ranges`` is set and
    sends only half of each body (then hangs up) when ``cut`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.ranges, self.cut = root, True, False
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.server.root / self.path.lstrip("/")
        rng = self.headers.get("Range")
        if not path.is_file():
            self.server.requests.append((self.path, rng, 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        start, status = 0, 200
        if rng and self.server.ranges:
            start, status = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)), 206
            if start >= len(data):
                status = 416
        self.server.requests.append((self.path, rng, status))
        self.send_response(status)
        if status == 416:
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.server.cut else body)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(root: Path) -> FileServer:
        server = FileServer(root)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _published(mnist_dir: Path) -> dict[str, str]:
    lines = (mnist_dir / "SHA256SUMS").read_text().split("\n")
    return {name: digest for digest, name in (ln.split() for ln in lines if ln.strip())}


def test_builtin_checksums_match_the_real_files(mnist_dir):
    sums = _published(mnist_dir)
    table = {f.name: f.checksum for f in REMOTE["mnist"].files}
    for name in T10K:
        assert table[name] == "sha256:" + sums[name] == "sha256:" + _sha256(mnist_dir / name)


def test_full_download_verifies_and_loads(mnist_dir, tmp_path, serve):
    server = serve(mnist_dir)
    out = tmp_path / "mnist"
    paths = download("mnist", out, base_url=server.url, progress=False, files=T10K)
    assert [p.name for p in paths] == T10K
    for p in paths:
        assert _sha256(p) == _sha256(mnist_dir / p.name)
    assert sorted(p.name for p in out.iterdir()) == sorted(T10K)  # no .part left
    assert [r[1:] for r in server.requests] == [(None, 200), (None, 200)]
    assert len(load_dataset("mnist", "test", out)) == 10000
    # present and valid: skipped without a request
    download("mnist", out, base_url=server.url, progress=False, files=T10K)
    assert len(server.requests) == 2


def test_resume_uses_range_request(mnist_dir, tmp_path, serve, monkeypatch):
    server = serve(mnist_dir)
    monkeypatch.setenv("EBNN_DOWNLOAD_URL", server.url)  # the variable sets the server too
    name = T10K[0]
    data = (mnist_dir / name).read_bytes()
    half = len(data) // 2
    (tmp_path / f"{name}.part").write_bytes(data[:half])
    [path] = download("mnist", tmp_path, progress=False, files=[name])
    assert server.requests == [(f"/{name}", f"bytes={half}-", 206)]
    assert path.read_bytes() == data and not (tmp_path / f"{name}.part").exists()


def test_resume_restarts_when_server_ignores_range(mnist_dir, tmp_path, serve):
    server = serve(mnist_dir)
    server.ranges = False
    name = T10K[1]
    (tmp_path / f"{name}.part").write_bytes(b"junk that must not survive")
    [path] = download("mnist", tmp_path, base_url=server.url, progress=False, files=[name])
    assert server.requests == [(f"/{name}", "bytes=26-", 200)]
    assert path.read_bytes() == (mnist_dir / name).read_bytes()


def test_interrupted_download_keeps_part_and_resumes(mnist_dir, tmp_path, serve):
    server = serve(mnist_dir)
    server.cut = True
    name = T10K[0]
    size = (mnist_dir / name).stat().st_size
    with pytest.raises(DataError, match=f"interrupted after {size // 2} of {size} bytes"):
        download("mnist", tmp_path, base_url=server.url, progress=False, files=[name])
    part = tmp_path / f"{name}.part"
    assert part.stat().st_size == size // 2 and not (tmp_path / name).exists()
    server.cut = False
    download("mnist", tmp_path, base_url=server.url, progress=False, files=[name])
    assert server.requests[-1] == (f"/{name}", f"bytes={size // 2}-", 206)
    assert _sha256(tmp_path / name) == _sha256(mnist_dir / name)


def test_complete_part_file_is_verified_and_kept(mnist_dir, tmp_path, serve):
    server = serve(mnist_dir)
    name = T10K[1]
    shutil.copy(mnist_dir / name, tmp_path / f"{name}.part")
    download("mnist", tmp_path, base_url=server.url, progress=False, files=[name])
    assert server.requests[0][2] == 416  # nothing left to fetch
    assert _sha256(tmp_path / name) == _sha256(mnist_dir / name)


def test_wrong_checksum_leaves_nothing(mnist_dir, tmp_path, serve):
    bad = tmp_path / "served"
    bad.mkdir()
    name = T10K[1]
    data = bytearray((mnist_dir / name).read_bytes())
    data[100] ^= 1
    (bad / name).write_bytes(bytes(data))
    server = serve(bad)
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        download("mnist", out, base_url=server.url, progress=False, files=[name])
    assert name in str(e.value) and "checksum mismatch" in str(e.value)
    assert list(out.iterdir()) == []


def test_corrupt_existing_file_is_fetched_again(mnist_dir, tmp_path, serve, capsys):
    server = serve(mnist_dir)
    name = T10K[1]
    (tmp_path / name).write_bytes(b"not the labels")
    download("mnist", tmp_path, base_url=server.url, progress=False, files=[name])
    assert _sha256(tmp_path / name) == _sha256(mnist_dir / name)
    assert "does not match its checksum" in capsys.readouterr().err


def test_missing_file_on_server(mnist_dir, tmp_path, serve):
    server = serve(mnist_dir)  # the shared directory has no full training set
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: download failed: HTTP 404"):
        download("mnist", tmp_path, base_url=server.url, progress=False,
                 files=["train-labels-idx1-ubyte.gz"])
    assert list(tmp_path.iterdir()) == []


def test_fetch_md5_and_unverified(mnist_dir, tmp_path, serve, capsys):
    server = serve(mnist_dir)
    # the published MD5 of the official t10k images (see the shared README)
    fetch(server.url + T10K[0], tmp_path / "a.gz", "md5:9fb629c4189551a2d022fa330f9573f3",
          progress=False)
    fetch(server.url + T10K[1], tmp_path / "b.gz", None, progress=False)
    assert "NOT verified" in capsys.readouterr().err
    assert (tmp_path / "b.gz").read_bytes() == (mnist_dir / T10K[1]).read_bytes()
    with pytest.raises(DataError, match="a.gz: checksum mismatch"):
        fetch(server.url + T10K[1], tmp_path / "a.gz", "md5:" + "0" * 32, progress=False)


def test_names_and_digits(tmp_path):
    assert download("digits", tmp_path, progress=False) == []
    with pytest.raises(ValueError, match="unknown source 'imagenet'"):
        download("imagenet", tmp_path)
    with pytest.raises(ValueError, match="mnist has no file nope.gz"):
        download("mnist", tmp_path, files=["nope.gz"])


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_cifar_archive_unpacks_into_loadable_batches(tmp_path):
    spec = REMOTE["cifar10"]
    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = pickle.dumps({b"data": x, b"labels": [3, 4]}, protocol=2)
    members = {f"cifar-10-batches-py/{n}": batch for n in spec.unpacked}
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(_tar_gz(members))
    paths = _unpack(archive, tmp_path, spec.unpack_to, spec.unpacked)
    assert [p.name for p in paths] == list(spec.unpacked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py", archive.name]
    test = load_dataset("cifar10", "test", tmp_path)
    assert test.y.tolist() == [3, 4] and np.array_equal(test.x.reshape(2, -1), x)
    # an archive that tries to write outside the target is refused
    archive.write_bytes(_tar_gz({"../escaped": b"x"}))
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: cannot unpack"):
        _unpack(archive, tmp_path, spec.unpack_to, spec.unpacked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py", archive.name]


def test_cli_data_download(mnist_dir, tmp_path, serve, capsys):
    from ebnn.cli import main

    server = serve(mnist_dir)
    out = tmp_path / "d"
    rc = main(["data", "download", "mnist", "--dir", str(out), "--base-url", server.url,
               "--only", *T10K, "--no-progress"])
    assert rc == 0 and capsys.readouterr().out.split() == [str(out / n) for n in T10K]
    rc = main(["data", "download", "mnist", "--dir", str(out), "--base-url", server.url,
               "--only", "train-images-idx3-ubyte.gz", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "ebnn: error:" in err and "HTTP 404" in err
