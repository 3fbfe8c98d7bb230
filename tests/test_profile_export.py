"""`trackgate profiles export` against a real gateway and Redis: every profile of people, or of a group
key's groups, written as JSON lines, equal to what the Engage Query API's pages answer. The profiles are
made through /engage and /groups: generated ones (more than a page of each), and the official clients'
captured people and group calls replayed byte for byte."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import captures
import pytest
import redis
import requests
from captures import CAPTURED_TOKEN, replay
from conftest import TRACKGATE, Gateway, RedisServer, create_project_keys
from profile_model import stored_profile
from trackgate import engage

PEOPLE = 2345  # more than two pages of engage.MAX_PAGE_SIZE
TEAMS = engage.MAX_PAGE_SIZE + 1


class Project(NamedTuple):
    name: str
    token: str
    secret: str


@pytest.fixture(scope="module")
def profiles_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: the captured clients' token is a project here only."""
    server = RedisServer(tmp_path_factory.mktemp("profiles-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def profiles_gateway(
    profiles_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("profiles-gateway"), redis_url=profiles_redis.url)
    gateway.start()
    yield gateway
    gateway.stop()


def send(gateway: Gateway, path: str, updates: list[dict[str, Any]]) -> None:
    for i in range(0, len(updates), 1000):
        data = {"data": json.dumps(updates[i : i + 1000]), "verbose": "1"}
        r = requests.post(gateway.url(path), data=data, timeout=30)
        assert r.json() == {"status": 1, "error": None}, r.text


@pytest.fixture(scope="module")
def crowd(profiles_gateway: Gateway, profiles_redis: RedisServer) -> Project:
    """PEOPLE people and TEAMS groups of the key `team`, each with a few properties."""
    token, secret = create_project_keys(profiles_redis.url, "crowd")
    people = [
        {"$token": token, "$distinct_id": f"person-{i}", "$set": {"n": i, "tags": ["a", str(i % 3)]}}
        for i in range(PEOPLE)
    ]
    send(profiles_gateway, "/engage", people)
    teams = [
        {"$token": token, "$group_key": "team", "$group_id": f"team-{i}", "$set": {"size": i}}
        for i in range(TEAMS)
    ]
    send(profiles_gateway, "/groups", teams)
    return Project("crowd", token, secret)


@pytest.fixture(scope="module")
def captured_clients(profiles_gateway: Gateway, profiles_redis: RedisServer) -> Project:
    """The profiles the captured people and group calls of both official clients make."""
    token, secret = create_project_keys(profiles_redis.url, "captured clients", CAPTURED_TOKEN)
    for name in (captures.PYTHON_PEOPLE, captures.BROWSER_PEOPLE):
        for capture in captures.captured(name, ("/engage", "/groups")):
            assert replay(profiles_gateway, capture).status_code == 200
    return Project("captured clients", token, secret)


def cli_export(redis_url: str, *args: str) -> tuple[list[dict[str, Any]], str]:
    """The lines `trackgate profiles export` writes to standard output, and what it says on standard
    error."""
    done = subprocess.run(
        [TRACKGATE, "profiles", "export", "--redis-url", redis_url, *args],
        capture_output=True,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr.decode()


def api_pages(gateway: Gateway, secret: str, **params: str) -> list[dict[str, Any]]:
    """Every result of the Engage Query API's pages over all profiles, asked for as a client pages."""
    results: list[dict[str, Any]] = []
    session: dict[str, str] = {}
    for page in range(100):
        r = requests.get(
            gateway.reports_url("/api/2.0/engage"),
            params={**params, "page": str(page), **session},
            auth=(secret, ""),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        results += body["results"]
        if len(body["results"]) < body["page_size"]:
            return results
        session = {"session_id": body["session_id"]}
    raise AssertionError("more pages than expected")


def test_every_person_as_the_api_pages_them(
    profiles_gateway: Gateway, profiles_redis: RedisServer, crowd: Project
) -> None:
    lines, said = cli_export(profiles_redis.url, "--project", crowd.name)
    assert all(set(line) == {"$distinct_id", "$properties"} for line in lines)
    assert lines == api_pages(profiles_gateway, crowd.secret)
    assert sorted(line["$distinct_id"] for line in lines) == sorted(f"person-{i}" for i in range(PEOPLE))
    for line in lines:
        n = int(line["$distinct_id"].removeprefix("person-"))
        properties = line["$properties"]
        assert properties.pop("$last_seen").startswith("20")
        assert properties == {"n": n, "tags": ["a", str(n % 3)]}
    assert f"{PEOPLE} profiles of people in 'crowd'" in said
    assert "profiles: 100%" in said  # the progress bar


def test_a_group_keys_groups(profiles_gateway: Gateway, profiles_redis: RedisServer, crowd: Project) -> None:
    lines, said = cli_export(profiles_redis.url, "--project", crowd.token, "--group-key", "team")
    assert lines == api_pages(profiles_gateway, crowd.secret, data_group_id="team")
    assert sorted(line["$distinct_id"] for line in lines) == sorted(f"team-{i}" for i in range(TEAMS))
    assert f"{TEAMS} profiles of groups of 'team' in 'crowd'" in said
    assert cli_export(profiles_redis.url, "--project", crowd.name, "--group-key", "nobody")[0] == []


def test_the_official_clients_profiles(
    profiles_gateway: Gateway, profiles_redis: RedisServer, captured_clients: Project
) -> None:
    people, _ = cli_export(profiles_redis.url, "--project", captured_clients.name)
    companies, _ = cli_export(
        profiles_redis.url, "--project", captured_clients.name, "--group-key", "company"
    )
    assert people == api_pages(profiles_gateway, captured_clients.secret)
    assert companies == api_pages(profiles_gateway, captured_clients.secret, data_group_id="company")
    assert {"acme", "initech"} == {line["$distinct_id"] for line in companies}  # old-co was deleted
    assert "python-user-1" in {line["$distinct_id"] for line in people}
    with redis.Redis.from_url(profiles_redis.url) as client:
        for group_key, lines in ((None, people), ("company", companies)):
            for line in lines:
                stored = stored_profile(client, CAPTURED_TOKEN, (group_key, line["$distinct_id"]))
                assert line["$properties"] == stored


def test_the_output_file(profiles_redis: RedisServer, crowd: Project, tmp_path: Path) -> None:
    target = tmp_path / "teams.jsonl"
    args = ["--project", crowd.name, "--group-key", "team", "-o", str(target)]
    done = subprocess.run(
        [TRACKGATE, "profiles", "export", "--redis-url", profiles_redis.url, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == ""
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines == cli_export(profiles_redis.url, *args[:4])[0]


def test_the_project_is_the_only_one_unless_named(private_redis: RedisServer) -> None:
    create_project_keys(private_redis.url, "alone")
    lines, said = cli_export(private_redis.url)
    assert lines == []
    assert "0 profiles of people in 'alone'" in said
    create_project_keys(private_redis.url, "second")
    for args in ([], ["--project", "third"]):
        refused = subprocess.run(
            [TRACKGATE, "profiles", "export", "--redis-url", private_redis.url, *args],
            capture_output=True,
            text=True,
        )
        assert refused.returncode == 2
        assert "--project" in refused.stderr if not args else "third" in refused.stderr
    assert "0 profiles" in cli_export(private_redis.url, "--project", "second")[1]
