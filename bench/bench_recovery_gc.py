"""What Bytewax's recovery store costs per snapshot as the number of stored card keys grows.

    python -m bench.bench_recovery_gc [--keys 20000 100000 1000000 --touched 1000 --commits 5]

With recovery on, each card is one key in the recovery partition's `snaps` table, and every commit runs
Bytewax's garbage collection over that table: a GROUP BY over every stored key for its newest snapshot, then a
DELETE of the older ones (the statement below is Bytewax 0.21.1's, as compiled into its extension module; the
table is the one `python -m bytewax.recovery` creates). The worker holding the partition runs it between
epochs, so its cost is a pause of the flow (the scoring flow's pauses under `-s 1` grow with it). This fills
a partition made by `bytewax.recovery` with `--keys` cards of one 300-byte snapshot each, then times
`--commits` rounds of a snapshot of `--touched` cards and the collection, as a flow at 1,000 tx/s with `-s 1`
would; results to bench/results/recovery_gc.json.
"""

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import parse_options, write_study

STEP_ID = "scoring.card_features"
INSERT = "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)"
BYTEWAX_GC = """
WITH max_epoch_snapshots AS (
    SELECT step_id, state_key, MAX(snap_epoch) AS snap_epoch FROM snaps WHERE snap_epoch <= ?1
    GROUP BY step_id, state_key
),
garbage_snapshots AS (
    SELECT step_id, state_key, snaps.snap_epoch FROM snaps JOIN max_epoch_snapshots USING (step_id, state_key)
    WHERE snaps.snap_epoch < max_epoch_snapshots.snap_epoch
)
DELETE FROM snaps WHERE (step_id, state_key, snap_epoch) IN garbage_snapshots
"""


def collection_ms(partition: Path, keys: int, touched: int, commits: int) -> list[float]:
    """Milliseconds of each commit's garbage collection over a partition holding `keys` card snapshots."""
    state = os.urandom(300)
    with sqlite3.connect(partition) as connection:
        connection.executemany(INSERT, ((STEP_ID, f"card-{key:09d}", 1, state) for key in range(keys)))
        connection.commit()
        times = []
        for epoch in range(2, commits + 2):
            first = epoch * touched
            cards = {(first + offset) % keys for offset in range(touched)}  # at most every stored card
            connection.executemany(INSERT, ((STEP_ID, f"card-{card:09d}", epoch, state) for card in cards))
            connection.commit()
            began = time.perf_counter()
            connection.execute(BYTEWAX_GC, (epoch - 1,))
            connection.commit()
            times.append(round((time.perf_counter() - began) * 1000, 1))
    return times


def main() -> None:
    """Time the collection for each key count, print and save it."""
    arguments = parse_options(__doc__, keys=[20_000, 100_000, 1_000_000], touched=1_000, commits=5)
    began_load = os.getloadavg()
    result: dict[str, object] = {}
    for keys in arguments.keys:
        with tempfile.TemporaryDirectory() as directory:
            subprocess.run([sys.executable, "-m", "bytewax.recovery", directory, "1"], check=True)
            times = collection_ms(
                Path(directory) / "part-0.sqlite3", keys, arguments.touched, arguments.commits
            )
        result[str(keys)] = {"collection_ms": times, "us_per_stored_key": round(1000 * min(times) / keys, 2)}
        print(f"{keys:>10,} stored keys: collection per commit {times} ms")
    write_study("recovery_gc", arguments, result, began_load)


if __name__ == "__main__":
    main()
