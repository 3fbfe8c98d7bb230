"""Deduplication in the function library, against a real Redis: the transactions the batcher sends, with
the decoder's dedup hashes. A retried batch is stored and counted once, whatever else the batch holds; an
event differing in any one of the four fields, or without `$insert_id`, is stored again; the sets of
hashes are read in two buckets and expire; a counting resent alone counts no duplicate and leaves the
stream alone; and with the window 0 nothing of it is sent or kept."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from conftest import send_count, send_write, stored_events
from test_write_function import DAY, OPTIONS, WINDOW, T, corrupt, decoded, plain
from trackgate import Options, decode_request, keys, store
from trackgate._native import DEDUP_HASH_BYTES, PartitionBatch, ReplyReader, decode_profile_request


@pytest.fixture
def client(redis_server: Any) -> Any:
    with redis_server.private_client() as c:
        c.function_load(store.FUNCTION_SOURCE, replace=True)
        yield c


def new_token() -> str:
    return "d" + uuid.uuid4().hex[:15]


def named(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (name, $insert_id) of events, in order."""
    return [(e["event"], e["properties"].get("$insert_id", "")) for e in events]


def counted(client: Any, token: str, day: str = "2026-11-20") -> dict[str, int]:
    """The day's event counts, by name."""
    return {k.decode(): int(v) for k, v in client.hgetall(keys.daily_counts_key(token, 0, day)).items()}


def dedup_hashes(batch: PartitionBatch) -> list[bytes]:
    """The last argument of each event of a batch packed with deduplication: its dedup hash."""
    reader = ReplyReader()
    reader.feed(batch.packed)
    args = []
    while (arg := reader.gets()) is not False:
        assert isinstance(arg, bytes)
        args.append(arg)
    hashes, i = [], 0
    while i < len(args):
        i += (7 if args[i + 3] else 4) + 1
        hashes.append(args[i - 1])
    return hashes


def test_a_retried_batch_is_stored_and_counted_once(client: redis.Redis) -> None:
    token = new_token()
    events = [plain(token, "Page View", f"u{n}", T + n) for n in range(5)]
    batch = decoded(events)
    assert send_write(client, token.encode(), 1, [batch], window=WINDOW)[-1] == [5, 0]
    # The client did not hear the answer and sends the same events again: a new request, a new batch id.
    assert send_write(client, token.encode(), 2, [decoded(events)], window=WINDOW)[-1] == [
        0,
        0,
        0,
        0,
        [0, 1, 2, 3, 4],
    ]
    assert named(stored_events(client, token)) == named(events)
    assert counted(client, token) == {"Page View": 5}
    assert client.hgetall(keys.hourly_counts_key(token, 0, "2026-11-20")) == {b"01:Page View": b"5"}


def test_projects_sharing_a_partition_never_take_each_others_events_for_duplicates(
    client: redis.Redis,
) -> None:
    """A partition's sets of hashes are its projects': the same event (name, distinct_id, time,
    $insert_id) in two projects is two events; a retry in one call with another project's events is
    found by its place among all the call's entries."""
    first, second = new_token(), new_token()
    event = plain(first, "Signup", "u1", T)
    twin = {"event": "Signup", "properties": {**event["properties"], "token": second}}
    assert send_write(client, first.encode(), 1, [decoded([event]), decoded([twin])], window=WINDOW)[-1] == [
        2,
        0,
    ]
    other = plain(second, "Click", "u1", T + 1)
    # The second call: the first project's retry, then the second project's retry and a new event.
    reply = send_write(client, first.encode(), 2, [decoded([event]), decoded([twin, other])], window=WINDOW)
    assert reply[-1] == [1, 0, 0, 0, [0, 1]]
    assert named(stored_events(client, first)) == named([event])
    assert named(stored_events(client, second)) == named([twin, other])
    assert counted(client, first) == {"Signup": 1}
    assert counted(client, second) == {"Signup": 1, "Click": 1}


