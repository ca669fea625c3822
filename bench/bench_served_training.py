"""Training on served vectors against training on backfilled ones: the difference in model quality (issue 14).

    python -m bench.bench_served_training [--cards 2500 --days 90 --maturity 30 --max-delay 300 --folds 3
                                           --trials 2 --seconds 600 --threads 1 --seed 11]

Protocol:

1. History: the platform's simulator (`--cards` x `--days` from 2026-01-01) landed into a temporary home and
   run through the batch side (`bench.warehouse.prepared_home`: load, dbt, labels, real-time backfill), so
   the warehouse holds labels, daily snapshots and the backfilled real-time features.
2. The stream decides that history as it would have arrived: each event is delayed uniformly by 0 to
   `--max-delay` seconds (300 = the allowed lateness), i.e. out of order per card, and goes in arrival order
   through the real scoring flow (`bytewax_flows.scoring.build_flow` under `run_main`, a TestingSource, the
   rules stand-in instead of a model: the feature log holds the vector the model would have seen either way)
   against a local Redis server of its own. From the first day of history to the newest test day, one run
   per UTC arrival day: before the run of day D the online store gets the snapshot of D - 1
   (`pipeline.load_online`, the platform's way to replay a past day with what it would have been served);
   card state carries over between the runs by Bytewax recovery (an EOF after each day's events).
3. What makes those decisions "live" for `training.served`: received on the UTC day of the event, and not a
   replay in `monitoring.live`'s view (that view, defined without recorded online loads as
   `build_training_data` defines it, keeps every decision). The flow stamps `received_time` (and the scorer
   `decision_time`) from `time.time_ns()`, and no setting replaces that clock: for the replay this script
   runs the flow under a simulated clock, the arrival time of the newest event handed to the flow
   (`ArrivalClock`, patched into the flow's and the scorer's modules). Decoding judges each event by its
   replay clock (`bus.events_from_table`), as a replay of history on the bus would be. Events of one day
   that arrive after midnight keep the backfill's vector, as they would in production.
4. The feature log is loaded (`load_landing`: raw.decisions) and the point-in-time dataset read twice, with
   served vectors (`build_training_data(served=True)`, what FRAUD_PLATFORM_TRAIN_ON_SERVED=1 does) and
   backfill only (`served=False`). On `--folds` weekly test folds over the newest labelled weeks (a 7-day gap
   before each, all history before the gap to train on: `bench.bench_quality.fold_windows`), the shipped
   `fit` (`--trials` candidates, `--threads` XGBoost threads, seeded) trains once on each dataset, and each
   model is scored on the test rows as served (what the model sees in production) and as backfilled.

Reported per fold and as mean ± std: ROC AUC, average precision and card precision@100
(`training.evaluation.ranking_metrics`); the rows whose served vector differs from the backfill's (any
feature by more than 1e-9), the rows that carry a served vector at all, the events that arrived after a newer
event of their card. Written to bench/results/served_training.json.
"""

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import redis
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main

from bench.bench_quality import HEADLINE, fold_windows, window
from bench.common import parse_options, write_study
from bench.warehouse import land_simulation, prepared_home
from bytewax_flows import realtime_features
from bytewax_flows.scoring import build_flow
from fraud_platform.config import Settings
from fraud_platform.lib.bus import events_from_table, read_dead_letters
from fraud_platform.lib.redis_server import LocalRedisServer, free_port, redis_url
from fraud_platform.lib.simulator import SimulatedData
from fraud_platform.pipeline import instance_for, load_landing, load_online
from fraud_platform.scoring import scorer
from fraud_platform.training.dataset import TrainingData, build_training_data
from fraud_platform.training.evaluation import ranking_metrics
from fraud_platform.training.model import TrainingConfig, fit, score, scored
from fraud_platform.training.served import served_rows

DAY_MS = 86_400_000
TOLERANCE = 1e-9  # a row "differs" when any feature differs by more (as in "Skew under reordering")
VARIANTS = ("served", "backfilled")
SEED = TrainingConfig().seed
# The noise floor: the backfill-only fit again with another seed (the same rows, a different search and fit).
CONTROLS = (("backfilled", SEED), ("backfilled, seed + 1", SEED + 1))
TRAINED = ("served", *(name for name, _ in CONTROLS))


class ArrivalClock:
    """The flow's wall clock during the replay: the arrival time of the newest event handed to the flow."""

    def __init__(self) -> None:
        self.now_ms = 0

    def time_ns(self) -> int:
        """Nanoseconds since the epoch, as `time.time_ns`."""
        return self.now_ms * 1_000_000


