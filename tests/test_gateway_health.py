"""What /readyz says when writes cannot succeed, end to end: a real redis-server that refuses writes
(out of memory) and one that lost its project registry, in front of a real gateway."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import requests
from conftest import Gateway, RedisServer, create_project, stored_with


def post(gw: Gateway, token: str, run: str, seq: int) -> requests.Response:
    event = {
        "event": "health",
        "properties": {"token": token, "distinct_id": f"u{seq}", "run": run, "seq": seq},
    }
    return requests.post(gw.url("/track"), data={"data": json.dumps(event)}, timeout=10)


def test_not_ready_while_redis_refuses_writes_for_memory(private_redis: RedisServer, tmp_path: Path) -> None:
    token = create_project(private_redis.url, "oom")
    gw = Gateway(tmp_path / "gw", redis_url=private_redis.url)
    gw.start()
    run = uuid.uuid4().hex
    client = private_redis.client()
    try:
        assert post(gw, token, run, 0).status_code == 200
        client.config_set("maxmemory", 1)  # every write refused: OOM
        refused = post(gw, token, run, 1)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) > 0
        ready = requests.get(gw.url("/readyz"), timeout=5)
        assert ready.status_code == 503
        assert "OOM" in ready.text
        client.config_set("maxmemory", 0)
        # Once Redis has room, the next event is stored, and the gateway is ready again.
        assert post(gw, token, run, 2).status_code == 200
        ready = requests.get(gw.url("/readyz"), timeout=5)
        assert (ready.status_code, ready.text) == (200, "ready\n")
    finally:
        client.config_set("maxmemory", 0)
        client.close()
        gw.stop()
    assert sorted(e["properties"]["seq"] for e in stored_with(private_redis.client(), token, "run", run)) == [
        0,
        2,
    ]
