"""The transaction bus on a real Redis server: decoding and dead-letter reasons, publish, replay, the CLI."""

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from click.testing import CliRunner

from fraud_platform.cli import main
from fraud_platform.config import Settings
from fraud_platform.features.backfill import VERSION_COLUMN, backfill
from fraud_platform.features.realtime import FEATURE_DEFINITION_VERSION
from fraud_platform.lib import bus
from fraud_platform.lib.bus import (
    DEAD_LETTER_PAYLOAD_BYTES,
    DEFAULT_EVENT_WINDOW,
    EVENT_FIELD,
    MAX_EVENT_BYTES,
    REPLAY_CLOCK_FIELD,
    DeadLetter,
    EventWindow,
    decode_event,
    events_from_table,
    landing_days,
    publish,
    read_dead_letters,
    read_streams,
    replay,
    stream_id,
    stream_last_id,
    transaction_event,
    write_dead_letters,
)
from fraud_platform.lib.keys import shard_of, transactions_stream
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.schema import Transaction, parse_transaction
from fraud_platform.lib.simulator import SimulationConfig, simulate

GOOD = {
    "transaction_id": "t1",
    "card_id": "c1",
    "merchant_id": "m1",
    "amount": 12.5,
    "currency": "usd",
    "timestamp": "2026-01-05T10:00:00+00:00",
    "lat": 40.7,
    "lon": -74.0,
    "channel": "pos",
    "mcc": "5411",
}
GOOD_MS = 1_767_607_200_000  # GOOD's timestamp
NOW_MS = GOOD_MS + 60_000  # the wall clock of the tests that judge GOOD as a live event
DAY_MS = 86_400_000


def test_a_good_event_decodes_to_the_schemas_transaction() -> None:
    decoded = decode_event(orjson.dumps(GOOD), now_ms=NOW_MS)
    assert decoded == parse_transaction(GOOD)
    assert decoded.timestamp_ms == GOOD_MS
    assert decode_event(orjson.dumps({**GOOD, "timestamp": GOOD_MS}), now_ms=NOW_MS) == decoded
    assert decode_event(transaction_event(decoded)) == decoded  # stamped with its own time: any wall clock
    assert orjson.loads(transaction_event(decoded))[REPLAY_CLOCK_FIELD] == GOOD_MS
    escaped = {**GOOD, "merchant_id": 'm"1', "note": "any other field"}  # quotes in text, not repeated keys
    assert decode_event(orjson.dumps(escaped), now_ms=NOW_MS).merchant_id == 'm"1'


def _reason(event: object, window: EventWindow = DEFAULT_EVENT_WINDOW) -> str:
    letter = decode_event(orjson.dumps(event), window, NOW_MS)
    assert isinstance(letter, DeadLetter)
    assert letter.payload == orjson.dumps(event)
    return letter.reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"timestamp": "2099-12-31T00:00:00Z"},
            "field 'timestamp' (2099-12-31T00:00:00Z) is 27,022.6 days ahead",
        ),
        (
            {"timestamp": NOW_MS + 301_000},
            "is 301 s ahead of the wall clock, more than FRAUD_PLATFORM_MAX_EVENT_FUTURE",
        ),
        (
            {"timestamp": "2000-01-01T00:00:00Z"},
            "(2000-01-01T00:00:00Z) is 9,501.4 days behind the wall clock",
        ),
        (
            {"timestamp": GOOD_MS - 31 * DAY_MS},
            "behind the wall clock, more than FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS=30",
        ),
        (
            {"timestamp": "2000-01-01T00:00:00Z", REPLAY_CLOCK_FIELD: GOOD_MS},
            "is 9,501.4 days behind the replay clock (2026-01-05T10:00:00Z)",
        ),
        ({REPLAY_CLOCK_FIELD: NOW_MS + DAY_MS}, "field 'replay_clock' must be epoch ms from 1990 up to now"),
        ({REPLAY_CLOCK_FIELD: "2026-01-05"}, "field 'replay_clock' must be epoch ms from 1990 up to now"),
        ({REPLAY_CLOCK_FIELD: True}, "field 'replay_clock' must be epoch ms from 1990 up to now, got True"),
    ],
)
def test_a_timestamp_far_from_its_clock_becomes_a_dead_letter(change: dict, reason: str) -> None:
    assert reason in _reason({**GOOD, **change})


