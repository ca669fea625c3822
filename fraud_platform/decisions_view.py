"""The decisions stream for people and machines: the newest decisions, filtered, as a table or JSON lines.

The table shows the event time in ISO-8601 UTC, the card, the amount, the decision, the score and the top
reasons with the values the model was served (`reason_details` of the stream entry; entries written before
the details existed show the reasons' names only).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from fraud_platform.lib.bus import stream_id
from fraud_platform.scoring.decisions import DECISION_FIELD, decisions_streams

PAGE = 10_000  # stream entries read per round trip while looking for filtered decisions
HEADER = ("event time (UTC)", "transaction", "card", "amount", "decision", "score", "top reasons (value)")
_RIGHT_ALIGNED = {"amount", "score"}


def newest_decisions(
    client: redis.Redis, count: int, *, decision: str | None = None, card: str | None = None
) -> list[dict[str, Any]]:
    """The newest `count` decisions of the stream with this decision and card (None: any), oldest first.

    Pages back through the stream until `count` match or the stream ends."""
    found: list[dict[str, Any]] = []
    for event in _newest_first(client, count if decision is None and card is None else PAGE):
        if (decision is None or event["decision"] == decision) and (card is None or event["card_id"] == card):
            found.append(event)
            if len(found) == count:
                break
    return found[::-1]


def _newest_first(client: redis.Redis, page: int) -> Iterator[dict[str, Any]]:
    """The decisions, newest first (on Redis Cluster the shards' streams merged by entry id)."""
    pages = [_stream_newest_first(client, stream, page) for stream in decisions_streams(client)]
    for _, event in heapq.merge(*pages, key=lambda item: item[0], reverse=True):
        yield event


def _stream_newest_first(
    client: redis.Redis, stream: str | bytes, page: int
) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
    upper = "+"
    while entries := client.xrevrange(stream, max=upper, count=page):
        for entry_id, fields in entries:
            yield stream_id(entry_id.decode()), orjson.loads(fields[DECISION_FIELD.encode()])
        upper = "(" + entries[-1][0].decode()  # exclusive: the page after the oldest entry read


def table(events: Sequence[dict[str, Any]]) -> list[str]:
    """The decisions as aligned text lines under a header (numbers right-aligned, the reasons last)."""
    rows = [HEADER, *(_row(event) for event in events)]
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return [
        "  ".join(
            cell.rjust(width) if name in _RIGHT_ALIGNED else cell.ljust(width)
            for name, cell, width in zip(HEADER[:-1], row, widths, strict=False)
        )
        + "  "
        + row[-1]
        for row in rows
    ]


def _row(event: dict[str, Any]) -> tuple[str, ...]:
    moment = datetime.fromtimestamp(event["event_time"] / 1000, UTC)
    return (
        moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        event["transaction_id"],
        event["card_id"],
        _amount(event),
        event["decision"],
        f"{event['score']:.3f}",
        _reasons(event),
    )


def _amount(event: dict[str, Any]) -> str:
    if event.get("amount") is None:
        return "-"
    return f"{event['amount']:,.2f} {event.get('currency', '')}".rstrip()


def _reasons(event: dict[str, Any]) -> str:
    details = event.get("reason_details")
    if details is None:
        return ", ".join(event["reasons"]) or "-"
    return ", ".join(f"{detail['feature']}={_value(detail['value'])}" for detail in details) or "-"


def _value(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "missing"
    return f"{value:.4g}"
