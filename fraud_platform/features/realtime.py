"""Real-time per-card window features: declared once as data, computed by one incremental state update.

`update(state, txn)` is the only implementation. The Bytewax flow calls it as events arrive; the offline
backfill (`fraud_platform.features.backfill`) calls it over history sorted by event time. Plain Python: no
Dagster, no Bytewax.

Semantics (also in docs/architecture.md, "Real-time features"):

* Events of a card are totally ordered by `(timestamp_ms, transaction_id)` (same timestamp: smaller id
  first). A transaction's window of `w` seconds holds the card's events up to and including it in that
  order whose timestamp is after `t - w`: the window is `(t - w, t]` and includes the transaction itself.
* "Previous transaction" is the event just before it in that order (same timestamp and smaller id: 0 s
  ago). Seconds, km and speed from it are NaN when there is none, km and speed also when either side has no
  coordinates. Speed divides by at least `MIN_SPEED_SECONDS` so bursts do not divide by zero.
* State is bounded: events older than (card's newest event time - longest window - allowed lateness) are
  evicted, except the newest of them, which stays as the previous transaction of the next one.
* A late event (before the card's newest) is inserted in its place. Its own row is computed from the events
  before it ("served" at arrival); every later event whose features it changes (the next one, and those
  less than the longest window after it) gets a corrected row. So the last row per transaction equals the
  backfill's row for any arrival order within the allowed lateness.
* A transaction_id already held in the card's state raises `DuplicateTransaction` and changes nothing.
"""

from __future__ import annotations

import marshal
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from sys import intern
from typing import NamedTuple, Protocol

from fraud_platform.config import DEFAULT_ALLOWED_LATENESS_SECONDS

FEATURE_DEFINITION_VERSION = "rt-v1"
ENTITY = "card"
# Speed from the previous transaction divides by at least this many seconds.
MIN_SPEED_SECONDS = 60.0
EARTH_RADIUS_KM = 6371.0

_TEN_MINUTES = 600
_HOUR = 3_600
_DAY = 86_400


@dataclass(frozen=True)
class Feature:
    """One feature's declaration: what it is, of which entity, its type and window (None: not a window)."""

    name: str
    entity: str
    dtype: str
    window_seconds: int | None
    description: str


def _feature(name: str, window_seconds: int | None, description: str) -> Feature:
    return Feature(name, ENTITY, "float64", window_seconds, description)


