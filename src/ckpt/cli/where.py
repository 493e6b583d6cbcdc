"""``--where`` filters: a tiny grammar, parsed, never evaluated as code.

    FILTER    := CONDITION ("," CONDITION)*            all must hold (so must repeated --where)
    CONDITION := NAME OP NUMBER
    OP        := ">" | ">=" | "<" | "<=" | "==" | "=" | "!="
    NAME      := a metric name, or ``epoch`` / ``step`` when no metric has that name

A checkpoint without the metric, or with a NaN value, matches no condition.

Metrics are compared at the precision they are shown with: a value equals NUMBER when both round to
the same number at 4 significant digits (``ckpt ls`` shows 4), or at as many digits as NUMBER is written
with, if more. So ``val_acc==0.91`` matches a float32 0.91 (0.910000026...) shown as 0.91, and not 0.9104;
``<``, ``<=``, ``>``, ``>=`` and ``!=`` agree with that equality. ``epoch`` and ``step`` compare exactly.
"""

from __future__ import annotations

import math
import operator
import re
from decimal import Decimal, InvalidOperation
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ckpt.records import CheckpointInfo

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt, "=": operator.eq,
}
_CONDITION = re.compile(r"^\s*(?P<name>[^<>=!,]+?)\s*(?P<op>>=|<=|==|!=|>|<|=)\s*(?P<value>[^<>=!,\s]+)\s*$")


class WhereError(ValueError):
    pass


DISPLAY_DIGITS = 4  # significant digits of fmt_metric (ckpt.cli.common)


def significant_digits(text: str) -> int:
    """How many significant digits ``text`` is written with ("0.91" 2, "100" 3, "1.50e-3" 3)."""
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        return 0
    return len(d.as_tuple().digits) if d.is_finite() and d != 0 else 1


def rounded(v: float, digits: int) -> float:
    return float(f"{v:.{digits}g}")


@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    value: float
    digits: int = DISPLAY_DIGITS  # precision of == for metrics

    def value_of(self, info: CheckpointInfo) -> float | None:
        if self.name in info.metrics:
            return info.metrics[self.name]
        if self.name in ("epoch", "step"):
            v = getattr(info, self.name)
            return None if v is None else float(v)
        return None

    def __call__(self, info: CheckpointInfo) -> bool:
        v = self.value_of(info)
        if v is None or math.isnan(v):
            return False
        if self.name not in info.metrics or math.isinf(v) or math.isinf(self.value):
            return OPS[self.op](v, self.value)  # epoch and step: integers, exact
        a, b = rounded(v, self.digits), rounded(self.value, self.digits)
        return OPS[self.op](a, b)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


def parse(expressions: Iterable[str]) -> list[Condition]:
    """Every condition in every ``--where`` expression; WhereError says what is wrong and how to write it."""
    out = []
    for expr in expressions:
        parts = expr.split(",")
        for part in parts:
            if not part.strip():
                raise WhereError(f"empty condition in {expr!r}; write e.g. 'val_acc>0.9,epoch>=5'")
            m = _CONDITION.match(part)
            if m is None:
                raise WhereError(f"cannot read condition {part.strip()!r}: write METRIC OP NUMBER with OP one of "
                                 f"> >= < <= == != (e.g. 'val_acc>0.9')")
            try:
                value = float(m.group("value"))
            except ValueError:
                raise WhereError(f"in {part.strip()!r}, {m.group('value')!r} is not a number") from None
            if math.isnan(value):
                raise WhereError(f"in {part.strip()!r}: comparing with NaN matches nothing; NaN values are "
                                 f"never selected")
            digits = max(DISPLAY_DIGITS, significant_digits(m.group("value")))
            out.append(Condition(m.group("name"), m.group("op"), value, digits))
    return out


def apply(conditions: list[Condition], infos: Iterable[Any]) -> list[Any]:
    """The checkpoints meeting every condition; a name no checkpoint has is an error (a typo, surely)."""
    infos = list(infos)
    known = {m for i in infos for m in i.metrics} | {"epoch", "step"}
    for c in conditions:
        if infos and c.name not in known:
            have = ", ".join(sorted(known - {"epoch", "step"})) or "none"
            raise WhereError(f"no checkpoint has a metric named {c.name!r} (metrics: {have}; also epoch, step)")
    return [i for i in infos if all(c(i) for c in conditions)]
