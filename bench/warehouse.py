"""A prepared platform home for the batch benchmarks: simulated history landed, loaded and refreshed."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fraud_platform.config import Settings
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.simulator import SimulatedData, SimulationConfig, simulate
from fraud_platform.pipeline import instance_for, load_landing, run_job


@contextmanager
def prepared_home(
    home: Path, cards: int, days: int, maturity: int, seed: int = 42
) -> Iterator[SimulatedData]:
    """Simulate `cards` x `days` into `home`, load the warehouse and run the batch refresh (dbt, labels,
    real-time backfill, online load, with a local Redis server for the online load); yield the simulation.

    The environment points at `home` for as long as the context is open."""
    server = LocalRedisServer(home / "redis", free_port())
    server.start()
    try:
        os.environ.update(
            {
                "FRAUD_PLATFORM_HOME": str(home),
                "FRAUD_PLATFORM_LABEL_MATURITY_DAYS": str(maturity),
                "REDIS_URL": server.url,
            }
        )
        settings = Settings.from_env()
        data = simulate(SimulationConfig(cards=cards, days=days, seed=seed))
        LandingZone(settings.landing_dir).write_batch(
            "bench", data.transactions, data.context(), source="bench"
        )
        instance = instance_for(settings)
        if not load_landing(settings, instance).success:
            raise RuntimeError("loading the simulated history into the warehouse failed")
        if not run_job(instance, "batch_refresh").success:  # dbt, labels, real-time backfill, online load
            raise RuntimeError("the batch refresh (dbt, backfill, online load) failed")
    finally:
        server.stop()
    yield data
