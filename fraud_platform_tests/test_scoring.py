"""The scoring flow against a real Redis server and a real MLflow store (sqlite + local artefacts): scores
equal the model's on the backfilled features, live champion swaps, refusals, rules mode, idempotency."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import xgboost as xgb
from bytewax.testing import TestingSource, run_main
from click.testing import CliRunner
from mlflow import MlflowClient

from bytewax_flows.scoring import build_flow
from fraud_platform.cli import main
from fraud_platform.config import Settings
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.lib.bus import events_from_table
from fraud_platform.lib.keys import DECISIONS_STREAM, card_realtime_key
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.pipeline import instance_for, load_landing
from fraud_platform.scoring.decisions import first_seen_key, marker_key, read_decisions
from fraud_platform.scoring.metrics import METRICS_KEY
from fraud_platform.scoring.models import RULES_VERSION, ModelWatcher, NoServableModel, ServingModel
from fraud_platform.scoring.scorer import APPROVE, DECLINE, REVIEW
from fraud_platform.testing import (
    expected_features,
    load_random_batch_features,
    register_model,
    scoring_settings,
    set_champion,
    synthetic_data,
)
from fraud_platform.training import registry
from fraud_platform.training.baseline import rules_score
from fraud_platform.training.model import TrainingConfig, fit, score

REVIEW_AT, DECLINE_AT = 0.2, 0.6


@pytest.fixture(scope="module")
def history() -> pa.Table:
    table = simulate(SimulationConfig(cards=40, days=2, seed=5)).transactions
    return table.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedisServer) -> dict[str, object]:
    """One MLflow store with two servable models and one whose contract asks for a feature from the future."""
    home = tmp_path_factory.mktemp("scoring")
    settings = scoring_settings(home, redis_server.url, refresh_seconds=0)
    first = register_model(settings, 1, REVIEW_AT, DECLINE_AT)
    second = register_model(settings, 2, REVIEW_AT, DECLINE_AT)
    future = register_model(
        settings, 3, REVIEW_AT, DECLINE_AT, (*MODEL_FEATURES[:-1], "feature_from_the_future")
    )
    return {"settings": settings, "first": first, "second": second, "future": future}


@pytest.fixture
def world(clean_redis: redis.Redis, history: pa.Table) -> dict[str, np.ndarray]:
    """Batch features in Redis; transaction_id -> expected feature vector."""
    cards, merchants = load_random_batch_features(clean_redis, history, seed=3)
    return expected_features(history, cards, merchants)


def payloads(table: pa.Table) -> list[bytes]:
    return [orjson.dumps(event) for event in events_from_table(table)]


def run(settings: Settings, source: object) -> None:
    run_main(build_flow(TestingSource(source, batch_size=50), settings=settings))


def test_decisions_equal_the_model_on_backfilled_features(
    store: dict, world: dict[str, np.ndarray], clean_redis: redis.Redis, history: pa.Table
) -> None:
    # markers kept longer than the features: each TTL must come from its own setting
    settings = dataclasses.replace(store["settings"], marker_ttl_seconds=5 * 86_400)  # type: ignore[arg-type]
    set_champion(settings, store["first"])
    landed_before = {batch.batch_id for batch in LandingZone(settings.landing_dir).batches()}
    threads_before = set(threading.enumerate())
    run(settings, payloads(history))

    decisions = read_decisions(clean_redis)
    assert sorted(d["transaction_id"] for d in decisions) == sorted(
        history.column("transaction_id").to_pylist()
    )
    booster = registry.load(mlflow_client(settings), store["first"]).booster
    ids = list(world)
    expected = dict(zip(ids, score(booster, np.stack([world[tid] for tid in ids])).tolist(), strict=True))
    by_id = {d["transaction_id"]: d for d in decisions}
    assert {tid: by_id[tid]["score"] for tid in ids} == expected  # float32 scores, exactly
    for decision in decisions:
        value = decision["score"]
        wanted = DECLINE if value >= DECLINE_AT else REVIEW if value >= REVIEW_AT else APPROVE
        assert decision["decision"] == wanted and decision["model_version"] == store["first"]
        assert bool(decision["reasons"]) == (wanted != APPROVE)
        assert set(decision["reasons"]) <= set(MODEL_FEATURES) and len(decision["reasons"]) <= 3
        assert decision["event_time"] <= decision["received_time"] <= decision["decision_time"]
    assert {d["decision"] for d in decisions} == {APPROVE, REVIEW, DECLINE}
    some = ids[:20]
    marker_ttls = [clean_redis.ttl(key) for tid in some for key in (marker_key(tid), first_seen_key(tid))]
    assert all(4 * 86_400 < ttl <= 5 * 86_400 for ttl in marker_ttls), marker_ttls
    card = history.column("card_id")[0].as_py()
    assert 0 < clean_redis.ttl(card_realtime_key(card)) <= settings.feature_ttl_seconds == 3 * 86_400

    zone = LandingZone(settings.landing_dir)
    (logged,) = [batch for batch in zone.batches() if batch.batch_id not in landed_before]
    assert logged.source == "stream" and logged.transactions == len(history)
    table = pq.read_table(zone.context_files("decisions")[-1])
    served = dict(
        zip(table.column("transaction_id").to_pylist(), table.column("features").to_pylist(), strict=True)
    )
    for tid, vector in world.items():
        np.testing.assert_array_equal(np.array(served[tid], dtype=np.float32), vector)

    metrics = clean_redis.hgetall(METRICS_KEY)
    assert metrics[b"model_version"].decode() == store["first"]
    assert int(metrics[b"decisions_total"]) == len(history)

    run(settings, payloads(history))  # the same events again, from a fresh card state
    assert clean_redis.xlen(DECISIONS_STREAM) == len(history)  # idempotent by transaction_id

    heartbeats = [t for t in set(threading.enumerate()) - threads_before if t.name == "scoring-metrics"]
    for thread in heartbeats:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in heartbeats)  # each flow's metrics stop when it ends


def moving_champion(events: list[bytes], settings: Settings, moves: dict[int, str]) -> Iterator[bytes]:
    """The events, moving the champion alias to moves[i] just before event i is read."""
    for index, event in enumerate(events):
        if index in moves:
            set_champion(settings, moves[index])
            time.sleep(1.0)  # the watcher's background check (every 0.2 s here) sees the move meanwhile
        yield event


def test_alias_swap_mid_stream_and_an_unservable_champion_is_refused(
    store: dict,
    world: dict[str, np.ndarray],
    clean_redis: redis.Redis,
    history: pa.Table,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings: Settings = store["settings"]  # type: ignore[assignment]
    set_champion(settings, store["first"])
    events = payloads(history)
    half, three_quarters = len(events) // 2, len(events) * 3 // 4
    moves = {half: store["second"], three_quarters: store["future"]}
    run(settings, moving_champion(events, settings, moves))

    decisions = read_decisions(clean_redis)
    ids = [d["transaction_id"] for d in decisions]
    assert len(ids) == len(set(ids)) == len(history)  # nothing lost, nothing twice
    versions = [d["model_version"] for d in decisions]
    assert set(versions) == {store["first"], store["second"]}  # the future model never served
    assert versions.index(store["second"]) >= half - 50  # the swap happened after the move (50: one batch)
    assert versions[-1] == store["second"]
    boosters = {
        v: registry.load(mlflow_client(settings), v).booster for v in (store["first"], store["second"])
    }
    for decision in decisions:  # each decision scored by the booster it names
        vector = world[decision["transaction_id"]][None, :]
        assert decision["score"] == float(score(boosters[decision["model_version"]], vector)[0])
    metrics = clean_redis.hgetall(METRICS_KEY)
    assert metrics[b"model_version"].decode() == store["second"]
    # The champion check runs off the scoring path: its refusal may come after the flow's last metrics report
    # (models_refused), but it is always logged, once.
    refusals = [record for record in caplog.records if "REFUSED champion version 3" in record.getMessage()]
    assert len(refusals) == 1 and metrics[b"models_refused"] in (b"0", b"1")


def test_no_champion_refuses_to_start_and_rules_mode_scores(
    tmp_path: Path,
    world: dict[str, np.ndarray],
    redis_server: LocalRedisServer,
    clean_redis: redis.Redis,
    history: pa.Table,
) -> None:
    empty = scoring_settings(tmp_path / "empty", redis_server.url)
    with pytest.raises(NoServableModel, match=r"`fraud-platform train`.*FRAUD_PLATFORM_SCORING_MODE=rules"):
        build_flow(TestingSource([]), settings=empty)

    rules = scoring_settings(tmp_path / "rules", redis_server.url, mode="rules")
    run(rules, payloads(history))
    decisions = read_decisions(clean_redis)
    assert len(decisions) == len(history) and {d["model_version"] for d in decisions} == {RULES_VERSION}
    ids = list(world)
    expected = rules_score(np.stack([world[tid] for tid in ids])).astype(np.float32).tolist()
    assert {d["transaction_id"]: d["score"] for d in decisions} == dict(zip(ids, expected, strict=True))

    env = {"REDIS_URL": redis_server.url, "FRAUD_PLATFORM_HOME": str(tmp_path / "rules")}
    shown = CliRunner().invoke(main, ["decisions", "--count", "2", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 and all(orjson.loads(line)["model_version"] == RULES_VERSION for line in lines)
    table = CliRunner().invoke(main, ["decisions", "--count", "2"], env=env)
    assert table.exit_code == 0 and f"model_version={RULES_VERSION}" in table.stdout.splitlines()[-1]

    assert load_landing(rules, instance_for(rules)).success  # the feature log, into the warehouse
    with duckdb.connect(str(rules.warehouse_path), read_only=True) as connection:
        rows = connection.execute(
            "SELECT count(*), min(len(features)), count(DISTINCT model_version) FROM raw.decisions"
        ).fetchall()
        transactions = connection.execute("SELECT count(*) FROM raw.transactions").fetchall()
    assert rows == [(len(history), len(MODEL_FEATURES), 1)] and transactions == [(len(history),)]


def test_an_unservable_champion_at_start_is_refused(store: dict) -> None:
    settings: Settings = store["settings"]  # type: ignore[assignment]
    set_champion(settings, store["future"])
    with pytest.raises(NoServableModel, match=r"cannot be served: .*feature_from_the_future"):
        ModelWatcher(settings).start()


def test_the_reason_code_setting_reaches_the_served_model(
    store: dict, model_watcher: Callable[[Settings], ModelWatcher]
) -> None:
    settings: Settings = store["settings"]  # type: ignore[assignment]
    set_champion(settings, store["first"])
    served = {
        method: model_watcher(dataclasses.replace(settings, reason_codes=method)).start().exact_reasons
        for method in ("approximate", "exact")
    }
    assert served == {"approximate": False, "exact": True}


def test_an_unreachable_registry_keeps_the_current_model(
    store: dict, caplog: pytest.LogCaptureFixture
) -> None:
    settings: Settings = store["settings"]  # type: ignore[assignment]
    set_champion(settings, store["first"])
    watcher = ModelWatcher(settings)
    watcher.start()
    watcher.stop()  # the checks below, one at a time

    database = Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///"))
    away = database.with_name("moved-away.db")
    database.rename(away)  # the store moved away: querying it would create an empty registry there
    try:
        with caplog.at_level(logging.INFO, logger="fraud_platform.scoring.models"):
            watcher.refresh()
            watcher.refresh()
            assert not database.exists()  # never created empty
            away.rename(database)
            watcher.refresh()
    finally:
        if away.exists():
            away.rename(database)
    assert watcher.current().version == store["first"]
    assert watcher.registry_errors == 2
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [  # one warning per outage, one line when it answers again
        f"model registry unreachable (the store {database} is missing): keeping model version "
        f"{store['first']}, checking again every 0 s",
        "model registry reachable again (2 failed checks so far)",
    ]


def mlflow_client(settings: Settings) -> MlflowClient:
    return registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)


def test_reason_codes_name_the_features_that_pushed_the_score_up() -> None:
    trained = fit(synthetic_data(3, signal=3.0), TrainingConfig(search_trials=1))  # fraud shifts features 0-2
    model = ServingModel("1", trained.thresholds, trained.booster)
    rows = np.zeros((3, len(MODEL_FEATURES)), np.float32)
    for row in range(3):
        rows[row, row] = 6.0  # one strongly fraud-like feature per row
    reasons = model.reasons(rows)
    assert [row_reasons[0] for row_reasons in reasons] == list(MODEL_FEATURES[:3])
    assert all(len(row_reasons) <= 3 for row_reasons in reasons)


def test_exact_reason_codes_are_treeshap_s_where_the_approximate_ones_differ() -> None:
    trained = fit(synthetic_data(3, signal=1.0), TrainingConfig(search_trials=1))
    rows = synthetic_data(4, signal=1.0).features[:300]
    approximate = ServingModel("1", trained.thresholds, trained.booster).explain(rows)
    exact = ServingModel("1", trained.thresholds, trained.booster, exact_reasons=True).explain(rows)
    shap = trained.booster.predict(  # exact TreeSHAP, the bias last
        xgb.DMatrix(rows, feature_names=list(MODEL_FEATURES)), pred_contribs=True
    )
    expected = [
        tuple(
            (MODEL_FEATURES[column], float(value))
            for value, column in sorted(
                ((value, column) for column, value in enumerate(row[:-1])), reverse=True
            )[:3]
            if value > 0
        )
        for row in shap
    ]
    assert exact == expected
    assert approximate != exact  # the setting changes what analysts are told
