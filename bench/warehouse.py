"""A prepared platform home for the batch benchmarks: history landed, loaded and refreshed.

Two data shapes: the platform's own simulator (`land_simulation`) and a user's file in a foreign shape, the
Fraud Detection Handbook's generator imported as a CSV with naive timestamps and integer ids
(`land_handbook_file`, through the same importer as `fraud-platform import`).
"""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from fraud_platform.config import Settings
from fraud_platform.lib import foreign_data
from fraud_platform.lib.importer import import_file, parse_column_map
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.simulator import SimulatedData, SimulationConfig, simulate
from fraud_platform.pipeline import instance_for, load_landing, run_job


def land_simulation(cards: int, days: int, seed: int = 42) -> Callable[[Settings], SimulatedData]:
    """A lander: `cards` x `days` of the platform's simulator into the landing zone."""

    def land(settings: Settings) -> SimulatedData:
        data = simulate(SimulationConfig(cards=cards, days=days, seed=seed))
        LandingZone(settings.landing_dir).write_batch(
            "bench", data.transactions, data.context(), source="bench"
        )
        return data

    return land


def land_handbook_file(cards: int, days: int, seed: int = 3) -> Callable[[Settings], None]:
    """A lander: the handbook-shaped CSV (`cards` customers, twice as many terminals) through the importer."""

    def land(settings: Settings) -> None:
        path = settings.home / "handbook.csv"
        foreign_data.write_csv(
            path, foreign_data.HandbookConfig(customers=cards, terminals=2 * cards, days=days, seed=seed)
        )
        import_file(
            path,
            LandingZone(settings.landing_dir),
            column_map=parse_column_map(
                [f"{source}={target}" for source, target in foreign_data.COLUMN_MAP.items()]
            ),
            label_column=foreign_data.LABEL_COLUMN,
            chargeback_date_column=foreign_data.CLAIM_COLUMN,
            reject_dir=settings.landing_dir / "rejects",
            default_currency="EUR",
            timezone="UTC",
        )

    return land


Landed = TypeVar("Landed")


@contextmanager
def prepared_home(home: Path, maturity: int, land: Callable[[Settings], Landed]) -> Iterator[Landed]:
    """Land history into `home` with `land`, load the warehouse and run the batch refresh (dbt, labels,
    real-time backfill, online load, with a local Redis server for the online load); yield what `land` gave.

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
        landed = land(settings)
        instance = instance_for(settings)
        if not load_landing(settings, instance).success:
            raise RuntimeError("loading the landed history into the warehouse failed")
        if not run_job(instance, "batch_refresh").success:  # dbt, labels, real-time backfill, online load
            raise RuntimeError("the batch refresh (dbt, backfill, online load) failed")
    finally:
        server.stop()
    yield landed
