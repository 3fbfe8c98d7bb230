"""`--durability replicas=N` in the batcher, in-process on a scripted Redis: each write ends with a WAIT,
and its requests are answered by the WAIT's reply: stored when enough replicas have the write, 503 when
not; commands found stored after a lost connection wait for a WAIT of their own. With `local` no WAIT is
sent. (Against real replicas and Sentinel: test_gateway_durability.py.)"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import pytest
from scripted_redis import (
    ScriptedClock,
    ScriptedConnection,
    ScriptedRedis,
    assert_stored_once,
    batch_ids,
    play,
    quiet,
    request,
    started,
    until,
    user_in,
)
from trackgate import Request, settings
from trackgate.batcher import Batcher, Written
from trackgate.durability import Durability
from trackgate.flush import Key
from trackgate.redis_pipe import pack

TWO = Durability(2, 500)


def names(write: list[list[bytes]]) -> list[bytes]:
    return [command[0] for command in write]


class Held(NamedTuple):
    redis: ScriptedRedis
    batcher: Batcher
    request: Request
    answer: asyncio.Future[Written]
    connection: ScriptedConnection


async def written_held(*users: str, refuse: str | None = None) -> Held:
    """A batcher with `replicas=2` (TWO) on a scripted Redis whose two replicas confirm every write,
    that runs nothing until the test says so; a request of one event per user, its flush and WAIT
    written. `refuse`: the error Redis refuses every queued command with."""
    redis, clock = ScriptedRedis(), ScriptedClock()
    redis.auto = False
    redis.replicas = 2
    if refuse is not None:
        redis.refuse = lambda command: refuse
    batcher = await started(redis, clock, durability=TWO)
    r = request(*users)
    answer = batcher.submit(r.batches, r.accepted)
    [connection] = redis.connections
    await until(lambda: len(connection.writes) == 2, "the flush and its WAIT written")
    return Held(redis, batcher, r, answer, connection)


def test_a_write_is_answered_by_the_wait_after_it() -> None:
    async def scenario() -> None:
        redis, batcher, r, answer, connection = await written_held(user_in(0), user_in(1))
        flush, wait = connection.writes
        assert names(flush).count(b"EXEC") == 2
        assert wait == [[b"WAIT", b"2", b"500"]]
        connection.run()
        assert connection.answer(2) == 2  # the transactions' replies
        await quiet()
        assert not answer.done(), "answered before the replicas confirmed"
        connection.answer()
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        assert batcher.ready
        assert_stored_once(redis, r)
        await batcher.close()

    play(scenario)


@pytest.mark.parametrize("replicas", [1, "NOPERM this user has no permissions to run the 'wait' command"])
def test_too_few_replicas_fail_the_write_s_requests(
    replicas: int | str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fewer replicas than asked (or WAIT refused): the requests get 503, though their events are in the
    primary; the worker is not ready until a write is confirmed again."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.replicas = replicas
        batcher = await started(redis, clock, durability=TWO)
        r = request(user_in(0), user_in(1))
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        failed: frozenset[Key] = answer.result().failed
        assert failed == {0, 1}
        assert_stored_once(redis, r)  # stored on the primary all the same
        reason = batcher.not_ready_reason
        assert reason is not None
        assert ("1 of 2 replicas" if replicas == 1 else "NOPERM") in reason
        redis.replicas = 2
        again = request(user_in(2))
        answer = batcher.submit(again.batches, again.accepted)
        await until(answer.done, "the next answer")
        assert answer.result().failed == frozenset()
        assert batcher.ready
        await batcher.close()

    with caplog.at_level(logging.ERROR, "trackgate.batcher"):
        play(scenario)
    assert "2 events are answered 503, though they may be stored" in caplog.text


def test_a_refused_write_fails_at_once_without_waiting_for_replicas() -> None:
    async def scenario() -> None:
        _redis, batcher, _r, answer, connection = await written_held(user_in(0), refuse="OOM no memory")
        connection.run()
        connection.answer(1)
        await until(answer.done, "the answer")
        assert answer.result().failed == {0}
        connection.answer()
        await batcher.close()

    play(scenario)


@pytest.mark.parametrize("replicas", [2, 1], ids=["confirmed", "too few"])
def test_a_connection_lost_before_the_wait_s_reply_is_settled_then_waited_for(replicas: int) -> None:
    """Redis ran the transactions and answered them, but the WAIT's reply was lost with the connection:
    the marks on the next connection say they are stored, so nothing goes again; they are answered by a
    WAIT on that connection, after a write of their marks (a new connection's WAIT counts its own
    writes only)."""

    async def scenario() -> None:
        redis, batcher, r, answer, lost = await written_held(user_in(0), user_in(1))
        lost.run()
        lost.answer(2)
        redis.replicas = replicas
        redis.auto = True
        lost.lose()
        await until(answer.done, "the answer")
        assert answer.result().failed == (frozenset() if replicas == 2 else {0, 1})
        [settle] = redis.calls
        assert b"GET" in names(settle)
        [confirm] = redis.connections[1].writes
        assert names(confirm) == [b"EXPIRE", b"EXPIRE", b"WAIT"]
        assert {command[1] for command in confirm[:2]} == {command[1] for command in settle[2:]}
        assert len(redis.waits) == 2
        assert_stored_once(redis, r)
        await batcher.close()

    play(scenario)


def test_a_connection_lost_before_redis_ran_the_write_resends_it_and_waits_again() -> None:
    async def scenario() -> None:
        redis, batcher, r, answer, lost = await written_held(user_in(0))
        redis.auto = True
        lost.lose()
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        resend, wait = redis.connections[1].writes
        assert len(batch_ids(resend)) == 1
        assert names(wait) == [b"WAIT"]
        assert lost.deliver_late() == 0
        assert_stored_once(redis, r)
        await batcher.close()

    play(scenario)


def test_local_sends_no_wait() -> None:
    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.replicas = 0
        batcher = await started(redis, clock)
        r = request(user_in(0), user_in(1))
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        assert answer.result().failed == frozenset()
        [write] = redis.connections[0].writes
        assert b"WAIT" not in names(write)
        assert redis.waits == []
        await batcher.close()

    play(scenario)


@pytest.mark.parametrize(
    ("level", "replicas"), [("local", 0), ("replicas=1", 1), ("replicas=2", 2), ("replicas=999", 999)]
)
def test_a_durability_level_names_its_replicas(level: str, replicas: int) -> None:
    durability = settings.build(environ={"TRACKGATE_DURABILITY": level}).write_durability()
    assert durability == Durability(replicas, 1000)
    assert durability.wait == (pack("WAIT", str(replicas), "1000") if replicas else b"")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TRACKGATE_DURABILITY": "replicas=0"}, "--durability (TRACKGATE_DURABILITY) = 'replicas=0': "
         "expected local or replicas=N"),
        ({"TRACKGATE_DURABILITY": "replicas"}, "expected local or replicas=N"),
        ({"TRACKGATE_DURABILITY": "all"}, "expected local or replicas=N"),
        ({"TRACKGATE_DURABILITY": "replicas=1", "TRACKGATE_DURABILITY_TIMEOUT": "3000"},
         "--durability-timeout (TRACKGATE_DURABILITY_TIMEOUT) = "
         "3000: expected less than --redis-timeout (TRACKGATE_REDIS_TIMEOUT) (3 s)"),
        ({"TRACKGATE_DURABILITY_TIMEOUT": "0"}, "expected `int` >= 1"),
    ],
)  # fmt: skip
def test_a_durability_setting_that_cannot_be_used_is_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(settings.SettingsError) as refused:
        settings.build(environ=environ)
    assert message in str(refused.value)


def test_local_does_not_hold_the_redis_timeout_to_its_wait() -> None:
    """No WAIT is sent: a --redis-timeout shorter than --durability-timeout is fine."""
    built = settings.build(environ={"TRACKGATE_REDIS_TIMEOUT": "0.5"})
    assert built.write_durability().replicas == 0
