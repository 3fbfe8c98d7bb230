"""What /readyz says when writes cannot succeed, end to end: a real redis-server that refuses writes
(out of memory) and one that lost its project registry, in front of a real gateway."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from pathlib import Path

import requests
from conftest import (
    TRACKGATE,
    Gateway,
    RedisServer,
    create_project,
    create_project_keys,
    stored_with,
    wait_for,
)


def post(gw: Gateway, token: str, run: str, seq: int) -> requests.Response:
    event = {
        "event": "health",
        "properties": {"token": token, "distinct_id": f"u{seq}", "run": run, "seq": seq},
    }
    return requests.post(gw.url("/track"), data={"data": json.dumps(event)}, timeout=10)


def refused_and_not_ready(gw: Gateway, token: str, run: str, seq: int) -> str:
    """Posts an event, which is refused with 503 and Retry-After; returns why /readyz says not ready."""
    refused = post(gw, token, run, seq)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) > 0
    ready = requests.get(gw.url("/readyz"), timeout=5)
    assert ready.status_code == 503
    return ready.text


def test_not_ready_while_redis_refuses_writes_for_memory(private_redis: RedisServer, tmp_path: Path) -> None:
    token = create_project(private_redis.url, "oom")
    gw = Gateway(tmp_path / "gw", redis_url=private_redis.url)
    gw.start()
    run = uuid.uuid4().hex
    client = private_redis.client()
    try:
        assert post(gw, token, run, 0).status_code == 200
        client.config_set("maxmemory", 1)  # every write refused: OOM
        assert "OOM" in refused_and_not_ready(gw, token, run, 1)
        client.config_set("maxmemory", 0)
        # Once Redis has room, the next event is stored, and the gateway is ready again.
        assert post(gw, token, run, 2).status_code == 200
        ready = requests.get(gw.url("/readyz"), timeout=5)
        assert (ready.status_code, ready.text) == (200, "ready\n")
    finally:
        client.config_set("maxmemory", 0)
        client.close()
        gw.stop()
    stored = [e["properties"]["seq"] for e in stored_with(private_redis.client(), token, "run", run)]
    assert sorted(stored) == [0, 2]


def trackgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRACKGATE, *args], capture_output=True, text=True, timeout=60, check=True)


def test_a_vanished_registry_is_a_503_until_restored(private_redis: RedisServer, tmp_path: Path) -> None:
    """Redis lost its data (here: FLUSHALL): the gateway notices that the registry is gone, answers 503
    (clients keep their events) rather than 401, and says why on /readyz; the backup brings the projects
    back with the same token and API secret."""
    token, secret = create_project_keys(private_redis.url, "vanishing")
    backup = tmp_path / "projects.json"
    trackgate("project", "backup", "-o", str(backup), "--redis-url", private_redis.url)
    gw = Gateway(tmp_path / "gw", "--token-refresh", "0.2", redis_url=private_redis.url)
    gw.start()
    run = uuid.uuid4().hex
    client = private_redis.client()
    try:
        assert post(gw, token, run, 0).status_code == 200
        client.flushall()
        # Until the next reload the cached list still takes events; then every request is a 503.
        before: list[int] = []

        def refused_now() -> bool:
            before.append(post(gw, token, run, 1).status_code)
            return before[-1] == 503

        wait_for(refused_now, 10, "a 503")
        assert set(before) <= {200, 503}  # never 401
        why = refused_and_not_ready(gw, token, run, 2)
        assert "project registry" in why
        assert "trackgate project restore" in why

        trackgate("project", "restore", str(backup), "--redis-url", private_redis.url)
        wait_for(lambda: requests.get(gw.url("/readyz"), timeout=5).status_code == 200, 10, "ready again")
        assert post(gw, token, run, 3).status_code == 200
        today = str(dt.datetime.now(dt.UTC).date())
        counts = requests.get(
            gw.reports_url("/api/events"), params={"from": today, "to": today}, auth=(secret, ""), timeout=10
        )
        assert counts.status_code == 200, counts.text
        stored_since_flush = before.count(200) + 1
        assert counts.json()["events"]["health"]["total"] == stored_since_flush
    finally:
        client.close()
        gw.stop()
    stored = [e["properties"]["seq"] for e in stored_with(private_redis.client(), token, "run", run)]
    assert sorted(stored) == [1] * before.count(200) + [3]
