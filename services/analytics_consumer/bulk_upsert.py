"""SQL generation for bulk upserts: one statement per table per batch.

The rows travel as one array per column (`unnest`), which asyncpg encodes in C. Row-by-row
`executemany` cost more CPU in Python than the database spent on the upserts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    Numeric,
    Table,
    TextClause,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from services.analytics_consumer import models
from services.analytics_consumer.accumulators import Sums


def table_of(model: type[models.Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _array_type(column: Column[Any]) -> str:
    match column.type:
        case Uuid():
            return "uuid[]"
        case Date():
            return "date[]"
        case DateTime():
            return "timestamptz[]"
        case Boolean():
            return "boolean[]"
        case BigInteger():
            return "bigint[]"
        case Integer():
            return "integer[]"
        case Numeric() if not isinstance(column.type, Float):
            return "numeric[]"
        case Float():
            return "double precision[]"
        case _:
            # Strings; JSON documents and role lists travel as JSON text, see `_select_expr`.
            return "text[]"


def _select_expr(column: Column[Any]) -> str:
    name = column.name
    if isinstance(column.type, JSONB):
        return f"CAST({name} AS jsonb)"
    if isinstance(column.type, ARRAY):
        # A list per row cannot ride in a 2-D array (unnest would flatten it): JSON text instead.
        return (
            f"CASE WHEN {name} IS NULL THEN NULL "
            f"ELSE ARRAY(SELECT jsonb_array_elements_text(CAST({name} AS jsonb))) END"
        )
    return name


@dataclass(frozen=True)
class BulkUpsert:
    """`INSERT ... SELECT FROM unnest(...) ON CONFLICT ...` for one table, built once."""

    table: Table
    columns: tuple[str, ...]
    keys: tuple[str, ...]
    updates: Mapping[str, str]
    """Column → SQL for its new value (`t` is the stored row, `excluded` the incoming one)."""
    returning: str = ""

    @classmethod
    def additive(
        cls, model: type[models.Base], keys: tuple[str, ...], returning: str = ""
    ) -> BulkUpsert:
        """A rollup: every non-key column is a sum."""
        table = table_of(model)
        columns = tuple(c.name for c in table.columns)
        sums = {c: f"t.{c} + excluded.{c}" for c in columns if c not in keys}
        return cls(table, columns, keys, sums, returning)

    @cached_property
    def statement(self) -> TextClause:
        return text(self.sql())

    def sql(self) -> str:
        arrays = ", ".join(f"CAST(:{c} AS {_array_type(self.table.c[c])})" for c in self.columns)
        select = ", ".join(_select_expr(self.table.c[c]) for c in self.columns)
        columns = ", ".join(self.columns)
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{c} = {expr}" for c, expr in self.updates.items())
            if self.updates
            else "DO NOTHING"
        )
        returning = f" RETURNING {self.returning}" if self.returning else ""
        # Identifiers and expressions come from this module and the table metadata; values
        # are always bound parameters.
        return (
            f"INSERT INTO {self.table.schema}.{self.table.name} AS t ({columns}) "  # noqa: S608
            f"SELECT {select} FROM unnest({arrays}) AS u({columns}) "
            f"ON CONFLICT ({', '.join(self.keys)}) {conflict}{returning}"
        )

    async def execute(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        if not rows:
            return []
        params = {c: [row[c] for row in rows] for c in self.columns}
        result = await conn.execute(self.statement, params)
        return list(result.all()) if self.returning else []


def sum_rows(
    keys: tuple[str, ...], columns: Iterable[str], sums: Mapping[Any, Sums]
) -> list[dict[str, Any]]:
    """Rows of a rollup in key order (so that concurrent writers lock rows in the same order)."""
    value_columns = [c for c in columns if c not in keys]
    rows = []
    for key in sorted(sums):
        values = sums[key].values
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update({c: values.get(c, 0) for c in value_columns})
        rows.append(row)
    return rows
