"""`trackgate project ...`: create, list, set-funnel-window, set-caps, set-limit, remove-limit, backup,
restore and reindex, and the service accounts: add-service-account, service-accounts,
remove-service-account."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from trackgate import bounds, projects, rate_limit, registry_backup, reindex, service_accounts, settings
from trackgate.cli.errors import UsageError
from trackgate.cli.redis_access import find_project, redis_for_cli, registry_client, with_client
from trackgate.redis_target import RedisClient


def window_seconds(text: str) -> int:
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


async def project_action(args: argparse.Namespace, url: str) -> int:
    async with registry_client(url) as client:
        if args.action == "create":
            project, secret = await projects.create_project(client, args.name, args.token, args.funnel_window)
            print(f"token: {project.token}\nsecret: {secret}")
            print("keep the secret: it is not shown again", file=sys.stderr)
            return 0
        if args.action == "set-funnel-window":
            project = await find_project(client, args.name)
            await projects.set_funnel_window(client, project.token, args.window)
            days = args.window / 86400
            print(f"{project.name}: funnel window {days:g} days (from the gateway's next token reload)")
            return 0
        if args.action == "set-caps":
            return await _set_caps(client, args)
        if args.action == "reindex":
            project = await find_project(client, args.name)
            try:
                days, names = await reindex.reindex_project(client, project.token)
            except reindex.OldLibraryError as err:
                raise UsageError(str(err)) from None
            print(f"{project.name}: {days} days of a partition reindexed, {names} names")
            return 0
        if args.action in ("set-limit", "remove-limit"):
            return await _set_limit(client, args)
        if args.action in _SERVICE_ACCOUNT_ACTIONS:
            return await _service_accounts(client, args)
        found = await projects.list_projects(client)
        if not found:
            print("no projects; create one with `trackgate project create NAME`", file=sys.stderr)
        for project in found:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(project.created))
            limit = _limit_text(project.rate_limit)
            print(f"{project.token}  {created}  {limit}  {_caps_text(project.caps)}  {project.name}")
        return 0


def registry_file(args: argparse.Namespace, config: settings.Settings) -> int:
    """`project backup` and `project restore`."""
    if args.action == "backup":
        with redis_for_cli(config) as url:
            saved = asyncio.run(with_client(url, registry_backup.backup))
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
    with redis_for_cli(config) as url:
        restored = asyncio.run(
            with_client(url, lambda client: registry_backup.restore(client, saved, force=args.force))
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


_SERVICE_ACCOUNT_ACTIONS = ("add-service-account", "service-accounts", "remove-service-account")


async def _service_accounts(client: RedisClient, args: argparse.Namespace) -> int:
    """Add one (its user and secret printed, as `create` prints a project's), list them, remove one."""
    project = await find_project(client, args.name)
    if args.action == "add-service-account":
        user, secret = await service_accounts.add(client, project.token)
        print(f"user: {user}\nsecret: {secret}")
        print(
            f"keep the secret: it is not shown again; send it as HTTP Basic {user}:<secret> with "
            f"?project_id={project.token} (or the project's name)",
            file=sys.stderr,
        )
        return 0
    if args.action == "remove-service-account":
        if not await service_accounts.remove(client, project.token, args.user):
            raise UsageError(f"project {project.name!r} has no service account {args.user!r}")
        print(f"{project.name}: service account {args.user} removed")
        return 0
    users = await service_accounts.users(client, project.token)
    if not users:
        hint = "add one with `trackgate project add-service-account`"
        print(f"{project.name} has no service accounts; {hint}", file=sys.stderr)
    for user in users:
        print(user)
    return 0


def _caps_text(caps: bounds.Caps) -> str:
    """The caps as `set-caps` takes them: `event-names-per-day=1000 funnel-names=100`."""
    return " ".join(f"{name.replace('_', '-')}={getattr(caps, name)}" for name in caps.__struct_fields__)


async def _set_caps(client: RedisClient, args: argparse.Namespace) -> int:
    """The caps given; those not given stay as they are."""
    project = await find_project(client, args.name)
    given = {f: getattr(args, f) for f in bounds.Caps.__struct_fields__ if getattr(args, f) is not None}
    try:
        caps = bounds.Caps(**(msgspec.structs.asdict(project.caps) | given))
    except bounds.CapError as err:
        raise UsageError(str(err)) from None
    await projects.set_caps(client, project.token, caps)
    print(f"{project.name}: {_caps_text(caps)} (from the gateway's next token reload)")
    return 0


def _limit_text(limit: rate_limit.RateLimit | None) -> str:
    return rate_limit.UNLIMITED_TEXT if limit is None else limit.text()


async def _set_limit(client: RedisClient, args: argparse.Namespace) -> int:
    """`set-limit` (both values; the burst by default one second's events) or `remove-limit`."""
    project = await find_project(client, args.name)
    limit = None
    if args.action == "set-limit":
        try:
            limit = rate_limit.RateLimit.of(args.events_per_second, args.burst)
        except rate_limit.RateLimitError as err:
            raise UsageError(str(err)) from None
    await projects.set_rate_limit(client, project.token, limit)
    print(f"{project.name}: {_limit_text(limit)} (from the gateway's next token reload)")
    return 0
