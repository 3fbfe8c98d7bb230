"""Profile updates of the official clients against a real gateway and a real Redis: every /engage and
/groups request of the captures of mixpanel-python 5.4.1 and mixpanel-browser 2.82.1 replayed byte for
byte, and every people_* and group_* method of mixpanel-python, with the stored profiles compared with
what the spec's semantics give (profile_model.py, and written out for a few)."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import captures
import pytest
import redis
from captures import CAPTURED_TOKEN, replay, sent_objects
from conftest import PARTITIONS, Gateway, RedisServer, create_project, stream_entries
from mixpanel import BufferedConsumer, Consumer, Mixpanel
from profile_model import LAST_SEEN, ProfileId, Profiles, last_seen, stored_profile
from trackgate import keys

PYTHON_RUN, BROWSER_RUN = captures.PYTHON_PEOPLE, captures.BROWSER_PEOPLE


@pytest.fixture(scope="module")
def people_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: the captured clients' profiles, and nothing else's."""
    server = RedisServer(tmp_path_factory.mktemp("people-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def people_gateway(people_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    create_project(people_redis.url, "captured clients", token=CAPTURED_TOKEN)
    gateway = Gateway(tmp_path_factory.mktemp("people-gateway"), redis_url=people_redis.url)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(people_redis: RedisServer) -> Iterator[redis.Redis]:
    with people_redis.client() as client:
        yield client


def captured(name: str) -> list[dict[str, Any]]:
    """The captured requests to /engage and /groups, in the order sent."""
    return captures.captured(name, ("/engage", "/groups"))


def seconds_of(seen: str) -> float:
    return dt.datetime.fromisoformat(seen).replace(tzinfo=dt.UTC).timestamp()


def assert_profiles(client: redis.Redis, token: str, model: Profiles, pids: set[ProfileId]) -> None:
    """Each profile as the model has it; a `$last_seen` the gateway's clock set (an update without
    `$time`) within a few seconds of the model's."""
    for pid in pids:
        stored, expected = stored_profile(client, token, pid), model.profiles.get(pid, {})
        seen, expected_seen = stored.pop(LAST_SEEN, None), expected.pop(LAST_SEEN, None)
        assert stored == expected, pid
        assert (seen is None) == (expected_seen is None), pid
        if seen is not None and expected_seen is not None:
            assert abs(seconds_of(seen) - seconds_of(expected_seen)) <= 5, pid


def indexed_people(client: redis.Redis, token: str) -> set[str]:
    found: set[str] = set()
    for partition in range(PARTITIONS):
        members: list[bytes] = client.zrange(keys.people_key(token, partition), 0, -1)  # type: ignore[assignment]
        found.update(member.decode() for member in members)
    return found


def test_the_captured_requests_replayed(people_gateway: Gateway, client: redis.Redis) -> None:
    model, pids, replayed = Profiles(), set(), 0
    for name in (PYTHON_RUN, BROWSER_RUN):
        requests_sent = captured(name)
        assert len(requests_sent) == {PYTHON_RUN: 19, BROWSER_RUN: 8}[name]
        for capture in requests_sent:
            answered_at = time.time()
            r = replay(people_gateway, capture)
            assert r.status_code == 200, r.text
            if "verbose=1" in capture["path"] or b"verbose=1" in base64.b64decode(capture["body_b64"]):
                assert r.json() == {"status": 1, "error": None}
            else:
                assert r.text == "1"
            origin = capture["headers"].get("origin")
            assert r.headers.get("access-control-allow-origin") == origin
            groups = urlsplit(capture["path"]).path.startswith("/groups")
            for update in sent_objects(capture):
                model.apply(update, groups=groups, now=answered_at)
                pid = (
                    (update["$group_key"], update["$group_id"]) if groups else (None, update["$distinct_id"])
                )
                pids.add(pid)
                replayed += 1
    assert_profiles(client, CAPTURED_TOKEN, model, pids)
    assert indexed_people(client, CAPTURED_TOKEN) == {i for g, i in model.profiles if g is None}
    updates = sum(len(stream_entries(client, keys.profile_updates_key(CAPTURED_TOKEN, p))) for p in range(4))
    assert updates == replayed
    # Written out, what the spec's semantics give the profiles every call of a run touched.
    python_user = stored_profile(client, CAPTURED_TOKEN, (None, "python-user-1"))
    assert python_user == {
        "plan": "pro",
        "$email": "ann@example.com",
        "b64probe": "~~~~~~??????",
        "logins": 1,
        "credits": -2.5,
        "visited": ["pricing"],
        "tags": ["b"],
        "quiet": True,
        "i": 1,
        LAST_SEEN: last_seen(1796660267.8169591),  # the batch's $time; the $set before it ignored time
    }
    acme = stored_profile(client, CAPTURED_TOKEN, ("company", "acme"))
    assert acme.pop(LAST_SEEN) >= last_seen(time.time() - 600)  # the browser's updates carry no $time
    assert acme == {"plan": "enterprise", "seats": 40, "regions": ["eu", "us"]}
    assert stored_profile(client, CAPTURED_TOKEN, (None, "browser-user-1")) == {}  # people.delete_user
    assert stored_profile(client, CAPTURED_TOKEN, (None, "python-user-2"))["i"] == 2  # deleted, then set
    assert stored_profile(client, CAPTURED_TOKEN, ("company", "old-co")) == {}


def test_every_people_and_group_method_of_mixpanel_python(
    people_gateway: Gateway, people_redis: RedisServer, client: redis.Redis
) -> None:
    token = create_project(people_redis.url, "python library")
    consumer = Consumer(
        events_url=people_gateway.url("/track"),
        people_url=people_gateway.url("/engage"),
        groups_url=people_gateway.url("/groups"),
    )
    mp = Mixpanel(token, consumer=consumer)
    started = last_seen(time.time())
    user, gone = "py-user", "py-gone"
    mp.people_set(user, {"plan": "pro", "seats": 1, "first": "x"})
    mp.people_set_once(user, {"plan": "free", "trial": True})
    mp.people_increment(user, {"logins": 2, "seats": 1})
    mp.people_append(user, {"visited": "pricing"})
    mp.people_union(user, {"tags": ["a", "b"]})
    mp.people_remove(user, {"tags": "a"})
    mp.people_unset(user, ["first"])
    mp.people_track_charge(user, 9.99, {"sku": "x1"})
    mp.people_clear_charges(user)
    mp.people_track_charge(user, 5)
    mp.people_update({"$distinct_id": user, "$set": {"quiet": True}, "$ignore_time": True})
    mp.people_set(gone, {"plan": "pro"})
    mp.people_delete(gone)
    mp.group_set("company", "acme", {"plan": "enterprise", "seats": 40})
    mp.group_set_once("company", "acme", {"founded": 1999, "plan": "free"})
    mp.group_union("company", "acme", {"regions": ["eu", "us"]})
    mp.group_remove("company", "acme", {"regions": "us"})
    mp.group_unset("company", "acme", ["founded"])
    mp.group_update({"$group_key": "company", "$group_id": "acme", "$add": {"seats": 2}})
    mp.group_set("company", "gone", {"plan": "pro"})
    mp.group_delete("company", "gone")
    stored = stored_profile(client, token, (None, user))
    assert stored.pop(LAST_SEEN) >= started
    assert stored == {
        "plan": "pro",
        "seats": 2,
        "trial": True,
        "logins": 2,
        "visited": ["pricing"],
        "tags": ["b"],
        "$transactions": [{"$amount": 5}],
        "quiet": True,
    }
    assert stored_profile(client, token, (None, gone)) == {}
    acme = stored_profile(client, token, ("company", "acme"))
    assert acme.pop(LAST_SEEN) >= started
    assert acme == {"plan": "enterprise", "seats": 42, "regions": ["eu"]}
    assert stored_profile(client, token, ("company", "gone")) == {}
    assert indexed_people(client, token) == {user}


def test_buffered_people_updates_of_mixpanel_python(
    people_gateway: Gateway, people_redis: RedisServer, client: redis.Redis
) -> None:
    token = create_project(people_redis.url, "python buffered")
    consumer = BufferedConsumer(people_url=people_gateway.url("/engage"))  # batches of 50
    mp = Mixpanel(token, consumer=consumer)
    for i in range(60):
        mp.people_increment(f"buffered-{i % 7}", {"n": 1, "total": i})
    consumer.flush()
    for user in range(7):
        ns = [i for i in range(60) if i % 7 == user]
        stored = stored_profile(client, token, (None, f"buffered-{user}"))
        assert (stored["n"], stored["total"]) == (len(ns), sum(ns))
