"""Where a search's study lives: Optuna RDB storages on SQLite (one machine) or a database
server such as PostgreSQL (several machines), with a heartbeat that re-queues the trials
of workers that died.

* **SQLite** (the default, ``sqlite:///<out>/study.db``): every transaction takes the
  write lock first (:func:`_serialize_sqlite`), so local workers never claim the same
  queued trial; a 60 s lock timeout.
* **PostgreSQL** (``postgresql://user:password@host:port/database``): the database must
  exist (``createdb``); Optuna creates its tables on first use. ``postgresql://`` is read
  with the ``psycopg`` driver (version 3, in the ``search`` extra); another SQLAlchemy
  driver can be named explicitly (``postgresql+psycopg2://...``). Start the main machine
  first: it creates the tables and the study, and two processes creating Optuna's tables
  at the same moment can collide.
* **Heartbeat.** A running trial records a heartbeat every ``heartbeat`` seconds (30 by
  default). A trial silent for ``4 * heartbeat`` seconds belongs to a dead worker: the
  next worker to look (at the start of each of its trials, while it waits for other
  workers, and when a search starts) marks it failed and queues a retry of the same model
  (:func:`_requeue`) that resumes from the trial's ``.last`` checkpoint when the files are
  on that machine, or trains it again. Nothing is lost silently: the report lists the
  failed trial and its retry (``resume_of``).
"""

from __future__ import annotations

import warnings
from typing import Any

HEARTBEAT_S = 30
GRACE_FACTOR = 4  # silent for this many heartbeats: the worker is dead


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def _root(trial: Any) -> int:
    """The trial whose training files this trial uses (itself unless it is a retry)."""
    return int(trial.user_attrs.get("resume_of", trial.number))


def _requeue(study: Any, trial: Any) -> bool:
    """Queue a retry of an interrupted trained trial (once); True if queued."""
    import optuna

    if not trial.user_attrs.get("trained") or not trial.params:
        return False
    root = _root(trial)
    for t in study.get_trials(deepcopy=False):
        if t.number > trial.number and _root(t) == root and t.state != optuna.trial.TrialState.FAIL:
            return False
    study.enqueue_trial(trial.params, user_attrs={"resume_of": root}, skip_if_exists=False)
    return True


def _on_stale(study: Any, trial: Any) -> None:
    # Called by Optuna's heartbeat check when a worker died mid-trial.
    _requeue(study, trial)


def driver_url(url: str) -> str:
    """``url`` with an explicit SQLAlchemy driver: ``postgresql://`` → ``postgresql+psycopg://``
    (SQLAlchemy's default PostgreSQL driver differs between its versions)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_storage(url: str, heartbeat: int = HEARTBEAT_S) -> Any:
    """An Optuna RDB storage with a lock timeout (SQLite) and a heartbeat of ``heartbeat``
    seconds (a trial silent for ``GRACE_FACTOR`` heartbeats is failed and re-queued)."""
    import optuna

    _quiet_optuna()
    sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite else \
        {"pool_pre_ping": True}
    storage = optuna.storages.RDBStorage(driver_url(url), engine_kwargs=kwargs,
                                         heartbeat_interval=heartbeat,
                                         grace_period=GRACE_FACTOR * heartbeat,
                                         heartbeat_stale_trial_callback=_on_stale)
    if sqlite:
        _serialize_sqlite(storage.engine)
    return storage


def fail_stale(study: Any) -> None:
    """Fail the trials of dead workers (no heartbeat for the grace period) and queue their
    retries (Optuna also does this at the start of every trial)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _serialize_sqlite(engine: Any) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``.

    Python's sqlite3 driver starts a transaction only at the first write, so two workers
    can both read a queued (WAITING) trial as free and both claim it; Optuna relies on
    ``SELECT ... FOR UPDATE``, which SQLite lacks. Taking the write lock at the start of
    each transaction (SQLAlchemy's documented recipe) makes the claim atomic.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN itself

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed
