"""Raw assets: the landing zone loaded into the DuckDB warehouse, unchanged but for lineage columns.

`raw.transactions` is partitioned by landing day (a dynamic partition per day that has data); each run
replaces the days it covers, so loading is idempotent. A transaction_id landed with two different contents
(an id reused upstream, or an import clashing with the stream's feature log) never blocks the load: the row
of the first landed batch stands, the others move to `raw.quarantine` with the reason, and the run's
metadata names them. The context tables are small and reloaded whole, keeping the newest batch's row for
each key (for `decisions` the first: the decision the stream answered with stands); a run tagged with a
batch horizon (`BATCH_HORIZON_TAG`, set by the landing sensor) reads only the batches it covers.
"""

from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_duckdb import DuckDBResource

from fraud_platform.defs.resources import LandingResource
from fraud_platform.lib.landing import BatchHorizon, BatchManifest
from fraud_platform.lib.schema import CONTEXT_TABLES, TRANSACTIONS
from fraud_platform.monitoring.store import table_exists

GROUP = "raw"
# A transaction's identity for de-duplication: every column, the timestamp at the event schema's resolution
# (milliseconds; the stream's copy of a simulated transaction has lost its microseconds).
_TRANSACTION_IDENTITY = ", ".join(
    'epoch_us("timestamp") // 1000' if field.name == "timestamp" else f'"{field.name}"'
    for field in TRANSACTIONS
)
LANDING_DAYS = dg.DynamicPartitionsDefinition(name="landing_day")
# A context run tagged with a batch horizon (the landing sensor's, `BatchHorizon.to_json`) reads only the
# batches its tick saw: claims landed after the tick wait for the tick that loads their transactions.
BATCH_HORIZON_TAG = "fraud_platform/batch_horizon"
QUARANTINE_TABLE = "raw.quarantine"
REUSED_ID_REASON = "transaction_id reused with other content"

# Context table -> the key that identifies a row across batches.
CONTEXT_KEYS = {
    "cards": "card_id",
    "merchants": "merchant_id",
    "chargebacks": "chargeback_id",
    "investigations": "investigation_id",
    "fraud_truth": "transaction_id",
    "decisions": "transaction_id",
}
FIRST_WINS = {"decisions"}  # context tables whose oldest batch's row stands (others: the newest)
_CONTEXT_DESCRIPTIONS = {
    "cards": "Cards with home location and account open date.",
    "merchants": "Merchants with merchant category code, channel and location.",
    "chargebacks": "Chargebacks and fraud claims with the date they were reported.",
    "investigations": "Fraud investigations with their outcome.",
    "fraud_truth": "Ground truth of simulated data (never available for real data; used for evaluation only).",
    "decisions": "Decisions of the scoring flow with the feature vector served to the model (feature logging).",
}


def _create_transactions_table(connection: duckdb.DuckDBPyConnection) -> None:
    empty = TRANSACTIONS.empty_table()  # noqa: F841 - read by DuckDB's replacement scan
    connection.execute("CREATE SCHEMA IF NOT EXISTS raw")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS raw.transactions AS "
        "SELECT *, NULL::DATE AS day, NULL::VARCHAR AS batch_id FROM empty LIMIT 0"
    )


@dg.asset(
    key=["raw", "transactions"],
    group_name=GROUP,
    kinds={"duckdb", "parquet"},
    partitions_def=LANDING_DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Card transactions from the landing zone, one partition per UTC day.",
)
def raw_transactions(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource, landing: LandingResource
) -> dg.MaterializeResult:
    """Replace the covered days in raw.transactions with every landed batch's rows for those days."""
    zone = landing.zone()
    days = list(context.partition_keys)
    with warehouse.get_connection() as connection:
        _create_transactions_table(connection)
        connection.execute("BEGIN TRANSACTION")
        for day in days:
            connection.execute("DELETE FROM raw.transactions WHERE day = ?::DATE", [day])
            files = [str(path) for path in zone.transaction_files(day)]
            if files:
                # The same transaction landed twice (the stream's feature log of a replayed day) is one
                # transaction: keep its first copy. Two different rows with one id stay, for the checks.
                connection.execute(
                    "INSERT INTO raw.transactions BY NAME "
                    "SELECT * EXCLUDE (filename, copy), ?::DATE AS day, "
                    "regexp_extract(filename, 'batches/([^/]+)/transactions/', 1) AS batch_id "
                    f"FROM (SELECT *, row_number() OVER (PARTITION BY {_TRANSACTION_IDENTITY} ORDER BY filename) AS copy "
                    "      FROM read_parquet(?, filename = true)) "
                    "WHERE copy = 1",
                    [day, files],
                )
        quarantined = _quarantine_reused_ids(connection, zone.batches(), days)
        connection.execute("COMMIT")
        rows, first, last = connection.execute(
            "SELECT count(*), min(timestamp), max(timestamp) FROM raw.transactions "
            "WHERE day BETWEEN ?::DATE AND ?::DATE",
            [min(days), max(days)],
        ).fetchone()
    context.log.info("loaded %d transactions for %d day(s)", rows, len(days))
    if quarantined:
        context.log.warning(
            "%d row(s) quarantined in %s (transaction_id reused with other content): %s",
            len(quarantined),
            QUARANTINE_TABLE,
            ", ".join(quarantined[:5]),
        )
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(int(rows)),
            "days": dg.MetadataValue.int(len(days)),
            "first_timestamp": dg.MetadataValue.text(str(first)),
            "last_timestamp": dg.MetadataValue.text(str(last)),
            "quarantined": dg.MetadataValue.int(len(quarantined)),
            "quarantined_ids": dg.MetadataValue.text(", ".join(quarantined[:20]) or "-"),
        }
    )


