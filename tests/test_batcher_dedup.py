"""Deduplication through the batcher, in-process on a scripted Redis (`scripted_redis.py`, which
deduplicates as the function does): each request is told how many of its events were duplicates, and a
client's retry, whatever became of the connection the first send went out on, is stored and counted
once."""

from __future__ import annotations

import itertools
import json
import logging
import time

import pytest
from prometheus_client import REGISTRY
from scripted_redis import (
    TOKEN,
    ScriptedClock,
    ScriptedRedis,
    assert_stored_once,
    batch_ids,
    play,
    started,
    started_held,
    until,
    user_in,
)
from trackgate import Options, Request, TokenSet, decode_request
from trackgate.batcher import Written

_numbers = itertools.count(10_000)


def sendable(*users: str) -> bytes:
    """A /track body a client may send twice: one event per user named, each numbered, with an
    `$insert_id` and a time of its own."""
    now = time.time()
    events = []
    for user in users:
        n = next(_numbers)
        properties = {"token": TOKEN, "distinct_id": user, "n": n, "$insert_id": f"id-{n}", "time": now}
        events.append({"event": "e", "properties": properties})
    return json.dumps(events).encode()


def sent(body: bytes) -> Request:
    """A request of `body`, as the real decoder makes it (deduplication on, by default)."""
    options, tokens = Options(), TokenSet([TOKEN])
    return decode_request(b"", body, "application/json", now=time.time(), options=options, tokens=tokens)


def deduplicated() -> float:
    """trackgate_events_deduplicated_total, as /metrics says it."""
    return REGISTRY.get_sample_value("trackgate_events_deduplicated_total") or 0.0


def test_each_request_of_a_flush_is_told_its_own_duplicates() -> None:
    async def scenario() -> None:
        redis, _clock, batcher = await started_held()
        stored = sendable(user_in(0), user_in(1))
        first = sent(stored)
        answer = batcher.submit(first.batches, first.accepted)
        [connection] = redis.connections
        await until(lambda: connection.writes, "the first flush written")
        connection.process()
        await until(answer.done, "the first answer")
        assert answer.result() == Written()
        # A retry of it and a request with one of its events and a new one share the next flush.
        retry = sent(stored)
        mixed = json.loads(stored)[:1] + json.loads(sendable(user_in(0, 1)))
        other = sent(json.dumps(mixed).encode())
        answers = [batcher.submit(r.batches, r.accepted) for r in (retry, other)]
        before = deduplicated()
        await until(lambda: len(connection.writes) == 2, "the second flush written")
        connection.process()
        await until(lambda: all(a.done() for a in answers), "the answers")
        assert [a.result() for a in answers] == [Written(duplicates=2), Written(duplicates=1)]
        assert deduplicated() - before == 3
        assert_stored_once(redis, first, sent(json.dumps(mixed[1:]).encode()))
        await batcher.close()

    play(scenario)


@pytest.mark.parametrize("ran", [True, False], ids=["Redis ran it", "Redis did not run it"])
def test_a_retry_of_a_request_whose_connection_was_lost_is_stored_once(ran: bool) -> None:
    """The first send's connection is lost with the reply unread; the client, which heard nothing,
    sends the same events again meanwhile. Whether Redis ran the first transaction or not (then it goes
    again, after the retry's), the events are stored and counted once, and both requests answered as
    stored."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.auto = False
        batcher = await started(redis, clock)
        body = sendable(user_in(0), user_in(0, 1), user_in(1))
        first = sent(body)
        answer = batcher.submit(first.batches, first.accepted)
        [lost] = redis.connections
        await until(lambda: lost.writes, "the flush written")
        if ran:
            lost.run()
        redis.auto = True
        lost.lose()
        retry = sent(body)
        retried = batcher.submit(retry.batches, retry.accepted)
        await until(lambda: answer.done() and retried.done(), "the answers")
        # The first is found stored, or sent again before the retry (what a lost connection left goes
        # first): the retry's events are the duplicates.
        assert answer.result() == Written()
        assert retried.result() == Written(duplicates=3)
        assert lost.deliver_late() == 0
        assert_stored_once(redis, first)
        await batcher.close()

    play(scenario)


def test_a_counting_resent_alone_counts_a_duplicate_once_and_says_it_stays_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The function library was lost: the transaction stores its events (a duplicate among them) but its
    FCALL fails, and goes again alone after a FUNCTION LOAD. It counts the duplicate once; it cannot take
    it out of the stream any more, and that is logged."""

    async def scenario() -> None:
        redis, _clock, batcher = await started_held()
        body = sendable(user_in(0))
        first = sent(body)
        answer = batcher.submit(first.batches, first.accepted)
        [connection] = redis.connections
        redis.auto = True
        connection.process()
        await until(answer.done, "the first answer")
        redis.library = False
        retry = sent(body)
        retried = batcher.submit(retry.batches, retry.accepted)
        await until(retried.done, "the retry's answer")
        assert retried.result() == Written(duplicates=1)
        [*_, resend] = connection.writes
        assert {command[0] for command in resend} == {b"FUNCTION", b"FCALL"}
        assert batch_ids(resend)
        assert redis.count_of(TOKEN) == 1
        assert len(redis.events(TOKEN)) == 2
        await batcher.close()

    with caplog.at_level(logging.WARNING, logger="trackgate.batcher"):
        play(scenario)
    assert "1 events sent again are stored twice" in caplog.text


def test_without_insert_ids_nothing_is_a_duplicate() -> None:
    async def scenario() -> None:
        redis, _clock, batcher = await started_held()
        redis.auto = True
        body = json.dumps([{"event": "e", "properties": {"token": TOKEN, "distinct_id": "u"}}]).encode()
        answers = []
        for _ in range(2):
            r = sent(body)
            answers.append(batcher.submit(r.batches, r.accepted))
            await until(answers[-1].done, "the answer")
        assert [a.result() for a in answers] == [Written(), Written()]
        assert len(redis.events(TOKEN)) == redis.count_of(TOKEN) == 2
        await batcher.close()

    play(scenario)
