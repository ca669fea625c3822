"""The monitoring tables in the warehouse (schema `monitoring`), replaced one day at a time (idempotent)."""

from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa

SCHEMA = "monitoring"
DAY_SQL = "CAST(timezone('UTC', {column}) AS DATE)"  # the UTC day of a timestamp column


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


def table_exists(connection: duckdb.DuckDBPyConnection, table: str, schema: str = SCHEMA) -> bool:
    """Whether <schema>.<table> exists (by default a monitoring table)."""
    query = "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?"
    return bool(connection.execute(query, [schema, table]).fetchall()[0][0])


# Where each table monitoring reads comes from, for the error when it is missing.
_SOURCES = {
    "raw.decisions": "run the scoring flow, then 'fraud-platform load' (its feature log)",
    "raw.transactions": "run 'fraud-platform load'",
    "main.transaction_labels": "run 'fraud-platform refresh'",
    "main.card_daily_features": "run 'fraud-platform refresh'",
    "main.merchant_daily_features": "run 'fraud-platform refresh'",
    "training.dataset": "run 'fraud-platform train'",
}


def require_tables(connection: duckdb.DuckDBPyConnection, *tables: str) -> None:
    """Raise ValueError naming the first missing warehouse table (schema.name) and how to create it."""
    for table in tables:
        schema, name = table.split(".")
        if not table_exists(connection, name, schema):
            raise ValueError(f"the warehouse has no table {table}: {_SOURCES.get(table, 'build it first')}")
