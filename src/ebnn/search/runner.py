"""Run a budgeted architecture search with Optuna: study, workers, trials, pruning, and
the final model.

**Study and storage.** Trials live in an Optuna study in an RDB storage: by default
``sqlite:///<out>/study.db`` (study name ``ebnn-search``). Everything the report needs is
stored with each trial (spec, footprint, accuracy per epoch), so the report can be
rebuilt from the storage alone. Running the same command again *resumes*: the study
continues until it holds ``trials`` trained trials (complete or pruned; rejected
candidates are not counted), a trial interrupted during training is re-queued and its
training resumes from its ``.last`` checkpoint, and a finished search only redoes the
report and the final model. The settings that define the study (data, budget, target,
epochs, space...) are stored in it and must match on resume.

**Workers.** ``workers=K`` starts K processes (``spawn``), each running trials of the same
study with one torch thread; they wait for each other before the first trial. Run one
``ebnn search`` per output directory (a new run marks the running trials of its own
SQLite file as interrupted) and use ``--workers`` for parallel trials. SQLite copes with a
few local workers (60 s lock timeout, transactions that take the write lock first); for
many machines use a database server::

    # once: createdb ebnn (the psycopg driver comes with the search extra)
    ebnn search --data mnist --ram 2KB --flash 32KB --trials 200 --out run \\
        --storage postgresql://user:pass@dbhost/ebnn --study-name mnist-2k      # main
    ebnn search ...same options... --no-final                                  # others

Every machine runs trials until the study holds ``--trials`` trained trials (a worker whose
work is done waits for the trials other workers are still running); machines with
``--no-final`` then stop, the main one writes the report and trains the final model,
once. A heartbeat (every ``--heartbeat`` seconds, 30 by default) lets a live worker fail
and re-queue the trial of a worker that died (after four heartbeats of silence); see
:mod:`ebnn.search.storage`.

**A trial** draws a candidate (:class:`~ebnn.search.space.SearchSpace`), folds the untrained
network (:func:`ebnn.fold.fold`) and plans its memory with the code that sizes the C
export. A candidate over the RAM or flash budget is *rejected* before any training: it is
recorded with its footprint and an Optuna constraint violation, so the sampler learns to
avoid such regions, and it does not count as a trial. With a target the export is built
for it, giving the exact flash (tables + code) and, with ``--max-instructions``, the
instruction count of the untrained network, which must also be within the limit. A
candidate that fits is trained for ``epochs`` epochs on the training split, validated on
the held-out split after each epoch; with a target the trained model is built and run on
``count_images`` validation images for its instructions (or AVR cycles) per inference.
A model the sampler proposes again is answered from its earlier trial (status
``duplicate``) and not counted or retrained.

**Objectives** (multi-objective TPE by default): maximise validation accuracy, minimise
peak RAM, and with a target minimise instructions per inference.

**Pruning.** Optuna's pruners are single-objective, so the search prunes Pareto-wise:
from epoch ``prune_after`` on, a trial is stopped when another trained trial needing no
more RAM (and no more instructions) was at least ``prune_margin`` more accurate at the
same epoch; it could only end dominated.

**Final model.** The most accurate trial of the front (ties: less RAM, fewer
instructions) is trained again from scratch for ``final_epochs`` and written to
``<out>/best/``: ``model.pt`` (checkpoint), ``model.ebnn`` (deployable), ``c/`` (the C
export), ``summary.json`` (spec, footprint, validation and test accuracy, and with a
target the measured flash and instructions).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .budget import Budget, Footprint, best_word_bits, plan_footprint
from .census import census, check_feasible
from .config import SearchConfig, load_split
from .final import train_final
from .report import (
    atomic_write_text,
    best_row,
    front_markdown,
    pareto_front,
    trial_row,
    write_report,
)
from .space import describe
from .storage import _quiet_optuna, _requeue, _root, fail_stale, make_storage

if TYPE_CHECKING:
    from ..deploy import IntegerModel
    from ..spec import ModelSpec


@dataclass
class SearchResult:
    """What :func:`search` produced. Rows are :func:`~ebnn.search.report.trial_row` dicts."""

    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    best: dict[str, Any] | None
    final: dict[str, Any] | None
    budget: Budget
    out: Path
    storage: str
    study_name: str
    trained: int
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)


# ---- study -------------------------------------------------------------------------------
def _constraints(trial: Any) -> list[float]:
    return list(trial.user_attrs.get("constraint", [0.0, 0.0, 0.0]))


def make_sampler(name: str, seed: int, trials: int) -> Any:
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=_constraints,
                                             population_size=max(4, min(50, trials)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      constraints_func=_constraints)


def _directions(budget: Budget) -> list[str]:
    return ["maximize", "minimize"] + (["minimize"] if budget.target else [])


def open_study(cfg: SearchConfig, seed: int = 0, create: bool = False,
               storage: Any = None) -> Any:
    """Load (or with ``create``, create) the study of ``cfg``."""
    import optuna

    _quiet_optuna()
    storage = storage or make_storage(cfg.storage_url(), cfg.heartbeat)
    sampler = make_sampler(cfg.sampler, seed, cfg.trials)
    if create:
        return optuna.create_study(storage=storage, study_name=cfg.study_name,
                                   directions=_directions(cfg.budget()), sampler=sampler,
                                   load_if_exists=True)
    return optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler)


class _Surplus(Exception):
    """A trial started after the study had enough: it ends as FAIL, which samplers ignore."""


# ---- one worker ---------------------------------------------------------------------------
class Worker:
    """Runs trials of the study until it holds ``cfg.trials`` trained trials."""

    def __init__(self, cfg: SearchConfig, index: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.index = index
        self.budget = cfg.budget()
        self.space = cfg.effective_space()
        self.log = log or _stderr
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        _, self.train_ds, self.val_ds = load_split(cfg)
        self.input_shape = self.train_ds.input_shape
        self.classes = self.train_ds.classes
        self.count_x = self.val_ds.x[:cfg.count_images]
        probe = open_study(cfg)
        self.study = open_study(cfg, seed=cfg.seed + 7919 * index + len(probe.trials))
        self.trials_dir = cfg.out / "trials"

    # -- counting -------------------------------------------------------------------------
    def trained(self) -> int:
        """Trained trials (complete or pruned) in the study, from every worker."""
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=states)
                   if t.user_attrs.get("trained"))

    def rejected_streak(self) -> int:
        """Candidates rejected, invalid or duplicate since the last trained trial."""
        n = 0
        for t in sorted(self.study.get_trials(deepcopy=False), key=lambda t: -t.number):
            if t.user_attrs.get("trained"):
                break
            n += t.user_attrs.get("status") in ("rejected", "invalid", "duplicate")
        return n

    def _stop_when_done(self, study: Any, _trial: Any) -> None:
        if self.trained() >= self.cfg.trials:
            study.stop()
        elif self.rejected_streak() >= self.cfg.max_rejected:
            self.log(f"stopping: {self.cfg.max_rejected} candidates in a row were rejected "
                     "or already trained; the budget leaves little room in this search space")
            self.gave_up = True
            study.stop()

    def _others_running(self) -> list[int]:
        """Trained trials still running (in other workers, or left by dead ones)."""
        import optuna

        states = (optuna.trial.TrialState.RUNNING,)
        return [t.number for t in self.study.get_trials(deepcopy=False, states=states)
                if t.user_attrs.get("trained")]

    def _wait_for_others(self) -> None:
        """Wait until no trained trial is running: each one completes, is pruned, or its
        worker died and the heartbeat check fails it (queueing a retry for us)."""
        said: list[int] = []
        while True:
            fail_stale(self.study)
            running = self._others_running()
            if not running or self.trained() >= self.cfg.trials:
                return
            if running != said:
                self.log(f"waiting for trial(s) {', '.join(map(str, running))} of other "
                         "workers")
                said = running
            time.sleep(min(5.0, self.cfg.heartbeat))

    def run(self) -> None:
        """Run trials until the study holds ``cfg.trials`` trained trials, waiting for
        other workers' trials when this worker stopped with the study one short (a trial
        of a dead worker then comes back as a retry and is trained here)."""
        self.gave_up = False
        while self.trained() < self.cfg.trials and not self.gave_up:
            self.study.optimize(self.objective, callbacks=[self._stop_when_done],
                                gc_after_trial=False, catch=(_Surplus,))
            if self.trained() >= self.cfg.trials or self.gave_up:
                return
            self._wait_for_others()

    # -- the objective --------------------------------------------------------------------
    def _values(self, acc: float, fp: Footprint | None, count: float | None) -> tuple:
        ram = float(fp.ram) if fp else float(self.budget.ram)
        vals: tuple = (float(acc), ram)
        if self.budget.target:
            vals += (float(count) if count is not None else 0.0,)
        return vals

    def _reject(self, trial: Any, status: str, reason: str, fp: Footprint | None = None,
                count: float | None = None, unfit: bool = False) -> tuple:
        """Record ``trial`` as not trained. ``unfit``: it overflows the chip, which the
        budget's figures may not show, so its flash constraint counts as violated."""
        b = self.budget
        if fp is None:
            violation = [1.0, 1.0, 0.0]
        else:
            violation = [(fp.ram - b.ram) / b.ram, (fp.flash - b.flash) / b.flash, 0.0]
        if unfit:
            violation[1] = max(violation[1], 0.01)
        if b.max_count is not None and count is not None:
            violation[2] = (count - b.max_count) / b.max_count
        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("constraint", violation)
        self.log(f"trial {trial.number}: {trial.user_attrs.get('desc', '?')} {status}: {reason}")
        return self._values(0.0, fp, count)

    def objective(self, trial: Any) -> tuple:
        from ..spec import SpecError

        cfg, b = self.cfg, self.budget
        self._check_surplus(trial)
        trial.set_user_attr("worker", self.id)
        params = self.space.suggest(trial)
        root = _root(trial)
        try:
            spec, wb = self.space.to_spec(params, self.input_shape, self.classes,
                                          name=f"trial{root}")
        except SpecError as e:
            return self._reject(trial, "invalid", str(e))
        wb = wb or cfg.word_bits or best_word_bits(spec, self.space.word_bits)
        desc = describe(spec, wb)
        trial.set_user_attr("desc", desc)
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("word_bits", wb)
        key = json.dumps({"blocks": spec.to_dict()["blocks"], "word_bits": wb})
        trial.set_user_attr("key", key)
        same = self._trained_with(key, trial.number)
        if same is not None:
            return self._duplicate(trial, same)
        # The untrained network folds to the same shapes, so its plan is the trained one's.
        untrained = self._untrained(spec)
        fp = plan_footprint(untrained, wb, b.target)
        trial.set_user_attr("footprint", fp.to_dict())
        if fp.ram > b.ram or fp.table_bytes > b.flash:
            return self._reject(trial, "rejected", _over_text(fp, b), fp)
        count_est = None
        if b.target:
            from .measure import build_for_target

            with tempfile.TemporaryDirectory(prefix="ebnn-search-") as tmp:
                m = build_for_target(untrained, wb, b.target, tmp,
                                     self.count_x if b.max_count else None)
            fp, count_est = m.footprint, m.count
            trial.set_user_attr("footprint", fp.to_dict())
            trial.set_user_attr("count_estimate", count_est)
            if m.unfit:
                return self._reject(trial, "rejected", f"{m.unfit} untrained", fp,
                                    unfit=True)
        if not fp.fits(b):
            return self._reject(trial, "rejected", _over_text(fp, b), fp)
        if b.max_count is not None and count_est is not None and count_est > b.max_count:
            return self._reject(trial, "rejected", f"{count_est:,.0f} per inference untrained, "
                                f"limit {b.max_count:,}", fp, count_est)
        trial.set_user_attr("constraint", [0.0, 0.0, 0.0])
        trial.set_user_attr("trained", True)
        self._check_surplus(trial)
        return self._train(trial, spec, wb, fp, count_est, root)

    def _untrained(self, spec: ModelSpec) -> IntegerModel:
        """``spec`` with its initial weights, folded after its batch norms have seen some
        training images (as training starts: the data's input normalisation, statistics of
        real inputs). Its plan is the trained model's, and its time is nearer the trained
        model's than that of the network as built (means 0, variances 1): max-pooling stops
        at the first bit that decides, so time depends on how the signs split. On the
        ATmega328P, 8 validation images: mnist-fast 0.97M cycles as built, 1.16M
        calibrated, 1.24M trained (seed 0); mnist-mcu 0.75M, 0.90M, 0.94M
        (benchmarks/bench_search_estimate.py)."""
        import numpy as np
        import torch

        from ..data import normalization
        from ..fold import fold
        from ..model import build_model
        from ..train import recalibrate_batch_norm

        torch.manual_seed(self.cfg.seed)
        model = build_model(spec, *normalization(np.asarray(self.train_ds.x)))
        with torch.no_grad():  # a plain average over 4 batches of 64 training images
            recalibrate_batch_norm(model, torch.as_tensor(np.asarray(self.train_ds.x[:256])),
                                   batch_size=64)
        return fold(model.eval())

    def _trained_with(self, key: str, number: int) -> Any | None:
        """A finished trained trial of the same model (spec and word size), if any."""
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for t in self.study.get_trials(deepcopy=False, states=states):
            if t.number != number and t.user_attrs.get("trained") and \
                    t.user_attrs.get("key") == key:
                return t
        return None

    def _duplicate(self, trial: Any, same: Any) -> tuple:
        """Answer a re-proposed model from its earlier trial instead of training it again;
        it does not count as a trained trial."""
        import optuna

        for name in ("footprint", "count", "count_estimate", "val_accuracy", "curve",
                     "constraint"):
            if name in same.user_attrs:
                trial.set_user_attr(name, same.user_attrs[name])
        trial.set_user_attr("status", "duplicate")
        trial.set_user_attr("reason", f"same model as trial {same.number}")
        self.log(f"trial {trial.number}: {trial.user_attrs['desc']} is trial {same.number} "
                 "again: not retrained")
        if same.state == optuna.trial.TrialState.PRUNED:
            raise optuna.TrialPruned(f"same model as pruned trial {same.number}")
        return tuple(same.values)

    def _check_surplus(self, trial: Any) -> None:
        """Stop when the study has enough trained trials, counting running ones that are
        older than ``trial`` (so two workers never both give way to each other)."""
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                  optuna.trial.TrialState.RUNNING)
        n = sum(1 for t in self.study.get_trials(deepcopy=False, states=states)
                if t.user_attrs.get("trained") and t.number != trial.number
                and (t.state != optuna.trial.TrialState.RUNNING or t.number < trial.number))
        if n >= self.cfg.trials:
            trial.set_user_attr("trained", False)
            trial.set_user_attr("status", "surplus")
            self.study.stop()
            raise _Surplus(f"the study already has {n} trained trials")

    def _train(self, trial: Any, spec: Any, wb: int, fp: Footprint, count_est: float | None,
               root: int) -> tuple:
        import optuna

        from ..fold import fold
        from ..train import train

        cfg, b = self.cfg, self.budget
        trial.set_user_attr("status", "training")
        tdir = self.trials_dir / f"{root:04d}"
        tdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(tdir / "spec.json", json.dumps(
            {**spec.to_dict(), "word_bits": wb, "footprint": fp.to_dict()}, indent=2))
        tcfg = cfg.train_config(cfg.epochs, 1 if cfg.workers > 1 else cfg.threads)
        curve: list[float | None] = []
        t0 = time.perf_counter()

        def on_epoch(epoch: int, record: dict[str, Any]) -> None:
            while len(curve) < epoch:
                curve.append(None)
            curve[epoch - 1] = record["val_accuracy"]
            trial.set_user_attr("curve", curve)
            if cfg.prune_after <= epoch < cfg.epochs:
                other = self._dominating(trial.number, epoch, record["val_accuracy"], fp.ram,
                                         count_est)
                if other is not None:
                    trial.set_user_attr("status", "pruned")
                    trial.set_user_attr("val_accuracy", max(c for c in curve if c is not None))
                    trial.set_user_attr("seconds", time.perf_counter() - t0)
                    trial.set_user_attr("reason", f"trial {other} was more accurate at epoch "
                                                  f"{epoch} with no more RAM")
                    self.log(f"trial {trial.number}: {describe(spec, wb)} pruned at epoch "
                             f"{epoch} (val acc {record['val_accuracy']:.4f}; trial {other} "
                             "was better with no more RAM)")
                    raise optuna.TrialPruned(f"dominated by trial {other}")

        result = train(spec, self.train_ds, self.val_ds, tcfg, tdir / "model.pt",
                       progress=cfg.progress, on_epoch=on_epoch)
        acc = float(result.best_val_accuracy or 0.0)
        if not curve:  # a finished run picked up again: take its history
            curve = [h["val_accuracy"] for h in result.history]
            trial.set_user_attr("curve", curve)
        count = None
        if b.target:
            from .measure import build_for_target

            m = build_for_target(fold(result.model), wb, b.target, tdir / "target", self.count_x)
            count = m.count
            fp = m.footprint
            trial.set_user_attr("footprint", fp.to_dict())
            trial.set_user_attr("count", count)
            if m.unfit:  # the generated code depends on the weights
                return self._reject(trial, "rejected", f"{m.unfit} after training",
                                    fp, unfit=True)
        seconds = time.perf_counter() - t0
        trial.set_user_attr("val_accuracy", acc)
        trial.set_user_attr("seconds", seconds)
        if b.max_count is not None and count is not None and count > b.max_count:
            return self._reject(trial, "rejected", f"{count:,.0f} per inference after "
                                f"training, limit {b.max_count:,}", fp, count)
        trial.set_user_attr("status", "complete")
        cnt = f", {count:,.0f} {_unit(b)}/inference" if count is not None else ""
        self.log(f"trial {trial.number}: {describe(spec, wb)} val acc {acc:.4f}, RAM {fp.ram} B,"
                 f" flash {fp.flash} B{cnt} ({seconds:.1f} s; {self.trained() + 1}/"
                 f"{cfg.trials} trained)")
        return self._values(acc, fp, count)

    def _dominating(self, number: int, epoch: int, acc: float, ram: int,
                    count: float | None) -> int | None:
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                  optuna.trial.TrialState.RUNNING)
        return dominating(self.study.get_trials(deepcopy=False, states=states), number, epoch,
                          acc, ram, count, self.cfg.prune_margin)


