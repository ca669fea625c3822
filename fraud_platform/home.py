"""The project home on disk: its directories and DAGSTER_HOME's dagster.yaml (no heavy imports: `init` is cheap)."""

from fraud_platform.config import Settings

DAGSTER_YAML = """\
# Written by `fraud-platform init`. Local instance: sqlite storage in this directory.
telemetry:
  enabled: false
concurrency:
  runs:
    # DuckDB allows one writing process per warehouse file.
    max_concurrent_runs: 1
"""


def prepare_home(settings: Settings) -> None:
    """Create the project home, the landing zone and DAGSTER_HOME with its dagster.yaml (idempotent)."""
    for directory in (settings.home, settings.landing_dir, settings.dagster_home, settings.redis_dir):
        directory.mkdir(parents=True, exist_ok=True)
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    dagster_yaml = settings.dagster_home / "dagster.yaml"
    if not dagster_yaml.exists():
        dagster_yaml.write_text(DAGSTER_YAML)
