"""The authorization API through a real `fraud-platform serve` process and a real HTTP client, with the real
scoring flow (`bytewax.run`) deciding: the API is a gateway, the flow the only writer of card state and
decisions. Its own Redis server, so one test can stop and restart it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from fraud_platform.api.client import live_events, start_server, stop_processes, wait_until_ready
from fraud_platform.api.gateway import CLIENT_NAME
from fraud_platform.config import Settings
from fraud_platform.features.backfill import backfill
from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.features.realtime import FEATURE_NAMES
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.lib.bus import events_from_table
from fraud_platform.lib.keys import card_realtime_key, transactions_stream
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.schema import TRANSACTIONS
from fraud_platform.lib.simulator import SimulationConfig, simulate
from fraud_platform.report import authorization_lines, read_authorizations
from fraud_platform.scoring.decisions import read_decisions
from fraud_platform.scoring.metrics import METRICS_KEY
from fraud_platform.testing import (
    expected_features,
    load_random_batch_features,
    register_model,
    running_api,
    scoring_flow_process,
    scoring_settings,
    set_champion,
)
from fraud_platform.training import registry
from fraud_platform.training.model import score

DEADLINE_MS = 3_000  # generous: the machine running the tests is shared; the stand-in test relies on it
CLIENT_TIMEOUT_S = 30.0  # far past the deadline: a request that hangs fails the test
FRAUD_PLATFORM = str(Path(sys.executable).parent / "fraud-platform")


@dataclass
class Platform:
    """A running flow and API server over their own Redis server."""

    settings: Settings
    server: LocalRedisServer
    client: redis.Redis
    url: str  # the API's base URL
    model_version: str
    history: pa.Table
    cards: dict
    merchants: dict


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("api")
    server = LocalRedisServer(home / "redis", free_port())
    server.start()
    settings = scoring_settings(home / "home", server.url)
    version = register_model(settings, 1, review=0.2, decline=0.6)
    set_champion(settings, version)
    history = simulate(SimulationConfig(cards=40, days=2, seed=31, fraud_card_share=0.3)).transactions
    client = server.client()
    cards, merchants = load_random_batch_features(client, history, seed=3)
    env = {
        **os.environ,
        **settings.environment(),
        "FRAUD_PLATFORM_FEATURE_LOG_FLUSH_SECONDS": "1",
        "FRAUD_PLATFORM_API_DEADLINE_MS": str(DEADLINE_MS),
    }
    try:
        with running_api(env, home) as url:
            yield Platform(settings, server, client, url, version, history, cards, merchants)
    finally:
        server.stop()


def _events(table: pa.Table) -> list[dict]:
    """The history as live authorizations (the API judges timestamps by the wall clock)."""
    return live_events(
        events_from_table(table.sort_by([("timestamp", "ascending"), ("transaction_id", "ascending")]))
    )


def _post(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/authorize", json=body, timeout=CLIENT_TIMEOUT_S)


def _logged_ids(settings: Settings, wanted: set[str], timeout: float = 60.0) -> list[str]:
    """The transaction ids in the feature log once every wanted one has landed."""
    zone = LandingZone(settings.landing_dir)
    deadline = time.monotonic() + timeout
    while True:
        files = zone.context_files("decisions")
        ids = [tid for path in files for tid in pq.read_table(path).column("transaction_id").to_pylist()]
        if wanted <= set(ids) or time.monotonic() > deadline:
            return ids
        time.sleep(0.5)


@pytest.mark.slow
def test_decisions_equal_the_model_on_the_backfilled_rows_once_each(platform: Platform) -> None:
    events = _events(platform.history)
    answers = {}
    for event in events:  # in event-time order, as the backfill sees them
        response = _post(platform.url, event)
        assert response.status_code == 200, response.text
        answers[event["transaction_id"]] = response.json()

    expected = expected_features(platform.history, platform.cards, platform.merchants)
    ids = list(answers)
    booster = registry.load(
        registry.configure(platform.settings.mlflow_tracking_uri, platform.settings.mlflow_artifact_root),
        platform.model_version,
    ).booster
    scores = score(booster, np.array([expected[tid] for tid in ids], np.float32))
    assert not any(answer["stand_in"] for answer in answers.values())
    assert [answers[tid]["score"] for tid in ids] == pytest.approx(scores.tolist(), rel=1e-5, abs=1e-6)
    assert {answer["model_version"] for answer in answers.values()} == {platform.model_version}
    flagged = [tid for tid in ids if answers[tid]["decision"] != "approve"]
    assert flagged, "the thresholds flag some transactions: their reasons are checked"
    for tid in flagged:
        for reason in answers[tid]["reasons"]:
            value = expected[tid][MODEL_FEATURES.index(reason["feature"])]
            assert reason["value"] == pytest.approx(float(value), rel=1e-5, nan_ok=True) or np.isnan(value)
            assert reason["contribution"] > 0

    decided = [decision["transaction_id"] for decision in read_decisions(platform.client)]
    assert sorted(tid for tid in decided if tid in answers) == sorted(ids)  # once each in the stream
    logged = _logged_ids(platform.settings, set(ids))
    assert sorted(tid for tid in logged if tid in answers) == sorted(ids)  # once each in the feature log


@pytest.mark.slow
def test_a_burst_for_one_card_counts_every_transaction_once(platform: Platform) -> None:
    start = time.time_ns() // 1_000_000  # live events: judged against the wall clock
    burst = [
        {
            "transaction_id": f"burst-{index}",
            "card_id": "burst-card",
            "merchant_id": f"m-{index % 3}",
            "amount": 10.0 + index,
            "currency": "EUR",
            "timestamp": start + index * 1_000,
        }
        for index in range(25)
    ]

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=platform.url, timeout=CLIENT_TIMEOUT_S) as client:
            return await asyncio.gather(*(client.post("/v1/authorize", json=event) for event in burst))

    responses = asyncio.run(send())
    assert [response.status_code for response in responses] == [200] * len(burst)
    assert not any(response.json()["stand_in"] for response in responses)

    table = pa.Table.from_pylist(
        [{**event, "timestamp": datetime.fromtimestamp(event["timestamp"] / 1000, UTC)} for event in burst],
        schema=TRANSACTIONS,
    )
    rows = backfill(table, processes=1)
    last = rows.slice(rows.num_rows - 1)
    expected = [last.column(name)[0].as_py() for name in FEATURE_NAMES]
    served = REALTIME_LAYOUT.unpack(platform.client.get(card_realtime_key("burst-card")))
    assert served[FEATURE_NAMES.index("txn_count_10m")] == len(burst)  # each request saw the others
    assert np.allclose(served, expected, equal_nan=True)
    decided = [d["transaction_id"] for d in read_decisions(platform.client) if d["card_id"] == "burst-card"]
    assert sorted(decided) == sorted(event["transaction_id"] for event in burst)


@pytest.mark.slow
def test_a_batch_is_handed_off_together_and_answered_in_order(platform: Platform) -> None:
    start = time.time_ns() // 1_000_000
    batch = [
        {
            "transaction_id": f"batch-{index}",
            "card_id": f"batch-card-{index % 7}",
            "merchant_id": f"m-{index % 3}",
            "amount": 5.0 + index,
            "currency": "EUR",
            "timestamp": start + index,
        }
        for index in range(60)
    ]
    response = httpx.post(f"{platform.url}/v1/authorize/batch", json=batch, timeout=CLIENT_TIMEOUT_S)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["transaction_id"] for result in results] == [event["transaction_id"] for event in batch]
    assert not any(result["stand_in"] for result in results)
    # One hand-off script for the 60 and one inbox reader: the server did not hold a connection per request.
    connections = [c for c in platform.client.client_list() if c["name"] == CLIENT_NAME]
    assert 1 <= len(connections) < len(batch) // 2
    decided = [
        d["transaction_id"] for d in read_decisions(platform.client) if d["card_id"].startswith("batch-")
    ]
    assert sorted(decided) == sorted(event["transaction_id"] for event in batch)


@pytest.mark.slow
def test_a_repeated_transaction_gets_its_first_decision(platform: Platform) -> None:
    event = {**_events(platform.history)[0], "transaction_id": "repeat-1"}
    first = _post(platform.url, event).json()
    again = _post(platform.url, event).json()
    assert again == first and not first["stand_in"]

    concurrent = {**event, "transaction_id": "repeat-2"}

    async def send_twice() -> list[dict]:
        async with httpx.AsyncClient(base_url=platform.url, timeout=CLIENT_TIMEOUT_S) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/authorize", json=concurrent) for _ in range(2))
            )
            return [response.json() for response in responses]

    one, two = asyncio.run(send_twice())
    assert one == two and not one["stand_in"]
    decided = [d["transaction_id"] for d in read_decisions(platform.client)]
    assert decided.count("repeat-1") == 1 and decided.count("repeat-2") == 1


@pytest.mark.slow
def test_a_transaction_id_reused_with_other_content_gets_409(platform: Platform) -> None:
    """An id names one transaction: another amount under a decided id, two contents under one id at once, or
    one item of a batch are refused, naming the field; nothing of theirs reaches the flow."""
    event = {**_events(platform.history)[0], "transaction_id": "reuse-1"}
    assert _post(platform.url, event).status_code == 200
    altered = _post(platform.url, {**event, "amount": 999_999.0})
    assert altered.status_code == 409, altered.text
    [problem] = altered.json()["detail"]
    assert problem["field"] == "transaction_id" and "reuse-1" in problem["reason"]
    assert "reused with other content" in problem["reason"]

    async def send_two_contents() -> list[httpx.Response]:
        """Twenty-five ids, each with two contents at once: the decision of the one handed off can reach the
        server before the hand-off's reply that refused the other."""
        async with httpx.AsyncClient(base_url=platform.url, timeout=CLIENT_TIMEOUT_S) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/authorize", json={**event, "transaction_id": f"reuse-2-{pair}", "amount": amount}
                    )
                    for pair in range(25)
                    for amount in (10.0, 20.0)
                )
            )

    statuses = [response.status_code for response in asyncio.run(send_two_contents())]
    assert [sorted(statuses[pair : pair + 2]) for pair in range(0, 50, 2)] == [[200, 409]] * 25

    batch = [{**event, "transaction_id": "reuse-3"}, {**event, "amount": 1.0}]  # the second reuses reuse-1
    refused = httpx.post(f"{platform.url}/v1/authorize/batch", json=batch, timeout=CLIENT_TIMEOUT_S)
    assert refused.status_code == 409, refused.text
    assert [problem["field"] for problem in refused.json()["detail"]] == ["[1].transaction_id"]
    resent = httpx.post(f"{platform.url}/v1/authorize/batch", json=batch[:1], timeout=CLIENT_TIMEOUT_S)
    assert resent.status_code == 200 and not resent.json()["results"][0]["stand_in"]

    decided = [d["transaction_id"] for d in read_decisions(platform.client)]
    reuses = ["reuse-1", *(f"reuse-2-{pair}" for pair in range(25)), "reuse-3"]
    assert [decided.count(tid) for tid in reuses] == [1] * len(reuses)
    published = {  # (id, amount) of every event put on the bus for these ids: one content each
        (event["transaction_id"], event["amount"])
        for shard in range(platform.settings.stream_shards)
        for _, fields in platform.client.xrange(transactions_stream(shard))
        for event in [orjson.loads(fields[b"event"])]
        if event["transaction_id"].startswith("reuse-")
    }
    assert sorted(tid for tid, _ in published) == sorted(reuses)


