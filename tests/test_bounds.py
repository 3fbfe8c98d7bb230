"""Every key `tg_count` writes has a bound: a day's counters expire after the counter retention, and names
past a project's caps are counted under the overflow name, their events still stored."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
import requests
from conftest import PARTITIONS, Gateway, RedisServer, create_project, send_count, send_write
from test_write_function import DAY, WINDOW, T, decoded, plain, redis_seconds, step
from trackgate import bounds, keys, store

RETENTION = bounds.DEFAULT_COUNTER_RETENTION_DAYS * DAY
DAY0 = "2026-11-20"  # T's day


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    client = redis_server.client()
    client.function_load(store.FUNCTION_SOURCE, replace=True)
    return client


def funnel_step(token: str, user: str, funnel: str, n: int, at: int) -> dict[str, Any]:
    event = step(token, user, n, at)
    event["properties"]["funnel"] = funnel
    return event


def project_keys(client: redis.Redis, token: str) -> set[str]:
    """The project's keys in any partition (not the partitions' own: marks, dedup sets)."""
    return {raw.decode() for raw in client.scan_iter(match=keys.partitions_pattern(token) + "*")}


def test_a_days_keys_expire_after_the_retention(client: redis.Redis) -> None:
    token = "r" + uuid.uuid4().hex[:15]
    events = [
        plain(token, "Page View", "u1", T),
        plain(token, "No User", None, T + 1),
        funnel_step(token, "u1", "signup", 1, T + 2),
    ]
    assert send_write(client, token.encode(), 1, [decoded(events)])[-1] == [3, 0]
    # A user's event of a name first seen without one: its unique users keep the expiry set then.
    assert send_write(client, token.encode(), 2, [decoded([plain(token, "No User", "u2", T + 3)])])[-1] == [
        1,
        0,
    ]
    stream = keys.stream_key(token, 0)
    # Users' attempts: for as long as a later event could continue one (test_write_function).
    attempts = {keys.funnel_states_key(token, 0, "signup"), keys.funnel_attempts_key(token, 0, "signup")}
    for key in attempts:
        assert 0 < client.ttl(key) <= WINDOW + 400 * DAY + 3600
    # The dedup hashes: until the end of the bucket after theirs (test_dedup_function).
    dedup_family = keys.partition_prefix(token, 0) + keys.Family.DEDUP
    dedup = {key for key in project_keys(client, token) if key.startswith(dedup_family)}
    for key in dedup:
        assert 0 < client.ttl(key) <= 2 * store.DEFAULT_DEDUP_WINDOW
    for key in project_keys(client, token) - {stream, *attempts, *dedup}:
        assert RETENTION - 60 < client.ttl(key) <= RETENTION, key
    assert client.ttl(stream) == -1  # trimmed by age and length instead
    assert client.pfcount(keys.daily_users_key(token, 0, DAY0, "No User")) == 1


def test_names_past_the_caps_are_stored_and_counted_as_overflow(client: redis.Redis) -> None:
    token = "c" + uuid.uuid4().hex[:15]
    caps = bounds.Caps(event_names_per_day=3, funnel_names=2)
    overflow = bounds.OVERFLOW
    first = [
        plain(token, "a", "u1", T),
        plain(token, "b", "u1", T + 1),
        funnel_step(token, "u1", "f1", 1, T + 2),
        funnel_step(token, "u1", "f2", 1, T + 3),
        funnel_step(token, "u1", "f3", 1, T + 4),  # a third funnel: past the funnel cap
        plain(token, "c", "u2", T + 5),  # a fourth name, after a, b and mp_funnel: past the name cap
        plain(token, "d", "u2", T + 6),
    ]
    # Seven events stored, three of them counted as the overflow name.
    assert send_write(client, token.encode(), 1, [decoded(first)], caps=caps)[-1] == [7, 3]
    assert client.xlen(keys.stream_key(token, 0)) == 7
    assert client.smembers(keys.event_names_key(token, 0, DAY0)) == {
        b"a",
        b"b",
        b"mp_funnel",
        overflow.encode(),
    }
    hourly = keys.hourly_counts_key(token, 0, DAY0)
    assert client.hgetall(hourly) == {
        b"01:a": b"1",
        b"01:b": b"1",
        b"01:mp_funnel": b"2",
        f"01:{overflow}".encode(): b"3",
    }
    assert client.pfcount(keys.daily_users_key(token, 0, DAY0, overflow)) == 2
    assert client.smembers(keys.funnel_names_key(token, 0)) == {b"f1", b"f2"}
    assert not client.exists(keys.funnel_goals_key(token, 0, "f3"), keys.funnel_states_key(token, 0, "f3"))
    counted = set(project_keys(client, token))

    # The admitted names keep counting, new ones overflow, and the overflow name is not a name the cap
    # counts; a resent counting changes nothing.
    second = [
        plain(token, "a", "u3", T + 7),
        plain(token, "e", "u3", T + 8),
        funnel_step(token, "u3", "f1", 1, T + 9),
    ]
    assert send_write(client, token.encode(), 2, [decoded(second)], caps=caps)[-1] == [3, 1]
    assert send_count(client, token.encode(), 2, [decoded(second)]) == [0, 0]
    assert client.hget(hourly, "01:a") == b"2"
    assert client.hget(hourly, f"01:{overflow}") == b"4"
    assert client.hget(hourly, "01:e") is None
    assert set(project_keys(client, token)) == counted
    # Raised caps admit new names from the next batch on.
    third = [plain(token, "e", "u3", T + 10), funnel_step(token, "u3", "f3", 1, T + 11)]
    raised = bounds.Caps(event_names_per_day=4, funnel_names=3)
    assert send_write(client, token.encode(), 3, [decoded(third)], caps=raised)[-1] == [2, 0]
    assert client.hget(hourly, "01:e") == b"1"
    assert client.sismember(keys.funnel_names_key(token, 0), "f3")

    # Each day has its own names.
    next_day = [plain(token, name, "u1", T + DAY + i) for i, name in enumerate("xyzw")]
    assert send_write(client, token.encode(), 4, [decoded(next_day)], caps=caps)[-1] == [4, 1]


def test_events_one_a_call_past_the_cap_are_counted_as_overflow(client: redis.Redis) -> None:
    """A call's section of one event (many projects, a few events each) is counted by the cap as any
    other: a name new to its hour is admitted or refused by the day's set, and a refused name leaves no
    counter of its own, however often it comes."""
    token = "o" + uuid.uuid4().hex[:15]
    caps = bounds.Caps(event_names_per_day=2, funnel_names=2)
    overflow = bounds.OVERFLOW
    sent = [
        ("a", T, [1, 0]),  # new to the day
        ("a", T + 1, [1, 0]),  # known in its hour
        ("b", T + 2, [1, 0]),  # the cap's second name
        ("c", T + 3, [1, 1]),  # past the cap
        ("c", T + 4, [1, 1]),  # past it again
        ("a", T + 3600, [1, 0]),  # an admitted name, new to its hour
        ("c", T + 3601, [1, 1]),
        ("b", T + 3602, [1, 0]),
    ]
    for seq, (name, at, reply) in enumerate(sent, start=1):
        events = [plain(token, name, f"u{seq}", at)]
        assert send_write(client, token.encode(), seq, [decoded(events)], caps=caps)[-1] == reply, name
    hourly = keys.hourly_counts_key(token, 0, DAY0)
    assert client.hgetall(hourly) == {
        b"01:a": b"2",
        b"01:b": b"1",
        f"01:{overflow}".encode(): b"2",
        b"02:a": b"1",
        b"02:b": b"1",
        f"02:{overflow}".encode(): b"1",
    }
    daily = client.hgetall(keys.daily_counts_key(token, 0, DAY0))
    assert daily == {b"a": b"3", b"b": b"2", overflow.encode(): b"3"}
    assert client.smembers(keys.event_names_key(token, 0, DAY0)) == {b"a", b"b", overflow.encode()}
    assert client.pfcount(keys.daily_users_key(token, 0, DAY0, overflow)) == 3
    assert client.xlen(keys.stream_key(token, 0)) == len(sent)
    for key in project_keys(client, token) - {keys.stream_key(token, 0)}:
        assert RETENTION - 60 < client.ttl(key) <= RETENTION, key


def test_a_flood_of_names_in_one_batch_makes_keys_up_to_the_cap(client: redis.Redis) -> None:
    """Thousands of new names in one call (two requests joined): the sets are read and written in slices,
    and the keys made are the caps'."""
    token = "f" + uuid.uuid4().hex[:15]
    caps = bounds.Caps(event_names_per_day=1500, funnel_names=1200)
    funnels = decoded([funnel_step(token, "u1", f"funnel {i}", 1, T) for i in range(1500)])
    names = decoded([plain(token, f"name {i}", f"u{i}", T + 1) for i in range(2000)])
    # mp_funnel is the day's first name; 300 funnels and 501 names are past the caps.
    assert send_write(client, token.encode(), 1, [funnels, names], caps=caps)[-1] == [3500, 300 + 501]
    day_names = client.smembers(keys.event_names_key(token, 0, DAY0))
    assert len(day_names) == 1500 + 1
    assert bounds.OVERFLOW.encode() in day_names
    prefix = keys.daily_users_key(token, 0, DAY0, "")
    users = {key for key in project_keys(client, token) if key.startswith(prefix)}
    assert len(users) == 1501
    assert client.scard(keys.funnel_names_key(token, 0)) == 1200
    assert client.zcard(keys.funnel_activity_key(token, 0)) == 1200
    assert client.xlen(keys.stream_key(token, 0)) == 3500


