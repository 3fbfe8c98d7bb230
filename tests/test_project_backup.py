"""`trackgate project backup` and `restore` through the real CLI against a real redis-server: what the
file holds, and what a restore overwrites (only with --force)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import TRACKGATE, RedisServer, create_project_keys
from trackgate.keys import PROJECT_NAMES_KEY, PROJECT_SECRETS_KEY, PROJECTS_KEY, project_key


def trackgate(redis: RedisServer, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
    return subprocess.run(
        [TRACKGATE, "project", *args, "--redis-url", redis.url],
        capture_output=True, text=True, timeout=60, env=environ, input=stdin,
    )  # fmt: skip


def registry(redis: RedisServer) -> dict[str, object]:
    """Every registry key, as Redis holds it."""
    with redis.client() as client:
        tokens = sorted(t.decode() for t in client.smembers(PROJECTS_KEY))
        return {
            "tokens": tokens,
            "names": client.hgetall(PROJECT_NAMES_KEY),
            "secrets": client.hgetall(PROJECT_SECRETS_KEY),
            "projects": {token: client.hgetall(project_key(token)) for token in tokens},
        }


def test_a_backup_restores_the_registry_as_it_was(private_redis: RedisServer, tmp_path: Path) -> None:
    token, _ = create_project_keys(private_redis.url, "shop", None, "--funnel-window-days", "7")
    create_project_keys(private_redis.url, "blog")
    before = registry(private_redis)
    saved = trackgate(private_redis, "backup")
    assert saved.returncode == 0, saved.stderr
    assert "2 projects written" in saved.stderr
    backup = json.loads(saved.stdout)
    shop = next(p for p in backup["projects"] if p["token"] == token)
    assert shop["fields"]["name"] == "shop"
    assert shop["fields"]["secret"].startswith("sha256$")
    assert shop["fields"]["funnel_window"] == str(7 * 86400)
    with private_redis.client() as client:
        client.flushall()
    restored = trackgate(private_redis, "restore", "-", stdin=saved.stdout)
    assert restored.returncode == 0, restored.stderr
    assert "2 projects restored, 0 there already" in restored.stderr
    assert registry(private_redis) == before
    again = trackgate(private_redis, "restore", "-", stdin=saved.stdout)
    assert "0 projects restored, 2 there already" in again.stderr
    assert registry(private_redis) == before


def test_a_restore_overwrites_a_different_project_only_with_force(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    create_project_keys(private_redis.url, "shop")
    backup = tmp_path / "projects.json"
    assert trackgate(private_redis, "backup", "-o", str(backup)).returncode == 0
    before = registry(private_redis)
    assert trackgate(private_redis, "set-funnel-window", "shop", "3").returncode == 0
    changed = registry(private_redis)
    refused = trackgate(private_redis, "restore", str(backup))
    assert refused.returncode == 2
    assert "exists with other settings" in refused.stderr
    assert "--force" in refused.stderr
    assert registry(private_redis) == changed
    assert trackgate(private_redis, "restore", str(backup), "--force").returncode == 0
    assert registry(private_redis) == before


def test_a_name_another_project_took_is_overwritten_only_with_force(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    token, _ = create_project_keys(private_redis.url, "shop")
    backup = tmp_path / "projects.json"
    assert trackgate(private_redis, "backup", "-o", str(backup)).returncode == 0
    with private_redis.client() as client:
        client.flushall()
    create_project_keys(private_redis.url, "shop")  # the same name, a new token
    refused = trackgate(private_redis, "restore", str(backup))
    assert refused.returncode == 2
    assert "the name 'shop' belongs to project" in refused.stderr
    with private_redis.client() as client:
        other = next(t.decode() for t in client.smembers(PROJECTS_KEY) if t.decode() != token)
    forced = trackgate(private_redis, "restore", str(backup), "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"removed project {other} ('shop')" in forced.stderr
    with private_redis.client() as client:
        assert client.hget(PROJECT_NAMES_KEY, "shop") == token.encode()
        # The project that held the name is gone from the registry, not left as a second 'shop'.
        assert client.smembers(PROJECTS_KEY) == {token.encode()}
        assert not client.exists(project_key(other))
        assert set(client.hvals(PROJECT_SECRETS_KEY)) == {token.encode()}
    listed = trackgate(private_redis, "list")
    assert listed.stdout.count("shop") == 1


def test_a_file_that_is_not_a_backup_is_refused(private_redis: RedisServer, tmp_path: Path) -> None:
    bad_token = {"token": "a b", "fields": {"name": "shop", "secret": "sha256$00"}}
    texts = [
        "[]",
        '{"format": "trackgate-projects", "version": 1, "projects": [{"token": "tk-aaaaaaaa"}]}',
        json.dumps({"format": "trackgate-projects", "version": 1, "projects": [bad_token]}),
    ]
    for text in texts:
        refused = trackgate(private_redis, "restore", "-", stdin=text)
        assert refused.returncode == 2
        assert "not a trackgate project backup" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert registry(private_redis)["tokens"] == []


def test_a_registry_that_lost_only_an_index_is_restored(private_redis: RedisServer) -> None:
    """A project whose hash and name are there but that the project set (or the secret index) lost is
    not "there already": the gateway would answer 503 (or the API 401) for it."""
    create_project_keys(private_redis.url, "shop")
    create_project_keys(private_redis.url, "blog")
    before = registry(private_redis)
    saved = trackgate(private_redis, "backup").stdout
    for lost in (PROJECTS_KEY, PROJECT_SECRETS_KEY):
        with private_redis.client() as client:
            client.delete(lost)
        restored = trackgate(private_redis, "restore", "-", stdin=saved)
        assert restored.returncode == 0, restored.stderr
        assert "2 projects restored, 0 there already" in restored.stderr
        assert registry(private_redis) == before


def test_a_backup_of_an_empty_registry_keeps_the_earlier_file(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    create_project_keys(private_redis.url, "shop")
    backup = tmp_path / "projects.json"
    assert trackgate(private_redis, "backup", "-o", str(backup)).returncode == 0
    good = backup.read_bytes()
    with private_redis.client() as client:
        client.flushall()  # Redis lost its data; the backup cron job runs
    refused = trackgate(private_redis, "backup", "-o", str(backup))
    assert refused.returncode == 2
    assert "the project registry is empty" in refused.stderr
    assert "--allow-empty" in refused.stderr
    assert backup.read_bytes() == good
    to_stdout = trackgate(private_redis, "backup")
    assert to_stdout.returncode == 2
    assert to_stdout.stdout == ""
    allowed = trackgate(private_redis, "backup", "-o", str(backup), "--allow-empty")
    assert allowed.returncode == 0, allowed.stderr
    assert "0 projects written" in allowed.stderr
    assert json.loads(backup.read_bytes())["projects"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["projects.json", "redis"]


def test_a_hand_edited_field_the_workers_would_misread_is_refused(private_redis: RedisServer) -> None:
    token, _ = create_project_keys(private_redis.url, "shop")
    saved = json.loads(trackgate(private_redis, "backup").stdout)
    saved["projects"][0]["fields"]["funnel_window"] = "30d"
    with private_redis.client() as client:
        client.flushall()
    refused = trackgate(private_redis, "restore", "-", stdin=json.dumps(saved))
    assert refused.returncode == 2
    assert f"project {token} ('shop') of the backup: funnel_window '30d'" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert registry(private_redis)["tokens"] == []
