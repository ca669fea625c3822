"""What a caller of a running API process needs before it sends traffic: readiness, and live events.

Shared by the API tests, the cluster tests and `bench/bench_authorize.py`.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable

WEEK_MS = 7 * 86_400_000


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll `url`/readyz until it answers 200; raise RuntimeError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = error.read().decode(errors="replace")
        except OSError as error:
            last = str(error)
        time.sleep(0.25)
    raise RuntimeError(f"the API never became ready within {timeout:.0f} s: {last}")


def live_events(events: Iterable[dict], now_ms: int | None = None) -> list[dict]:
    """History's events (in time order) as live authorizations: no replay clock, moved by whole weeks so the
    newest lies in the last week before now (same weekdays and hours: the same features), as the API judges a
    timestamp by the wall clock."""
    events = list(events)
    if not events:
        return []
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    shift = (now_ms - events[-1]["timestamp"]) // WEEK_MS * WEEK_MS
    return [
        {
            **{key: value for key, value in event.items() if key != "replay_clock"},
            "timestamp": event["timestamp"] + shift,
        }
        for event in events
    ]