def test_the_window_follows_the_settings_and_a_replay_carries_its_own_clock() -> None:
    settings = Settings.from_env(
        {"FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS": "2", "FRAUD_PLATFORM_MAX_EVENT_FUTURE_SECONDS": "0"}
    )
    window = EventWindow.from_settings(settings)
    assert window == EventWindow(2 * DAY_MS, 0)
    three_days = {**GOOD, "timestamp": NOW_MS - 3 * DAY_MS}
    assert "more than FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS=2" in _reason(three_days, window)
    assert "more than FRAUD_PLATFORM_MAX_EVENT_FUTURE_SECONDS=0" in _reason(
        {**GOOD, "timestamp": NOW_MS + 1}, window
    )
    assert isinstance(decode_event(orjson.dumps(three_days)), DeadLetter)  # judged by the real wall clock
    # History replayed with its clock: accepted at any wall clock, judged against the replayed time.
    replayed = {**GOOD, "timestamp": GOOD_MS - DAY_MS, REPLAY_CLOCK_FIELD: GOOD_MS}
    assert decode_event(orjson.dumps(replayed), window).timestamp_ms == GOOD_MS - DAY_MS
    assert decode_event(orjson.dumps(replayed), window, now_ms=GOOD_MS).timestamp_ms == GOOD_MS - DAY_MS


