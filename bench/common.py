"""What every benchmark shares: the machine's description, where results are written, and what processes and
flow steps cost (CPU time from /proc, step times from Bytewax's own metrics)."""

import argparse
import json
import os
import platform
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, object]:
    """What the numbers were measured on, with the host's speed when the result was written
    (`reference_loop_ms`)."""
    return {
        "processor": platform.processor(),
        "uname": platform.uname()._asdict(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "reference_loop_ms": reference_loop_ms(),
    }


def reference_loop_ms(iterations: int = 2_000_000, repeats: int = 3) -> float:
    """The fastest of `repeats` runs of a fixed pure-Python loop, in ms: a yardstick for hosts whose speed
    changes between sessions (the same code ran 2.7-3.6 times slower on some: docs/benchmarks.md, Machine)."""
    fastest = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        total = 0
        for number in range(iterations):
            total += number
        fastest = min(fastest, time.perf_counter() - began)
    return round(fastest * 1000, 1)


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Stamp a result with the time and machine and write it to bench/results/<name>.json."""
    stamped = {**result, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    print(f"written to {path}")
    return path


def write_study(
    name: str, arguments: argparse.Namespace, result: dict[str, Any], load_before: tuple[float, float, float]
) -> Path:
    """`write_result` for a study run: its options, its result and the load average before and after it."""
    return write_result(
        name,
        {
            "options": vars(arguments),
            **result,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dataflow_api(port: int) -> dict[str, str]:
    """The environment under which `bytewax.run` serves its own metrics (`/metrics` on `port`): every step's
    time per call (`step_seconds`)."""
    return {"BYTEWAX_DATAFLOW_API_ENABLED": "true", "BYTEWAX_DATAFLOW_API_PORT": str(port)}


def step_seconds(port: int) -> dict[str, tuple[float, float]]:
    """Each Bytewax step's time so far, from the flow's metrics (`dataflow_api`): `step_id (what)` ->
    (seconds, calls), what being the timed call: next_batch, flat_map_batch, on_batch, write_batch... (and,
    under recovery, `recovery (partd_write)`: the snapshots written to the recovery partitions)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    steps: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.endswith("_duration_seconds"):
            continue
        what = family.name.removeprefix("bytewax_").removesuffix("_duration_seconds")
        for sample in family.samples:
            key = f"{sample.labels.get('step_id', 'recovery')} ({what})"  # recovery's own writes name no step
            seconds, calls = steps.get(key, (0.0, 0.0))
            if sample.name.endswith("_sum"):
                steps[key] = (seconds + sample.value, calls)
            elif sample.name.endswith("_count"):
                steps[key] = (seconds, calls + sample.value)
    return steps


def step_split(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], window_seconds: float
) -> list[dict[str, object]]:
    """Where a flow's worker spent a measured window (two `step_seconds` readings `window_seconds` apart):
    per step its calls, ms per call and share of the window, largest first."""
    split = []
    for step, (seconds, calls) in after.items():
        seconds_before, calls_before = before.get(step, (0.0, 0.0))
        spent, called = seconds - seconds_before, calls - calls_before
        if called:
            split.append(
                {
                    "step": step,
                    "calls": int(called),
                    "ms_per_call": round(spent * 1000 / called, 3),
                    "share_of_window": round(spent / window_seconds, 4),
                }
            )
    return sorted(split, key=lambda row: -float(row["share_of_window"]))  # type: ignore[arg-type]


def child_processes() -> dict[int, str]:
    """This process's children (Linux /proc): pid -> command line."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):  # gone meanwhile
            continue
        if parent == os.getpid():
            children[int(stat.parent.name)] = command
    return children


def parse_options(doc: str, **defaults: int | list[int]) -> argparse.Namespace:
    """The command line of a benchmark: one `--name` option per default (`skew_events` -> `--skew-events`),
    typed like its default; the module docstring as help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        option = "--" + name.replace("_", "-")
        if isinstance(default, list):
            parser.add_argument(option, type=int, nargs="*", default=default)
        else:
            parser.add_argument(option, type=int, default=default)
    return parser.parse_args()
