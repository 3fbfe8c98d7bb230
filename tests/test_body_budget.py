"""A worker's budget of request-body bytes in flight, in-process: what a body counts, when it is refused
(before it is read when its length is announced, at the chunk that passes the budget otherwise), and
that every way a request ends gives its bytes back."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode

from memory_gateway import Gateway, MemorySink, Proto, event, form, running, until_submitted
from trackgate.gateway.refusals import Refusal

BUDGET = 3000


def browser_form(pad: str) -> bytes:
    """A form body as mixpanel-browser posts it (`data=<base64>`): what its events hold once decoded is
    less than the body, so the body's bytes are all the budget counts."""
    text = base64.b64encode(json.dumps(event(pad=pad)).encode()).decode()
    return urlencode({"data": text}).encode()


HELD = browser_form("x" * 1400)
SECOND = browser_form("y" * 1400)


@asynccontextmanager
async def one_held() -> AsyncIterator[tuple[Gateway, asyncio.Task[Proto]]]:
    """A gateway with a budget of BUDGET bytes, and a POST of HELD waiting for its write."""
    async with running(MemorySink(hold=True), max_body_bytes_in_flight=BUDGET) as gateway:
        first = asyncio.create_task(gateway.call("POST", body=HELD))
        await until_submitted(gateway.sink, 1)
        assert gateway.app.ingestion.budget.held == len(HELD)
        yield gateway, first


def test_a_body_counts_until_its_request_is_answered() -> None:
    async def scenario() -> None:
        async with one_held() as (gateway, first):
            gateway.sink.write_held()
            assert (await first).status == 200
            assert gateway.app.ingestion.budget.held == 0

    asyncio.run(scenario())


def test_an_announced_body_past_the_budget_is_refused_unread_and_taken_once_there_is_room() -> None:
    async def scenario() -> None:
        async with one_held() as (gateway, first):
            budget = gateway.app.ingestion.budget
            unread = Proto([SECOND])
            refused = await gateway.call("POST", body=SECOND, proto=unread)
            assert refused.status == Refusal.BODY_BYTES_IN_FLIGHT.status == 503
            assert refused.header("retry-after") == "2"
            assert unread.reads == 0
            assert budget.held == len(HELD)
            gateway.sink.write_held()
            assert (await first).status == 200
            gateway.sink.hold = False
            assert (await gateway.call("POST", body=SECOND)).status == 200
            assert budget.held == 0
            assert len(gateway.sink.submitted) == 2

    asyncio.run(scenario())


def test_a_chunked_body_is_refused_at_the_chunk_that_passes_the_budget() -> None:
    async def scenario() -> None:
        async with one_held() as (gateway, first):
            budget = gateway.app.ingestion.budget
            chunks = [SECOND[i : i + 100] for i in range(0, len(SECOND), 100)]
            chunked = Proto(list(chunks))
            refused = await gateway.call("POST", body=SECOND, proto=chunked, chunked=True)
            assert refused.status == 503
            room = BUDGET - len(HELD)
            assert chunked.reads == room // 100 + 1  # the chunks that fit, and the one that did not
            assert budget.held == len(HELD)
            gateway.sink.write_held()
            await first
            assert budget.held == 0

    asyncio.run(scenario())


def test_bodies_refused_or_abandoned_give_their_bytes_back() -> None:
    async def scenario() -> None:
        async with running(max_body_bytes_in_flight=BUDGET, max_request_bytes=BUDGET) as gateway:
            budget = gateway.app.ingestion.budget
            too_large = form(event(pad="z" * BUDGET))
            assert (await gateway.call("POST", body=too_large, chunked=True)).status == 413
            assert (await gateway.call("POST", body=form({"no": "event"}))).status == 400
            stalled = Proto([], read=asyncio.get_running_loop().create_future())
            request = asyncio.create_task(gateway.call("POST", body=HELD, proto=stalled))
            await asyncio.sleep(0)
            assert budget.held == len(HELD)
            gateway.clock[0] += gateway.app.ingestion.deadlines.timeout
            gateway.app.ingestion.deadlines.sweep()
            assert (await request).status == 408
            assert budget.held == 0

    asyncio.run(scenario())


def test_a_compressed_body_counts_what_it_inflates_to() -> None:
    # Small on the wire, large once decoded: the events held until the answer are what the budget bounds.
    events = [event(pad="z" * 900, n=i) for i in range(4)]
    body = gzip.compress(json.dumps(events).encode())
    gz = (("content-type", "application/json"), ("content-encoding", "gzip"))
    assert len(body) < BUDGET // 10

    async def scenario() -> None:
        async with running(MemorySink(hold=True), max_body_bytes_in_flight=BUDGET) as gateway:
            budget = gateway.app.ingestion.budget
            refused = await gateway.call("POST", query="verbose=1", body=body, headers=gz)
            assert refused.status == Refusal.BODY_BYTES_IN_FLIGHT.status == 503
            assert refused.header("retry-after") == "2"
            assert "inflate" in json.loads(refused.body)["error"]
            assert gateway.sink.submitted == []
            assert budget.held == 0
            small = gzip.compress(json.dumps(events[:1]).encode())
            held = asyncio.create_task(gateway.call("POST", body=small, headers=gz))
            await until_submitted(gateway.sink, 1)
            assert budget.held > len(small) * 3  # its inflated events, not its wire bytes
            gateway.sink.write_held()
            assert (await held).status == 200
            assert budget.held == 0

    asyncio.run(scenario())
