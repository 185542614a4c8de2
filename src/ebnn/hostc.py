"""Compile a model's C export on the host and call it from Python (emlearn style).

    >>> cm = ebnn.hostc.convert(fold(trained), word_bits=32)
    >>> cm.predict(x)        # x: uint8 (N, C, H, W), like ebnn.engine.predict
    >>> cm.scores(x)         # int64 (N, classes), bit for bit ebnn.engine.scores
    >>> cm.memory.ram_bytes  # the plan the header states
    >>> cm.save("build/c")   # the export files, ready for a firmware build

:func:`convert` writes the export (:func:`ebnn.codegen.export_c`) into a temporary
directory, compiles it with ``gcc -O3 -march=native -DEBNN_POPCOUNT_BUILTIN -fPIC -shared``
(``HOST_CFLAGS``: the library only ever runs on the machine that built it, so it may use
every instruction this CPU has, the popcount instruction above all) together with a small
batch shim (``<name>_predict_batch``, only in the host library, never in the export) and
loads it with ctypes. The shared library and its directory live as long as the object.
:func:`compile_check` compiles an export directory with given flags (the tests use strict
warnings and sanitizers).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .codegen import ExportResult, export_c
from .deploy import IntegerModel
from .early_exit_auto import Setting
from .engine import to_hwc
from .memory import MemoryPlan

CC = os.environ.get("CC", "gcc")
HOST_CFLAGS = ("-O3", "-march=native", "-DEBNN_POPCOUNT_BUILTIN")
STRICT_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Wconversion", "-Wshadow",
                "-Werror")

_SHIM = """/* Host-only batch entry point for ebnn.hostc (not part of the export). */
#include <stddef.h>
#include "{name}_model.h"

int {name}_predict_batch(const uint8_t *x, int n, int32_t *labels, int32_t *scores)
{{
    int i;
    for (i = 0; i < n; i++) {{
        const uint8_t *one = x + (size_t)i * {up}_INPUT_BYTES;
        if (labels) {{
            labels[i] = {name}_predict(one);
        }}
        if (scores) {{
            {name}_scores(one, scores + (size_t)i * {up}_CLASSES);
        }}
    }}
    return n;
}}
"""


class CompileError(RuntimeError):
    """The C compiler rejected the generated code; the message holds its output."""


def _run_cc(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"{' '.join(args)}\n{proc.stdout}{proc.stderr}")


def compile_check(out_dir: str | Path, flags: Sequence[str] = STRICT_FLAGS,
                  compiler: str = CC) -> list[Path]:
    """Compile every ``.c`` file of an export directory to an object file with ``flags``.

    Returns the object files; raises :class:`CompileError` with the compiler's messages
    (a warning is an error under the default strict flags).
    """
    out_dir = Path(out_dir)
    objects = []
    for src in sorted(out_dir.glob("*.c")):
        obj = src.with_suffix(".o")
        _run_cc([compiler, *flags, "-I", str(out_dir), "-c", str(src), "-o", str(obj)])
        objects.append(obj)
    if not objects:
        raise CompileError(f"no C sources in {out_dir}")
    return objects


def _as_integer_model(model: Any) -> IntegerModel:
    if isinstance(model, IntegerModel):
        return model
    if isinstance(model, str | Path):
        from .fold import load_integer_model

        return load_integer_model(model)
    from .fold import fold
    from .model import BNN

    if isinstance(model, BNN):
        return fold(model.eval())
    raise TypeError(f"cannot convert {type(model).__name__}: pass an IntegerModel, a BNN, "
                    "or a .ebnn / checkpoint path")


@dataclass
class CompiledModel:
    """A model's C export compiled into a host shared library (see :func:`convert`)."""

    model: IntegerModel
    export: ExportResult
    library: Path
    _lib: ctypes.CDLL
    _tmp: tempfile.TemporaryDirectory | None
    _options: dict[str, Any]

    @property
    def memory(self) -> MemoryPlan:
        return self.export.memory

    @property
    def name(self) -> str:
        return self.export.name

    def _batch(self, x: np.ndarray, want_scores: bool) -> np.ndarray:
        hwc = np.ascontiguousarray(to_hwc(self.model, x))
        n = len(hwc)
        out = np.zeros((n, self.model.classes) if want_scores else n, dtype=np.int32)
        fn = getattr(self._lib, f"{self.name}_predict_batch")
        ptr = out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        fn(hwc.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), ctypes.c_int(n),
           None if want_scores else ptr, ptr if want_scores else None)
        return out.astype(np.int64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class per input, from ``<name>_predict``; ``x`` is uint8 (N, C, H, W) or (N, F)."""
        return self._batch(x, want_scores=False)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Fixed-point scores, int64 (N, classes), from ``<name>_scores``."""
        return self._batch(x, want_scores=True)

    def save(self, out_dir: str | Path) -> ExportResult:
        """Write the export (``.c``, ``.h``, runtime) to ``out_dir``; no host shim."""
        return export_c(self.model, out_dir, **self._options)

    def close(self) -> None:
        """Delete the temporary build directory (the library stays loaded)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def convert(model_or_path: Any, *, word_bits: int = 32,
            modes: str | Sequence[str | None] | Mapping[int, str] | None = None,
            early_exit: Setting = False, name: str | None = None,
            cflags: Sequence[str] = HOST_CFLAGS,
            build_dir: str | Path | None = None) -> CompiledModel:
    """Generate C for a model, compile it on the host and load it.

    ``model_or_path``: an :class:`~ebnn.deploy.IntegerModel`, a trained
    :class:`~ebnn.model.BNN` (folded here), or a path to a ``.ebnn`` file or a training
    checkpoint. ``word_bits``, ``modes``, ``early_exit`` (off by default: the host has
    no exact count for ``"auto"`` to decide by) and ``name`` are those of
    :func:`ebnn.codegen.export_c`. ``build_dir`` keeps the build there instead of in a
    temporary directory. ``cflags`` replaces :data:`HOST_CFLAGS` (``("-O2",)`` gives the
    portable build).
    """
    if shutil.which(CC) is None:
        raise CompileError(f"C compiler {CC!r} not found (set CC)")
    imodel = _as_integer_model(model_or_path)
    options: dict[str, Any] = {"word_bits": word_bits, "modes": modes,
                               "early_exit": early_exit, "name": name}
    tmp = None
    if build_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ebnn-c-")
        build_dir = tmp.name
    build = Path(build_dir)
    export = export_c(imodel, build / "export", **options)
    shim = build / f"{export.name}_batch.c"
    shim.write_text(_SHIM.format(name=export.name, up=export.name.upper()))
    library = build / f"lib{export.name}.so"
    # -Bsymbolic: calls inside the library stay inside it (several models may be loaded).
    _run_cc([CC, "-std=c99", *cflags, "-fPIC", "-shared", "-Wl,-Bsymbolic", "-I",
             str(export.out_dir), str(export.source), str(shim), "-o", str(library)])
    lib = ctypes.CDLL(str(library))
    fn = getattr(lib, f"{export.name}_predict_batch")
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(ctypes.c_uint8), ctypes.c_int,
                   ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)]
    return CompiledModel(imodel, export, library, lib, tmp, options)
