"""The search space: which model specs a search may propose.

A candidate is drawn block by block (names are Optuna parameter names):

* ``first``: the first layer, reading the ``uint8`` input: ``conv`` or ``dense``;
* with a conv first layer, ``conv_blocks`` (1 .. ``max_conv_blocks``) conv blocks, each
  with ``conv{i}_filters``, ``conv{i}_kernel``, ``conv{i}_padding`` (``same``/``valid``),
  ``conv{i}_pool`` and, when the search has a target, ``conv{i}_mode``
  (``fused``/``materialized``), then ``dense_blocks`` (0 .. ``max_dense_blocks``) dense
  blocks;
* with a dense first layer, ``mlp_blocks`` (1 .. ``max_dense_blocks``) dense blocks;
* each dense block's ``dense{i}_units``; then the output block;
* with a target, ``word_bits`` (8, 16, 32), the packing word of the export.

Without a target, instructions are not measured, so every conv is ``fused`` (the
materialized mode only buys speed with RAM) and the word size is the one with the least
RAM, then flash (:func:`ebnn.search.budget.best_word_bits`). Draws whose shapes collapse
(a kernel larger than the map) are invalid candidates and rejected like ones that do
not fit.

An input of height 1 (a 1-D signal ``[C, 1, T]``) gets 1-D blocks: kernel ``k`` becomes
``[1, k]``, pool ``p`` becomes ``[1, p]`` and "same" pads the time axis only, so the same
parameters search along time.

:meth:`SearchSpace.draw` takes a ``pick(name, choices)`` function, so the same code serves
Optuna trials (:meth:`SearchSpace.suggest`) and plain random draws (:meth:`sample`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..spec import ModelSpec, pair_text

Pick = Callable[[str, Sequence[Any]], Any]


@dataclass(frozen=True)
class SearchSpace:
    """Choices for each block; see the module docstring. ``modes`` and ``word_bits`` with a
    single entry are fixed, not searched."""

    first_layers: tuple[str, ...] = ("conv", "dense")
    max_conv_blocks: int = 3
    max_dense_blocks: int = 2
    filters: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    kernels: tuple[int, ...] = (3, 5)
    paddings: tuple[str, ...] = ("same", "valid")
    pools: tuple[int, ...] = (1, 2)
    units: tuple[int, ...] = (32, 64, 128, 256)
    modes: tuple[str, ...] = ("fused",)
    word_bits: tuple[int, ...] = (8, 16, 32)
    search_word_bits: bool = False

    def __post_init__(self) -> None:
        if not set(self.first_layers) <= {"conv", "dense"} or not self.first_layers:
            raise ValueError(f"first_layers must be conv and/or dense, got {self.first_layers}")
        if self.max_conv_blocks < ("conv" in self.first_layers):
            raise ValueError("max_conv_blocks must be at least 1 with conv first layers")
        if self.max_dense_blocks < ("dense" in self.first_layers):
            raise ValueError("max_dense_blocks must be at least 1 with dense first layers")
        for name in ("filters", "kernels", "pools", "units", "word_bits"):
            values = getattr(self, name)
            if not values or any(int(v) <= 0 for v in values):
                raise ValueError(f"{name} must be positive numbers, got {values}")
        if not set(self.paddings) <= {"same", "valid"} or not self.paddings:
            raise ValueError(f"paddings must be same and/or valid, got {self.paddings}")
        if not set(self.modes) <= {"fused", "materialized"} or not self.modes:
            raise ValueError(f"modes must be fused and/or materialized, got {self.modes}")

    def for_target(self, has_target: bool) -> SearchSpace:
        """This space with conv modes and word size searched (target) or fixed (none)."""
        if has_target:
            return replace(self, modes=("fused", "materialized"), search_word_bits=True)
        return replace(self, modes=("fused",), search_word_bits=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    # ---- drawing ------------------------------------------------------------------------
    def draw(self, pick: Pick) -> dict[str, Any]:
        """One candidate's parameters; ``pick(name, choices)`` chooses each value."""
        p: dict[str, Any] = {}
        first = p["first"] = pick("first", self.first_layers)
        if first == "conv":
            n_conv = p["conv_blocks"] = pick("conv_blocks", range(1, self.max_conv_blocks + 1))
            for i in range(n_conv):
                p[f"conv{i}_filters"] = pick(f"conv{i}_filters", self.filters)
                p[f"conv{i}_kernel"] = pick(f"conv{i}_kernel", self.kernels)
                p[f"conv{i}_padding"] = pick(f"conv{i}_padding", self.paddings)
                p[f"conv{i}_pool"] = pick(f"conv{i}_pool", self.pools)
                if len(self.modes) > 1:
                    p[f"conv{i}_mode"] = pick(f"conv{i}_mode", self.modes)
            n_dense = p["dense_blocks"] = pick("dense_blocks",
                                               range(0, self.max_dense_blocks + 1))
        else:
            n_dense = p["mlp_blocks"] = pick("mlp_blocks", range(1, self.max_dense_blocks + 1))
        for i in range(n_dense):
            p[f"dense{i}_units"] = pick(f"dense{i}_units", self.units)
        if self.search_word_bits and len(self.word_bits) > 1:
            p["word_bits"] = pick("word_bits", self.word_bits)
        return p

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw with an Optuna trial (integer ranges as ``suggest_int``)."""
        def pick(name: str, choices: Sequence[Any]) -> Any:
            if isinstance(choices, range):
                return trial.suggest_int(name, choices.start, choices.stop - 1)
            return trial.suggest_categorical(name, tuple(choices))

        return self.draw(pick)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly random draw (each choice uniform, given the earlier ones)."""
        return self.draw(lambda _name, choices: rng.choice(list(choices)))

    def params_of(self, spec: ModelSpec) -> dict[str, Any]:
        """The parameters that :meth:`to_spec` turns into ``spec``'s blocks, so that a known
        model (a preset) can start a search; the word size is left to the search. Raises
        ``ValueError`` naming the first block or value this space cannot propose."""
        blocks = [b for b in spec.blocks if b.type != "output"]
        convs = [b for b in blocks if b.type == "conv"]
        dense = [b for b in blocks if b.type == "dense"]
        if [b.type for b in blocks] != ["conv"] * len(convs) + ["dense"] * len(dense):
            raise ValueError(f"{spec.name}: only conv blocks then dense blocks can be searched")
        want: dict[str, Any] = {"first": "conv" if convs else "dense",
                                "conv_blocks": len(convs), "dense_blocks": len(dense),
                                "mlp_blocks": len(dense)}
        for i, b in enumerate(convs):
            k, pool = b.kernel[-1], b.pool[-1]
            want.update({f"conv{i}_filters": b.filters, f"conv{i}_kernel": k,
                         f"conv{i}_padding": "same" if any(b.padding) else "valid",
                         f"conv{i}_pool": pool, f"conv{i}_mode": b.mode})
        want.update({f"dense{i}_units": b.units for i, b in enumerate(dense)})

        def pick(name: str, choices: Sequence[Any]) -> Any:
            if name == "word_bits":
                return None
            if want[name] not in choices:
                shown = (f"{choices.start}..{choices.stop - 1}" if isinstance(choices, range)
                         else ", ".join(map(str, choices)))
                raise ValueError(f"{spec.name}: {name} = {want[name]} is outside the search "
                                 f"space ({shown})")
            return want[name]

        params = {k: v for k, v in self.draw(pick).items() if v is not None}
        if len(self.modes) == 1 and any(b.mode != self.modes[0] for b in convs):
            raise ValueError(f"{spec.name}: conv mode {convs[0].mode} is not searched here")
        got, _ = self.to_spec(params, spec.input_shape, spec.classes, name=spec.name)
        if got.to_dict()["blocks"] != spec.to_dict()["blocks"]:  # e.g. a 3x5 kernel
            raise ValueError(f"{spec.name}: its blocks (kernels, padding or pools) are not "
                             "ones this search proposes")
        return params

    # ---- parameters -> spec -------------------------------------------------------------
    def to_spec(self, params: dict[str, Any], input_shape: Sequence[int], classes: int,
                name: str = "model") -> tuple[ModelSpec, int | None]:
        """The model spec of ``params`` and its word size (``None``: choose by RAM).
        Raises :class:`~ebnn.spec.SpecError` when the shapes collapse."""
        blocks: list[dict[str, Any]] = []
        # A signal of height 1: convolve and pool along the width (time) only.
        signal = len(input_shape) == 3 and int(input_shape[1]) == 1 and int(input_shape[2]) > 1
        if params["first"] == "conv":
            for i in range(int(params["conv_blocks"])):
                k = int(params[f"conv{i}_kernel"])
                pad = k // 2 if params[f"conv{i}_padding"] == "same" else 0
                pool = int(params[f"conv{i}_pool"])
                blocks.append({"type": "conv", "filters": int(params[f"conv{i}_filters"]),
                               "kernel": [1, k] if signal else k,
                               "padding": [0, pad] if signal else pad,
                               "pool": [1, pool] if signal else pool,
                               "mode": params.get(f"conv{i}_mode", self.modes[0])})
            n_dense = int(params["dense_blocks"])
        else:
            n_dense = int(params["mlp_blocks"])
        blocks += [{"type": "dense", "units": int(params[f"dense{i}_units"])}
                   for i in range(n_dense)]
        blocks.append({"type": "output"})
        spec = ModelSpec.from_dict({"name": name, "input_shape": list(input_shape),
                                    "classes": classes, "blocks": blocks})
        wb = params.get("word_bits")
        return spec, None if wb is None else int(wb)


def describe(spec: ModelSpec, word_bits: int | None = None) -> str:
    """A short name for a spec: ``c16k3s/p2-c32k5v/p2m-d128`` (c: conv with filters, k:
    kernel, s/v: same/valid padding, p: pool, m: materialized; d: dense units)."""
    parts = []
    for b in spec.blocks:
        if b.type == "conv":
            text = f"c{b.filters}k{pair_text(b.kernel)}{'s' if any(b.padding) else 'v'}"
            text += f"/p{pair_text(b.pool)}" if b.pool != (1, 1) else ""
            text += "m" if b.mode == "materialized" else ""
            parts.append(text)
        elif b.type == "dense":
            parts.append(f"d{b.units}")
    text = "-".join(parts) or "linear"
    return f"{text} w{word_bits}" if word_bits else text
