"""The batcher in-process, on a scripted Redis connection and a clock the test moves: when flushes go,
when requests are answered, how many flushes are in flight, what is refused, and which requests a write
Redis refuses fails. (Losses and retries: test_batcher_recovery.py; the real thing end to end:
test_gateway_*.py.)"""

from __future__ import annotations

import json
import logging

import pytest
from conftest import partition_of
from scripted_redis import (
    TOKEN,
    ScriptedClock,
    ScriptedRedis,
    assert_stored_once,
    play,
    quiet,
    request,
    started,
    started_held,
    stream,
    until,
    user_in,
)
from trackgate import Request
from trackgate import keys as key_names
from trackgate.batcher import PIPELINE_MIN_EVENTS, UnavailableError
from trackgate.pipeline import FAILING_FOR


def keys(r: Request) -> frozenset[int]:
    """The partitions a request has events in, found from its events."""
    return frozenset(partition_of(json.loads(event)["distinct_id"]) for event in r.events())


def answered_503(failed: frozenset[int], r: Request) -> bool:
    """As http.py answers a request whose flush had `failed` keys: 503 when any of its own failed."""
    return bool(keys(r) & failed)


def test_a_request_is_answered_once_its_flush_is_answered_not_before() -> None:
    async def scenario() -> None:
        redis, _clock, batcher = await started_held()
        r = request(user_in(0), user_in(1), user_in(1, 1))
        answer = batcher.submit(r.batches, r.accepted)
        [connection] = redis.connections
        await until(lambda: connection.writes, "the flush written")
        connection.run()
        await quiet()
        assert not answer.done(), "answered before its reply was read"
        assert redis.count_of(TOKEN) == 3  # in Redis, though
        connection.answer()
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        assert_stored_once(redis, r)
        await batcher.close()

    play(scenario)