def dominating(trials: Any, number: int, epoch: int, acc: float, ram: int,
               count: float | None, margin: float) -> int | None:
    """The pruning rule: the number of a trained trial (other than ``number``) whose
    validation accuracy at ``epoch`` was at least ``acc + margin`` and that needs no more
    RAM (and, when ``count`` is given, no more instructions by its pre-training estimate);
    ``None`` if there is none."""
    for t in trials:
        a = t.user_attrs
        curve = a.get("curve") or []
        if t.number == number or not a.get("trained") or len(curve) < epoch:
            continue
        other = curve[epoch - 1]
        fp = a.get("footprint") or {}
        if other is None or fp.get("ram") is None:
            continue
        cheaper = fp["ram"] <= ram
        if count is not None:
            cheaper = cheaper and (a.get("count_estimate") or math.inf) <= count
        if cheaper and other >= acc + margin:
            return t.number
    return None


def _unit(b: Budget) -> str:
    from ..targets import get_target

    return get_target(b.target).unit if b.target else "instructions"


def _over_text(fp: Footprint, b: Budget) -> str:
    over = fp.over(b)
    parts = []
    if "ram" in over:
        parts.append(f"RAM {fp.ram} B > {b.ram} B")
    if "flash" in over or fp.table_bytes > b.flash:
        parts.append(f"flash {fp.flash} B > {b.flash} B")
    return ", ".join(parts) or "fits"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _worker_main(cfg: SearchConfig, index: int, barrier: Any) -> None:
    """Entry point of a spawned worker process."""
    import torch

    torch.set_num_threads(1)
    prefix = f"[worker {index}] "
    worker = Worker(cfg, index, log=lambda m: _stderr(prefix + m))
    if barrier is not None:
        try:
            barrier.wait(timeout=600)
        except threading.BrokenBarrierError:
            pass  # a sibling failed to start; work alone rather than not at all
    worker.run()


