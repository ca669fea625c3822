"""The code location as Dagster loads it: the closed loop drawn in the asset graph, named jobs for the CLI."""

import dagster as dg

from fraud_platform.config import Settings
from fraud_platform.definitions import defs
from fraud_platform.defs.stream import (
    CARD_REALTIME_STATE,
    DECISIONS_STREAM,
    FEATURE_LOG,
    FLOW_COMMAND,
    ONLINE_BATCH_FEATURES,
    RAW_DECISIONS,
)
from fraud_platform.defs.training import CHALLENGE_CHECK, MODEL_ASSET, QUALITY_CHECK

STREAM = (CARD_REALTIME_STATE, DECISIONS_STREAM, FEATURE_LOG)


def test_the_stream_sits_between_the_model_and_raw_decisions(platform_env: Settings) -> None:
    graph = defs().resolve_asset_graph()
    for key in STREAM:
        node = graph.get(key)
        assert node.parent_keys == {MODEL_ASSET, ONLINE_BATCH_FEATURES}, key
        assert not node.is_executable  # drawn, produced by the Bytewax flow, never materialised by Dagster
        assert node.kinds >= {"bytewax"}
        assert FLOW_COMMAND in node.description
    assert graph.get(RAW_DECISIONS).parent_keys == {FEATURE_LOG}
    # The loop: raw/decisions feeds monitoring, whose failures retrain the model the stream serves.
    assert dg.AssetKey(["monitoring", "drift"]) in graph.get(RAW_DECISIONS).child_keys
    assert {key for key in STREAM if key in graph.get(MODEL_ASSET).child_keys} == set(STREAM)
    assert set(STREAM) <= graph.get(ONLINE_BATCH_FEATURES).child_keys


def test_the_cli_runs_named_jobs(platform_env: Settings) -> None:
    definitions = defs()
    for name in ("load_landing", "batch_refresh", "load_online", "train_model", "monitor"):
        job = definitions.resolve_job_def(name)
        assert job.name == name
        assert not job.name.startswith("__")
    assert definitions.resolve_job_def("load_online").asset_layer.executable_asset_keys == {
        ONLINE_BATCH_FEATURES
    }


def test_the_model_has_quality_checks(platform_env: Settings) -> None:
    checks = defs().resolve_asset_graph().get_check_keys_for_assets({MODEL_ASSET})
    assert {key.name for key in checks} == {QUALITY_CHECK, CHALLENGE_CHECK}
