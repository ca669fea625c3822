"""Live decisions: the feature log without the replays of history that a later snapshot served.

Monitoring judges what production would have decided. A replay of past days (the main job's warm-up, a
backfill through the stream) is served the online store's snapshot of the moment, dated on or after the
replayed day: its vectors know the future, so skew, drift and realised performance on them mean nothing.
The online loads (`online/batch_features` materialisations: when, which snapshot) say which snapshot served
each decision (the newest load before its decision time); a decision served by a snapshot of its own event
day or later is a replay and is left out. Decisions made before any recorded load are kept.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import duckdb
import pyarrow as pa

from fraud_platform.monitoring.store import DAY_SQL, require_tables

LIVE_DECISIONS = "live_decisions"


@dataclass(frozen=True)
class SnapshotLoad:
    """One load of a day's snapshots into the online store."""

    loaded_at: datetime
    snapshot_date: date


def define_live_decisions(connection: duckdb.DuckDBPyConnection, loads: Sequence[SnapshotLoad] = ()) -> str:
    """(Re)create the temporary view of raw.decisions without replays on this connection; return its name."""
    require_tables(connection, "raw.decisions")
    loaded = pa.table(  # noqa: F841 - read by DuckDB's replacement scan
        {
            "loaded_at": pa.array([load.loaded_at for load in loads], pa.timestamp("us", tz="UTC")),
            "snapshot_date": pa.array([load.snapshot_date for load in loads], pa.date32()),
        }
    )
    connection.execute(
        "CREATE OR REPLACE TEMP TABLE snapshot_loads AS SELECT * FROM loaded ORDER BY loaded_at"
    )
    day = DAY_SQL.format(column="decided.event_time")
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW {LIVE_DECISIONS} AS "
        "SELECT decided.* FROM raw.decisions AS decided "
        "ASOF LEFT JOIN snapshot_loads AS served ON decided.decision_time >= served.loaded_at "
        f"WHERE served.snapshot_date IS NULL OR served.snapshot_date < {day}"
    )
    return LIVE_DECISIONS


def live_decisions(connection: duckdb.DuckDBPyConnection) -> str:
    """The view's name, defined without recorded loads (every decision kept) if this connection has none yet."""
    (exists,) = connection.execute(
        "SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND temporary", [LIVE_DECISIONS]
    ).fetchall()[0]
    return LIVE_DECISIONS if exists else define_live_decisions(connection)


def replayed_count(connection: duckdb.DuckDBPyConnection, day: str) -> int:
    """How many of the day's decisions are replays (left out of monitoring)."""
    view = live_decisions(connection)
    day_of = DAY_SQL.format(column="event_time")
    (total,) = connection.execute(
        f"SELECT count(*) FROM raw.decisions WHERE {day_of} = ?::DATE", [day]
    ).fetchall()[0]
    (live,) = connection.execute(f"SELECT count(*) FROM {view} WHERE {day_of} = ?::DATE", [day]).fetchall()[0]
    return int(total - live)
