"""Run ATmega328P harness ELFs in simavr, measuring exact cycles and peak stack.

    from ebnn.targets import Harness, build_harness, run_avr
    res = build_harness(Harness("ebnn_ret = f(ebnn_input);", 16, 1), ["f.c"], [],
                        "atmega328p", "build/avr")
    results = run_avr(res.elf, [b"...", b"..."])
    results[0].outputs, results[0].ret, results[0].count, results[0].stack_bytes

The ELF must come from :func:`ebnn.targets.harness.build_harness`: its ``main`` runs
``ebnn_run`` on a batch of inputs stored in flash. :func:`run_avr` writes each batch
into a copy of the ELF (``ebnn_inputs[][]`` and ``ebnn_count``, located by symbol) and
runs the Debian ``simavr`` binary on it (``simavr -m atmega328p -f 16000000``); one
process handles a whole batch. The harness prints over UART0, which simavr copies to
stderr (green, one log line per text line, control characters shown as ``.``):

    C <rawA> <isrA> <rawB> <isrB>       calibration, once
    I <index> <raw> <isr> <ret>         per input: the timed run, then one line per output
    O <output[j]>
    S <stack> <free>                    the second run: stack used, painted bytes
    E                                   end; the CPU then sleeps with interrupts off,
                                        which makes simavr exit

(all numbers 32-bit hex).

**Cycles.** Timer1 runs at the CPU clock with no prescaler around an indirect call of
``ebnn_run``; its overflow interrupt counts the high 16 bits. ``raw`` thus holds the
call, a constant overhead ``ovh`` (timer start/stop, the call instruction) and ``isr``
interrupt runs of a constant cost ``k``. The harness first times two functions that are
``__builtin_avr_delay_cycles(D)`` plus ``ret``, with ``D = A`` (no overflow) and ``D = B``
(three overflows), so ``ovh = rawA - A - 4`` and ``k = (rawB - ovh - B - 4) / isrB``;
then ``cycles = raw - ovh - isr * k`` exactly (with simavr 1.6, ``k`` is 40; the tests
check a known delay and a loop crossing many overflows). The count runs from
``ebnn_run``'s first instruction through its ``ret`` (4 cycles), like the Cortex-M
instruction count, in simavr's instruction timings (those of the datasheet).

**Stack.** A second run of ``ebnn_run`` per input, with interrupts off, paints the RAM
between ``__heap_start`` (end of ``.bss``) and the stack pointer with ``0xA5`` and finds
the lowest byte the call changed. The figure includes the 2-byte return address the
call pushes (the Cortex-M ``bl`` pushes nothing). Like any painting method it would miss
the deepest byte(s) if the call happened to store the paint value there. ``outputs`` and
``ret`` come from the first, timed run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from elftools.elf.elffile import ELFFile

from .harness import AVR_DELAY_A, AVR_DELAY_B
from .toolchains import TARGETS, RunResult, read_symbols

AVR_RET_CYCLES = 4  # ret on a device with a 16-bit program counter
_CHUNK = re.compile(r"\x1b\[32m(.*?)\n\x1b\[0m", re.S)


class SimavrError(RuntimeError):
    """simavr is missing, failed, timed out, or the harness output is malformed."""


def simavr_path() -> str:
    """The simavr binary: ``$EBNN_SIMAVR`` or ``simavr`` on the ``PATH``."""
    path = os.environ.get("EBNN_SIMAVR") or shutil.which("simavr")
    if not path:
        raise SimavrError("simavr not found (install the Debian package simavr)")
    return path


def _file_offsets(elf: Path, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """File offset and size of flash symbols (``ebnn_inputs``, ``ebnn_count``)."""
    syms = read_symbols(elf)
    out = {}
    with open(elf, "rb") as f:
        sections = [s for s in ELFFile(f).iter_sections() if s["sh_type"] == "SHT_PROGBITS"]
        for name in names:
            if name not in syms:
                raise SimavrError(f"{elf} lacks {name}: not an ebnn AVR harness")
            addr, size = syms[name]
            for s in sections:
                if s["sh_addr"] <= addr < s["sh_addr"] + s["sh_size"] and s["sh_flags"] & 2:
                    out[name] = (s["sh_offset"] + addr - s["sh_addr"], size)
                    break
            else:
                raise SimavrError(f"{name} is in no loadable section of {elf}")
    return out


def _parse(text: str, n_inputs: int, n_out: int) -> list[RunResult]:
    """Turn the harness's UART text into results (see the module docstring)."""
    lines = "".join(_CHUNK.findall(text)).split(".")
    calib: list[int] | None = None
    results: list[RunResult] = []
    ended = False
    i = 0
    while i < len(lines):
        fields = lines[i].split()
        i += 1
        if not fields:
            continue
        tag, vals = fields[0], [int(v, 16) for v in fields[1:]]
        if tag == "C" and len(vals) == 4:
            raw_a, isr_a, raw_b, isr_b = vals
            ovh = raw_a - AVR_DELAY_A - AVR_RET_CYCLES
            isr_cost, rem = divmod(raw_b - ovh - AVR_DELAY_B - AVR_RET_CYCLES, max(isr_b, 1))
            if isr_a != 0 or isr_b == 0 or rem != 0 or ovh < 0:
                raise SimavrError(f"inconsistent timer calibration {vals}")
            calib = [ovh, isr_cost]
        elif tag == "I" and len(vals) == 4 and calib is not None:
            index, raw, isr, ret = vals
            body = [lines[k].split() if k < len(lines) else [] for k in range(i, i + n_out + 1)]
            i += n_out + 1
            if (any(len(f) != 2 or f[0] != "O" for f in body[:n_out])
                    or len(body[-1]) != 3 or body[-1][0] != "S"):
                raise SimavrError(f"malformed output after input {index}: {body}")
            stack, free = (int(v, 16) for v in body[-1][1:])
            if stack >= free:
                raise SimavrError(f"input {index}: the stack overflowed ({free} bytes free)")
            if index != len(results):
                raise SimavrError(f"result {index} out of order")
            results.append(RunResult(
                tuple(_s32(int(f[1], 16)) for f in body[:n_out]), _s32(ret),
                raw - calib[0] - isr * calib[1], "cycles", stack))
        elif tag == "E":
            ended = True
        else:
            raise SimavrError(f"unexpected harness output {lines[i - 1]!r}")
    if not ended or len(results) != n_inputs:
        raise SimavrError(f"harness stopped after {len(results)} of {n_inputs} inputs:\n"
                          + text[-2000:])
    return results


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x8000_0000 else v


