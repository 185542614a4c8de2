"""The memory plan: figures by hand, spec vs folded model, modes, and the stack bounds
checked against gcc -fstack-usage on the host and (when installed) Cortex-M, AVR and
RISC-V."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ebnn.codegen import export_c
from ebnn.fold import fold
from ebnn.memory import (
    STACK_BOUNDS,
    STACK_BYTES,
    arch_of,
    first_layer_tables,
    plan_memory,
    resolve_modes,
)
from ebnn.spec import ModelSpec, load_spec
from ebnn.testing import calibrated_random_model


def test_ebnn_mnist_by_hand():
    spec = load_spec("ebnn-mnist")  # conv 32 3x3 same pool 2, twice, then 10 classes
    plan = plan_memory(spec, word_bits=32)
    l0, l1, out = plan.layers
    assert (l0.weight_bytes, l0.threshold_bytes, l0.flip_bytes) == (32 * 9 * 4, 128, 4)
    assert (l0.out_shape, l0.output_bytes, l0.buffer) == ((14, 14, 32), 14 * 14 * 4, 0)
    assert (l1.weight_bytes, l1.output_bytes, l1.buffer) == (32 * 9 * 4, 7 * 7 * 4, 1)
    assert (out.weight_bytes, out.scale_bytes, out.output_bytes) == (10 * 49 * 4, 80, 40)
    assert plan.offset_bytes == 2 and plan.flash_pad_bytes == 2
    assert plan.flash_bytes == 1152 + 132 + 1152 + 132 + 1960 + 80 + 2 + 2 == 4612
    # The scores (layer 2 -> buffer 0) share buffer 0 with layer 0's 784 bytes.
    assert plan.score_buffer == 0 and plan.buffer_bytes == (784, 196)
    assert plan.ram_bytes == 980 and plan.input_bytes == 784
    assert plan.stack_bytes == STACK_BYTES == max(STACK_BOUNDS.values())

    mat = plan_memory(spec, word_bits=32, modes="materialized")
    assert mat.buffer_bytes == (28 * 28 * 4, 14 * 14 * 4)  # the pre-pool maps
    assert [r.map_bytes for r in mat.layers] == [3136, 784, 0]
    assert mat.flash_bytes == plan.flash_bytes

    byte = plan_memory(spec, word_bits=8)  # one input channel: 1 byte per first-layer tap
    assert byte.layers[0].weight_bytes == 32 * 9 and byte.flash_bytes == 3748


def test_first_layer_tables():
    """The first conv layer's subset-sum tables: group sizes by the cost rule; entry byte
    offsets kept in RAM only beyond 32 channels (else constants in the code), in one byte
    while the tables fit 256 bytes; sizes rounded to 4 bytes."""
    t = first_layer_tables((3, 3), 1, 32)  # ebnn-mnist's first layer
    assert t.values == 9 and t.groups == (3, 3, 3)
    assert (t.table_entries, t.table_bytes, t.index_bytes) == (24, 48, 1)
    assert t.group_base == [0, 8, 16]
    assert not t.indexed and t.scratch_bytes == 48
    t = first_layer_tables((3, 3), 1, 33)
    assert t.indexed and t.scratch_bytes == 48 + 33 * 3 + 1  # rounded to 4
    # 8 channels: 2-value groups cost 2 * 13 + 8 * 5 = 66 entries + lookups, as much as
    # 3-value groups (2 * 21 + 8 * 3), and have the smaller tables.
    assert first_layer_tables((3, 3), 1, 8).groups == (2, 2, 2, 2, 1)
    big = first_layer_tables((3, 3), 3, 128)  # binarynet-cifar10: 27 values
    assert big.groups == (5, 5, 5, 5, 5, 2) and big.table_bytes == 2 * (5 * 32 + 4)
    assert big.index_bytes == 2 and big.scratch_bytes == -(-(328 + 128 * 6 * 2) // 4) * 4
    for kernel, c, o in (((2, 2), 1, 1), ((5, 5), 2, 7), ((1, 1), 4, 40)):
        t = first_layer_tables(kernel, c, o)
        assert sum(t.groups) == kernel[0] * kernel[1] * c and max(t.groups) <= 5
        assert t.scratch_bytes % 4 == 0
        assert t.scratch_bytes >= t.table_bytes + o * len(t.groups) * t.index_bytes * \
            t.indexed
    # The plan puts them in buffer 1, which grows only if they are larger than its maps.
    plan = plan_memory(load_spec("ebnn-mnist"), 32)
    assert plan.scratch_bytes == 48 <= plan.buffer_bytes[1]
    digits = plan_memory(load_spec("digits"), 8)  # buffer 1 would hold 8 bytes of bits
    assert digits.scratch_bytes == 48 == digits.buffer_bytes[1]


def test_spec_and_folded_model_give_the_same_plan():
    spec = ModelSpec.from_dict({
        "name": "m", "input_shape": [3, 9, 7], "classes": 4, "blocks": [
            {"type": "conv", "filters": 5, "kernel": 3, "padding": 1, "pool": 2,
             "mode": "materialized"},
            {"type": "conv", "filters": 33, "kernel": 2, "padding": 1},
            {"type": "dense", "units": 7}, {"type": "output"}]})
    model = fold(calibrated_random_model(spec))
    for word_bits in (8, 16, 32):
        assert plan_memory(spec, word_bits).to_dict() == plan_memory(model, word_bits).to_dict()
    plan = plan_memory(model, 8)
    assert plan.modes == ["materialized", "fused", "-", "-"]
    assert plan.score_buffer == 1 and plan.buffer_bytes[1] % 4 == 0
    assert plan.flash_bytes % 4 == 0
    table = plan.to_table()
    assert "| 1 | conv | fused | 4x3x5 | 5x4x33 |" in table and f"RAM {plan.ram_bytes} B" in table


def test_single_output_layer_and_score_buffer_rounding():
    spec = ModelSpec.from_dict({"name": "t", "input_shape": [5], "classes": 3,
                                "blocks": [{"type": "output"}]})
    plan = plan_memory(spec, 8)
    assert plan.buffer_bytes == (12, 0) and plan.ram_bytes == 12
    assert plan.flash_bytes == 3 * 1 + 24 + 10 + 3  # weights (5 bits: 1 byte), A+Bias, offsets, pad
    spec = ModelSpec.from_dict({"name": "t", "input_shape": [5], "classes": 2,
                                "blocks": [{"type": "dense", "units": 70},
                                           {"type": "dense", "units": 9}, {"type": "output"}]})
    plan = plan_memory(spec, 8)
    # buffer 0 holds 70 bits (9 bytes) and the 2 scores (8 bytes): 9 rounded up to 12;
    # buffer 1's 9 bits (2 bytes) too, to 4.
    assert plan.buffer_bytes == (12, 4) and plan.score_buffer == 0


def test_modes_resolution():
    spec = load_spec("small-conv")  # conv, conv, dense, output
    assert resolve_modes(spec) == ["fused", "fused", "-", "-"]
    assert resolve_modes(spec, "materialized") == ["materialized", "materialized", "-", "-"]
    assert resolve_modes(spec, {1: "materialized"}) == ["fused", "materialized", "-", "-"]
    assert resolve_modes(spec, [None, "materialized", None, None])[1] == "materialized"
    with pytest.raises(ValueError, match="entries"):
        resolve_modes(spec, ["fused"])
    with pytest.raises(ValueError, match="no layer 7"):
        resolve_modes(spec, {7: "fused"})
    with pytest.raises(ValueError, match="unknown mode"):
        resolve_modes(spec, "eager")
    with pytest.raises(ValueError, match="word_bits"):
        plan_memory(spec, word_bits=12)
    with pytest.raises(TypeError):
        plan_memory("small-conv")  # type: ignore[arg-type]


def test_arch_of_targets():
    assert [arch_of(t) for t in ("atmega328p", "avr", "cortex-m0plus", "cortex-m4", "arm",
                                 "host", None)] == ["avr", "avr", "arm", "arm", "arm", "host",
                                                    None]
    with pytest.raises(ValueError):
        arch_of("z80")
    spec = load_spec("digits")
    assert plan_memory(spec, target="atmega328p").stack_bytes == STACK_BOUNDS["avr"]
    assert plan_memory(spec, target="cortex-m4").stack_bytes == STACK_BOUNDS["arm"]


# ---- the stack bound --------------------------------------------------------------------
COMPILERS = {  # arch: (compiler, flags, optimisation levels)
    "host": ("gcc", [], ["-O1", "-O2", "-Os"]),
    "arm-m0plus": ("arm-none-eabi-gcc", ["-mcpu=cortex-m0plus", "-mthumb"], ["-Os", "-O2"]),
    "arm-m4": ("arm-none-eabi-gcc", ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"],
               ["-Os", "-O2"]),
    "avr": ("avr-gcc", ["-mmcu=atmega328p"], ["-Os", "-O2"]),
    "riscv-rv32ec": ("riscv64-unknown-elf-gcc", ["-march=rv32ec", "-mabi=ilp32e",
                                                 "--specs=picolibc.specs"], ["-Os", "-O2"]),
    "riscv-rv32imc": ("riscv64-unknown-elf-gcc", ["-march=rv32imc", "-mabi=ilp32",
                                                  "--specs=picolibc.specs"], ["-Os", "-O2"]),
}
STACK_MODELS = {
    "mixed": {"name": "mixed", "input_shape": [2, 9, 7], "classes": 4, "blocks": [
        {"type": "conv", "filters": 5, "kernel": 3, "padding": 1, "pool": 2},
        {"type": "conv", "filters": 33, "kernel": 3},
        {"type": "dense", "units": 40}, {"type": "output"}]},
    "mnist": "ebnn-mnist",
    # 5 x 5 kernels over 4 input channels, 40 channels: long border code, looped channels
    "k5": {"name": "k5", "input_shape": [4, 9, 9], "classes": 3, "blocks": [
        {"type": "conv", "filters": 40, "kernel": 5, "padding": 2, "pool": 2},
        {"type": "conv", "filters": 20, "kernel": 3}, {"type": "output"}]},
}
# (word bits, mode, early exit): the largest frames seen come from these.
STACK_CONFIGS = [(8, "fused", True), (16, "materialized", False), (32, "fused", True),
                 (32, "materialized", True)]


@pytest.fixture(scope="module")
def stack_exports(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("stack")
    sources = []
    for name, spec in STACK_MODELS.items():
        model = fold(calibrated_random_model(load_spec(spec)))
        for word_bits, mode, early_exit in STACK_CONFIGS:
            r = export_c(model, root / f"{name}{word_bits}{mode}{early_exit}",
                         word_bits=word_bits, modes=mode, early_exit=early_exit)
            sources.append(r.source)
    return sources


def deepest_chain(callgraph: str) -> int:
    """Bytes of the deepest call chain from ``*_predict`` in gcc's -fcallgraph-info=su
    output (VCG text); a cycle (recursion) raises."""
    size: dict[str, int] = {}
    calls: dict[str, set[str]] = {}
    for title, label in re.findall(r'node: \{ title: "([^"]+)" label: "([^"]*)"', callgraph):
        found = re.search(r"(\d+) bytes", label)
        size[title] = int(found.group(1)) if found else 0  # external: libgcc helpers
    for src, dst in re.findall(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"',
                               callgraph):
        calls.setdefault(src, set()).add(dst)

    def depth(node: str, path: tuple[str, ...]) -> int:
        if node in path:
            raise AssertionError(f"recursion through {node}")
        return size.get(node, 0) + max((depth(n, (*path, node)) for n in calls.get(node, ())),
                                       default=0)

    return max(depth(n, ()) for n in size if n.endswith("_predict"))


def avr_chain(rows: list[list[str]]) -> int:
    """An upper bound on the deepest chain for avr-gcc 5, which has no call graph: the
    layer functions (``<name>_l<i>``) are called one after another from ``scores`` and
    call no layer, so the bound is every other frame plus the largest layer frame."""
    layer = [int(size) for name, size, _ in rows if re.search(r"_l\d+$", name)]
    rest = sum(int(size) for name, size, _ in rows if not re.search(r"_l\d+$", name))
    return rest + max(layer, default=0)


@pytest.mark.parametrize("arch", list(COMPILERS))
def test_stack_usage_within_bound(stack_exports, arch):
    """The deepest call chain from predict (gcc -fcallgraph-info; for avr-gcc 5, which
    lacks it, :func:`avr_chain`) stays within the architecture's bound, no frame is
    unbounded and nothing recurses."""
    cc, flags, levels = COMPILERS[arch]
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    bound = STACK_BOUNDS[arch.split("-")[0]]
    graph = ["-fcallgraph-info=su"] if arch != "avr" else []
    worst = 0
    for src in stack_exports:
        for opt in levels:
            obj = src.parent / f"{arch}{opt}.o"
            subprocess.run([cc, *flags, "-std=c99", opt, "-fstack-usage", *graph, "-c",
                            str(src), "-o", str(obj)], check=True, capture_output=True)
            rows = [line.split("\t") for line in obj.with_suffix(".su").read_text().splitlines()]
            assert all(kind in ("static", "dynamic,bounded") for _, _, kind in rows), rows
            if graph:
                used = deepest_chain(obj.with_suffix(".ci").read_text())
            else:
                used = avr_chain(rows)
            worst = max(worst, used)
            assert used <= bound, f"{src.name} {opt}: {used} > {bound} bytes"
    assert worst > bound // 4  # the measurement saw real frames
