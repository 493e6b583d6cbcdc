"""``--where`` filters: a tiny grammar, parsed, never evaluated as code.

    FILTER    := CONDITION ("," CONDITION)*            all must hold (so must repeated --where)
    CONDITION := NAME OP NUMBER
    OP        := ">" | ">=" | "<" | "<=" | "==" | "=" | "!="
    NAME      := a metric name, or ``epoch`` / ``step`` when no metric has that name

A checkpoint without the metric, or with a NaN value, matches no condition.
"""

from __future__ import annotations

import math
import operator
import re
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


@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    value: float

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
        return OPS[self.op](v, self.value)

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
            out.append(Condition(m.group("name"), m.group("op"), value))
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
