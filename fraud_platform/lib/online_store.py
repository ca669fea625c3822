"""The online store of batch features in Redis: atomic loads by generation, and fast reads for the stream.

Each load writes every card's and merchant's latest snapshot as one packed value per entity (float64,
little-endian, in the order of CARD_BATCH_FEATURES / MERCHANT_BATCH_FEATURES) under a new *generation*, then
switches the generation pointer with one SET. Readers fetch the pointer in the same pipeline as the values
and retry when it moved, so a reader sees one whole load: never half of one, never old and new mixed. The
previous generation is deleted after a grace period; every key also carries a TTL as a safety net.

A card or merchant with no snapshot reads as NaN in every feature (an explicit default, never an exception):
XGBoost treats NaN as missing, exactly as the training join does for a card without a snapshot.

On Redis Cluster (a `RedisCluster` client) the keys of a batch lie in many slots: they are grouped by their
hash tag (`keys.key_tag`, a bucket of cards and merchants) and written with one MSETEX and read with one
MGET per group, in one pipeline that the client splits per node (all nodes in one round trip).
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, TryAgainError

from fraud_platform.features.batch import CARD_BATCH_FEATURES, MERCHANT_BATCH_FEATURES
from fraud_platform.lib.keys import BATCH_GENERATION_KEY, card_batch_key, key_tag, merchant_batch_key

_DTYPE = np.dtype("<f8")


def pack_rows(matrix: np.ndarray) -> list[bytes]:
    """One packed value per row of a float matrix."""
    packed = np.ascontiguousarray(matrix, dtype=_DTYPE)
    width = packed.shape[1] * _DTYPE.itemsize
    buffer = packed.tobytes()
    return [buffer[start : start + width] for start in range(0, len(buffer), width)]


def unpack_rows(values: Sequence[bytes | None], width: int) -> np.ndarray:
    """A float matrix from packed values; a missing or malformed value becomes a row of NaN."""
    matrix = np.full((len(values), width), np.nan, dtype=_DTYPE)
    expected = width * _DTYPE.itemsize
    present = [row for row, value in enumerate(values) if value is not None and len(value) == expected]
    if present:  # one buffer for every present row: a numpy call per batch, not per row
        packed = b"".join([values[row] for row in present])  # type: ignore[misc]
        matrix[present] = np.frombuffer(packed, dtype=_DTYPE).reshape(len(present), width)
    return matrix


@dataclass(frozen=True)
class LoadReport:
    """What one load of batch features wrote."""

    generation: str
    previous_generation: str | None
    cards: int
    merchants: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        """Entities written per second."""
        return (self.cards + self.merchants) / self.seconds if self.seconds else float("inf")


def _msetex_unsupported(error: redis.ResponseError) -> bool:
    message = str(error).lower()
    return "unknown command" in message or "crossslot" in message


def write_with_ttl(
    client: redis.Redis | RedisCluster,
    keys: Sequence[str],
    values: Sequence[bytes],
    ttl_seconds: int,
    chunk: int = 1_000,
) -> None:
    """Write key/value pairs with a TTL: MSETEX per chunk (Valkey 9.1+, Redis 8.4+), one round trip per
    chunk; on a server without MSETEX, pipelined SET ... EX. On Redis Cluster the same per group of keys
    with one hash tag (`by_tag`), one pipeline per chunk. Whether the server takes MSETEX is remembered per
    client."""
    use_msetex = not getattr(client, "_fraud_platform_no_msetex", False)
    if isinstance(client, RedisCluster):
        _write_by_tag(client, keys, values, ttl_seconds, chunk, use_msetex)
        return
    pipeline = client.pipeline(transaction=False)
    for start in range(0, len(keys), chunk):
        pairs = [
            item
            for pair in zip(keys[start : start + chunk], values[start : start + chunk], strict=True)
            for item in pair
        ]
        if use_msetex:
            try:
                client.execute_command("MSETEX", len(pairs) // 2, *pairs, "EX", ttl_seconds)
                continue
            except redis.ResponseError as error:
                if not _msetex_unsupported(error):
                    raise
                use_msetex = False
                client._fraud_platform_no_msetex = True  # type: ignore[attr-defined]
        for key, value in zip(pairs[::2], pairs[1::2], strict=True):
            pipeline.set(key, value, ex=ttl_seconds)
        pipeline.execute()


def by_tag(keys: Sequence[str]) -> list[list[int]]:
    """The positions of `keys` grouped by hash tag (a key without a tag alone): each group is one slot."""
    groups: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key_tag(key) or key, []).append(position)
    return list(groups.values())


def _write_by_tag(
    client: RedisCluster,
    keys: Sequence[str],
    values: Sequence[bytes],
    ttl_seconds: int,
    chunk: int,
    use_msetex: bool,
) -> None:
    """MSETEX per hash tag, one pipeline per node (redis-py's cluster pipeline would ask the server for the
    keys of every MSETEX: a round trip each). On a redirection (a resharding) or a server without MSETEX,
    the chunk goes through the cluster pipeline as SET ... EX per key, which follows redirections."""
    for start in range(0, len(keys), chunk):
        chunk_keys, chunk_values = keys[start : start + chunk], values[start : start + chunk]
        if use_msetex:
            try:
                _msetex_per_node(client, chunk_keys, chunk_values, ttl_seconds)
                continue
            except redis.ResponseError as error:
                moved = isinstance(error, (AskError, TryAgainError))  # MovedError is an AskError
                if not (moved or _msetex_unsupported(error)):
                    raise
                if not moved:
                    use_msetex = False
                    client._fraud_platform_no_msetex = True  # type: ignore[attr-defined]
        pipeline = client.pipeline(transaction=False)
        for key, value in zip(chunk_keys, chunk_values, strict=True):
            pipeline.set(key, value, ex=ttl_seconds)
        pipeline.execute()


def _msetex_per_node(
    client: RedisCluster, keys: Sequence[str], values: Sequence[bytes], ttl_seconds: int
) -> None:
    pipelines: dict[str, redis.client.Pipeline] = {}
    for group in by_tag(keys):
        node = client.get_node_from_key(keys[group[0]])
        if node.name not in pipelines:
            pipelines[node.name] = client.get_redis_connection(node).pipeline(transaction=False)
        pairs = [item for position in group for item in (keys[position], values[position])]
        pipelines[node.name].execute_command("MSETEX", len(group), *pairs, "EX", ttl_seconds)
    for pipeline in pipelines.values():
        pipeline.execute()


def _mget_by_tag(client: RedisCluster, keys: Sequence[str]) -> list[bytes | None]:
    """The values of `keys`: MGET per hash tag, one pipeline per node; on a redirection (a resharding) the
    same MGETs through the cluster pipeline, which follows it."""
    groups = by_tag(keys)
    try:
        pipelines: dict[str, tuple[redis.client.Pipeline, list[list[int]]]] = {}
        for group in groups:
            node = client.get_node_from_key(keys[group[0]])
            if node.name not in pipelines:
                pipelines[node.name] = (client.get_redis_connection(node).pipeline(transaction=False), [])
            pipeline, node_groups = pipelines[node.name]
            pipeline.execute_command("MGET", *(keys[position] for position in group))
            node_groups.append(group)
        replies = [
            (group, reply)
            for pipeline, node_groups in pipelines.values()
            for group, reply in zip(node_groups, pipeline.execute(), strict=True)
        ]
    except (AskError, TryAgainError):  # MovedError is an AskError
        cluster_pipeline = client.pipeline(transaction=False)
        for group in groups:  # (redis-py's cluster pipeline refuses .mget: it cannot know one slot)
            cluster_pipeline.execute_command("MGET", *(keys[position] for position in group))
        replies = list(zip(groups, cluster_pipeline.execute(), strict=True))
    values: list[bytes | None] = [None] * len(keys)
    for group, reply in replies:
        for position, value in zip(group, reply, strict=True):
            values[position] = value
    return values


def load_batch_features(
    client: redis.Redis | RedisCluster,
    card_ids: Sequence[str],
    card_matrix: np.ndarray,
    merchant_ids: Sequence[str],
    merchant_matrix: np.ndarray,
    *,
    ttl_seconds: int,
    grace_seconds: float = 2.0,
    chunk: int = 1_000,
) -> LoadReport:
    """Write a new generation of card and merchant batch features, switch to it, retire the previous one."""
    if card_matrix.shape != (len(card_ids), len(CARD_BATCH_FEATURES)):
        raise ValueError(
            f"card matrix shape {card_matrix.shape} != ({len(card_ids)}, {len(CARD_BATCH_FEATURES)})"
        )
    if merchant_matrix.shape != (len(merchant_ids), len(MERCHANT_BATCH_FEATURES)):
        raise ValueError(
            f"merchant matrix shape {merchant_matrix.shape} != ({len(merchant_ids)}, {len(MERCHANT_BATCH_FEATURES)})"
        )
    began = time.perf_counter()
    generation = f"{time.time_ns():x}"
    for keys, matrix in (
        ([card_batch_key(generation, card) for card in card_ids], card_matrix),
        ([merchant_batch_key(generation, merchant) for merchant in merchant_ids], merchant_matrix),
    ):
        write_with_ttl(client, keys, pack_rows(matrix), ttl_seconds, chunk)
    previous = client.set(BATCH_GENERATION_KEY, generation, get=True)
    seconds = time.perf_counter() - began
    previous_generation = previous.decode() if previous else None
    if previous_generation:
        time.sleep(grace_seconds)  # readers that fetched the old pointer finish their pipeline first
        retire_generation(client, previous_generation, chunk)
    return LoadReport(generation, previous_generation, len(card_ids), len(merchant_ids), seconds)


def retire_generation(client: redis.Redis | RedisCluster, generation: str, chunk: int = 5_000) -> int:
    """Delete every key of one generation; return how many were deleted."""
    return delete_matching(client, f"batch:{generation}:*", chunk)


def delete_matching(client: redis.Redis | RedisCluster, pattern: str, chunk: int = 5_000) -> int:
    """Delete every key matching a glob pattern (SCAN + UNLINK in chunks; on a cluster SCAN on every primary
    and UNLINK split by slot); return how many were deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=chunk):
        batch.append(key)
        if len(batch) >= chunk:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


