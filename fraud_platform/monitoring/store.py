"""The monitoring tables in the warehouse (schema `monitoring`), replaced one day at a time (idempotent)."""

from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa

SCHEMA = "monitoring"


def replace_day(
    connection: duckdb.DuckDBPyConnection, table: str, day: str, rows: Sequence[Mapping[str, object]]
) -> None:
    """Replace `day`'s rows of monitoring.<table> with `rows` (records with the same keys; `day` included).

    The table is created from the first rows' columns (new columns are added later); a day with no rows is
    deleted from it.
    """
    name = f"{SCHEMA}.{table}"
    connection.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    exists = table_exists(connection, table)
    if not rows:
        if exists:
            connection.execute(f"DELETE FROM {name} WHERE day = ?::DATE", [day])
        return
    if any(row.get("day") != day for row in rows):
        raise ValueError(f"every row written for {day} into {name} must carry day = {day}")
    new_rows = pa.Table.from_pylist(list(rows))  # noqa: F841 - read by DuckDB's replacement scan
    typed = "SELECT * REPLACE (CAST(day AS DATE) AS day) FROM new_rows"
    connection.execute("BEGIN TRANSACTION")
    try:
        if not exists:
            connection.execute(f"CREATE TABLE {name} AS {typed} LIMIT 0")
        have = {row[0] for row in connection.execute(f"DESCRIBE {name}").fetchall()}
        for column, kind, *_ in connection.execute(f"DESCRIBE {typed}").fetchall():
            if column not in have:  # a measurement added since the table was created
                connection.execute(f'ALTER TABLE {name} ADD COLUMN "{column}" {kind}')
        connection.execute(f"DELETE FROM {name} WHERE day = ?::DATE", [day])
        connection.execute(f"INSERT INTO {name} BY NAME {typed}")
        connection.execute("COMMIT")
    except Exception:
        connection.execute("ROLLBACK")
        raise


def table_exists(connection: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether monitoring.<table> exists."""
    query = "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?"
    return bool(connection.execute(query, [SCHEMA, table]).fetchone()[0])
