"""When things go wrong: Redis crashing and coming back, Redis stalling, SIGTERM under load; and the
multi-worker and embedded-Redis set-ups that `trackgate serve` runs in production."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests
from conftest import TRACKGATE, Gateway, Load, RedisServer, create_project, stored_with, wait_for
from prometheus_client.mmap_dict import MmapedDict
from trackgate.embedded import EmbeddedRedis


def test_redis_crash_and_restart_during_a_stream_of_requests(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    token = create_project(private_redis.url, "outage")
    gw = Gateway(
        tmp_path / "gw", "--retry-window", "0.5", "--redis-timeout", "1", redis_url=private_redis.url
    )
    gw.start()
    load = Load(gw, token)
    try:
        load.start()
        wait_for(lambda: load.count(200) >= 200, 20, "answers before the crash")
        private_redis.kill()
        crashed = load.mark()
        wait_for(lambda: load.count(503, crashed) >= 20, 10, "503 answers while Redis is down")
        # Longer than the retry window: the batches caught by the crash are given up, not saved by a retry.
        time.sleep(1.0)
        outage = load.results[crashed:]
        private_redis.start()  # same port, same append-only file
        restarted = load.mark()
        wait_for(lambda: load.count(200, restarted) >= 100, 20, "recovery after Redis came back")
    finally:
        load.stop()
        gw.stop()
    assert {r[1] for r in load.results} <= {200, 503}
    assert all(r[3] is not None and int(r[3]) > 0 for r in outage if r[1] == 503)
    stored = {e["properties"]["seq"] for e in stored_with(private_redis.client(), token, "run", load.run)}
    missing = load.acknowledged() - stored
    assert not missing, f"{len(missing)} events answered 1 are not in Redis"
    assert "Redis connection lost" in gw.log()
    # Hundreds of 503s, a few log lines: one a second at most, each saying how many it stands for.
    refused = sum(1 for r in load.results if r[1] == 503)
    lines = re.findall(r"503 redis_unavailable: .*", gw.log())
    assert refused >= 20
    assert len(lines) < refused / 4
    assert any("more refused for this reason since its last line" in line for line in lines)


def test_backpressure_when_redis_stalls(private_redis: RedisServer, tmp_path: Path) -> None:
    token = create_project(private_redis.url, "stall")
    gw = Gateway(
        tmp_path / "gw",
        "--max-pending-events", "4", "--batch-linger-ms", "0", "--redis-timeout", "10",
        redis_url=private_redis.url,
    )  # fmt: skip
    gw.start()
    assert private_redis.process is not None
    run = uuid.uuid4().hex

    def send(i: int) -> tuple[int, str]:
        r = requests.post(
            gw.url("/track"),
            data={"data": json.dumps({"event": "e", "properties": {"token": token, "run": run, "i": i}})},
            timeout=20,
        )
        return r.status_code, r.text

    os.kill(private_redis.process.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(send, i) for i in range(12)]
            # Answered while Redis is still stopped: refused at once, not queued.
            wait_for(lambda: sum(f.done() for f in futures) >= 8, 10, "answers while Redis is stopped")
            refused = [f.result() for f in futures if f.done()]
            os.kill(private_redis.process.pid, signal.SIGCONT)
            answers = [f.result() for f in futures]
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
        gw.stop()
    # At most 4 events wait for the stalled Redis; the rest are refused.
    assert all(status == 503 for status, _ in refused)
    waited = [a for a in answers if a[0] == 200]
    assert 1 <= len(waited) <= 4
    assert all(body == "1" for _, body in waited)
    assert len(stored_with(private_redis.client(), token, "run", run)) == len(waited)


def test_sigterm_under_load_loses_nothing_answered(redis_server: RedisServer, tmp_path: Path) -> None:
    token = create_project(redis_server.url, "sigterm-" + uuid.uuid4().hex[:8])
    gw = Gateway(tmp_path / "gw", "--workers", "2", redis_url=redis_server.url)
    gw.start()
    load = Load(gw, token, threads=8, batch=10)
    try:
        load.start()
        wait_for(lambda: load.count(200) >= 100, 20, "answers before SIGTERM")
        gw.signal(signal.SIGTERM)
        assert gw.wait(30) == 0
    finally:
        load.stop()
        gw.stop()
    acknowledged = load.acknowledged()
    stored = {e["properties"]["seq"] for e in stored_with(redis_server.client(), token, "run", load.run)}
    assert acknowledged <= stored
    assert len(acknowledged) >= 1000
    assert "Stopped worker-2" in gw.log()


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_metrics_add_up_over_two_workers(redis_server: RedisServer, tmp_path: Path) -> None:
    token = create_project(redis_server.url, "metrics-" + uuid.uuid4().hex[:8])
    gw = Gateway(tmp_path / "gw", "--workers", "2", redis_url=redis_server.url)
    gw.start()
    try:
        payload = {"data": json.dumps([{"event": "m", "properties": {"token": token}}] * 3)}
        for _ in range(100):
            # A new connection each time, so both workers take requests.
            assert requests.post(gw.url("/track"), data=payload, headers={"connection": "close"}).text == "1"

        def totals() -> tuple[float, float, float]:
            text = requests.get(gw.url("/metrics"), headers={"connection": "close"}).text
            return (
                _metric(text, 'trackgate_requests_total{route="track",status="200"}'),
                _metric(text, "trackgate_events_stored_total"),
                _metric(text, "trackgate_events_accepted_total"),
            )

        # Workers publish their request counts every quarter second: the sums become exact, then stay.
        deadline = time.monotonic() + 5
        while totals() != (100, 300, 300) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(10):
            assert totals() == (100, 300, 300)
        # The sums are of both workers: each one's own file counts some of the requests.
        workers = gw.worker_pids()
        per_worker = [
            sum(
                value
                for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
                if json.loads(key)[2] == {"route": "track", "status": "200"}
            )
            for path in (tmp_path / "gw" / "data" / "metrics").glob("counter_*.db")
            if int(path.stem.removeprefix("counter_")) in workers
        ]
        assert len(per_worker) == 2
        assert all(n > 0 for n in per_worker), per_worker
        assert sum(per_worker) == 100
    finally:
        gw.stop()


def test_embedded_redis_lifecycle(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, "--demo", redis_url=None)
    gw.start()
    data_dir = tmp_path / "data"
    try:
        demo_token = re.search(r"^token: (\S+)$", gw.log(), re.MULTILINE)
        assert demo_token, gw.log()
        assert "curl -s 'http://127.0.0.1:" in gw.log()
        # `project create` finds the running private Redis.
        created = subprocess.run(
            [TRACKGATE, "project", "create", "shop", "--data-dir", str(data_dir)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        shop = created.split("token: ")[1].split()[0]
        event = {"event": "kept", "properties": {"token": shop, "distinct_id": "someone"}}
        assert requests.post(gw.url("/track"), data={"data": json.dumps(event)}).text == "1"
        redis_pid = int((data_dir / "redis.pid").read_text())
        gw.signal(signal.SIGINT)
        assert gw.wait(30) == 0
    finally:
        gw.stop()
    assert not Path(f"/proc/{redis_pid}").exists(), "the private redis-server outlived serve"
    listing = subprocess.run(
        [TRACKGATE, "project", "list", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert {line.split()[-1] for line in listing.splitlines()} == {"demo", "shop"}
    with EmbeddedRedis(data_dir) as embedded, redis.Redis.from_url(embedded.url) as client:
        assert [e["event"] for e in stored_with(client, shop, "distinct_id", "someone")] == ["kept"]


def test_serve_without_redis_server_says_how_to_install_it(tmp_path: Path) -> None:
    env = {"PATH": str(Path(TRACKGATE).parent), "HOME": str(tmp_path)}
    result = subprocess.run(
        [TRACKGATE, "serve", "--data-dir", str(tmp_path / "d"), "--port", "0"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "apt-get install redis-server" in result.stderr
