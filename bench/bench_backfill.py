"""Benchmark: the offline backfill of the real-time features over about a million transactions.

    python -m bench.bench_backfill [--cards 20000 --days 30 --seed 42 --processes 1 2]

Simulates the history (not timed), then times `backfill` with each number of worker processes, in
alternation (two rounds), so that noise from other work on the machine hits every setting alike.
"""

import time

from bench.common import parse_options, write_result
from fraud_platform.features.backfill import backfill
from fraud_platform.lib.simulator import SimulationConfig, simulate

ROUNDS = 2


def run(cards: int, days: int, seed: int, processes: list[int]) -> dict[str, object]:
    """Seconds and transactions/s of the backfill per number of processes (best and all rounds)."""
    transactions = simulate(SimulationConfig(cards=cards, days=days, seed=seed)).transactions
    timings: dict[int, list[float]] = {count: [] for count in processes}
    for _ in range(ROUNDS):
        for count in processes:
            began = time.perf_counter()
            result = backfill(transactions, processes=count)
            timings[count].append(time.perf_counter() - began)
            assert result.num_rows == transactions.num_rows
    rows = transactions.num_rows
    return {
        "config": {"cards": cards, "days": days, "seed": seed, "rounds": ROUNDS},
        "transactions": rows,
        "by_processes": {
            str(count): {
                "seconds": [round(seconds, 3) for seconds in runs],
                "best_tx_per_second": round(rows / min(runs)),
            }
            for count, runs in timings.items()
        },
    }


def main() -> None:
    """Parse the arguments, run, print and save the result."""
    arguments = parse_options(__doc__, cards=20_000, days=30, seed=42, processes=[1, 2])
    result = run(arguments.cards, arguments.days, arguments.seed, arguments.processes)
    print(f"transactions {result['transactions']:,}")
    for count, timing in result["by_processes"].items():  # type: ignore[union-attr]
        print(f"{count} process(es): {timing['seconds']} s, best {timing['best_tx_per_second']:,} tx/s")
    write_result("backfill", result)


if __name__ == "__main__":
    main()
