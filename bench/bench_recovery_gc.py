"""What Bytewax's recovery store costs per snapshot as the number of stored card keys grows.

    python -m bench.bench_recovery_gc [--keys 20000 100000 1000000 --touched 1000 --commits 5]

With recovery on, each card is one key in the recovery partition's `snaps` table, and every commit runs
Bytewax's garbage collection over that table: a GROUP BY over every stored key for its newest snapshot, then a
DELETE of the older ones (the statement below is Bytewax 0.21.1's, as compiled into its extension module; the
table is the one `python -m bytewax.recovery` creates). The worker holding the partition runs it between
epochs, so its cost is a pause of the flow (the scoring flow's pauses under `-s 1` grow with it). This fills
a partition made by `bytewax.recovery` with `--keys` cards of one 300-byte snapshot each, then times
`--commits` rounds of a snapshot of `--touched` cards and the collection, as a flow at 1,000 tx/s with `-s 1`
would. For comparison, the same rounds on a store keyed by card (one row per card, replaced in place: what a
flow holding its card states outside Bytewax could keep), where a snapshot's cost should not grow with the
cards held. Results to bench/results/recovery_gc.json.
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
INSERT = f"INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES ('{STEP_ID}', ?, ?, ?)"
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


KEYED_STORE = "CREATE TABLE cards (card_id TEXT PRIMARY KEY, snap_epoch INTEGER, state BLOB) WITHOUT ROWID"
KEYED_UPSERT = "INSERT OR REPLACE INTO cards (card_id, snap_epoch, state) VALUES (?, ?, ?)"


def commit_ms(
    connection: sqlite3.Connection, write: str, collect: str | None, keys: int, touched: int, commits: int
) -> dict[str, list[float]]:
    """Milliseconds of each commit's write of `touched` card snapshots (`write`: one row per card, with the
    epoch) and of its collection (`collect`, given the previous epoch; None: none), over `keys` stored cards."""
    state = os.urandom(300)
    connection.executemany(write, ((f"card-{key:09d}", 1, state) for key in range(keys)))
    connection.commit()
    times: dict[str, list[float]] = {"write_ms": [], "collection_ms": []}
    for epoch in range(2, commits + 2):
        first = epoch * touched
        cards = {(first + offset) % keys for offset in range(touched)}  # at most every stored card
        began = time.perf_counter()
        connection.executemany(write, ((f"card-{card:09d}", epoch, state) for card in cards))
        connection.commit()
        times["write_ms"].append(round((time.perf_counter() - began) * 1000, 1))
        if collect is not None:
            began = time.perf_counter()
            connection.execute(collect, (epoch - 1,))
            connection.commit()
            times["collection_ms"].append(round((time.perf_counter() - began) * 1000, 1))
    return times


def main() -> None:
    """Time the collection for each key count, print and save it."""
    arguments = parse_options(__doc__, keys=[20_000, 100_000, 1_000_000], touched=1_000, commits=5)
    began_load = os.getloadavg()
    result: dict[str, object] = {}
    for keys in arguments.keys:
        with tempfile.TemporaryDirectory() as directory:
            subprocess.run([sys.executable, "-m", "bytewax.recovery", directory, "1"], check=True)
            with sqlite3.connect(Path(directory) / "part-0.sqlite3") as connection:
                bytewax = commit_ms(
                    connection, INSERT, BYTEWAX_GC, keys, arguments.touched, arguments.commits
                )
            with sqlite3.connect(Path(directory) / "cards.sqlite3") as connection:
                connection.execute(KEYED_STORE)
                keyed = commit_ms(connection, KEYED_UPSERT, None, keys, arguments.touched, arguments.commits)
        collection = bytewax["collection_ms"]
        result[str(keys)] = {
            "bytewax": bytewax,
            "us_per_stored_key": round(1000 * min(collection) / keys, 2),
            "keyed_store": {"write_ms": keyed["write_ms"]},
        }
        print(
            f"{keys:>10,} stored keys: Bytewax's store write {bytewax['write_ms']} + collection {collection} ms; "
            f"a store keyed by card: write {keyed['write_ms']} ms per commit"
        )
    write_study("recovery_gc", arguments, result, began_load)


if __name__ == "__main__":
    main()
