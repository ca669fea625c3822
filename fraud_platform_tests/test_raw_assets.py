"""Raw assets materialised for real: landing batches into a DuckDB warehouse through dg.materialize."""

from datetime import UTC, date, datetime

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from fraud_platform.config import Settings
from fraud_platform.definitions import defs
from fraud_platform.lib.landing import LandingError, LandingZone
from fraud_platform.pipeline import instance_for, load_landing, register_landing_days


def _transactions(ids: list[str], times: list[datetime], card: str = "c1") -> pa.Table:
    return pa.table(
        {
            "transaction_id": ids,
            "card_id": [card] * len(ids),
            "merchant_id": ["m1"] * len(ids),
            "amount": [10.0 + index for index in range(len(ids))],
            "currency": ["USD"] * len(ids),
            "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )


def _cards(open_day: date) -> pa.Table:
    return pa.table(
        {"card_id": ["c1"], "home_lat": [40.7], "home_lon": [-74.0], "account_open_date": [open_day]}
    )


def _day(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def _warehouse_rows(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_definitions_load_the_whole_code_location(platform_env: Settings) -> None:
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert {key for key, group in groups.items() if group == "raw"} >= {
        "raw/transactions",
        "raw/cards",
        "raw/merchants",
        "raw/chargebacks",
        "raw/investigations",
    }
    assert groups["card_daily_features"] == groups["merchant_daily_features"] == "batch_features"
    assert groups["transaction_labels"] == "labels"
    assert groups["online/batch_features"] == "online"
    assert all(graph.get(key).description for key in graph.get_all_asset_keys())
    check_names = {key.name for key in graph.asset_check_keys}
    assert {"transaction_id_unique", "amount_not_negative", "card_known", "transaction_known"} <= check_names
    assert any(name.startswith("unique_combination_card_daily_features") for name in check_names)  # dbt tests
    assert definitions.resolve_sensor_def("landing_sensor") is not None
    assert definitions.resolve_schedule_def("daily_batch_refresh").cron_schedule == "0 2 * * *"
    assert definitions.resolve_job_def("batch_refresh") is not None


def test_load_is_idempotent_and_the_newest_batch_wins(platform_env: Settings) -> None:
    settings = platform_env
    zone = LandingZone(settings.landing_dir)
    zone.write_batch(
        "first",
        _transactions(["t1", "t2", "t3"], [_day(1, 23), _day(2, 0), _day(2, 1)]),
        {"cards": _cards(date(2020, 1, 1))},
        source="test",
    )
    instance = instance_for(settings)
    assert load_landing(settings, instance).success
    assert load_landing(settings, instance).success  # a second load replaces, never duplicates

    by_day = _warehouse_rows(settings, "SELECT day, count(*) FROM raw.transactions GROUP BY day ORDER BY day")
    assert by_day == [(date(2026, 3, 1), 1), (date(2026, 3, 2), 2)]
    assert _warehouse_rows(settings, "SELECT DISTINCT batch_id FROM raw.transactions") == [("first",)]

    zone.write_batch(
        "second",
        _transactions(["t4"], [_day(3)]),
        {"cards": _cards(date(2021, 6, 1))},
        source="test",
    )
    # The same transactions landed again (e.g. by the stream's feature log) are not counted twice.
    first = _transactions(["t1", "t2", "t3"], [_day(1, 23), _day(2, 0), _day(2, 1)])
    zone.write_batch("echo", first.slice(1, 1), source="stream")
    assert register_landing_days(instance, zone) == ["2026-03-03"]
    assert load_landing(settings, instance).success
    assert _warehouse_rows(settings, "SELECT count(*) FROM raw.transactions") == [(4,)]
    assert _warehouse_rows(settings, "SELECT account_open_date FROM raw.cards") == [(date(2021, 6, 1),)]
    # Context tables absent from every batch still exist, empty, so downstream SQL can rely on them.
    assert _warehouse_rows(settings, "SELECT count(*) FROM raw.chargebacks") == [(0,)]

    materialized = instance.get_materialized_partitions(dg.AssetKey(["raw", "transactions"]))
    assert materialized == {"2026-03-01", "2026-03-02", "2026-03-03"}


def test_loading_an_empty_landing_zone_says_what_to_do(platform_env: Settings) -> None:
    with pytest.raises(LandingError, match="fraud-platform simulate"):
        load_landing(platform_env, instance_for(platform_env))


def test_a_reused_transaction_id_is_quarantined_and_the_load_goes_on(platform_env: Settings) -> None:
    settings = platform_env
    zone = LandingZone(settings.landing_dir)
    zone.write_batch(
        "first",
        _transactions(["t1", "t2"], [_day(1), _day(2)]),
        {"cards": _cards(date(2020, 1, 1))},
        source="test",
    )
    # The id t1 again with other content, on another card and day (a reused id logged by the stream).
    zone.write_batch("later", _transactions(["t1"], [_day(3)], card="c2"), source="stream")
    instance = instance_for(settings)
    for _ in range(2):  # the load passes, and a second one quarantines the same row once
        assert load_landing(settings, instance).success
        assert _warehouse_rows(
            settings, "SELECT transaction_id, card_id FROM raw.transactions ORDER BY 1"
        ) == [
            ("t1", "c1"),
            ("t2", "c1"),
        ]
        assert _warehouse_rows(
            settings, "SELECT transaction_id, card_id, batch_id, reason FROM raw.quarantine"
        ) == [
            ("t1", "c2", "later", "transaction_id reused with other content: the row of batch first stands")
        ]
    event = instance.get_latest_materialization_event(dg.AssetKey(["raw", "transactions"]))
    metadata = event.asset_materialization.metadata
    assert metadata["quarantined"].value == 1
    assert metadata["quarantined_ids"].value == "t1"
