"""`trackgate serve`: the private Redis if needed, the ingestion workers and the reports process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, cast

import msgspec
from redis.asyncio import Redis

from trackgate import projects, redis_target, settings, store
from trackgate.cli.logs import logging_config
from trackgate.cli.redis_access import usable_data_dir
from trackgate.embedded import DataDirLock, EmbeddedRedis

log = logging.getLogger("trackgate")


def serve(args: argparse.Namespace) -> int:
    config = settings.build(args)
    logging.config.dictConfig(logging_config(config.log_level))
    _check_port(config.host, config.port)
    _check_port(config.host, config.reports_listen_port)
    data_dir = usable_data_dir(config)
    lock = DataDirLock(data_dir)
    if not lock.try_acquire():
        raise settings.SettingsError(f"another trackgate serve uses {data_dir}; give this one --data-dir")
    embedded: EmbeddedRedis | None = None
    try:
        if config.redis_url is None:
            embedded = EmbeddedRedis(data_dir)
            config = msgspec.structs.replace(config, redis_url=embedded.start())
            log.info("Redis: private redis-server, data in %s", data_dir)
        assert config.redis_url is not None
        demo = asyncio.run(_prepare(config.redis_url, demo=args.demo))
        _prepare_metrics(data_dir / "metrics")
        os.environ.update(settings.to_worker_environment(config))
        if demo is not None:
            _print_demo(config, *demo)
        reports = multiprocessing.get_context("spawn").Process(
            target=serve_reports, args=(config, os.getpid()), name="trackgate-reports"
        )
        reports.start()
        try:
            _granian(config, "trackgate.http:app", config.port, config.workers).serve()
        finally:
            reports.terminate()
            reports.join()
    finally:
        if embedded is not None:
            embedded.stop()
            log.info("Redis stopped")
        lock.release()
    return 0


def _check_port(host: str, port: int) -> None:
    """Refuse a port already listened on. Granian listens with SO_REUSEPORT, so a second gateway on the
    port would start without a word and take part of the first one's traffic (to its own Redis); a
    socket without that option cannot bind beside a listener. SO_REUSEADDR lets a restart bind while
    the last run's connections linger in TIME_WAIT."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        reason = err.strerror or err
        raise settings.SettingsError(f"cannot listen on {host} port {port}: {reason}") from None


async def _prepare(redis_url: str, *, demo: bool) -> tuple[projects.Project, str | None] | None:
    """Before workers start: the current function library, and the demo project (with its secret when it
    was created just now) if asked for."""
    target = redis_target.parse(redis_url)
    async with cast(Redis, redis_target.client(target, timeout=5, connect_timeout=5)) as client:
        await store.load_functions(client, replace=True)
        if not demo:
            return None
        project = await projects.find_by_name(client, "demo")
        if project is not None:
            return project, None
        return await projects.create_project(client, "demo")


def _prepare_metrics(directory: Path) -> None:
    # Files of an earlier run would be summed into this one's numbers.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[settings.METRICS_DIR_VAR] = str(directory)


def _print_demo(config: settings.Settings, project: projects.Project, secret: str | None) -> None:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host  # noqa: S104
    data = f'{{"event":"hello","properties":{{"token":"{project.token}","distinct_id":"demo-user"}}}}'
    lines = ["demo project", f"token: {project.token}"]
    if secret is not None:
        lines.append(f"secret: {secret}   (shown once)")
    lines += [
        "send an event:",
        f"  curl -s 'http://{host}:{config.port}/track?verbose=1' --data-urlencode 'data={data}'",
        f"dashboard: http://{host}:{config.reports_listen_port}/dashboard (sign in with the API secret)",
        f"metrics: http://{host}:{config.port}/metrics",
    ]
    print("\n".join(lines), flush=True)


def serve_reports(config: settings.Settings, parent: int) -> None:
    """The reports process (spawned by `serve`, whose environment it inherits): its own Granian, which
    stops when `serve` asks it to, or when `serve` is gone without asking. Where CPU is short, the
    ingestion workers come first: the scheduler gives a niced process a smaller share."""
    logging.config.dictConfig(logging_config(config.log_level))
    os.nice(config.reports_niceness)

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, name="trackgate-parent-watch", daemon=True).start()
    _granian(config, "trackgate.reports:app", config.reports_listen_port, 1).serve()


def _granian(config: settings.Settings, target: str, port: int, workers: int) -> Any:
    # Imported here: it is only needed by serve, and loading it costs the project commands time.
    from granian import Granian
    from granian.constants import Interfaces, Loops, RuntimeModes, TaskImpl
    from granian.log import LogLevels

    return Granian(
        target,
        address=config.host,
        port=port,
        interface=Interfaces.RSGI,
        workers=workers,
        runtime_threads=config.runtime_threads,
        runtime_mode=RuntimeModes(config.runtime_mode),
        loop=Loops(config.event_loop),
        task_impl=TaskImpl(config.task_impl),
        backpressure=config.backpressure or None,
        websockets=False,
        log_level=LogLevels(config.log_level),
        log_dictconfig=logging_config(config.log_level),
        respawn_failed_workers=True,
        # A worker finishes its requests (a slow body takes up to --body-timeout, then its write up to
        # --redis-timeout and --retry-window) before it exits; give it that long, then stop waiting.
        workers_kill_timeout=int(config.body_timeout + config.redis_timeout + config.retry_window) + 10,
    )