def test_the_same_event_twice_in_one_batch_is_stored_once(client: redis.Redis) -> None:
    token = new_token()
    first, other = plain(token, "Signup", "u1", T), plain(token, "Click", "u1", T + 1)
    batch = decoded([first, other, first])
    # In time order: the first (0), its copy (1), the other (2).
    assert send_write(client, token.encode(), 1, [batch], window=WINDOW)[-1] == [2, 0, 0, 0, [1]]
    assert named(stored_events(client, token)) == named([first, other])
    assert counted(client, token) == {"Signup": 1, "Click": 1}


def test_a_duplicate_among_profile_updates_is_found_by_its_place_and_only_it_leaves_the_stream(
    client: redis.Redis,
) -> None:
    token = new_token()
    stored = plain(token, "Signup", "u1", T)
    assert send_write(client, token.encode(), 1, [decoded([stored])], window=WINDOW)[-1] == [1, 0]
    stream: Any = client.xrange(keys.stream_key(token, 0))
    [kept_id] = [entry_id for entry_id, _ in stream]
    update = decode_profile_request(
        b"",
        json.dumps({"$token": token, "$distinct_id": "u1", "$set": {"plan": "pro"}}).encode(),
        "application/json",
        groups=False,
        now=T,
        options=OPTIONS,
    ).batches
    before, after = plain(token, "A", "u1", T - 1), plain(token, "B", "u1", T + 2)
    events = decoded([before, stored, after])
    # Entries: the update (0), then the events (1, 2, 3): the stored one is the third entry.
    reply = send_write(client, token.encode(), 2, [*update, events], window=WINDOW)
    assert reply[-1] == [2, 0, 1, 0, [2]]
    entries: Any = client.xrange(keys.stream_key(token, 0))
    assert [json.loads(fields[b"data"])["event"] for _, fields in entries] == ["Signup", "A", "B"]
    assert entries[0][0] == kept_id, "the first one stays, with its place in the stream"
    assert client.hget(keys.person_key(token, 0, "u1"), "plan") == b'"pro"'
    assert counted(client, token) == {"Signup": 1, "A": 1, "B": 1}


def test_events_differing_in_any_one_field_are_each_stored(client: redis.Redis) -> None:
    token = new_token()
    base = plain(token, "Page View", "u1", T + 0.2)
    insert_id = base["properties"]["$insert_id"]

    def like(name: str = "Page View", user: str = "u1", at: float = T + 0.2, iid: str = insert_id) -> Any:
        event = plain(token, name, user, at)
        event["properties"]["$insert_id"] = iid
        return event

    different = [
        like(name="Page Viewed"),
        like(user="u2"),
        like(at=T + 1.2),  # the next second
        like(iid=uuid.uuid4().hex),
    ]
    same = like(at=T + 0.9)  # the same second: Mixpanel's key has the time to the second
    batch = decoded([base, *different, same])
    # In time order: the four at T + 0.2 (entries 0-3), the same second's (4), the next second's (5).
    assert send_write(client, token.encode(), 1, [batch], window=WINDOW)[-1] == [5, 0, 0, 0, [4]]
    assert sorted(named(stored_events(client, token))) == sorted(named([base, *different]))
    assert counted(client, token) == {"Page View": 4, "Page Viewed": 1}


def test_events_without_insert_id_are_never_deduplicated(client: redis.Redis) -> None:
    token = new_token()
    event = plain(token, "Page View", "u1", T)
    del event["properties"]["$insert_id"]
    batch = decoded([event])
    assert dedup_hashes(batch) == [b""]
    assert send_write(client, token.encode(), 1, [batch], window=WINDOW)[-1] == [1, 0]
    assert send_write(client, token.encode(), 2, [decoded([event])], window=WINDOW)[-1] == [1, 0]
    assert len(stored_events(client, token)) == 2
    assert counted(client, token) == {"Page View": 2}
    assert not list(client.scan_iter(match=keys.shared_prefix(0) + "d[dt]:*"))


