"""The batch side on a hand-made fixture: dbt snapshots and labels against hand-computed values, raw asset
checks on bad data, the landing sensor, and the online load into a real Redis server."""

import math
from collections.abc import Iterator
from datetime import UTC, date, datetime

import dagster as dg
import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner

from fraud_platform.cli import main
from fraud_platform.config import Settings
from fraud_platform.defs.automation import landing_sensor
from fraud_platform.defs.raw import LANDING_DAYS, RAW_ASSETS, RAW_CHECKS
from fraud_platform.defs.resources import LandingResource, build_resources
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.online_store import OnlineStore
from fraud_platform.lib.redis_server import LocalRedisServer
from fraud_platform.pipeline import instance_for, load_landing, load_online, refresh_batch_side


def _at(day: int, hour: int) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def _table(rows: list[dict], schema_hint: dict[str, pa.DataType] | None = None) -> pa.Table:
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    types = schema_hint or {}
    return pa.table({name: pa.array(values, types.get(name)) for name, values in columns.items()})


TIMESTAMP = pa.timestamp("us", tz="UTC")
TRANSACTIONS = [
    # (id, card, merchant, amount, time, channel)
    ("t1", "c1", "m1", 10.0, _at(1, 10), "pos"),
    ("t2", "c1", "m2", 30.0, _at(2, 2), "ecom"),
    ("t3", "c1", "m1", 20.0, _at(4, 12), "pos"),
    ("t4", "c2", "m1", 100.0, _at(2, 12), "pos"),
    ("t5", "c2", "m1", 50.0, _at(10, 12), "pos"),
]


def _transactions() -> pa.Table:
    names = ("transaction_id", "card_id", "merchant_id", "amount", "timestamp", "channel")
    table = _table([dict(zip(names, row, strict=True)) for row in TRANSACTIONS], {"timestamp": TIMESTAMP})
    return table.append_column("currency", pa.array(["USD"] * table.num_rows))


def _context() -> dict[str, pa.Table]:
    return {
        "cards": _table(
            [
                {"card_id": "c1", "account_open_date": date(2026, 2, 20)},
                {"card_id": "c2", "account_open_date": date(2025, 3, 1)},
            ]
        ),
        "merchants": _table(
            [
                {"merchant_id": "m1", "channel": "pos", "mcc": "5411"},
                {"merchant_id": "m2", "channel": "ecom", "mcc": "5815"},
            ]
        ),
        "chargebacks": _table(
            [
                # t2 is reported on 5 March; t5's claim arrives after the newest transaction (not known yet).
                {"chargeback_id": "cb1", "transaction_id": "t2", "card_id": "c1", "reported_at": _at(5, 9)},
                {"chargeback_id": "cb2", "transaction_id": "t5", "card_id": "c2", "reported_at": _at(11, 0)},
            ],
            {"reported_at": TIMESTAMP},
        ),
        "investigations": _table(
            [
                {
                    "investigation_id": "inv1",
                    "card_id": "c1",
                    "transaction_id": "t2",
                    "opened_at": _at(5, 10),
                    "closed_at": _at(7, 10),
                    "outcome": "confirmed_fraud",
                }
            ],
            {"opened_at": TIMESTAMP, "closed_at": TIMESTAMP},
        ),
    }


