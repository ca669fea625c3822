"""Every Redis key and stream name the platform uses, in one place.

Keys that belong to a card carry the card id as a hash tag (`{card_id}`), so on Redis Cluster everything of
one card lives in one slot and a per-card pipeline never crosses slots.
"""

import zlib

TRANSACTIONS_STREAM_PREFIX = "stream:transactions"
DEAD_LETTER_STREAM = "stream:dead-letter"
DECISIONS_STREAM = "stream:decisions"
BATCH_GENERATION_KEY = "batch:current-generation"


def shard_of(card_id: str, shards: int) -> int:
    """The transaction-stream shard of a card: a stable hash, the same in every process and language."""
    return zlib.crc32(card_id.encode()) % shards


def transactions_stream(shard: int) -> str:
    """Name of one shard of the transactions stream."""
    return f"{TRANSACTIONS_STREAM_PREFIX}:{shard}"


def card_realtime_key(card_id: str) -> str:
    """Packed real-time window features of a card, written by the stream."""
    return f"rt:{{{card_id}}}"


def card_batch_key(generation: str, card_id: str) -> str:
    """Packed batch features of a card in one materialisation generation."""
    return f"batch:{generation}:card:{{{card_id}}}"


def merchant_batch_key(generation: str, merchant_id: str) -> str:
    """Packed batch features of a merchant in one materialisation generation."""
    return f"batch:{generation}:merchant:{{{merchant_id}}}"
