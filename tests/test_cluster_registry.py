"""The project registry on a Redis Cluster (its keys share the `{registry}` hash tag, so its transactions
stay transactions there), through the real CLI and in process; and a registry of the layout before the
tag, on one Redis and on a cluster, moved to it by the first command that reads it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import uuid
from typing import Any

import pytest
import redis
from conftest import TRACKGATE, RedisServer, create_project_keys
from redis.cluster import RedisCluster
from redis_cluster import Cluster
from trackgate import keys, projects, redis_target, registry_backup
from trackgate.credentials import RegistryCredentials
from trackgate.projects import TokenCache, hash_secret, reply_text
from trackgate.registry_migration import migrate_registry


def cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
    return subprocess.run(
        [TRACKGATE, "project", *args, "--redis-url", url],
        capture_output=True, text=True, timeout=60, env=environ, input=stdin,
    )  # fmt: skip


def registry(client: redis.Redis | RedisCluster) -> dict[str, Any]:
    """Every registry key, as Redis holds it."""
    tokens = sorted(reply_text(t) for t in client.smembers(keys.PROJECTS_KEY))
    return {
        "tokens": tokens,
        "names": client.hgetall(keys.PROJECT_NAMES_KEY),
        "secrets": client.hgetall(keys.PROJECT_SECRETS_KEY),
        "projects": {token: client.hgetall(keys.project_key(token)) for token in tokens},
    }


def clear_registry(client: redis.Redis | RedisCluster) -> None:
    """The registry gone, as after a flush: only its keys (the cluster is shared by the module)."""
    for token in client.smembers(keys.PROJECTS_KEY):
        client.delete(keys.project_key(reply_text(token)))
    for key in (keys.PROJECTS_KEY, keys.PROJECT_NAMES_KEY, keys.PROJECT_SECRETS_KEY):
        client.delete(key)


def test_project_commands_on_a_cluster(redis_cluster: Cluster) -> None:
    url = redis_cluster.url
    with redis_cluster.client() as client:
        clear_registry(client)
        shop, _ = create_project_keys(url, "shop", "tk-cluster-shop")
        create_project_keys(url, "blog")
        assert cli(url, "set-caps", "shop", "--funnel-names", "7").returncode == 0
        assert cli(url, "set-limit", "shop", "--events-per-second", "50").returncode == 0
        assert cli(url, "set-funnel-window", "blog", "3").returncode == 0
        added = cli(url, "add-service-account", "shop")
        assert added.returncode == 0, added.stderr
        user = dict(line.split(": ", 1) for line in added.stdout.strip().splitlines())["user"]
        assert cli(url, "service-accounts", "shop").stdout.split() == [user]
        listed = cli(url, "list").stdout
        assert "funnel-names=7" in listed
        assert "events-per-second=50 burst=50" in listed
        assert "blog" in listed
        before = registry(client)
        assert before["tokens"] == sorted([shop, before["names"][b"blog"].decode()])
        saved = cli(url, "backup")
        assert saved.returncode == 0, saved.stderr
        clear_registry(client)
        restored = cli(url, "restore", "-", stdin=saved.stdout)
        assert restored.returncode == 0, restored.stderr
        assert "2 projects restored, 0 there already" in restored.stderr
        assert registry(client) == before
        assert cli(url, "set-funnel-window", "shop", "9").returncode == 0
        refused = cli(url, "restore", "-", stdin=saved.stdout)
        assert refused.returncode == 2
        assert "exists with other settings" in refused.stderr
        assert cli(url, "restore", "-", "--force", stdin=saved.stdout).returncode == 0
        assert registry(client) == before
        assert cli(url, "remove-service-account", "shop", user).returncode == 0
        assert cli(url, "service-accounts", "shop").stdout == ""


def test_the_token_cache_and_the_credentials_read_a_cluster(redis_cluster: Cluster) -> None:
    async def scenario() -> tuple[bool, str | None, str | None]:
        client = redis_target.client(redis_target.parse(redis_cluster.url), timeout=5, connect_timeout=5)
        try:
            project, secret = await projects.create_project(client, f"cached {uuid.uuid4().hex[:8]}")
            cache = TokenCache(client, interval=3600)
            await cache.start()
            await cache.stop()
            credentials = RegistryCredentials(client)
            basic = "Basic " + base64.b64encode(f"{secret}:".encode()).decode()
            return (
                project.token in cache.tokens,
                await credentials.project_for(basic, None),
                await credentials.project_for(basic, project.name),
            )
        finally:
            await client.aclose()

    known, by_secret, by_name = asyncio.run(scenario())
    assert known
    assert by_secret == by_name
    assert by_secret is not None


def write_legacy(
    client: redis.Redis | RedisCluster, token: str, name: str, secret: str
) -> dict[bytes, bytes]:
    """A project as the previous version's `project create` wrote it: untagged keys."""
    fields = {
        "name": name,
        "secret": hash_secret(secret),
        "created": "1700000000.5",
        "funnel_window": "86400",
    }
    for field, value in fields.items():
        client.hset(keys.legacy_project_key(token), field, value)
    client.hset(keys.LEGACY_PROJECT_SECRETS_KEY, hash_secret(secret), token)
    client.hset(keys.LEGACY_PROJECT_NAMES_KEY, name, token)
    client.sadd(keys.LEGACY_PROJECTS_KEY, token)
    return {k.encode(): v.encode() for k, v in fields.items()}


