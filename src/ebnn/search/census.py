"""Before the search: can anything in the space meet the budget, and what is a good first
candidate?

:func:`census` plans (no training, no build) every single-block candidate of the space and
a few thousand random draws. Adding blocks never lowers peak RAM (the first block's output
stays in a buffer), so the least RAM over the single-block candidates is the least RAM of
the whole space; the least flash is the least over everything planned. When no planned
candidate fits, :func:`check_feasible` raises :class:`~ebnn.search.budget.BudgetError`
naming the smallest footprints. Otherwise the feasible candidate with the most binary
operations (a proxy for capacity) becomes the search's first trial, so that a tight budget
has a strong model from the start.

Flash here uses the stored code-size bound (:data:`~ebnn.search.budget.CODE_BYTES`), also
when a target is given; trials then measure the real build.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..spec import ModelSpec, SpecError
from .budget import Budget, BudgetError, Footprint, best_word_bits, format_bytes, plan_footprint
from .space import SearchSpace, describe


@dataclass
class Planned:
    params: dict[str, Any]
    spec: ModelSpec
    word_bits: int
    footprint: Footprint
    ops: int


@dataclass
class Census:
    """What planning the space found: ``planned`` candidates, how many ``feasible``, the
    least-RAM and least-flash candidates, and the ``seed`` (most operations, feasible)."""

    planned: int
    feasible: int
    least_ram: Planned | None
    least_flash: Planned | None
    seed: Planned | None


def binary_ops(spec: ModelSpec) -> int:
    """Multiply-accumulates of one inference (every conv position, before pooling)."""
    total = 0
    for s in spec.shapes():
        c, h, w = s.in_shape
        o, hc, wc = s.conv_shape
        fan = s.fan_in
        total += o * hc * wc * fan
    return total


def _single_block(space: SearchSpace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    words = space.word_bits if space.search_word_bits else (None,)
    for wb in words:
        extra = {} if wb is None else {"word_bits": wb}
        if "conv" in space.first_layers:
            for f in space.filters:
                for k in space.kernels:
                    for pad in space.paddings:
                        for pool in space.pools:
                            for mode in space.modes:
                                p = {"first": "conv", "conv_blocks": 1, "conv0_filters": f,
                                     "conv0_kernel": k, "conv0_padding": pad,
                                     "conv0_pool": pool, "dense_blocks": 0, **extra}
                                if len(space.modes) > 1:
                                    p["conv0_mode"] = mode
                                out.append(p)
        if "dense" in space.first_layers:
            out += [{"first": "dense", "mlp_blocks": 1, "dense0_units": u, **extra}
                    for u in space.units]
    return out


def plan_candidate(space: SearchSpace, params: dict[str, Any], input_shape: Any, classes: int,
                   budget: Budget, word_bits: int | None = None) -> Planned | None:
    """Plan one parameter set; ``None`` when its shapes collapse."""
    try:
        spec, wb = space.to_spec(params, input_shape, classes)
    except SpecError:
        return None
    wb = wb or word_bits or best_word_bits(spec, space.word_bits)
    fp = plan_footprint(spec, wb, budget.target)
    return Planned(params, spec, wb, fp, binary_ops(spec))


def census(space: SearchSpace, input_shape: Any, classes: int, budget: Budget,
           word_bits: int | None = None, draws: int = 3000, seed: int = 0) -> Census:
    """Plan the single-block candidates and ``draws`` random ones (see the module doc)."""
    rng = random.Random(seed)
    params = _single_block(space) + [space.sample(rng) for _ in range(draws)]
    planned = [p for p in (plan_candidate(space, q, input_shape, classes, budget, word_bits)
                           for q in params) if p is not None]
    feasible = [p for p in planned if p.footprint.fits(budget)]
    least_ram = min(planned, key=lambda p: (p.footprint.ram, p.footprint.flash), default=None)
    least_flash = min(planned, key=lambda p: (p.footprint.flash, p.footprint.ram), default=None)
    best = max(feasible, key=lambda p: (p.ops, -p.footprint.ram), default=None)
    return Census(len(planned), len(feasible), least_ram, least_flash, best)


def check_feasible(c: Census, budget: Budget, input_shape: Any) -> None:
    """Raise :class:`BudgetError` naming the smallest footprints when nothing fits."""
    if c.feasible:
        return
    if c.least_ram is None or c.least_flash is None:
        raise BudgetError(f"no candidate of the search space is valid for input shape "
                          f"{list(input_shape)} (every kernel/pool choice collapses the map)")
    lr, lf = c.least_ram, c.least_flash

    def text(p: Planned) -> str:
        f = p.footprint
        return (f"{describe(p.spec, p.word_bits)}: RAM {format_bytes(f.ram)} (buffers "
                f"{f.ram_bytes} + input {f.input_bytes} + stack {f.stack_bytes}), flash "
                f"{format_bytes(f.flash)} (tables {f.table_bytes} + code {f.code_bytes})")

    raise BudgetError(
        f"no candidate fits {budget.describe()}: the smallest RAM any candidate needs is "
        f"{format_bytes(lr.footprint.ram)} ({text(lr)}); the smallest flash among "
        f"{c.planned} planned candidates is {format_bytes(lf.footprint.flash)} ({text(lf)}). "
        "Raise the budget or narrow the search space.")

