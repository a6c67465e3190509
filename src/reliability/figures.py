"""Bench-format figures: one line per figure, `<name> = <value> <unit> (target <op> <value>)`
(/work/shared/conventions.md), so that scripts can read them."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
}


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    op: str
    target: float

    def met(self) -> bool:
        return _OPS[self.op](self.value, self.target)

    def line(self) -> str:
        return f"{self.name} = {_fmt(self.value)} {self.unit} (target {self.op} {_fmt(self.target)})"


def _fmt(v: float) -> str:
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.2f}"


def print_figures(figures: Iterable[Figure]) -> bool:
    """Print every figure; True when all of them meet their target."""
    ok = True
    for f in figures:
        print(f.line(), flush=True)
        ok = ok and f.met()
    return ok
