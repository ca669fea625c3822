"""A corpus of malformed events through the real path: Redis stream -> flow -> dead-letter stream.

Every kind reaches the dead-letter stream with a reason naming what is wrong; the flow never crashes;
the good events around them are all processed; nothing is silently dropped.
"""

import dataclasses

import orjson
import pytest
import redis
from bytewax.testing import run_main

from bytewax_flows.realtime_features import build_flow
from fraud_platform.config import Settings
from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.features.realtime import FEATURE_NAMES
from fraud_platform.lib.bus import EVENT_FIELD, read_dead_letters
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
}


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
    (_event(amount=-12.0), "field 'amount' must be > 0"),
    (_event(amount=0), "field 'amount' must be > 0"),
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
    (_event(transaction_id="good-1"), "duplicate transaction_id"),  # the good event below, sent twice
]


@pytest.mark.slow
def test_every_malformed_event_reaches_the_dead_letter_stream(
    redis_server: LocalRedisServer, clean_redis: redis.Redis
) -> None:
    assert len({reason for _, reason in CORPUS}) >= 20
    stream = transactions_stream(0)
    good = [
        _event(transaction_id=f"good-{index}", timestamp=1_767_258_000_000 + index * 60_000)
        for index in range(3)
    ]
    for payload in [good[0], good[1], *(payload for payload, _ in CORPUS), good[2]]:
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
    # The three good events around the corpus were all processed, once: the card's features count them.
    features = REALTIME_LAYOUT.unpack(clean_redis.get(card_realtime_key("card-a")))
    assert features[FEATURE_NAMES.index("txn_count_24h")] == 3
