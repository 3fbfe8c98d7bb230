"""Profile updates through the real decoder and the real function library in a real Redis, sent as the
batcher sends a partition's transaction: what each operation makes of a profile (the cases the spec
leaves open included), the limits, the index of profiles, the stream of updates, and random sequences
of updates against the plain Python model (profile_model.py)."""

from __future__ import annotations

import json
import uuid
from itertools import count
from typing import Any

import pytest
import redis
from conftest import Batch, RedisServer, send_count, send_write, stream_entries
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profile_model import LAST_SEEN, ProfileId, Profiles, last_seen, stored_profile
from trackgate import Options, bounds, keys, store
from trackgate._native import decode_profile_request
from trackgate.redis_pipe import bulk

NOW = 1_796_660_000.25
SEEN = last_seen(NOW)
# One partition: every profile of a test in one transaction. Wide operations for the property limit.
OPTIONS = Options(partitions=1, max_properties=2 * bounds.MAX_PROFILE_PROPERTIES)
_seqs = count(1)


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    client = redis_server.client()
    client.function_load(store.FUNCTION_SOURCE, replace=True)
    return client


def new_token() -> str:
    return "p" + uuid.uuid4().hex[:15]


def decoded(token: str, updates: list[dict[str, Any]], *, groups: bool = False) -> Batch:
    """The updates (each given its token) as one request's batch."""
    body = json.dumps([{"$token": token, **update} for update in updates]).encode()
    request = decode_profile_request(b"", body, "application/json", groups=groups, now=NOW, options=OPTIONS)
    assert request.errors == []
    [batch] = request.batches
    return batch


def write(client: redis.Redis, *batches: Batch, maxlen: int = 0) -> Any:
    """One transaction of the batches (one or more requests' sections): the function's reply."""
    return send_write(client, batches[0].token.encode(), next(_seqs), list(batches), maxlen=maxlen)[-1]


def person(distinct_id: str, **update: Any) -> dict[str, Any]:
    return {"$distinct_id": distinct_id, **{_op(name): value for name, value in update.items()}}


def _op(name: str) -> str:
    return name if name.startswith("$") else "$" + name


def profile(client: redis.Redis, token: str, distinct_id: str) -> dict[str, Any]:
    return stored_profile(client, token, (None, distinct_id), partitions=1)


def people(client: redis.Redis, token: str) -> list[str]:
    members: list[bytes] = client.zrange(keys.people_key(token, 0), 0, -1)  # type: ignore[assignment]
    return [member.decode() for member in members]


def test_each_operation_in_the_order_sent(client: redis.Redis) -> None:
    token = new_token()
    batch = decoded(
        token,
        [
            person("u", set={"plan": "pro", "n": 1}),
            person("u", set_once={"plan": "free", "first": "free"}),
            person("u", add={"n": 2.5, "logins": 1}),
            person("u", append={"visited": "pricing"}),
            person("u", append={"visited": {"page": "home"}}),
            person("u", union={"tags": ["a", "b", "a"]}),
            person("u", union={"tags": ["b", "c"]}),
            person("u", remove={"tags": "b"}),
            person("u", unset=["first", "absent"]),
        ],
    )
    assert write(client, batch) == [0, 0, 9, 0]
    assert profile(client, token, "u") == {
        "plan": "pro",
        "n": 3.5,
        "logins": 1,
        "visited": ["pricing", {"page": "home"}],
        "tags": ["a", "c"],
        LAST_SEEN: SEEN,
    }
    assert people(client, token) == ["u"]
    # Every update is in the partition's stream of updates, as the decoder normalised it, in order.
    stream = stream_entries(client, keys.profile_updates_key(token, 0))
    sent = [json.loads(fields[b"data"]) for _, fields in stream]
    assert [next(k for k in update if k.startswith("$")) for update in sent] == [
        "$set", "$set_once", "$add", "$append", "$append", "$union", "$union", "$remove", "$unset",
    ]  # fmt: skip
    assert sent[0] == {
        "time": NOW, "received": NOW, "token": token, "distinct_id": "u", "$set": {"plan": "pro", "n": 1},
    }  # fmt: skip


