"""The transaction event schema and the context tables' schemas, shared by every producer and consumer.

One validation function, `parse_transaction`, is used by the import of user files and by the stream, so a
row that the batch side accepts is exactly an event that the stream accepts. Numbers given as text must be
plain ASCII decimals ("12.50", not "1_000", " 12", "nan" or digits of other scripts); identifiers must be printable text
(no control, format or separator characters besides the space) of at most MAX_ID_LENGTH characters.
Whether a valid timestamp is also plausible *now* is the caller's rule: the stream judges it against a clock
(`bus.EventWindow`), the import against the file's own bounds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

import pyarrow as pa

CHANNELS = frozenset({"pos", "ecom", "atm"})

# ISO 4217 codes the platform accepts; anything else is an "unknown currency".
CURRENCIES = frozenset(
    [
        "AED",
        "AUD",
        "BRL",
        "CAD",
        "CHF",
        "CLP",
        "CNY",
        "COP",
        "CZK",
        "DKK",
        "EUR",
        "GBP",
        "HKD",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "JPY",
        "KRW",
        "MXN",
        "MYR",
        "NOK",
        "NZD",
        "PEN",
        "PHP",
        "PLN",
        "RON",
        "SAR",
        "SEK",
        "SGD",
        "THB",
        "TRY",
        "TWD",
        "USD",
        "ZAR",
    ]
)

# Amounts above this are treated as corrupt input, not as a purchase; 0 is an account verification.
MAX_AMOUNT = 1_000_000.0
# Timestamps outside this range are absurd for a card transaction, whatever the clock.
MIN_TIMESTAMP_MS = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_TIMESTAMP_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
TIMESTAMP_RANGE = "1990-2099"
MAX_ID_LENGTH = 64

_MCC = re.compile(r"^[0-9]{4}$")
# A number as text: optional sign, ASCII digits, optional fraction. No exponent, separators or blanks.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")

REQUIRED_FIELDS = ("transaction_id", "card_id", "merchant_id", "amount", "currency", "timestamp")
OPTIONAL_FIELDS = ("lat", "lon", "channel", "mcc")
EVENT_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS

TIMESTAMP = pa.timestamp("us", tz="UTC")
DAY_MS = 86_400_000  # a UTC day in epoch milliseconds, the unit of `Transaction.timestamp_ms`

TRANSACTIONS = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("channel", pa.string()),
        pa.field("mcc", pa.string()),
    ]
)

CARDS = pa.schema(
    [
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("home_lat", pa.float64()),
        pa.field("home_lon", pa.float64()),
        pa.field("account_open_date", pa.date32()),
    ]
)

MERCHANTS = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("mcc", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
    ]
)

CHARGEBACKS = pa.schema(
    [
        pa.field("chargeback_id", pa.string(), nullable=False),
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("amount", pa.float64()),
        pa.field("reported_at", TIMESTAMP, nullable=False),
        pa.field("reason", pa.string()),
    ]
)

INVESTIGATION_OUTCOMES = frozenset({"confirmed_fraud", "not_fraud", "inconclusive"})

INVESTIGATIONS = pa.schema(
    [
        pa.field("investigation_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("transaction_id", pa.string()),
        pa.field("opened_at", TIMESTAMP, nullable=False),
        pa.field("closed_at", TIMESTAMP),
        pa.field("outcome", pa.string()),
    ]
)

# Ground truth exists only for simulated data: it is what the simulator knows and a bank never does.
FRAUD_TRUTH = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("scenario", pa.string(), nullable=False),
    ]
)

# Decisions of the scoring flow with the feature vector that was served (feature logging): `features` holds
# the model's features in the order of `feature_names` (the served model's contract), NaN = missing.
DECISIONS = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("event_time", TIMESTAMP, nullable=False),
        pa.field("received_time", TIMESTAMP, nullable=False),
        pa.field("decision_time", TIMESTAMP, nullable=False),
        pa.field("feature_definition_version", pa.string(), nullable=False),
        pa.field("features", pa.list_(pa.float32()), nullable=False),
    ]
)

CONTEXT_TABLES: dict[str, pa.Schema] = {
    "cards": CARDS,
    "merchants": MERCHANTS,
    "chargebacks": CHARGEBACKS,
    "investigations": INVESTIGATIONS,
    "fraud_truth": FRAUD_TRUTH,
    "decisions": DECISIONS,
}


class InvalidTransaction(ValueError):
    """A transaction event that breaks the schema; the message names the field and what is wrong."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """One validated card transaction; `timestamp_ms` is epoch milliseconds in UTC."""

    transaction_id: str
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    timestamp_ms: int
    lat: float | None = None
    lon: float | None = None
    channel: str | None = None
    mcc: str | None = None


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _identifier(raw: Mapping[str, Any], field: str) -> str:
    value = raw.get(field)
    if _is_missing(value):
        raise InvalidTransaction(f"missing field '{field}'")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidTransaction(f"field '{field}' must be a string, got {type(value).__name__}")
    text = str(value)
    if not text.isprintable():
        position, character = next((i, c) for i, c in enumerate(text) if not c.isprintable())
        raise InvalidTransaction(
            f"field '{field}' must be printable text: character U+{ord(character):04X} at position {position}"
        )
    text = text.strip(" ")
    if not text or len(text) > MAX_ID_LENGTH:
        raise InvalidTransaction(f"field '{field}' must be 1 to {MAX_ID_LENGTH} characters")
    return text


def _number(raw: Mapping[str, Any], field: str) -> float:
    value = raw.get(field)
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise InvalidTransaction(
                f"field '{field}' must be a number (ASCII digits, optional sign and decimal point), "
                f"got {value!r:.40}"
            )
    elif isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise InvalidTransaction(f"field '{field}' must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise InvalidTransaction(f"field '{field}' must be finite, got {value!r:.40}")
    return number


def parse_timestamp_ms(value: Any, naive_zone: tzinfo | None = None) -> int:
    """Epoch milliseconds from ISO-8601 text with a zone, epoch milliseconds, or a timezone-aware datetime.

    `naive_zone` is the zone of a datetime or ISO-8601 text without one (the import's --timezone); without
    it such a value is refused."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            if naive_zone is None:
                raise InvalidTransaction("field 'timestamp' has no time zone")
            value = value.replace(tzinfo=naive_zone)
        millis = int(value.timestamp() * 1000)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidTransaction(f"field 'timestamp' must be finite, got {value!r}")
        millis = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text.isascii():
            raise InvalidTransaction(f"field 'timestamp' is not ISO-8601 or epoch ms: {text!r:.40}")
        if text.removeprefix("-").isdigit():
            millis = int(text)
        else:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise InvalidTransaction(
                    f"field 'timestamp' is not ISO-8601 or epoch ms: {text!r:.40}"
                ) from None
            if parsed.tzinfo is None:
                if naive_zone is None:
                    raise InvalidTransaction(f"field 'timestamp' has no time zone: {text!r:.40}")
                parsed = parsed.replace(tzinfo=naive_zone)
            millis = int(parsed.timestamp() * 1000)
    else:
        raise InvalidTransaction(f"field 'timestamp' must be ISO-8601 text or epoch ms, got {value!r:.40}")
    if not MIN_TIMESTAMP_MS <= millis < MAX_TIMESTAMP_MS:
        raise InvalidTransaction(f"field 'timestamp' is out of range ({TIMESTAMP_RANGE}): {value!r:.40}")
    return millis


def _coordinate(raw: Mapping[str, Any], field: str, limit: float) -> float | None:
    if _is_missing(raw.get(field)):
        return None
    number = _number(raw, field)
    if not -limit <= number <= limit:
        raise InvalidTransaction(f"field '{field}' must be within +-{limit:g}, got {number:g}")
    return number


def _plain_id(value: Any) -> bool:
    return (
        type(value) is str
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isprintable()
        and value[0] != " "
        and value[-1] != " "
    )


def _plain_number(value: Any, low: float, high: float) -> bool:
    return (type(value) is float or type(value) is int) and low <= value <= high  # NaN fails both comparisons


def _parse_plain(raw: dict[str, Any]) -> Transaction | None:
    """The stream's common case: every field already of its canonical type and form (epoch-ms timestamp,
    upper-case currency, lower-case channel, 4-digit mcc text). None sends the event to the full checks,
    which give the same result or the reason it is invalid."""
    get = raw.get
    amount, timestamp, currency = get("amount"), get("timestamp"), get("currency")
    lat, lon, channel, mcc = get("lat"), get("lon"), get("channel"), get("mcc")
    if not (
        _plain_id(get("transaction_id"))
        and _plain_id(get("card_id"))
        and _plain_id(get("merchant_id"))
        and _plain_number(amount, 0.0, MAX_AMOUNT)
        and type(timestamp) is int
        and MIN_TIMESTAMP_MS <= timestamp < MAX_TIMESTAMP_MS
        and currency in CURRENCIES
        and (channel is None or channel in CHANNELS)
        and (mcc is None or (type(mcc) is str and len(mcc) == 4 and mcc.isascii() and mcc.isdigit()))
        and (
            (lat is None and lon is None)
            or (_plain_number(lat, -90.0, 90.0) and _plain_number(lon, -180.0, 180.0))
        )
    ):
        return None
    return Transaction(
        raw["transaction_id"],
        raw["card_id"],
        raw["merchant_id"],
        float(amount),
        currency,
        timestamp,
        None if lat is None else float(lat),
        None if lon is None else float(lon),
        channel,
        mcc,
    )


def parse_transaction(raw: Mapping[str, Any], *, naive_zone: tzinfo | None = None) -> Transaction:
    """Validate one raw event (a decoded JSON object or a file row) into a Transaction.

    `naive_zone`: the zone of timestamps without one (see `parse_timestamp_ms`). Raises InvalidTransaction
    with a reason naming the offending field.
    """
    if type(raw) is dict:
        plain = _parse_plain(raw)
        if plain is not None:
            return plain
    if not isinstance(raw, Mapping):
        raise InvalidTransaction(f"event must be a JSON object, got {type(raw).__name__}")
    amount = _number(raw, "amount") if not _is_missing(raw.get("amount")) else None
    if amount is None:
        raise InvalidTransaction("missing field 'amount'")
    if amount < 0:
        raise InvalidTransaction(f"field 'amount' must be >= 0, got {amount:g}")
    if amount > MAX_AMOUNT:
        raise InvalidTransaction(f"field 'amount' exceeds {MAX_AMOUNT:g}, got {amount:g}")
    currency = raw.get("currency")
    if _is_missing(currency):
        raise InvalidTransaction("missing field 'currency'")
    if not isinstance(currency, str) or currency.strip().upper() not in CURRENCIES:
        raise InvalidTransaction(f"field 'currency' is not a known ISO 4217 code: {currency!r:.20}")
    if _is_missing(raw.get("timestamp")):
        raise InvalidTransaction("missing field 'timestamp'")
    lat = _coordinate(raw, "lat", 90.0)
    lon = _coordinate(raw, "lon", 180.0)
    if (lat is None) != (lon is None):
        raise InvalidTransaction("fields 'lat' and 'lon' must be given together")
    channel = raw.get("channel")
    if _is_missing(channel):
        channel = None
    elif not isinstance(channel, str) or channel.strip().lower() not in CHANNELS:
        raise InvalidTransaction(f"field 'channel' must be one of {sorted(CHANNELS)}, got {channel!r:.20}")
    else:
        channel = channel.strip().lower()
    mcc = raw.get("mcc")
    if _is_missing(mcc):
        mcc = None
    else:
        mcc = str(mcc).strip().zfill(4) if isinstance(mcc, int | str) and not isinstance(mcc, bool) else mcc
        if not isinstance(mcc, str) or not _MCC.match(mcc):
            raise InvalidTransaction(f"field 'mcc' must be a 4-digit merchant category code, got {mcc!r:.20}")
    return Transaction(
        transaction_id=_identifier(raw, "transaction_id"),
        card_id=_identifier(raw, "card_id"),
        merchant_id=_identifier(raw, "merchant_id"),
        amount=amount,
        currency=currency.strip().upper(),
        timestamp_ms=parse_timestamp_ms(raw.get("timestamp"), naive_zone),
        lat=lat,
        lon=lon,
        channel=channel,
        mcc=mcc,
    )
