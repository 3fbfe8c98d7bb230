"""The gateway's table of refusals: every reason it can produce is in the table, each is produced, and
each is answered with the table's status and counted under its name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from memory_gateway import (
    INVALID,
    ORIGIN,
    TOKEN,
    FixedTokens,
    MemoryBuckets,
    MemorySink,
    Proto,
    answer,
    answer_stalled,
    answer_while_held,
    counted,
    data,
    event,
    form,
    running,
)
from trackgate._native import EVENT_ERROR_KINDS, REQUEST_ERROR_STATUS
from trackgate.batcher import Unavailable
from trackgate.gateway.refusals import BODY_TOO_LARGE, UNKNOWN_TOKEN_KIND, Reason, Refusal
from trackgate.rate_limit import RateLimit

# A request that is refused for each reason.
SCENARIOS: dict[Refusal, Callable[[], Proto]] = {
    Refusal.ORIGIN_NOT_ALLOWED: lambda: answer(
        data(event()), headers=(("origin", "https://evil.example"),), allowed_origins=(ORIGIN,)
    ),
    Refusal.METHOD_NOT_ALLOWED: lambda: answer(data(event()), method="PUT"),
    Refusal.BODY_TIMEOUT: lambda: answer_stalled(body_timeout=5.0),
    Refusal.INVALID_CALLBACK: lambda: answer(data(event(), callback="a-b")),
    Refusal.INVALID_REDIRECT: lambda: answer(
        data(event(), redirect="https://evil.example/"), redirect_hosts=("shop.example",)
    ),
    Refusal.INVALID_EVENTS: lambda: answer(data(INVALID)),
    Refusal.UNKNOWN_TOKEN: lambda: answer(data(event("tk-nobody")), tokens=FixedTokens("tk-other")),
    Refusal.REDIS_UNAVAILABLE: lambda: answer(
        data(event()), sink=MemorySink(failure=Unavailable.REDIS_UNAVAILABLE)
    ),
    Refusal.OVERLOADED: lambda: answer(data(event()), sink=MemorySink(refusal=Unavailable.OVERLOADED)),
    Refusal.STOPPING: lambda: answer(data(event()), sink=MemorySink(refusal=Unavailable.STOPPING)),
    Refusal.BODY_BYTES_IN_FLIGHT: lambda: answer_while_held(
        form(event(pad="x" * 600)), form(event(pad="y" * 600)), max_body_bytes_in_flight=1000
    ),
    Refusal.REGISTRY_MISSING: lambda: answer(data(event()), tokens=FixedTokens(TOKEN, registry_missing=True)),
    Refusal.WRITE_FAILED: lambda: answer(data(event()), sink=MemorySink(unstored=frozenset(range(4)))),
    Refusal.RATE_LIMITED: lambda: answer(
        data(event()),
        tokens=FixedTokens(TOKEN, limits={TOKEN: RateLimit.of(1)}),
        buckets=MemoryBuckets(levels={TOKEN: 0.0}),
    ),
    Refusal.INVALID_CREDENTIALS: lambda: answer(body=form(event()), method="POST", path="/import"),
}


def test_every_refusal_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(Refusal)


def _answered_and_counted(reason: Reason, scenario: Callable[[], Proto]) -> None:
    before = counted("requests_rejected", reason=reason.kind)
    assert scenario().status == reason.status
    assert counted("requests_rejected", reason=reason.kind) == before + 1


@pytest.mark.parametrize("refusal", list(Refusal), ids=lambda r: r.kind)
def test_each_refusal_is_answered_with_its_status_and_counted(refusal: Refusal) -> None:
    _answered_and_counted(refusal, SCENARIOS[refusal])


def test_a_body_over_the_limit_is_the_decoders_body_too_large() -> None:
    body = form(event(pad="x" * 600))
    assert (BODY_TOO_LARGE.kind, BODY_TOO_LARGE.status) == ("body_too_large", 413)
    _answered_and_counted(BODY_TOO_LARGE, lambda: answer(body=body, method="POST", max_request_bytes=500))


def test_every_reason_the_batcher_gives_is_a_503() -> None:
    for reason in Unavailable:
        refusal = Refusal.for_unavailable(reason)
        assert (refusal.kind, refusal.status) == (reason, 503)


def test_unknown_token_only_when_every_failed_event_has_one() -> None:
    assert Refusal.for_failed_events(["unknown_token", "unknown_token"]) is Refusal.UNKNOWN_TOKEN
    assert Refusal.for_failed_events(["unknown_token", "event_invalid"]) is Refusal.INVALID_EVENTS


def test_while_the_registry_is_missing_events_are_refused_unread_with_retry_after() -> None:
    async def scenario() -> None:
        async with running(tokens=FixedTokens(TOKEN, registry_missing=True)) as gateway:
            body = form(event())
            unread = Proto([body])
            refused = await gateway.call("POST", "verbose=1", body, proto=unread)
            assert (refused.status, refused.header("retry-after")) == (503, "2")
            assert "trackgate project restore" in refused.text
            assert unread.reads == 0
            assert (await gateway.call("GET", data(event()))).status == 503
            assert (await gateway.call("OPTIONS")).status == 204
            assert not gateway.sink.submitted

    asyncio.run(scenario())


def test_the_unknown_token_kind_is_the_decoders() -> None:
    assert UNKNOWN_TOKEN_KIND in EVENT_ERROR_KINDS
    assert Refusal.INVALID_EVENTS.status == REQUEST_ERROR_STATUS["invalid_events"]