def test_type_clashes_leave_the_property_as_it_is(client: redis.Redis) -> None:
    """`$add` to a non-number, `$append` and `$remove` on a non-list, `$union` into a non-list: each
    property is left as it is (the spec's rule for `$append`/`$remove`, taken for the others), while the
    update's other properties change and `$last_seen` moves."""
    token = new_token()
    write(client, decoded(token, [person("u", set={"s": "text", "n": 1, "l": [1], "o": {"k": 1}})]))
    write(
        client,
        decoded(
            token,
            [
                person("u", add={"s": 1, "l": 1, "o": 1, "n": 1}),
                person("u", append={"s": 1, "n": 1, "o": 1, "l": 2}),
                person("u", union={"s": [1], "n": [1], "l": [3]}),
                person("u", remove={"s": "text", "n": 1, "o": 1, "l": 1}),
                person("u", add={"big": 1e308}),
                person("u", add={"big": 1e308}),
            ],
        ),
    )
    assert profile(client, token, "u") == {
        "s": "text", "n": 2, "l": [2, 3], "o": {"k": 1}, "big": 1e308, LAST_SEEN: SEEN,
    }  # fmt: skip


def test_what_a_missing_profile_becomes(client: redis.Redis) -> None:
    """`$unset`, `$remove` and `$delete` of a missing profile do nothing (no profile, no `$last_seen`);
    the other operations make it, `$add` counting from 0 and `$union` from an empty list, even with
    nothing to set (`$last_seen` alone)."""
    token = new_token()
    reply = write(
        client,
        decoded(
            token,
            [
                person("gone", delete=""),
                person("gone", unset=["a"]),
                person("gone", remove={"a": 1}),
                person("adds", add={"n": -2}),
                person("unions", union={"l": [], "m": [1, 1]}),
                person("empty", set={}),
                person("quiet", set={}, ignore_time=True),
            ],
        ),
    )
    assert reply == [0, 0, 7, 0]
    assert profile(client, token, "gone") == {}
    assert profile(client, token, "adds") == {"n": -2, LAST_SEEN: SEEN}
    assert profile(client, token, "unions") == {"l": [], "m": [1], LAST_SEEN: SEEN}
    assert profile(client, token, "empty") == {LAST_SEEN: SEEN}
    assert profile(client, token, "quiet") == {}
    assert people(client, token) == ["adds", "empty", "unions"]
    # Deleted, a profile leaves the index; emptied by $unset with $ignore_time, too.
    write(
        client,
        decoded(
            token,
            [person("adds", delete="adds"), person("unions", unset=["l", "m", LAST_SEEN], ignore_time=True)],
        ),
    )
    assert people(client, token) == ["empty"]


def test_last_seen_is_the_update_time_unless_ignored(client: redis.Redis) -> None:
    token = new_token()
    write(client, decoded(token, [person("u", set={"a": 1}, time=1_700_000_000.9)]))
    assert profile(client, token, "u")[LAST_SEEN] == "2023-11-14T22:13:20"
    write(client, decoded(token, [person("u", set={"a": 2}, ignore_time=True, time=1_800_000_000)]))
    assert profile(client, token, "u") == {"a": 2, LAST_SEEN: "2023-11-14T22:13:20"}


def test_past_the_property_limit_new_properties_are_left_out(client: redis.Redis) -> None:
    """A profile holds MAX_PROFILE_PROPERTIES properties besides `$last_seen`: an update's new properties
    past that are left out (and counted in the reply), its other properties still change."""
    token, limit = new_token(), bounds.MAX_PROFILE_PROPERTIES
    names = [f"p{i}" for i in range(limit - 2)]
    write(client, decoded(token, [person("u", set=dict.fromkeys(names, 0))]))
    reply = write(
        client,
        decoded(
            token,
            [
                person("u", set={"p0": 1, "new1": 1, "new2": 2, "new3": 3}),
                person("u", add={"p1": 1, "new4": 1}, ignore_time=True),
                person("u", set_once={"new5": 1}),
                person("u", unset=["new1"]),
                person("u", append={"new6": 1, "new7": 1}),
            ],
        ),
    )
    assert reply == [0, 0, 5, 4]
    stored = profile(client, token, "u")
    assert len(stored) == limit + 1
    assert {name: stored[name] for name in ("p0", "p1", "new1" if "new1" in stored else "new2")} == {
        "p0": 1, "p1": 1, "new2": 2,
    }  # fmt: skip
    assert [name for name in ("new3", "new4", "new5", "new6", "new7") if name in stored] == ["new6"]


