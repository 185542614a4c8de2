"""What the command line checks and holds before a command does any work.

:func:`output_guard` range-checks the numeric options (a learning rate of ``inf`` or a
negative image count are errors, not silent surprises), checks ``--device`` and
``--storage``, checks the output path (an existing directory given as a checkpoint file, a read-only
file) and takes the output's lock (:mod:`ebnn.lock`), all before data is read or a model
is built. :func:`interrupt_on_sigterm` makes SIGTERM stop a command the way Ctrl-C does:
promptly, through the same cleanup, with the same message.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .fileio import OutputError, check_writable
from .lock import output_lock

# Integer options: (lowest allowed value, what the value must be); floats: (bound, whether
# the bound itself is allowed, what the value must be). Absent options are skipped.
_INT_RANGES = {
    "epochs": (1, "at least 1"), "final_epochs": (1, "at least 1"),
    "batch_size": (2, "at least 2 (batch norm)"),
    "augment_shift": (0, ">= 0"), "threads": (0, ">= 0"), "images": (0, ">= 0 (0: all)"),
    "jobs": (1, "at least 1"), "trials": (1, "at least 1"), "workers": (1, "at least 1"),
}
_FLOAT_RANGES = {
    "lr": (0.0, False, "positive and finite"),
    "early_exit_reg": (0.0, True, "a finite number >= 0"),
    "val_fraction": (0.0, True, "a finite number in [0, 1)"),
}


def _option(name: str) -> str:
    """``--lr: learning rate``, ``--batch-size: batch size``: the option and what it sets."""
    what = {"lr": "learning rate", "early_exit_reg": "early-exit regularisation",
            "images": "image count", "jobs": "job count"}.get(name, name.replace("_", " "))
    return f"--{name.replace('_', '-')}: {what}"


#: The commands whose options and outputs this module checks (others check their own).
FILE_OUTPUTS = ("train", "fold")
DIR_OUTPUTS = ("export", "build", "bench", "search")


def check_numbers(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for a numeric option outside its range (see the tables above)."""
    if args.command not in FILE_OUTPUTS + DIR_OUTPUTS:
        return
    for name, (lo, what) in _INT_RANGES.items():
        v = getattr(args, name, None)
        if isinstance(v, int) and v < lo:
            raise ValueError(f"{_option(name)} must be {what}, got {v}")
    for name, (lo, inclusive, what) in _FLOAT_RANGES.items():
        v = getattr(args, name, None)
        if v is None:
            continue
        ok = math.isfinite(v) and (v >= lo if inclusive else v > lo)
        if name == "val_fraction":
            ok = ok and v < 1
        if not ok:
            raise ValueError(f"{_option(name)} must be {what}, got {v}")


def check_device(device: str) -> None:
    """Raise ``ValueError`` unless ``device`` names a torch device that exists here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {device!r} is not a torch device (use cpu, cuda, "
                         f"cuda:N, mps): {str(e).splitlines()[0]}") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this PyTorch has no usable CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                             "device(s) here")
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    raise ValueError(f"--device {device}: not available in this PyTorch build")


STORAGE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


def check_storage_url(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` is a database URL Optuna can open,
    ``SCHEME[+DRIVER]://...`` with SCHEME one of :data:`STORAGE_SCHEMES` (and DRIVER, if
    named, installed). The message never repeats the URL's password."""
    import importlib.util

    scheme, sep, _ = url.partition("://")
    dialect, _, driver = scheme.partition("+")
    if not sep or dialect.lower() not in STORAGE_SCHEMES:
        shown = scheme if sep else url.split("@")[-1]
        raise ValueError(f"--storage {shown!r}: not a database URL; use sqlite:///PATH or "
                         "postgresql://USER:PASS@HOST/DB (schemes: "
                         f"{', '.join(STORAGE_SCHEMES)})")
    if driver and (not driver.isidentifier() or importlib.util.find_spec(driver) is None):
        raise ValueError(f"--storage {scheme}://...: the database driver {driver!r} is not "
                         "installed")


def check_output(args: argparse.Namespace) -> None:
    """The output named by ``--out`` can be written as the command will write it."""
    out = getattr(args, "out", None)
    if out is None:
        return
    out = Path(out)
    if args.command in FILE_OUTPUTS:
        if out.is_dir():
            raise OutputError(f"--out {out} is a directory; give a file name such as "
                              f"{out / ('model.pt' if args.command == 'train' else 'model.ebnn')}")
        check_writable(out)
        if args.command == "train":
            from .train import last_path

            check_writable(last_path(out))
    elif args.command in DIR_OUTPUTS and out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a directory")


@contextlib.contextmanager
def output_guard(args: argparse.Namespace, locked: tuple[str, ...]) -> Iterator[None]:
    """Check the options and the output, then hold the output's lock for the command."""
    check_numbers(args)
    if getattr(args, "device", None) is not None and args.command == "train":
        check_device(args.device)
    if args.command == "search" and getattr(args, "storage", None) is not None:
        check_storage_url(args.storage)
    check_output(args)
    out = getattr(args, "out", None)
    # Under torchrun every rank runs the same command line, and only rank 0 writes files.
    if args.command in locked and out is not None and os.environ.get("RANK", "0") == "0":
        with output_lock(out):
            yield
    else:
        yield


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` (as Ctrl-C does), so
    ``finally`` blocks run, temporary files go and the lock is released. A second SIGTERM
    kills at once (Python runs the handler only between bytecodes, so a process stuck in
    a long native call would otherwise wait). Not in the processes of a torchrun launch,
    whose ranks block in collectives and which torchrun stops itself."""
    if threading.current_thread() is not threading.main_thread() or \
            os.environ.get("WORLD_SIZE", "1") != "1":
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
