"""Every Redis key and stream name the platform uses, in one place.

Keys that belong to a card carry the card id as a hash tag (`{card_id}`), so on Redis Cluster everything of
one card lives in one slot and a per-card pipeline never crosses slots (merchants likewise). Each shard of
the transactions stream carries its shard number as its tag (`stream:transactions:{3}`): the shards spread
over a cluster's nodes, and the keys that must live beside a shard on a cluster (the decisions, markers and
API waiters of its cards, `scoring.decisions`) carry the same tag (`shard_tag`).
"""

import zlib

TRANSACTIONS_STREAM_PREFIX = "stream:transactions"
DEAD_LETTER_STREAM = "stream:dead-letter"
DECISIONS_STREAM = "stream:decisions"
BATCH_GENERATION_KEY = "batch:current-generation"


def shard_of(card_id: str, shards: int) -> int:
    """The transaction-stream shard of a card: a stable hash, the same in every process and language."""
    return zlib.crc32(card_id.encode()) % shards


def shard_tag(shard: int) -> str:
    """The hash tag of one shard of the transactions stream, `{<shard>}`."""
    return f"{{{shard}}}"


def transactions_stream(shard: int) -> str:
    """Name of one shard of the transactions stream, tagged with the shard (its own cluster slot)."""
    return f"{TRANSACTIONS_STREAM_PREFIX}:{shard_tag(shard)}"


def _tagged(entity_id: str) -> str:
    """The id as the key's hash tag, `{id}`.

    An id starting with '}' would close the tag at once, and an empty tag hashes the whole key (a card's keys
    would scatter): such an id is written `#{!}id` instead, tag "!", which no `{id}` form can equal.
    """
    return f"#{{!}}{entity_id}" if entity_id.startswith("}") else f"{{{entity_id}}}"


def card_realtime_key(card_id: str) -> str:
    """Packed real-time window features of a card, written by the stream."""
    return f"rt:{_tagged(card_id)}"


def card_batch_key(generation: str, card_id: str) -> str:
    """Packed batch features of a card in one materialisation generation."""
    return f"batch:{generation}:card:{_tagged(card_id)}"


def merchant_batch_key(generation: str, merchant_id: str) -> str:
    """Packed batch features of a merchant in one materialisation generation."""
    return f"batch:{generation}:merchant:{_tagged(merchant_id)}"