@pytest.fixture(scope="module")
def batch_home(
    tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedisServer
) -> Iterator[tuple[Settings, dg.DagsterInstance]]:
    """The fixture landed, loaded and refreshed (dbt build + online load) once, with a 3-day label maturity."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in Settings.from_env({}).environment():
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("FRAUD_PLATFORM_HOME", str(tmp_path_factory.mktemp("batch_home")))
        monkeypatch.setenv("REDIS_URL", redis_server.url)
        monkeypatch.setenv("FRAUD_PLATFORM_LABEL_MATURITY_DAYS", "3")
        settings = Settings.from_env()
        LandingZone(settings.landing_dir).write_batch("fixture", _transactions(), _context(), source="test")
        instance = instance_for(settings)
        assert load_landing(settings, instance).success
        refreshed = refresh_batch_side(instance)
        assert refreshed.success
        assert all(check.passed for check in refreshed.get_asset_check_evaluations())
        yield settings, instance


def _rows(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def _card_day(settings: Settings, card: str, day: int, columns: str) -> tuple:
    (row,) = _rows(
        settings,
        f"SELECT {columns} FROM card_daily_features WHERE card_id = '{card}' AND as_of_date = DATE '2026-03-{day:02d}'",
    )
    return row


@pytest.mark.slow
def test_card_snapshot_matches_hand_computation(batch_home: tuple[Settings, dg.DagsterInstance]) -> None:
    settings, _ = batch_home
    columns = (
        "txn_count_7d, amount_sum_7d, amount_mean_7d, amount_std_7d, amount_max_7d, distinct_merchants_30d, "
        "ecom_share_30d, night_share_30d, days_since_open"
    )
    assert _card_day(settings, "c1", 1, columns) == (1, 10.0, 10.0, None, 10.0, 1, 0.0, 0.0, 9)
    count, total, mean, std, largest, merchants, ecom, night, opened = _card_day(settings, "c1", 2, columns)
    assert (count, total, mean, largest, merchants, ecom, night, opened) == (
        2,
        40.0,
        20.0,
        30.0,
        2,
        0.5,
        0.5,
        10,
    )
    assert math.isclose(std, math.sqrt(200.0))
    assert _card_day(settings, "c1", 4, "txn_count_7d, amount_mean_7d, amount_std_7d") == (3, 20.0, 10.0)
    # The 7-day window of 9 March is 3..9 March: only t3 is left; 30 days still hold all three.
    assert _card_day(settings, "c1", 9, "txn_count_7d, txn_count_30d") == (1, 3)
    # The first day of a card is its first transaction's day: c2 has no row before 2 March.
    assert _rows(settings, "SELECT min(as_of_date) FROM card_daily_features WHERE card_id = 'c2'") == [
        (date(2026, 3, 2),)
    ]


@pytest.mark.slow
def test_snapshots_know_only_what_was_reported_by_that_day(
    batch_home: tuple[Settings, dg.DagsterInstance],
) -> None:
    settings, _ = batch_home
    outcome = "chargebacks_known, investigations_365d, last_investigation_outcome"
    assert _card_day(settings, "c1", 4, outcome) == (0, 0, None)  # reported on the 5th: unknown on the 4th
    assert _card_day(settings, "c1", 5, outcome) == (1, 1, None)  # investigation open, not closed
    assert _card_day(settings, "c1", 7, outcome) == (1, 1, "confirmed_fraud")
    merchant = _rows(
        settings,
        "SELECT as_of_date, txn_count_30d, fraud_count_30d, fraud_rate_30d FROM merchant_daily_features "
        "WHERE merchant_id = 'm2' AND as_of_date BETWEEN DATE '2026-03-04' AND DATE '2026-03-05' ORDER BY 1",
    )
    assert merchant == [(date(2026, 3, 4), 1, 0, 0.0), (date(2026, 3, 5), 1, 1, 1.0)]
    # t5's chargeback is reported after the newest transaction: m1 knows no fraud on the last day.
    assert _rows(
        settings,
        "SELECT fraud_count_90d FROM merchant_daily_features WHERE merchant_id = 'm1' ORDER BY as_of_date DESC LIMIT 1",
    ) == [(0,)]


@pytest.mark.slow
def test_labels_follow_the_maturity_rule(batch_home: tuple[Settings, dg.DagsterInstance]) -> None:
    settings, instance = batch_home
    labels = dict(
        (row[0], row[1:])
        for row in _rows(settings, "SELECT transaction_id, label, label_known_at FROM transaction_labels")
    )
    assert labels["t2"] == (1, _at(5, 9))  # chargeback reported
    assert labels["t1"] == (0, _at(4, 10))  # 3 days old at the newest transaction (10 March 12:00)
    assert labels["t3"][0] == 0  # exactly 6 days old: mature
    assert labels["t5"] == (None, None)  # too young, and its claim comes later
    event = instance.get_latest_materialization_event(dg.AssetKey(["transaction_labels"]))
    metadata = event.asset_materialization.metadata
    assert metadata["labels_known"].value == 4 and metadata["labels_unknown"].value == 1
    assert metadata["labels_new_since_previous"].value == 4


@pytest.mark.slow
def test_online_store_serves_the_latest_snapshot(
    batch_home: tuple[Settings, dg.DagsterInstance], redis_server: LocalRedisServer
) -> None:
    store = OnlineStore(redis_server.client())
    card = store.card_features("c1")  # snapshot of 10 March
    assert (card["txn_count_7d"], card["amount_sum_7d"], card["txn_count_30d"], card["amount_sum_30d"]) == (
        1,
        20,
        3,
        60,
    )
    assert card["last_investigation_fraud"] == 1.0 and card["chargebacks_known"] == 1.0
    merchant = store.merchant_features("m2")
    assert merchant["fraud_count_30d"] == 1.0 and merchant["fraud_rate_30d"] == 1.0
    unknown = store.card_features("never-seen")
    assert all(math.isnan(value) for value in unknown.values())


def _load_online(settings: Settings, instance: dg.DagsterInstance, snapshot_date: str) -> bool:
    return load_online(settings, instance, snapshot_date).success


@pytest.mark.slow
def test_an_earlier_snapshot_can_be_served_and_a_missing_one_is_refused(
    batch_home: tuple[Settings, dg.DagsterInstance], redis_server: LocalRedisServer
) -> None:
    settings, instance = batch_home
    store = OnlineStore(redis_server.client())
    try:
        assert _load_online(settings, instance, "2026-03-04")  # serves 5 March as it was served then
        card = store.card_features("c1")
        assert (card["txn_count_7d"], card["amount_mean_7d"]) == (3, 20.0)
        assert not _load_online(settings, instance, "2025-01-01")  # no such snapshot: the run fails...
        assert not _load_online(settings, instance, "4 March")
        assert not _load_online(settings, instance, "20260304")  # ISO basic form: refused, not an SQL error
        assert store.card_features("c1")["txn_count_7d"] == 3  # ...and the served generation stays
        refused = CliRunner().invoke(main, ["online", "--snapshot-date", "2025-01-01"])
        assert refused.exit_code == 1
        assert "card_daily_features has no snapshot of 2025-01-01" in refused.output
    finally:
        assert _load_online(settings, instance, "")  # back to the latest for the other tests
    assert store.card_features("c1")["txn_count_7d"] == 1


def _failed_checks(result: dg.ExecuteInProcessResult) -> set[tuple[str, str]]:
    return {
        (evaluation.asset_key.to_user_string(), evaluation.check_name)
        for evaluation in result.get_asset_check_evaluations()
        if not evaluation.passed
    }


@pytest.mark.slow
def test_raw_checks_fail_on_seeded_bad_data(platform_env: Settings) -> None:
    settings = platform_env
    zone = LandingZone(settings.landing_dir)
    instance = instance_for(settings)
    orphan_claim = _table(
        [{"chargeback_id": "cb9", "transaction_id": "nope", "card_id": "c1", "reported_at": _at(3, 1)}],
        {"reported_at": TIMESTAMP},
    )
    zone.write_batch("good", _transactions(), {**_context(), "chargebacks": orphan_claim}, source="test")
    assert _failed_checks(load_landing(settings, instance)) == {("raw/chargebacks", "transaction_known")}

    # A new transaction with a negative amount fails its check; a landed id re-sent with other content is
    # quarantined (test_raw_assets), so it neither fails transaction_id_unique nor blocks the load.
    bad = _transactions().slice(0, 1)
    bad = bad.set_column(bad.schema.get_field_index("transaction_id"), "transaction_id", pa.array(["t9"]))
    bad = bad.set_column(bad.schema.get_field_index("amount"), "amount", pa.array([-5.0]))
    zone.write_batch("bad", bad, source="test")
    failed = _failed_checks(load_landing(settings, instance))
    assert ("raw/transactions", "amount_not_negative") in failed  # blocking: checks downstream of it wait
    assert ("raw/transactions", "transaction_id_unique") not in failed


def test_landing_sensor_requests_new_days_once(platform_env: Settings) -> None:
    settings = platform_env
    zone = LandingZone(settings.landing_dir)
    zone.write_batch("fixture", _transactions(), _context(), source="test")
    instance = instance_for(settings)
    result = _tick(settings, instance)
    (add_request,) = result.dynamic_partitions_requests
    assert list(add_request.partition_keys) == ["2026-03-01", "2026-03-02", "2026-03-04", "2026-03-10"]
    transactions, context_tables = result.run_requests
    assert transactions.partition_key_range.start == "2026-03-01"
    assert transactions.partition_key_range.end == "2026-03-10"
    assert {key.to_user_string() for key in context_tables.asset_selection} >= {
        "raw/cards",
        "raw/chargebacks",
    }
    instance.add_dynamic_partitions(LANDING_DAYS.name, list(add_request.partition_keys))

    again = _tick(settings, instance, result.cursor)
    assert again.skip_reason is not None and not again.run_requests


def _tick(settings: Settings, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    """One landing-sensor tick."""
    landing = LandingResource(root=str(settings.landing_dir))
    return landing_sensor(
        dg.build_sensor_context(instance=instance, resources={"landing": landing}, cursor=cursor)
    )


def _execute(settings: Settings, instance: dg.DagsterInstance, tick: dg.SensorResult) -> list[str]:
    """A tick's new days added and its runs executed in order (as the one-at-a-time run queue does); every
    ERROR check passes; the failed WARN checks' descriptions."""
    warnings = []
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(LANDING_DAYS.name, list(request.partition_keys))
    for request in tick.run_requests:
        result = dg.materialize(
            [*RAW_ASSETS, *RAW_CHECKS],
            selection=request.asset_selection,
            instance=instance,
            resources=build_resources(settings),
            tags=request.tags,
        )
        evaluations = result.get_asset_check_evaluations()
        failed = [check.check_name for check in evaluations if not check.passed]
        assert result.success and all(
            check.passed or check.severity == dg.AssetCheckSeverity.WARN for check in evaluations
        ), failed
        warnings += [f"{check.check_name}: {check.description}" for check in evaluations if not check.passed]
    return warnings