def test_a_list_keeps_its_newest_elements(client: redis.Redis) -> None:
    token, cap = new_token(), bounds.MAX_PROFILE_LIST
    write(client, decoded(token, [person("u", union={"l": list(range(cap))})]))
    write(client, decoded(token, [person("u", append={"l": "new"}), person("u", union={"l": [0, "x"]})]))
    assert profile(client, token, "u")["l"] == [*range(3, cap), "new", 0, "x"]


def test_groups_have_their_own_profiles_and_index(client: redis.Redis) -> None:
    token = new_token()
    group = {"$group_key": "company", "$group_id": "acme"}
    same_text = {"$group_key": "company:acme", "$group_id": "x"}
    write(
        client,
        decoded(token, [{**group, "$set": {"seats": 40}}, {**same_text, "$set": {"seats": 1}}], groups=True),
        decoded(token, [person("acme", set={"seats": 3})]),
    )
    assert stored_profile(client, token, ("company", "acme"), partitions=1) == {"seats": 40, LAST_SEEN: SEEN}
    assert stored_profile(client, token, ("company:acme", "x"), partitions=1) == {"seats": 1, LAST_SEEN: SEEN}
    assert profile(client, token, "acme") == {"seats": 3, LAST_SEEN: SEEN}
    assert client.zrange(keys.groups_key(token, 0, "company"), 0, -1) == [b"acme"]
    write(client, decoded(token, [{**group, "$delete": ""}], groups=True))
    assert client.zrange(keys.groups_key(token, 0, "company"), 0, -1) == []
    assert people(client, token) == ["acme"]


def test_a_batch_applied_again_changes_nothing(client: redis.Redis) -> None:
    """The counting call run again for a batch (as the batcher resends it when only the call failed)
    finds the batch's counted byte set: an `$add` is not applied twice."""
    token = new_token()
    batch = decoded(token, [person("u", add={"n": 1}), person("u", append={"l": 1})])
    seq = next(_seqs)
    assert send_write(client, token.encode(), seq, [batch])[-1] == [0, 0, 2, 0]
    assert send_count(client, token.encode(), seq, [batch]) == [0, 0, 0, 0]
    assert profile(client, token, "u") == {"n": 1, "l": [1], LAST_SEEN: SEEN}


def packed_args(packed: bytes) -> list[bytes]:
    """The RESP bulk strings of packed arguments."""
    args, at = [], 0
    while at < len(packed):
        header_end = packed.index(b"\r\n", at)
        length = int(packed[at + 1 : header_end])
        args.append(packed[header_end + 2 : header_end + 2 + length])
        at = header_end + 4 + length
    return args


def with_args(batch: Batch, change: Any) -> Batch:
    """`batch` with its packed arguments as `change` makes them of the list of them."""
    args = change(packed_args(batch.packed))
    packed = b"".join(bulk(arg) for arg in args)
    return Batch(
        token=batch.token, partition=batch.partition, count=batch.count, args=len(args),
        packed=packed, xadds=batch.xadds,
    )  # fmt: skip


def test_malformed_update_arguments_change_nothing(client: redis.Redis) -> None:
    token = new_token()
    batch = decoded(token, [person("u", set={"a": 1}), person("u", add={"n": 1})])
    # [$set, "", u, seen, 2, a, 1, $add, "", u, seen, 2, n, 1]
    broken = [
        lambda args: [b"$nope", *args[1:]],
        lambda args: [*args[:4], b"x", *args[5:]],
        lambda args: [*args[:4], b"-2", *args[5:]],
        lambda args: [*args[:4], b"1", *args[5:]],
        lambda args: args[:-1],
        lambda args: [*args[:7], b"$delete", *args[8:]],
    ]
    for change in broken:
        with pytest.raises(redis.ResponseError, match="tg_count: malformed"):
            send_count(client, token.encode(), next(_seqs), [with_args(batch, change)])
    assert list(client.scan_iter(match=f"*{token}*")) == []


