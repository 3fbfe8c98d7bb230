"""`trackgate consume`: a project's stored events and profile updates, as JSON lines on standard output,
through a consumer group (see `trackgate.consume`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

from trackgate import consume, settings
from trackgate.cli.errors import UsageError
from trackgate.cli.redis_access import find_project, registry_client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", required=True, help="the consumer group: each group gets every entry once")
    parser.add_argument("--project", required=True, help="the project's name or token")
    parser.add_argument(
        "--consumer",
        default=socket.gethostname(),
        help="this consumer's name in the group (default: the host's name); started again under the same "
        "name, it hands on first what it had read but not acknowledged",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(consume.KINDS),
        help="what to read: event, update or both (default: event,update)",
    )
    parser.add_argument(
        "--from-now",
        action="store_true",
        help="a group created now starts at the streams' ends (default: with everything they hold)",
    )
    parser.add_argument(
        "--claim-idle",
        type=float,
        default=30.0,
        help="seconds after which entries another consumer read but did not acknowledge are taken over",
    )
    parser.add_argument("--partitions", help="the gateway's --partitions (default: 4)")


def kinds_of(text: str) -> list[consume.Kind]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    for kind in kinds:
        if kind not in consume.KINDS:
            raise UsageError(f"--kinds: {kind!r} is not one of {', '.join(consume.KINDS)}")
    return [kind for kind in consume.KINDS if kind in kinds]


async def consume_command(args: argparse.Namespace, config: settings.Settings, url: str) -> int:
    kinds = kinds_of(args.kinds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    out = sys.stdout.buffer
    async with registry_client(url, 10) as client:
        project = await find_project(client, args.project)
        consumer = consume.Consumer(
            client,
            project.token,
            config.partitions,
            args.group,
            args.consumer,
            kinds=kinds,
            start="$" if args.from_now else "0",
            claim_idle=args.claim_idle,
        )
        await consumer.run(lambda entry: out.write(entry.json_line()), stop, flush=out.flush)
    print(f"{consumer.handed_on} entries handed on", file=sys.stderr)
    return 0
