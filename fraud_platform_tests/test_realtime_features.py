"""The real-time feature definition: hand-computed values, event-time semantics and the parity property."""

import copy
import math
import sys
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud_platform.features.packing import REALTIME_LAYOUT
from fraud_platform.features.realtime import (
    FEATURE_DEFINITION_VERSION,
    FEATURE_NAMES,
    FEATURES,
    LONGEST_WINDOW_SECONDS,
    CardState,
    DuplicateTransaction,
    FeatureRow,
    update,
)
from fraud_platform.lib.schema import Transaction

T0 = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000
KM_PER_DEGREE = 6371.0 * math.pi / 180  # great-circle km of one degree of longitude on the equator
NAN = math.nan


def txn(
    transaction_id: str,
    minutes: float,
    merchant: str = "m1",
    amount: float = 10.0,
    coords: tuple[float, float] | None = (0.0, 0.0),
    card: str = "c1",
) -> Transaction:
    lat, lon = coords if coords else (None, None)
    return Transaction(transaction_id, card, merchant, amount, "USD", T0 + int(minutes * MINUTE), lat, lon)


def run(
    events: list[Transaction], lateness_ms: int = 300_000
) -> tuple[dict[str, CardState], list[FeatureRow]]:
    """Feed events in the given (arrival) order; return the states and every emitted row."""
    states: dict[str, CardState] = {}
    rows: list[FeatureRow] = []
    for event in events:
        try:
            states[event.card_id], emitted = update(
                states.get(event.card_id), event, allowed_lateness_ms=lateness_ms
            )
        except DuplicateTransaction:
            continue
        rows.extend(emitted)
    return states, rows


def last_rows(rows: list[FeatureRow]) -> dict[str, tuple[float, ...]]:
    return {row.transaction_id: row.values for row in rows}


def offline(events: list[Transaction]) -> dict[str, tuple[float, ...]]:
    """The backfill's order: each card's events sorted by (timestamp, transaction_id)."""
    ordered = sorted(events, key=lambda event: (event.card_id, event.timestamp_ms, event.transaction_id))
    return last_rows(run(ordered)[1])


def same(left: tuple[float, ...], right: tuple[float, ...]) -> bool:
    return len(left) == len(right) and all(
        (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
        for a, b in zip(left, right, strict=True)
    )


def named(values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, values, strict=True))


def assert_features(values: tuple[float, ...], expected: dict[str, float]) -> None:
    actual = named(values)
    assert set(expected) == set(FEATURE_NAMES)
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[name]), f"{name}: {actual[name]} is not NaN"
        else:
            assert actual[name] == pytest.approx(value, abs=1e-9), name


def expected(
    counts: tuple[int, int, int],
    sums: tuple[float, float, float],
    amount_max: float,
    distinct: tuple[int, int],
    seconds: float,
    km: float,
    speed: float,
    same_merchant: int,
) -> dict[str, float]:
    return dict(
        zip(
            FEATURE_NAMES,
            (*counts, *sums, amount_max, *distinct, seconds, km, speed, same_merchant),
            strict=True,
        )
    )


def test_declarations_are_the_contract() -> None:
    assert FEATURE_NAMES == (
        "txn_count_10m",
        "txn_count_1h",
        "txn_count_24h",
        "amount_sum_10m",
        "amount_sum_1h",
        "amount_sum_24h",
        "amount_max_24h",
        "distinct_merchants_1h",
        "distinct_merchants_24h",
        "seconds_since_prev_txn",
        "km_from_prev_txn",
        "speed_kmh_from_prev_txn",
        "same_merchant_count_1h",
    )
    assert FEATURE_DEFINITION_VERSION == "rt-v1"
    assert {feature.entity for feature in FEATURES} == {"card"}
    assert {feature.window_seconds for feature in FEATURES} == {600, 3600, 86400, None}
    assert LONGEST_WINDOW_SECONDS == 86400
    assert all(feature.description and feature.dtype == "float64" for feature in FEATURES)