def test_an_accepted_event_formats_no_dates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dates are formatted for a dead letter's reason only: the accepted path (every event of a replay) does
    not pay for them."""
    formatted: list[int] = []
    monkeypatch.setattr(bus, "_utc", lambda millis: formatted.append(millis) or "")
    replayed = {**GOOD, "timestamp": GOOD_MS - DAY_MS, REPLAY_CLOCK_FIELD: GOOD_MS}
    assert isinstance(decode_event(orjson.dumps(replayed), now_ms=GOOD_MS), Transaction)
    assert isinstance(decode_event(orjson.dumps(GOOD), now_ms=NOW_MS), Transaction)
    assert formatted == []
    assert isinstance(decode_event(orjson.dumps({**replayed, "timestamp": 946_684_800_000})), DeadLetter)
    assert formatted == [946_684_800_000, GOOD_MS]  # the event's time and its replay clock, in the reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1","amount":1,"currency":"USD",'
            b'"timestamp":1767607200000,"card_id":"c2"}',
            "key 'card_id' appears more than once in the JSON object",
        ),
        (  # the same value twice is still a repeated key
            b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1","amount":1,"amount":1,"currency":"USD",'
            b'"timestamp":1767607200000}',
            "key 'amount' appears more than once",
        ),
        (  # whitespace before the colon
            b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1","amount" : 1,"amount":99,'
            b'"currency":"USD","timestamp":1767607200000}',
            "key 'amount' appears more than once",
        ),
        (  # in a nested object of an extra field
            b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1","amount":1,"currency":"USD",'
            b'"timestamp":1767607200000,"extra":{"a":1,"a":2}}',
            "key 'a' appears more than once",
        ),
        (
            b'{"transaction_id":"t1","card_id":"c1","merchant_id":"m1","amount":1,"currency":"USD",'
            b'"timestamp":1767607200000,"x":' + b"[" * 1_020 + b'"s"' + b"]" * 1_020 + b"}",
            "JSON nested too deeply for an event",
        ),
    ],
)
def test_repeated_keys_become_dead_letters(payload: bytes, reason: str) -> None:
    letter = decode_event(payload, now_ms=NOW_MS)
    assert isinstance(letter, DeadLetter) and letter.reason.startswith(reason)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"transaction_id": None}, "missing field 'transaction_id'"),
        ({"card_id": ""}, "missing field 'card_id'"),
        ({"merchant_id": ["m1"]}, "field 'merchant_id' must be a string, got list"),
        ({"card_id": "c" * 65}, "field 'card_id' must be 1 to 64 characters"),
        ({"amount": None}, "missing field 'amount'"),
        ({"amount": "twelve"}, "field 'amount' must be a number"),
        ({"amount": True}, "field 'amount' must be a number, got bool"),
        ({"amount": "1e999"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": "1_000"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": "\u0661\u0662\u0663"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": "\uff14\uff12"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": -0.01}, "field 'amount' must be >= 0"),
        ({"card_id": "c\x001"}, "field 'card_id' must be printable text: character U+0000 at position 1"),
        ({"transaction_id": "t1\n"}, "field 'transaction_id' must be printable text: character U+000A"),
        ({"amount": 2_000_000}, "field 'amount' exceeds 1e+06"),
        ({"currency": None}, "missing field 'currency'"),
        ({"currency": "XXX"}, "field 'currency' is not a known ISO 4217 code"),
        ({"timestamp": None}, "missing field 'timestamp'"),
        ({"timestamp": "2026-01-05T10:00:00"}, "field 'timestamp' has no time zone"),
        ({"timestamp": "yesterday"}, "field 'timestamp' is not ISO-8601 or epoch ms"),
        ({"timestamp": 12}, "field 'timestamp' is out of range"),
        ({"timestamp": [1]}, "field 'timestamp' must be ISO-8601 text or epoch ms"),
        ({"lat": 95.0}, "field 'lat' must be within +-90"),
        ({"lon": None}, "fields 'lat' and 'lon' must be given together"),
        ({"channel": "phone"}, "field 'channel' must be one of"),
        ({"mcc": "54x1"}, "field 'mcc' must be a 4-digit merchant category code"),
    ],
)
def test_every_schema_error_becomes_a_dead_letter_with_its_reason(change: dict, reason: str) -> None:
    assert _reason({**GOOD, **change}).startswith(reason)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"transaction_id": "t1", ', "invalid JSON: "),
        (b"\xff\xfe not text", "invalid JSON: "),
        (b"[1, 2, 3]", "event must be a JSON object, got list"),
        (b'"just text"', "event must be a JSON object, got str"),
        (b"null", "event must be a JSON object, got NoneType"),
    ],
)
def test_unreadable_payloads_become_dead_letters(payload: bytes, reason: str) -> None:
    letter = decode_event(payload, now_ms=NOW_MS)
    assert isinstance(letter, DeadLetter) and letter.reason.startswith(reason) and letter.payload == payload


def test_an_entry_without_an_event_and_an_oversize_event_become_dead_letters() -> None:
    assert decode_event(None) == DeadLetter(f"stream entry has no '{EVENT_FIELD}' field", b"")
    huge = orjson.dumps({**GOOD, "note": "x" * MAX_EVENT_BYTES})
    letter = decode_event(huge)
    assert isinstance(letter, DeadLetter)
    assert letter.reason == f"event of {len(huge):,} bytes exceeds the limit of {MAX_EVENT_BYTES:,}"
    assert letter.payload == huge[:DEAD_LETTER_PAYLOAD_BYTES]


def test_landing_rows_become_events_the_stream_accepts() -> None:
    table = simulate(SimulationConfig(cards=20, days=1, seed=5)).transactions
    events = list(events_from_table(table))
    assert len(events) == table.num_rows
    for event, row in zip(events, table.to_pylist(), strict=True):
        assert event[REPLAY_CLOCK_FIELD] == event["timestamp"]  # history replays at its own time
        decoded = decode_event(orjson.dumps(event))
        assert isinstance(decoded, Transaction)
        assert decoded.timestamp_ms == int(row["timestamp"].timestamp() * 1000)
        assert (decoded.transaction_id, decoded.amount, decoded.lat) == (
            row["transaction_id"],
            row["amount"],
            row["lat"],
        )
        assert ("lat" in event) == (row["lat"] is not None)  # absent rather than null


def test_publish_shards_by_card_and_keeps_each_cards_order(clean_redis: redis.Redis) -> None:
    events = [{**GOOD, "transaction_id": f"t{index}", "card_id": f"c{index % 7}"} for index in range(50)]
    assert publish(clean_redis, events, shards=3) == 50
    seen: dict[str, list[str]] = {}
    for shard in range(3):
        stream = transactions_stream(shard)
        for _, payload in read_streams(clean_redis, {stream: "0-0"}, 100, None)[stream]:
            event = orjson.loads(payload)
            assert shard_of(event["card_id"], 3) == shard
            seen.setdefault(event["card_id"], []).append(event["transaction_id"])
    assert seen == {f"c{card}": [f"t{i}" for i in range(card, 50, 7)] for card in range(7)}


def test_stream_positions(clean_redis: redis.Redis) -> None:
    stream = transactions_stream(0)
    assert stream_last_id(clean_redis, stream) == "0-0"
    clean_redis.xadd(stream, {"other": "field"})
    last = clean_redis.xadd(stream, {EVENT_FIELD: b"{}"}).decode()
    assert stream_last_id(clean_redis, stream) == last
    entries = read_streams(clean_redis, {stream: "0-0"}, 10, None)[stream]
    assert [payload for _, payload in entries] == [None, b"{}"]
    assert read_streams(clean_redis, {stream: last}, 10, 1) == {}  # waits 1 ms, nothing new
    assert stream_id("5-1") > stream_id("4-9") and stream_id("12") == (12, 0)


def test_dead_letters_round_trip(clean_redis: redis.Redis) -> None:
    letters = [DeadLetter("duplicate transaction_id", b'{"a": 1}'), DeadLetter("invalid JSON: x", b"\xff")]
    assert write_dead_letters(clean_redis, letters) == 2
    assert write_dead_letters(clean_redis, []) == 0
    assert read_dead_letters(clean_redis) == letters


def test_replay_paces_to_the_rate_and_reports_progress(clean_redis: redis.Redis) -> None:
    table = simulate(SimulationConfig(cards=200, days=1, seed=2)).transactions.slice(0, 150)
    assert table.num_rows == 150
    progress: list[int] = []
    began = time.perf_counter()
    result = replay(
        clean_redis, [table.slice(0, 100), table.slice(100)], 2, rate=500, progress=progress.append
    )
    # Chunks of 10 (a fiftieth of a second) each wait for their slot: the last one starts at 140 / 500 s.
    assert time.perf_counter() - began >= 140 / 500
    assert progress == [10] * 15
    assert result.published == sum(progress) == 150
    assert sum(clean_redis.xlen(transactions_stream(shard)) for shard in range(2)) == 150
    with pytest.raises(ValueError, match="rate must be positive"):
        replay(clean_redis, [table], 2, rate=0)


def _land(settings: Settings, batch: str, seed: int, start: datetime) -> pa.Table:
    data = simulate(SimulationConfig(cards=40, days=3, seed=seed, start=start.date()))
    LandingZone(settings.landing_dir).write_batch(batch, data.transactions, source="test")
    return data.transactions


def test_landing_days_merge_batches_in_event_time_order(platform_env: Settings) -> None:
    first = _land(platform_env, "b1", 1, datetime(2026, 1, 1, tzinfo=UTC))
    second = _land(platform_env, "b2", 2, datetime(2026, 1, 2, tzinfo=UTC))
    (day,) = landing_days(LandingZone(platform_env.landing_dir), ["2026-01-02"])
    keys = list(
        zip(day.column("timestamp").to_pylist(), day.column("transaction_id").to_pylist(), strict=True)
    )
    assert keys == sorted(keys)
    expected = sum(
        sum(1 for ts in table.column("timestamp").to_pylist() if ts.date().isoformat() == "2026-01-02")
        for table in (first, second)
    )
    assert day.num_rows == expected


def test_the_replay_and_backfill_commands(
    platform_env: Settings, redis_server: LocalRedisServer, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    runner = CliRunner(env={"REDIS_URL": redis_server.url})
    assert "landing zone" in runner.invoke(main, ["replay"]).output  # nothing landed yet
    transactions = _land(platform_env, "b1", 3, datetime(2026, 1, 1, tzinfo=UTC))

    result = runner.invoke(main, ["replay", "--day", "2026-01-02"])
    assert result.exit_code == 0, result.output
    on_day = sum(1 for ts in transactions.column("timestamp").to_pylist() if ts.day == 2)
    assert f"replayed {on_day:,} transactions of 2026-01-02 to 4 shards" in result.output
    assert sum(clean_redis.xlen(transactions_stream(shard)) for shard in range(4)) == on_day

    again = runner.invoke(main, ["replay", "--day", "2026-01-02", "--reset", "--rate", "1000000"])
    assert again.exit_code == 0, again.output
    assert sum(clean_redis.xlen(transactions_stream(shard)) for shard in range(4)) == on_day  # not twice

    refused = runner.invoke(main, ["replay", "--day", "2026-01-02", "--from", "2026-01-01"])
    assert refused.exit_code != 0 and "either --day or --from/--to" in refused.output
    empty = runner.invoke(main, ["replay", "--from", "2027-01-01"])
    assert empty.exit_code == 1 and "landed days: 2026-01-01 to 2026-01-03" in empty.output

    out = tmp_path / "features" / "rt.parquet"
    result = runner.invoke(main, ["features", "backfill", "--out", str(out), "--processes", "1"])
    assert result.exit_code == 0, result.output
    assert f"backfilled {transactions.num_rows:,} transactions" in result.output
    written = pq.read_table(out).sort_by("transaction_id")
    expected = backfill(transactions).sort_by("transaction_id")
    assert set(written.column(VERSION_COLUMN).to_pylist()) == {FEATURE_DEFINITION_VERSION}
    for name in expected.column_names:  # NaN (a missing value) equals NaN
        np.testing.assert_array_equal(written.column(name).to_numpy(), expected.column(name).to_numpy())


def test_a_replay_to_an_unreachable_redis_names_it_without_its_password(platform_env: Settings) -> None:
    _land(platform_env, "b1", 4, datetime(2026, 1, 1, tzinfo=UTC))
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    result = CliRunner(env={"REDIS_URL": url}).invoke(main, ["replay", "--day", "2026-01-02"])
    assert result.exit_code == 1 and "s3cret-pw" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: cannot reach REDIS_URL redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}")
    assert last.endswith("check that the server runs there and that REDIS_URL is right")


def test_publish_trims_each_shard_to_about_the_maximum_length(clean_redis: redis.Redis) -> None:
    events = [{**GOOD, "transaction_id": f"t{index}"} for index in range(3_000)]  # one card: one shard
    publish(clean_redis, events, shards=1, max_length=500)
    length = clean_redis.xlen(transactions_stream(0))
    assert 500 <= length < 1_000  # MAXLEN ~ trims whole macro nodes: about, never below, the maximum
    newest = orjson.loads(clean_redis.xrevrange(transactions_stream(0), count=1)[0][1][EVENT_FIELD.encode()])
    assert newest["transaction_id"] == "t2999"  # the oldest go, the newest stay
    publish(clean_redis, events[:10], shards=1)  # 0: never trimmed
    assert clean_redis.xlen(transactions_stream(0)) == length + 10
