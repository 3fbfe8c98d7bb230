"""`trackgate serve` and `trackgate project create|list`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.config
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from trackgate import projects, settings, store
from trackgate.embedded import DataDirLock, EmbeddedRedis, EmbeddedRedisError, running_url

log = logging.getLogger("trackgate")


def _logging_config(level: str) -> dict[str, Any]:
    """Granian's logging layout (it replaces the whole `loggers` table) plus trackgate's logger, with
    times, since a gateway's log is read after the fact."""
    console = {"formatter": "generic", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "generic": {"()": "logging.Formatter", "fmt": "%(asctime)s [%(levelname)s] %(message)s"},
            "access": {"()": "logging.Formatter", "fmt": "%(message)s"},
        },
        "handlers": {
            "console": console,
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "trackgate": {"handlers": ["console"], "level": level.upper(), "propagate": False},
        },
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trackgate", description="A self-hosted gateway for the Mixpanel /track API, writing to Redis."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the gateway", description="Run the gateway (Granian, RSGI)."
    )
    serve.add_argument(
        "--demo", action="store_true", help="create a `demo` project if absent; print a curl command"
    )
    settings.add_arguments(serve)

    project = commands.add_parser("project", help="create and list projects")
    actions = project.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a project; prints its token and secret")
    create.add_argument("name")
    create.add_argument(
        "--token", help="keep this token (e.g. the project's Mixpanel token) instead of a new one"
    )
    listing = actions.add_parser("list", help="list the projects")
    for sub in (create, listing):
        sub.add_argument(
            "--redis-url", help="Redis holding the projects (default: the private redis-server's)"
        )
        sub.add_argument("--data-dir", help="the private redis-server's data directory (default: .trackgate)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _project(args)
    except (settings.SettingsError, EmbeddedRedisError, projects.ProjectError) as err:
        print(f"trackgate: error: {err}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as err:
        print(f"trackgate: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


# serve


def _serve(args: argparse.Namespace) -> int:
    config = settings.build(args)
    logging.config.dictConfig(_logging_config(config.log_level))
    data_dir = Path(config.data_dir).resolve()
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
        _granian(config).serve()
    finally:
        if embedded is not None:
            embedded.stop()
            log.info("Redis stopped")
        lock.release()
    return 0


async def _prepare(redis_url: str, *, demo: bool) -> tuple[projects.Project, str | None] | None:
    """Before workers start: the current function library, and the demo project (with its secret when it
    was created just now) if asked for."""
    async with Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5) as client:
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
        f"metrics: http://{host}:{config.port}/metrics",
    ]
    print("\n".join(lines), flush=True)


def _granian(config: settings.Settings) -> Any:
    # Imported here: it is only needed by serve, and loading it costs the project commands time.
    from granian import Granian
    from granian.constants import Interfaces, Loops, RuntimeModes, TaskImpl
    from granian.log import LogLevels

    return Granian(
        "trackgate.http:app",
        address=config.host,
        port=config.port,
        interface=Interfaces.RSGI,
        workers=config.workers,
        runtime_threads=config.runtime_threads,
        runtime_mode=RuntimeModes(config.runtime_mode),
        loop=Loops(config.event_loop),
        task_impl=TaskImpl(config.task_impl),
        backpressure=config.backpressure or None,
        websockets=False,
        log_level=LogLevels(config.log_level),
        log_dictconfig=_logging_config(config.log_level),
        respawn_failed_workers=True,
        # A worker writes its queued batches before it exits; give it that long, then stop waiting.
        workers_kill_timeout=int(config.redis_timeout + config.retry_window) + 10,
    )


# project


def _project(args: argparse.Namespace) -> int:
    config = settings.build(args)
    with _redis_for_cli(config) as url:
        return asyncio.run(_project_action(args, url))


async def _project_action(args: argparse.Namespace, url: str) -> int:
    async with Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client:
        if args.action == "create":
            project, secret = await projects.create_project(client, args.name, args.token)
            print(f"token: {project.token}\nsecret: {secret}")
            print("keep the secret: it is not shown again", file=sys.stderr)
            return 0
        found = await projects.list_projects(client)
        if not found:
            print("no projects; create one with `trackgate project create NAME`", file=sys.stderr)
        for project in found:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(project.created))
            print(f"{project.token}  {created}  {project.name}")
        return 0


@contextlib.contextmanager
def _redis_for_cli(config: settings.Settings) -> Iterator[str]:
    """The Redis to use: --redis-url; else the private one of a running serve; else a private one
    started for this command alone."""
    if config.redis_url is not None:
        yield config.redis_url
        return
    data_dir = Path(config.data_dir).resolve()
    url = running_url(data_dir)
    if url is not None:
        yield url
        return
    lock = DataDirLock(data_dir)
    if not lock.try_acquire():
        raise EmbeddedRedisError(f"a trackgate serve is starting in {data_dir}; try again in a moment")
    try:
        with EmbeddedRedis(data_dir) as embedded:
            yield embedded.url
    finally:
        lock.release()
