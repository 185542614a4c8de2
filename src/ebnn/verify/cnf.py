"""A small CNF builder: Tseitin gates and cardinality constraints as equivalences.

A *literal* is a non-zero ``int`` (DIMACS style) or a Python ``bool`` for a constant;
every gate simplifies constants away, so settled neurons cost nothing::

    cnf = Cnf()
    a, b, c = cnf.new(), cnf.new(), cnf.new()
    y = cnf.at_least([a, b, c, True], 3)     # y <-> a + b + c + 1 >= 3
    cnf.add([y])

Cardinality uses a *totalizer* (Bailleux and Boufkhad 2003) with the clauses of both
directions, truncated at the bound: its output ``r_t`` is equivalent to "at least ``t``
inputs are true", so it can sit on either side of an equivalence (a neuron's bit is
true exactly when its popcount reaches the threshold). Its size grows with ``n * k``, so
a wide constraint (a dense layer reading hundreds of undecided bits) switches to PySAT's
k-modulo totalizer (Ogawa et al. 2013, about ``n * sqrt(k)`` clauses), reified by hand:
``y -> sum >= k`` is the at-least encoding with ``NOT y`` added to every clause, and
``NOT y -> sum <= k - 1`` the at-most encoding with ``y`` added. :meth:`Cnf.counter`
returns all outputs of an untruncated totalizer: a unary number the output layer compares.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Lit = int | bool


def neg(lit: Lit) -> Lit:
    """The negation of a literal or constant."""
    return (not lit) if isinstance(lit, bool) else -lit


# Above this many totalizer merge cells (free literals times the smaller bound) a
# cardinality constraint uses the k-modulo totalizer instead.
WIDE = 4096


class Cnf:
    """Clauses over variables ``1..nvars``; ``wide`` is the switch-over size above."""

    def __init__(self, wide: int = WIDE) -> None:
        self.nvars = 0
        self.clauses: list[list[int]] = []
        self.wide = wide

    def new(self) -> int:
        self.nvars += 1
        return self.nvars

    def add(self, clause: Iterable[Lit]) -> None:
        """Add a clause; constants are simplified (a true literal drops the clause)."""
        out: list[int] = []
        for lit in clause:
            if lit is True:
                return
            if lit is False:
                continue
            out.append(lit)
        if not out:
            # An empty clause: the formula is unsatisfiable. Keep it explicit.
            v = self.new()
            self.clauses.append([v])
            self.clauses.append([-v])
            return
        self.clauses.append(out)

    # ---- gates (equivalences) ----------------------------------------------------------
    def or_(self, lits: Sequence[Lit]) -> Lit:
        """A literal equivalent to the disjunction of ``lits``."""
        if any(lit is True for lit in lits):
            return True
        rest = [lit for lit in lits if lit is not False]
        if not rest:
            return False
        if len(rest) == 1:
            return rest[0]
        y = self.new()
        self.clauses.append([-y, *rest])
        for lit in rest:
            self.clauses.append([y, -lit])
        return y

    def and_(self, lits: Sequence[Lit]) -> Lit:
        return neg(self.or_([neg(lit) for lit in lits]))

    def at_least(self, lits: Sequence[Lit], k: int) -> Lit:
        """A literal equivalent to ``sum(lits) >= k``."""
        k -= sum(1 for lit in lits if lit is True)
        free = [lit for lit in lits if not isinstance(lit, bool)]
        if k <= 0:
            return True
        if k > len(free):
            return False
        if k == 1:
            return self.or_(free)
        if k == len(free):
            return self.and_(free)
        if len(free) * min(k, len(free) - k + 1) > self.wide:
            return self._reified_kmtotalizer(free, k)
        if 2 * k > len(free) + 1:
            # sum >= k  <->  NOT (number of false literals >= n - k + 1): a smaller bound.
            k_false = len(free) - k + 1
            return neg(self._totalizer([-lit for lit in free], k_false)[k_false - 1])
        return self._totalizer(free, k)[k - 1]

    def _reified_kmtotalizer(self, lits: list[int], k: int) -> int:
        from pysat.card import CardEnc, EncType

        y = self.new()
        for bound, side, guard in ((k, CardEnc.atleast, -y), (k - 1, CardEnc.atmost, y)):
            enc = side(lits, bound=bound, top_id=self.nvars, encoding=EncType.kmtotalizer)
            self.nvars = max(self.nvars, enc.nv)
            self.clauses.extend([guard, *clause] for clause in enc.clauses)
        return y

    def counter(self, lits: Sequence[Lit]) -> tuple[int, list[Lit]]:
        """``(fixed, outputs)``: ``sum(lits) >= fixed + t`` is equivalent to ``outputs[t-1]``.

        The constants' true count is ``fixed``; ``outputs`` covers every free literal.
        """
        fixed = sum(1 for lit in lits if lit is True)
        free = [lit for lit in lits if not isinstance(lit, bool)]
        return fixed, (self._totalizer(free, len(free)) if free else [])

    def _totalizer(self, lits: Sequence[int], upto: int) -> list[Lit]:
        """Outputs ``r[0..m-1]``, ``r[t-1] <-> sum(lits) >= t`` for ``t <= m = min(n, upto)``."""
        if len(lits) == 1:
            return [lits[0]]
        half = len(lits) // 2
        left = self._totalizer(lits[:half], upto)
        right = self._totalizer(lits[half:], upto)
        return self._merge(left, len(lits[:half]), right, len(lits[half:]), upto)

    def _merge(self, a: list[Lit], na: int, b: list[Lit], nb: int, upto: int) -> list[Lit]:
        p, q = len(a), len(b)
        m = min(na + nb, upto)
        r = [self.new() for _ in range(m)]
        # Up: a >= i and b >= j imply r >= i + j.
        for i in range(min(p, m) + 1):
            for j in range(min(q, m - i) + 1):
                s = i + j
                if s == 0:
                    continue
                clause = [r[s - 1]]
                if i:
                    clause.append(-a[i - 1])
                if j:
                    clause.append(-b[j - 1])
                self.clauses.append(clause)
        # Down: a < i + 1 and b < j + 1 imply r < i + j + 1. A truncated child has as
        # many outputs as the bound, so a[i] exists whenever i + j + 1 <= m needs it.
        for i in range(min(p, m - 1) + 1):
            for j in range(min(q, m - 1 - i) + 1):
                s = i + j + 1
                clause = [-r[s - 1]]
                if i < p:
                    clause.append(a[i])
                elif p < na:  # truncated: "a >= p + 1" is unknown, no clause
                    continue
                if j < q:
                    clause.append(b[j])
                elif q < nb:
                    continue
                self.clauses.append(clause)
        return r
