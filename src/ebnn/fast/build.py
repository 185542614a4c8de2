"""Compile the fast engine's C source for this machine, once per ISA, into a cache.

    >>> lib = load_library("avx2")   # compiles on first use, then loads from the cache
    >>> available_isas()             # what this CPU runs, best first
    ['avx512', 'avx2', 'portable']

The C source (``ebnn_fast.c`` and ``ebnn_fast_simd.h``, shipped with the package) is
compiled with ``$CC`` (default ``gcc``) ``-O3 -shared -pthread`` once per instruction set,
with that set's ``-m`` flags, into ``$EBNN_CACHE_DIR/fast`` (default
``~/.cache/ebnn/fast``). Each library's file name holds a hash of the sources, the flags
and the compiler's version, so a changed source or compiler builds afresh, and it is
written atomically (compiled under a temporary name, then renamed), so processes that
build at the same time never load half a file.

Which builds the CPU can run is asked of the portable build (``__builtin_cpu_supports``,
which also checks that the OS saves the vector registers).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("ebnn_fast.c", "ebnn_fast_simd.h")
BASE_FLAGS = ("-std=gnu99", "-O3", "-fPIC", "-shared", "-pthread", "-Wall", "-Wextra", "-g")

# ISA name -> (compiler flags, the CPU architectures it exists on), best first.
ISA_FLAGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "avx512": (("-DEBNN_ISA_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
                "-mavx512vpopcntdq", "-mpopcnt"), ("x86_64", "AMD64")),
    "avx2": (("-DEBNN_ISA_AVX2", "-mavx2", "-mpopcnt"), ("x86_64", "AMD64")),
    "neon": (("-DEBNN_ISA_NEON",), ("aarch64", "arm64")),
    "portable": (("-DEBNN_ISA_PORTABLE",), ()),
}
ISAS = tuple(ISA_FLAGS)


class CompilerUnavailable(RuntimeError):
    """No working C compiler: the fast engine cannot be built here."""


def compiler() -> str:
    return os.environ.get("CC", "gcc")


def cache_dir() -> Path:
    root = os.environ.get("EBNN_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "ebnn"
    return base / "fast"


@cache
def _compiler_version(cc: str) -> str:
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True)
    except OSError as e:
        raise CompilerUnavailable(f"C compiler {cc!r} cannot run: {e.strerror}") from e
    if proc.returncode != 0:
        raise CompilerUnavailable(f"C compiler {cc!r} failed: {proc.stderr.strip()}")
    return proc.stdout


def _flags(isa: str) -> list[str]:
    if isa not in ISA_FLAGS:
        raise ValueError(f"unknown ISA {isa!r}: one of {', '.join(ISAS)}")
    return [*BASE_FLAGS, *ISA_FLAGS[isa][0]]


def library_path(isa: str) -> Path:
    """Where the build of ``isa`` for the current sources, flags and compiler lives."""
    cc = compiler()
    if shutil.which(cc) is None:
        raise CompilerUnavailable(f"C compiler {cc!r} not found (set CC)")
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((SOURCE_DIR / name).read_bytes())
    h.update(" ".join([cc, *_flags(isa)]).encode())
    h.update(_compiler_version(cc).encode())
    return cache_dir() / f"libebnn_fast_{isa}_{h.hexdigest()[:16]}.so"


def build(isa: str) -> Path:
    """Compile the library for ``isa`` unless the cache holds it; returns its path."""
    path = library_path(isa)
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        out_dir = path.parent
    except OSError:  # an unwritable cache: build into the temporary directory instead
        out_dir = Path(tempfile.gettempdir()) / "ebnn-fast"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / path.name
        if path.exists():
            return path
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        args = [compiler(), *_flags(isa), str(SOURCE_DIR / "ebnn_fast.c"), "-o", tmp]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompilerUnavailable(f"{' '.join(args)} failed:\n{proc.stderr}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


@cache
def load_library(isa: str) -> ctypes.CDLL:
    """The compiled engine for ``isa``, loaded (built first if needed)."""
    lib = ctypes.CDLL(str(build(isa)))
    lib.ebnn_fast_scores.restype = ctypes.c_int
    lib.ebnn_fast_scores.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_void_p, ctypes.c_int]
    lib.ebnn_fast_profile.restype = ctypes.c_int
    lib.ebnn_fast_profile.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_void_p]
    lib.ebnn_fast_bgemm.restype = ctypes.c_int
    lib.ebnn_fast_bgemm.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                    ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.c_void_p, ctypes.c_int]
    lib.ebnn_fast_lanes.restype = ctypes.c_int
    lib.ebnn_fast_cpu_has.restype = ctypes.c_int
    lib.ebnn_fast_cpu_has.argtypes = [ctypes.c_char_p]
    return lib


@cache
def available_isas() -> tuple[str, ...]:
    """The ISAs this machine can run, best first (``portable`` always last)."""
    probe = load_library("portable")
    arch = platform.machine()
    return tuple(isa for isa, (_, arches) in ISA_FLAGS.items()
                 if (not arches or arch in arches) and probe.ebnn_fast_cpu_has(isa.encode()))


def select_isa(isa: str | None = None) -> str:
    """``isa`` if given, else ``$EBNN_FAST_ISA``, else the best this CPU runs."""
    choice = isa or os.environ.get("EBNN_FAST_ISA") or None
    have = available_isas()
    if choice is None:
        return have[0]
    if choice not in ISA_FLAGS:
        raise ValueError(f"unknown fast-engine ISA {choice!r}: one of {', '.join(ISAS)}")
    if choice not in have:
        raise ValueError(f"this CPU cannot run the {choice!r} build of the fast engine "
                         f"(it runs {', '.join(have)})")
    return choice