@pytest.mark.slow
def test_replay_sends_every_nth_transaction_through_the_api(platform: Platform) -> None:
    """`replay --authorize-every 4`: a quarter of the day as requests, the rest on the bus; each decided once,
    each request's answer recorded and reported next to the flow's time for it."""
    day = datetime.now(UTC).date() - timedelta(days=1)  # live traffic: within the server's window of age
    history = simulate(SimulationConfig(cards=20, days=1, seed=47, start=day)).transactions
    ids = pa.array([f"replayed-{tid}" for tid in history.column("transaction_id").to_pylist()])
    history = history.set_column(history.schema.get_field_index("transaction_id"), "transaction_id", ids)
    LandingZone(platform.settings.landing_dir).write_batch("authorize-every", history, source="test")
    env = {**os.environ, **platform.settings.environment()}
    result = subprocess.run(
        [FRAUD_PLATFORM, "replay", "--day", str(day), "--authorize-every", "4", "--api-url", platform.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    sent = (history.num_rows + 3) // 4
    assert f"authorized {sent:,} through {platform.url}" in result.stdout

    answers = read_authorizations(platform.settings.home)
    assert len(answers) == sent and not any(answer["stand_in"] for answer in answers)
    wanted = set(ids.to_pylist())
    deadline = time.monotonic() + 60
    while {
        d["transaction_id"] for d in read_decisions(platform.client)
    } < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    events = [d for d in read_decisions(platform.client) if d["transaction_id"] in wanted]
    assert sorted(d["transaction_id"] for d in events) == sorted(wanted)  # every one decided, once
    decided = {d["transaction_id"]: d["decision"] for d in events}
    assert all(decided[answer["transaction_id"]] == answer["decision"] for answer in answers)
    lines = authorization_lines(answers, events)
    assert (
        lines[0].startswith(f"authorization API: {sent:,} requests")
        and f"over {sent:,} decisions" in lines[1]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"card_id": "c", "merchant_id": "m", "amount": 1, "currency": "EUR", "timestamp": 1},
            "transaction_id",
        ),
        (
            {"transaction_id": "x", "card_id": "c", "merchant_id": "m", "amount": -5, "currency": "EUR"},
            "amount",
        ),
        (
            {"transaction_id": "x", "card_id": "c", "merchant_id": "m", "amount": 5, "currency": "XXX"},
            "currency",
        ),
        (  # only the platform's replay of history may bring its own clock
            {
                **{"transaction_id": "x", "card_id": "c", "merchant_id": "m", "amount": 5, "currency": "EUR"},
                **{"timestamp": 1_767_225_600_000, "replay_clock": 1_767_225_600_000},
            },
            "replay_clock",
        ),
        ([1, 2], "body"),
        ("not json", "body"),
    ],
)
def test_a_malformed_body_gets_422_naming_the_field(platform: Platform, body: object, field: str) -> None:
    if isinstance(body, str):
        response = httpx.post(f"{platform.url}/v1/authorize", content=body, timeout=CLIENT_TIMEOUT_S)
    else:
        response = _post(platform.url, body)
    assert response.status_code == 422, response.text
    [detail] = response.json()["detail"]
    assert detail["field"] == field
    assert field == "body" or f"'{field}'" in detail["reason"]