# The largest window the setting takes: a bucket lasts a week, so the test does not straddle two.
LONG = 604_800


def test_the_current_and_the_previous_bucket_are_read_and_a_bucket_expires_after_the_next(
    client: redis.Redis,
) -> None:
    bucket = int(client.time()[0]) // LONG
    outcomes = {}
    for age in (0, 1, 2):
        client.flushdb()  # (each age's sets alone: a partition's sets are its projects')
        token = new_token()
        event = plain(token, "Page View", "u1", T)
        batch = decoded([event])
        [dedup_hash] = dedup_hashes(batch)
        assert len(dedup_hash) == DEDUP_HASH_BYTES
        client.sadd(keys.dedup_key(0, LONG, bucket - age), dedup_hash)
        outcomes[age] = send_write(client, token.encode(), 1, [batch], window=WINDOW, dedup_window=LONG)[-1]
        if age == 2:
            assert client.expiretime(keys.dedup_key(0, LONG, bucket)) == (bucket + 2) * LONG
            assert client.smembers(keys.dedup_key(0, LONG, bucket)) == {dedup_hash}
            # Another window reads other sets: a gateway run with another one never misreads them.
            again = send_write(client, token.encode(), 2, [decoded([event])], window=WINDOW)
            assert again[-1] == [1, 0]
    assert int(client.time()[0]) // LONG == bucket, "the test ran across two buckets: run it again"
    assert outcomes == {0: [0, 0, 0, 0, [0]], 1: [0, 0, 0, 0, [0]], 2: [1, 0]}


def test_a_counting_sent_alone_counts_no_duplicate_and_leaves_the_stream_as_it_is(
    client: redis.Redis,
) -> None:
    token = new_token()
    first, later = plain(token, "First", "u1", T), plain(token, "Later", "u1", T + 1)
    assert send_write(client, token.encode(), 1, [decoded([first])], window=WINDOW)[-1] == [1, 0]
    assert send_write(client, token.encode(), 2, [decoded([later])], window=WINDOW)[-1] == [1, 0]
    # A batch whose transaction stored `first` again but whose function failed: its counting goes
    # alone, when the stream's last entry is another batch's.
    assert send_count(client, token.encode(), 3, [decoded([first])], window=WINDOW) == [0, 0, 0, 0, [0]]
    assert named(stored_events(client, token)) == named([first, later])
    assert counted(client, token) == {"First": 1, "Later": 1}


def test_a_malformed_dedup_hash_changes_nothing(client: redis.Redis) -> None:
    token = new_token()
    batch = decoded([plain(token, "Page View", "u1", T)])
    [dedup_hash] = dedup_hashes(batch)
    broken = corrupt(batch, dedup_hash, b"short")
    with pytest.raises(redis.ResponseError, match="tg_count: malformed dedup hash"):
        send_count(client, token.encode(), 1, [broken], window=WINDOW)
    assert list(client.scan_iter(match=f"*{token}*")) == []


def test_with_the_window_0_nothing_is_packed_looked_up_or_kept(client: redis.Redis) -> None:
    token = new_token()
    event = plain(token, "Page View", "u1", T)
    off = Options(max_age=400 * DAY, partitions=1, dedup_window=0)
    body = json.dumps([event]).encode()
    batches = [decode_request(b"", body, "application/json", now=T, options=off).batches[0] for _ in "ab"]
    # The plain layout: four arguments, no hash.
    assert batches[0].args == 4
    for seq, batch in enumerate(batches, 1):
        assert send_write(client, token.encode(), seq, [batch], window=WINDOW, dedup_window=0)[-1] == [1, 0]
    assert len(stored_events(client, token)) == 2
    assert not list(client.scan_iter(match=keys.shared_prefix(0) + "d[dt]:*"))
