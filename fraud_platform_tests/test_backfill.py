"""The offline backfill: the stream's update over history, in processes, as a file and as a Dagster asset."""

import math

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster_duckdb import DuckDBResource

from fraud_platform.config import Settings
from fraud_platform.defs.realtime import REALTIME_ASSETS
from fraud_platform.features.backfill import VERSION_COLUMN, backfill, output_schema, with_version
from fraud_platform.features.realtime import FEATURE_DEFINITION_VERSION, FEATURE_NAMES, CardState, update
from fraud_platform.lib.schema import TRANSACTIONS, Transaction
from fraud_platform.lib.simulator import SimulationConfig, simulate


@pytest.fixture(scope="module")
def history() -> pa.Table:
    """A few days of simulated transactions (all fraud scenarios, with and without coordinates)."""
    return simulate(SimulationConfig(cards=300, days=5, seed=11)).transactions


def sequential(table: pa.Table) -> dict[str, tuple[float, ...]]:
    """The definition itself: `update` over each card's transactions sorted by (timestamp, id)."""
    rows = table.to_pylist()
    for row in rows:
        row["timestamp_ms"] = int(row.pop("timestamp").timestamp() * 1000)
    rows.sort(key=lambda row: (row["card_id"], row["timestamp_ms"], row["transaction_id"]))
    states: dict[str, CardState] = {}
    values: dict[str, tuple[float, ...]] = {}
    for row in rows:
        event = Transaction(**row)
        states[event.card_id], emitted = update(states.get(event.card_id), event)
        values[event.transaction_id] = emitted[0].values
    return values


def as_dict(table: pa.Table) -> dict[str, tuple[float, ...]]:
    columns = [table.column(name).to_pylist() for name in FEATURE_NAMES]
    return {tid: tuple(column[i] for column in columns) for i, tid in enumerate(table.column(0).to_pylist())}


def assert_same(left: dict[str, tuple[float, ...]], right: dict[str, tuple[float, ...]]) -> None:
    assert left.keys() == right.keys()
    for key, values in left.items():
        for a, b in zip(values, right[key], strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == b, key


def test_backfill_is_the_update_over_sorted_history_in_input_order(history: pa.Table) -> None:
    shuffled = history.take(pa.array(np.random.default_rng(3).permutation(history.num_rows)))
    result = backfill(shuffled, processes=1)
    assert result.schema == output_schema()
    assert result.column("transaction_id").to_pylist() == shuffled.column("transaction_id").to_pylist()
    assert_same(as_dict(result), sequential(history))
    # The simulated history exercises every feature, including the NaN of missing coordinates.
    km = result.column("km_from_prev_txn")
    assert pc.sum(pc.is_nan(km)).as_py() > 0 and pc.max(km).as_py() > 1000  # impossible travel


def test_worker_processes_give_the_same_table(history: pa.Table) -> None:
    progress: list[int] = []
    parallel = backfill(history, processes=2, progress=progress.append)
    single = backfill(history, processes=1)
    assert parallel.column("transaction_id").equals(single.column("transaction_id"))
    assert_same(as_dict(parallel), as_dict(single))
    assert sum(progress) == history.num_rows and len(progress) > 1


def test_a_repeated_transaction_id_is_counted_once(history: pa.Table) -> None:
    first = history.slice(0, 50)
    doubled = pa.concat_tables([first, first.slice(10, 5)])
    result = backfill(doubled, processes=1)
    assert result.num_rows == 50
    assert_same(as_dict(result), as_dict(backfill(first, processes=1)))


def test_empty_history_and_the_version_column() -> None:
    result = backfill(TRANSACTIONS.empty_table())
    assert result.num_rows == 0 and result.schema == output_schema()
    versioned = with_version(backfill(simulate(SimulationConfig(cards=5, days=1, seed=1)).transactions))
    assert set(versioned.column(VERSION_COLUMN).to_pylist()) == {FEATURE_DEFINITION_VERSION}


def test_the_asset_writes_the_warehouse_table(platform_env: Settings, history: pa.Table) -> None:
    warehouse = str(platform_env.warehouse_path)
    platform_env.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(warehouse) as connection:
        connection.execute("CREATE SCHEMA raw")
        connection.execute("CREATE TABLE raw.transactions AS SELECT *, 'b1' AS batch_id FROM history")
    result = dg.materialize(REALTIME_ASSETS, resources={"warehouse": DuckDBResource(database=warehouse)})
    assert result.success
    metadata = result.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    assert metadata["rows"].value == history.num_rows
    assert metadata[VERSION_COLUMN].value == FEATURE_DEFINITION_VERSION
    with duckdb.connect(warehouse, read_only=True) as connection:
        stored = connection.sql("SELECT * FROM features.card_realtime").to_arrow_table()
    assert stored.column_names == ["transaction_id", *FEATURE_NAMES, VERSION_COLUMN]
    assert_same(as_dict(stored), sequential(history))
