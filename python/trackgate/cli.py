"""`trackgate serve`, `trackgate project create|list|set-funnel-window|backup|restore`, `trackgate funnels
report` and `trackgate export`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import logging.config
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tqdm import tqdm

from trackgate import bounds, export, funnels, keys, projects, registry_backup, settings, store
from trackgate.embedded import DataDirLock, EmbeddedRedis, EmbeddedRedisError, running_url

log = logging.getLogger("trackgate")

T = TypeVar("T")


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

    project = commands.add_parser("project", help="create, list and configure projects")
    actions = project.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a project; prints its token and secret")
    create.add_argument("name")
    create.add_argument(
        "--token", help="keep this token (e.g. the project's Mixpanel token) instead of a new one"
    )
    create.add_argument(
        "--funnel-window-days",
        dest="funnel_window",
        type=_window_seconds,
        default=projects.DEFAULT_FUNNEL_WINDOW,
        help="days after a user's step 1 in which later funnel steps count (default: 30)",
    )
    listing = actions.add_parser("list", help="list the projects")
    window = actions.add_parser("set-funnel-window", help="change a project's funnel conversion window")
    window.add_argument("name")
    window.add_argument("window", metavar="days", type=_window_seconds)
    backup = actions.add_parser(
        "backup", help="write the project registry (tokens, names, secret hashes, settings) as JSON"
    )
    backup.add_argument("--output", "-o", help="file to write (default: standard output)")
    backup.add_argument(
        "--allow-empty",
        action="store_true",
        help="write a backup of an empty registry too (by default refused, keeping an earlier file)",
    )
    restore = actions.add_parser("restore", help="put the projects of a backup back into the registry")
    restore.add_argument("file", help="a file `trackgate project backup` wrote (-: standard input)")
    restore.add_argument(
        "--force", action="store_true", help="overwrite projects and names that exist with other settings"
    )
    caps = actions.add_parser(
        "set-caps",
        help="change a project's caps on event names a day and on funnels (per partition); past a cap "
        f"events are stored in full and counted as {bounds.OVERFLOW}",
    )
    caps.add_argument("name")
    for field in bounds.Caps.__struct_fields__:
        caps.add_argument(
            "--" + field.replace("_", "-"), type=int, help=f"default: {getattr(bounds.DEFAULT_CAPS, field)}"
        )

    funnel = commands.add_parser("funnels", help="funnel reports")
    funnel_actions = funnel.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = funnel_actions.add_parser("report", help="print a funnel report as a table")
    report.add_argument("name", help="the funnel's name")
    report.add_argument("--json", action="store_true", help="print the report as JSON instead")
    export = commands.add_parser("export", help="write a project's raw events as JSON lines")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    for sub in (report, export):
        sub.add_argument("--project", required=True, help="the project's name or token")
        sub.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD (default: 30 days ago)")
        sub.add_argument("--to", dest="end", help="last UTC day, YYYY-MM-DD (default: today)")
        sub.add_argument("--partitions", help="the gateway's --partitions (default: 4)")
    for sub in (create, listing, window, caps, backup, restore, report, export):
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
        return _with_redis(args)
    except (settings.SettingsError, EmbeddedRedisError, projects.ProjectError, UsageError) as err:
        print(f"trackgate: error: {err}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as err:
        print(f"trackgate: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


# serve


def _serve(args: argparse.Namespace) -> int:
    config = settings.build(args)
    logging.config.dictConfig(_logging_config(config.log_level))
    _check_port(config.host, config.port)
    _check_port(config.host, config.reports_listen_port)
    data_dir = _usable_data_dir(config)
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
            target=_serve_reports, args=(config, os.getpid()), name="trackgate-reports"
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


def _usable_data_dir(config: settings.Settings) -> Path:
    data_dir = Path(config.data_dir).resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise settings.SettingsError(f"--data-dir {data_dir}: {err.strerror or err}") from None
    return data_dir


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
        f"dashboard: http://{host}:{config.reports_listen_port}/dashboard (sign in with the API secret)",
        f"metrics: http://{host}:{config.port}/metrics",
    ]
    print("\n".join(lines), flush=True)


def _serve_reports(config: settings.Settings, parent: int) -> None:
    """The reports process (spawned by `serve`, whose environment it inherits): its own Granian, which
    stops when `serve` asks it to, or when `serve` is gone without asking. Where CPU is short, the
    ingestion workers come first: the scheduler gives a niced process a smaller share."""
    logging.config.dictConfig(_logging_config(config.log_level))
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
        log_dictconfig=_logging_config(config.log_level),
        respawn_failed_workers=True,
        # A worker finishes its requests (a slow body takes up to --body-timeout, then its write up to
        # --redis-timeout and --retry-window) before it exits; give it that long, then stop waiting.
        workers_kill_timeout=int(config.body_timeout + config.redis_timeout + config.retry_window) + 10,
    )


# project, funnels, export


class UsageError(ValueError):
    """A command's arguments name something that is not there."""


