"""A corpus of malformed events through the real path: Redis stream -> flow -> dead-letter stream.

Every kind reaches the dead-letter stream with a reason naming what is wrong; the flow never crashes;
the good events around them are all processed; nothing is silently dropped. The good events are history
(January 2026) replayed with their clock; the corpus has live events (no replay clock) judged against the
wall clock too.
"""

import dataclasses
import time

import orjson
import pytest
import redis
from bytewax.testing import run_main

from bytewax_flows.realtime_features import build_flow
from fraud_platform.config import Settings
from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.features.realtime import FEATURE_NAMES
from fraud_platform.lib.bus import EVENT_FIELD, REPLAY_CLOCK_FIELD, read_dead_letters
from fraud_platform.lib.keys import card_realtime_key, transactions_stream
from fraud_platform.lib.redis_server import LocalRedisServer

GOOD = {
    "transaction_id": "good-0",
    "card_id": "card-a",
    "merchant_id": "m1",
    "amount": 25.0,
    "currency": "USD",
    "timestamp": 1_767_258_000_000,
    "lat": 40.7,
    "lon": -74.0,
    "channel": "pos",
    "mcc": "5411",
    REPLAY_CLOCK_FIELD: 1_767_258_000_000,
}
NOW_MS = time.time_ns() // 1_000_000
DAY_MS = 86_400_000


def _event(**change: object) -> bytes:
    return orjson.dumps({key: value for key, value in {**GOOD, **change}.items() if value is not ...})


# (payload, a fragment the dead-letter reason must contain)
CORPUS: list[tuple[bytes, str]] = [
    (b"{not json", "invalid JSON"),
    (b"", "invalid JSON"),
    (b"\xff\xfe\x00garbage", "invalid JSON"),
    (b"[1, 2, 3]", "JSON object"),
    (b'"just a string"', "JSON object"),
    (b"null", "JSON object"),
    (_event(transaction_id=...), "missing field 'transaction_id'"),
    (_event(card_id=...), "missing field 'card_id'"),
    (_event(merchant_id=None), "missing field 'merchant_id'"),
    (_event(card_id={"nested": 1}), "field 'card_id' must be a string"),
    (_event(amount="ten dollars"), "field 'amount' must be a number"),
    (_event(amount=-12.0), "field 'amount' must be >= 0"),
    (
        b'{"transaction_id":"t","card_id":"c","merchant_id":"m","amount":NaN,"currency":"USD","timestamp":1767258000000}',
        "invalid JSON",
    ),
    (_event(amount=1e12), "field 'amount' exceeds"),
    (_event(amount=True), "field 'amount' must be a number, got bool"),
    (_event(currency="DOGE"), "not a known ISO 4217 code"),
    (_event(currency=...), "missing field 'currency'"),
    (_event(timestamp="yesterday at noon"), "not ISO-8601 or epoch ms"),
    (_event(timestamp="2026-01-01T10:00:00"), "has no time zone"),
    (_event(timestamp=32_503_680_000_000), "out of range"),
    (_event(timestamp=-5), "out of range"),
    (_event(lat=123.0), "field 'lat' must be within"),
    (_event(lon=...), "fields 'lat' and 'lon' must be given together"),
    (_event(channel="carrier-pigeon"), "field 'channel' must be one of"),
    (_event(mcc="ABCD"), "4-digit merchant category code"),
    (_event(transaction_id="t" * 200), "1 to 64 characters"),
    (orjson.dumps({**GOOD, "padding": "x" * 200_000}), "exceeds the limit"),
    # The good event below, sent twice (same content: idempotent), and the first one's id on another card.
    (_event(transaction_id="good-1", timestamp=1_767_258_060_000), "duplicate transaction_id"),
    (_event(transaction_id="good-0", card_id="card-b"), "transaction_id reused with other content"),
    # Numbers that Python's float() reads but that are not ASCII decimals.
    (_event(amount="1_000"), "field 'amount' must be a number (ASCII digits"),
    (
        _event(amount="\u0661\u0662\u0663"),
        "field 'amount' must be a number (ASCII digits",
    ),  # Arabic-Indic 123
    (_event(amount="\uff14\uff12"), "field 'amount' must be a number (ASCII digits"),  # fullwidth 42
    (_event(amount="nan"), "field 'amount' must be a number (ASCII digits"),
    (_event(amount="-inf"), "field 'amount' must be a number (ASCII digits"),
    (_event(amount=" 12"), "field 'amount' must be a number (ASCII digits"),
    (_event(amount="1e3"), "field 'amount' must be a number (ASCII digits"),
    (_event(amount={"value": 3}), "field 'amount' must be a number, got dict"),
    (_event(lat="4\u0660", lon=1.0), "field 'lat' must be a number (ASCII digits"),
    # Ids with control, format or separator characters, or too long.
    (_event(transaction_id="t\x001"), "field 'transaction_id' must be printable text: character U+0000"),
    (_event(card_id="card-a\n"), "field 'card_id' must be printable text: character U+000A"),
    (_event(merchant_id="\x1b[2Jm1"), "field 'merchant_id' must be printable text: character U+001B"),
    (_event(card_id="card\u200ba"), "field 'card_id' must be printable text: character U+200B"),
    (_event(transaction_id="t\u202e1"), "field 'transaction_id' must be printable text: character U+202E"),
    (_event(merchant_id="m\u2028"), "field 'merchant_id' must be printable text: character U+2028"),
    (_event(merchant_id="m" * 65), "field 'merchant_id' must be 1 to 64 characters"),
    # Repeated keys: a JSON parser keeps the last one silently.
    (_event()[:-1] + b',"card_id":"card-b"}', "key 'card_id' appears more than once"),
    (_event()[:-1] + b',"amount":25.0}', "key 'amount' appears more than once"),
    (_event()[:-1] + b',"extra":{"k":1,"k":2}}', "key 'k' appears more than once"),
    # Timestamps implausible for their clock: live events (no replay clock) against the wall clock.
    (_event(**{REPLAY_CLOCK_FIELD: ...}, timestamp=4_102_358_400_000), "ahead of the wall clock"),  # 2099
    (_event(**{REPLAY_CLOCK_FIELD: ...}, timestamp=946_684_800_000), "behind the wall clock"),  # 2000
    (
        _event(**{REPLAY_CLOCK_FIELD: ...}, timestamp=NOW_MS + 3_600_000),
        "FRAUD_PLATFORM_MAX_EVENT_FUTURE_SECONDS",
    ),
    (
        _event(**{REPLAY_CLOCK_FIELD: ...}, timestamp=NOW_MS - 40 * DAY_MS),
        "FRAUD_PLATFORM_MAX_EVENT_AGE_DAYS",
    ),
    (_event(timestamp=946_684_800_000), "behind the replay clock"),
    (_event(timestamp=1_767_258_000_000 + 3_600_000), "ahead of the replay clock"),
    (_event(**{REPLAY_CLOCK_FIELD: 4_102_358_400_000}), "field 'replay_clock' must be epoch ms"),
    (_event(**{REPLAY_CLOCK_FIELD: "2026-01-01"}), "field 'replay_clock' must be epoch ms"),
    (_event(timestamp="\uff12026-01-01T10:00:00Z"), "not ISO-8601 or epoch ms"),
]


