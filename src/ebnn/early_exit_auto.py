"""Early exit per layer, and ``early_exit="auto"``: on only where it makes the program faster.

Early exit (O3BNN-R, :mod:`ebnn.early_exit`) gives the same results either way, but its
bound checks cost instructions, and whether the words they skip pay for them depends on
the CPU and on the layer: on ``mnist-mcu`` it saved 11.5 % of the instructions on the
Cortex-M0+ and cost 13.9 % more on the Cortex-M4. So the C generator takes a setting per
layer, and ``auto`` decides it by measurement:

    >>> from ebnn.codegen import export_c
    >>> ex = export_c(model, "build/c", target="cortex-m4")      # early_exit="auto"
    >>> ex.early_exit_layers, ex.early_exit_choice.summary()
    >>> export_c(model, "build/c", early_exit={1})                # layer 1 only
    >>> export_c(model, "build/c", early_exit="on")               # every binary layer

**Settings** (:data:`Setting`): ``"off"``/``False``, ``"on"``/``True`` (every binary layer:
conv or dense over a binary map; the first and the output layer have no popcount to
stop), an iterable of layer indices, or ``"auto"``.

**What auto does.** For a target that can be emulated (``cortex-m0plus``, ``cortex-m4``,
``atmega328p``, ``ch32v003``, ``esp32c3``, with its toolchain installed) it builds the
model with :func:`ebnn.mcu.build_model_for_target` without early exit, with early exit in
every binary layer and, when there are several, with early exit in each one alone, runs
every build on the same inputs in the emulator (exact instruction or cycle counts, see
:mod:`ebnn.mcu`) and checks the predictions against the NumPy engine. Each layer is its
own C function whose code depends only on its own setting, so a layer's effect is the
same whatever the others do: the layers whose single-layer build was faster than no
early exit form the candidate, which is built and measured too when it is not one of
the builds already made. The fastest build measured wins (a tie goes to fewer layers),
so on the measured inputs ``auto`` is never slower than ``off``. The inputs are the
caller's (``ebnn bench`` and ``ebnn export --data`` pass the first
:data:`AUTO_IMAGES` images of a data set), else :data:`AUTO_IMAGES` random ``uint8``
inputs drawn with seed :data:`AUTO_SEED`; :attr:`EarlyExitChoice.inputs` says which.

**Without a measurable target** (no target, ``host``, an architecture name such as
``arm``, or a missing toolchain or simulator) there is no exact count to decide by, and
``auto`` keeps early exit **off**, the setting that is never slower than off, and says
why in :attr:`EarlyExitChoice.reason`. The choice and both figures are in the export's
:attr:`~ebnn.codegen.ExportResult.early_exit_choice` and in the generated header.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .deploy import IntegerModel

#: Inputs ``auto`` measures on when the caller gives none (and how many of a data set's).
AUTO_IMAGES = 8
AUTO_SEED = 0

Setting = Union[bool, str, Iterable[int], "EarlyExitChoice"]
SETTINGS = ("off", "on", "auto")


def bit_layers(model: IntegerModel) -> tuple[int, ...]:
    """Indices of the layers early exit applies to: conv or dense over a binary map."""
    return tuple(i for i, layer in enumerate(model.layers)
                 if not layer.first and layer.kind != "output")


def parse_setting(text: str) -> str | tuple[int, ...]:
    """A command-line setting: ``off``, ``on``, ``auto`` or layer indices ``1,2``."""
    text = text.strip().lower()
    if text in SETTINGS:
        return text
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"early exit must be off, on, auto or layer indices like 1,2; got "
                         f"{text!r}") from None


def _early_exit_arg(text: str) -> str | tuple[int, ...]:
    try:
        return parse_setting(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_early_exit_option(p: argparse.ArgumentParser) -> None:
    """``--early-exit [off|on|auto|LAYERS]``, default ``auto``; bare, it means ``on``."""
    p.add_argument("--early-exit", nargs="?", const="on", default="auto", type=_early_exit_arg,
                   metavar="off|on|auto|LAYERS",
                   help="stop each binary neuron once its output is decided (same results): "
                        "off, on (a bare --early-exit), layer indices like 1,2, or auto "
                        "(default): measured on the target's emulator and kept where it is "
                        "faster; off without an emulated target")


def setting_layers(model: IntegerModel, setting: Setting) -> tuple[int, ...]:
    """The layers a fixed setting (not ``auto``) turns early exit on in, checked."""
    if isinstance(setting, EarlyExitChoice):
        return setting.layers
    if setting is False or setting is None or setting == "off":
        return ()
    if setting is True or setting == "on":
        return bit_layers(model)
    if isinstance(setting, str):
        raise ValueError(f"early_exit must be 'off', 'on', 'auto', a bool or layer indices, "
                         f"got {setting!r}")
    layers = tuple(sorted({int(i) for i in setting}))
    allowed = bit_layers(model)
    bad = [i for i in layers if i not in allowed]
    if bad:
        raise ValueError(f"early exit applies to the binary layers {list(allowed)} only; "
                         f"layer {bad[0]} is not one")
    return layers


def _layers_text(layers: Sequence[int]) -> str:
    return "layer " + str(layers[0]) if len(layers) == 1 else \
        "layers " + ", ".join(map(str, layers))


@dataclass
class EarlyExitChoice:
    """Where early exit is on, and for ``auto`` why and what was measured.

    ``setting`` is what was asked (``off``, ``on``, ``layers``, ``auto``); ``layers`` the
    binary layers compiled with early exit. For a measured ``auto``: ``unit``
    (``instructions`` or ``cycles``), ``counts`` (mean per inference of every build
    measured, keyed by its layers, ``()`` being no early exit), ``inputs`` (what was run)
    and ``images``. ``reason`` says why auto chose as it did."""

    setting: str
    layers: tuple[int, ...]
    target: str | None = None
    measured: bool = False
    reason: str = ""
    unit: str | None = None
    inputs: str = ""
    images: int = 0
    counts: dict[tuple[int, ...], float] = field(default_factory=dict)
    candidates: tuple[int, ...] = ()  # the binary layers auto chose among

    @property
    def off(self) -> float | None:
        """Mean count per inference without early exit (measured ``auto`` only)."""
        return self.counts.get(())

    @property
    def on(self) -> float | None:
        """Mean count per inference with early exit in every binary layer."""
        return self.counts.get(self.candidates) if self.candidates else None

    @property
    def chosen(self) -> float | None:
        """Mean count per inference of the chosen build."""
        return self.counts.get(self.layers)

    @property
    def saving(self) -> float | None:
        """Fraction of the count without early exit that the choice saves (>= 0)."""
        if not self.off or self.chosen is None:
            return None
        return 1 - self.chosen / self.off

    def summary(self) -> str:
        """One line: the choice and, when measured, the figures."""
        where = _layers_text(self.layers) if self.layers else None
        if self.setting != "auto":
            return f"on in {where}" if where else "off"
        head = f"auto: {'on in ' + where if where else 'off'}"
        if not self.measured:
            return f"{head} ({self.reason})"
        figures = "; ".join(
            f"{'off' if not k else 'on' if k == self.candidates else _layers_text(k)} "
            f"{v:,.0f}" for k, v in sorted(self.counts.items(), key=lambda kv: len(kv[0])))
        kept = (f"chosen {self.chosen:,.0f}, {self.saving:.1%} less than off" if self.layers
                else "off kept")
        return (f"{head}, measured on {self.target} over {self.images} {self.inputs}: "
                f"{self.unit} per inference {figures}; {kept}")

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "layers": list(self.layers), "target": self.target,
                "measured": self.measured, "reason": self.reason, "unit": self.unit,
                "inputs": self.inputs, "images": self.images,
                "off": self.off, "on": self.on, "chosen": self.chosen, "saving": self.saving,
                "counts": {",".join(map(str, k)) or "off": v for k, v in self.counts.items()},
                "summary": self.summary()}


def resolve(model: IntegerModel, setting: Setting, target: str | None = None, *,
            inputs: np.ndarray | None = None, inputs_label: str | None = None,
            word_bits: int | None = None, popcount: str | None = None,
            modes: str | Sequence[str | None] | Mapping[int, str] | None = None,
            every: int | None = None, jobs: int = 1) -> EarlyExitChoice:
    """The :class:`EarlyExitChoice` for ``setting``: fixed settings as they are, ``auto``
    by :func:`choose` (the other arguments are its)."""
    if isinstance(setting, EarlyExitChoice):
        return setting
    if isinstance(setting, str) and setting == "auto":
        return choose(model, target, inputs, inputs_label=inputs_label, word_bits=word_bits,
                      popcount=popcount, modes=modes, every=every, jobs=jobs)
    layers = setting_layers(model, setting)
    kind = "off" if not layers else "on" if setting is True or setting == "on" else "layers"
    return EarlyExitChoice(kind, layers, target)


def _unmeasurable(model: IntegerModel, target: str | None) -> str | None:
    """Why ``auto`` cannot measure on ``target`` (``None``: it can)."""
    from .targets import TARGETS, emulation_missing

    if not bit_layers(model):
        return "the model has no binary layer, so nothing to exit early"
    if target is None:
        return ("no target to measure on, so off, which is never slower; pass an "
                "emulated target or early exit on")
    tgt = TARGETS.get(target)
    if tgt is None or tgt.arch == "host":
        return (f"{target} has no exact instruction count to decide by, so off, which is "
                "never slower")
    missing = emulation_missing(tgt)
    return None if missing is None else f"{missing} is not installed, so not measured and off"


def sample_inputs(model: IntegerModel, n: int = AUTO_IMAGES, seed: int = AUTO_SEED
                  ) -> np.ndarray:
    """The deterministic inputs ``auto`` uses when given none: ``n`` random ``uint8``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *model.input_shape), dtype=np.uint8)


