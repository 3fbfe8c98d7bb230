"""Service accounts through the real CLI and a real redis-server: added (a user and a secret printed,
the secret kept hashed), listed without secrets, removed, kept by `project backup` and `restore`; and
accepted by the query API (the Engage Query API and the reports) with `project_id`, as by /import."""

from __future__ import annotations

import json

import pytest
import requests
from conftest import Gateway, RedisServer, create_project_keys
from test_project_backup import trackgate as project_cli
from trackgate.keys import project_key
from trackgate.projects import SERVICE_ACCOUNT_FIELD


def add_account(redis: RedisServer, project: str) -> tuple[str, str]:
    added = project_cli(redis, "add-service-account", project)
    assert added.returncode == 0, added.stderr
    lines = dict(line.split(": ", 1) for line in added.stdout.strip().splitlines())
    assert set(lines) == {"user", "secret"}
    assert "not shown again" in added.stderr
    return lines["user"], lines["secret"]


def test_service_accounts_are_added_listed_and_removed(private_redis: RedisServer) -> None:
    token, _ = create_project_keys(private_redis.url, "shop")
    assert project_cli(private_redis, "service-accounts", "shop").stdout == ""
    first, secret = add_account(private_redis, "shop")
    second, _ = add_account(private_redis, token)  # by token as by name
    assert first != second
    listed = project_cli(private_redis, "service-accounts", "shop")
    assert listed.stdout.split() == sorted([first, second])
    assert secret not in listed.stdout + listed.stderr
    with private_redis.client() as client:
        stored = client.hget(project_key(token), SERVICE_ACCOUNT_FIELD + first)
    assert stored is not None
    assert stored.startswith(b"sha256$")
    assert secret.encode() not in stored
    removed = project_cli(private_redis, "remove-service-account", "shop", first)
    assert (removed.returncode, removed.stdout.strip()) == (0, f"shop: service account {first} removed")
    assert project_cli(private_redis, "service-accounts", "shop").stdout.split() == [second]
    again = project_cli(private_redis, "remove-service-account", "shop", first)
    assert again.returncode == 2
    assert f"no service account {first!r}" in again.stderr
    assert project_cli(private_redis, "add-service-account", "no-such-project").returncode == 2


def test_a_backup_keeps_the_service_accounts(private_redis: RedisServer) -> None:
    token, _ = create_project_keys(private_redis.url, "shop")
    user, _ = add_account(private_redis, "shop")
    saved = project_cli(private_redis, "backup")
    assert saved.returncode == 0, saved.stderr
    [project] = json.loads(saved.stdout)["projects"]
    assert project["fields"][SERVICE_ACCOUNT_FIELD + user].startswith("sha256$")
    with private_redis.client() as client:
        before = client.hgetall(project_key(token))
        client.flushall()
    restored = project_cli(private_redis, "restore", "-", stdin=saved.stdout)
    assert restored.returncode == 0, restored.stderr
    with private_redis.client() as client:
        assert client.hgetall(project_key(token)) == before
    assert project_cli(private_redis, "service-accounts", "shop").stdout.split() == [user]
    # An account added since the backup is a setting the backup does not hold: --force to drop it.
    add_account(private_redis, "shop")
    refused = project_cli(private_redis, "restore", "-", stdin=saved.stdout)
    assert (refused.returncode, "exists with other settings" in refused.stderr) == (2, True)


@pytest.mark.parametrize(
    "field",
    [SERVICE_ACCOUNT_FIELD + "a:b", SERVICE_ACCOUNT_FIELD + "ok"],
)
def test_a_restore_refuses_a_service_account_the_registry_would_misread(
    private_redis: RedisServer, field: str
) -> None:
    create_project_keys(private_redis.url, "shop")
    saved = json.loads(project_cli(private_redis, "backup").stdout)
    saved["projects"][0]["fields"][field] = "sha256$00" if field.endswith("ok") else "sha256$" + "0" * 64
    with private_redis.client() as client:
        client.flushall()
    refused = project_cli(private_redis, "restore", "-", stdin=json.dumps(saved))
    assert refused.returncode == 2
    assert "of the backup" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_query_api_takes_a_service_account_with_project_id(
    gateway: Gateway, redis_server: RedisServer
) -> None:
    name = "service account reports"
    token, secret = create_project_keys(redis_server.url, name)
    user, account_secret = add_account(redis_server, name)
    people = [{"$token": token, "$distinct_id": "sa-person", "$set": {"plan": "pro"}}]
    sent = requests.post(
        gateway.url("/engage"), data={"data": json.dumps(people), "verbose": "1"}, timeout=10
    )
    assert sent.json() == {"status": 1, "error": None}

    def engage(auth: tuple[str, str], **params: str) -> requests.Response:
        url = gateway.reports_url("/api/2.0/engage")
        return requests.get(url, params={"distinct_id": "sa-person", **params}, auth=auth, timeout=10)

    for project_id in (name, token):
        found = engage((user, account_secret), project_id=project_id)
        assert found.status_code == 200, found.text
        [result] = found.json()["results"]
        assert (result["$distinct_id"], result["$properties"]["plan"]) == ("sa-person", "pro")
        events = requests.get(
            gateway.reports_url("/api/events"),
            params={"project_id": project_id},
            auth=(user, account_secret),
            timeout=10,
        )
        assert events.status_code == 200, events.text
    # The API secret still works, with or without project_id (its own project's).
    assert engage((secret, "")).status_code == 200
    assert engage((secret, ""), project_id=name).status_code == 200
    other, _ = create_project_keys(redis_server.url, "service account elsewhere")
    for auth, params in [
        ((user, "not-the-secret"), {"project_id": name}),
        ((user, account_secret), {}),  # no project_id: a service account names none
        ((user, account_secret), {"project_id": other}),
        ((user, account_secret), {"project_id": "no-such-project"}),
        ((secret, ""), {"project_id": other}),
    ]:
        refused = engage(auth, **params)
        assert refused.status_code == 401, (auth, params)
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert "service account" in refused.json()["error"]
