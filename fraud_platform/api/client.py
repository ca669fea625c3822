"""What a caller of a running API process needs before it sends traffic: readiness, and live events.

Shared by the API tests, the cluster tests and `bench/bench_authorize.py`.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

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