def test_the_stream_of_updates_is_trimmed_as_the_events_are(client: redis.Redis) -> None:
    token = new_token()
    for i in range(300):
        write(client, decoded(token, [person(f"u{i}", set={"i": i})]), maxlen=100)
    assert client.xlen(keys.profile_updates_key(token, 0)) < 300


# Random sequences of updates against the model


NAMES = st.sampled_from(["a", "b", "c"])
SCALARS = st.one_of(
    st.integers(-3, 3), st.sampled_from(["x", "y", "é", 'q"', 0.5, -1.25, 1e20]), st.booleans(), st.none()
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(NAMES, SCALARS, max_size=2))
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.25, 1e20]))


def operations(groups: bool) -> st.SearchStrategy[tuple[str, Any]]:
    choices = [
        st.tuples(st.just("$set"), st.dictionaries(NAMES, VALUES, max_size=2)),
        st.tuples(st.just("$set_once"), st.dictionaries(NAMES, VALUES, max_size=2)),
        st.tuples(st.just("$add"), st.dictionaries(NAMES, NUMBERS, max_size=2)),
        st.tuples(st.just("$union"), st.dictionaries(NAMES, st.lists(SCALARS, max_size=3), max_size=2)),
        st.tuples(st.just("$remove"), st.dictionaries(NAMES, SCALARS, max_size=2)),
        st.tuples(st.just("$unset"), st.lists(NAMES, unique=True, max_size=2)),
        st.tuples(st.just("$delete"), st.just("")),
    ]
    if not groups:
        choices.append(st.tuples(st.just("$append"), st.dictionaries(NAMES, VALUES, max_size=2)))
    return st.one_of(choices)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bool, list[dict[str, Any]]]:
    """One request: people's or groups' updates."""
    groups = draw(st.booleans())
    updates = []
    for _ in range(draw(st.integers(1, 3))):
        op, value = draw(operations(groups))
        if groups:
            update: dict[str, Any] = {
                "$group_key": draw(st.sampled_from(["company", "team"])),
                "$group_id": "g1",
            }
        else:
            update = {"$distinct_id": draw(st.sampled_from(["u1", "u2"]))}
        update[op] = value
        if draw(st.booleans()):
            update["$time"] = draw(st.sampled_from([1_700_000_000, 1_796_000_000.5]))
        if draw(st.integers(0, 3)) == 0:
            update["$ignore_time"] = True
        updates.append(update)
    return groups, updates


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(transactions=st.lists(st.lists(requests(), min_size=1, max_size=2), min_size=1, max_size=6))
def test_random_updates_make_what_the_model_makes(
    client: redis.Redis, transactions: list[list[tuple[bool, list[dict[str, Any]]]]]
) -> None:
    token = new_token()
    model = Profiles()
    touched: set[ProfileId] = set()
    for transaction in transactions:
        batches = [decoded(token, updates, groups=groups) for groups, updates in transaction]
        reply = write(client, *batches)
        assert reply == [0, 0, sum(len(updates) for _, updates in transaction), 0]
        for groups, updates in transaction:
            for update in updates:
                model.apply(update, groups=groups, now=NOW)
                touched.add((update["$group_key"], "g1") if groups else (None, update["$distinct_id"]))
    for pid in touched:
        assert stored_profile(client, token, pid, partitions=1) == model.profiles.get(pid, {}), pid
    assert people(client, token) == sorted(id_ for group, id_ in model.profiles if group is None)
    for group_key in ("company", "team"):
        ids: list[bytes] = client.zrange(keys.groups_key(token, 0, group_key), 0, -1)  # type: ignore[assignment]
        assert [i.decode() for i in ids] == sorted(i for g, i in model.profiles if g == group_key)
