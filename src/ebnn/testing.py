"""Helpers for tests and benchmarks: random networks with realistic batch-norm state."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .deploy import IntegerModel
from .model import BNN, build_model
from .spec import ModelSpec


def calibrated_random_model(spec: ModelSpec | dict[str, Any], seed: int = 0,
                            offset: list[int] | None = None, scale: float = 50.0,
                            negative_fraction: float = 0.3, constant_channels: int = 0) -> BNN:
    """An untrained network whose batch norms hold running statistics of random inputs.

    Batch-norm scales are random with ``negative_fraction`` of them negative (flipped
    comparisons), and the first ``constant_channels`` channels of every batch norm get a
    zero scale (constant outputs), so folding meets every case of docs/FORMAT.md section 6.
    """
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c, h, w = spec.input_shape
    if offset is None:
        offset = torch.randint(0, 256, (c,), generator=gen).tolist()
    model = build_model(spec, offset, scale)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            n = mod.num_features
            mag = torch.rand(n, generator=gen) + 0.2
            sign = torch.where(torch.rand(n, generator=gen) < negative_fraction, -1.0, 1.0)
            with torch.no_grad():
                mod.weight.copy_(mag * sign)
                mod.weight[:constant_channels] = 0.0
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randint(0, 256, (64, c, h, w), dtype=torch.uint8, generator=gen))
    return model.eval()


def random_inputs(spec: ModelSpec, n: int, seed: int = 0) -> np.ndarray:
    """Uniform random uint8 inputs in data-set layout (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *spec.input_shape), dtype=np.uint8)


def random_and_extreme_inputs(model: IntegerModel, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random inputs, then the extremes (all 0, all 255, all at the offsets)."""
    rng = np.random.default_rng(seed)
    c, h, w = model.input_shape
    x = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    offsets = np.clip(model.input_offset, 0, 255).astype(np.uint8)
    extremes = np.stack([np.zeros((c, h, w), np.uint8), np.full((c, h, w), 255, np.uint8),
                         np.broadcast_to(offsets[:, None, None], (c, h, w))])
    return np.concatenate([x, extremes])


def conv_block(filters: int, kernel: int | list[int] = 3, padding: int | str | list = 0,
               pool: int | list[int] = 1) -> dict:
    """A ``conv`` block of a spec, as the shape tables of the tests write them; kernel,
    padding and pool are an integer (square) or ``[h, w]`` (rectangular)."""
    return {"type": "conv", "filters": filters, "kernel": kernel, "padding": padding,
            "pool": pool}


def random_integer_model(shape: list[int], classes: int, blocks: list[dict], seed: int = 0,
                         constant: int = 1, scale: float = 50.0) -> IntegerModel:
    """The folded :func:`calibrated_random_model` of ``blocks`` plus an output block."""
    from .fold import fold

    spec = ModelSpec.from_dict({"name": "t", "input_shape": shape, "classes": classes,
                                "blocks": [*blocks, {"type": "output"}]})
    return fold(calibrated_random_model(spec, seed=seed, constant_channels=constant,
                                        scale=scale))


# A program around a C export: prints the header's figures, then per input record of the
# file named by argv[1] the prediction and the scores (the tests parse it).
C_RUNNER = r"""
#include <stdio.h>
#include "{name}_model.h"

int main(int argc, char **argv)
{{
    static uint8_t x[{up}_INPUT_BYTES];
    int32_t s[{up}_CLASSES];
    int j;
    FILE *f = fopen(argv[1], "rb");
    (void)argc;
    printf("%d %d %d %d %d %d\n", {up}_FLASH_BYTES, {up}_RAM_BYTES, {up}_STACK_BYTES,
           {up}_INPUT_BYTES, {up}_CLASSES, {up}_SCORE_SHIFT);
    while (fread(x, 1, sizeof x, f) == sizeof x) {{
        printf("%d", {name}_predict(x));
        {name}_scores(x, s);
        for (j = 0; j < {up}_CLASSES; j++) {{
            printf(" %ld", (long)s[j]);
        }}
        printf("\n");
    }}
    fclose(f);
    return 0;
}}
"""


def build_c_runner(export: Any, flags: list[str]) -> Path:
    """Compile :data:`C_RUNNER` with an export (:class:`ebnn.codegen.ExportResult`)."""
    src = export.out_dir / "runner.c"
    src.write_text(C_RUNNER.format(name=export.name, up=export.name.upper()))
    exe = export.out_dir / "runner"
    subprocess.run(["gcc", *flags, "-I", str(export.out_dir), str(export.source), str(src),
                    "-o", str(exe)], check=True, capture_output=True, text=True, timeout=120)
    return exe


def emulation_available(target: str) -> bool:
    """True when ``target``'s cross-compiler and emulator are installed here."""
    from .targets import emulation_missing

    return emulation_missing(target) is None


def check_emulated(model: IntegerModel, x: np.ndarray, target: str,
                   build: tuple[int, str, int, str], out_dir: Path) -> None:
    """Export ``model`` with ``build`` = (word bits, mode, early-exit interval in words or 0
    for none, popcount variant: a key of :data:`ebnn.targets.popcount.VARIANTS`),
    cross-compile it for ``target``, run ``x`` in the emulator and assert the engine's
    scores (NumPy reference), no compiler warnings and a measured stack within the header's
    bound."""
    from .codegen import export_c
    from .engine import scores, to_hwc
    from .targets import Harness, build_harness, run
    from .targets.popcount import VARIANTS

    word_bits, mode, every, popcount = build
    export = export_c(model, out_dir / "src", word_bits=word_bits, modes=mode,
                      early_exit=bool(every), early_exit_every=every or None, target=target)
    harness = Harness(f"{export.name}_scores(ebnn_input, ebnn_output);",
                      export.memory.input_bytes, model.classes,
                      includes=(f"{export.name}_model.h",), batch=len(x))
    app = build_harness(harness, [export.source], [export.out_dir], target, out_dir / "app",
                        defines={VARIANTS[popcount]: None})
    assert app.warnings == "", app.warnings
    results = run(app, [img.tobytes() for img in to_hwc(model, x)])
    np.testing.assert_array_equal(np.array([r.outputs for r in results]),
                                  scores(model, x, backend="numpy"))
    assert max(r.stack_bytes for r in results) <= export.memory.stack_bytes


def cli_error_line(capsys: Any, argv: list[str]) -> str:
    """Run ``ebnn argv`` in-process, assert exit 2 with exactly one ``ebnn: error:`` line
    on stderr (``capsys``: pytest's fixture) and return that line."""
    from .cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebnn: error: "), captured.err
    return lines[0]
