"""What the monitoring compares: the stream's live decisions of a day (from the feature log in
`raw.decisions`, replays left out: `monitoring.live`) and the champion's training rows (the train split of
`training.dataset`)."""

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES
from fraud_platform.monitoring.live import SnapshotLoad, define_live_decisions, live_decisions
from fraud_platform.monitoring.performance import DAY_SQL
from fraud_platform.monitoring.store import require_tables, table_exists

DATASET_TABLE = "training.dataset"


@dataclass(frozen=True)
class ServedDay:
    """The decisions of one day whose vectors this code defines (other definition versions are counted)."""

    day: str
    transaction_ids: np.ndarray
    model_versions: np.ndarray
    scores: np.ndarray
    features: np.ndarray  # float32, MODEL_FEATURES order, one row per decision
    other_definitions: int  # decisions served under another feature-definition version (left out)

    def __len__(self) -> int:
        return len(self.transaction_ids)


def decision_days(connection: duckdb.DuckDBPyConnection, loads: Sequence[SnapshotLoad] = ()) -> list[str]:
    """Every UTC day (YYYY-MM-DD) with live decisions in raw.decisions, oldest first ([] before the first load):
    replays recognised by the recorded snapshot `loads` (`monitoring.live`) left out."""
    if not table_exists(connection, "decisions", "raw"):
        return []
    day = DAY_SQL.format(column="event_time")
    view = define_live_decisions(connection, loads)
    rows = connection.execute(f"SELECT DISTINCT {day} AS day FROM {view} ORDER BY day").fetchall()
    return [str(row[0]) for row in rows]


def served_day(connection: duckdb.DuckDBPyConnection, day: str, limit: int | None = None) -> ServedDay:
    """The day's live decisions (UTC day of the event), optionally a deterministic sample of `limit`."""
    view = live_decisions(connection)
    sample = (
        "ORDER BY hash(transaction_id), transaction_id LIMIT $limit" if limit else "ORDER BY transaction_id"
    )
    decisions = connection.sql(
        f"SELECT transaction_id, model_version, score, features, feature_definition_version FROM {view} "
        f"WHERE {DAY_SQL.format(column='event_time')} = $day {sample}",
        params={"day": day, **({"limit": limit} if limit else {})},
    ).to_arrow_table()
    current = pc.equal(decisions.column("feature_definition_version"), FEATURE_DEFINITION_VERSION)
    kept = decisions.filter(current)
    return ServedDay(
        day=day,
        transaction_ids=np.asarray(kept.column("transaction_id").to_pylist(), dtype=object),
        model_versions=np.asarray(kept.column("model_version").to_pylist(), dtype=object),
        scores=kept.column("score").to_numpy().astype(np.float64),
        features=feature_matrix(kept.column("features")),
        other_definitions=decisions.num_rows - kept.num_rows,
    )


def feature_matrix(lists: pa.ChunkedArray) -> np.ndarray:
    """A float32 matrix from a column of feature lists, each MODEL_FEATURES long (null elements: NaN)."""
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    if np.any(lengths != len(MODEL_FEATURES)):
        raise ValueError(
            f"served feature vectors must hold {len(MODEL_FEATURES)} values; found lengths "
            f"{sorted(set(lengths.tolist()))}"
        )
    flat = pc.list_flatten(lists.combine_chunks() if lists.num_chunks else pa.array([], lists.type))
    values = flat.to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(len(lengths), len(MODEL_FEATURES))


@dataclass(frozen=True)
class Reference:
    """The rows drift is judged against, and what they are (for the run's metadata)."""

    features: np.ndarray
    description: str


def reference_features(
    connection: duckdb.DuckDBPyConnection,
    rows: int,
    trained_until: str = "",
    tested: tuple[str, str] = ("", ""),
) -> Reference:
    """Up to `rows` rows (a deterministic sample) of the model's test window `tested` (first, last day): the
    period its metrics were measured on and the newest it knew, as NannyML's "reference period"; for a
    model registered without one, the rows it was fitted on (train and validation, up to `trained_until`)."""
    require_tables(connection, DATASET_TABLE)
    columns = ", ".join(f'"{name}"' for name in MODEL_FEATURES)
    if all(tested):
        where, params = (
            "event_date BETWEEN $first::DATE AND $last::DATE",
            {"first": tested[0], "last": tested[1]},
        )
        description = f"test window {tested[0]} .. {tested[1]}"
    elif trained_until:
        where, params = (
            "split IN ('train', 'validation') AND event_date <= $until::DATE",
            {"until": trained_until},
        )
        description = f"training rows up to {trained_until}"
    else:
        where, params, description = "split IN ('train', 'validation')", {}, "training rows"
    table = connection.sql(
        f"SELECT {columns} FROM {DATASET_TABLE} WHERE {where} ORDER BY hash(transaction_id), transaction_id "
        "LIMIT $rows",
        params={"rows": rows, **params},
    ).to_arrow_table()
    if table.num_rows == 0:
        raise ValueError(
            f"{DATASET_TABLE} has no {description}: train a model ('fraud-platform train') before monitoring drift"
        )
    return Reference(
        np.column_stack(
            [table.column(name).to_numpy(zero_copy_only=False).astype(np.float32) for name in MODEL_FEATURES]
        ),
        description,
    )