def _quarantine_reused_ids(
    connection: duckdb.DuckDBPyConnection, batches: list[BatchManifest], days: list[str]
) -> list[str]:
    """Move every row of raw.transactions whose transaction_id an earlier landed batch (or an earlier row of
    the same batch) holds with other content to QUARANTINE_TABLE, with the reason; the reloaded `days`' rows
    there are judged again. Return the transaction_ids quarantined now."""
    batch_order = pa.table(  # noqa: F841 - read by DuckDB's replacement scan
        {
            "batch_id": [manifest.batch_id for manifest in batches],
            "seq": pa.array(range(len(batches)), pa.int64()),
        }
    )
    connection.execute(
        f"CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} AS SELECT *, NULL::VARCHAR AS reason "
        "FROM raw.transactions LIMIT 0"
    )
    connection.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE day IN (SELECT unnest(?::DATE[]))", [days])
    connection.execute(
        "CREATE OR REPLACE TEMP TABLE reused AS "
        "SELECT row_id, copy, first_value(batch_id) OVER (PARTITION BY transaction_id ORDER BY copy) AS first "
        "FROM (SELECT t.rowid AS row_id, t.transaction_id, t.batch_id, row_number() OVER ("
        "        PARTITION BY t.transaction_id ORDER BY o.seq NULLS LAST, t.rowid) AS copy "
        "      FROM raw.transactions t LEFT JOIN batch_order o USING (batch_id) "
        "      WHERE t.transaction_id IN ("
        "        SELECT transaction_id FROM raw.transactions GROUP BY transaction_id HAVING count(*) > 1))"
    )
    connection.execute(
        f"INSERT INTO {QUARANTINE_TABLE} BY NAME "
        "SELECT t.*, ? || ': the row of batch ' || r.first || ' stands' AS reason FROM raw.transactions t JOIN reused r ON t.rowid = r.row_id "
        "WHERE r.copy > 1",
        [REUSED_ID_REASON],
    )
    ids = connection.execute(
        "SELECT t.transaction_id FROM raw.transactions t JOIN reused r ON t.rowid = r.row_id "
        "WHERE r.copy > 1 ORDER BY t.transaction_id"
    ).fetchall()
    connection.execute(
        "DELETE FROM raw.transactions WHERE rowid IN (SELECT row_id FROM reused WHERE copy > 1)"
    )
    connection.execute("DROP TABLE reused")
    return [transaction_id for (transaction_id,) in ids]


def _stack_batches(files: list[Path], table: str) -> pa.Table:
    """One context table over batches (oldest first), each row tagged with its batch's sequence number."""
    schema = CONTEXT_TABLES[table]
    parts = [schema.empty_table()]
    for path in files:
        parts.append(pq.read_table(path, schema=schema))
    sequence = np.repeat(np.arange(len(parts), dtype=np.int32), [part.num_rows for part in parts])
    return pa.concat_tables(parts).append_column("batch_seq", pa.array(sequence))


def _context_asset(table: str) -> dg.AssetsDefinition:
    """The raw asset for one context table: every batch's rows, the newest batch winning per key."""
    key_column = CONTEXT_KEYS[table]
    order = "ASC" if table in FIRST_WINS else "DESC"

    @dg.asset(
        name=table,
        key_prefix="raw",
        group_name=GROUP,
        kinds={"duckdb", "parquet"},
        description=_CONTEXT_DESCRIPTIONS[table],
    )
    def _load(
        context: dg.AssetExecutionContext, warehouse: DuckDBResource, landing: LandingResource
    ) -> dg.MaterializeResult:
        horizon = context.run.tags.get(BATCH_HORIZON_TAG)
        files = landing.zone().context_files(table, BatchHorizon.from_json(horizon) if horizon else None)
        stacked = _stack_batches(files, table)  # noqa: F841 - read by DuckDB's replacement scan
        with warehouse.get_connection() as connection:
            connection.execute("CREATE SCHEMA IF NOT EXISTS raw")
            connection.execute(
                f"CREATE OR REPLACE TABLE raw.{table} AS "
                "SELECT * EXCLUDE (batch_seq, newest) FROM ("
                f"  SELECT *, row_number() OVER (PARTITION BY {key_column} ORDER BY batch_seq {order}) AS newest"
                "   FROM stacked"
                ") WHERE newest = 1"
            )
            (rows,) = connection.execute(f"SELECT count(*) FROM raw.{table}").fetchone()
        return dg.MaterializeResult(
            metadata={
                "rows": dg.MetadataValue.int(int(rows)),
                "batches": dg.MetadataValue.int(len(files)),
            }
        )

    return _load


