"""The servers under test: the gateway, the ceiling (bench/ceiling_app.py) and the peer (bench/peer_app.py),
each started on a free loopback port and stopped with everything it started."""

from __future__ import annotations

import argparse
import os
import re
import sys
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

from processes import Server, free_port
from redis_servers import start_redis, watch_rewrites
from trackgate import settings as tg_settings
from trackgate.settings import Settings

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TRACKGATE = str(BIN / "trackgate")

# The gateway keeps each partition's stream to about this many entries in the benchmark, so a long run
# cannot fill memory; the peer keeps its one stream to as many as the gateway holds with 16 partitions.
STREAM_MAXLEN = 100_000
PEER_STREAM_MAXLEN = 16 * STREAM_MAXLEN


@dataclass
class GranianSettings:
    """The Granian runtime settings of the gateway, which the ceiling copies."""

    workers: int
    runtime_threads: int
    runtime_mode: str
    event_loop: str
    task_impl: str
    backpressure: int


def gateway_settings(workers: int | None, gateway_args: list[str]) -> Settings:
    """What `trackgate serve [--workers N] <gateway_args>` runs with: its defaults, TRACKGATE_* variables
    and the flags, read by trackgate's own settings module and its own flags."""
    parser = argparse.ArgumentParser(add_help=False)
    tg_settings.add_arguments(parser)
    known, _ = parser.parse_known_args(gateway_args)
    if workers is not None:
        known.workers = workers
    return tg_settings.build(known)


def gateway_granian_settings(workers: int | None, gateway_args: list[str]) -> GranianSettings:
    """The Granian part of `gateway_settings`."""
    config = gateway_settings(workers, gateway_args)
    return GranianSettings(**{f.name: getattr(config, f.name) for f in fields(GranianSettings)})


@dataclass
class Target:
    """A running server under test."""

    name: str
    base: str
    server: Server
    redis: Server | None = None  # a redis-server the bench started for it (the peer's)
    token: str = ""
    redis_url: str | None = None  # the Redis it writes to, when the bench knows it (one server's URL)
    redis_nodes: tuple[Server, ...] = ()  # the redis-servers of a cluster it writes to, stopped with it

    def split_pids(self) -> tuple[list[int], list[int]]:
        """(the server's own processes, those of the Redis servers it writes to)."""
        own, redis = self.server.split_pids()
        for server in (self.redis, *self.redis_nodes):
            if server is not None:
                redis += server.pids()
        return own, redis

    def stop(self) -> None:
        self.server.stop()
        for server in (self.redis, *self.redis_nodes):
            if server is not None:
                server.stop()


def start_gateway(
    work: Path,
    workers: int | None,
    gateway_args: list[str],
    name: str = "gateway",
    *,
    persistence: str | None = None,
) -> Target:
    """`trackgate serve --demo` with its private Redis (unless gateway_args has --redis-url); workers:
    None for the gateway's own default. With `persistence` (everysec, always, none) it runs on a
    redis-server of the bench's own so configured instead, counted and stopped with it."""
    redis: Server | None = None
    url: str | None = None
    if persistence is not None:
        redis, url = start_redis(work, f"{name}-redis", persistence=persistence, unix=True)
        gateway_args = [*gateway_args, "--redis-url", url]
    port = free_port()
    args = [
        TRACKGATE, "serve", "--demo", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(work / f"{name}-data"), "--log-level", "warning",
        "--stream-maxlen", str(STREAM_MAXLEN),
    ]  # fmt: skip
    if workers is not None:
        args += ["--workers", str(workers)]
    try:
        server = Server(name, [*args, *gateway_args], log=work / f"{name}.log")
        base = f"http://127.0.0.1:{port}"
        server.wait_ready(base + "/readyz")
        found = re.search(r"^token: (\S+)$", server.log.read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"the gateway did not print the demo token: {server.log_tail()}")
    except BaseException:
        if redis is not None:
            redis.stop()
        raise
    if redis is None:
        # The private redis-server's socket, unless the data directory's path was too long for one.
        sock = work / f"{name}-data" / "redis.sock"
        url = f"unix://{sock}" if sock.is_socket() else None
        if url is not None:
            watch_rewrites(url)
    return Target(name, base, server, redis=redis, token=found.group(1), redis_url=url)


def demo_reports(target: Target) -> tuple[str, tuple[str, str]]:
    """The base URL of a gateway's reports process, once it answers, and the demo project's API secret
    as HTTP Basic credentials: a gateway prints them when it created the demo project."""
    log = target.server.log.read_text()
    secret = re.search(r"^secret: (\S+)", log, re.MULTILINE)
    port = re.search(r"^dashboard: http://[^:]+:(\d+)/", log, re.MULTILINE)
    if secret is None or port is None:
        raise RuntimeError(f"the gateway did not print the demo secret and dashboard: {log[-2000:]}")
    reports = f"http://127.0.0.1:{port.group(1)}"
    target.server.wait_ready(reports + "/healthz")
    return reports, (secret.group(1), "")


def start_ceiling(work: Path, granian: GranianSettings) -> Target:
    port = free_port()
    args = [
        str(BIN / "granian"), "--interface", "rsgi", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(granian.workers), "--runtime-threads", str(granian.runtime_threads),
        "--runtime-mode", granian.runtime_mode, "--loop", granian.event_loop,
        "--task-impl", granian.task_impl,
        "--no-ws", "--log-level", "warning",
    ]  # fmt: skip
    if granian.backpressure:
        args += ["--backpressure", str(granian.backpressure)]
    server = Server("ceiling", [*args, "ceiling_app:app"], log=work / "ceiling.log", cwd=HERE)
    base = f"http://127.0.0.1:{port}"
    server.wait_ready(base + "/")
    return Target("ceiling", base, server)


def start_peer(work: Path, workers: int, token: str) -> Target:
    redis_server, url = start_redis(work, "peer-redis")
    port = free_port()
    env = {
        **os.environ,
        "PEER_REDIS_URL": url,
        "PEER_TOKENS": token,
        "PEER_STREAM_MAXLEN": str(PEER_STREAM_MAXLEN),
    }
    args = [
        str(BIN / "python"), "-m", "uvicorn", "peer_app:app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    if workers > 1:
        args += ["--workers", str(workers)]
    try:
        server = Server("peer", args, log=work / "peer.log", cwd=HERE, env=env)
        base = f"http://127.0.0.1:{port}"
        server.wait_ready(base + "/healthz")
    except BaseException:
        redis_server.stop()
        raise
    return Target("peer", base, server, redis=redis_server, token=token, redis_url=url)


def gateway_metric(target: Target, name: str) -> float | None:
    """An unlabelled sample of the gateway's /metrics (`trackgate_flush_events_sum`), None if it cannot be
    read."""
    try:
        with urllib.request.urlopen(target.base + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = re.search(rf"^{re.escape(name)}(?:\{{\}})? ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def gateway_stored_events(target: Target) -> float | None:
    """trackgate_events_stored_total from the gateway's /metrics, None if it cannot be read."""
    return gateway_metric(target, "trackgate_events_stored_total")
