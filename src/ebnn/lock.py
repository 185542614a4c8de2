"""One writer per output: a lock file beside ``--out`` for the commands that write one.

    with output_lock("mnist.pt"):      # mnist.pt.lock holds our pid while we write
        train(...)

A second ``ebnn train``, ``export``, ``fold`` or ``search`` given the same output fails at
once with :class:`OutputBusyError`, naming the process that holds it. The lock is an
``flock`` on ``OUT.lock``, so the kernel releases it when its holder dies, even by
SIGKILL: a stale lock file never blocks anyone (its pid is only for the message). While
it holds the lock a writer may delete the temporary files a killed writer left behind
(:func:`ebnn.fileio.remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .fileio import OutputError, remove_stale_temporaries


class OutputBusyError(OutputError):
    """Another process is writing the same output."""


def lock_path(out: str | Path) -> Path:
    """Where the lock of ``out`` lives: ``out`` + ``.lock`` (a trailing ``/`` ignored)."""
    out = Path(os.path.abspath(out))  # "." and "dir/" have a name
    return out.with_name(out.name + ".lock")


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold the lock of ``out`` for the block; raise :class:`OutputBusyError` at once if
    another process holds it. Removes stale temporaries of ``out`` once locked."""
    out = Path(out)
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(f"{out} is being written by another ebnn process (pid "
                                  f"{holder}, lock {path}); wait for it to finish or choose "
                                  "another output") from None
        # The holder before us may have removed the file after we opened it: then our lock
        # is on a deleted inode, so start again on the file now at the path.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(out)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still ours: nobody else can lock this inode meanwhile
        os.close(fd)