# The order is the contract: packed vectors in Redis, backfill columns and models all follow it.
FEATURES: tuple[Feature, ...] = (
    _feature(
        "txn_count_10m", _TEN_MINUTES, "Transactions of the card in the last 10 minutes, this one included."
    ),
    _feature("txn_count_1h", _HOUR, "Transactions of the card in the last hour, this one included."),
    _feature("txn_count_24h", _DAY, "Transactions of the card in the last 24 hours, this one included."),
    _feature("amount_sum_10m", _TEN_MINUTES, "Sum of amounts in the last 10 minutes, this one included."),
    _feature("amount_sum_1h", _HOUR, "Sum of amounts in the last hour, this one included."),
    _feature("amount_sum_24h", _DAY, "Sum of amounts in the last 24 hours, this one included."),
    _feature("amount_max_24h", _DAY, "Largest amount in the last 24 hours, this one included."),
    _feature("distinct_merchants_1h", _HOUR, "Distinct merchants in the last hour, this one included."),
    _feature("distinct_merchants_24h", _DAY, "Distinct merchants in the last 24 hours, this one included."),
    _feature("seconds_since_prev_txn", None, "Seconds since the previous transaction; NaN if none."),
    _feature(
        "km_from_prev_txn", None, "Great-circle km from the previous transaction; NaN without coordinates."
    ),
    _feature(
        "speed_kmh_from_prev_txn",
        None,
        f"km from the previous transaction per hour elapsed (at least {MIN_SPEED_SECONDS:g} s); NaN without km.",
    ),
    _feature(
        "same_merchant_count_1h", _HOUR, "Transactions at this merchant in the last hour, this one included."
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(feature.name for feature in FEATURES)
LONGEST_WINDOW_SECONDS = max(feature.window_seconds or 0 for feature in FEATURES)

_TEN_MINUTES_MS = _TEN_MINUTES * 1000
_HOUR_MS = _HOUR * 1000
_DAY_MS = _DAY * 1000
_LONGEST_MS = LONGEST_WINDOW_SECONDS * 1000
_NAN = math.nan
_RADIAN = math.pi / 180.0
_HALF_RADIAN = _RADIAN / 2.0
_sin, _cos, _asin, _sqrt = math.sin, math.cos, math.asin, math.sqrt


class TransactionLike(Protocol):
    """What the update reads of a transaction (`fraud_platform.lib.schema.Transaction` fits)."""

    @property
    def transaction_id(self) -> str: ...
    @property
    def card_id(self) -> str: ...
    @property
    def merchant_id(self) -> str: ...
    @property
    def amount(self) -> float: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def lat(self) -> float | None: ...
    @property
    def lon(self) -> float | None: ...


class DuplicateTransaction(ValueError):
    """The card's state already holds this transaction_id: it is not counted again."""


class FeatureRow(NamedTuple):
    """Feature values of one transaction, in `FEATURE_NAMES` order.

    `correction` marks a row re-emitted for an earlier transaction after a late event changed its
    features; `latest` marks the row of the card's newest event (the one the online store keeps).
    """

    transaction_id: str
    card_id: str
    timestamp_ms: int
    values: tuple[float, ...]
    correction: bool
    latest: bool


@dataclass(slots=True)
class CardState:
    """A card's recent events as parallel lists sorted by (timestamp_ms, transaction_id).

    Coordinates are NaN when the event had none; merchant ids are interned (shared between cards). Lists
    of immutable values pack cheaply (`pack`), which matters: the flow snapshots states as packed bytes.
    """

    card_id: str
    times: list[int]
    ids: list[str]
    amounts: list[float]
    merchants: list[str]
    lats: list[float]
    lons: list[float]

    @classmethod
    def empty(cls, card_id: str) -> CardState:
        """The state of a card never seen before."""
        return cls(card_id, [], [], [], [], [], [])

    def __len__(self) -> int:
        return len(self.times)

    def pack(self) -> bytes:
        """The state as bytes (marshal: half the size and the time of pickling it), a recovery snapshot;
        marshal's format is the interpreter's own, so a snapshot is resumed by the same Python version."""
        return marshal.dumps(
            (self.card_id, self.times, self.ids, self.amounts, self.merchants, self.lats, self.lons)
        )

    @classmethod
    def unpack(cls, packed: bytes) -> CardState:
        """The state `pack` wrote, its merchant ids interned again."""
        card_id, times, ids, amounts, merchants, lats, lons = marshal.loads(packed)
        return cls(card_id, times, ids, amounts, [intern(merchant) for merchant in merchants], lats, lons)


def update(
    state: CardState | None,
    txn: TransactionLike,
    *,
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_SECONDS * 1000,
) -> tuple[CardState, list[FeatureRow]]:
    """Add one transaction to its card's state; return the state and the rows to emit.

    The first row is the transaction's own (served) row; any further rows are corrections of later events
    of the card. Raises DuplicateTransaction (state unchanged) when the transaction_id is already held.
    """
    if state is None:
        state = CardState.empty(txn.card_id)
    transaction_id = txn.transaction_id
    if transaction_id in state.ids:
        raise DuplicateTransaction(
            f"transaction {transaction_id!r} of card {state.card_id!r} already counted"
        )
    time = txn.timestamp_ms
    times = state.times
    _evict(state, max(time, times[-1]) if times else time, allowed_lateness_ms)
    count = len(times)
    ids = state.ids
    lat = _NAN if txn.lat is None else txn.lat
    lon = _NAN if txn.lon is None else txn.lon
    if not count or time > times[-1] or (time == times[-1] and transaction_id > ids[-1]):
        position = count
        times.append(time)
        ids.append(transaction_id)
        state.amounts.append(txn.amount)
        state.merchants.append(intern(txn.merchant_id))
        state.lats.append(lat)
        state.lons.append(lon)
        return state, [FeatureRow(transaction_id, state.card_id, time, _values(state, position), False, True)]

    low = bisect_left(times, time)
    position = bisect_left(ids, transaction_id, low, bisect_right(times, time, low))
    times.insert(position, time)
    ids.insert(position, transaction_id)
    state.amounts.insert(position, txn.amount)
    state.merchants.insert(position, intern(txn.merchant_id))
    state.lats.insert(position, lat)
    state.lons.insert(position, lon)
    last = count  # index of the newest event after the insert
    rows = [
        FeatureRow(transaction_id, state.card_id, time, _values(state, position), False, position == last)
    ]
    # Later events whose features the late one changes: the next one (its previous transaction) and every
    # one less than the longest window after it.
    stop = max(bisect_left(times, time + _LONGEST_MS, position + 1), position + 2)
    for later in range(position + 1, min(stop, last + 1)):
        rows.append(
            FeatureRow(ids[later], state.card_id, times[later], _values(state, later), True, later == last)
        )
    return state, rows


def _evict(state: CardState, newest: int, allowed_lateness_ms: int) -> None:
    """Drop events before the horizon, keeping the newest of them as the next event's previous one."""
    times = state.times
    horizon = newest - _LONGEST_MS - allowed_lateness_ms
    if len(times) > 1 and times[1] < horizon:
        cut = bisect_left(times, horizon) - 1
        del times[:cut]
        del state.ids[:cut]
        del state.amounts[:cut]
        del state.merchants[:cut]
        del state.lats[:cut]
        del state.lons[:cut]


def _values(state: CardState, position: int) -> tuple[float, ...]:
    """The features of the event at `position`, from the events up to and including it."""
    times = state.times
    time = times[position]
    end = position + 1
    day = bisect_right(times, time - _DAY_MS, 0, end)
    hour = bisect_right(times, time - _HOUR_MS, day, end)
    ten_minutes = bisect_right(times, time - _TEN_MINUTES_MS, hour, end)
    amounts = state.amounts
    day_amounts = amounts[day:end]
    merchants = state.merchants
    hour_merchants = merchants[hour:end]
    if position:
        previous = position - 1
        seconds = (time - times[previous]) / 1000.0
        km = _haversine_km(
            state.lats[previous], state.lons[previous], state.lats[position], state.lons[position]
        )
        speed = km * 3600.0 / (seconds if seconds > MIN_SPEED_SECONDS else MIN_SPEED_SECONDS)
    else:
        seconds = km = speed = _NAN
    return (
        float(end - ten_minutes),
        float(end - hour),
        float(end - day),
        sum(amounts[ten_minutes:end]),
        sum(amounts[hour:end]),
        sum(day_amounts),
        max(day_amounts),
        float(len(set(hour_merchants))),
        float(len(set(merchants[day:end]))),
        seconds,
        km,
        speed,
        float(hour_merchants.count(merchants[position])),
    )


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance; NaN when either side has no coordinates (NaN)."""
    if lat1 != lat1 or lat2 != lat2:  # NaN: the only value unequal to itself
        return _NAN
    a = (
        _sin((lat2 - lat1) * _HALF_RADIAN) ** 2
        + _cos(lat1 * _RADIAN) * _cos(lat2 * _RADIAN) * _sin((lon2 - lon1) * _HALF_RADIAN) ** 2
    )
    return 2.0 * EARTH_RADIUS_KM * _asin(_sqrt(a if a < 1.0 else 1.0))
