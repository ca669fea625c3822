"""A user's own data in a foreign shape (integer ids, naive timestamps, no coordinates or channel, other fraud
patterns): imported, loaded, refreshed and trained on the user's windows, end to end through the CLI."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fraud_platform.cli import main
from fraud_platform.config import Settings
from fraud_platform.lib import foreign_data
from fraud_platform.lib.redis_server import LocalRedisServer

CONFIG = foreign_data.HandbookConfig(customers=400, terminals=800, days=70)


def test_the_generated_file_has_the_foreign_shape(tmp_path: Path) -> None:
    frame = foreign_data.write_csv(tmp_path / "tx.csv", foreign_data.HandbookConfig(customers=100, days=10))
    header = (tmp_path / "tx.csv").read_text().splitlines()[0].split(",")
    assert header == [
        "TRANSACTION_ID",
        "TX_DATETIME",
        "CUSTOMER_ID",
        "TERMINAL_ID",
        "TX_AMOUNT",
        "TX_FRAUD",
        "CLAIM_DATE",
    ]
    assert frame["TX_DATETIME"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()  # naive: no zone
    assert frame.loc[frame["TX_AMOUNT"] > 220, "TX_FRAUD"].eq(1).all()  # scenario 1
    frauds = frame[frame["TX_FRAUD"] == 1]
    assert len(frauds) and (frauds["CLAIM_DATE"] > frauds["TX_DATETIME"].str[:10]).all()


@pytest.mark.slow
def test_import_load_refresh_train_and_evaluate_the_foreign_shape(
    platform_env: Settings, redis_server: LocalRedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("FRAUD_PLATFORM_LABEL_MATURITY_DAYS", "30")
    path = platform_env.home / "handbook.csv"
    platform_env.home.mkdir(parents=True, exist_ok=True)
    foreign_data.write_csv(path, CONFIG)
    runner = CliRunner()
    arguments = foreign_data.import_arguments(path)
    refused = runner.invoke(main, arguments[: arguments.index("--timezone")])
    assert refused.exit_code != 0 and "--timezone" in refused.output  # naive timestamps need a zone
    for command in (arguments, ["load"], ["refresh"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 0, (command, result.output)
    trained = runner.invoke(
        main,
        [
            "train",
            *("--train-from", "2026-01-08", "--train-to", "2026-01-28"),
            *("--test-from", "2026-02-01", "--test-to", "2026-02-07", "--search-trials", "2"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "train 2026-01-08 .. " in trained.output and "test 2026-02-01 .. 2026-02-07" in trained.output
    evaluated = runner.invoke(
        main,
        ["evaluate", "--model-version", "champion", "--from", "2026-02-01", "--to", "2026-02-07", "--json"],
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    # The terminal scenario is learnable from the lagged short-window merchant risk: far better than chance.
    assert metrics["roc_auc"] > 0.75 and metrics["frauds"] > 20
