"""Hand transactions to the running scoring flow and wait for their decisions, within a deadline.

The flow is the only writer of card state and of decisions. The gateway collects the requests that arrive in
one turn of the event loop and hands them off together: one `decisions.HANDOFF_SCRIPT` call (one round trip)
per batch (per shard on a cluster). A transaction_id first seen with other content (the first-seen marker the
flow's claim also keeps, `bus.content_hash`) is refused at once (REUSED) and nothing is published; a
transaction decided before gets its stored first decision at once; otherwise the script registers this server
process's reply list (its inbox) for the transaction and puts the event on the card's shard of the
transactions stream (`bus.xadd_arguments`, as `fraud-platform replay` publishes). One reader task per inbox
pops the decisions the flow's decision script pushes there, many per round trip, and wakes the requests
waiting for them. A request that has no decision by the deadline, or whose hand-off cannot reach Redis, gets
the configured stand-in decision, marked as such. A transaction that timed out is still decided by the flow
when it gets to it, and recorded once like any other; only the caller got the stand-in (its late decision
reaches the inbox and is dropped). With FRAUD_PLATFORM_REDIS_CLUSTER=1 the client is an asyncio
`RedisCluster`, the hand-off's keys and the inbox carry the tag of the card's shard
(`decisions.decision_tag`), so each script runs on the node of its shard, and there is one inbox per shard.

Per request this costs a share of one script call and of one pop, instead of a script call and a blocking
pop on a connection of its own: the server's Redis connections stay few under any load.
"""

from __future__ import annotations

import asyncio
import logging
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
from fraud_platform.lib.bus import content_hash, transaction_event, xadd_arguments
from fraud_platform.lib.redis_server import redis_url
from fraud_platform.lib.schema import Transaction
from fraud_platform.scoring.decisions import (
    HANDOFF_SCRIPT,
    REPLY_TTL_SECONDS,
    decision_tag,
    first_seen_key,
    marker_key,
    reply_key,
    waiters_key,
    waiting_key,
)
from fraud_platform.scoring.metrics import METRICS_KEY

logger = logging.getLogger(__name__)
FLOW, STORED, STAND_IN = "flow", "stored", "stand_in"
REUSED = "reused_id"  # the transaction_id was first seen with other content: no decision
CLIENT_NAME = "fraud-platform-api"  # the server's connections in Redis's CLIENT LIST
MAX_CONNECTIONS = 1_024
HANDOFF_CHUNK = 500  # transactions per hand-off script call
REPLIES_PER_POP = 1_000
POP_BLOCK_S = 1.0  # an idle reader's wait per round trip
RETRY_S = 0.05  # a reader's pause after a Redis error (requests meanwhile get stand-ins at their deadline)


@dataclass(frozen=True)
class Outcome:
    """What a request gets: the flow's decision event (`decision`, None for a stand-in or a reused id), where
    it came from (FLOW, STORED, STAND_IN, or REUSED: refused), why a stand-in was given, and where the time
    went (milliseconds)."""

    source: str
    decision: dict[str, Any] | None
    stand_in_reason: str | None = None
    handoff_ms: float = 0.0
    wait_ms: float = 0.0
    handed_off_at_ms: float = 0.0  # wall clock, epoch ms, when the hand-off (with the XADD) was sent
    replied_at_ms: float = 0.0  # wall clock, epoch ms, when the decision reached the gateway


@dataclass(eq=False)
class _Waiting:
    """One request between its hand-off and its answer."""

    txn: Transaction
    tag: str
    answer: asyncio.Future[tuple[str, dict[str, Any]]]
    sent_at_ms: float = 0.0  # wall clock, epoch ms, when its hand-off was sent
    handed_off: float = 0.0  # perf_counter when the hand-off returned
    early: dict[str, Any] | None = None  # its decision, when that came before the hand-off returned
    answered_at_ms: float = 0.0
    answered: float = 0.0  # perf_counter when the answer arrived

    def give(self, source: str, decision: dict[str, Any]) -> None:
        """Answer the request (the first answer wins; one that gave up at its deadline takes none)."""
        if not self.answer.done():
            self.answered, self.answered_at_ms = time.perf_counter(), time.time() * 1000
            self.answer.set_result((source, decision))