def run_avr(elf: str | Path, inputs: Sequence[bytes], output_len: int | None = None, *,
            timeout: float = 600.0) -> list[RunResult]:
    """Run the harness ``elf`` on each input in simavr; one process per batch.

    Inputs shorter than ``ebnn_input[]`` are zero-padded. ``output_len`` must match the
    harness (default: the size of ``ebnn_output[]``). ``timeout`` is per batch, in
    seconds. Results carry exact ``cycles`` and ``stack_bytes`` (see the module doc).
    """
    elf = Path(elf)
    syms = read_symbols(elf)
    in_len = syms["ebnn_input"][1]
    n_out = syms["ebnn_output"][1] // 4
    if output_len is not None and output_len != n_out:
        raise ValueError(f"output_len {output_len} but the harness has {n_out} outputs")
    where = _file_offsets(elf, ["ebnn_inputs", "ebnn_count"])
    batch = where["ebnn_inputs"][1] // in_len
    image = bytearray(elf.read_bytes())
    tgt = TARGETS["atmega328p"]
    cmd = [simavr_path(), "-m", "atmega328p", "-f", str(tgt.clock_hz)]
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="ebnn-avr-") as tmp:
        path = Path(tmp) / elf.name
        for start in range(0, len(inputs), batch):
            chunk = inputs[start:start + batch]
            off, _ = where["ebnn_inputs"]
            for k, x in enumerate(chunk):
                if len(x) > in_len:
                    raise ValueError(f"input of {len(x)} bytes, ebnn_input holds {in_len}")
                image[off + k * in_len: off + (k + 1) * in_len] = bytes(x).ljust(in_len, b"\0")
            count_off, _ = where["ebnn_count"]
            image[count_off:count_off + 2] = len(chunk).to_bytes(2, "little")
            path.write_bytes(image)
            try:
                proc = subprocess.run([*cmd, str(path)], capture_output=True, text=True,
                                      errors="replace", timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise SimavrError(f"simavr timed out after {timeout} s on {elf}") from e
            if proc.returncode != 0:
                raise SimavrError(f"simavr exited {proc.returncode}: {proc.stderr[-2000:]}")
            results += _parse(proc.stderr, len(chunk), n_out)
    return results