def test_a_quiet_funnel_gives_its_place_up_to_a_new_one(client: redis.Redis) -> None:
    """The funnel cap holds the funnels a batch followed within the funnel window plus the late allowance:
    past that no event can continue an attempt, so a quiet funnel's place goes to a new funnel, and the
    quiet one comes back as a new one would. The function reads Redis' clock: the test moves a funnel's
    last batch into the past instead of waiting."""
    token = "q" + uuid.uuid4().hex[:15]
    caps = bounds.Caps(funnel_names=2)
    late = 3 * 3600
    active, names = keys.funnel_activity_key(token, 0), keys.funnel_names_key(token, 0)

    def follow(seq: int, *funnels: str) -> list[int]:
        """[events counted, of them as overflow] of a batch with a step 1 of each funnel."""
        events = decoded([funnel_step(token, "u1", funnel, 1, T + i) for i, funnel in enumerate(funnels)])
        reply: list[int] = send_write(
            client, token.encode(), seq, [events], window=WINDOW, late=late, caps=caps
        )[-1]
        return reply

    def last_followed(funnel: str, ago: int) -> None:
        assert client.zadd(active, {funnel: redis_seconds(client) - ago}, xx=True, ch=True) == 1

    assert follow(1, "f1", "f2") == [2, 0]
    # The cap is full while both are active: one whose last batch is well within the window stays.
    last_followed("f1", WINDOW + late - 3600)
    assert follow(2, "f3") == [1, 1]
    assert not client.exists(keys.funnel_goals_key(token, 0, "f3"))
    # Quiet for longer than window + late: its place goes to f3, its name stays listed for reports.
    last_followed("f1", WINDOW + late + 1)
    started = redis_seconds(client)
    assert follow(3, "f3", "f2") == [2, 0]
    assert client.hget(keys.funnel_goals_key(token, 0, "f3"), "1") == b"g1"
    assert client.smembers(names) == {b"f1", b"f2", b"f3"}
    # Each batch that follows a funnel sets its last batch to the batch's time.
    assert set(client.zrange(active, 0, -1)) == {b"f2", b"f3"}
    assert client.zcount(active, started, "+inf") == 2
    # f1 comes back as a new funnel: refused while the two others are active...
    assert follow(4, "f1") == [1, 1]
    # ...and followed again once one of them is quiet; that one, named in the same batch, is then new
    # and refused.
    last_followed("f2", WINDOW + late + 1)
    assert follow(5, "f1", "f2") == [2, 1]
    assert set(client.zrange(active, 0, -1)) == {b"f1", b"f3"}
    assert client.smembers(names) == {b"f1", b"f2", b"f3"}
    # A quiet funnel named before a new one takes its place again, not one more place.
    last_followed("f3", WINDOW + late + 1)
    assert follow(6, "f3", "f4") == [2, 1]
    assert set(client.zrange(active, 0, -1)) == {b"f1", b"f3"}
    for key in (active, names):
        assert RETENTION - 60 < client.ttl(key) <= RETENTION