def test_a_context_run_reads_only_the_batches_its_tick_saw(platform_env: Settings) -> None:
    settings = platform_env
    zone = LandingZone(settings.landing_dir)
    zone.write_batch("first", _transactions(), _context(), source="test")
    instance = instance_for(settings)
    tick = _tick(settings, instance)
    # Before the tick's runs execute, a batch lands with a claim for a transaction of a day the tick did not
    # request: the tick's context run must not read it (its transaction is not loaded yet).
    late = _table(
        [{"transaction_id": "t6", "card_id": "c2", "merchant_id": "m1", "amount": 70.0, "timestamp": _at(12, 9),
          "channel": "pos", "currency": "USD"}],
        {"timestamp": TIMESTAMP},
    )  # fmt: skip
    claim = _table(
        [{"chargeback_id": "cb3", "transaction_id": "t6", "card_id": "c2", "reported_at": _at(12, 20)}],
        {"reported_at": TIMESTAMP},
    )
    zone.write_batch("second", late, {"chargebacks": claim}, source="test")
    # The first transactions run comes before any context run: its checks on cards and merchants say so.
    assert _execute(settings, instance, tick) == [
        "card_known: cannot check yet: raw.cards not loaded",
        "merchant_known: cannot check yet: raw.merchants not loaded",
    ]

    def claims() -> set[str]:
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
            return {
                row[0] for row in connection.execute("SELECT chargeback_id FROM raw.chargebacks").fetchall()
            }

    assert claims() == {"cb1", "cb2"}
    # The next tick loads the late transaction, then its claim.
    assert _execute(settings, instance, _tick(settings, instance, tick.cursor)) == []
    assert claims() == {"cb1", "cb2", "cb3"}
