"""A batch's transaction with several requests' sections joined, as the batcher sends them: the streams,
counters, unique users and funnel state must be what counting each event by itself gives, the same as
sending the requests one per transaction; `tg_count` run again for a batch changes nothing, nor does a
malformed call."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest
import redis
from conftest import Batch, RedisServer, send_count, send_write
from trackgate import PACKED_LAYOUT, Options, bounds, decode_request, keys, store
from trackgate.flush import Section

DAY = 86400
MIDNIGHT = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()
NOW = MIDNIGHT + 10 * DAY
T = int(MIDNIGHT) + 3600  # 01:00 on 2026-11-20
WINDOW = 30 * DAY
OPTIONS = Options(max_age=400 * DAY, partitions=1)


def plain(token: str, name: str, user: str | None, at: float) -> dict[str, Any]:
    properties: dict[str, Any] = {"token": token, "time": at, "$insert_id": uuid.uuid4().hex}
    if user is not None:
        properties["distinct_id"] = user
    return {"event": name, "properties": properties}


def step(token: str, user: str | None, n: int, at: int) -> dict[str, Any]:
    event = plain(token, "mp_funnel", user, at)
    event["properties"].update(funnel="signup", step=n, goal=f"g{n}")
    return event


def requests_for(token: str) -> list[list[dict[str, Any]]]:
    """Two requests: funnel steps, repeated users within and across the requests, an event without a
    distinct_id, events in another hour and on the day before, names that need no escaping and one that
    does. Each request out of time order, as mixpanel-browser sends them."""
    first = [
        step(token, "u2", 1, T + 10),
        step(token, "u1", 1, T),
        plain(token, "Page View", "u1", T + 1),
        plain(token, "Page View", "u2", T + 2),
        plain(token, "Page View", "u1", T + 3),
        plain(token, "Page View", None, T + 4),
        step(token, "u1", 2, T + 20),
        plain(token, "Page View", "u3", T + 3600),
        plain(token, "Page View", "u1", T - 2 * 3600),
    ]
    second = [
        step(token, "u1", 3, T + 100),
        step(token, "u2", 3, T + 110),
        step(token, None, 2, T + 120),
        step(token, "u1", 2, T + 130),
        plain(token, "Page View", "u1", T + 5),
        plain(token, "Page View", "u4", T + 6),
        plain(token, 'dé "q"', "u4", T + 7),
    ]
    return [first, second]


def decoded(events: list[dict[str, Any]]) -> Batch:
    request = decode_request(b"", json.dumps(events).encode(), "application/json", now=NOW, options=OPTIONS)
    assert request.errors == []
    [batch] = request.batches
    assert (batch.partition, batch.count) == (0, len(events))
    return batch


def short_name(token: str, key: str) -> str:
    """A key of the project's partition 0 without the partition's prefix: the same for every project."""
    prefix = keys.partition_prefix(token, 0)
    assert key.startswith(prefix)
    return key.removeprefix(prefix)


# `client` is a redis.Redis without decode_responses, typed Any: redis-py types its replies
# bytes | str | None.
def state(client: Any, token: str) -> dict[str, Any]:
    """Every key of the project's partition 0 (not the partition's own: the marks and the dedup hashes),
    by its `short_name`; streams as their entries' data, HyperLogLogs as their bytes, the goals without
    the times they were first seen."""
    goals = keys.funnel_goals_key(token, 0, "")
    out: dict[str, Any] = {}
    for raw in client.scan_iter(match=keys.partition_prefix(token, 0) + "*"):
        key = raw.decode()
        kind = client.type(key).decode()
        if kind == "stream":
            out[short_name(token, key)] = [fields[b"data"].decode() for _, fields in client.xrange(key)]
        elif kind == "hash":
            value = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
            if key.startswith(goals):
                value = {k: v for k, v in value.items() if not k.startswith("t")}
            out[short_name(token, key)] = value
        elif kind == "set":
            out[short_name(token, key)] = {m.decode() for m in client.smembers(key)}
        elif kind == "zset":
            scores = client.zrange(key, 0, -1, withscores=True)
            out[short_name(token, key)] = {m.decode(): score for m, score in scores}
        else:
            out[short_name(token, key)] = client.get(key)
    return out


def redis_seconds(client: redis.Redis) -> int:
    """Redis' clock, seconds: what `tg_count` times a funnel's activity with."""
    seconds, _ = client.time()
    return seconds


def expected(client: redis.Redis, token: str, requests: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """What counting each event by itself gives: a counter per (day, hour, name), every user of a
    (day, name) in its HyperLogLog, each day's names, and this scenario's funnel, worked out by hand;
    keys by their `short_name` as `keys` builds them."""
    hours: Counter[tuple[str, str]] = Counter()
    users: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for events in requests:
        for event in events:
            moment = dt.datetime.fromtimestamp(event["properties"]["time"], dt.UTC)
            day, name = moment.date().isoformat(), event["event"]
            hours[(day, f"{moment.hour:02d}:{name}")] += 1
            if event["properties"].get("distinct_id"):
                users[(day, name)].add(event["properties"]["distinct_id"])
    out: dict[str, Any] = defaultdict(dict)
    for (day, field), n in hours.items():
        out[short_name(token, keys.hourly_counts_key(token, 0, day))][field] = str(n)
    for (day, name), ids in users.items():
        # The same users added to a fresh HyperLogLog: the same registers, the same bytes.
        scratch = f"scratch:{uuid.uuid4().hex}"
        client.pfadd(scratch, *sorted(ids))
        out[short_name(token, keys.daily_users_key(token, 0, day, name))] = client.get(scratch)
        client.delete(scratch)
    seen: dict[str, float] = {}  # name -> its last day, as YYYYMMDD
    for (day, field), n in hours.items():
        name = field[3:]
        out.setdefault(short_name(token, keys.event_names_key(token, 0, day)), set()).add(name)
        daily = out[short_name(token, keys.daily_counts_key(token, 0, day))]
        daily[name] = str(int(daily.get(name, 0)) + n)
        seen[name] = max(seen.get(name, 0.0), float(day.replace("-", "")))
    out[short_name(token, keys.names_seen_key(token, 0))] = seen
    out[short_name(token, keys.funnel_names_key(token, 0))] = {"signup"}
    out[short_name(token, keys.funnel_goals_key(token, 0, "signup"))] = {"1": "g1", "2": "g2", "3": "g3"}
    # u1: steps 1, 2, 3 (and 2 again: a hit); u2: step 1, then 3 (out of order); no user: a hit of 2.
    states = {"u1": f"{T}:3:{T + 100}", "u2": f"{T + 10}:1:{T + 10}"}
    out[short_name(token, keys.funnel_states_key(token, 0, "signup"))] = states
    out[short_name(token, keys.funnel_attempts_key(token, 0, "signup"))] = {
        "u1": float(T),
        "u2": float(T + 10),
    }
    out[short_name(token, keys.funnel_counters_key(token, 0, "signup", "2026-11-20"))] = {
        "h1": "2",
        "q1:g1": "2",
        "u1": "2",
        "h2": "3",
        "q2:g2": "3",
        "u2": "1",
        "s2": "20",
        "o2": "1",
        "h3": "2",
        "q3:g3": "2",
        "u3": "1",
        "s3": "80",
        "o3": "1",
    }
    return dict(out)


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    client = redis_server.client()
    client.function_load(store.FUNCTION_SOURCE, replace=True)
    return client


def test_joined_requests_count_as_each_event_by_itself(client: redis.Redis) -> None:
    joined, apart = "j" + uuid.uuid4().hex[:15], "a" + uuid.uuid4().hex[:15]
    joined_requests, apart_requests = requests_for(joined), requests_for(apart)
    parts = [decoded(events) for events in joined_requests]
    started = redis_seconds(client)
    reply = send_write(client, joined.encode(), 1, parts, window=WINDOW)
    assert len(reply) == 2 + 16 + 1
    assert reply[:2] == [16, 1]  # SETRANGE: the ring's length with slot 1 written; EXPIRE: set
    assert reply[-1] == [16, 0]  # counted; none under the overflow name
    for seq, events in enumerate(apart_requests, 1):
        assert send_write(client, apart.encode(), seq, [decoded(events)], window=WINDOW)[-1] == [
            len(events),
            0,
        ]

    stream_name = short_name(joined, keys.stream_key(joined, 0))
    activity_name = short_name(joined, keys.funnel_activity_key(joined, 0))
    got = state(client, joined)
    stream = got.pop(stream_name)
    # The funnel's activity: when (server time) the batch followed it.
    [(funnel, followed)] = got.pop(activity_name).items()
    assert funnel == "signup"
    assert started <= followed <= redis_seconds(client)
    # The stream: each request's events by time, the requests in the order they were joined.
    by_time = [sorted(events, key=lambda e: e["properties"]["time"]) for events in joined_requests]
    assert [json.loads(d)["properties"]["$insert_id"] for d in stream] == [
        e["properties"]["$insert_id"] for events in by_time for e in events
    ]
    assert got == expected(client, joined, joined_requests)
    # Sent one request per call instead, the same state.
    apart_state = state(client, apart)
    assert len(apart_state.pop(stream_name)) == 16
    assert set(apart_state.pop(activity_name)) == {"signup"}
    assert apart_state == got

    # The counting run again for the batch (as the batcher does when only it failed) changes nothing.
    assert send_count(client, joined.encode(), 1, parts, window=WINDOW) == [0, 0]
    again = state(client, joined)
    assert again.pop(stream_name) == stream
    assert again.pop(activity_name) == {funnel: followed}
    assert again == got
    # (PFCOUNT caches the count in the HyperLogLog's bytes: last.)
    assert client.pfcount(keys.daily_users_key(joined, 0, "2026-11-20", "Page View")) == 4


def corrupt(batch: Batch, old: bytes, new: bytes) -> Batch:
    """`batch` with one packed argument replaced, its RESP length fixed."""
    before = b"$%d\r\n%s\r\n" % (len(old), old)
    assert batch.packed.count(before) == 1
    return _with(batch, packed=batch.packed.replace(before, b"$%d\r\n%s\r\n" % (len(new), new)))


def truncated(batch: Batch) -> Batch:
    """`batch` without its last packed argument."""
    return _with(batch, args=batch.args - 1, packed=batch.packed[: batch.packed.rindex(b"$")])


def _with(batch: Batch, **changes: Any) -> Batch:
    """`batch` with some of its parts changed."""
    parts = {
        name: getattr(batch, name) for name in ("token", "partition", "count", "args", "packed", "xadds")
    }
    return Batch(**{**parts, **changes})


def test_one_call_counts_each_projects_events_in_their_own_keys(client: redis.Redis) -> None:
    """A partition's transaction holds a section per project: each project's counters, users, funnels and
    stream are what its requests alone give, and nothing of one project is in another's keys."""
    first, second = "p" + uuid.uuid4().hex[:15], "q" + uuid.uuid4().hex[:15]
    requests = {token: requests_for(token) for token in (first, second)}
    # The requests interleaved, as they come to a flush; the flush joins them per project.
    batches = [
        decoded(events) for pair in zip(requests[first], requests[second], strict=True) for events in pair
    ]
    reply = send_write(client, first.encode(), 1, batches, window=WINDOW)
    assert reply[-1] == [32, 0]
    # The XADDs: the first project's section's, then the second's.
    stream_name = short_name(first, keys.stream_key(first, 0))
    activity_name = short_name(first, keys.funnel_activity_key(first, 0))
    for token, events in requests.items():
        got = state(client, token)
        assert len(got.pop(stream_name)) == 16
        assert set(got.pop(activity_name)) == {"signup"}
        assert got == expected(client, token, events)
    # Run again for the batch: nothing more counted.
    assert send_count(client, first.encode(), 1, batches, window=WINDOW) == [0, 0]
    assert (
        state(client, first)[short_name(first, keys.daily_counts_key(first, 0, "2026-11-20"))]
        == (
            expected(client, first, requests[first])[
                short_name(first, keys.daily_counts_key(first, 0, "2026-11-20"))
            ]
        )
    )