def overflowed_total(gw: Gateway) -> float:
    text = requests.get(gw.url("/metrics"), timeout=10).text
    found = re.search(r"^trackgate_events_overflowed_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def flood(gw: Gateway, token: str, at: int, *, funnels: bool) -> None:
    """20,000 events at `at`, each of a name of its own (or of a funnel of its own) and a user of its
    own, sent as mixpanel-browser sends them: 2,000 events a request."""
    events = [
        funnel_step(token, f"user {i}", f"funnel {i}", 1, at)
        if funnels
        else plain(token, f"event {i}", f"user {i}", at)
        for i in range(20_000)
    ]
    with requests.Session() as http:
        for i in range(0, len(events), 2000):
            body = json.dumps(events[i : i + 2000])
            assert http.post(gw.url("/track"), data={"data": body}, timeout=60).text == "1"


def families(client: redis.Redis, token: str) -> Counter[str]:
    """The project's keys by family, over its partitions."""
    found: Counter[str] = Counter()
    for p in range(PARTITIONS):
        prefix = keys.partition_prefix(token, p)
        for raw in client.scan_iter(match=f"{prefix}*", count=1000):
            rest = raw.decode().removeprefix(prefix)
            found[next(f.name for f in keys.Family if rest.startswith(f.value))] += 1
    return found


# `client` is a redis.Redis without decode_responses, typed Any: redis-py types its replies
# bytes | str | None.
def counted_as_overflow(client: Any, token: str, day: str) -> int:
    """The events of the day counted under the overflow name, over the partitions."""
    field = f":{bounds.OVERFLOW}".encode()
    return sum(
        int(n)
        for p in range(PARTITIONS)
        for name, n in client.hgetall(keys.hourly_counts_key(token, p, day)).items()
        if name.endswith(field)
    )


def test_a_flood_of_new_names_through_the_gateway_stays_within_the_caps(
    gateway: Gateway, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    """20,000 new funnel names, then 20,000 new event names, sent through /track with the default caps:
    every event is stored, and the keys the names make are the caps', per partition."""
    token = create_project(redis_server.url, f"flood {uuid.uuid4().hex[:8]}")
    caps = bounds.DEFAULT_CAPS
    at = int(time.time()) - 60
    day = time.strftime("%Y-%m-%d", time.gmtime(at))
    before = overflowed_total(gateway)
    flood(gateway, token, at, funnels=True)
    flood(gateway, token, at, funnels=False)

    assert sum(rclient.xlen(keys.stream_key(token, p)) for p in range(PARTITIONS)) == 40_000
    # Each partition took thousands of names of each kind: each is at its caps, exactly. Its day's names
    # are mp_funnel, the overflow name and as many event names as the cap leaves.
    for p in range(PARTITIONS):
        assert rclient.scard(keys.funnel_names_key(token, p)) == caps.funnel_names
        assert rclient.zcard(keys.funnel_activity_key(token, p)) == caps.funnel_names
        assert rclient.scard(keys.event_names_key(token, p, day)) == caps.event_names_per_day + 1
        assert rclient.zcard(keys.names_seen_key(token, p)) == caps.event_names_per_day + 1
        assert rclient.hlen(keys.daily_counts_key(token, p, day)) == caps.event_names_per_day + 1
    found = families(rclient, token)
    assert found["DAILY_USERS"] == PARTITIONS * (caps.event_names_per_day + 1)
    assert found["EVENT_NAMES"] == found["HOURLY_COUNTS"] == found["DAILY_COUNTS"] == PARTITIONS
    assert found["NAMES_SEEN"] == PARTITIONS
    # A funnel's goals, its users' attempts and its day's counters.
    for family in ("FUNNEL_GOALS", "FUNNEL_STATES", "FUNNEL_ATTEMPTS", "FUNNEL_COUNTERS"):
        assert found[family] == PARTITIONS * caps.funnel_names, family
    assert found["FUNNEL_NAMES"] == found["FUNNEL_ACTIVITY"] == found["STREAM"] == PARTITIONS

    # What went over is counted under the overflow name, in Redis and in /metrics, and logged.
    over = counted_as_overflow(rclient, token, day)
    funnels_over = 20_000 - PARTITIONS * caps.funnel_names
    names_over = 20_000 - PARTITIONS * (caps.event_names_per_day - 1)
    assert over == funnels_over + names_over
    assert overflowed_total(gateway) - before == over
    assert f"counted as {bounds.OVERFLOW}" in gateway.log()