def test_every_feature_against_hand_computed_values() -> None:
    events = [
        txn("a1", 0, "m1", 10.0, (0.0, 0.0)),
        txn("a2", 5, "m2", 20.0, (0.0, 1.0)),
        txn("a3", 10, "m1", 30.0, None),  # e-commerce: no coordinates
        txn("a4", 10.5, "m1", 5.0, (0.0, 1.0)),
        txn("a5", 65, "m3", 100.0, (0.0, 1.0)),
        txn("a6", 24 * 60 + 5, "m1", 1.0, (0.0, 1.0)),
    ]
    rows = last_rows(run(events)[1])
    assert_features(rows["a1"], expected((1, 1, 1), (10, 10, 10), 10, (1, 1), NAN, NAN, NAN, 1))
    speed = KM_PER_DEGREE * 3600 / 300
    assert_features(rows["a2"], expected((2, 2, 2), (30, 30, 30), 20, (2, 2), 300, KM_PER_DEGREE, speed, 1))
    # a1 is exactly 10 minutes before a3: the window (t - 10 min, t] leaves it out.
    assert_features(rows["a3"], expected((2, 3, 3), (50, 60, 60), 30, (2, 2), 300, NAN, NAN, 2))
    # The previous transaction (a3) has no coordinates: km and speed are NaN, not an error.
    assert_features(rows["a4"], expected((3, 4, 4), (55, 65, 65), 30, (2, 2), 30, NAN, NAN, 3))
    # a2 is exactly one hour before a5: out of the hour window.
    assert_features(rows["a5"], expected((1, 3, 5), (100, 135, 165), 100, (2, 3), 3270, 0, 0, 1))
    # a2 is exactly 24 hours before a6: out of the day window, and so is a1.
    assert_features(rows["a6"], expected((1, 1, 4), (1, 1, 136), 100, (1, 2), 82_800, 0, 0, 1))


def test_speed_divides_by_at_least_a_minute() -> None:
    rows = last_rows(run([txn("a", 0, coords=(0.0, 0.0)), txn("b", 0.25, coords=(0.0, 1.0))])[1])
    values = named(rows["b"])
    assert values["seconds_since_prev_txn"] == 15
    assert values["km_from_prev_txn"] == pytest.approx(KM_PER_DEGREE)
    assert values["speed_kmh_from_prev_txn"] == pytest.approx(KM_PER_DEGREE * 60)


def test_ties_are_ordered_by_transaction_id() -> None:
    # Same timestamp: "a" comes before "b" whatever the arrival order, and is b's previous transaction.
    states, rows = run([txn("b", 0, amount=2.0, coords=(0.0, 1.0)), txn("a", 0, amount=1.0)])
    assert [(row.transaction_id, row.correction) for row in rows] == [("b", False), ("a", False), ("b", True)]
    final = last_rows(rows)
    assert named(final["a"])["txn_count_10m"] == 1
    assert math.isnan(named(final["a"])["seconds_since_prev_txn"])
    b = named(final["b"])
    assert (b["txn_count_10m"], b["amount_sum_10m"], b["seconds_since_prev_txn"]) == (2, 3.0, 0.0)
    assert b["speed_kmh_from_prev_txn"] == pytest.approx(KM_PER_DEGREE * 60)
    assert states["c1"].ids == ["a", "b"]


def test_a_late_event_is_served_at_arrival_then_later_events_are_corrected() -> None:
    events = [txn("a1", 0, amount=10.0), txn("a3", 10, amount=30.0), txn("a2", 5, amount=20.0)]
    _, rows = run(events)
    assert [(row.transaction_id, row.correction, row.latest) for row in rows] == [
        ("a1", False, True),
        ("a3", False, True),
        ("a2", False, False),  # served: only a1 is before it
        ("a3", True, True),  # corrected: a2 is now in its windows and is its previous transaction
    ]
    served_a3 = named(rows[1].values)
    corrected_a3 = named(rows[3].values)
    assert (served_a3["txn_count_1h"], corrected_a3["txn_count_1h"]) == (2, 3)
    assert (served_a3["seconds_since_prev_txn"], corrected_a3["seconds_since_prev_txn"]) == (600, 300)
    assert named(rows[2].values)["txn_count_1h"] == 2
    assert last_rows(rows).keys() == offline(events).keys()
    assert all(same(last_rows(rows)[key], offline(events)[key]) for key in offline(events))


