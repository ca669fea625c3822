"""Batch features and labels: the dbt project loaded as assets, one asset per model, dbt tests as checks.

`dbt build` runs in the warehouse the `warehouse` resource names. The labels model's materialisation carries
how many labels are known and how many matured since its previous materialisation; the retrain sensor reads it.
"""

import os
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from dagster_duckdb import DuckDBResource

from fraud_platform.config import WAREHOUSE_VAR, project_root

LABELS_ASSET = dg.AssetKey(["transaction_labels"])


@cache
def dbt_project() -> DbtProject:
    """The dbt project beside the package; its manifest is built by `dbt parse` in scripts/setup.sh."""
    project_dir = project_root() / "dbt_project"
    project = DbtProject(project_dir=project_dir, profiles_dir=project_dir)
    if not Path(project.manifest_path).is_file():
        raise FileNotFoundError(
            f"dbt manifest {project.manifest_path} is missing: run scripts/setup.sh "
            "(or `cd dbt_project && dbt parse`) before loading the definitions"
        )
    return project


class PlatformDbtTranslator(DagsterDbtTranslator):
    """Sources map to the raw assets (`raw/<table>`); models keep their names; groups come from dbt meta."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        """raw/<table> for sources, the model name otherwise."""
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        return super().get_asset_key(dbt_resource_props)


def label_summary(warehouse: DuckDBResource, previous_known: int | None) -> dict[str, dg.MetadataValue]:
    """Counts of fraud, genuine and unknown labels, and how many matured since the previous materialisation."""
    with warehouse.get_connection() as connection:
        fraud, genuine, unknown, as_of = connection.execute(
            "SELECT count(*) FILTER (WHERE label = 1), count(*) FILTER (WHERE label = 0), "
            "count(*) FILTER (WHERE label IS NULL), max(labels_as_of) FROM transaction_labels"
        ).fetchone()
    known = int(fraud + genuine)
    return {
        "labels_known": dg.MetadataValue.int(known),
        "labels_fraud": dg.MetadataValue.int(int(fraud)),
        "labels_genuine": dg.MetadataValue.int(int(genuine)),
        "labels_unknown": dg.MetadataValue.int(int(unknown)),
        "labels_new_since_previous": dg.MetadataValue.int(known - (previous_known or 0)),
        "labels_as_of": dg.MetadataValue.text(str(as_of)),
    }


def _previous_known_labels(context: dg.AssetExecutionContext) -> int | None:
    event = context.instance.get_latest_materialization_event(LABELS_ASSET)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("labels_known")
    return int(value.value) if value is not None else None


def build_dbt_assets() -> dg.AssetsDefinition:
    """The @dbt_assets definition over the project's manifest."""

    @dbt_assets(manifest=dbt_project().manifest_path, dagster_dbt_translator=PlatformDbtTranslator())
    def dbt_models(
        context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: DuckDBResource
    ) -> Iterator[Any]:
        """`dbt build` of the selected models and their tests, in the configured warehouse."""
        os.environ[WAREHOUSE_VAR] = warehouse.database  # profiles.yml reads it
        previous_known = _previous_known_labels(context)
        for event in dbt.cli(["build"], context=context).stream():
            if (
                isinstance(event, dg.Output)
                and context.asset_key_for_output(event.output_name) == LABELS_ASSET
            ):
                event = event.with_metadata({**event.metadata, **label_summary(warehouse, previous_known)})
            yield event

    return dbt_models
