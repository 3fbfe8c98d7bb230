"""`trackgate serve`, `trackgate project create|list|set-funnel-window|set-caps|set-limit|remove-limit|
backup|restore|reindex|add-service-account|service-accounts|remove-service-account`, `trackgate funnels
report`, `trackgate export`, `trackgate profiles export` and `trackgate consume`: the parser and the
dispatch; each command's work is in its module."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from typing import BinaryIO

from redis.exceptions import RedisError

from trackgate import bounds, projects, settings
from trackgate.cli import consume_command
from trackgate.cli.errors import UsageError
from trackgate.cli.project_commands import project_action, registry_file, window_seconds
from trackgate.cli.redis_access import project_named, redis_for_cli
from trackgate.cli.report_commands import date_range, export_events, export_profiles, funnel_report
from trackgate.cli.serve_command import serve
from trackgate.embedded import EmbeddedRedisError

__all__ = ["main"]


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
        type=window_seconds,
        default=projects.DEFAULT_FUNNEL_WINDOW,
        help="days after a user's step 1 in which later funnel steps count (default: 30)",
    )
    listing = actions.add_parser("list", help="list the projects")
    window = actions.add_parser("set-funnel-window", help="change a project's funnel conversion window")
    window.add_argument("name")
    window.add_argument("window", metavar="days", type=window_seconds)
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

    reindex = actions.add_parser(
        "reindex",
        help="write the daily counts and names seen that reports read, for days counted by a gateway "
        "older than this one (from the hourly counts; safe to run again, and beside running gateways)",
    )
    reindex.add_argument("name")
    add_account = actions.add_parser(
        "add-service-account",
        help="add a service account to a project, for /import and the query API; prints its user and secret",
    )
    add_account.add_argument("name", help="the project's name or token")
    accounts = actions.add_parser("service-accounts", help="list a project's service accounts (their users)")
    accounts.add_argument("name", help="the project's name or token")
    remove_account = actions.add_parser("remove-service-account", help="remove a project's service account")
    remove_account.add_argument("name", help="the project's name or token")
    remove_account.add_argument("user", help="the service account's user")

    limit = actions.add_parser(
        "set-limit",
        help="limit the events (and profile updates) a second a project's clients may send, across every "
        "gateway; past it requests are answered 429 with Retry-After",
    )
    limit.add_argument("name")
    limit.add_argument("--events-per-second", type=int, required=True, help="the average rate allowed")
    limit.add_argument(
        "--burst",
        type=int,
        help="events allowed at once after a quiet spell (default: the events per second)",
    )
    unlimit = actions.add_parser("remove-limit", help="remove a project's rate limit")
    unlimit.add_argument("name")

    funnel = commands.add_parser("funnels", help="funnel reports")
    funnel_actions = funnel.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = funnel_actions.add_parser("report", help="print a funnel report as a table")
    report.add_argument("name", help="the funnel's name")
    report.add_argument("--json", action="store_true", help="print the report as JSON instead")
    export = commands.add_parser("export", help="write a project's raw events as JSON lines")
    for sub in (report, export):
        sub.add_argument("--project", required=True, help="the project's name or token")
        sub.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD (default: 30 days ago)")
        sub.add_argument("--to", dest="end", help="last UTC day, YYYY-MM-DD (default: today)")
    profiles = commands.add_parser("profiles", help="people's and groups' profiles")
    profile_actions = profiles.add_subparsers(dest="action", required=True, metavar="ACTION")
    profile_export = profile_actions.add_parser(
        "export", help="write every profile of people, or of a group key's groups, as JSON lines"
    )
    profile_export.add_argument("--project", help="the project's name or token (default: the only project)")
    profile_export.add_argument("--group-key", help="the groups of this group key instead of people")
    for sub in (export, profile_export):
        sub.add_argument("--output", "-o", help="file to write (default: standard output)")
    for sub in (report, export, profile_export):
        sub.add_argument("--partitions", help="the gateway's --partitions (default: 4)")
    consume = commands.add_parser(
        "consume",
        help="write a project's stored events and profile updates as JSON lines, through a consumer group",
        description="Hand on every entry of the project's streams, each acknowledged once written "
        "(at least once: deduplicate on $insert_id). Stops on SIGINT or SIGTERM.",
    )
    consume_command.add_arguments(consume)
    accounts_actions = (add_account, accounts, remove_account)
    project_actions = (
        create,
        listing,
        window,
        caps,
        limit,
        unlimit,
        backup,
        restore,
        reindex,
        *accounts_actions,
    )
    for sub in (*project_actions, report, export, profile_export, consume):
        sub.add_argument(
            "--redis-url", help="Redis holding the projects (default: the private redis-server's)"
        )
        sub.add_argument("--data-dir", help="the private redis-server's data directory (default: .trackgate)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        return with_redis(args)
    except (settings.SettingsError, EmbeddedRedisError, projects.ProjectError, UsageError) as err:
        print(f"trackgate: error: {err}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as err:
        print(f"trackgate: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def with_redis(args: argparse.Namespace) -> int:
    config = settings.build(args)
    if args.command == "project" and args.action in ("backup", "restore"):
        return registry_file(args, config)
    with redis_for_cli(config) as url:
        if args.command == "project":
            return asyncio.run(project_action(args, url))
        if args.command == "funnels":
            return asyncio.run(funnel_report(args, config, url))
        if args.command == "consume":
            return asyncio.run(consume_command.consume_command(args, config, url))
        write: Callable[[BinaryIO], Coroutine[None, None, int]]
        if args.command == "profiles":
            project = asyncio.run(project_named(url, args.project))
            write = partial(export_profiles, config, url, project, args.group_key)
        else:
            start, end = date_range(args)
            project = asyncio.run(project_named(url, args.project))
            write = partial(export_events, config, url, project, start, end)
        # Opened once the arguments are known to be good: a mistyped date must not empty the file.
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(args.output, "wb")) if args.output else sys.stdout.buffer
            return asyncio.run(write(out))
