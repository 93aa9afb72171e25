"""Target tables that keep a log of every write made to them.

An upsert that writes a row twice leaves the table looking right; the log, a
`{table}_writes` table filled by a trigger on every insert and update, does
not. Tests assert exactly-once on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.support import db


def create_logged_table(
    kind: str, dsn: str, table: str, *, columns: str, log_columns: str, logged: Sequence[str]
) -> None:
    """Create `table` (`columns`: its column list in the dialect of `kind`) and its
    write log (`log_columns`), which receives `logged` of every row written.
    Replaces tables of the same names and forgets the stream of that name."""
    into = ", ".join(logged)
    values = ", ".join(f"NEW.{c}" for c in logged)
    insert = f"INSERT INTO {table}_writes ({into}) VALUES ({values})"
    stmts = [
        f"DROP TABLE IF EXISTS {table}",
        f"DROP TABLE IF EXISTS {table}_writes",
        f"CREATE TABLE {table} ({columns})",
        f"CREATE TABLE {table}_writes ({log_columns})",
    ]
    if kind == "postgres":
        stmts += [
            f"CREATE OR REPLACE FUNCTION {table}_log() RETURNS trigger AS $$ BEGIN "
            f"{insert}; RETURN NEW; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER {table}_trg AFTER INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_log()",
        ]
    else:
        stmts += [
            f"CREATE TRIGGER {table}_ins AFTER INSERT ON {table} FOR EACH ROW {insert}",
            f"CREATE TRIGGER {table}_upd AFTER UPDATE ON {table} FOR EACH ROW {insert}",
        ]
    db.execute(kind, dsn, *stmts)
    db.drop_bookkeeping(kind, dsn, table)
