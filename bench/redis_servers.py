"""The bench's own redis-servers, and what every Redis of the bench says of its append-only-file rewrites.

A rewrite forks Redis (a stop of milliseconds), then its child takes a core for seconds: a run it overlaps
is slower for a reason that is not the code under test, so every run first waits for the rewrites of all
the bench's Redis servers to end, and says when one overlapped it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from processes import Server, free_port

# Every Redis of the bench's targets: a rewrite that one of them started after its own target's run must
# not take a core from the next run, whichever target that is.
_WATCHED: list[str] = []


def watch_rewrites(url: str) -> None:
    """Make every run wait for this Redis's rewrites to end (see wait_for_rewrites)."""
    _WATCHED.append(url)


def start_redis(
    work: Path,
    name: str,
    *,
    persistence: str = "everysec",
    unix: bool = False,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> tuple[Server, str]:
    """A private redis-server configured as the gateway configures its own: append-only file fsynced
    every second, no RDB snapshots. `persistence`: everysec, always, or none (no append-only file).
    Returns the server and its URL (a Unix socket's with `unix`, else TCP on loopback, on `port` if
    given). `extra`: more redis-server arguments."""
    data = work / f"{name}-data"
    data.mkdir(parents=True, exist_ok=True)
    args = ["redis-server", "--dir", str(data), "--save", "", "--daemonize", "no", "--logfile", ""]
    if persistence == "none":
        args += ["--appendonly", "no"]
    else:
        args += ["--appendonly", "yes", "--appendfsync", persistence, "--auto-aof-rewrite-min-size", "1gb"]
    if unix:
        sock = data / "redis.sock"
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        url = f"unix://{sock}"
    else:
        port = port or free_port()
        args += ["--port", str(port), "--bind", "127.0.0.1"]
        url = f"redis://127.0.0.1:{port}/0"
    server = Server(name, [*args, *extra], log=work / f"{name}.log")
    deadline = time.monotonic() + 15
    while not _answers_ping(url):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {server.log_tail()}")
        time.sleep(0.05)
    server.remember()
    watch_rewrites(url)
    return server, url


def _answers_ping(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@dataclass(frozen=True)
class RedisForks:
    """What a Redis says of its forks: an append-only-file rewrite (every --auto-aof-rewrite-min-size of
    writes) forks it, which stops it for milliseconds, then the child takes CPU for seconds."""

    forks: int
    last_fork_usec: int
    rewriting: bool  # a rewrite's child is running now


def redis_forks(url: str | None) -> RedisForks | None:
    """None if Redis cannot be asked."""
    if url is None:
        return None
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            info = client.info("all")
            return RedisForks(
                int(info["total_forks"]), int(info["latest_fork_usec"]), bool(info["aof_rewrite_in_progress"])
            )
    except (redis.RedisError, OSError, KeyError):
        return None


def _wait_for_rewrite(url: str, timeout: float = 120) -> float:
    """Wait until Redis is not rewriting its append-only file; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = redis_forks(url)
        if state is None or not state.rewriting:
            break
        time.sleep(0.2)
    return time.monotonic() - started


def wait_for_rewrites() -> float:
    """Wait until no watched Redis is rewriting its append-only file; returns the seconds waited."""
    return sum(_wait_for_rewrite(url) for url in _WATCHED)


@dataclass
class RedisNode:
    """One redis-server of the bench's: a cluster node or a single Redis."""

    name: str
    server: Server
    url: str  # redis://127.0.0.1:port/0

    @property
    def address(self) -> str:
        """host:port, or the URL of a Unix socket's."""
        if not self.url.startswith("redis://"):
            return self.url
        return self.url.removeprefix("redis://").split("/", 1)[0]

    def client(self, timeout: float = 5) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def role(self) -> str:
        """primary or replica, asked now (a failover changes it)."""
        with self.client() as client:
            role = client.execute_command("ROLE")[0]
        return "primary" if role in (b"master", "master") else "replica"
