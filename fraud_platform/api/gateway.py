"""Hand a transaction to the running scoring flow and wait for its decision, within a deadline.

The flow is the only writer of card state and of decisions. For one request the gateway runs
`decisions.HANDOFF_SCRIPT` (one round trip): a transaction decided before gets its stored first decision at
once; otherwise the script registers a reply list for the request and puts the event on the card's shard of
the transactions stream (`bus.xadd_arguments`, as `fraud-platform replay` publishes). The gateway then waits
on the reply list (BLPOP) until the flow's decision script pushes the decision there, or until the deadline:
then, or when Redis cannot be reached, the answer is the configured stand-in decision, marked as such. A
transaction that timed out is still decided by the flow when it gets to it, and recorded once like any
other; only the caller got the stand-in. With FRAUD_PLATFORM_REDIS_CLUSTER=1 the client is an asyncio
`RedisCluster` and the hand-off's keys carry the tag of the card's shard (`decisions.decision_tag`), so the
script runs on the node of that shard.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fraud_platform.api.settings import ApiSettings
from fraud_platform.config import Settings
from fraud_platform.lib.bus import transaction_event, xadd_arguments
from fraud_platform.lib.redis_server import redis_url
from fraud_platform.lib.schema import Transaction
from fraud_platform.scoring.decisions import (
    HANDOFF_SCRIPT,
    REPLY_TTL_SECONDS,
    decision_tag,
    marker_key,
    reply_key,
    waiters_key,
    waiting_key,
)
from fraud_platform.scoring.metrics import METRICS_KEY

FLOW, STORED, STAND_IN = "flow", "stored", "stand_in"
# BLPOP is asked to give up this much before the deadline, so a late flow costs a clean nil reply rather than a
# cancelled command (which closes the connection).
_BLPOP_MARGIN_S = 0.002
MAX_CONNECTIONS = 1_024


@dataclass(frozen=True)
class Outcome:
    """What a request gets: the flow's decision event (`decision`, None for a stand-in), where it came from
    (FLOW, STORED or STAND_IN), why a stand-in was given, and where the time went (milliseconds)."""

    source: str
    decision: dict[str, Any] | None
    stand_in_reason: str | None = None
    handoff_ms: float = 0.0
    wait_ms: float = 0.0
    handed_off_at_ms: float = 0.0  # wall clock, epoch ms, when the hand-off (with the XADD) was sent
    replied_at_ms: float = 0.0  # wall clock, epoch ms, when the decision reached the gateway


class Gateway:
    """One per server process: an asyncio Redis client that never waits past the deadline."""

    def __init__(self, settings: Settings, api: ApiSettings) -> None:
        self.settings = settings
        self.deadline_s = api.deadline_ms / 1000
        client_class = RedisCluster if settings.redis_cluster else aioredis.Redis
        self.client = client_class.from_url(
            redis_url(settings),
            socket_connect_timeout=self.deadline_s,
            socket_timeout=self.deadline_s
            + 1.0,  # BLPOP waits up to the deadline; the deadline cuts it short
            retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS,  # per node on a cluster
        )
        self._handoff = self.client.register_script(HANDOFF_SCRIPT)

    async def close(self) -> None:
        """Release the connections."""
        await self.client.aclose()

    async def decide(self, txn: Transaction) -> Outcome:
        """The flow's decision for `txn` (or its stored first decision), else a stand-in within the deadline."""
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self.deadline_s):
                return await self._decide(txn, began)
        except TimeoutError:
            return Outcome(
                STAND_IN, None, f"no decision within the deadline of {self.deadline_s * 1000:g} ms"
            )
        except redis.RedisError as error:
            return Outcome(STAND_IN, None, f"Redis unreachable: {type(error).__name__}")

    async def _decide(self, txn: Transaction, began: float) -> Outcome:
        tid = txn.transaction_id
        tag = decision_tag(txn.card_id, self.settings.stream_shards, self.settings.redis_cluster)
        reply = reply_key(tid, secrets.token_hex(8), tag)
        stream, *entry = xadd_arguments(
            txn.card_id, transaction_event(txn), self.settings.stream_shards, self.settings.stream_max_length
        )
        sent_at_ms = time.time() * 1000
        stored = await self._handoff(
            keys=[marker_key(tid, tag), waiting_key(tag), waiters_key(tid, tag), stream],
            args=[tid, reply, REPLY_TTL_SECONDS, *entry],
        )
        handed_off = time.perf_counter()
        handoff_ms = (handed_off - began) * 1000
        if stored is not None:
            return Outcome(STORED, orjson.loads(stored), handoff_ms=handoff_ms)
        remaining = self.deadline_s - (handed_off - began) - _BLPOP_MARGIN_S
        popped = await self.client.blpop([reply], timeout=max(remaining, 0.001))
        replied = time.perf_counter()
        if popped is None:
            raise TimeoutError
        return Outcome(
            FLOW,
            orjson.loads(popped[1]),
            handoff_ms=handoff_ms,
            wait_ms=(replied - handed_off) * 1000,
            handed_off_at_ms=sent_at_ms,
            replied_at_ms=time.time() * 1000,
        )

    async def readiness(self, stale_seconds: int) -> list[str]:
        """What keeps the API from deciding (empty: ready): Redis unreachable, no scoring flow reporting within
        `stale_seconds`, no model served by the flow."""
        try:
            async with asyncio.timeout(max(self.deadline_s, 1.0)):
                metrics = await self.client.hgetall(METRICS_KEY)
        except (TimeoutError, redis.RedisError) as error:
            return [f"Redis unreachable: {type(error).__name__}"]
        problems = []
        updated = int(metrics.get(b"updated_at", b"0"))
        age = time.time() - updated / 1000
        if age > stale_seconds:
            problems.append(
                "no scoring flow: metrics:scoring "
                + (f"last updated {age:.0f} s ago" if updated else "never written")
                + ' (start it with `python -m bytewax.run "bytewax_flows.scoring:build_flow()"`)'
            )
        model = metrics.get(b"model_version", b"none").decode()
        if model == "none":
            problems.append("the scoring flow serves no model")
        return problems
