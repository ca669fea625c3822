"""The scoring stream in the lineage: what the Bytewax flow produces, drawn between the model and raw/decisions.

The flow is a long-running process, not a Dagster step (`python -m bytewax.run
"bytewax_flows.scoring:build_flow()"`, or the main job's replays), so its outputs are external asset specs:
Dagster draws them and their dependencies (the champion in MLflow and the online batch features in Redis in,
the feature log the raw layer loads out) but never materialises them. This closes the loop in the asset graph:
landing -> raw -> features -> model -> stream -> feature log -> raw/decisions -> monitoring -> retraining.
"""

import dagster as dg

from fraud_platform.defs.training import MODEL_ASSET

GROUP = "stream"
FLOW_COMMAND = 'python -m bytewax.run "bytewax_flows.scoring:build_flow()" -s 1'
ONLINE_BATCH_FEATURES = dg.AssetKey(["online", "batch_features"])
CARD_REALTIME_STATE = dg.AssetKey(["stream", "card_realtime_features"])
DECISIONS_STREAM = dg.AssetKey(["stream", "decisions"])
FEATURE_LOG = dg.AssetKey(["stream", "feature_log"])
RAW_DECISIONS = dg.AssetKey(["raw", "decisions"])
_PRODUCER = f"Produced by the scoring flow ({FLOW_COMMAND}), which reads the champion model and the online batch features."
_STREAM_INPUTS = [MODEL_ASSET, ONLINE_BATCH_FEATURES]


def _flow_output(key: dg.AssetKey, store: str, what: str) -> dg.AssetSpec:
    """An output of the scoring flow kept in `store`, described by `what`."""
    return dg.AssetSpec(
        key,
        group_name=GROUP,
        kinds={"bytewax", store},
        deps=_STREAM_INPUTS,
        description=f"{what} {_PRODUCER}",
        metadata={"producer": dg.MetadataValue.text(FLOW_COMMAND)},
    )


STREAM_SPECS = [
    _flow_output(
        CARD_REALTIME_STATE,
        "redis",
        "Each card's real-time window features (counts and amounts over 1 h .. 90 d, velocity), kept in Redis "
        "by the flow as every transaction arrives.",
    ),
    _flow_output(
        DECISIONS_STREAM,
        "redis",
        "Approve / review / decline decisions with score, model version and top reasons, on the decisions "
        "stream (Redis or Kafka) and answered to the authorization API.",
    ),
    _flow_output(
        FEATURE_LOG,
        "parquet",
        "Feature log: every decision with the exact feature vector served to the model, written to the landing "
        "zone and loaded by `fraud-platform load` into raw/decisions.",
    ),
]


def with_stream_upstream(assets: list[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The raw assets with raw/decisions drawn downstream of the feature log (the flow writes what it loads)."""

    def add_feature_log(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key != RAW_DECISIONS:
            return spec
        return spec.replace_attributes(deps=[*spec.deps, dg.AssetDep(FEATURE_LOG)])

    return [
        assets_def.map_asset_specs(add_feature_log) if RAW_DECISIONS in assets_def.keys else assets_def
        for assets_def in assets
    ]
