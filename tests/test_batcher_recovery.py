"""The batcher's exactly-once logic in-process, on a scripted Redis connection and a clock the test
moves: connections lost before and after Redis ran a flush, commands of a lost connection reaching Redis
late, a lost function library, a silent Redis, the retry window running out. In every case what is
answered as stored is stored, and counted, exactly once."""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import pytest
from scripted_redis import (
    TOKEN,
    ScriptedClock,
    ScriptedConnection,
    ScriptedRedis,
    assert_stored_once,
    batch_ids,
    play,
    profile_request,
    quiet,
    request,
    started,
    started_held,
    stream,
    until,
    user_in,
)
from trackgate import Request
from trackgate.batcher import BACKOFF_MAX, BACKOFF_MIN, Batcher, UnavailableError, Written
from trackgate.keys import Family
from trackgate.recovery import MAX_RELOADS


class Lost(NamedTuple):
    batcher: Batcher
    request: Request
    answer: asyncio.Future[Written]
    connection: ScriptedConnection


async def written_then_lost(redis: ScriptedRedis, clock: ScriptedClock, *, run: bool) -> Lost:
    """A started batcher's flush of one request over two partitions, written; Redis runs it (`run`) or
    not; the connection is lost before the reply is read. Later connections answer by themselves."""
    redis.auto = False
    batcher = await started(redis, clock)
    r = request(user_in(0), user_in(0, 1), user_in(1))
    answer = batcher.submit(r.batches, r.accepted)
    [connection] = redis.connections
    await until(lambda: connection.writes, "the flush written")
    if run:
        connection.run()
    redis.auto = True
    connection.lose()
    return Lost(batcher, r, answer, connection)


def test_a_flush_lost_before_redis_ran_it_goes_again_under_new_seqs_and_the_lost_one_never_runs() -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        batcher, r, answer, lost = await written_then_lost(redis, clock, run=False)
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        [settle] = redis.calls
        assert [b"CLIENT", b"KILL", b"ID", b"1"] in settle
        [resend] = redis.connections[1].writes
        assert len(batch_ids(resend)) == 2
        assert set(batch_ids(resend)).isdisjoint(batch_ids(lost.writes[0]))
        # The lost connection's commands reach Redis after all: it was killed, they do not run.
        assert lost.deliver_late() == 0
        assert_stored_once(redis, r)
        await batcher.close()

    play(scenario)


@pytest.mark.parametrize("library", [True, False], ids=["counted", "counting failed"])
def test_a_flush_lost_after_redis_ran_it_is_answered_as_stored_or_only_counted(library: bool) -> None:
    """Redis ran the transactions; their replies were lost. The marks say they are applied: nothing is
    stored again; where the counting failed (the library was lost), the FCALL alone goes, after the
    settle's FUNCTION LOAD."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.library = library
        redis.auto = False
        batcher = await started(redis, clock)
        r = request(user_in(0), user_in(0, 1), user_in(1))
        answer = batcher.submit(r.batches, r.accepted)
        [lost] = redis.connections
        await until(lambda: lost.writes, "the flush written")
        lost.run()
        assert redis.count_of(TOKEN) == (3 if library else 0)
        redis.auto = True
        lost.lose()
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        writes = redis.connections[1].writes
        if library:
            assert writes == []
        else:
            [resend] = writes
            assert {command[0] for command in resend} == {b"FCALL"}
            assert batch_ids(resend) == batch_ids(lost.writes[0])  # the batches' own seqs and slots
        assert_stored_once(redis, r)
        await batcher.close()

    play(scenario)


def test_of_several_flushes_lost_at_once_only_those_redis_did_not_run_go_again() -> None:
    async def scenario() -> None:
        redis, _clock, batcher = await started_held(depth=4)
        [lost] = redis.connections
        flushes = [request(*(user_in(i % 2, n) for n in range(100))) for i in range(3)]
        answers = []
        for r in flushes:
            answers.append(batcher.submit(r.batches, r.accepted))
            await until(lambda: len(lost.writes) == len(answers), "the flush written")
        lost.run(len(lost.writes[0]))  # Redis ran the first flush only
        redis.auto = True
        lost.lose()
        await until(lambda: all(a.done() for a in answers), "the answers")
        assert [a.result().failed for a in answers] == [frozenset()] * 3
        [resend] = redis.connections[1].writes
        assert len(batch_ids(resend)) == 2  # one transaction each of the two not run
        assert lost.deliver_late() == 0
        assert_stored_once(redis, *flushes)
        await batcher.close()

    play(scenario)


def test_a_flush_is_answered_after_all_its_resends_and_fails_where_one_is_refused() -> None:
    """After a loss, one partition's transaction of a flush was applied but not counted (the library was
    lost) and the other's was not applied: the counting alone and the whole second transaction go
    again. Redis then refuses the second: the request fails for it, though the counting was answered
    first."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.library = False
        redis.auto = False
        batcher = await started(redis, clock)
        r = request(user_in(0), user_in(1))
        answer = batcher.submit(r.batches, r.accepted)
        [lost] = redis.connections
        await until(lambda: lost.writes, "the flush written")
        [write] = lost.writes
        first = [c[0] for c in write].index(b"EXEC") + 1
        applied = next(c[1] for c in write[:first] if c[0] == b"XADD")
        refused = next(p for p in (0, 1) if stream(p) != applied)
        lost.run(first)
        keys = stream(refused).removesuffix(b"events")  # the start of every key of the partition
        redis.refuse = lambda command: "OOM" if command[1].startswith(keys) else None
        redis.auto = True
        lost.lose()
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset({refused})
        [resend] = redis.connections[1].writes
        assert [c[0] for c in resend][:2] == [b"FCALL", b"MULTI"]  # the counting alone, then the other
        assert redis.count_of(TOKEN) == len(redis.events(TOKEN)) == 1
        await batcher.close()

    play(scenario)


