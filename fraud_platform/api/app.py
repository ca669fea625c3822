"""The HTTP application: routes, request parsing, response bodies, Prometheus metrics and the OpenAPI page.

Starlette on uvicorn: measured on this 2-core machine (uvloop + httptools, a JSON body in and out, server
CPU per request): plain Starlette routes cost about 95 us, the same handler as a FastAPI route about 240 us
(docs/api.md). Bodies are validated by the bus's own `decode_event` (the rules the scoring flow applies),
never by a second schema; the OpenAPI document is written out here.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from fraud_platform.api.gateway import FLOW, REUSED, STAND_IN, Gateway, Outcome
from fraud_platform.api.openapi import OPENAPI, SWAGGER_PAGE
from fraud_platform.api.settings import ApiSettings
from fraud_platform.config import Settings
from fraud_platform.features.vector import FEATURE_DEFINITION_VERSION
from fraud_platform.lib.bus import REUSED_ID_REASON, DeadLetter, EventWindow, decode_event, repeated_key
from fraud_platform.lib.schema import Transaction

MAX_BATCH = 1_000
MAX_BATCH_BYTES = 4 * 1024 * 1024
_FIELD = re.compile(r"fields? '([^']+)'")
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # load-balancer probes need no key
_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (per process, or the multiprocess
    directory PROMETHEUS_MULTIPROC_DIR when several workers serve)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            MultiProcessCollector(self.registry)
        registry = None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else self.registry
        self.requests = Counter(
            "fraud_api_requests", "HTTP requests by route and status.", ["route", "status"], registry=registry
        )
        self.latency = Histogram(
            "fraud_api_request_seconds",
            "Request latency in the server by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "fraud_api_decisions",
            "Answers by decision and source (flow, stored: an idempotent re-send, stand_in).",
            ["decision", "source"],
            registry=registry,
        )
        self.stand_ins = Counter(
            "fraud_api_stand_ins", "Stand-in answers by cause.", ["cause"], registry=registry
        )
        self.errors = Counter("fraud_api_errors", "Refused requests by kind.", ["kind"], registry=registry)
        self.model = Gauge(
            "fraud_api_model_info",
            "The model version of the latest decision answered (value 1).",
            ["model_version"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._model_version: str | None = None

    def answered(self, outcome: Outcome, decision: str) -> None:
        """Count one answer and follow the model version it came from."""
        self.decisions.labels(decision, outcome.source).inc()
        if outcome.source == STAND_IN:
            cause = "redis" if outcome.stand_in_reason and "Redis" in outcome.stand_in_reason else "deadline"
            self.stand_ins.labels(cause).inc()
        elif outcome.decision is not None:
            version = str(outcome.decision.get("model_version"))
            if version != self._model_version:
                if self._model_version is not None:
                    self.model.remove(self._model_version)
                self.model.labels(version).set(1)
                self._model_version = version


def invalid(field: str, reason: str) -> Response:
    """422 naming the field and the reason."""
    return json_response({"detail": [{"field": field, "reason": reason}]}, 422)


def reused(fields: list[tuple[str, str]]) -> Response:
    """409 naming each (field, transaction_id) whose id was first seen with other content."""
    detail = [
        {
            "field": field,
            "reason": f"{REUSED_ID_REASON}: '{transaction_id}' was first seen with another card, merchant, "
            "amount, currency, time, place, channel or mcc; a transaction_id names one transaction",
        }
        for field, transaction_id in fields
    ]
    return json_response({"detail": detail}, 409)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson (NaN and infinities become null)."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def field_of(reason: str) -> str:
    """The field a validation reason names (`body` when it names none)."""
    match = _FIELD.search(reason)
    return match.group(1) if match else "body"


def decided_at(epoch_ms: float) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def answer(txn: Transaction, outcome: Outcome, stand_in: str) -> dict[str, Any]:
    """The response body for one transaction: the flow's (or stored) decision, or the stand-in."""
    event = outcome.decision
    if event is None:
        return {
            "transaction_id": txn.transaction_id,
            "decision": stand_in,
            "score": None,
            "reasons": [],
            "model_version": None,
            "feature_definition_version": FEATURE_DEFINITION_VERSION,
            "decided_at": decided_at(time.time() * 1000),
            "stand_in": True,
            "stand_in_reason": outcome.stand_in_reason,
        }
    details = event.get("reason_details")
    if details is None:  # decided by a flow older than reason details: names only
        details = [{"feature": name, "value": None, "contribution": None} for name in event["reasons"]]
    return {
        "transaction_id": event["transaction_id"],
        "decision": event["decision"],
        "score": event["score"],
        "reasons": details,
        "model_version": event["model_version"],
        "feature_definition_version": event.get("feature_definition_version", FEATURE_DEFINITION_VERSION),
        "decided_at": decided_at(event["decision_time"]),
        "stand_in": False,
    }


