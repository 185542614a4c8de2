"""Budgeted architecture search: find the most accurate model that fits a device.

    ebnn search --data digits --ram 1KB --flash 16KB --trials 20 --epochs 5 --out runs/s1
    ebnn search --data mnist --ram 2KB --flash 32KB --target cortex-m4 \\
                --max-instructions 640k --trials 40 --workers 2 --out runs/m4

or from Python::

    from ebnn.search import SearchConfig, search
    result = search(SearchConfig(data="digits", out="runs/s1", ram="1KB", flash="16KB",
                                 trials=20, epochs=5))
    result.front          # Pareto-optimal trials (accuracy, RAM[, instructions])
    result.final          # the best one, trained for final_epochs and exported

The search (Optuna, multi-objective) proposes model specs from a
:class:`~ebnn.search.space.SearchSpace` (number of conv and dense blocks, filters, kernel
sizes, padding, pooling, conv or dense first layer, and with a target the fused or
materialized mode per conv layer and the word size). Each candidate's RAM and flash come
from :func:`ebnn.memory.plan_memory`, the code that sizes the C export, applied to the
folded untrained network; a candidate over budget is rejected before any training
(:mod:`ebnn.search.budget` defines the footprint, and how ``2KB`` is read: K = 1024).
The rest is trained for a few epochs, pruned early when another trial is clearly better
for no more RAM, and scored on validation accuracy, RAM and, with a target, instructions
per inference measured in the emulator (:mod:`ebnn.search.measure`).

``<out>`` receives ``study.db`` (the Optuna storage: rerun the same command to resume),
``trials.json`` (every trial: spec, footprint, status, accuracy per epoch),
``trials/NNNN/`` (spec and checkpoint of each trained trial), ``pareto.md`` /
``pareto.json`` / ``pareto.png`` (the front), and ``best/`` (the most accurate model on the
front, trained for ``final_epochs``: checkpoint, deployable ``.ebnn``, C export,
``summary.json``). :mod:`ebnn.search.runner` documents workers, shared PostgreSQL storage,
pruning and resuming.
"""

from .budget import (
    CODE_BYTES,
    Budget,
    BudgetError,
    Footprint,
    format_bytes,
    parse_bytes,
    plan_footprint,
)
from .report import pareto_front
from .runner import SearchConfig, SearchResult, collect, front_table, search
from .space import SearchSpace, describe

__all__ = [
    "CODE_BYTES", "Budget", "BudgetError", "Footprint", "SearchConfig", "SearchResult",
    "SearchSpace", "collect", "describe", "format_bytes", "front_table", "pareto_front",
    "parse_bytes", "plan_footprint", "search",
]
