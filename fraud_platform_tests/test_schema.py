"""The one validation function shared by the import and the stream."""

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fraud_platform.lib.schema import InvalidTransaction, parse_transaction

GOOD = {
    "transaction_id": "t1",
    "card_id": "c1",
    "merchant_id": "m1",
    "amount": 12.5,
    "currency": "usd",
    "timestamp": "2026-01-01T10:00:00+01:00",
}


def test_a_good_event_is_normalised() -> None:
    transaction = parse_transaction({**GOOD, "mcc": 5411, "channel": "ECOM", "lat": "40.7", "lon": -74})
    assert transaction.currency == "USD"
    assert transaction.timestamp_ms == 1_767_258_000_000
    assert transaction.mcc == "5411" and transaction.channel == "ecom"
    assert (transaction.lat, transaction.lon) == (40.7, -74.0)
    assert parse_transaction({**GOOD, "timestamp": 1_767_258_000_000}).timestamp_ms == 1_767_258_000_000


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"transaction_id": None}, "missing field 'transaction_id'"),
        ({"card_id": ["c1"]}, "field 'card_id' must be a string"),
        ({"merchant_id": "m" * 65}, "field 'merchant_id' must be 1 to 64 characters"),
        ({"amount": "ten"}, "field 'amount' must be a number"),
        ({"amount": -3}, "field 'amount' must be >= 0"),
        ({"amount": "-0.5"}, "field 'amount' must be >= 0"),
        ({"amount": math.nan}, "missing field 'amount'"),
        ({"amount": math.inf}, "field 'amount' must be finite"),
        ({"amount": 10**400}, "field 'amount' must be finite"),
        ({"amount": "inf"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": "nan"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": "1_000"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": "\u0661\u0662\u0663"}, "field 'amount' must be a number (ASCII digits"),  # Arabic-Indic
        ({"amount": "\uff14\uff12"}, "field 'amount' must be a number (ASCII digits"),  # fullwidth 42
        ({"amount": " 12"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": "1e3"}, "field 'amount' must be a number (ASCII digits"),
        ({"amount": b"12"}, "field 'amount' must be a number, got bytes"),
        ({"lat": "4\u0660", "lon": 1}, "field 'lat' must be a number (ASCII digits"),
        (
            {"transaction_id": "t\x001"},
            "field 'transaction_id' must be printable text: character U+0000 at position 1",
        ),
        ({"card_id": "c1\n"}, "field 'card_id' must be printable text: character U+000A at position 2"),
        ({"merchant_id": "\x1b[31mm1"}, "field 'merchant_id' must be printable text: character U+001B"),
        ({"card_id": "c\u200b1"}, "field 'card_id' must be printable text: character U+200B"),  # zero width
        (
            {"card_id": "c\u00a01"},
            "field 'card_id' must be printable text: character U+00A0",
        ),  # no-break space
        ({"amount": 5e9}, "field 'amount' exceeds"),
        ({"amount": True}, "field 'amount' must be a number, got bool"),
        ({"currency": "XXX"}, "field 'currency' is not a known ISO 4217 code"),
        ({"currency": 840}, "field 'currency' is not a known ISO 4217 code"),
        ({"timestamp": "2026-01-01T10:00:00"}, "field 'timestamp' has no time zone"),
        ({"timestamp": "yesterday"}, "field 'timestamp' is not ISO-8601 or epoch ms"),
        ({"timestamp": "--5"}, "field 'timestamp' is not ISO-8601 or epoch ms"),
        ({"timestamp": "²"}, "field 'timestamp' is not ISO-8601 or epoch ms"),
        ({"timestamp": "\uff12026-01-01T10:00:00Z"}, "field 'timestamp' is not ISO-8601 or epoch ms"),
        ({"timestamp": "1989-12-31T23:59:59Z"}, "field 'timestamp' is out of range (1990-2099)"),
        ({"timestamp": 5}, "field 'timestamp' is out of range"),
        ({"timestamp": "2999-01-01T00:00:00Z"}, "field 'timestamp' is out of range"),
        ({"lat": 91, "lon": 0}, "field 'lat' must be within"),
        ({"lat": 10}, "fields 'lat' and 'lon' must be given together"),
        ({"channel": "fax"}, "field 'channel' must be one of"),
        ({"mcc": "54a1"}, "field 'mcc' must be a 4-digit merchant category code"),
    ],
)
def test_every_bad_field_is_named(change: dict, reason: str) -> None:
    with pytest.raises(InvalidTransaction) as raised:
        parse_transaction({**GOOD, **change})
    assert reason in str(raised.value)


def test_zero_amounts_and_strict_decimal_text_are_accepted() -> None:
    """Account verifications are zero-amount transactions; plain decimal text is a number."""
    assert parse_transaction({**GOOD, "amount": 0}).amount == 0.0
    assert parse_transaction(MappingProxyType({**GOOD, "amount": "0.00"})).amount == 0.0
    for text, value in [("12.50", 12.5), ("+3", 3.0), (".5", 0.5), ("7.", 7.0)]:
        assert parse_transaction({**GOOD, "amount": text}).amount == value
    assert parse_transaction({**GOOD, "card_id": " café 7 "}).card_id == "café 7"  # spaces trimmed, text kept


def test_naive_timestamps_are_read_in_the_zone_given() -> None:
    paris = ZoneInfo("Europe/Paris")
    naive = {**GOOD, "timestamp": "2026-01-01T11:00:00"}
    assert parse_transaction(naive, naive_zone=paris).timestamp_ms == 1_767_261_600_000  # 10:00 UTC
    summer = datetime(2026, 7, 1, 12, 0)  # a naive datetime from a parquet file; CEST is UTC+2
    assert parse_transaction({**GOOD, "timestamp": summer}, naive_zone=paris).timestamp_ms == int(
        datetime(2026, 7, 1, 10, 0, tzinfo=UTC).timestamp() * 1000
    )
    zoned = parse_transaction(GOOD, naive_zone=paris)  # a zone in the value wins over the default
    assert zoned.timestamp_ms == parse_transaction(GOOD).timestamp_ms
    with pytest.raises(InvalidTransaction, match="has no time zone"):
        parse_transaction(naive)


def test_a_non_object_is_refused() -> None:
    with pytest.raises(InvalidTransaction, match="event must be a JSON object, got list"):
        parse_transaction([GOOD])  # type: ignore[arg-type]


@given(
    st.fixed_dictionaries(
        {
            "transaction_id": st.sampled_from(
                ["t1", " t1", "t" * 64, "t" * 65, "", 7, "t\n", "t\x00", "\tt"]
            ),
            "card_id": st.sampled_from(["c1", "c1 ", None]),
            "merchant_id": st.just("m1"),
            "amount": st.one_of(
                st.floats(allow_nan=True),
                st.integers(-5, 2_000_000),
                st.sampled_from(["3.5", "0", "1_0", "\uff14"]),
            ),
            "currency": st.sampled_from(["USD", "usd", " EUR", "XXX", None]),
            "timestamp": st.one_of(
                st.integers(0, 5_000_000_000_000), st.just("2026-01-01T10:00:00+00:00"), st.floats()
            ),
            "channel": st.sampled_from([None, "pos", "ECOM", "fax", ""]),
            "mcc": st.sampled_from([None, "5411", 5411, "541", "54a1", "\uff10\uff11\uff12\uff13"]),
        },
        optional={
            "lat": st.one_of(st.none(), st.floats(-100, 100), st.integers(-91, 91)),
            "lon": st.floats(-200, 200),
        },
    )
)
def test_the_fast_path_agrees_with_the_full_checks(event: dict) -> None:
    """A plain dict may take the fast path; a read-only mapping always takes the full checks."""

    def outcome(raw: Mapping) -> object:
        try:
            return parse_transaction(raw)
        except InvalidTransaction as error:
            return str(error)

    assert outcome(event) == outcome(MappingProxyType(event))