class Gateway:
    """One per server process: an asyncio Redis client, the requests waiting, one inbox reader per tag; no
    request waits past the deadline."""

    def __init__(self, settings: Settings, api: ApiSettings) -> None:
        self.settings = settings
        self.deadline_s = api.deadline_ms / 1000
        client_class = RedisCluster if settings.redis_cluster else aioredis.Redis
        self.client = client_class.from_url(
            redis_url(settings),
            socket_connect_timeout=self.deadline_s,
            socket_timeout=max(self.deadline_s, POP_BLOCK_S) + 1.0,
            retry=Retry(NoBackoff(), 0),
            client_name=CLIENT_NAME,
            max_connections=MAX_CONNECTIONS,  # per node on a cluster
        )
        self._handoff = self.client.register_script(HANDOFF_SCRIPT)
        self._token = secrets.token_hex(8)
        self._waiting: dict[str, list[_Waiting]] = {}  # by transaction_id
        self._outbox: list[_Waiting] = []  # requests of this loop turn, not handed off yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._readers: dict[str, asyncio.Task[None]] = {}  # by tag

    async def close(self) -> None:
        """Stop the readers and release the connections."""
        for task in [*self._readers.values(), *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._readers.values(), *self._tasks, return_exceptions=True)
        await self.client.aclose()

    async def decide(self, txn: Transaction) -> Outcome:
        """The flow's decision for `txn` (or its stored first decision), else a stand-in within the deadline;
        REUSED, without a decision, when its transaction_id was first seen with other content."""
        began = time.perf_counter()
        request = self._enqueue(txn)
        try:
            async with asyncio.timeout(self.deadline_s):
                source, decision = await request.answer
        except TimeoutError:
            return Outcome(
                STAND_IN, None, f"no decision within the deadline of {self.deadline_s * 1000:g} ms"
            )
        except redis.RedisError as error:
            return Outcome(STAND_IN, None, f"Redis unreachable: {type(error).__name__}")
        finally:
            self._forget(request)
        if source == REUSED:
            return Outcome(REUSED, None)
        return Outcome(  # answered only once its hand-off returned (an earlier decision waits for it)
            source,
            decision,
            handoff_ms=(request.handed_off - began) * 1000,
            wait_ms=(request.answered - request.handed_off) * 1000,
            handed_off_at_ms=request.sent_at_ms,
            replied_at_ms=request.answered_at_ms,
        )

    def _enqueue(self, txn: Transaction) -> _Waiting:
        """Register the request and queue its hand-off for the end of this loop turn."""
        tag = decision_tag(txn.card_id, self.settings.stream_shards, self.settings.redis_cluster)
        request = _Waiting(txn, tag, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(txn.transaction_id, []).append(request)
        if tag not in self._readers:
            self._readers[tag] = asyncio.create_task(self._read_replies(tag))
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(request)
        return request

    def _forget(self, request: _Waiting) -> None:
        waiting = self._waiting.get(request.txn.transaction_id, [])
        if request in waiting:
            waiting.remove(request)
        if not waiting:
            self._waiting.pop(request.txn.transaction_id, None)

    def _flush(self) -> None:
        """Hand off the requests queued in this loop turn: one script call per tag and chunk."""
        by_tag: dict[str, list[_Waiting]] = {}
        for request in self._outbox:
            by_tag.setdefault(request.tag, []).append(request)
        self._outbox = []
        for tag, requests in by_tag.items():
            for start in range(0, len(requests), HANDOFF_CHUNK):
                task = asyncio.create_task(self._hand_off(tag, requests[start : start + HANDOFF_CHUNK]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _hand_off(self, tag: str, requests: list[_Waiting]) -> None:
        """One script call for `requests` (all of `tag`): each is refused as a reused id, gets its stored
        decision, or waits for the flow (with the decision at once if it arrived before this reply)."""
        keys, events = [waiting_key(tag)], []
        for request in requests:
            tid = request.txn.transaction_id
            stream, *entry = xadd_arguments(
                request.txn.card_id,
                transaction_event(request.txn),
                self.settings.stream_shards,
                self.settings.stream_max_length,
            )
            keys += [marker_key(tid, tag), waiters_key(tid, tag), stream, first_seen_key(tid, tag)]
            events += [tid, content_hash(request.txn), *entry]
        width = len(events) // len(requests) - 2  # XADD arguments per transaction, the same for every one
        sent_at_ms = time.time() * 1000
        for request in requests:
            request.sent_at_ms = sent_at_ms
        try:
            stored = await self._handoff(
                keys=keys,
                args=[
                    reply_key(self._token, tag),
                    REPLY_TTL_SECONDS,
                    width,
                    self.settings.marker_ttl_seconds,
                    *events,
                ],
            )
        except redis.RedisError as error:
            for request in requests:
                if not request.answer.done():
                    request.answer.set_exception(error)
            return
        handed_off = time.perf_counter()
        for request, decision in zip(requests, stored, strict=True):
            request.handed_off = handed_off
            if decision == 0:
                request.give(REUSED, {})
            elif decision is not None:
                request.give(STORED, orjson.loads(decision))
            elif request.early is not None:  # registered, and decided before this reply was read
                request.give(FLOW, request.early)

    async def _read_replies(self, tag: str) -> None:
        """Pop this process's inbox of `tag` for as long as the server runs, answering the waiting requests
        (those whose hand-off has not returned keep the decision until it says whether it registered them)."""
        inbox = reply_key(self._token, tag)
        while True:
            try:
                popped = await self.client.blmpop(
                    POP_BLOCK_S, 1, inbox, direction="RIGHT", count=REPLIES_PER_POP
                )
            except redis.RedisError:
                await asyncio.sleep(RETRY_S)
                continue
            for payload in popped[1] if popped else ():
                try:
                    decision = orjson.loads(payload)
                    waiting = self._waiting.get(decision["transaction_id"], ())
                except (orjson.JSONDecodeError, KeyError, TypeError):  # not written by the decision script
                    logger.error(
                        "inbox %s: skipped an entry that is not a decision: %r", inbox, payload[:200]
                    )
                    continue
                for request in waiting:
                    if request.handed_off:
                        request.give(FLOW, decision)
                    else:  # registered, or refused as a reused id: its hand-off's reply says which
                        request.early = decision

    async def readiness(self, stale_seconds: int) -> list[str]:
        """What keeps the API from deciding (empty: ready): Redis unreachable, no scoring flow reporting within
        `stale_seconds` or the flow marked stopped since its last report, no model served by the flow."""
        try:
            async with asyncio.timeout(max(self.deadline_s, 1.0)):
                metrics = await self.client.hgetall(METRICS_KEY)
        except (TimeoutError, redis.RedisError) as error:
            return [f"Redis unreachable: {type(error).__name__}"]
        problems = []
        updated = int(metrics.get(b"updated_at", b"0"))
        stopped = int(metrics.get(b"stopped_at", b"0"))
        age = time.time() - updated / 1000
        gone = ""
        if not updated:
            gone = "metrics:scoring never written"
        elif stopped >= updated:
            gone = f"the flow stopped {time.time() - stopped / 1000:.0f} s ago"
        elif age > stale_seconds:
            gone = f"metrics:scoring last updated {age:.0f} s ago"
        if gone:
            problems.append(
                f"no scoring flow: {gone}"
                ' (start it with `python -m bytewax.run "bytewax_flows.scoring:build_flow()" -s 1`)'
            )
        model = metrics.get(b"model_version", b"none").decode()
        if model == "none":
            problems.append("the scoring flow serves no model")
        return problems