def _with_redis(args: argparse.Namespace) -> int:
    config = settings.build(args)
    if args.command == "project" and args.action in ("backup", "restore"):
        return _registry_file(args, config)
    with _redis_for_cli(config) as url:
        if args.command == "project":
            return asyncio.run(_project_action(args, url))
        if args.command == "funnels":
            return asyncio.run(_funnel_report(args, config, url))
        start, end = _date_range(args)
        project = asyncio.run(_project_named(url, args.project))
        # Opened once the arguments are known to be good: a mistyped date must not empty the file.
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(args.output, "wb")) if args.output else sys.stdout.buffer
            return asyncio.run(_export(config, url, project, start, end, out))


def _window_seconds(text: str) -> int:
    """A funnel window given in days, in seconds; refused here, before any Redis is started."""
    try:
        seconds = float(text) * 86400
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days")
    try:
        projects.check_window(round(seconds))
    except projects.ProjectError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    return round(seconds)


async def _project_action(args: argparse.Namespace, url: str) -> int:
    async with Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client:
        if args.action == "create":
            project, secret = await projects.create_project(client, args.name, args.token, args.funnel_window)
            print(f"token: {project.token}\nsecret: {secret}")
            print("keep the secret: it is not shown again", file=sys.stderr)
            return 0
        if args.action == "set-funnel-window":
            project = await _find_project(client, args.name)
            await projects.set_funnel_window(client, project.token, args.window)
            days = args.window / 86400
            print(f"{project.name}: funnel window {days:g} days (from the gateway's next token reload)")
            return 0
        if args.action == "set-caps":
            return await _set_caps(client, args)
        found = await projects.list_projects(client)
        if not found:
            print("no projects; create one with `trackgate project create NAME`", file=sys.stderr)
        for project in found:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(project.created))
            print(f"{project.token}  {created}  {_caps_text(project.caps)}  {project.name}")
        return 0


def _registry_file(args: argparse.Namespace, config: settings.Settings) -> int:
    """`project backup` and `project restore`."""
    if args.action == "backup":
        with _redis_for_cli(config) as url:
            saved = asyncio.run(_with_client(url, registry_backup.backup))
        # An empty registry is what a Redis that lost its data holds: a cron'd backup of it must not
        # replace the last good file.
        if not saved.projects and not args.allow_empty:
            raise UsageError(
                "the project registry is empty: nothing written, so that an earlier backup is kept "
                "(--allow-empty writes an empty backup)"
            )
        if args.output:
            _replace_file(Path(args.output), registry_backup.encode(saved))
        else:
            sys.stdout.buffer.write(registry_backup.encode(saved))
        print(
            f"{len(saved.projects)} projects written to {args.output or 'standard output'}", file=sys.stderr
        )
        return 0
    # Read, and checked, before any Redis is started.
    saved = registry_backup.read_backup(
        sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    )
    with _redis_for_cli(config) as url:
        restored = asyncio.run(
            _with_client(url, lambda client: registry_backup.restore(client, saved, force=args.force))
        )
    for removed in restored.removed:
        print(f"removed project {removed}, which held a name of the backup", file=sys.stderr)
    print(
        f"{len(restored.written)} projects restored, {len(restored.unchanged)} there already", file=sys.stderr
    )
    return 0