@pytest.mark.slow
def test_stand_in_while_redis_is_down_and_decisions_once_it_is_back(platform: Platform) -> None:
    event = {**_events(platform.history)[-1], "transaction_id": "outage-1"}
    platform.server.stop()
    try:
        response = _post(platform.url, event)
        assert response.status_code == 200
        answer = response.json()
        assert answer["stand_in"] is True and answer["decision"] == "review"  # the default stand-in
        assert "Redis" in answer["stand_in_reason"]
        assert httpx.get(f"{platform.url}/readyz", timeout=CLIENT_TIMEOUT_S).status_code == 503
    finally:
        platform.server.start()
    deadline = time.monotonic() + 120
    while True:  # the flow reconnects on its own (its client retries for about a minute)
        answer = _post(platform.url, {**event, "transaction_id": "outage-2"}).json()
        if not answer["stand_in"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert answer["stand_in"] is False and answer["model_version"] == platform.model_version


@pytest.mark.slow
def test_not_ready_once_the_flow_has_stopped_until_a_new_one_reports(tmp_path: Path) -> None:
    """A flow that ends marks itself stopped: the API is not ready although the flow's last report is seconds
    old (a restarted flow's first requests used to be answered "ready" and wait for a flow not yet there), and
    is ready again once the next flow reports."""
    server = LocalRedisServer(tmp_path / "redis", free_port())
    server.start()
    processes: list[subprocess.Popen] = []
    try:
        settings = scoring_settings(tmp_path / "home", server.url)
        set_champion(settings, register_model(settings, 1, review=0.2, decline=0.6))
        env = {**os.environ, **settings.environment()}
        drained = scoring_flow_process(env, log=tmp_path / "drained.log")  # empty streams: it ends at once
        assert drained.wait(timeout=180) == 0
        assert server.client().hget(METRICS_KEY, "model_version").decode() == "1"  # it reported, then ended
        port = free_port()
        processes.append(start_server(env, port, tmp_path / "api.log"))
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, processes[0], probe="/healthz")  # the server is up
        response = httpx.get(f"{url}/readyz", timeout=CLIENT_TIMEOUT_S)
        assert response.status_code == 503
        assert any("the flow stopped" in problem for problem in response.json()["problems"]), response.text
        processes.append(scoring_flow_process(env, exit_when_drained=False, log=tmp_path / "flow.log"))
        wait_until_ready(url, processes[0])
    finally:
        stop_processes(processes)
        server.stop()


def test_serve_refuses_a_public_address_without_an_api_key(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "FRAUD_PLATFORM_API_KEY"}
    env["FRAUD_PLATFORM_HOME"] = str(tmp_path)
    result = subprocess.run(
        [FRAUD_PLATFORM, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "FRAUD_PLATFORM_API_KEY" in result.stderr
