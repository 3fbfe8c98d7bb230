"""What Redis holds after a chaos scenario, against what the clients were told: every event answered `1`
is in the project's streams exactly once, no event is there twice, and the hourly counters count every
event the streams hold (an event past a cap under the overflow name), none twice."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import redis
from chaos_load import Answers
from trackgate import keys

EXAMPLES = 5
"""Events named in a failure's message, of those lost or doubled."""
PAGE = 10_000
"""Stream entries read per XRANGE."""


@dataclass
class Audit:
    acknowledged: int  # events answered `1` that were checked
    lost: int  # of those, not in any stream
    doubled: int  # events (of any answer) in the streams more than once
    stored_unacknowledged: int  # events in a stream though not answered `1` (a 503 after a lost reply)
    stream_events: int  # every event of the project's streams
    counted_events: int  # the project's hourly counters, summed
    lost_examples: list[str] = field(default_factory=list)
    doubled_examples: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} events answered 1 are not stored: {', '.join(self.lost_examples)}")
        if self.doubled:
            found.append(
                f"{self.doubled} events are stored more than once: {', '.join(self.doubled_examples)}"
            )
        if self.counted_events != self.stream_events:
            found.append(
                f"the counters count {self.counted_events} events, the streams hold {self.stream_events}"
            )
        return found


def project_keys(client: redis.Redis, token: str, family: keys.Family) -> list[bytes]:
    """Every key of one family in every partition of the project."""
    suffix = "*" if family.endswith(":") else ""
    found = client.scan_iter(match=keys.partitions_pattern(token) + family + suffix, count=1000)
    return sorted(raw for raw in found if (keys.owner(raw.decode()) or ("",))[0] == token)


def stored_events(client: redis.Redis, token: str) -> Counter[tuple[str, int]]:
    """(run, seq) of every event in the project's streams that a chaos client sent, with how often."""
    found: Counter[tuple[str, int]] = Counter()
    for key in project_keys(client, token, keys.Family.STREAM):
        start = "-"
        while True:
            page = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key, min=start, count=PAGE))
            for _id, fields in page:
                properties = json.loads(fields[b"data"])["properties"]
                if "run" in properties and "seq" in properties:
                    found[(properties["run"], properties["seq"])] += 1
            if len(page) < PAGE:
                break
            start = "(" + page[-1][0].decode()
    return found


def stream_length(client: redis.Redis, token: str) -> int:
    return sum(int(client.xlen(key)) for key in project_keys(client, token, keys.Family.STREAM))


def counted(client: redis.Redis, token: str) -> int:
    """Every event the project's hourly counters count, all names, days and partitions."""
    return sum(
        int(n) for key in project_keys(client, token, keys.Family.HOURLY_COUNTS) for n in client.hvals(key)
    )


def audit(url: str, token: str, runs: Iterable[Answers], sent_after: float = 0.0) -> Audit:
    """The project's streams and counters against the answers of `runs`: the events of the requests
    answered `1` that were sent at `sent_after` or later must each be stored once (earlier ones may be
    gone with a Redis that lost its data)."""
    runs = list(runs)
    with redis.Redis.from_url(url, socket_timeout=60) as client:
        stored = stored_events(client, token)
        streams = stream_length(client, token)
        counters = counted(client, token)
    checked = {(r.run, seq) for r in runs for seq in r.acknowledged(sent_after)}
    every = {(r.run, seq) for r in runs for seq in r.acknowledged()}
    theirs = {event for event in stored if event[0] in {r.run for r in runs}}
    lost = sorted(checked - stored.keys())
    doubled = sorted(event for event, times in stored.items() if times > 1)
    return Audit(
        acknowledged=len(checked),
        lost=len(lost),
        doubled=len(doubled),
        stored_unacknowledged=len(theirs - every),
        stream_events=streams,
        counted_events=counters,
        lost_examples=_named(lost),
        doubled_examples=_named(doubled),
    )


def _named(events: list[tuple[str, int]]) -> list[str]:
    """The first EXAMPLES events, as a failure names them (and how many more there are)."""
    named = [f"run {run[:8]} seq {seq}" for run, seq in events[:EXAMPLES]]
    return named + [f"{len(events) - EXAMPLES} more"] * (len(events) > EXAMPLES)