def test_events_sent_one_a_call_count_as_sent_together(client: redis.Redis) -> None:
    """A section of one event (what a partition's call holds per project when many projects send a few
    events each) is counted as any other: the same state as the requests sent whole, whether its name is
    new to the day, known already, or counted under another project's call."""
    token, other = "o" + uuid.uuid4().hex[:15], "x" + uuid.uuid4().hex[:15]
    requests = requests_for(token)
    seq = 0
    for events in requests:
        for event in events:
            seq += 1
            # Each event in a call of its own, beside an event of another project.
            twin = plain(other, "Page View", "u9", T)
            assert (
                send_write(client, token.encode(), seq, [decoded([twin]), decoded([event])], window=WINDOW)[
                    -1
                ][0]
                == 2
            )
    got = state(client, token)
    stream = got.pop(short_name(token, keys.stream_key(token, 0)))
    assert len(stream) == 16
    assert set(got.pop(short_name(token, keys.funnel_activity_key(token, 0)))) == {"signup"}
    assert got == expected(client, token, requests)


def test_a_projects_changed_window_or_caps_apply_from_the_next_call() -> None:
    """The writer encodes a project's section head once and keeps it: a window or caps changed since
    (a reload of the projects) is encoded anew."""
    commands = store.WriteCommands(0, 0, 400 * DAY)
    token = "w" + uuid.uuid4().hex[:15]
    batch = decoded([plain(token, "a", "u1", T)])
    windows, caps_now = [WINDOW], [bounds.DEFAULT_CAPS]  # the projects' current settings, as reloaded

    def head(window: int, caps: bounds.Caps) -> bytes:
        values = (token.encode(), b"%d" % window, b"%d" % caps.event_names_per_day, b"%d" % caps.funnel_names)
        return b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for v in values)

    def sent() -> bytes:
        out: list[bytes] = []
        commands.call(out, 0, b"w:1:1", [Section(batch, 0)], lambda _: windows[-1], lambda _: caps_now[-1])
        return b"".join(out)

    assert head(WINDOW, bounds.DEFAULT_CAPS) in sent()
    windows.append(3600)
    assert head(3600, bounds.DEFAULT_CAPS) in sent()
    caps_now.append(bounds.Caps(event_names_per_day=7, funnel_names=3))
    assert head(3600, caps_now[-1]) in sent()
    assert head(3600, bounds.DEFAULT_CAPS) not in sent()


