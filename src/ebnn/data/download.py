"""Download the standard datasets: ``ebnn data download NAME --dir D``.

Each file is checked against its published checksum, fetched into ``NAME.part`` and
renamed into place only after the check passes, so an interrupted or corrupt download
never looks like a finished one. Running the command again resumes a ``.part`` file with
an HTTP range request (or starts over if the server ignores ranges) and skips files that
are already present and valid. A checksum mismatch deletes the partial file and raises
:class:`~ebnn.data.DataError`.

The servers can be replaced, for a mirror or a local copy, with ``base_url`` or the
``EBNN_DOWNLOAD_URL`` environment variable: file ``F`` is fetched from ``<base>/F``.

========================  =====================================================  ========
source                    default server                                         checksum
========================  =====================================================  ========
``mnist``                 https://ossci-datasets.s3.amazonaws.com/mnist/         SHA-256
``fashion-mnist``         http://fashion-mnist.s3-website.eu-central-1...        SHA-256
``cifar10``               https://www.cs.toronto.edu/~kriz/ (archive, unpacked)  SHA-256
``svhn``                  http://ufldl.stanford.edu/housenumbers/                MD5
========================  =====================================================  ========

``digits`` ships with scikit-learn and needs no download.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .base import DataError

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch and its published checksum, ``"sha256:<hex>"`` or ``"md5:<hex>"``
    (``None``: no published checksum; the file is fetched unverified, with a warning)."""

    name: str
    checksum: str | None


@dataclass(frozen=True)
class RemoteSource:
    base_url: str
    files: tuple[RemoteFile, ...]
    unpack_to: str | None = None  # a .tar.gz archive that unpacks into this directory
    unpacked: tuple[str, ...] = ()  # the files expected there


