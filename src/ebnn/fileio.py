"""Atomic outputs: a reader never sees half a file or half a set of files, and a crash at
any point leaves either the old complete output or the new complete one.

* :func:`atomic_write_bytes` writes one file through a temporary file in the same
  directory, then renames it over the target.
* :func:`staged_directory` builds a whole directory (a C export, an Arduino library)
  beside its target and swaps it in with one atomic ``renameat2(RENAME_EXCHANGE)``
  (where the file system lacks it: two renames, with the old directory kept until the
  new one is in place). Files of yours in the target are kept; a target that holds
  folders of its own (a project directory) is updated file by file instead, each file
  atomic (see :func:`publish_directory`).

Outputs get the permissions a plain ``open()`` would give (``0666`` / ``0777`` less the
umask), not the ``0600`` of a temporary file. A target that is read-only is refused with
:class:`OutputError` rather than silently replaced.

``EBNN_FAULT_INJECT=POINT[:N]`` kills the process with SIGKILL the N-th time it passes
the named :func:`fault_point`; the tests use it to check that a kill at every step leaves
complete outputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

_fault_hits: dict[str, int] = {}


class OutputError(OSError):
    """An output that cannot or must not be written (read-only, not a directory...)."""


def fault_point(name: str) -> None:
    """Die here, as by a power cut, when ``EBNN_FAULT_INJECT`` names this point."""
    want = os.environ.get("EBNN_FAULT_INJECT")
    if not want:
        return
    point, _, nth = want.rpartition(":")
    if not nth.isdigit():
        point, nth = want, "1"
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def umask() -> int:
    """The process's umask (read without changing it for longer than two calls)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | Path) -> None:
    """Raise :class:`OutputError` if ``path`` exists and is read-only (no write bit at all,
    which even root respects here, or not writable by this user)."""
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not st.st_mode & 0o222 or not os.access(path, os.W_OK):
        raise OutputError(f"{path} is read-only: make it writable or choose another output")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory: give a file name")
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            fault_point("write:partial")
            f.write(data[half:])
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~umask())
            os.fsync(f.fileno())
        fault_point("write:before-rename")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        fault_point("write:after-rename")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux ``renameat2``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def stale_temporaries(out: str | Path) -> list[Path]:
    """Temporary files and directories a killed writer of ``out`` left beside it."""
    out = Path(out)
    return sorted(out.parent.glob(f".{out.name}.*.tmp"))


def remove_stale_temporaries(out: str | Path) -> None:
    """Delete what :func:`stale_temporaries` finds (call it while holding the lock of
    ``out``, see :mod:`ebnn.lock`, so no live writer's files go)."""
    for p in stale_temporaries(out):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _carry_over(old: Path, new: Path) -> None:
    """Give ``new`` every file of ``old`` it does not have itself (hard links where the
    file system allows), so files ebnn did not write survive the swap."""
    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or target.is_symlink():
            continue
        try:
            os.link(entry, target, follow_symlinks=False)
        except OSError:
            shutil.copy2(entry, target, follow_symlinks=False)


def _swappable(staging: Path, out: Path) -> bool:
    """Whether ``out`` can be replaced as a whole: it holds no directory of its own that
    the new set lacks (those would have to be copied) and is not where we run."""
    cwd = os.getcwd()
    if cwd == str(out) or cwd.startswith(str(out) + os.sep):
        return False
    return not any(e.is_dir() and not e.is_symlink() and not (staging / e.name).exists()
                   for e in out.iterdir())


def _publish_files(staging: Path, out: Path) -> None:
    """File by file, each atomic: for a directory that also holds other folders."""
    for path in sorted(staging.iterdir()):
        target = out / path.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(path, target)
        fault_point("publish:file")
    _fsync_dir(out)
    staging.rmdir()


def publish_directory(staging: Path, out: Path, keep_others: bool = True) -> None:
    """Put the finished directory ``staging`` at ``out`` in one atomic step.

    With ``keep_others`` the entries of an existing ``out`` that ``staging`` does not
    replace are kept (files are hard-linked into the new directory before the swap); a
    directory ``out`` that holds folders of its own, or the working directory, is updated
    file by file instead (each file atomic, the set not). Without ``keep_others`` ``out``
    becomes exactly ``staging``.
    """
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    if not out.exists():
        fault_point("publish:before-rename")
        os.rename(staging, out)
        _fsync_dir(out.parent)
        return
    check_writable(out)
    if keep_others:
        if not _swappable(staging, out):
            _publish_files(staging, out)
            return
        _carry_over(out, staging)
    os.chmod(staging, stat.S_IMODE(out.stat().st_mode))
    fault_point("publish:before-swap")
    if _exchange(staging, out):
        _fsync_dir(out.parent)
        fault_point("publish:after-swap")
        shutil.rmtree(staging)  # the old directory now
        return
    # No atomic exchange: keep the old one beside until the new one is in place.
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.rmdir(old)
    os.rename(out, old)
    fault_point("publish:between-renames")
    os.rename(staging, out)
    _fsync_dir(out.parent)
    shutil.rmtree(old)


@contextlib.contextmanager
def staged_directory(out: str | Path, keep_others: bool = True) -> Iterator[Path]:
    """Build a directory beside ``out`` and publish it there when the block succeeds::

        with staged_directory("mnist_c") as d:
            (d / "model.c").write_text(source)      # nothing appears in mnist_c yet

    A kill or an exception inside the block leaves ``out`` untouched (a hidden
    ``.out.*.tmp`` directory may remain; the next locked writer removes it). See
    :func:`publish_directory` for ``keep_others``.
    """
    # "." and "build/" get a name and a parent; a link to a directory means that directory
    out = Path(os.path.realpath(out) if Path(out).is_symlink() else os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    check_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~umask())
        yield staging
        publish_directory(staging, out, keep_others)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
