"""What one search is: :class:`SearchConfig` (everything ``ebnn search`` takes) and the
data splits every trial and the final model read (:func:`load_split`, :func:`load_test`).

Both the trial workers (:mod:`ebnn.search.runner`) and the final training
(:mod:`ebnn.search.final`) read only this module, so neither imports the other's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data.timeseries import SeriesOptions
from .budget import Budget
from .space import SearchSpace
from .storage import HEARTBEAT_S

STUDY_NAME = "ebnn-search"
SAMPLERS = ("tpe", "nsga2", "random")


@dataclass
class SearchConfig:
    """Everything ``ebnn search`` takes (see the CLI help for each option).

    ``ram``/``flash`` accept what :func:`~ebnn.search.budget.parse_bytes` reads
    (``"2KB"``, ``2048``...). ``epochs`` is per trial, ``final_epochs`` for the final
    model. ``word_bits`` fixes the packing word (default: searched with a target, else the
    least-RAM one per candidate). ``storage`` is an Optuna RDB URL (default: SQLite in
    ``out``). ``final=False`` skips the report's final training and export (extra machines).
    ``threads`` is torch's thread count in this process (0: ebnn's default); spawned
    workers always use one. ``count_images`` validation images are run on the target per
    measurement. The first ``seed_trials`` (0 or 1) trial is the feasible candidate with
    the most operations (:mod:`ebnn.search.census`). ``start_from`` names presets or spec
    files whose shapes are queued next, so that known good models are trained and the
    sampler explores around them. A worker gives up after ``max_rejected`` rejected
    candidates in a row. ``series`` and ``channels`` read signals as ``ebnn train`` does
    (:meth:`data_options`). ``heartbeat`` is the seconds between a running trial's
    heartbeats (:mod:`ebnn.search.storage`).
    """

    data: str
    out: Path
    ram: int | str
    flash: int | str
    trials: int = 20
    target: str | None = None
    max_instructions: int | str | None = None
    max_ms: float | str | None = None
    workers: int = 1
    storage: str | None = None
    study_name: str = STUDY_NAME
    epochs: int = 5
    final_epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-2
    augment_shift: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    data_dir: str | None = None
    test_data: str | None = None
    series: SeriesOptions | None = None
    channels: int | None = None
    word_bits: int | None = None
    space: SearchSpace = field(default_factory=SearchSpace)
    sampler: str = "tpe"
    prune_after: int = 2
    prune_margin: float = 0.02
    count_images: int = 8
    threads: int = 0
    seed_trials: int = 1
    start_from: tuple[str, ...] = ()
    max_rejected: int = 300
    final: bool = True
    progress: bool = False
    heartbeat: int = HEARTBEAT_S
    recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.trials < 1:
            raise ValueError(f"--trials must be at least 1, got {self.trials}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.epochs < 1 or self.final_epochs < 1:
            raise ValueError("--epochs and --final-epochs must be at least 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"the search needs a validation split: --val-fraction must be in "
                             f"(0, 1), got {self.val_fraction}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; use one of {SAMPLERS}")
        if self.heartbeat < 1:
            raise ValueError(f"--heartbeat must be at least 1 second, got {self.heartbeat}")
        if self.word_bits is not None and self.word_bits not in (8, 16, 32):
            raise ValueError(f"--word-bits must be 8, 16 or 32, got {self.word_bits}")
        if self.recipe.get("init_from"):
            raise ValueError("--init-from starts one model from another of the same shape; "
                             "a search trains many shapes")
        self.budget()  # raises BudgetError for bad budgets
        self.train_config(self.epochs)  # raises ValueError for bad recipe options
        self.train_config(self.final_epochs)

    def budget(self) -> Budget:
        return Budget.parse(self.ram, self.flash, self.target, self.max_instructions,
                            self.max_ms)

    def train_config(self, epochs: int, threads: int | None = None) -> Any:
        """The :class:`~ebnn.train.TrainConfig` of a trial (``epochs``) or of the final
        model: the search's settings and its ``recipe`` (distillation, augmentation...)."""
        from ..train import TrainConfig

        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr,
                           seed=self.seed, val_fraction=self.val_fraction,
                           augment_shift=self.augment_shift,
                           threads=self.threads if threads is None else threads, **self.recipe)

    def data_options(self) -> dict[str, Any]:
        """``series`` and ``channels`` as :func:`ebnn.data.load_dataset` keywords (the
        signal options of ``ebnn train``: padding, truncation, CSV channels)."""
        return {"series": self.series, "channels": self.channels}

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    def effective_space(self) -> SearchSpace:
        space = self.space.for_target(self.target is not None)
        if self.word_bits is not None:
            space = replace(space, word_bits=(self.word_bits,), search_word_bits=False)
        return space

    def study_key(self, budget: Budget) -> dict[str, Any]:
        """The settings a resumed study must share with the one in the storage."""
        return {"data": self.data, "ram": budget.ram, "flash": budget.flash,
                "target": budget.target, "max_count": budget.max_count, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr,
                "augment_shift": self.augment_shift, "val_fraction": self.val_fraction,
                "seed": self.seed, "word_bits": self.word_bits,
                "space": self.effective_space().to_dict(),
                **({"recipe": self.recipe} if self.recipe else {}),
                **({"series": asdict(self.series)} if self.series else {}),
                **({"channels": self.channels} if self.channels else {})}


# ---- data ---------------------------------------------------------------------------------
def load_split(cfg: SearchConfig) -> tuple[Any, Any, Any]:
    """(full training set, training split, validation split)."""
    from ..data import load_dataset, train_val_split

    ds = load_dataset(cfg.data, "train", cfg.data_dir, **cfg.data_options())
    tr, va = train_val_split(ds, cfg.val_fraction, cfg.seed)
    return ds, tr, va


def load_test(cfg: SearchConfig, ds: Any) -> Any | None:
    """The test set, or ``None`` when the source has none (like ``ebnn train``)."""
    from ..data import SOURCES, DataError, load_dataset

    if cfg.test_data:
        return load_dataset(cfg.test_data, "test", quantizer=ds.quantizer,
                            class_names=ds.class_names, **cfg.data_options())
    if cfg.data in SOURCES:
        return load_dataset(cfg.data, "test", cfg.data_dir)
    try:
        return load_dataset(cfg.data, "test", cfg.data_dir, quantizer=ds.quantizer,
                            class_names=ds.class_names, **cfg.data_options())
    except DataError:
        return None