# Checksums as published by the dataset authors or the widely used loaders (torchvision,
# TensorFlow Datasets, Keras), each cross-checked across several independent sources.
REMOTE: dict[str, RemoteSource] = {
    "mnist": RemoteSource("https://ossci-datasets.s3.amazonaws.com/mnist/", (
        RemoteFile("train-images-idx3-ubyte.gz",
                   "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        RemoteFile("train-labels-idx1-ubyte.gz",
                   "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        RemoteFile("t10k-images-idx3-ubyte.gz",
                   "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        RemoteFile("t10k-labels-idx1-ubyte.gz",
                   "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    )),
    "fashion-mnist": RemoteSource("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", (
        RemoteFile("train-images-idx3-ubyte.gz",
                   "sha256:08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc"),
        RemoteFile("train-labels-idx1-ubyte.gz",
                   "sha256:b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc"),
        RemoteFile("t10k-images-idx3-ubyte.gz",
                   "sha256:78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229"),
        RemoteFile("t10k-labels-idx1-ubyte.gz",
                   "sha256:42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf"),
    )),
    "cifar10": RemoteSource("https://www.cs.toronto.edu/~kriz/", (
        RemoteFile("cifar-10-python.tar.gz",
                   "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    ), unpack_to="cifar-10-batches-py",
        unpacked=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")),
    "svhn": RemoteSource("http://ufldl.stanford.edu/housenumbers/", (
        RemoteFile("train_32x32.mat", "md5:e26dedcc434d2e4c54c9b2d4a06d8373"),
        RemoteFile("test_32x32.mat", "md5:eb5a983be6a315427106f1b164d9cef3"),
    )),
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _matches(path: Path, checksum: str) -> tuple[bool, str]:
    algorithm, expected = checksum.split(":", 1)
    actual = file_digest(path, algorithm)
    return actual == expected.lower(), f"{algorithm} {actual}"


def fetch(url: str, dest: str | Path, checksum: str | None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``, resumable) and verify ``checksum``
    (``"sha256:<hex>"`` / ``"md5:<hex>"``, or ``None`` to accept the file unverified).
    A ``dest`` that already matches the checksum is kept as is."""
    dest = Path(dest)
    if dest.is_file():
        if checksum is None:
            _say(f"{dest.name}: present (no published checksum to verify), skipped")
            return dest
        ok, actual = _matches(dest, checksum)
        if ok:
            if progress:
                _say(f"{dest.name}: present and verified, skipped")
            return dest
        _say(f"warning: {dest} does not match its checksum ({actual}); downloading it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0

    headers = {"User-Agent": "ebnn-data-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if not (e.code == 416 and offset):  # 416: the partial file is already complete
            raise DataError(f"{url}: download failed: HTTP {e.code} {e.reason}") from e
        resp = None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"{url}: cannot connect ({reason})") from e

    if resp is not None:
        with resp:
            if offset and resp.status == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    part.unlink()
                    raise DataError(f"{url}: server answered the range request for bytes "
                                    f"{offset}- with {resp.headers.get('Content-Range')!r}; "
                                    "partial file removed, run again")
                mode = "ab"
            else:
                if offset and progress:
                    _say(f"{dest.name}: server ignored the range request, starting over")
                offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            try:
                with part.open(mode) as f, tqdm(total=total, initial=offset, unit="B",
                                                unit_scale=True, desc=dest.name,
                                                disable=not progress, file=sys.stderr) as bar:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            except (OSError, http.client.HTTPException) as e:
                raise DataError(f"{url}: download interrupted ({e}); run again to resume "
                                f"from {part}") from e
        size = part.stat().st_size
        if total is not None and size < total:
            raise DataError(f"{url}: download interrupted after {size} of {total} bytes; "
                            f"run again to resume from {part}")

    if checksum is None:
        _say(f"warning: {dest.name} has no published checksum; it was NOT verified")
    else:
        ok, actual = _matches(part, checksum)
        if not ok:
            part.unlink()
            raise DataError(f"{dest}: checksum mismatch for {url}: expected {checksum}, got "
                            f"{actual}; the partial file was deleted")
    os.replace(part, dest)
    return dest


def _unpack(archive: Path, directory: Path, subdir: str, expected: Sequence[str]) -> list[Path]:
    """Unpack ``archive`` (a .tar.gz holding ``subdir/``) into ``directory/subdir``, moving
    each expected file into place only once the whole archive has been read."""
    staging = directory / f".{subdir}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staging, filter="data")  # "data": no absolute paths, no links out
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{archive}: cannot unpack ({e})") from e
        missing = [n for n in expected if not (staging / subdir / n).is_file()]
        if missing:
            raise DataError(f"{archive}: archive lacks {subdir}/{', '.join(missing)}")
        target = directory / subdir
        target.mkdir(exist_ok=True)
        out = []
        for name in expected:
            os.replace(staging / subdir / name, target / name)
            out.append(target / name)
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)



def download(name: str, directory: str | Path, base_url: str | None = None,
             progress: bool = True, *, files: Sequence[str] | None = None) -> list[Path]:
    """Fetch the files of source ``name`` into ``directory`` and return their paths.

    ``base_url`` (else ``$EBNN_DOWNLOAD_URL``, else the official server) is where the
    files are fetched from; ``files`` limits the download to some of the source's file
    names (e.g. only the MNIST ``t10k-*`` test files). ``cifar10`` is unpacked into
    ``directory/cifar-10-batches-py`` and its archive removed; the returned paths are the
    unpacked batches. Raises :class:`DataError` on network or checksum failures."""
    if name == "digits":
        if progress:
            _say("digits ships with scikit-learn: nothing to download")
        return []
    if name not in REMOTE:
        raise ValueError(f"unknown source {name!r}; downloadable: {', '.join(REMOTE)}")
    src = REMOTE[name]
    wanted = list(src.files)
    if files is not None:
        known = {f.name for f in src.files}
        unknown = [f for f in files if f not in known]
        if unknown:
            raise ValueError(f"{name} has no file {', '.join(unknown)}; files: "
                             f"{', '.join(sorted(known))}")
        wanted = [f for f in src.files if f.name in files]
    base = base_url or os.environ.get("EBNN_DOWNLOAD_URL") or src.base_url
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)

    if src.unpack_to is not None:
        target = directory / src.unpack_to
        if all((target / n).is_file() for n in src.unpacked):
            if progress:
                _say(f"{name}: {target} is complete, skipped")
            return [target / n for n in src.unpacked]
    paths = []
    for f in wanted:
        url = base.rstrip("/") + "/" + f.name
        paths.append(fetch(url, directory / f.name, f.checksum, progress))
    if src.unpack_to is not None:
        unpacked = []
        for archive in paths:
            unpacked += _unpack(archive, directory, src.unpack_to, src.unpacked)
            archive.unlink()
        return unpacked
    return paths
