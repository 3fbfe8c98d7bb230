"""The Redis a command works on, and the project it names."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from trackgate import projects, redis_target, settings
from trackgate.cli.errors import UsageError
from trackgate.embedded import DataDirLock, EmbeddedRedis, EmbeddedRedisError, running_url
from trackgate.layout_migration import migrate_layout
from trackgate.redis_target import RedisClient
from trackgate.registry_migration import migrate_registry

T = TypeVar("T")


def usable_data_dir(config: settings.Settings) -> Path:
    data_dir = Path(config.data_dir).resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise settings.SettingsError(f"--data-dir {data_dir}: {err.strerror or err}") from None
    return data_dir


@contextlib.contextmanager
def redis_for_cli(config: settings.Settings) -> Iterator[str]:
    """The Redis to use: --redis-url; else the private one of a running serve; else a private one
    started for this command alone."""
    if config.redis_url is not None:
        yield config.redis_url
        return
    data_dir = usable_data_dir(config)
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


@contextlib.asynccontextmanager
async def registry_client(url: str, socket_timeout: float = 5) -> AsyncIterator[RedisClient]:
    """A client of the Redis (or the Cluster, or Sentinel's primary) that `url` names, its registry and
    its partitions in this version's layout (`registry_migration.py`, `layout_migration.py`)."""
    client = redis_target.client(redis_target.parse(url), timeout=socket_timeout, connect_timeout=5)
    try:
        await migrate_registry(client)
        await migrate_layout(client)
        yield client
    finally:
        await client.aclose()


async def with_client(url: str, action: Callable[[RedisClient], Awaitable[T]]) -> T:
    async with registry_client(url) as client:
        return await action(client)


async def find_project(client: RedisClient, name_or_token: str) -> projects.Project:
    found = await projects.find_by_name(client, name_or_token) or await projects.get_project(
        client, name_or_token
    )
    if found is None:
        raise UsageError(f"no project named {name_or_token!r} (see `trackgate project list`)")
    return found


async def project_named(url: str, name_or_token: str | None) -> projects.Project:
    """The project named (by name or token), or with None the only project there is."""
    async with registry_client(url, 10) as client:
        if name_or_token is not None:
            return await find_project(client, name_or_token)
        found = await projects.list_projects(client)
    if len(found) != 1:
        names = ", ".join(repr(p.name) for p in found) or "none"
        raise UsageError(f"name the project with --project (there are {len(found)}: {names})")
    return found[0]
