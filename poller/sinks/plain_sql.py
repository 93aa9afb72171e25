"""Plain SQL on a sink's connection, written once with `?` placeholders: each
dialect gets its own (`$n`, `%s`), and table names are quoted by its rules.

`conn` is what the sink's `transaction()` yields (an asyncpg connection, an
aiomysql cursor, an aiosqlite connection). A MySQL statement is always run
with arguments, so PyMySQL %-formats it: a table name's `%` is written `%%`.
"""

from __future__ import annotations

from typing import Any

from poller.sinks import ddl


class PlainSql:
    def __init__(self, kind: str):
        self.kind = kind

    def table(self, name: str) -> str:
        if self.kind == "mysql":
            return ddl.percent_escaped(ddl.quote_ident(name, "`"))
        return ddl.quote_ident(name)

    def _sql(self, sql: str) -> str:
        if self.kind == "postgres":
            parts = sql.split("?")
            return parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))
        if self.kind == "mysql":
            return sql.replace("?", "%s")
        return sql

    async def fetch(self, conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        sql = self._sql(sql)
        if self.kind == "postgres":
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        if self.kind == "mysql":
            await conn.execute(sql, args)
            return [tuple(r) for r in await conn.fetchall()]
        async with conn.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def execute(self, conn: Any, sql: str, *args: Any) -> int:
        """Rows changed."""
        sql = self._sql(sql)
        if self.kind == "postgres":
            status = await conn.execute(sql, *args)
            last = str(status).split()[-1] if status else "0"
            return int(last) if last.isdigit() else 0
        if self.kind == "mysql":
            return int(await conn.execute(sql, args) or 0)
        async with conn.execute(sql, args) as cur:
            return int(cur.rowcount)
