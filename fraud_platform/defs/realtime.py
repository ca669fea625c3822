"""Real-time features backfilled over history: the training side of "one definition, two engines".

`features/card_realtime` runs the stream's own `update` over every raw transaction in event-time order
(`fraud_platform.features.backfill`), so training rows carry exactly the window features the stream serves.
"""

import time

import dagster as dg
from dagster_duckdb import DuckDBResource

from fraud_platform.features.backfill import VERSION_COLUMN, backfill, with_version
from fraud_platform.features.realtime import FEATURE_DEFINITION_VERSION, FEATURES
from fraud_platform.lib.schema import TRANSACTIONS

GROUP = "realtime_features"
TABLE = "features.card_realtime"


@dg.asset(
    key=["features", "card_realtime"],
    group_name=GROUP,
    kinds={"python", "duckdb"},
    deps=[dg.AssetKey(["raw", "transactions"])],
    description=(
        "Real-time card window features of every raw transaction, computed offline by the stream's own "
        f"update code (definition {FEATURE_DEFINITION_VERSION}); one row per transaction_id."
    ),
    metadata={"columns": dg.MetadataValue.md("\n".join(f"- `{f.name}`: {f.description}" for f in FEATURES))},
)
def card_realtime_features(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource
) -> dg.MaterializeResult:
    """Backfill raw.transactions into features.card_realtime (replaced whole)."""
    columns = ", ".join(field.name for field in TRANSACTIONS)
    with warehouse.get_connection() as connection:
        transactions = connection.sql(f"SELECT {columns} FROM raw.transactions").to_arrow_table()
    began = time.perf_counter()
    features = with_version(backfill(transactions))  # noqa: F841 - read by DuckDB's replacement scan
    seconds = time.perf_counter() - began
    with warehouse.get_connection() as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS features")
        connection.execute(f"CREATE OR REPLACE TABLE {TABLE} AS SELECT * FROM features")
        (rows,) = connection.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    skipped = transactions.num_rows - rows
    context.log.info(
        "backfilled %d transactions in %.1f s (%d duplicate ids skipped)", rows, seconds, skipped
    )
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(int(rows)),
            "duplicates_skipped": dg.MetadataValue.int(int(skipped)),
            "seconds": dg.MetadataValue.float(round(seconds, 3)),
            "rows_per_second": dg.MetadataValue.float(float(round(rows / seconds)) if seconds else 0.0),
            VERSION_COLUMN: dg.MetadataValue.text(FEATURE_DEFINITION_VERSION),
        }
    )


REALTIME_ASSETS = [card_realtime_features]