def legacy_keys(client: redis.Redis | RedisCluster, *tokens: str) -> int:
    names = [keys.LEGACY_PROJECTS_KEY, keys.LEGACY_PROJECT_NAMES_KEY, keys.LEGACY_PROJECT_SECRETS_KEY]
    return sum(int(client.exists(key)) for key in [*names, *map(keys.legacy_project_key, tokens)])


@pytest.mark.parametrize("where", ["one Redis", "a cluster"])
def test_a_registry_of_the_previous_layout_is_moved_by_the_first_command(
    where: str, private_redis: RedisServer, redis_cluster: Cluster
) -> None:
    """Its projects keep their tokens, names, secrets and settings; a project this version made before
    the move is kept as it is; the old keys are gone, and a second run changes nothing."""
    url = private_redis.url if where == "one Redis" else redis_cluster.url
    client: redis.Redis | RedisCluster = (
        private_redis.client() if where == "one Redis" else redis_cluster.client()
    )
    with client:
        clear_registry(client)
        new, _ = create_project_keys(url, "made-before-the-move")
        made = registry(client)["projects"][new]
        old = {f"tk-old-{n}-{uuid.uuid4().hex[:6]}": n for n in ("shop", "blog")}
        fields = {
            token: write_legacy(client, token, name, f"secret-of-{name}") for token, name in old.items()
        }
        listed = cli(url, "list")
        assert listed.returncode == 0, listed.stderr
        assert legacy_keys(client, *old) == 0
        assert all(token in listed.stdout for token in [*old, new])
        moved = registry(client)
        assert moved["tokens"] == sorted([*old, new])
        assert moved["projects"][new] == made
        for token, name in old.items():
            assert moved["projects"][token] == fields[token]
            assert moved["names"][name.encode()] == token.encode()
            assert moved["secrets"][hash_secret(f"secret-of-{name}").encode()] == token.encode()
        # The previous version's CLI creates a project after the move: moved too, beside the others.
        late = "tk-late-" + uuid.uuid4().hex[:6]
        write_legacy(client, late, "late", "secret-of-late")
        assert asyncio.run(migrate(url)) == 1
        assert registry(client)["tokens"] == sorted([*old, new, late])
        assert asyncio.run(migrate(url)) == 0
        saved = json.loads(cli(url, "backup").stdout)
        assert sorted(p["token"] for p in saved["projects"]) == sorted([*old, new, late])
        clear_registry(client)


async def migrate(url: str) -> int:
    client = redis_target.client(redis_target.parse(url), timeout=5, connect_timeout=5)
    try:
        found = await registry_backup.backup(client)
        moved = await migrate_registry(client)
        assert len((await registry_backup.backup(client)).projects) == len(found.projects) + moved
        return moved
    finally:
        await client.aclose()
