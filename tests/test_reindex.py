"""`trackgate project reindex`: the daily counts and names seen of days counted before gateways kept
them, rebuilt from the hourly counts equal to what `tg_count` writes itself."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from typing import Any

import redis
from conftest import TRACKGATE, RedisServer, create_project, send_write
from trackgate import Options, decode_request, keys, store

DAY = 86400
MIDNIGHT = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()
NOW = MIDNIGHT + 10 * DAY
OPTIONS = Options(max_age=400 * DAY, partitions=1)


def events(token: str) -> list[dict[str, Any]]:
    """Three names over three days and several hours, by a few users."""
    return [
        {
            "event": f"name {i % 3}",
            "properties": {
                "token": token,
                "distinct_id": f"u{i % 5}",
                "time": MIDNIGHT + (i // 3 % 3) * DAY + i * 600,
            },
        }
        for i in range(40)
    ]


def derived(client: redis.Redis, token: str) -> dict[str, Any]:
    """The daily counts and names seen of partition 0."""
    prefix = keys.partition_prefix(token, 0)
    found: dict[str, Any] = {}
    for raw in client.scan_iter(match=prefix + keys.Family.DAILY_COUNTS + "*"):
        found[raw.decode()] = client.hgetall(raw)
    found["nm"] = client.zrange(keys.names_seen_key(token, 0), 0, -1, withscores=True)
    return found


def reindex(url: str, name: str) -> str:
    args = [TRACKGATE, "project", "reindex", name, "--redis-url", url]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def test_reindex_writes_what_counting_writes(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.function_load(store.FUNCTION_SOURCE, replace=True)
    name = f"reindexed {uuid.uuid4().hex[:8]}"
    token = create_project(redis_server.url, name)
    request = decode_request(
        b"", json.dumps(events(token)).encode(), "application/json", now=NOW, options=OPTIONS
    )
    [batch] = request.batches
    send_write(client, b"w-reindex", 1, [batch])
    counted = derived(client, token)
    # Three days' daily counts, three names.
    assert len(counted) == 4
    assert len(counted["nm"]) == 3

    # As an older gateway left them: hourly counts, names and users, no daily counts nor names seen.
    for key in [k for k in counted if k != "nm"] + [keys.names_seen_key(token, 0)]:
        client.delete(key)
    assert derived(client, token) == {"nm": []}

    assert reindex(redis_server.url, name).strip() == f"{name}: 3 days of a partition reindexed, 9 names"
    assert derived(client, token) == counted
    # The daily counts expire with the hourly counts they come from.
    day = dt.date.fromtimestamp(MIDNIGHT).isoformat()
    hourly_ttl = client.ttl(keys.hourly_counts_key(token, 0, day))
    assert hourly_ttl > 0
    assert abs(client.ttl(keys.daily_counts_key(token, 0, day)) - hourly_ttl) <= 1

    # Again, and beside new counting: nothing is counted twice.
    reindex(redis_server.url, name)
    assert derived(client, token) == counted
