"""The project registry in process, against a real redis-server: what a token is, how a hand-edited
hash is read, and a worker's TokenCache when the registry is lost and restored."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import RedisServer
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from trackgate import registry_backup
from trackgate.bounds import DEFAULT_CAPS
from trackgate.keys import PROJECTS_KEY, project_key
from trackgate.projects import (
    DEFAULT_FUNNEL_WINDOW,
    ProjectError,
    TokenCache,
    checked_project,
    create_project,
    get_project,
    valid_token,
)

GOOD_FIELDS = {"name": "shop", "secret": "sha256$" + "0" * 64, "created": "1700000000.5"}


def test_a_token_ending_in_a_newline_is_not_a_token() -> None:
    assert valid_token("abcdefgh")
    assert not valid_token("abcdefgh\n")
    assert not valid_token("abcdefgh\r\n")


def test_a_project_is_not_created_with_a_token_ending_in_a_newline(private_redis: RedisServer) -> None:
    async def create() -> None:
        async with Redis.from_url(private_redis.url) as client:
            await create_project(client, "shop", "abcdefgh\n")

    with pytest.raises(ProjectError, match="a token is 8 to 64 characters"):
        asyncio.run(create())
    with private_redis.client() as client:
        assert client.keys("*") == []


def test_a_hash_as_the_registry_writes_it_is_checked_into_its_types() -> None:
    project = checked_project("tk-aaaaaaaa", GOOD_FIELDS | {"funnel_window": "604800", "funnel_names": "5"})
    assert project.name == "shop"
    assert project.created == 1700000000.5
    assert project.funnel_window == 604800
    assert project.caps.funnel_names == 5
    assert project.caps.event_names_per_day == DEFAULT_CAPS.event_names_per_day
    assert checked_project("tk-aaaaaaaa", GOOD_FIELDS).funnel_window == DEFAULT_FUNNEL_WINDOW


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("funnel_window", "30d", "funnel_window '30d'"),
        ("funnel_window", "5", "a funnel window is from 1 minute"),
        ("event_names_per_day", "many", "event_names_per_day 'many'"),
        ("funnel_names", "0", "--funnel-names is from 1"),
        ("created", "yesterday", "created 'yesterday'"),
        ("created", "nan", "created 'nan'"),
        ("secret", "hunter2", "secret 'hunter2'"),
        ("name", " shop", "name ' shop'"),
    ],
)
def test_a_field_the_registry_would_misread_is_refused_by_name(field: str, value: str, message: str) -> None:
    with pytest.raises(ProjectError, match=message):
        checked_project("tk-aaaaaaaa", GOOD_FIELDS | {field: value})


@pytest.mark.parametrize("missing", ["name", "secret", "created"])
def test_a_hash_without_a_required_field_is_refused(missing: str) -> None:
    fields = {name: value for name, value in GOOD_FIELDS.items() if name != missing}
    with pytest.raises(ProjectError, match=f"no {missing}"):
        checked_project("tk-aaaaaaaa", fields)


def test_a_hand_edited_funnel_window_is_the_default_with_a_warning(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad value in one hash neither stops a worker's TokenCache nor `project list`."""

    async def scenario() -> None:
        async with Redis.from_url(private_redis.url) as client:
            good, _ = await create_project(client, "good", funnel_window=3600)
            bad, _ = await create_project(client, "bad")
            await client.hset(project_key(bad.token), "funnel_window", "30d")
            cache = TokenCache(client, interval=3600)
            await cache.start()
            try:
                assert good.token in cache.tokens
                assert bad.token in cache.tokens
                assert cache.funnel_window(good.token) == 3600
                assert cache.funnel_window(bad.token) == DEFAULT_FUNNEL_WINDOW
            finally:
                await cache.stop()
            listed = await get_project(client, bad.token)
            assert listed is not None
            assert listed.funnel_window == DEFAULT_FUNNEL_WINDOW

    with caplog.at_level(logging.WARNING, logger="trackgate.projects"):
        asyncio.run(scenario())
    assert any("'30d'" in record.getMessage() for record in caplog.records)


def test_the_token_cache_says_the_registry_is_missing_until_it_is_restored(
    private_redis: RedisServer,
) -> None:
    async def scenario() -> None:
        async with Redis.from_url(private_redis.url) as client:
            project, _ = await create_project(client, "shop")
            saved = await registry_backup.backup(client)
            cache = TokenCache(client, interval=3600)
            cache.MIN_INTERVAL = 0.0
            await cache.start()
            try:
                assert not cache.registry_missing
                await client.delete(PROJECTS_KEY)
                assert await cache.reload_for_unknown()
                assert cache.registry_missing
                assert project.token in cache.tokens  # kept, to answer 503 rather than 401
                restored = await registry_backup.restore(client, saved)
                assert restored.written == ["shop"]
                assert await cache.reload_for_unknown()
                assert not cache.registry_missing
                assert project.token in cache.tokens
            finally:
                await cache.stop()

    asyncio.run(scenario())


class _CreateBeforeCommit(Redis):
    """A client whose next transaction lets `project create` run, through another connection, between a
    restore's checks and its commit: the race the restore's WATCH exists for."""

    raced: tuple[str, str] | None = None

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        client = self

        class Racing(Pipeline):
            async def execute(self, raise_on_error: bool = True) -> list[Any]:
                if client.raced is not None:
                    name, token = client.raced
                    client.raced = None
                    async with Redis(connection_pool=client.connection_pool) as other:
                        await create_project(other, name, token)
                return await super().execute(raise_on_error)

        return Racing(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def test_a_project_created_during_a_restore_is_not_overwritten(private_redis: RedisServer) -> None:
    async def scenario() -> None:
        async with Redis.from_url(private_redis.url) as client:
            project, _ = await create_project(client, "shop", "tk-saved-shop")
            saved = await registry_backup.backup(client)
            await client.flushall()
        racing = _CreateBeforeCommit(port=private_redis.port)
        racing.raced = ("shop", "tk-created-meanwhile")
        async with racing:
            with pytest.raises(ProjectError, match="the name 'shop' belongs to project tk-created-meanwhile"):
                await registry_backup.restore(racing, saved)
            assert racing.raced is None  # the create did run, inside the restore
            assert await racing.smembers(PROJECTS_KEY) == {b"tk-created-meanwhile"}
            assert not await racing.exists(project_key(project.token))

    asyncio.run(scenario())