class OnlineStore:
    """Reads batch features for the stream and for users: whole batches in one round trip."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self._generation: str | None = None

    def batch_features(
        self, card_ids: Sequence[str], merchant_ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Card and merchant feature matrices (rows in the given order; NaN rows where nothing is stored)."""
        for _attempt in range(3):
            generation = self._generation or self._current_generation()
            if generation is None:
                break
            card_keys = [card_batch_key(generation, card) for card in card_ids]
            merchant_keys = [merchant_batch_key(generation, merchant) for merchant in merchant_ids]
            if self._cluster:  # keys of many slots: one MGET per hash tag, one pipeline per node
                current, *flat = _mget_by_tag(self.client, [BATCH_GENERATION_KEY, *card_keys, *merchant_keys])
                values = [flat[: len(card_keys)], flat[len(card_keys) :]]
            else:
                pipeline = self.client.pipeline(transaction=False)
                pipeline.get(BATCH_GENERATION_KEY)
                for keys in (card_keys, merchant_keys):
                    if keys:
                        pipeline.mget(keys)
                current, *values = pipeline.execute()
                values = [values.pop(0) if card_keys else [], values.pop(0) if merchant_keys else []]
            if current is not None and current.decode() == generation:
                self._generation = generation
                cards, merchants = values
                return (
                    unpack_rows(cards, len(CARD_BATCH_FEATURES)),
                    unpack_rows(merchants, len(MERCHANT_BATCH_FEATURES)),
                )
            self._generation = current.decode() if current else None
        return (
            np.full((len(card_ids), len(CARD_BATCH_FEATURES)), np.nan),
            np.full((len(merchant_ids), len(MERCHANT_BATCH_FEATURES)), np.nan),
        )

    def card_features(self, card_id: str) -> dict[str, float]:
        """One card's batch features by name (NaN when the card has no snapshot)."""
        cards, _ = self.batch_features([card_id], [])
        return dict(zip(CARD_BATCH_FEATURES, cards[0].tolist(), strict=True))

    def merchant_features(self, merchant_id: str) -> dict[str, float]:
        """One merchant's batch features by name (NaN when the merchant has no snapshot)."""
        _, merchants = self.batch_features([], [merchant_id])
        return dict(zip(MERCHANT_BATCH_FEATURES, merchants[0].tolist(), strict=True))

    def _current_generation(self) -> str | None:
        current = self.client.get(BATCH_GENERATION_KEY)
        return current.decode() if current else None
