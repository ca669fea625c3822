"""scripts/main.sh in a home the main job already ran in: the drift demo, which needs a home its live week
never went through, stops at once with what to do, before it starts anything."""

import os
import subprocess
from pathlib import Path

import pytest

from fraud_platform.config import project_root
from fraud_platform.lib.redis_server import free_port

MAIN = project_root() / "scripts" / "main.sh"


def _main_job(home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """scripts/main.sh with `home` as its home, a free Redis port and none of the caller's platform settings."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("FRAUD_PLATFORM_")}
    environment = {"FRAUD_PLATFORM_HOME": str(home), "FRAUD_PLATFORM_REDIS_PORT": str(free_port()), **extra}
    return subprocess.run(
        ["bash", str(MAIN)], env={**inherited, **environment}, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("drifted_before", "drift_day", "said"),
    [
        (None, "last", ""),
        ("2026-05-30", "", " with GPS drift injected on 2026-05-30"),
    ],
)
def test_a_home_the_main_job_ran_in_refuses_a_drifted_week(
    tmp_path: Path, drifted_before: str | None, drift_day: str, said: str
) -> None:
    home = tmp_path / "home"
    (home / "recovery" / "main-job").mkdir(parents=True)
    if drifted_before:
        (home / "main-job-drifted-day").write_text(drifted_before + "\n")
    done = _main_job(home, DRIFT_DAY=drift_day)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"the main job already ran in {home}{said}, and its live week cannot be replayed" in done.stderr
    assert f"rm -rf {home}" in done.stderr
    assert "simulated" not in done.stdout and not (home / "redis" / "server.pid").exists()  # nothing started