def test_a_lost_function_library_is_loaded_again_and_the_counting_alone_resent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.library = False
        batcher = await started(redis, clock)
        r = request(user_in(0), user_in(2))
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        first, reload = redis.connections[0].writes
        assert [command[0] for command in reload] == [b"FUNCTION", b"FCALL", b"FCALL"]
        assert batch_ids(reload) == batch_ids(first)
        assert_stored_once(redis, r)
        await batcher.close()

    with caplog.at_level(logging.WARNING, "trackgate.batcher"):
        play(scenario)
    assert "loaded the trackgate function library again" in caplog.text


def test_a_library_that_will_not_load_is_given_up_and_the_events_answered_as_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.library = False
        redis.library_loads_refused = True
        batcher = await started(redis, clock)
        r = request(user_in(0))
        answer = batcher.submit(r.batches, r.accepted)
        [connection] = redis.connections
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        assert len(connection.writes) == 1 + MAX_RELOADS  # answered once the counting is given up
        await quiet()
        assert len(connection.writes) == 1 + MAX_RELOADS
        assert len(redis.events(TOKEN)) == 1
        assert redis.count_of(TOKEN) == 0
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert "Redis refused to load the function library: ERR Error compiling function" in caplog.text
    assert "1 events are stored in" in caplog.text
    assert "but not counted: Redis refused to count them: ERR Function not found" in caplog.text


def test_countings_refused_with_different_errors_are_each_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Refused countings are logged once a second per Redis error code: a refusal of one kind does not
    hide another's in the same second."""
    errors = {
        0: "OOM command not allowed when used memory > 'maxmemory'.",
        1: "BUSY Redis is busy running a script.",
    }

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.count_refused = {stream(p): error for p, error in errors.items()}
        batcher = await started(redis, clock)
        r = request(user_in(0), user_in(1))
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()  # stored, answered so; the counting is given up
        assert len(redis.events(TOKEN)) == 2
        assert redis.count_of(TOKEN) == 0
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    for error in errors.values():
        assert f"but not counted: Redis refused to count them: {error}" in caplog.text


def test_a_counting_whose_batch_left_the_ring_is_given_up_not_run_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The counting alone ran but its reply was lost, and the ring is gone by the settle: whether it ran
    cannot be known, so it is not sent again; the events are stored and answered so."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.library = False
        redis.auto = False
        batcher = await started(redis, clock)
        r = request(user_in(0))
        answer = batcher.submit(r.batches, r.accepted)
        [lost] = redis.connections
        await until(lambda: lost.writes, "the flush written")
        lost.process()  # stored, its counting refused: a FUNCTION LOAD and the counting alone follow
        await until(lambda: len(lost.writes) == 2, "the counting resent")
        lost.run()
        assert redis.count_of(TOKEN) == 1
        redis.rings.clear()
        redis.auto = True
        lost.lose()
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        assert redis.connections[1].writes == []
        assert_stored_once(redis, r)
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert "not counted: its batch has left the partition's ring" in caplog.text