class ArrivalDays:
    """The payloads in arrival order, an EOF after each UTC arrival day; moves the clock as the flow reads.

    Iterable more than once (TestingSource fast-forwards a fresh iterator past what earlier runs read)."""

    def __init__(self, payloads: list[bytes], arrivals_ms: np.ndarray, clock: ArrivalClock) -> None:
        self.payloads = payloads
        self.arrivals_ms = arrivals_ms.tolist()
        self.clock = clock

    def __iter__(self) -> Iterator[bytes | TestingSource.EOF]:
        day = None
        for payload, arrival in zip(self.payloads, self.arrivals_ms, strict=True):
            if day is not None and arrival // DAY_MS != day:
                yield TestingSource.EOF()
            day = arrival // DAY_MS
            self.clock.now_ms = arrival
            yield payload

    def days(self) -> list[np.datetime64]:
        """The UTC arrival days, in order: one run of the flow each."""
        return [
            np.datetime64(day, "D") for day in sorted({arrival // DAY_MS for arrival in self.arrivals_ms})
        ]


@dataclass(frozen=True)
class StreamReport:
    """What deciding the history through the stream did."""

    events: int
    late_events: int  # arrived after a newer event of their card
    runs: int
    dead_letters: int
    seconds: float


def arrival_order(table: pa.Table, max_delay_seconds: int, seed: int) -> tuple[list[bytes], np.ndarray, int]:
    """The events as payloads in arrival order, their arrival times (epoch ms) and how many arrived after a
    newer event of their card; each is delayed uniformly by 0 to `max_delay_seconds`."""
    events = list(events_from_table(table))
    event_ms = np.array([event["timestamp"] for event in events], dtype=np.int64)
    arrivals = event_ms + np.random.default_rng(seed).integers(0, max_delay_seconds * 1000 + 1, len(events))
    order = np.argsort(arrivals, kind="stable")
    frame = pd.DataFrame({"card": [events[index]["card_id"] for index in order], "event_ms": event_ms[order]})
    late = int((frame["event_ms"] < frame.groupby("card")["event_ms"].cummax()).sum())
    return [orjson.dumps(events[index]) for index in order], arrivals[order], late


def stream_history(settings: Settings, table: pa.Table, max_delay_seconds: int, seed: int) -> StreamReport:
    """Decide `table`'s events through the scoring flow in arrival order, one run per arrival day with the
    previous day's snapshot online, under the arrival clock; then load the feature log (raw.decisions)."""
    began = time.perf_counter()
    payloads, arrivals, late = arrival_order(table, max_delay_seconds, seed)
    clock = ArrivalClock()
    arriving = ArrivalDays(payloads, arrivals, clock)
    source = TestingSource(arriving, batch_size=1_000)
    recovery = settings.home / "stream-recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    instance = instance_for(settings)
    first_snapshot = table.column("timestamp").to_numpy().min().astype("datetime64[D]")
    days = arriving.days()
    with mock.patch.object(realtime_features, "time", clock), mock.patch.object(scorer, "time", clock):
        for day in days:
            if day - 1 >= first_snapshot and not load_online(settings, instance, str(day - 1)).success:
                raise RuntimeError(f"loading the snapshot of {day - 1} into the online store failed")
            flow = build_flow(source, settings=settings)
            run_main(flow, epoch_interval=None, recovery_config=RecoveryConfig(str(recovery)))
    client = redis.Redis.from_url(redis_url(settings))
    dead_letters = len(read_dead_letters(client))
    client.close()
    if not load_landing(settings, instance).success:
        raise RuntimeError("loading the feature log into the warehouse failed")
    return StreamReport(len(payloads), late, len(days), dead_letters, time.perf_counter() - began)


def streamed_days(landed: SimulatedData, newest: np.datetime64) -> pa.Table:
    """The simulated transactions of the days up to `newest` (inclusive): what the stream decides."""
    days = landed.transactions.column("timestamp").to_numpy().astype("datetime64[D]")
    return landed.transactions.filter(pa.array(days <= newest))


def differing(served: TrainingData, backfilled: TrainingData) -> np.ndarray:
    """Per row: does the served dataset's vector differ from the backfill's (beyond TOLERANCE, NaN = NaN)?"""
    a, b = served.features.astype(np.float64), backfilled.features.astype(np.float64)
    same = (np.abs(a - b) <= TOLERANCE) | (np.isnan(a) & np.isnan(b))
    return ~same.all(axis=1)


def run_folds(
    datasets: dict[str, TrainingData], folds: int, trials: int, seconds: float, threads: int
) -> dict[str, object]:
    """On each fold: the shipped fit on each dataset, each model scored on the test rows of each dataset."""
    served, backfilled = datasets["served"], datasets["backfilled"]
    changed = differing(served, backfilled)
    rows = []
    for config in fold_windows(np.unique(backfilled.event_days), folds, "all"):
        windows = {name: window(data, config) for name, data in datasets.items()}
        inside = np.isin(backfilled.transaction_ids, windows["backfilled"].transaction_ids)
        split = windows["backfilled"].split
        tests = {name: data.part("test") for name, data in windows.items()}
        row: dict[str, object] = {
            "train": f"{windows['backfilled'].event_days.min()} .. {config.train_to}",
            "test": f"{config.test_from} .. {config.test_to}",
            "train_rows": int(np.isin(split, ("train", "validation")).sum()),
            "train_rows_differing": int(changed[inside][np.isin(split, ("train", "validation"))].sum()),
            "test_rows": len(tests["backfilled"].labels),
            "test_rows_differing": int(changed[inside][split == "test"].sum()),
            "test_frauds": int(tests["backfilled"].labels.sum()),
        }
        trainings = (
            ("served", windows["served"], SEED),
            *((name, windows["backfilled"], seed) for name, seed in CONTROLS),
        )
        for trained_on, data, seed in trainings:
            began = time.perf_counter()
            config = TrainingConfig(search_trials=trials, search_seconds=seconds, seed=seed, threads=threads)
            trained = fit(data, config)
            row[f"fit_seconds_{trained_on}"] = round(time.perf_counter() - began, 1)
            for tested_on, test in tests.items():
                metrics = ranking_metrics(scored(score(trained.booster, test.features), test))
                row[f"{trained_on}->{tested_on}"] = {key: metrics[key] for key in HEADLINE}
        print(row)
        rows.append(row)
    pairs = [f"{trained_on}->{tested_on}" for trained_on in TRAINED for tested_on in VARIANTS]
    summary = {
        pair: {
            key: {
                "mean": float(np.nanmean([row[pair][key] for row in rows])),  # type: ignore[index]
                "std": float(np.nanstd([row[pair][key] for row in rows])),  # type: ignore[index]
            }
            for key in HEADLINE
        }
        for pair in pairs
    }
    return {"folds": rows, "summary": summary}


def markdown(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The summary as a Markdown table: one row per (trained on, tested on)."""
    lines = [
        "| trained on | test rows as | ROC AUC | average precision | card precision@100 |",
        "|---|---|---|---|---|",
    ]
    for pair, metrics in summary.items():
        trained_on, tested_on = pair.split("->")
        cells = " | ".join(f"{metrics[key]['mean']:.4f} ± {metrics[key]['std']:.4f}" for key in HEADLINE)
        lines.append(f"| {trained_on} | {tested_on} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    """Prepare the warehouse, decide the history through the stream, fit and evaluate both ways, report."""
    arguments = parse_options(
        __doc__,
        cards=2_500,
        days=90,
        maturity=30,
        max_delay=300,
        folds=3,
        trials=2,
        seconds=600,
        threads=1,
        seed=11,
    )
    began_load = os.getloadavg()
    land = land_simulation(arguments.cards, arguments.days)
    with tempfile.TemporaryDirectory() as home, prepared_home(Path(home), arguments.maturity, land) as landed:
        server = LocalRedisServer(Path(home) / "stream-redis", free_port())
        server.start()
        try:
            os.environ.update({"REDIS_URL": server.url, "FRAUD_PLATFORM_SCORING_MODE": "rules"})
            settings = Settings.from_env()
            with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
                labelled_days = np.unique(
                    build_training_data(connection, arguments.maturity, served=False).event_days
                )
            newest = max(
                np.datetime64(config.test_to)
                for config in fold_windows(labelled_days, arguments.folds, "all")
            )
            history = streamed_days(landed, newest)
            stream = stream_history(settings, history, arguments.max_delay, arguments.seed)
        finally:
            server.stop()
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
            datasets = {
                name: build_training_data(connection, arguments.maturity, served=name == "served")
                for name in VARIANTS
            }
            eligible = served_rows(connection, datasets["backfilled"].transaction_ids)[0]
        result = run_folds(datasets, arguments.folds, arguments.trials, arguments.seconds, arguments.threads)
    changed = differing(datasets["served"], datasets["backfilled"])
    counts = {
        "dataset_rows": len(changed),
        "rows_with_served_vector": len(eligible.rows),
        "rows_differing": int(changed.sum()),
    }
    table = markdown(result["summary"])  # type: ignore[arg-type]
    print(table)
    print(counts, asdict(stream))
    write_study(
        "served_training",
        arguments,
        {**counts, "stream": asdict(stream), **result, "markdown": table},
        began_load,
    )


if __name__ == "__main__":
    main()
