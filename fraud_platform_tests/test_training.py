"""Training end to end on simulated data: no leakage in the point-in-time dataset, a registered champion,
and the retrain sensor firing on enough new labels and not before."""

import json
from collections.abc import Iterator

import dagster as dg
import duckdb
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from fraud_platform.cli import main
from fraud_platform.config import Settings
from fraud_platform.defs.batch import LABELS_ASSET
from fraud_platform.defs.training import MlflowResource, TrainingSettings, retrain_sensor
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.pipeline import instance_for, load_landing, refresh_batch_side, train_model
from fraud_platform.training import registry

MATURITY_DAYS = 20


@pytest.fixture(scope="module")
def trained_home(
    tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedisServer
) -> Iterator[tuple[Settings, dg.DagsterInstance, dg.ExecuteInProcessResult]]:
    """600 cards x 100 days simulated, loaded, refreshed and trained once."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in Settings.from_env({}).environment():
            monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.setenv("FRAUD_PLATFORM_HOME", str(tmp_path_factory.mktemp("training_home")))
        monkeypatch.setenv("REDIS_URL", redis_server.url)
        monkeypatch.setenv("FRAUD_PLATFORM_LABEL_MATURITY_DAYS", str(MATURITY_DAYS))
        monkeypatch.setenv(
            "FRAUD_PLATFORM_SEARCH_TRIALS", "3"
        )  # the textbook fit, the old defaults, one more
        settings = Settings.from_env()
        data = simulate(SimulationConfig(cards=600, days=100, seed=5, fraud_card_share=0.3))
        LandingZone(settings.landing_dir).write_batch("sim", data.transactions, data.context(), source="test")
        instance = instance_for(settings)
        assert load_landing(settings, instance).success
        assert refresh_batch_side(instance).success
        result = train_model(instance)
        assert result.success
        yield settings, instance, result


def _one(settings: Settings, sql: str) -> tuple:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        return connection.execute(sql).fetchone()


def _all(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


@pytest.mark.slow
def test_batch_features_come_from_the_previous_day(trained_home) -> None:  # type: ignore[no-untyped-def]
    settings, _, _ = trained_home
    mismatches, compared, differs_from_same_day = _one(
        settings,
        """
        SELECT count(*) FILTER (WHERE d.card_txn_count_30d IS DISTINCT FROM prev.txn_count_30d
                                   OR d.card_chargebacks_known IS DISTINCT FROM prev.chargebacks_known),
               count(*),
               count(*) FILTER (WHERE same.txn_count_30d IS DISTINCT FROM prev.txn_count_30d)
        FROM training.dataset d
        JOIN card_daily_features prev ON prev.card_id = d.card_id AND prev.as_of_date = d.event_date - 1
        JOIN card_daily_features same ON same.card_id = d.card_id AND same.as_of_date = d.event_date
        """,
    )
    assert compared > 1_000 and mismatches == 0
    assert differs_from_same_day > 0  # the test can tell D - 1 from D


@pytest.mark.slow
def test_merchant_fraud_rate_counts_only_claims_reported_before_the_day(trained_home) -> None:  # type: ignore[no-untyped-def]
    settings, _, _ = trained_home
    (wrong,) = _one(
        settings,
        """
        WITH expected AS (
            SELECT d.transaction_id, count(cb.transaction_id) AS frauds
            FROM training.dataset d
            JOIN stg_transactions t USING (transaction_id)
            LEFT JOIN stg_transactions past
                ON past.merchant_id = t.merchant_id
                AND past.event_date BETWEEN d.event_date - 30 AND d.event_date - 1
            LEFT JOIN stg_chargebacks cb
                ON cb.transaction_id = past.transaction_id AND cb.reported_date <= d.event_date - 1
            GROUP BY d.transaction_id
        )
        SELECT count(*) FROM training.dataset d JOIN expected USING (transaction_id)
        WHERE d.merchant_fraud_count_30d IS NOT NULL AND d.merchant_fraud_count_30d <> expected.frauds
        """,
    )
    assert wrong == 0


@pytest.mark.slow
def test_realtime_features_see_nothing_after_the_transaction(trained_home) -> None:  # type: ignore[no-untyped-def]
    settings, _, _ = trained_home
    (wrong,) = _one(
        settings,
        """
        WITH expected AS (
            SELECT t.transaction_id, count(*) AS txns, sum(other.amount) AS total
            FROM stg_transactions t
            JOIN stg_transactions other
                ON other.card_id = t.card_id
                AND other.event_time > t.event_time - INTERVAL 24 HOUR
                AND (other.event_time < t.event_time
                     OR (other.event_time = t.event_time AND other.transaction_id <= t.transaction_id))
            GROUP BY t.transaction_id
        )
        SELECT count(*) FROM training.dataset d JOIN expected USING (transaction_id)
        -- the dataset holds the model's float32 matrix: compare sums to float32 precision
        WHERE d.txn_count_24h <> expected.txns OR abs(d.amount_sum_24h - expected.total) > 1e-6 * expected.total
        """,
    )
    assert wrong == 0


@pytest.mark.slow
def test_only_labels_known_and_final_at_the_cutoff_are_used(trained_home) -> None:  # type: ignore[no-untyped-def]
    settings, _, _ = trained_home
    too_young, unknown_yet, labelled_rows, all_mature = _one(
        settings,
        f"""
        SELECT count(*) FILTER (WHERE l.event_time > l.labels_as_of - INTERVAL {MATURITY_DAYS} DAY),
               count(*) FILTER (WHERE l.label_known_at > l.labels_as_of),
               count(*),
               (SELECT count(*) FROM transaction_labels
                WHERE label IS NOT NULL AND event_time <= labels_as_of - INTERVAL {MATURITY_DAYS} DAY)
        FROM training.dataset d JOIN transaction_labels l USING (transaction_id)
        """,
    )
    assert too_young == 0 and unknown_yet == 0
    assert labelled_rows == all_mature  # every final label is used, none is invented
    # Frauds reported after the labels' as-of time are not labels yet (the truth knows more than the bank).
    (late_frauds,) = _one(
        settings,
        "SELECT count(*) FROM training.dataset d JOIN raw.fraud_truth f USING (transaction_id) "
        "WHERE f.is_fraud AND d.label = 0",
    )
    assert late_frauds > 0


@pytest.mark.slow
def test_the_first_model_is_the_champion_and_carries_its_contract(trained_home) -> None:  # type: ignore[no-untyped-def]
    settings, _, result = trained_home
    metadata = next(
        event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
        if event.asset_key.to_user_string() == "training/model"
    )
    assert metadata["promoted_to_champion"].value is True
    assert metadata["test_roc_auc"].value > 0.8
    client = registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    champion = registry.load(client, registry.champion_version(client).version)
    champion.contract.check_servable()
    assert champion.contract.labels_known > 0


@pytest.mark.slow
def test_retrain_sensor_fires_on_enough_new_labels_and_not_before(trained_home) -> None:  # type: ignore[no-untyped-def]
    settings, instance, _ = trained_home
    client = registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    trained_with = int(registry.champion_version(client).tags["labels_known"])
    resources = {
        "mlflow": MlflowResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=str(settings.mlflow_artifact_root)
        ),
        "training_settings": TrainingSettings(label_maturity_days=MATURITY_DAYS, retrain_min_new_labels=50),
    }

    def evaluate_with(labels_known: int) -> dg.SensorResult:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(LABELS_ASSET, metadata={"labels_known": labels_known})
        )
        return retrain_sensor(dg.build_sensor_context(instance=instance, resources=resources))

    quiet = evaluate_with(trained_with + 49)
    assert not quiet.run_requests and "49 new label(s)" in quiet.skip_reason.skip_message
    (request,) = evaluate_with(trained_with + 50).run_requests
    assert request.tags["fraud_platform/retrain_reason"].startswith("50 new labels since champion")


# Last in this module: it trains a second version on windows of its own, replacing training.dataset.
@pytest.mark.slow
def test_a_date_windowed_run_uses_exactly_those_days_and_evaluate_agrees(trained_home) -> None:  # type: ignore[no-untyped-def]
    settings, _, _ = trained_home
    trained = CliRunner().invoke(
        main,
        [
            "train",
            *("--train-from", "2026-01-15", "--train-to", "2026-02-28"),
            *("--test-from", "2026-03-08", "--test-to", "2026-03-21", "--validation-days", "10"),
            *("--search-trials", "2"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert (
        "train 2026-01-15 .. 2026-02-18, validation 2026-02-19 .. 2026-02-28, test 2026-03-08 .. 2026-03-21"
        in trained.output
    ), trained.output
    windows = {
        split: (str(first), str(last), rows)
        for split, first, last, rows in _all(
            settings,
            "SELECT split, min(event_date), max(event_date), count(*) FROM training.dataset GROUP BY split",
        )
    }
    assert windows["train"][:2] == ("2026-01-15", "2026-02-18")
    assert windows["validation"][:2] == ("2026-02-19", "2026-02-28")
    assert windows["gap"][:2] == ("2026-03-01", "2026-03-07")
    assert windows["test"][:2] == ("2026-03-08", "2026-03-21")
    (outside,) = _one(
        settings,
        "SELECT count(*) FROM transaction_labels WHERE label IS NOT NULL AND event_date < DATE '2026-01-15' "
        f"AND event_time <= labels_as_of - INTERVAL {MATURITY_DAYS} DAY",
    )
    assert outside > 1_000  # mature labelled rows existed before the window, and none is in the dataset

    client = registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    (newest,) = client.search_model_versions(
        f"name='{registry.MODEL_NAME}'", order_by=["version_number DESC"]
    )[:1]
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(newest.run_id)
    assert run.data.params["train_window"] == "2026-01-15 .. 2026-02-18"
    assert run.data.params["validation_window"] == "2026-02-19 .. 2026-02-28"
    assert run.data.params["test_window"] == "2026-03-08 .. 2026-03-21"
    assert run.data.params["test_rows"] == str(windows["test"][2])
    assert run.data.params["label_maturity_days"] == str(MATURITY_DAYS)

    evaluated = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model-version",
            newest.version,
            "--from",
            "2026-03-08",
            "--to",
            "2026-03-21",
            "--json",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["transactions"] == windows["test"][2]
    for name in ("average_precision", "roc_auc", "card_precision_at_100"):
        assert metrics[name] == pytest.approx(run.data.metrics[f"test_{name}"])
    missing = CliRunner().invoke(
        main, ["evaluate", "--model-version", "99", "--from", "2026-03-08", "--to", "2026-03-09"]
    )
    assert missing.exit_code == 1 and "has no version '99'" in missing.output