CONTEXT_ASSETS = [_context_asset(table) for table in CONTEXT_KEYS]
RAW_ASSETS = [raw_transactions, *CONTEXT_ASSETS]


def _bad_rows_check(
    table: str,
    name: str,
    description: str,
    bad_rows_sql: str,
    *,
    reads: tuple[str, ...] = (),
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetChecksDefinition:
    """An asset check that passes when `bad_rows_sql` (a SELECT of offending keys) returns no row.

    `reads` names other raw tables the SQL joins, so the check runs after they are loaded in the same run;
    one not loaded at all yet fails the check (at its severity) with the table named. ERROR checks block
    downstream assets; WARN checks report.
    """

    @dg.asset_check(
        asset=dg.AssetKey(["raw", table]),
        name=name,
        description=description,
        blocking=severity == dg.AssetCheckSeverity.ERROR,
        additional_deps=[dg.AssetKey(["raw", other]) for other in reads],
    )
    def _check(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        with warehouse.get_connection() as connection:
            missing = [f"raw.{other}" for other in reads if not table_exists(connection, other, "raw")]
            if missing:  # e.g. the landing sensor's first transactions run, before its context run
                return dg.AssetCheckResult(
                    passed=False,
                    severity=severity,
                    description=f"cannot check yet: {', '.join(missing)} not loaded",
                    metadata={"not_loaded": dg.MetadataValue.text(", ".join(missing))},
                )
            (bad,) = connection.execute(f"SELECT count(*) FROM ({bad_rows_sql})").fetchone()
            examples = connection.execute(f"{bad_rows_sql} LIMIT 5").fetchall()
        return dg.AssetCheckResult(
            passed=bad == 0,
            severity=severity,
            metadata={
                "bad_rows": dg.MetadataValue.int(int(bad)),
                "examples": dg.MetadataValue.text(", ".join(str(row[0]) for row in examples) or "-"),
            },
        )

    return _check


def _unique_key_check(table: str, key: str) -> dg.AssetChecksDefinition:
    return _bad_rows_check(
        table,
        f"{key}_unique",
        f"Every {key} appears once.",
        f"SELECT {key} FROM raw.{table} GROUP BY {key} HAVING count(*) > 1",
    )


RAW_CHECKS = [
    *(_unique_key_check(table, key) for table, key in CONTEXT_KEYS.items() if table != "fraud_truth"),
    _unique_key_check("transactions", "transaction_id"),
    _bad_rows_check(
        "transactions",
        "amount_not_negative",
        "Every amount is >= 0 (0: an account verification).",
        "SELECT transaction_id FROM raw.transactions WHERE NOT amount >= 0",
    ),
    _bad_rows_check(
        "transactions",
        "timestamp_in_range",
        "Every timestamp lies in 1990-2099 and on the UTC day of its partition.",
        "SELECT transaction_id FROM raw.transactions WHERE timestamp < TIMESTAMPTZ '1990-01-01 00:00:00+00' "
        "OR timestamp >= TIMESTAMPTZ '2100-01-01 00:00:00+00' "
        "OR CAST(timezone('UTC', timestamp) AS DATE) <> day",
    ),
    # A card or merchant can legitimately be seen before its context arrives: warn, do not block.
    _bad_rows_check(
        "transactions",
        "card_known",
        "Every transaction's card is in raw.cards.",
        "SELECT transaction_id FROM raw.transactions ANTI JOIN raw.cards USING (card_id)",
        reads=("cards",),
        severity=dg.AssetCheckSeverity.WARN,
    ),
    _bad_rows_check(
        "transactions",
        "merchant_known",
        "Every transaction's merchant is in raw.merchants.",
        "SELECT transaction_id FROM raw.transactions ANTI JOIN raw.merchants USING (merchant_id)",
        reads=("merchants",),
        severity=dg.AssetCheckSeverity.WARN,
    ),
    _bad_rows_check(
        "chargebacks",
        "transaction_known",
        "Every chargeback refers to a landed transaction and was reported after it.",
        "SELECT chargeback_id FROM raw.chargebacks c LEFT JOIN raw.transactions t USING (transaction_id) "
        "WHERE t.transaction_id IS NULL OR c.reported_at < t.timestamp",
        reads=("transactions",),
    ),
]
