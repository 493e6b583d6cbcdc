"""Plain SQL through the driver, for the statements on every save's path.

SQLAlchemy's statement construction, caching and result processing cost about 10 ms of CPU per save
(measured: more than the rest of a small save together); the same statements as driver SQL cost a
fraction of that. Only fixed, simple statements live here; everything else uses SQLAlchemy. Values
that SQLAlchemy stores in a dialect-specific form (timestamps) go through its own bind processors, so
rows written here read back exactly as rows written by the ORM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime
from sqlalchemy.orm import Session


class Raw:
    """Driver SQL on the connection of a session's transaction. Write ``?`` for parameters."""

    def __init__(self, s: Session | Connection) -> None:
        self.conn = s.connection() if isinstance(s, Session) else s
        dialect = self.conn.dialect
        self._mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._time = DateTime(timezone=True).bind_processor(dialect) or (lambda v: v)

    def time(self, value: datetime) -> Any:
        return self._time(value)

    def _sql(self, sql: str) -> str:
        return sql if self._mark == "?" else sql.replace("?", self._mark)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(r) for r in self.conn.exec_driver_sql(self._sql(sql), tuple(params)).fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return row[0] if row else None

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.exec_driver_sql(self._sql(sql), tuple(params))

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        for i in range(0, len(rows), 5000):
            self.conn.exec_driver_sql(self._sql(sql), rows[i:i + 5000])

    def where_in(self, sql: str, values: Sequence[Any], before: Sequence[Any] = ()) -> list[tuple]:
        """``sql`` whose last parameter list is ``IN ({})``, run for ``values`` in chunks; ``before`` are the
        parameters that come ahead of it."""
        out: list[tuple] = []
        values = list(values)
        for i in range(0, len(values), 500):
            chunk = values[i:i + 500]
            out += self.rows(sql.format(",".join("?" * len(chunk))), (*before, *chunk))
        return out
