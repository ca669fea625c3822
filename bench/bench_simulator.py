"""Benchmark: simulate about a million transactions and land them, timing each step separately.

    python bench/bench_simulator.py [--cards 20000 --days 30 --seed 42]

Runs in the project's environment (editable install; otherwise prefix `PYTHONPATH=.`). Prints the numbers
and writes them with the machine's description to bench/results/simulator.json.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

from bench.common import parse_options, write_result
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.simulator import SimulationConfig, simulate


def run(config: SimulationConfig) -> dict[str, object]:
    """Time `simulate` and the landing write of its output; return the measurements."""
    started = time.perf_counter()
    data = simulate(config)
    simulate_seconds = time.perf_counter() - started
    transactions = data.transactions.num_rows
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        LandingZone(Path(directory)).write_batch(
            "bench", data.transactions, data.context(), source="simulator", parameters={"seed": config.seed}
        )
        landing_seconds = time.perf_counter() - started
    fraud = data.fraud_truth.filter(data.fraud_truth.column("is_fraud"))
    scenarios = pc.value_counts(fraud.column("scenario")).to_pylist()
    return {
        "config": {"cards": config.cards, "days": config.days, "seed": config.seed},
        "transactions": transactions,
        "fraud_rate": fraud.num_rows / transactions,
        "fraud_by_scenario": {item["values"]: item["counts"] for item in scenarios},
        "chargebacks": data.chargebacks.num_rows,
        "investigations": data.investigations.num_rows,
        "simulate_seconds": round(simulate_seconds, 3),
        "simulate_tx_per_second": round(transactions / simulate_seconds),
        "landing_seconds": round(landing_seconds, 3),
        "landing_tx_per_second": round(transactions / landing_seconds),
        "total_seconds": round(simulate_seconds + landing_seconds, 3),
    }


def main() -> None:
    """Parse the arguments, run the benchmark, print and save the result."""
    arguments = parse_options(__doc__, cards=20_000, days=30, seed=42)
    result = run(SimulationConfig(cards=arguments.cards, days=arguments.days, seed=arguments.seed))
    print(f"transactions        {result['transactions']:>12,}   fraud rate {result['fraud_rate']:.2%}")
    print(
        f"simulate            {result['simulate_seconds']:>10.2f} s   {result['simulate_tx_per_second']:>12,} tx/s"
    )
    print(
        f"landing write       {result['landing_seconds']:>10.2f} s   {result['landing_tx_per_second']:>12,} tx/s"
    )
    print(f"total               {result['total_seconds']:>10.2f} s")
    write_result("simulator", result)


if __name__ == "__main__":
    main()