def test_a_malformed_call_changes_nothing(client: redis.Redis) -> None:
    token = "m" + uuid.uuid4().hex[:15]
    first, second = requests_for(token)
    good, batch = decoded(first), decoded(second)
    broken = [
        # Arguments missing from the end.
        (truncated(batch), "malformed event arguments"),
        # A funnel event's time and step: read after the first writes, so checked before them.
        (corrupt(batch, b"%d" % (T + 120), b"soon"), "malformed funnel event"),
        (corrupt(batch, b"%d" % (T + 130), b"-"), "malformed funnel event"),
        # A token no project can have: a key pattern in it, or too short; each checked in every call.
        (_with(batch, token=token[:10] + "*"), "malformed arguments"),
        (_with(batch, token="short"), "malformed arguments"),
        (_with(batch, token=token[:10] + "*"), "malformed arguments"),
    ]
    for n, (part, message) in enumerate(broken):
        with pytest.raises(redis.ResponseError, match=f"tg_count: {message}"):
            send_count(client, token.encode(), n + 1, [good, part], window=WINDOW)
        assert list(client.scan_iter(match=f"*{token}*")) == [], n
        assert not client.exists(keys.mark_key(0, token.encode())), n
    # The same batch id then applies.
    assert send_count(client, token.encode(), 1, [good, batch], window=WINDOW) == [16, 0]


