"""Imported events in the function library, against a real Redis: the transactions the batcher sends for
/import's batches. An event of a day past the counter retention is stored and not counted; it is
deduplicated as any other event, and the duplicates taken out of the stream are the right entries
whatever mix of counted and uncounted events the batch holds."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
import redis
from conftest import send_write, stored_events
from test_write_function import DAY, NOW, OPTIONS
from trackgate import keys, store
from trackgate._native import PartitionBatch, decode_import_request
from trackgate.gateway.imports import import_options

RETENTION_DAYS = 30
TODAY = NOW // DAY * DAY
OLD = TODAY - (RETENTION_DAYS + 1) * DAY  # a day past the retention: stored, not counted
RECENT = TODAY - 2 * DAY  # counted


@pytest.fixture
def client(redis_server: Any) -> Any:
    with redis_server.client() as c:
        c.function_load(store.FUNCTION_SOURCE, replace=True)
        yield c


def imported(name: str, at: float, insert_id: str) -> dict[str, Any]:
    return {"event": name, "properties": {"distinct_id": "u1", "time": at, "$insert_id": insert_id}}


def batch_of(token: str, *events: dict[str, Any]) -> PartitionBatch:
    """The events as /import decodes them for `token`, in one partition."""
    request = decode_import_request(
        "",
        "\n".join(json.dumps(e) for e in events).encode(),
        "application/x-ndjson",
        token=token,
        now=NOW,
        options=import_options(OPTIONS),
        counter_retention_days=RETENTION_DAYS,
    )
    assert request.errors == []
    [batch] = request.batches
    return batch


def counts(client: redis.Redis, token: str, at: float) -> dict[str, int]:
    """The day's event counts, by name."""
    found: dict[bytes, bytes] = client.hgetall(keys.daily_counts_key(token, 0, _day(at)))  # type: ignore[assignment]
    return {name.decode(): int(n) for name, n in found.items()}


def insert_ids(client: redis.Redis, token: str) -> list[str]:
    return [e["properties"]["$insert_id"] for e in stored_events(client, token)]


def _day(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).date().isoformat()


def test_old_days_are_stored_not_counted_and_deduplicated_in_place(client: redis.Redis) -> None:
    token = "i" + uuid.uuid4().hex[:15]
    first = batch_of(token, imported("Old", OLD, "old-1"), imported("Recent", RECENT, "recent-1"))
    reply = send_write(client, token.encode(), 1, [first])
    assert reply[-1][:2] == [1, 0]  # one counted, none past the caps
    assert counts(client, token, RECENT) == {"Recent": 1}
    assert counts(client, token, OLD) == {}
    assert sorted(e["properties"]["$insert_id"] for e in stored_events(client, token)) == [
        "old-1",
        "recent-1",
    ]
    # Sent again among new events, counted and not: the duplicates leave the stream, the others stay.
    again = batch_of(
        token,
        imported("Old", OLD - DAY, "old-2"),
        imported("Old", OLD, "old-1"),
        imported("Recent", RECENT, "recent-1"),
        imported("Recent", RECENT + 1, "recent-2"),
    )
    reply = send_write(client, token.encode(), 2, [again])
    assert reply[-1][0] == 1  # recent-2 alone counted
    assert counts(client, token, RECENT) == {"Recent": 2}
    assert counts(client, token, OLD) == {}
    assert sorted(insert_ids(client, token)) == ["old-1", "old-2", "recent-1", "recent-2"]
