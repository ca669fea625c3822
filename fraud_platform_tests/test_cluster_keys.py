"""Redis Cluster: every key of one card (real-time features, batch features of every generation) hashes to
one cluster slot, its bucket's (ENTITY_BUCKETS hash tags, so a batch is read with one MGET per bucket); the
same holds for a merchant's keys; the buckets spread over the slots and the transactions shards have tags
of their own. The decisions side (markers, decisions streams per shard) is in test_cluster.py."""

from hypothesis import assume, given
from hypothesis import strategies as st
from redis.crc import key_slot

from fraud_platform.lib.keys import (
    ENTITY_BUCKETS,
    card_batch_key,
    card_realtime_key,
    key_tag,
    merchant_batch_key,
    transactions_stream,
)
from fraud_platform.lib.schema import MAX_ID_LENGTH

GENERATIONS = ("20260101T000000", "20261231T235959-7f3a", "g")
ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=MAX_ID_LENGTH)


def _card_keys(card_id: str) -> list[str]:
    return [card_realtime_key(card_id), *(card_batch_key(generation, card_id) for generation in GENERATIONS)]


def _slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


def test_a_cards_keys_share_one_slot_and_cards_spread_over_the_buckets() -> None:
    (slot,) = _slots(_card_keys("c0000001"))
    assert slot == key_slot(key_tag(card_realtime_key("c0000001")).encode())  # the bucket's tag
    buckets = {key_tag(card_realtime_key(f"c{card:07d}")) for card in range(1_000)}
    assert len(buckets) == ENTITY_BUCKETS
    slots = {key_slot(bucket.encode()) for bucket in buckets}
    assert len(slots) == ENTITY_BUCKETS  # no two buckets in one slot
    thirds = [sum(low <= slot < low + 16_384 // 3 + 1 for slot in slots) for low in (0, 5_461, 10_922)]
    assert min(thirds) >= ENTITY_BUCKETS / 6  # an even three-master split gets a fair share of buckets
    shard_slots = {key_slot(transactions_stream(shard).encode()) for shard in range(4)}
    assert len(shard_slots) == 4


@given(ids)
def test_every_key_of_a_card_maps_to_one_slot(card_id: str) -> None:
    assert len(_slots(_card_keys(card_id))) == 1
    merchant_keys = [merchant_batch_key(generation, card_id) for generation in GENERATIONS]
    assert len(_slots(merchant_keys)) == 1


def test_braces_in_an_id_never_change_the_tag() -> None:
    for odd in ("}odd", "{x}", "{}", "a{b}c"):
        assert len(_slots(_card_keys(odd))) == 1
        assert key_tag(card_realtime_key(odd)).startswith("e")  # the bucket's tag comes first


@given(ids, ids)
def test_different_cards_never_share_a_key(first: str, second: str) -> None:
    assume(first != second)
    assert not set(_card_keys(first)) & set(_card_keys(second))
