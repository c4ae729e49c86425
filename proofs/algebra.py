"""Small matrices and dual numbers over z3 terms, so the shared formulas run symbolically.

`Mat` implements the handful of torch tensor operations the formulas in `formulas.py` use
(+ − × / with 2-D broadcasting, @, .mT, .sum, .mean), so one formula evaluates on torch tensors
and on matrices of z3 terms alike. `Dual` is forward-mode differentiation: a pair (value,
derivative along one direction) whose arithmetic is exact on z3 reals. z3 has no derivative of
its own; with duals the derivative of a forward formula is an explicit expression z3 can compare
with the analytic backward.
"""

from __future__ import annotations

import operator
from functools import reduce

import z3


class Mat:
    """A dense 2-D matrix of arbitrary scalars (z3 terms, Duals, numbers)."""

    def __init__(self, rows):
        self.rows = [list(r) for r in rows]

    @classmethod
    def symbols(cls, name: str, n: int, m: int, sort=z3.Real) -> Mat:
        return cls([[sort(f"{name}[{i},{j}]") for j in range(m)] for i in range(n)])

    @classmethod
    def identity(cls, n: int) -> Mat:
        return cls([[1 if i == j else 0 for j in range(n)] for i in range(n)])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.rows[0])

    def __getitem__(self, rows: slice) -> Mat:
        """Rows by slice, e.g. m[:1] (the first row, kept 2-D as in torch)."""
        return Mat(self.rows[rows])

    def entries(self) -> list:
        return [x for r in self.rows for x in r]

    def named(self, name: str) -> dict:
        """label -> entry, e.g. {"H[0,1]": ...}: how a counterexample reports this matrix."""
        return {f"{name}[{i},{j}]": x for i, r in enumerate(self.rows) for j, x in enumerate(r)}

    def map(self, f) -> Mat:
        return Mat([[f(x) for x in r] for r in self.rows])

    def _zip(self, other, op) -> Mat:
        if not isinstance(other, Mat):
            return self.map(lambda x: op(x, other))
        (n, m), (p, q) = self.shape, other.shape
        rows, cols = max(n, p), max(m, q)
        if n not in (1, rows) or p not in (1, rows) or m not in (1, cols) or q not in (1, cols):
            raise ValueError(f"shapes {self.shape} and {other.shape} do not broadcast")
        return Mat([[op(self.rows[i % n][j % m], other.rows[i % p][j % q]) for j in range(cols)]
                    for i in range(rows)])

    def __add__(self, o):
        return self._zip(o, operator.add)

    def __radd__(self, o):
        return self._zip(o, lambda a, b: b + a)

    def __sub__(self, o):
        return self._zip(o, operator.sub)

    def __rsub__(self, o):
        return self._zip(o, lambda a, b: b - a)

    def __mul__(self, o):
        return self._zip(o, operator.mul)

    def __rmul__(self, o):
        return self._zip(o, lambda a, b: b * a)

    def __truediv__(self, o):
        return self._zip(o, operator.truediv)

    def __neg__(self):
        return self.map(operator.neg)

    def __matmul__(self, o: Mat) -> Mat:
        if self.shape[1] != o.shape[0]:
            raise ValueError(f"shapes {self.shape} @ {o.shape}")
        cols = list(zip(*o.rows))
        return Mat([[_total(a * b for a, b in zip(r, c)) for c in cols] for r in self.rows])

    @property
    def mT(self) -> Mat:
        return Mat(zip(*self.rows))

    def sum(self, dim=None, keepdim: bool = False):
        """Like torch: dim None sums everything to one scalar; dim 0 or -1 needs keepdim=True."""
        if dim is None:
            return _total(self.entries())
        if not keepdim:
            raise ValueError("Mat.sum over one dimension keeps it (keepdim=True): Mat is always 2-D")
        if dim in (0, -2):
            return Mat([[_total(c) for c in zip(*self.rows)]])
        return Mat([[_total(r)] for r in self.rows])

    def mean(self, dim, keepdim: bool = False):
        n = self.shape[0] if dim in (0, -2) else self.shape[1]
        return self.sum(dim, keepdim) / n


def _total(xs):
    return reduce(operator.add, list(xs))


class Dual:
    """value + derivative·δ with δ² = 0: exact forward-mode derivative along one direction."""

    __slots__ = ("val", "der")

    def __init__(self, val, der=0):
        self.val, self.der = val, der

    @staticmethod
    def _split(o):
        return (o.val, o.der) if isinstance(o, Dual) else (o, 0)

    def __add__(self, o):
        v, d = self._split(o)
        return Dual(self.val + v, self.der + d)

    __radd__ = __add__

    def __sub__(self, o):
        v, d = self._split(o)
        return Dual(self.val - v, self.der - d)

    def __rsub__(self, o):
        v, d = self._split(o)
        return Dual(v - self.val, d - self.der)

    def __neg__(self):
        return Dual(-self.val, -self.der)

    def __mul__(self, o):
        v, d = self._split(o)
        return Dual(self.val * v, self.der * v + self.val * d)

    __rmul__ = __mul__

    def __truediv__(self, o):
        v, d = self._split(o)
        q = self.val / v
        return Dual(q, (self.der - q * d) / v)

    def __rtruediv__(self, o):
        v, d = self._split(o)
        return Dual(v, d) / self


def duals(values: Mat, derivatives: Mat | None = None) -> Mat:
    """A matrix of duals; no derivatives means a constant (derivative 0)."""
    if derivatives is None:
        return values.map(Dual)
    return Mat([[Dual(v, d) for v, d in zip(rv, rd)] for rv, rd in zip(values.rows, derivatives.rows)])


def values(m: Mat) -> Mat:
    return m.map(lambda x: Dual._split(x)[0])


def derivatives(m: Mat) -> Mat:
    return m.map(lambda x: Dual._split(x)[1])


def equal(a: Mat, b: Mat):
    """z3: a == b entrywise."""
    return z3.And([x == y for x, y in zip(a.entries(), b.entries())])


def without_division(expr):
    """(expr with every a / b by a non-constant b replaced by a · r_b, the facts r_b · b = 1).

    Exact wherever the denominators are nonzero, which the facts also require: a claim proved
    with them holds on the formula's domain. z3's nonlinear reals handle the polynomial form far
    better than division (x / 0 is an unspecified function in z3, so claims about it time out).
    """
    recips: dict[int, tuple] = {}
    seen: dict[int, tuple] = {}

    def walk(e):
        if e.get_id() in seen:
            return seen[e.get_id()][1]
        out = e
        if z3.is_app(e) and e.num_args() > 0:
            args = [walk(a) for a in e.children()]
            den = args[1] if z3.is_div(e) else None
            if den is not None and not (z3.is_rational_value(den) or z3.is_int_value(den)):
                if den.get_id() not in recips:
                    recips[den.get_id()] = (z3.Real(f"1/den{len(recips)}"), den)
                out = args[0] * recips[den.get_id()][0]
            else:
                out = e.decl()(*args)
        seen[e.get_id()] = (e, out)  # e kept alive so that its id is not reused
        return out

    result = walk(expr)
    return result, [r * den == 1 for r, den in recips.values()]
