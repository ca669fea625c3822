"""Every Redis key and stream name the platform uses, in one place.

Keys that belong to a card or a merchant carry the hash tag of its bucket (`{e<0..63>}`, a stable hash of the
id): on Redis Cluster everything of one card lives in one slot, and a batch of a thousand cards and merchants
is read with one MGET per bucket (at most 64 commands, one pipeline per node) instead of a GET per key; the
64 buckets spread over the nodes, and a resharding moves whole buckets. Each shard of
the transactions stream carries its shard number as its tag (`stream:transactions:{3}`): the shards spread
over a cluster's nodes, and the keys that must live beside a shard on a cluster (the decisions, markers and
API waiters of its cards, `scoring.decisions`) carry the same tag (`shard_tag`).
"""

import zlib

TRANSACTIONS_STREAM_PREFIX = "stream:transactions"
DEAD_LETTER_STREAM = "stream:dead-letter"
DECISIONS_STREAM = "stream:decisions"
BATCH_GENERATION_KEY = "batch:current-generation"
ENTITY_BUCKETS = 64  # hash-tag buckets of card and merchant keys (Redis Cluster: MGET per bucket)


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
    """The id after its bucket's hash tag, `{e<bucket>}:id`: the tag comes first, so no character of the id
    can open or close it."""
    return f"{{e{zlib.crc32(entity_id.encode()) % ENTITY_BUCKETS}}}:{entity_id}"


def key_tag(key: str) -> str:
    """The hash tag of a key (what Redis Cluster hashes): the text between its first '{' and the next '}',
    or "" when there is none or it is empty (then the whole key is hashed)."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else ""


def card_realtime_key(card_id: str) -> str:
    """Packed real-time window features of a card, written by the stream."""
    return f"rt:{_tagged(card_id)}"


def card_batch_key(generation: str, card_id: str) -> str:
    """Packed batch features of a card in one materialisation generation."""
    return f"batch:{generation}:card:{_tagged(card_id)}"


def merchant_batch_key(generation: str, merchant_id: str) -> str:
    """Packed batch features of a merchant in one materialisation generation."""
    return f"batch:{generation}:merchant:{_tagged(merchant_id)}"