def server_timing(outcome: Outcome) -> str:
    """The Server-Timing header: hand-off and wait in the server, and from the hand-off on: queue (sent to the
    flow taking it in), flow, and reply (decision to the server); those from the decision's own wall-clock
    times, 1 ms resolution."""
    parts = [f"handoff;dur={outcome.handoff_ms:.3f}", f"wait;dur={outcome.wait_ms:.3f}"]
    event = outcome.decision
    if outcome.source == FLOW and event is not None:
        parts += [
            f"queue;dur={event['received_time'] - outcome.handed_off_at_ms:.3f}",
            f"flow;dur={event['decision_time'] - event['received_time']:.3f}",
            f"reply;dur={outcome.replied_at_ms - event['decision_time']:.3f}",
        ]
    return ", ".join(parts)


def create_app(settings: Settings | None = None, api: ApiSettings | None = None) -> Starlette:
    """The application (uvicorn's factory): settings from the environment unless given."""
    settings = settings or Settings.from_env()
    api = api or ApiSettings.from_env()
    window = EventWindow.from_settings(settings)
    metrics = Metrics()
    state: dict[str, Gateway] = {}

    def parse(payload: bytes, where: str = "") -> Transaction | Response:
        checked = decode_event(payload, window, live=True)
        if isinstance(checked, DeadLetter):
            metrics.errors.labels("invalid").inc()
            return invalid(where + field_of(checked.reason), checked.reason)
        return checked

    async def authorize(request: Request) -> Response:
        checked = parse(await request.body())
        if isinstance(checked, Response):
            return checked
        outcome = await state["gateway"].decide(checked)
        if outcome.source == REUSED:
            metrics.errors.labels("reused_id").inc()
            return reused([("transaction_id", checked.transaction_id)])
        body = answer(checked, outcome, api.stand_in)
        metrics.answered(outcome, body["decision"])
        return json_response(body, headers={"Server-Timing": server_timing(outcome)})

    async def authorize_batch(request: Request) -> Response:
        payload = await request.body()
        if len(payload) > MAX_BATCH_BYTES:
            return invalid("body", f"batch of {len(payload):,} bytes exceeds {MAX_BATCH_BYTES:,}")
        try:
            items = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            return invalid("body", f"invalid JSON: {error}")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            return invalid("body", f"a batch is a JSON array of 1 to {MAX_BATCH:,} transactions")
        try:
            key = repeated_key(payload)
        except RecursionError:
            return invalid("body", "JSON nested too deeply for a batch")
        if key is not None:
            return invalid(key, f"key '{key}' appears more than once in a transaction")
        txns = []
        for index, item in enumerate(items):
            checked = parse(orjson.dumps(item), f"[{index}].")
            if isinstance(checked, Response):
                return checked
            txns.append(checked)
        outcomes = await asyncio.gather(*(state["gateway"].decide(txn) for txn in txns))
        refused = [
            (f"[{index}].transaction_id", txn.transaction_id)
            for index, (txn, outcome) in enumerate(zip(txns, outcomes, strict=True))
            if outcome.source == REUSED
        ]
        if refused:  # the others were decided: sent again, they get their stored decisions
            metrics.errors.labels("reused_id").inc(len(refused))
            return reused(refused)
        bodies = []
        for txn, outcome in zip(txns, outcomes, strict=True):
            body = answer(txn, outcome, api.stand_in)
            metrics.answered(outcome, body["decision"])
            bodies.append(body)
        return json_response({"results": bodies})

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems = await state["gateway"].readiness(api.flow_stale_seconds)
        return json_response({"ready": not problems, "problems": problems}, 503 if problems else 200)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return json_response(OPENAPI)

    async def docs(request: Request) -> Response:
        return HTMLResponse(SWAGGER_PAGE)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["gateway"] = Gateway(settings, api)
        gc.freeze()  # long-lived objects out of full collections: fewer long pauses (p99.9)
        yield
        await state["gateway"].close()

    routes = {
        "/v1/authorize": (authorize, "POST"),
        "/v1/authorize/batch": (authorize_batch, "POST"),
        "/healthz": (healthz, "GET"),
        "/readyz": (readyz, "GET"),
        "/metrics": (prometheus, "GET"),
        "/openapi.json": (openapi, "GET"),
        "/docs": (docs, "GET"),
    }
    app = Starlette(
        routes=[
            Route(path, _measured(path, handler, metrics, api.api_key), methods=[method])
            for path, (handler, method) in routes.items()
        ],
        lifespan=lifespan,
    )
    return app


def _measured(
    path: str,
    handler: Callable[[Request], Awaitable[Response]],
    metrics: Metrics,
    api_key: str | None,
) -> Callable[[Request], Awaitable[Response]]:
    """The handler behind the API-key check (when a key is set) and with its requests counted and timed."""
    requests, latency, errors = metrics.requests, metrics.latency.labels(path), metrics.errors
    guarded = api_key is not None and path not in _OPEN_PATHS
    expected = (api_key or "").encode()

    async def endpoint(request: Request) -> Response:
        began = time.perf_counter()
        if guarded and not _authorised(request, expected):
            errors.labels("unauthorized").inc()
            response = json_response(
                {"detail": "missing or wrong API key (Authorization: Bearer <key> or X-API-Key)"},
                401,
                {"WWW-Authenticate": "Bearer"},
            )
        else:
            response = await handler(request)
        latency.observe(time.perf_counter() - began)
        requests.labels(path, str(response.status_code)).inc()
        return response

    return endpoint


def _authorised(request: Request, expected: bytes) -> bool:
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
    return hmac.compare_digest(given.encode(), expected)
