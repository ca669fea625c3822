"""A documented CPU-burning neighbour for the latency benchmarks: one busy process per core, for a bounded time.

    python -m bench.neighbour [--seconds 60 --processes <cores> --niceness 0]

Each process spins a pure-Python loop (no I/O, no memory growth) on one core until its own deadline, so a
benchmark that dies cannot leave a burner behind for longer than `--seconds`. `--niceness N` runs the burners
N steps of Linux niceness below the process that starts them (what an operator gives batch work on a shared
machine; capped at 19); at 0 they weigh as much as the platform's processes. Benchmarks start it around the
measurement that needs it (`with Neighbour(seconds=...):`) and stop it, by process id, when the measurement
ends; run from the command line it burns in the foreground until the time is up (Ctrl-C stops it early),
e.g. next to another benchmark or the API's load test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import TracebackType

from bench.common import parse_options

# One burner: spin until the deadline given in seconds on the command line.
_BURN = (
    "import sys, time\n"
    "deadline = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < deadline:\n"
    "    sum(range(10_000))\n"
)


class Neighbour:
    """`with Neighbour(seconds=...)`: `processes` busy processes (default one per core) for at most `seconds`,
    `niceness` steps (0-19) below this process's priority."""

    def __init__(self, seconds: float, processes: int | None = None, niceness: int = 0) -> None:
        if seconds <= 0:
            raise ValueError(f"Neighbour seconds={seconds}: must be positive (the burners' time bound)")
        self.seconds = seconds
        self.processes = processes if processes is not None else os.cpu_count() or 1
        if self.processes < 1:
            raise ValueError(f"Neighbour processes={self.processes}: must be at least 1")
        if not 0 <= niceness <= 19:
            raise ValueError(
                f"Neighbour niceness={niceness}: must be 0-19 (steps below this process's priority)"
            )
        self.niceness = niceness
        self._burners: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Neighbour:
        self._burners = [
            subprocess.Popen([sys.executable, "-c", _BURN, str(self.seconds)]) for _ in range(self.processes)
        ]
        if self.niceness:  # a lower priority than this process's: no privilege needed
            lowered = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.niceness)
            for burner in self._burners:
                os.setpriority(os.PRIO_PROCESS, burner.pid, lowered)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every burner this neighbour started (by its process id) and wait for it."""
        for burner in self._burners:
            burner.terminate()
        for burner in self._burners:
            try:
                burner.wait(10)
            except subprocess.TimeoutExpired:
                burner.kill()
                burner.wait()
        self._burners = []

    def running(self) -> int:
        """How many burners are still running."""
        return sum(burner.poll() is None for burner in self._burners)


def main() -> None:
    args = parse_options(__doc__, seconds=60, processes=os.cpu_count() or 1, niceness=0)
    began = time.monotonic()
    with Neighbour(args.seconds, args.processes, args.niceness) as neighbour:
        lower = f", {args.niceness} steps of niceness below this process" if args.niceness else ""
        print(f"{neighbour.processes} busy processes for {args.seconds} s{lower}")
        try:
            while neighbour.running() and time.monotonic() - began < args.seconds + 1:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopped early")


if __name__ == "__main__":
    main()