@pytest.mark.slow
def test_every_malformed_event_reaches_the_dead_letter_stream(
    redis_server: LocalRedisServer, clean_redis: redis.Redis
) -> None:
    assert len(CORPUS) >= 45 and len({payload for payload, _ in CORPUS}) == len(CORPUS)
    stream = transactions_stream(0)
    good = [
        _event(transaction_id=f"good-{index}", timestamp=1_767_258_000_000 + index * 60_000)
        for index in range(3)
    ]
    good.append(_event(transaction_id="good-zero", amount=0))  # an account verification
    for payload in [good[0], good[1], *(payload for payload, _ in CORPUS), *good[2:]]:
        clean_redis.xadd(stream, {EVENT_FIELD: payload})
    clean_redis.xadd(stream, {"not-the-event-field": b"x"})  # an entry without an event at all

    config = dataclasses.replace(Settings.from_env({"REDIS_URL": redis_server.url}), stream_shards=1)
    run_main(build_flow(settings=config, exit_when_drained=True))

    letters = read_dead_letters(clean_redis)
    assert len(letters) == len(CORPUS) + 1  # every bad entry, once (order varies: duplicates are found later)
    unmatched = list(letters)
    for payload, expected in [*CORPUS, (b"", "no 'event' field")]:
        match = next((letter for letter in unmatched if expected in letter.reason), None)
        assert match is not None, f"no dead letter says {expected!r} for {payload[:60]!r}"
        unmatched.remove(match)
    # Payloads are kept (cut to the dead-letter limit) so an operator can see what arrived.
    assert any(letter.payload.startswith(b"{not json") for letter in letters)
    # The four good events around the corpus were all processed, once: the card's features count them.
    features = REALTIME_LAYOUT.unpack(clean_redis.get(card_realtime_key("card-a")))
    assert features[FEATURE_NAMES.index("txn_count_24h")] == 4