def run_workers(cfg: SearchConfig, log: Callable[[str], None]) -> None:
    """Run the study's trials in this process (one worker) or in ``cfg.workers`` processes."""
    if cfg.workers == 1:
        Worker(cfg, 0, log).run()
        return
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(cfg.workers)
    procs = [ctx.Process(target=_worker_main, args=(cfg, i, barrier), name=f"ebnn-search-{i}")
             for i in range(cfg.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=30)
        raise
    bad = [f"worker {i} (exit {p.exitcode})" for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"search workers failed: {', '.join(bad)}; see their messages above")


# ---- the whole search ---------------------------------------------------------------------
def start_params(cfg: SearchConfig, input_shape: Any, classes: int) -> list[dict[str, Any]]:
    """The search parameters of each ``cfg.start_from`` model, for this data's input and
    classes; ``ValueError`` for a model the search space cannot propose. Where the word
    size is searched, the start takes the one ``ebnn build`` uses on the target (left to
    the sampler, a slow word would get a good model rejected for time)."""
    from ..codegen import choose_word_bits
    from ..fold import fold
    from ..model import build_model
    from ..spec import load_spec

    space = cfg.effective_space()
    out = []
    for name in cfg.start_from:
        spec = load_spec(name).with_input(input_shape, classes)
        params = space.params_of(spec)
        if space.search_word_bits and len(space.word_bits) > 1:
            wb = choose_word_bits(fold(build_model(spec)), cfg.target)
            params["word_bits"] = wb if wb in space.word_bits else space.word_bits[0]
        out.append(params)
    return out


def _prepare(cfg: SearchConfig, log: Callable[[str], None]) -> Any:
    """Create or check the study, fail zombies of a local storage, queue retries and the
    seed candidate. Returns the study."""
    import optuna

    budget = cfg.budget()
    _, tr, _ = load_split(cfg)
    space = cfg.effective_space()
    found = census(space, tr.input_shape, tr.classes, budget, cfg.word_bits, seed=cfg.seed)
    check_feasible(found, budget, tr.input_shape)
    starts = start_params(cfg, tr.input_shape, tr.classes)  # checked before any file
    cfg.out.mkdir(parents=True, exist_ok=True)
    storage = make_storage(cfg.storage_url(), cfg.heartbeat)
    study = open_study(cfg, create=True, storage=storage)
    key = json.loads(json.dumps(cfg.study_key(budget)))
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", key)
    elif stored != key:
        diff = [f"{k}: {stored.get(k)!r} -> {key[k]!r}" for k in key if stored.get(k) != key[k]]
        raise ValueError(f"study {cfg.study_name!r} in {cfg.storage_url()} was made with other "
                         f"settings ({'; '.join(diff)}); use another --out, --storage or "
                         "--study-name")
    if cfg.storage is None:
        # Our own SQLite file: a RUNNING trial is left over from a killed run.
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    else:
        fail_stale(study)  # trials of workers that died (the heartbeat went silent)
    requeued = sum(_requeue(study, t) for t in
                   study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
    if requeued:
        log(f"resuming {requeued} interrupted trial(s)")
    if not study.trials and found.seed is not None and cfg.seed_trials > 0:
        study.enqueue_trial(found.seed.params, user_attrs={"seeded": True})
    for params in starts:
        study.enqueue_trial(params, user_attrs={"seeded": True}, skip_if_exists=True)
    n_done = sum(1 for t in study.trials if t.user_attrs.get("trained")
                 and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    log(f"search {cfg.study_name!r} in {cfg.storage_url()}: {budget.describe()}; "
        f"{found.feasible}/{found.planned} planned candidates fit; {n_done}/{cfg.trials} "
        f"trials trained so far")
    return study


def collect(cfg: SearchConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All trial rows and the Pareto front, from the storage."""
    study = open_study(cfg)
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("status") != "surplus" and t.state.name != "WAITING"]
    return rows, pareto_front(rows, cfg.budget())


def search(cfg: SearchConfig, log: Callable[[str], None] | None = None) -> SearchResult:
    """Run (or resume) the search of ``cfg``, write the report and, unless
    ``cfg.final`` is false, train and export the best model. See the module docstring."""
    from .measure import check_target

    say = log or _stderr
    t0 = time.perf_counter()
    check_target(cfg.target)
    _prepare(cfg, say)
    run_workers(cfg, say)
    rows, front = collect(cfg)
    budget = cfg.budget()
    trained = sum(1 for r in rows if r["status"] in ("complete", "pruned"))
    meta = {"data": cfg.data, "epochs": cfg.epochs, "final_epochs": cfg.final_epochs,
            "trials_trained": trained, "study": cfg.study_name, "storage": cfg.storage_url(),
            "space": cfg.effective_space().to_dict()}
    paths = write_report(cfg.out, rows, front, budget, meta, _unit(budget))
    best = best_row(front)
    final = None
    if best is None:
        say("no trained trial fits the budget: nothing to export (run more --trials)")
    elif cfg.final:
        final = train_final(cfg, best, say)
        paths["best"] = cfg.out / "best"
    return SearchResult(rows, front, best, final, budget, cfg.out, cfg.storage_url(),
                        cfg.study_name, trained, time.perf_counter() - t0, paths)


def front_table(result: SearchResult) -> str:
    """The Pareto front of a result as Markdown (for the CLI and benchmarks)."""
    return front_markdown(result.front, result.budget, _unit(result.budget))


__all__ = ["SearchConfig", "SearchResult", "Worker", "collect", "front_table", "make_storage",
           "open_study", "run_workers", "search"]