def test_eviction_keeps_what_a_late_event_within_the_lateness_needs() -> None:
    # "late" arrives after "new", 30 min behind it (lateness 1 h); its 24 h window still holds a0 and a1,
    # which are more than 24 h older than "new".
    events = [txn("a0", 0.5), txn("a1", 1), txn("b", 1420), txn("new", 1470), txn("late", 1440)]
    _, rows = run(events, lateness_ms=3_600_000)
    assert named(last_rows(rows)["late"])["txn_count_24h"] == 4
    assert all(same(last_rows(rows)[key], values) for key, values in offline(events).items())


def test_a_duplicate_is_refused_and_changes_nothing() -> None:
    state, _ = update(None, txn("a", 0))
    state, _ = update(state, txn("b", 1))
    before = copy.deepcopy(state)
    with pytest.raises(DuplicateTransaction, match="'a'"):
        update(state, txn("a", 0))
    with pytest.raises(DuplicateTransaction):  # the id decides, not the payload
        update(state, txn("b", 7, amount=99.0))
    assert state == before


def test_state_is_bounded_and_keeps_the_previous_transaction() -> None:
    day = 24 * 60
    events = [txn(f"t{index}", index * 3 * 60) for index in range(40)]  # every 3 hours for 5 days
    events.append(txn("late-gap", 39 * 3 * 60 + 3 * day))  # three quiet days later
    states, rows = run(events, lateness_ms=300_000)
    state = states["c1"]
    # 24 h + 5 min of history, plus the one event before it (the next event's previous transaction).
    assert len(state) == 2
    assert state.ids == ["t39", "late-gap"]
    values = named(rows[-1].values)
    assert values["seconds_since_prev_txn"] == 3 * 86_400
    assert values["txn_count_24h"] == 1
    window_state, _ = run(events[:40], lateness_ms=300_000)
    # t31..t39 are within 24 h + 5 min of t39; t30 stays as t31's previous transaction.
    assert window_state["c1"].ids == [f"t{index}" for index in range(30, 40)]


def test_an_event_later_than_the_allowed_lateness_is_still_counted() -> None:
    events = [txn("old", 0), txn("new", 2 * 24 * 60), txn("very-late", 60)]
    states, rows = run(events, lateness_ms=0)
    very_late = [row for row in rows if row.transaction_id == "very-late"]
    assert len(very_late) == 1 and not very_late[0].latest
    # Nothing silently dropped: it is in the state until evicted, and the newest event keeps its row.
    assert "very-late" in states["c1"].ids
    assert [row.transaction_id for row in rows if row.latest][-1] == "new"


def test_cards_are_independent_and_states_copy_deeply() -> None:
    states, rows = run([txn("a", 0, card="c1"), txn("b", 1, card="c2"), txn("c", 2, card="c1")])
    assert named(last_rows(rows)["b"])["txn_count_10m"] == 1
    assert named(last_rows(rows)["c"])["txn_count_10m"] == 2
    copied = copy.deepcopy(states["c1"])
    update(states["c1"], txn("d", 3))
    assert copied.ids == ["a", "c"] and states["c1"].ids == ["a", "c", "d"]


