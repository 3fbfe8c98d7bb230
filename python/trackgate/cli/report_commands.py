"""`trackgate funnels report`, `trackgate export` and `trackgate profiles export`."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import BinaryIO

import msgspec
from tqdm import tqdm

from trackgate import engage, export, funnels, keys, projects, settings
from trackgate.cli.errors import UsageError
from trackgate.cli.redis_access import find_project, registry_client
from trackgate.report_reads import ReportReads


def date_range(args: argparse.Namespace) -> tuple[dt.date, dt.date]:
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


async def funnel_report(args: argparse.Namespace, config: settings.Settings, url: str) -> int:
    start, end = date_range(args)
    async with registry_client(url, 10) as client:
        project = await find_project(client, args.project)
        report = await funnels.funnel_report(client, project.token, config.partitions, args.name, start, end)
    if report is None:
        raise UsageError(f"project {project.name!r} has no funnel named {args.name!r}")
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    else:
        print(funnels.render_table(report))
    return 0


async def export_events(
    config: settings.Settings,
    url: str,
    project: projects.Project,
    start: dt.date,
    end: dt.date,
    out: BinaryIO,
) -> int:
    async with registry_client(url, 10) as client:
        async with client.pipeline(transaction=False) as pipe:
            for p in range(config.partitions):
                pipe.xlen(keys.stream_key(project.token, p))
            stored = sum(await pipe.execute())
        written = 0
        # The command's own connection, unbudgeted: an operator asked for the whole export now.
        reads = ReportReads(url, 10)
        # The bar counts stream entries read, of all the project's stored entries: an upper bound.
        try:
            with tqdm(total=stored, unit="event", file=sys.stderr, desc="export") as bar:
                lines = export.export_events(
                    reads,
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
        finally:
            reads.close()
    print(f"{written} events of {project.name!r} from {start} to {end}", file=sys.stderr)
    return 0


async def export_profiles(
    config: settings.Settings, url: str, project: projects.Project, group_key: str | None, out: BinaryIO
) -> int:
    """Every profile of the project's people, or of a group key's groups, as JSON lines
    `{"$distinct_id", "$properties"}`: the Engage Query API's results, read a page at a time."""
    written = 0
    # The command's own connection, unbudgeted, as `export_events`'.
    reads = ReportReads(url, 10)
    try:
        with tqdm(unit="profile", file=sys.stderr, desc="profiles") as bar:
            async for page in engage.every_profile(reads, project.token, config.partitions, group_key):
                # The indexes' count, as of this page: profiles made or deleted meanwhile change it.
                bar.total = max(page.total, written + len(page.results))
                for result in page.results:
                    out.write(result + b"\n")
                written += len(page.results)
                bar.update(len(page.results))
    finally:
        reads.close()
    whose = "people" if group_key is None else f"groups of {group_key!r}"
    print(f"{written} profiles of {whose} in {project.name!r}", file=sys.stderr)
    return 0
