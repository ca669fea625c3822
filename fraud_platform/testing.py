"""Support for tests and benchmarks of the platform (as `bytewax.testing` is for Bytewax): synthetic training
data, a real MLflow store with registered models, random batch features in Redis, the expected feature matrix
of transactions computed the offline way (backfill + the same functions) and the scoring flow as a process."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis
from mlflow import MlflowClient

from fraud_platform.api.client import start_server, stop_processes, wait_until_ready
from fraud_platform.config import Settings
from fraud_platform.features.backfill import backfill
from fraud_platform.features.batch import CARD_BATCH_FEATURES, MERCHANT_BATCH_FEATURES
from fraud_platform.features.on_demand import on_demand_features
from fraud_platform.features.realtime import FEATURE_NAMES
from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES, assemble
from fraud_platform.lib.bus import events_from_table
from fraud_platform.lib.online_store import load_batch_features
from fraud_platform.lib.redis_server import free_port
from fraud_platform.lib.schema import parse_transaction
from fraud_platform.training import registry
from fraud_platform.training.dataset import SplitConfig, TrainingData, assign_splits
from fraud_platform.training.model import TrainingConfig, fit, score

ROOT = Path(__file__).resolve().parents[1]
SCORING_FLOW = "bytewax_flows.scoring:build_flow"


def synthetic_data(seed: int, signal: float, rows: int = 6_000, days: int = 40) -> TrainingData:
    """Random features where fraud shifts a few columns by `signal` (more signal, better model)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.05).astype(np.int8)
    features = rng.normal(size=(rows, len(MODEL_FEATURES))).astype(np.float32)
    features[:, :3] += signal * labels[:, None]
    event_days = np.sort(np.datetime64("2026-01-01") + rng.integers(0, days, rows)).astype("datetime64[D]")
    return TrainingData(
        transaction_ids=np.array([f"t{index}" for index in range(rows)], dtype=object),
        card_ids=np.array([f"c{index % 500}" for index in range(rows)], dtype=object),
        event_days=event_days,
        amounts=rng.lognormal(3, 1, rows),
        labels=labels,
        features=features,
        split=assign_splits(event_days, SplitConfig(gap_days=3)),
        labels_as_of="2026-03-01",
        maturity_cutoff="2026-02-10",
        card_fraud_known_days=np.full(rows, np.datetime64("NaT"), dtype="datetime64[D]"),
    )


def scoring_settings(home: Path, url: str, refresh_seconds: int = 30, mode: str = "model") -> Settings:
    """Settings of a flow against `url` with its MLflow store and landing zone under `home`."""
    settings = Settings.from_env(
        {
            "FRAUD_PLATFORM_HOME": str(home),
            "REDIS_URL": url,
            "FRAUD_PLATFORM_SCORING_MODE": mode,
        }
    )
    return dataclasses.replace(settings, model_refresh_seconds=refresh_seconds)


def register_model(
    settings: Settings, seed: int, review: float, decline: float, features: tuple[str, ...] = MODEL_FEATURES
) -> str:
    """Fit a small model on synthetic data and register it with the given thresholds; return its version."""
    registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    data = synthetic_data(seed, signal=1.5, rows=3_000)
    trained = fit(data, TrainingConfig(search_trials=1))
    contract = registry.ModelContract(
        features=features,
        feature_definition_version=FEATURE_DEFINITION_VERSION,
        decline_threshold=decline,
        review_threshold=review,
    )
    test = data.part("test")
    version = registry.register(trained, contract, score(trained.booster, test.features), test.labels, {})
    return str(version.version)


def set_champion(settings: Settings, version: str) -> None:
    """Move the champion alias."""
    registry.set_champion(MlflowClient(settings.mlflow_tracking_uri), version)


def load_random_batch_features(client: redis.Redis, table: pa.Table, seed: int) -> tuple[dict, dict]:
    """Random snapshots for all but a few cards and merchants (those read as NaN); return id -> vector."""
    rng = np.random.default_rng(seed)
    cards = sorted(set(table.column("card_id").to_pylist()))[:-2]
    merchants = sorted(set(table.column("merchant_id").to_pylist()))[:-3]
    card_matrix = rng.gamma(2.0, 40.0, (len(cards), len(CARD_BATCH_FEATURES)))
    merchant_matrix = rng.random((len(merchants), len(MERCHANT_BATCH_FEATURES)))
    load_batch_features(
        client, cards, card_matrix, merchants, merchant_matrix, ttl_seconds=3_600, grace_seconds=0
    )
    return dict(zip(cards, card_matrix, strict=True)), dict(zip(merchants, merchant_matrix, strict=True))


def expected_features(table: pa.Table, cards: dict, merchants: dict) -> dict[str, np.ndarray]:
    """transaction_id -> the model's feature vector computed offline: backfilled real-time features, the same
    batch snapshots, the same on-demand function, `assemble`."""
    realtime = backfill(table, processes=1)
    ids = realtime.column("transaction_id").to_pylist()
    txns = {txn.transaction_id: txn for txn in map(parse_transaction, events_from_table(table))}
    nan_card = np.full(len(CARD_BATCH_FEATURES), np.nan)
    nan_merchant = np.full(len(MERCHANT_BATCH_FEATURES), np.nan)
    card_rows = np.array([cards.get(txns[tid].card_id, nan_card) for tid in ids])
    merchant_rows = np.array([merchants.get(txns[tid].merchant_id, nan_merchant) for tid in ids])
    mean, std = CARD_BATCH_FEATURES.index("amount_mean_30d"), CARD_BATCH_FEATURES.index("amount_std_30d")
    on_demand = np.array(
        [
            on_demand_features(txns[tid], {"amount_mean_30d": row[mean], "amount_std_30d": row[std]})
            for tid, row in zip(ids, card_rows, strict=True)
        ]
    )
    matrix = assemble(
        np.column_stack([realtime.column(name).to_numpy() for name in FEATURE_NAMES]),
        on_demand,
        card_rows,
        merchant_rows,
    )
    return dict(zip(ids, matrix, strict=True))


# A live flow without recovery closes an epoch every second (`bytewax.run -s 1`; its default is 10): at each
# epoch's end Bytewax asks every card touched in the epoch for its state, so short epochs make many short
# pauses where long ones make a few long ones (docs/operations.md, "What recovery costs in latency").
LIVE_EPOCH_OPTIONS = ("-s", "1")


def scoring_flow_process(
    env: dict[str, str], *options: str, exit_when_drained: bool = True, log: Path | None = None
) -> subprocess.Popen:
    """`python -m bytewax.run` of the scoring flow in the checkout with `env` and extra bytewax.run
    `options` (e.g. "-i", "0", "-a", "..."); output to `log` when given, else to a pipe."""
    argument = "exit_when_drained=True" if exit_when_drained else ""
    output = log.open("ab") if log else subprocess.PIPE
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", f"{SCORING_FLOW}({argument})", *options],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log:
            output.close()


@contextmanager
def running_api(env: dict[str, str], logs: Path) -> Iterator[str]:
    """The scoring flow as a service (`bytewax.run -s 1`, not draining) and `fraud-platform serve` on a free
    loopback port, both with `env` and their logs under `logs`; yields the API's base URL once it is ready,
    and stops both on exit."""
    flow = scoring_flow_process(env, *LIVE_EPOCH_OPTIONS, exit_when_drained=False, log=logs / "flow.log")
    port = free_port()
    api = start_server(env, port, logs / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, api)
        yield url
    finally:
        stop_processes((api, flow))
