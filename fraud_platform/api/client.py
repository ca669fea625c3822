"""What a caller of a running API process needs: readiness, live events, and a synchronous caller that
records each request's round trip (`Authorizer`, used by `fraud-platform replay --authorize-every`).

Shared by the API tests, the cluster tests, `bench/bench_authorize.py` and the CLI.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

WEEK_MS = 7 * 86_400_000


def start_server(env: Mapping[str, str], port: int, log: Path) -> subprocess.Popen:
    """`fraud-platform serve --port PORT` (loopback) as a child process with `env`, its output appended to
    `log`."""
    command = str(Path(sys.executable).parent / "fraud-platform")
    with log.open("ab") as output:
        return subprocess.Popen(
            [command, "serve", "--port", str(port)], env=dict(env), stdout=output, stderr=subprocess.STDOUT
        )


def stop_processes(processes: Iterable[subprocess.Popen], timeout: float = 30.0) -> None:
    """Terminate each process and wait for it; kill one that outlives `timeout`."""
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until_ready(
    url: str, process: subprocess.Popen | None = None, timeout: float = 180.0, probe: str = "/readyz"
) -> None:
    """Poll `url` + `probe` (/readyz: able to decide; /healthz: the process is up) until it answers 200; raise
    RuntimeError if the server's `process` (when this one started it) exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the API server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}{probe}", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = error.read().decode(errors="replace")
        except OSError as error:
            last = str(error)
        time.sleep(0.25)
    raise RuntimeError(f"the API never became ready within {timeout:.0f} s ({probe}): {last}")


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


class AuthorizationError(RuntimeError):
    """The API refused a request or could not be reached; the message names the transaction and why."""


@dataclass
class Authorizer:
    """POST /v1/authorize for one transaction at a time over one keep-alive connection, as a payment switch
    would call it; `answers` keeps what each request got and its round trip in milliseconds."""

    url: str
    api_key: str | None = None
    timeout_s: float = 10.0
    answers: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise AuthorizationError(f"the API URL must look like http://HOST:PORT, got {self.url!r}")
        self._connection = http.client.HTTPConnection(
            parts.hostname, parts.port or 80, timeout=self.timeout_s
        )
        self._headers = {"Content-Type": "application/json"}
        if self.api_key:
            self._headers["X-API-Key"] = self.api_key

    def __call__(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Authorize one transaction; return the answer (stand-ins included). Raises AuthorizationError
        for a refused request (4xx/5xx) or a lost connection."""
        body = orjson.dumps(event)
        began = time.perf_counter()
        try:
            self._connection.request("POST", "/v1/authorize", body, self._headers)
            response = self._connection.getresponse()
            payload = response.read()
        except OSError as error:
            self._connection.close()
            raise AuthorizationError(
                f"{self.url}: {error} (transaction {event.get('transaction_id')})"
            ) from error
        round_trip_ms = (time.perf_counter() - began) * 1000
        if response.status != 200:
            raise AuthorizationError(
                f"{self.url} answered {response.status} for transaction {event.get('transaction_id')}: "
                f"{payload.decode(errors='replace')[:300]}"
            )
        answer = orjson.loads(payload)
        self.answers.append({**answer, "event_time": event["timestamp"], "round_trip_ms": round_trip_ms})
        return answer

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()
