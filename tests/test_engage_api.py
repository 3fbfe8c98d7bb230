"""The Engage Query API (`/api/2.0/engage`, `/api/query/engage`) of the reports process, against a real
gateway and redis-server: profiles made through /engage and /groups, read back by id, by ids, by group,
and a page at a time over all of them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from conftest import Gateway, RedisServer, create_project_keys, partition_of
from trackgate import engage

PATHS = ["/api/2.0/engage", "/api/query/engage", "/api/query/engage/"]
PEOPLE = [f"person-{i:02d}" for i in range(57)]


@pytest.fixture(scope="module")
def project(gateway: Gateway, redis_server: RedisServer) -> tuple[str, str]:
    """A project's token and secret, with a profile per person in PEOPLE and two groups'."""
    token, secret = create_project_keys(redis_server.url, "engage queries")
    people = [{"$token": token, "$distinct_id": p, "$set": {"n": i, "name": p}} for i, p in enumerate(PEOPLE)]
    send(gateway, "/engage", people)
    groups = [
        {"$token": token, "$group_key": "company", "$group_id": c, "$set": {"seats": s}}
        for c, s in (("acme", 40), ("globex", 3))
    ]
    send(gateway, "/groups", groups)
    return token, secret


def send(gateway: Gateway, path: str, updates: list[dict[str, Any]]) -> None:
    r = requests.post(gateway.url(path), data={"data": json.dumps(updates), "verbose": "1"}, timeout=10)
    assert r.json() == {"status": 1, "error": None}, r.text


def query(
    gateway: Gateway,
    secret: str | None,
    path: str = PATHS[0],
    *,
    post: bool = False,
    params: dict[str, str] | None = None,
    **named: str,
) -> requests.Response:
    auth = (secret, "") if secret is not None else None
    url, sent = gateway.reports_url(path), {**(params or {}), **named}
    if post:
        return requests.post(url, data=sent, auth=auth, timeout=10)
    return requests.get(url, params=sent, auth=auth, timeout=10)


def answer(r: requests.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "ok"
    return body


@pytest.mark.parametrize("path", PATHS)
def test_one_profile_by_distinct_id(gateway: Gateway, project: tuple[str, str], path: str) -> None:
    _, secret = project
    body = answer(query(gateway, secret, path, distinct_id="person-07"))
    [result] = body["results"]
    assert result["$distinct_id"] == "person-07"
    properties = result["$properties"]
    assert properties.pop("$last_seen").startswith("20")
    assert properties == {"n": 7, "name": "person-07"}
    assert (body["total"], body["page"]) == (1, 0)
    assert answer(query(gateway, secret, path, distinct_id="nobody"))["results"] == []


def test_profiles_by_ids_and_groups_by_key(gateway: Gateway, project: tuple[str, str]) -> None:
    _, secret = project
    ids = json.dumps(["person-03", "nobody", "person-01", "person-03"])
    body = answer(query(gateway, secret, post=True, distinct_ids=ids, output_properties='["n"]'))
    assert [(r["$distinct_id"], r["$properties"]) for r in body["results"]] == [
        ("person-03", {"n": 3}),
        ("person-01", {"n": 1}),
    ]
    assert body["total"] == 2
    groups = answer(query(gateway, secret, data_group_id="company", distinct_ids='["globex", "acme"]'))
    assert [(r["$distinct_id"], r["$properties"]["seats"]) for r in groups["results"]] == [
        ("globex", 3),
        ("acme", 40),
    ]
    everyone = answer(query(gateway, secret, PATHS[1], post=True, data_group_id="company"))
    assert sorted(r["$distinct_id"] for r in everyone["results"]) == ["acme", "globex"]
    assert everyone["total"] == 2
    assert answer(query(gateway, secret, data_group_id="team"))["results"] == []


def test_pages_over_every_profile_once(gateway: Gateway, project: tuple[str, str]) -> None:
    _, secret = project
    seen: list[str] = []
    session: dict[str, str] = {}
    for page in range(7):
        body = answer(query(gateway, secret, params={"page": str(page), "page_size": "10", **session}))
        assert (body["page"], body["page_size"], body["total"]) == (page, 10, len(PEOPLE))
        seen += [r["$distinct_id"] for r in body["results"]]
        session = {"session_id": body["session_id"]}
    assert len(seen) == len(PEOPLE)
    assert sorted(seen) == PEOPLE
    # In partition order, each partition in name order.
    assert seen == sorted(PEOPLE, key=lambda p: (partition_of(p), p))
    # A page asked for by its number alone is the same page.
    again = answer(query(gateway, secret, page="3", page_size="10"))
    assert [r["$distinct_id"] for r in again["results"]] == seen[30:40]
    assert answer(query(gateway, secret, page="9", page_size="10"))["results"] == []


def test_a_session_keeps_the_next_page_where_the_last_ended(
    gateway: Gateway, project: tuple[str, str]
) -> None:
    """A profile made between two pages, before the first page's end, shifts nothing into the next."""
    token, secret = project
    first = answer(query(gateway, secret, page="0", page_size="5"))
    ids = [r["$distinct_id"] for r in first["results"]]
    assert len({partition_of(i) for i in ids}) == 1
    early = next(f"a-{n}" for n in range(1000) if partition_of(f"a-{n}") == partition_of(ids[0]))
    assert early < ids[-1]
    send(gateway, "/engage", [{"$token": token, "$distinct_id": early, "$set": {"late": True}}])
    try:
        second = answer(query(gateway, secret, page="1", page_size="5", session_id=first["session_id"]))
        assert second["total"] == len(PEOPLE) + 1
        assert not {r["$distinct_id"] for r in second["results"]} & {*ids, early}
        shifted = answer(query(gateway, secret, page="1", page_size="5"))
        assert shifted["results"][0]["$distinct_id"] == ids[-1]  # by rank alone: one seen again
    finally:
        send(gateway, "/engage", [{"$token": token, "$distinct_id": early, "$delete": ""}])


def test_the_secret_and_the_parameters_are_checked(
    gateway: Gateway, project: tuple[str, str], redis_server: RedisServer
) -> None:
    _, secret = project
    for wrong in (None, "not-a-secret"):
        r = query(gateway, wrong, distinct_id="person-01")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic")
    _, other = create_project_keys(redis_server.url, "engage elsewhere")
    assert answer(query(gateway, other, distinct_id="person-01"))["results"] == []
    bad = [
        {"page_size": "0"},
        {"page_size": str(engage.MAX_PAGE_SIZE + 1)},
        {"page": "-1"},
        {"distinct_ids": "person-01"},
        {"distinct_ids": "[1, [2]]"},
        {"distinct_id": "a", "distinct_ids": '["b"]'},
        {"where": 'properties["n"] > 3'},
    ]
    for params in bad:
        r = query(gateway, secret, params=params)
        assert r.status_code == 400, params
        assert r.json()["error"].split(":")[0].split(",")[0] in params, r.json()
    r = requests.delete(gateway.reports_url(PATHS[0]), auth=(secret, ""), timeout=10)
    assert r.status_code == 405