def test_a_silent_connection_is_lost_after_timeout_without_a_reply(caplog: pytest.LogCaptureFixture) -> None:
    """The watchdog waits `timeout` from the last sign of progress: a reply, or a write to an idle pipe;
    not from the first send."""

    async def scenario() -> None:
        redis, clock, batcher = await started_held(timeout=3.0, retry_window=10.0)
        [silent] = redis.connections
        flushes = [request(*(user_in(0, n) for n in range(100))) for _ in range(3)]
        answers = []

        async def send(r: Request) -> None:
            answers.append(batcher.submit(r.batches, r.accepted))
            await until(lambda: len(silent.writes) == len(answers), "the flush written")

        await send(flushes[0])  # t = 0
        clock.advance(1.0)
        silent.process()  # t = 1: the pipe is idle
        await until(answers[0].done, "the first answer")
        clock.advance(1.5)
        await send(flushes[1])  # t = 2.5
        await send(flushes[2])
        clock.advance(2.5)  # t = 5: nothing for 2.5 s since the write to the idle pipe
        await quiet()
        assert not silent.closed
        silent.run(len(silent.writes[1]))
        silent.answer()  # t = 5: the second answered
        await until(answers[1].done, "the second answer")
        clock.advance(2.9)
        await quiet()
        assert not silent.closed
        redis.auto = True
        clock.advance(0.2)  # t = 8.1: nothing for 3 s
        await until(answers[2].done, "the third answer")
        assert silent.closed
        assert answers[2].result().failed == frozenset()
        assert silent.deliver_late() == 0
        assert_stored_once(redis, *flushes)
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert "Redis connection lost: no reply from Redis for 3.0 s" in caplog.text


def test_past_the_retry_window_without_redis_the_requests_fail(caplog: pytest.LogCaptureFixture) -> None:
    """Their flush's keys come back failed (503 write_failed); requests queued meanwhile, never sent,
    fail at once; new ones are refused while Redis cannot be reached."""

    async def scenario() -> None:
        redis, clock, batcher = await started_held(retry_window=2.0)
        r = request(user_in(0), user_in(1))
        answer = batcher.submit(r.batches, r.accepted)
        [lost] = redis.connections
        await until(lambda: lost.writes, "the flush written")
        redis.reachable = False
        lost.lose()
        deadline = clock.now + 2.0
        queued = request(user_in(2))
        waiting = batcher.submit(queued.batches, queued.accepted)  # a loss is not an outage yet
        await until(waiting.done, "the queued request failed")
        with pytest.raises(UnavailableError, match="redis_unavailable"):
            waiting.result()
        with pytest.raises(UnavailableError, match="redis_unavailable"):
            batcher.submit(queued.batches, queued.accepted)
        while not answer.done() and clock.now < deadline + 2 * BACKOFF_MAX:
            assert clock.now <= deadline + BACKOFF_MAX, "given up only at an attempt past the window"
            clock.advance(0.1)
            await quiet()
        assert clock.now > deadline
        assert answer.result().failed == frozenset({0, 1})
        assert redis.events(TOKEN) == []
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert "gave up on 2 events after 2 s of Redis errors" in caplog.text


def test_a_flush_lost_after_its_retry_window_is_settled_not_given_up() -> None:
    """The retry window runs from the loss: writes Redis ran before a stall are found applied when the
    watchdog gives the connection up, though their first send is longer ago than the window."""

    async def scenario() -> None:
        redis, clock, batcher = await started_held(timeout=3.0, retry_window=2.0)
        r = request(user_in(0), user_in(1))
        answer = batcher.submit(r.batches, r.accepted)
        [lost] = redis.connections
        await until(lambda: lost.writes, "the flush written")
        lost.run()
        redis.auto = True
        clock.advance(3.0)  # the watchdog gives the connection up
        await until(answer.done, "the answer")
        assert lost.closed
        assert answer.result().failed == frozenset()
        assert_stored_once(redis, r)
        await batcher.close()

    play(scenario)