def choose(model: IntegerModel, target: str | None, inputs: np.ndarray | None = None, *,
           inputs_label: str | None = None, word_bits: int | None = None,
           popcount: str | None = None,
           modes: str | Sequence[str | None] | Mapping[int, str] | None = None,
           every: int | None = None, jobs: int = 1) -> EarlyExitChoice:
    """Measure and choose the early-exit layers for ``target`` (see the module docstring).

    ``inputs`` (uint8, (N, C, H, W)) are what the builds run on, ``inputs_label`` says what
    they are; ``word_bits``, ``popcount``, ``modes`` and ``every`` (words between checks)
    are the build's, as in :func:`ebnn.mcu.build_model_for_target`."""
    reason = _unmeasurable(model, target)
    if reason is not None:
        return EarlyExitChoice("auto", (), target, reason=reason)
    from . import engine
    from .mcu import build_model_for_target, run_on_target
    from .targets import get_target

    tgt = get_target(target)
    if inputs is None:
        x = sample_inputs(model)
        label = f"random uint8 inputs (seed {AUTO_SEED})"
    else:
        x = np.asarray(inputs)
        if len(x) == 0:
            raise ValueError("early exit auto needs at least one input to measure on")
        label = inputs_label or "given inputs"
    hwc = [img.tobytes() for img in engine.to_hwc(model, x)]
    want = engine.predict(model, x)
    candidates = bit_layers(model)
    counts: dict[tuple[int, ...], float] = {}
    unfit: list[tuple[int, ...]] = []
    with tempfile.TemporaryDirectory(prefix="ebnn-early-exit-") as tmp:
        def measure(layers: tuple[int, ...]) -> None:
            tb = build_model_for_target(model, tgt, Path(tmp) / ("-".join(map(str, layers))
                                                                   or "off"),
                                        word_bits=word_bits, popcount=popcount,
                                        modes=modes, early_exit=layers,
                                        early_exit_every=every)
            if tb.app is None:  # does not fit the chip: not a candidate
                unfit.append(layers)
                return
            results = run_on_target(tb, hwc, jobs=jobs)
            got = np.array([r.ret for r in results])
            if not np.array_equal(got, want):  # a generator bug, never a choice
                raise RuntimeError(f"early exit in {layers} on {tgt.name}: predictions "
                                   "differ from the NumPy engine")
            counts[layers] = float(np.mean([r.count for r in results]))
            shutil.rmtree(tb.export.out_dir.parent, ignore_errors=True)

        measure(())
        if () in unfit:
            return EarlyExitChoice("auto", (), target, candidates=candidates, reason=(
                f"the model does not fit the {tgt.chip} without early exit, so not "
                "measured and off"))
        measure(candidates)
        if len(candidates) > 1:
            for i in candidates:
                measure((i,))
            # A layer's code depends on its own setting only: the single-layer gains add.
            best = tuple(i for i in candidates if counts.get((i,), np.inf) < counts[()])
            if best not in counts and best not in unfit:
                measure(best)
    chosen = min(counts, key=lambda k: (counts[k], len(k)))
    if not chosen:
        why = "no early-exit build was faster than off"
    else:
        why = f"fastest of the {len(counts)} builds measured"
    if unfit:
        why += f"; {len(unfit)} build(s) with early exit did not fit the {tgt.chip}"
    return EarlyExitChoice("auto", chosen, tgt.name, measured=True, reason=why,
                           unit=tgt.unit, inputs=label, images=len(x), counts=counts,
                           candidates=candidates)
