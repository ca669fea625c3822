"""What every benchmark shares: the machine's description and where results are written."""

import argparse
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    return {
        "processor": platform.processor(),
        "uname": platform.uname()._asdict(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Stamp a result with the time and machine and write it to bench/results/<name>.json."""
    stamped = {**result, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    print(f"written to {path}")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