def test_attempts_no_later_event_can_continue_are_removed(client: redis.Redis) -> None:
    """An attempt begun more than window + late (+ an hour's margin) before now can never be continued:
    the next call that writes the funnel's states removes it, and the funnel's keys expire when idle."""
    token = "x" + uuid.uuid4().hex[:15]
    now = time.time()
    options = Options(max_age=400 * DAY, partitions=1)

    def batch(user: str, at: float) -> Batch:
        event = step(token, user, 1, int(at))
        request = decode_request(
            b"", json.dumps([event]).encode(), "application/json", now=now, options=options
        )
        [decoded] = request.batches
        return decoded

    states, index = keys.funnel_states_key(token, 0, "signup"), keys.funnel_attempts_key(token, 0, "signup")
    # Written while events may still arrive 400 days late: kept.
    send_write(client, token.encode(), 1, [batch("gone", now - 2 * DAY)], window=60, late=400 * DAY)
    assert client.hkeys(states) == [b"gone"]
    # Events may now be at most a minute late, and attempts last a minute: "gone" is over.
    send_write(client, token.encode(), 2, [batch("here", now - 10)], window=60, late=60)
    assert client.hkeys(states) == [b"here"]
    assert client.zrange(index, 0, -1) == [b"here"]
    assert 0 < client.ttl(states) <= 60 + 60 + 3600
    assert 0 < client.ttl(index) <= 60 + 60 + 3600


def test_a_call_of_another_version_changes_nothing(client: redis.Redis) -> None:
    """A gateway and a function library of different versions must not misread each other: a call in
    another argument layout, or with another number of keys, is refused before anything changes."""
    token = "v" + uuid.uuid4().hex[:15]
    names: tuple[str, ...] = keys.count_function_keys(0)
    event = ["2026-11-20", "01:Page View", "u1", ""]

    caps = bounds.DEFAULT_CAPS
    section = [token, WINDOW, caps.event_names_per_day, caps.funnel_names, len(event)]

    def call(names: tuple[str, ...], layout: object) -> Any:
        retention = bounds.DEFAULT_COUNTER_RETENTION_DAYS
        return client.fcall(
            "tg_count", len(names), *names, 0, 0, layout, "w:1:1", DAY, retention, *section, *event
        )

    with pytest.raises(redis.ResponseError, match="different versions"):
        call(names, PACKED_LAYOUT + 1)
    # The decoder's layout alone: a library from before the header's last change.
    with pytest.raises(redis.ResponseError, match="different versions"):
        call(names, PACKED_LAYOUT)
    # The layout of the call before partitions were shared.
    with pytest.raises(redis.ResponseError, match="different versions"):
        call(names, f"{PACKED_LAYOUT}.2")
    with pytest.raises(redis.ResponseError, match="different versions"):
        call((*names, keys.stream_key(token, 0)), store.LAYOUT)
    assert list(client.scan_iter(match=f"*{token}*")) == []
    assert call(names, store.LAYOUT) == [1, 0]
