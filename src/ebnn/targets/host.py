"""Run a host-built harness natively: a quick correctness check of generated C.

    from ebnn.targets import Harness, build_harness, run_host
    res = build_harness(Harness("ebnn_ret = f(ebnn_input);", 16, 1), ["f.c"], [],
                        "host", "build/host")
    results = run_host(res.elf, [b"...", b"..."])

The host harness reads fixed-size inputs from stdin and prints ``ret out0 out1 ...`` per
input, so one process handles any number of inputs. Results carry no cost figures.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from .toolchains import RunResult


def run_host(exe: str | Path, inputs: Sequence[bytes], input_len: int,
             timeout: float = 600.0) -> list[RunResult]:
    """Run ``exe`` (built by ``build_harness`` for ``host``) on each input.

    ``input_len`` is the harness's input length; shorter inputs are zero-padded.
    """
    if any(len(x) > input_len for x in inputs):
        raise ValueError(f"an input is longer than {input_len} bytes")
    data = b"".join(bytes(x).ljust(input_len, b"\0") for x in inputs)
    proc = subprocess.run([str(exe)], input=data, capture_output=True, timeout=timeout,
                          check=True)
    lines = proc.stdout.decode().splitlines()
    if len(lines) != len(inputs):
        raise RuntimeError(f"{exe} printed {len(lines)} results for {len(inputs)} inputs")
    results = []
    for line in lines:
        ret, *outs = (int(v) for v in line.split())
        results.append(RunResult(tuple(outs), ret))
    return results
