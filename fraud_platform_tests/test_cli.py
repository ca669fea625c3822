"""The `fraud-platform` command line, in process (CliRunner) and end to end (real processes)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fraud_platform.cli import main
from fraud_platform.config import Settings
from fraud_platform.features.vector import MODEL_FEATURES
from fraud_platform.lib.bus import STREAM_SOURCE
from fraud_platform.lib.landing import LandingZone
from fraud_platform.lib.redis_server import LocalRedisServer, free_port
from fraud_platform.lib.schema import Transaction
from fraud_platform.scoring.decisions import decision_tables, write_decisions
from fraud_platform.scoring.scorer import APPROVE, DECLINE, REVIEW, Decision


def test_every_command_explains_itself() -> None:
    runner = CliRunner()
    for command in ([], ["simulate"], ["import"], ["load"], ["redis"], ["redis", "start"], ["env"], ["init"]):
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_command_summaries_are_whole_sentences_on_one_line() -> None:
    groups = [[], *([name] for name, command in main.commands.items() if isinstance(command, click.Group))]
    for group in groups:
        output = CliRunner().invoke(main, [*group, "--help"], terminal_width=80).output
        listing = [line for line in output.split("Commands:")[1].splitlines() if line.strip()]
        for line in listing:  # click cuts a long first docstring line with "..." and wraps a long short_help
            whole = re.fullmatch(r"  [a-z-]+ +[A-Z].*[.)]", line) and not line.endswith(("...", "e.g."))
            assert whole, f"fraud-platform {' '.join(group)}: {line!r}"


def test_bad_configuration_fails_at_start_naming_the_variable(platform_env: Settings) -> None:
    result = CliRunner().invoke(main, ["init"], env={"FRAUD_PLATFORM_REDIS_PORT": "not-a-port"})
    assert result.exit_code == 1
    assert "FRAUD_PLATFORM_REDIS_PORT='not-a-port': not a whole number" in result.output


def test_redis_lifecycle_through_the_cli(platform_env: Settings) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["redis", "status"]).exit_code == 1
    started = runner.invoke(main, ["redis", "start"])
    try:
        assert started.exit_code == 0, started.output
        status = runner.invoke(main, ["redis", "status"])
        assert status.exit_code == 0 and f"port {platform_env.redis_port}" in status.output
    finally:
        stopped = runner.invoke(main, ["redis", "stop"])
    assert stopped.output.strip() == "redis stopped"
    assert runner.invoke(main, ["redis", "status"]).exit_code == 1


def test_redis_commands_refuse_when_redis_url_points_elsewhere(platform_env: Settings) -> None:
    result = CliRunner().invoke(main, ["redis", "start"], env={"REDIS_URL": "redis://cache.internal:6379/0"})
    assert result.exit_code == 1
    assert "REDIS_URL is set" in result.output


def test_env_masks_passwords_unless_asked(platform_env: Settings) -> None:
    url = "redis://:s3cret-pw@10.1.2.3:6379/0"
    masked = CliRunner().invoke(main, ["env"], env={"REDIS_URL": url})
    assert masked.exit_code == 0, masked.output
    assert "s3cret-pw" not in masked.output
    assert (
        "# (password hidden: --show-secrets) export REDIS_URL='redis://:***@10.1.2.3:6379/0'" in masked.output
    )
    assert f"export FRAUD_PLATFORM_HOME={platform_env.home}" in masked.output
    shown = CliRunner().invoke(main, ["env", "--show-secrets"], env={"REDIS_URL": url})
    assert f"\nexport REDIS_URL={url}\n" in shown.output


def test_a_setting_with_stray_whitespace_is_refused(platform_env: Settings) -> None:
    result = CliRunner().invoke(main, ["env"], env={"FRAUD_PLATFORM_REDIS_PORT": " 6503"})
    assert result.exit_code == 1
    assert "FRAUD_PLATFORM_REDIS_PORT=' 6503': remove the leading or trailing whitespace" in result.output


def test_an_unreachable_redis_url_is_one_line_naming_it_without_password(platform_env: Settings) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    result = CliRunner().invoke(main, ["decisions"], env={"REDIS_URL": url})
    assert result.exit_code == 1 and "Traceback" not in result.output and "s3cret-pw" not in result.output
    assert result.output.startswith(f"Error: cannot reach REDIS_URL {url.replace('s3cret-pw', '***')} (")
    assert result.output.rstrip().endswith("check that the server runs there and that REDIS_URL is right")


def test_refresh_without_the_redis_server_ends_naming_it(platform_env: Settings, tmp_path: Path) -> None:
    env = {**os.environ, **platform_env.environment()}
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "fraud-platform"), "refresh"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 1
    last = (completed.stdout + completed.stderr).strip().splitlines()[-1]
    assert last == (
        f"Error: the local Redis server is not running (port {platform_env.redis_port}): start it with "
        "'fraud-platform redis start', or set REDIS_URL"
    )


def test_a_failed_run_ends_with_its_root_cause(
    platform_env: Settings, redis_server: LocalRedisServer
) -> None:
    result = CliRunner().invoke(main, ["online"], env={"REDIS_URL": redis_server.url})  # no warehouse yet
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert "failed; the whole run is in the Dagster UI (dagster dev)" in lines[-2]
    assert lines[-1].startswith("online__batch_features: Catalog Error: Table with name ")
    assert "Error occurred while executing op" not in lines[-1]


def test_import_command_timezone_rejects_and_nothing_new(platform_env: Settings, tmp_path: Path) -> None:
    header = "transaction_id,card_id,merchant_id,amount,currency,timestamp\n"
    naive = tmp_path / "naive.csv"
    naive.write_text(header + "t1,c1,m1,0,EUR,2026-01-01 10:00:00\nt2,c1,m1,5.5,EUR,2026-01-01 11:00:00\n")
    runner = CliRunner()
    refused = runner.invoke(main, ["import", str(naive)])
    assert refused.exit_code == 1 and "--timezone ZONE" in refused.output.strip().splitlines()[-1]
    done = runner.invoke(main, ["import", str(naive), "--timezone", "UTC"])
    assert done.exit_code == 0, done.output
    assert "2 rows loaded over 1 days, 0 rejected -> batch import-naive-csv-" in done.output
    again = runner.invoke(main, ["import", str(naive), "--timezone", "UTC", "--batch-id", "again"])
    assert again.exit_code == 0, again.output
    assert "nothing new in naive.csv: all 2 rows were landed before; no batch written" in again.output
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "u1,c1,m1,-1,EUR,2026-01-01T10:00:00Z\nu2,c1,m1,1_000,EUR,2026-01-01T10:00:00Z\n")
    rejected = runner.invoke(main, ["import", str(bad)])
    assert rejected.exit_code == 1
    lines = rejected.output.strip().splitlines()
    assert any(line.endswith("bad.csv: 2 of 2 rows rejected; by reason:") for line in lines)
    assert (
        "1  field 'amount' must be >= 0" in rejected.output
        and "row 2: field 'amount' must be a number" in rejected.output
    )
    assert lines[-1] == "nothing imported: every row rejected; fix the mapping or the file and import again"


def _run(arguments: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(arguments, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{arguments} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


@pytest.mark.slow
def test_simulate_load_and_dagster_cli_end_to_end(platform_env: Settings) -> None:
    """The main job's steps as real processes, then the dagster CLI materialises from the same code location."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    bin_dir = Path(sys.executable).parent
    cli = str(bin_dir / "fraud-platform")
    simulated = _run([cli, "simulate", "--cards", "200", "--days", "10", "--seed", "7"], env, root)
    assert "simulated" in simulated.stdout and "fraud" in simulated.stdout
    again = _run([cli, "simulate", "--cards", "200", "--days", "10", "--seed", "7"], env, root)
    assert "nothing to do" in again.stdout
    other = subprocess.run(
        [cli, "simulate", "--cards", "200", "--days", "10", "--seed", "8"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert other.returncode == 1 and "already holds the simulation" in other.stderr
    loaded = _run([cli, "load"], env, root)
    assert "raw/transactions" in loaded.stdout

    env["DAGSTER_HOME"] = str(platform_env.dagster_home)
    _run(
        [
            str(bin_dir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "fraud_platform.definitions",
            "--select",
            "raw/cards",
        ],
        env,
        root,
    )
    with duckdb.connect(str(platform_env.warehouse_path), read_only=True) as connection:
        (transactions,) = connection.execute("SELECT count(*) FROM raw.transactions").fetchone()
        (cards,) = connection.execute("SELECT count(*) FROM raw.cards").fetchone()
        (orphans,) = connection.execute(
            "SELECT count(*) FROM raw.transactions t ANTI JOIN raw.cards c USING (card_id)"
        ).fetchone()
    assert transactions > 200 * 10 * 0.5
    assert cards == 200
    assert orphans == 0


def test_ui_mlflow_serves_the_platforms_store_on_loopback_and_stops_on_ctrl_c(platform_env: Settings) -> None:
    port = free_port()
    cli = str(Path(sys.executable).parent / "fraud-platform")
    # Its own process group, as a terminal's foreground job: Ctrl-C (SIGINT) goes to the UI and its workers.
    ui = subprocess.Popen(
        [cli, "ui", "mlflow", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert ui.poll() is None, f"the UI exited at start:\n{ui.communicate()[0]}"
            assert time.monotonic() < deadline, "the MLflow UI did not answer /health"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
            data=b'{"max_results": 10}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["experiments"][0]["name"] == "Default"
        # The platform's store, not a ./mlflow.db in some working directory.
        assert Path(platform_env.mlflow_tracking_uri.removeprefix("sqlite:///")).is_file()
        # The UI and its server, not MLflow's job runner and its consumers (GenAI jobs the platform never has).
        running = _process_group(ui.pid)
        assert len(running) == 2 and not any("mlflow.server.jobs" in command for command in running), running
        os.killpg(ui.pid, signal.SIGINT)
        ui.wait(timeout=60)
        assert _process_group(ui.pid) == [], "Ctrl-C left processes of the UI running"
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()


def _process_group(group: int) -> list[str]:
    """The command lines of the processes in a process group."""
    found = subprocess.run(["pgrep", "-g", str(group), "-a"], capture_output=True, text=True, check=False)
    return found.stdout.splitlines()


def _decision(
    index: int, card: str, kind: str, score: float, reasons: dict[str, float] | None = None
) -> Decision:
    features = np.full(len(MODEL_FEATURES), np.nan, np.float32)
    for name, value in (reasons or {}).items():
        features[MODEL_FEATURES.index(name)] = value
    millis = 1_700_000_000_000 + index * 1_000
    return Decision(
        transaction_id=f"t{index}",
        card_id=card,
        score=score,
        decision=kind,
        reasons=tuple(reasons or ()),
        model_version="3",
        event_ms=millis,
        received_ms=millis,
        decision_ms=millis + 2,
        txn=Transaction(f"t{index}", card, "m1", 12.5, "EUR", millis),
        features=features,
    )


def test_decisions_as_a_table_filtered_and_as_json_lines(redis_server: LocalRedisServer) -> None:
    client = redis_server.client()
    client.flushdb()
    reasons = {"txn_count_1h": 7.0, "amount_to_mean_30d": np.nan}
    written = [
        _decision(0, "c1", DECLINE, 0.97, {"speed_kmh_from_prev_txn": 912.25}),
        _decision(1, "c2", REVIEW, 0.6, reasons),
        # More than one page of newer decisions: finding the review pages back through the stream.
        *(_decision(index, "c1" if index % 2 else "c3", APPROVE, 0.01) for index in range(2, 12_002)),
    ]
    write_decisions(client, written, marker_ttl_seconds=600)
    runner = CliRunner()
    env = {"REDIS_URL": redis_server.url}

    newest = runner.invoke(main, ["decisions", "--count", "2"], env=env)
    assert newest.exit_code == 0, newest.output
    header, *rows, metrics = newest.output.splitlines()
    assert header.split() == ["event", "time", "(UTC)", "transaction", "card", "amount", "decision", "score",
                              "top", "reasons", "(value)"]  # fmt: skip
    assert [row.split()[1] for row in rows] == ["t12000", "t12001"]  # oldest first
    assert rows[0].split()[0] == "2023-11-15T01:33:20Z"  # 1_700_000_000 s + 12,000 s, ISO-8601 UTC
    assert metrics == "no scoring metrics yet"

    review = runner.invoke(main, ["decisions", "--decision", "review", "--count", "5"], env=env)
    assert review.exit_code == 0, review.output
    (row,) = review.output.splitlines()[1:-1]
    assert row.split()[:3] == ["2023-11-14T22:13:21Z", "t1", "c2"]
    assert row.split()[3:7] == ["12.50", "EUR", "review", "0.600"]
    assert row.endswith("txn_count_1h=7, amount_to_mean_30d=missing")

    declined = runner.invoke(main, ["decisions", "--decision", "decline", "--card", "c1"], env=env)
    assert "speed_kmh_from_prev_txn=912.2" in declined.output

    as_json = runner.invoke(main, ["decisions", "--card", "c1", "--count", "3", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    lines = [json.loads(line) for line in as_json.output.splitlines()]
    assert [line["transaction_id"] for line in lines] == ["t11997", "t11999", "t12001"]
    assert {line["card_id"] for line in lines} == {"c1"} and lines[0]["event_time"] == 1_700_011_997_000
    assert (lines[0]["amount"], lines[0]["currency"]) == (12.5, "EUR")

    nothing = runner.invoke(main, ["decisions", "--card", "nobody"], env=env)
    assert nothing.output.splitlines()[0] == "no decisions matching the filters"
    wrong = runner.invoke(main, ["decisions", "--decision", "maybe"], env=env)
    assert wrong.exit_code == 2 and "'maybe' is not one of 'approve', 'review', 'decline'" in wrong.output


def test_the_decision_filter_offers_the_scorers_decisions() -> None:
    choices = next(param for param in main.commands["decisions"].params if param.name == "kind").type
    assert tuple(choices.choices) == (APPROVE, REVIEW, DECLINE)


def test_backfill_reads_the_feature_logs_transactions_once(platform_env: Settings, tmp_path: Path) -> None:
    zone = LandingZone(platform_env.landing_dir)
    simulated, _ = decision_tables([_decision(index, f"c{index % 3}", APPROVE, 0.01) for index in range(10)])
    zone.write_batch("simulated", simulated, source="simulator")
    # The stream logged t4..t9 (landed already) and t10, t11 (decided only by the stream, e.g. via the API).
    logged, decisions = decision_tables(
        [_decision(index, f"c{index % 3}", APPROVE, 0.01) for index in range(4, 12)]
    )
    zone.write_batch("stream-1", logged, {"decisions": decisions}, source=STREAM_SOURCE)

    out = tmp_path / "rt.parquet"
    result = CliRunner().invoke(main, ["features", "backfill", "--out", str(out), "--processes", "1"])
    assert result.exit_code == 0, result.output
    assert "backfilled 12 transactions in" in result.output
    assert "6 stream decisions in the feature log are landed transactions too: read once" in result.output
    assert "duplicate" not in result.output and "repeated" not in result.output
    assert sorted(pq.read_table(out).column("transaction_id").to_pylist()) == sorted(
        f"t{i}" for i in range(12)
    )