def test_a_packed_state_unpacks_to_the_same_state_with_missing_coordinates_and_any_ids() -> None:
    states, _ = run([txn("a\u00e9", 0, merchant="m-\u00fc", coords=None), txn("b\x00", 1, amount=0.0)])
    packed = states["c1"].pack()
    unpacked = CardState.unpack(packed)
    assert unpacked.ids == ["a\u00e9", "b\x00"] and unpacked.amounts == [10.0, 0.0]
    assert math.isnan(unpacked.lats[0]) and unpacked.lons[1] == 0.0
    assert unpacked.merchants[0] is sys.intern("m-\u00fc")  # shared with every other card again
    assert (unpacked.card_id, unpacked.times, unpacked.merchants) == (
        "c1",
        states["c1"].times,
        states["c1"].merchants,
    )


# ------------------------------------------------------------------ parity under reordering (property)

GAPS_MS = (0, 1, 1_000, 30_000, 600_000, 3_600_000, 7_000_000, 85_000_000, 86_400_000, 90_000_000)
COORDS = (None, (40.7, -74.0), (34.05, -118.24), (51.5, -0.12))


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Transaction], int]:
    """A stream of 1-3 cards with ties, bursts and window-boundary gaps, exact duplicates, and an arrival
    order where every event is at most `lateness` behind the newest event of its card seen before it."""
    lateness = draw(st.sampled_from([0, 1_000, 300_000, 7_200_000]))
    count = draw(st.integers(1, 40))
    ids = draw(st.permutations([f"t{index:02d}" for index in range(count)]))  # id order != time order
    events: list[Transaction] = []
    times = {"c1": T0, "c2": T0, "c3": T0}
    for transaction_id in ids:
        card = draw(st.sampled_from(["c1", "c2", "c3"]))
        times[card] += draw(st.sampled_from(GAPS_MS))
        coords = draw(st.sampled_from(COORDS))
        lat, lon = coords if coords else (None, None)
        amount = draw(st.sampled_from([0.01, 1.0, 9.99, 250.0, 4999.5]))
        merchant = draw(st.sampled_from(["m1", "m2", "m3"]))
        events.append(Transaction(transaction_id, card, merchant, amount, "USD", times[card], lat, lon))
    events += draw(st.lists(st.sampled_from(events), max_size=5))  # retransmissions: exact copies
    delays = draw(st.lists(st.integers(0, lateness), min_size=len(events), max_size=len(events)))
    order = sorted(range(len(events)), key=lambda index: (events[index].timestamp_ms + delays[index], index))
    return [events[index] for index in order], lateness


@settings(max_examples=300, deadline=None)
@given(arrivals())
def test_last_row_per_transaction_equals_the_backfill_for_any_reordering_within_lateness(
    stream: tuple[list[Transaction], int],
) -> None:
    events, lateness = stream
    states, rows = run(events, lateness_ms=lateness)
    flow, backfilled = last_rows(rows), offline(events)
    assert flow.keys() == backfilled.keys()
    for transaction_id, values in backfilled.items():
        assert same(flow[transaction_id], values), (
            transaction_id,
            named(flow[transaction_id]),
            named(values),
        )
    # The rows flagged `latest` end on each card's newest event, as the online store needs.
    newest = {card: state.ids[-1] for card, state in states.items()}
    latest = {row.card_id: row.transaction_id for row in rows if row.latest}
    assert latest == newest


def test_packed_vectors_are_numpy_float64_little_endian_in_feature_order() -> None:
    values = (*(float(index) for index in range(len(FEATURE_NAMES) - 1)), NAN)
    packed = REALTIME_LAYOUT.pack(values)
    assert packed == np.asarray(values, "<f8").tobytes()
    assert REALTIME_LAYOUT.size == 8 * len(FEATURE_NAMES) == len(packed)
    unpacked = REALTIME_LAYOUT.unpack(packed)
    assert unpacked[:-1].tolist() == list(values[:-1]) and math.isnan(unpacked[-1])
    with pytest.raises(ValueError, match=f"expected {8 * len(FEATURE_NAMES)}"):
        REALTIME_LAYOUT.unpack(packed[:-8])
