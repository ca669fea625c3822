"""Redis Cluster: every key of one card (real-time features, batch features of every generation) hashes to
one cluster slot, so a card's reads and writes never cross slots; the same holds for a merchant's keys.

What is not per card (docs/scale-out.md): the decisions script's markers `decided:<transaction_id>` and the
decisions stream, the dead-letter stream, the transactions shards and the batch-generation pointer each
hash to their own slot."""

from hypothesis import assume, given
from hypothesis import strategies as st
from redis.crc import key_slot

from fraud_platform.lib.keys import card_batch_key, card_realtime_key, merchant_batch_key
from fraud_platform.lib.schema import MAX_ID_LENGTH

GENERATIONS = ("20260101T000000", "20261231T235959-7f3a", "g")
ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=MAX_ID_LENGTH)


def _card_keys(card_id: str) -> list[str]:
    return [card_realtime_key(card_id), *(card_batch_key(generation, card_id) for generation in GENERATIONS)]


def _slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


def test_a_cards_keys_share_one_slot_and_cards_spread_over_the_slots() -> None:
    assert _slots(_card_keys("c0000001")) == {key_slot(b"c0000001")}  # the hash tag is the card id
    assert len({slot for card in range(1_000) for slot in _slots(_card_keys(f"c{card:07d}"))}) > 900


@given(ids)
def test_every_key_of_a_card_maps_to_one_slot(card_id: str) -> None:
    assert len(_slots(_card_keys(card_id))) == 1
    merchant_keys = [merchant_batch_key(generation, card_id) for generation in GENERATIONS]
    assert len(_slots(merchant_keys)) == 1


def test_an_id_starting_with_a_closing_brace_keeps_one_slot_and_its_own_keys() -> None:
    assert len(_slots(_card_keys("}odd"))) == 1  # `{}odd}` would be an empty tag: the whole key hashed


@given(ids, ids)
def test_different_cards_never_share_a_key(first: str, second: str) -> None:
    assume(first != second)
    assert not set(_card_keys(first)) & set(_card_keys(second))