def test_a_settle_refused_while_redis_loads_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.loading = True
        batcher, r, answer, lost = await written_then_lost(redis, clock, run=False)
        await until(lambda: len(redis.calls) >= 1, "a settle refused")
        # Tried again after a pause that doubles, not at once: new requests do not cut it short.
        more: list[Request] = []
        waiting = []
        for pause in (BACKOFF_MIN, 2 * BACKOFF_MIN):
            settles = len(redis.calls)
            more.append(request(user_in(1)))
            waiting.append(batcher.submit(more[-1].batches, more[-1].accepted))
            await quiet()
            clock.advance(pause * 0.9)
            await quiet()
            assert len(redis.calls) == settles
            clock.advance(pause * 0.2)
            await until(lambda: len(redis.calls) > settles, "the settle tried again")  # noqa: B023
        redis.loading = False
        clock.advance(BACKOFF_MAX)
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        assert lost.deliver_late() == 0
        await until(lambda: all(w.done() for w in waiting), "the later requests' answers")
        assert [w.result().failed for w in waiting] == [frozenset(), frozenset()]
        assert_stored_once(redis, r, *more)
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert "Redis connection lost: LOADING" in caplog.text


def test_after_a_restart_of_redis_the_lost_connection_is_not_killed() -> None:
    """Its id may name another client of the new Redis process."""

    async def scenario() -> None:
        redis, _clock, batcher = await started_held()
        r = request(user_in(3))
        answer = batcher.submit(r.batches, r.accepted)
        await until(lambda: redis.connections[0].writes, "the flush written")
        redis.auto = True
        redis.restart()
        await until(answer.done, "the answer")
        [settle] = redis.calls
        assert [c for c in settle if c[0] == b"CLIENT"] == []
        assert_stored_once(redis, r)
        await batcher.close()

    play(scenario)


@pytest.mark.parametrize(
    ("lacking", "logged"),
    [
        ("client_ids", "(Redis did not give its id): a batch it still held may be stored twice"),
        ("kill", "could not close the lost Redis connection (NOPERM"),
    ],
)
def test_a_redis_user_that_cannot_close_the_lost_connection_is_told_what_a_retry_risks(
    lacking: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.client_ids = lacking != "client_ids"
        redis.kill_refused = lacking == "kill"
        batcher, r, answer, lost = await written_then_lost(redis, clock, run=False)
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        assert_stored_once(redis, r)
        # The risk: the lost connection still runs what it held, and its events are in twice.
        assert lost.deliver_late() > 0
        assert len(redis.events(TOKEN)) == 2 * r.accepted
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert logged in caplog.text
    assert "the Redis user needs" in caplog.text


@pytest.mark.parametrize(
    ("run", "library"),
    [(False, True), (True, True), (True, False)],
    ids=["lost before Redis ran it", "lost after", "lost after, its counting failed"],
)
def test_the_profile_updates_of_a_lost_flush_are_applied_once(run: bool, library: bool) -> None:
    """A flush of profile updates (an `$add` of 1 each, one user's twice) and an event, its connection
    lost before or after Redis ran it, or after Redis stored it without running its function: once
    settled, each update is applied once, as an `$add` applied twice or not at all would show."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.library = library
        redis.auto = False
        batcher = await started(redis, clock)
        users = [user_in(0), user_in(1), user_in(0, 1)]
        updates, events = profile_request(*users, users[0]), request(user_in(2))
        answers = [batcher.submit(r.batches, r.accepted) for r in (updates, events)]
        [lost] = redis.connections
        await until(lambda: lost.writes, "the flush written")
        if run:
            lost.run()
        redis.auto = True
        lost.lose()
        await until(lambda: all(a.done() for a in answers), "the answers")
        assert [a.result().failed for a in answers] == [frozenset(), frozenset()]
        assert lost.deliver_late() == 0
        added = {profile.decode(): dict(n) for profile, n in redis.profiles.items()}
        assert added == {users[0]: {b"n": 2}, users[1]: {b"n": 1}, users[2]: {b"n": 1}}
        assert len(redis.events(TOKEN, Family.PROFILE_UPDATES)) == 4
        assert_stored_once(redis, events)
        await batcher.close()

    play(scenario)