def test_one_flush_is_one_write_of_a_transaction_per_partition() -> None:
    """Requests that arrive together share a flush: each partition's events of all of them go in one
    MULTI/EXEC, whose XADDs are the decoder's, and the FCALL that counts them."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        batcher = await started(redis, clock)
        requests = [request(user_in(0, i), user_in(2, i)) for i in range(3)] + [request(user_in(3))]
        answers = [batcher.submit(r.batches, r.accepted) for r in requests]
        await until(lambda: all(a.done() for a in answers), "the answers")
        [write] = redis.connections[0].writes
        names = [command[0] for command in write]
        assert names.count(b"MULTI") == names.count(b"EXEC") == names.count(b"FCALL") == 3
        assert names.count(b"XADD") == 7
        assert {command[1] for command in write if command[0] == b"XADD"} == {stream(0), stream(2), stream(3)}
        assert [a.result().failed for a in answers] == [frozenset()] * 4
        assert_stored_once(redis, *requests)
        await batcher.close()

    play(scenario)


def test_a_flush_goes_linger_seconds_after_its_first_event() -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        batcher = await started(redis, clock, linger=0.005)
        first = request(user_in(0))
        answer = batcher.submit(first.batches, first.accepted)
        clock.advance(0.004)
        later = request(user_in(1))
        batcher.submit(later.batches, later.accepted)
        await quiet()
        assert not redis.connections[0].writes
        clock.advance(0.001)
        await until(answer.done, "the answer")
        assert len(redis.connections[0].writes) == 1
        assert_stored_once(redis, first, later)
        await batcher.close()

    play(scenario)


def test_a_flush_of_max_events_goes_without_waiting_for_linger() -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        batcher = await started(redis, clock, linger=10.0, max_events=5)
        three = request(*(user_in(0, i) for i in range(3)))
        batcher.submit(three.batches, three.accepted)
        await quiet()
        assert not redis.connections[0].writes
        two = request(user_in(1), user_in(2))
        answer = batcher.submit(two.batches, two.accepted)
        await until(answer.done, "the answer")
        assert len(redis.connections[0].writes) == 1
        assert_stored_once(redis, three, two)
        await batcher.close()

    play(scenario)


def test_no_more_than_depth_flushes_are_in_flight_and_a_small_one_waits_for_the_pipe() -> None:
    """Behind other flushes only one of PIPELINE_MIN_EVENTS events goes; up to `depth` are in flight."""

    async def scenario() -> None:
        redis, _clock, batcher = await started_held(depth=2)
        [connection] = redis.connections
        big = [request(*(user_in(0, i) for i in range(PIPELINE_MIN_EVENTS))) for _ in range(3)]
        answers = []
        for expected_writes, r in zip([1, 2, 2], big, strict=True):
            answers.append(batcher.submit(r.batches, r.accepted))
            await quiet()
            assert len(connection.writes) == expected_writes
        # The first answered: the third goes, and a small one queues behind it.
        connection.run(len(connection.writes[0]))
        connection.answer()
        await until(lambda: len(connection.writes) == 3, "the third flush written")
        small = request(user_in(1))
        answers.append(batcher.submit(small.batches, small.accepted))
        await quiet()
        assert len(connection.writes) == 3
        connection.run(len(connection.writes[1]))
        connection.answer()
        await quiet()
        assert len(connection.writes) == 3, "a small flush went behind another"
        connection.run()
        connection.answer()
        await until(lambda: len(connection.writes) == 4, "the small flush written, the pipe empty")
        connection.process()
        await until(lambda: all(a.done() for a in answers), "the answers")
        assert [a.result().failed for a in answers] == [frozenset()] * 4
        assert_stored_once(redis, *big, small)
        await batcher.close()

    play(scenario)


def test_past_max_pending_events_a_request_is_refused_at_once() -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        batcher = await started(redis, clock, max_pending=5)
        three = request(*(user_in(0, i) for i in range(3)))
        two = request(user_in(2), user_in(3))
        one = request(user_in(1))
        answers = [batcher.submit(three.batches, three.accepted)]
        with pytest.raises(UnavailableError) as refused:
            batcher.submit(three.batches, three.accepted)
        assert refused.value.reason == "overloaded"
        answers.append(batcher.submit(two.batches, two.accepted))  # max_pending events waiting
        with pytest.raises(UnavailableError):
            batcher.submit(one.batches, one.accepted)
        await until(lambda: all(a.done() for a in answers), "the answers")
        # Answered events are no longer pending: there is room again.
        answers.append(batcher.submit(one.batches, one.accepted))
        await until(answers[-1].done, "the last answer")
        assert_stored_once(redis, three, two, one)
        await batcher.close()

    play(scenario)


def test_while_redis_is_unreachable_requests_are_refused_until_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.reachable = False
        batcher = await started(redis, clock)
        assert not batcher.ready
        r = request(user_in(0))
        with pytest.raises(UnavailableError) as refused:
            batcher.submit(r.batches, r.accepted)
        assert refused.value.reason == "redis_unavailable"
        clock.advance(5.0)
        await quiet()
        assert not batcher.ready
        redis.reachable = True
        clock.advance(5.0)  # the next attempt, after its backoff
        await until(lambda: batcher.ready, "connected")
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        assert_stored_once(redis, r)
        await batcher.close()

    with caplog.at_level(logging.WARNING, "trackgate.batcher"):
        play(scenario)
    assert "Redis is not reachable yet" in caplog.text
    assert "Redis is reachable again" in caplog.text


def test_close_writes_what_is_queued_and_refuses_what_comes_after() -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        batcher = await started(redis, clock, linger=10.0)
        r = request(user_in(0), user_in(1))
        answer = batcher.submit(r.batches, r.accepted)
        await batcher.close()
        assert answer.result().failed == frozenset()
        assert_stored_once(redis, r)
        assert redis.connections[0].closed
        assert not batcher.ready
        with pytest.raises(UnavailableError) as refused:
            batcher.submit(r.batches, r.accepted)
        assert refused.value.reason == "stopping"

    play(scenario)


def test_a_transaction_redis_refuses_fails_exactly_the_requests_with_events_in_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis refuses a partition's transaction when it is queued (EXECABORT): the requests with events in
    that partition fail, the others of the same flush are stored; the log says why Redis refused."""
    oom = "OOM command not allowed when used memory > 'maxmemory'."

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        refused_mark = key_names.mark_key(1, b"")
        redis.refuse = lambda command: oom if command[1].startswith(refused_mark) else None
        batcher = await started(redis, clock)
        only_refused = request(user_in(1), user_in(1, 1))
        only_other = request(user_in(2))
        both = request(user_in(1, 2), user_in(2, 1), user_in(3))
        requests = [only_refused, only_other, both]
        answers = [batcher.submit(r.batches, r.accepted) for r in requests]
        await until(lambda: all(a.done() for a in answers), "the answers")
        assert {a.result().failed for a in answers} == {frozenset({1})}
        assert [answered_503(a.result().failed, r) for a, r in zip(answers, requests, strict=True)] == [
            True,
            False,
            True,
        ]
        assert {partition_of(e["distinct_id"]) for e in redis.events(TOKEN)} == {2, 3}
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert f"Redis refused a write of 3 events to {key_names.stream_key(TOKEN, 1)} (0 stored)" in caplog.text
    assert f"EXECABORT Transaction discarded because of previous errors. ({oom})" in caplog.text


