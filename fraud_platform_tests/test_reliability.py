"""Reliability of the stream's records (#14), with the real processes: a transaction_id reused with other
content is dead-lettered and the next load passes; a stopped `mlflow server` does not stop decisions; a
missing or broken registry store at start is refused with its name and never created empty."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pytest
import redis

from fraud_platform.lib.bus import DUPLICATE_REASON, events_from_table, publish, read_dead_letters
from fraud_platform.lib.keys import DECISIONS_STREAM
from fraud_platform.lib.redis_server import LocalRedisServer
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.pipeline import instance_for, load_landing
from fraud_platform.scoring.decisions import read_decisions
from fraud_platform.scoring.metrics import METRICS_KEY
from fraud_platform.scoring.models import ModelWatcher, NoServableModel
from fraud_platform_tests import test_registry_server
from fraud_platform_tests.scoring_support import (
    register_model,
    scoring_flow_process,
    scoring_settings,
    set_champion,
)

mlflow_server = test_registry_server.mlflow_server  # the fixture: a real `mlflow server` process


def _history(cards: int, days: int) -> pa.Table:
    history = simulate(SimulationConfig(cards=cards, days=days, seed=23)).transactions
    return history.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")])


def _run_to_the_end(env: dict[str, str], recovery: Path) -> None:
    flow = scoring_flow_process(env, "-r", str(recovery), "-s", "1", "-b", "0")
    output, _ = flow.communicate(timeout=300)
    assert flow.returncode == 0, output.decode()


def test_a_reused_transaction_id_is_dead_lettered_and_the_next_load_passes(
    tmp_path: Path, redis_server: LocalRedisServer, clean_redis: redis.Redis
) -> None:
    settings = scoring_settings(tmp_path / "home", redis_server.url, mode="rules")
    history = _history(cards=50, days=3)
    env = {**os.environ, **settings.environment()}
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True, env=env)
    publish(clean_redis, events_from_table(history), settings.stream_shards)
    _run_to_the_end(env, recovery)

    first = next(events_from_table(history.slice(0, 1)))
    other_card = next(card for card in history.column("card_id").to_pylist() if card != first["card_id"])
    reused = {**first, "card_id": other_card, "amount": first["amount"] + 1}
    publish(clean_redis, [first, reused], settings.stream_shards)  # an identical re-send, then the reuse
    _run_to_the_end(env, recovery)

    letters = read_dead_letters(clean_redis)
    assert sorted(letter.reason for letter in letters) == [
        DUPLICATE_REASON,  # the identical re-send: idempotent, as before
        "transaction_id reused with other content",
    ]
    (letter,) = [letter for letter in letters if letter.reason != DUPLICATE_REASON]
    assert orjson.loads(letter.payload)["card_id"] == other_card
    decisions = read_decisions(clean_redis)
    assert len(decisions) == len({d["transaction_id"] for d in decisions}) == history.num_rows
    (decided,) = [d for d in decisions if d["transaction_id"] == first["transaction_id"]]
    assert decided["card_id"] == first["card_id"]  # the first one stands

    assert load_landing(settings, instance_for(settings)).success  # transaction_id_unique passes
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        rows = connection.execute(
            "SELECT count(*), count(DISTINCT transaction_id) FROM raw.transactions"
        ).fetchall()
        decided_rows = connection.execute("SELECT count(*) FROM raw.decisions").fetchall()
    assert rows == [(history.num_rows, history.num_rows)] and decided_rows == [(history.num_rows,)]


def test_a_stopped_registry_server_does_not_stop_decisions(
    tmp_path: Path,
    mlflow_server: tuple[str, Path],
    redis_server: LocalRedisServer,
    clean_redis: redis.Redis,
) -> None:
    url, _ = mlflow_server
    settings = dataclasses.replace(
        scoring_settings(tmp_path / "home", redis_server.url, refresh_seconds=1), mlflow_tracking_uri=url
    )
    set_champion(settings, register_model(settings, 1, review=0.2, decline=0.6))
    events = list(events_from_table(_history(cards=3_000, days=30).slice(0, 60_000)))
    log = tmp_path / "flow.log"
    flow = scoring_flow_process({**os.environ, **settings.environment()}, exit_when_drained=False, log=log)
    sent = 0

    def publish_for(seconds: float, per_tick: int = 100, tick: float = 0.05) -> int:
        """Publish at a steady rate (2,000 events/s asked) for `seconds`; return the decisions made meanwhile."""
        nonlocal sent
        before = clean_redis.xlen(DECISIONS_STREAM)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert flow.poll() is None, log.read_text()
            publish(clean_redis, events[sent : sent + per_tick], settings.stream_shards)
            sent += per_tick
            time.sleep(tick)
        return clean_redis.xlen(DECISIONS_STREAM) - before

    server = _server_group(url)
    try:
        while clean_redis.xlen(DECISIONS_STREAM) == 0:  # started and deciding
            publish_for(1.0)
        publish_for(3.0)
        decided_before = publish_for(10.0)
        os.killpg(server, signal.SIGSTOP)  # the registry stops answering mid-stream (connections hang)
        decided_during = publish_for(10.0)
    finally:
        os.killpg(server, signal.SIGCONT)  # for the fixture to stop it
        flow.send_signal(signal.SIGTERM)
        flow.wait(timeout=60)
    assert decided_before > 0
    assert decided_during >= decided_before / 2, (decided_before, decided_during)
    output = log.read_text()
    assert output.count("model registry unreachable") == 1, output  # one warning per outage
    assert int(clean_redis.hget(METRICS_KEY, "registry_errors")) >= 1


def _server_group(url: str) -> int:
    """The process group of the `mlflow server` listening at `url` (the fixture starts it in its own)."""
    port = url.rsplit(":", 1)[1]
    found = subprocess.run(
        ["pgrep", "-f", "--", f"mlflow server .*--port {port}"], capture_output=True, text=True, check=True
    )
    return os.getpgid(int(found.stdout.split()[0]))


def test_a_missing_or_broken_store_is_refused_by_name_and_never_created(tmp_path: Path) -> None:
    settings = scoring_settings(tmp_path / "home", "redis://127.0.0.1:1")
    store = tmp_path / "home" / "mlflow" / "mlflow.db"
    assert settings.mlflow_tracking_uri == f"sqlite:///{store}"
    with pytest.raises(NoServableModel, match=f"the model registry store {store} does not exist"):
        ModelWatcher(settings).start()
    assert not store.exists()  # no empty registry created in its place

    store.parent.mkdir(parents=True)
    store.write_bytes(b"not a database" * 100)
    with pytest.raises(NoServableModel, match=f"the model registry at sqlite:///{store} cannot be read"):
        ModelWatcher(settings).start()