def _replace_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: into a new file beside it, then renamed over it, so
    that a failure midway (a full disk, a kill) leaves the earlier file as it was."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


async def _with_client(url: str, action: Callable[[Redis], Awaitable[T]]) -> T:
    async with Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client:
        return await action(client)


def _caps_text(caps: bounds.Caps) -> str:
    """The caps as `set-caps` takes them: `event-names-per-day=1000 funnel-names=100`."""
    return " ".join(f"{name.replace('_', '-')}={getattr(caps, name)}" for name in caps.__struct_fields__)


async def _set_caps(client: Redis, args: argparse.Namespace) -> int:
    """The caps given; those not given stay as they are."""
    project = await _find_project(client, args.name)
    given = {f: getattr(args, f) for f in bounds.Caps.__struct_fields__ if getattr(args, f) is not None}
    try:
        caps = bounds.Caps(**(msgspec.structs.asdict(project.caps) | given))
    except bounds.CapError as err:
        raise UsageError(str(err)) from None
    await projects.set_caps(client, project.token, caps)
    print(f"{project.name}: {_caps_text(caps)} (from the gateway's next token reload)")
    return 0


async def _find_project(client: Redis, name_or_token: str) -> projects.Project:
    found = await projects.find_by_name(client, name_or_token) or await projects.get_project(
        client, name_or_token
    )
    if found is None:
        raise UsageError(f"no project named {name_or_token!r} (see `trackgate project list`)")
    return found


def _date_range(args: argparse.Namespace) -> tuple[dt.date, dt.date]:
    try:
        end = dt.date.fromisoformat(args.end) if args.end else dt.datetime.now(dt.UTC).date()
        start = dt.date.fromisoformat(args.start) if args.start else end - dt.timedelta(days=29)
    except ValueError as err:
        raise UsageError(f"--from/--to: {err}") from None
    try:
        funnels.days_between(start, end)
    except ValueError as err:
        raise UsageError(f"--from/--to: {err}") from None
    return start, end


async def _funnel_report(args: argparse.Namespace, config: settings.Settings, url: str) -> int:
    start, end = _date_range(args)
    async with Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5) as client:
        project = await _find_project(client, args.project)
        report = await funnels.funnel_report(client, project.token, config.partitions, args.name, start, end)
    if report is None:
        raise UsageError(f"project {project.name!r} has no funnel named {args.name!r}")
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    else:
        print(funnels.render_table(report))
    return 0


async def _project_named(url: str, name_or_token: str) -> projects.Project:
    async with Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5) as client:
        return await _find_project(client, name_or_token)


async def _export(
    config: settings.Settings,
    url: str,
    project: projects.Project,
    start: dt.date,
    end: dt.date,
    out: BinaryIO,
) -> int:
    async with Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5) as client:
        async with client.pipeline(transaction=False) as pipe:
            for p in range(config.partitions):
                pipe.xlen(keys.stream_key(project.token, p))
            stored = sum(await pipe.execute())
        written = 0
        # The bar counts stream entries read, of all the project's stored entries: an upper bound.
        with tqdm(total=stored, unit="event", file=sys.stderr, desc="export") as bar:
            lines = export.export_events(
                client,
                project.token,
                config.partitions,
                start,
                end,
                max_future_skew=config.max_future_skew,
                max_age=config.max_age,
                progress=bar.update,
            )
            async for line in lines:
                out.write(line)
                written += 1
            bar.update(stored - bar.n)
    print(f"{written} events of {project.name!r} from {start} to {end}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _redis_for_cli(config: settings.Settings) -> Iterator[str]:
    """The Redis to use: --redis-url; else the private one of a running serve; else a private one
    started for this command alone."""
    if config.redis_url is not None:
        yield config.redis_url
        return
    data_dir = _usable_data_dir(config)
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