def test_xadds_redis_refuses_fail_the_requests_with_events_in_their_partition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.wrong_type.add(stream(0))
        batcher = await started(redis, clock)
        refused = request(user_in(0), user_in(0, 1), user_in(3))
        fine = request(user_in(3, 1))
        answers = [batcher.submit(r.batches, r.accepted) for r in (refused, fine)]
        await until(lambda: all(a.done() for a in answers), "the answers")
        assert [a.result().failed for a in answers] == [frozenset({0})] * 2
        assert answered_503(answers[0].result().failed, refused)
        assert not answered_503(answers[1].result().failed, fine)
        assert keys(fine) == {3}
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert f"Redis refused a write of 2 events to {key_names.stream_key(TOKEN, 0)} (0 stored)" in caplog.text
    assert "WRONGTYPE" in caplog.text


OOM = "OOM command not allowed when used memory > 'maxmemory'."


def test_a_thousand_refused_writes_make_a_few_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """An outage refuses every write: one line a second per Redis error, the next saying how many it
    stands for."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.refuse = lambda command: OOM
        batcher = await started(redis, clock)
        for i in range(1000):
            r = request(user_in(0, i))
            answer = batcher.submit(r.batches, r.accepted)
            await until(answer.done, "the answer")
            assert answer.result().failed == frozenset({0})
            if i % 100 == 99:
                clock.advance(0.25)
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    lines = [r.getMessage() for r in caplog.records if "Redis refused a write" in r.getMessage()]
    # 1,000 refusals over 2.5 s of the clock: a line a second.
    assert 1 < len(lines) <= 4
    assert OOM in lines[0]
    assert all("more like it since its last line" in line for line in lines[1:])
    left_out = sum(int(line.split("(and ")[1].split(" ")[0]) for line in lines[1:])
    assert len(lines) + left_out <= 1000


def test_not_ready_while_writes_are_refused_and_ready_after_one_succeeds() -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        batcher = await started(redis, clock)
        assert batcher.not_ready_reason is None
        redis.refuse = lambda command: OOM
        r = request(user_in(0))
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        reason = batcher.not_ready_reason
        assert reason is not None
        assert OOM in reason
        redis.refuse = lambda command: None
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        assert batcher.not_ready_reason is None
        await batcher.close()

    play(scenario)


def test_refused_writes_long_ago_no_longer_make_the_worker_unready() -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        batcher = await started(redis, clock)
        redis.refuse = lambda command: OOM
        r = request(user_in(0))
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        assert not batcher.ready
        clock.advance(FAILING_FOR - 0.1)
        assert not batcher.ready
        clock.advance(0.1)
        assert batcher.ready
        await batcher.close()

    play(scenario)
