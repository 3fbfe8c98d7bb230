"""The query API and the dashboard run in a process of their own, on `--reports-port`: the ingestion port
points there, and the reports process lives exactly as long as `trackgate serve`."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import requests
from conftest import Gateway, RedisServer, create_project_keys, wait_for


def answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
    except requests.ConnectionError:
        return False
    return True


def test_the_ingestion_port_points_to_the_reports_port(redis_server: RedisServer, tmp_path: Path) -> None:
    _, secret = create_project_keys(redis_server.url, "elsewhere")
    gw = Gateway(tmp_path, redis_url=redis_server.url)
    gw.start()
    try:
        r = requests.get(gw.url("/api/funnels"), auth=(secret, ""), timeout=10)
        assert r.status_code == 404
        assert f"port {gw.reports_port} (--reports-port)" in r.json()["error"]
        r = requests.get(gw.url("/dashboard"), allow_redirects=False, timeout=10)
        assert (r.status_code, r.headers["location"]) == (308, f"//127.0.0.1:{gw.reports_port}/dashboard")
        followed = requests.get(gw.url("/dashboard"), timeout=10)
        assert (followed.status_code, followed.url) == (200, gw.reports_url("/dashboard"))
        assert requests.get(gw.reports_url("/api/funnels"), auth=(secret, ""), timeout=10).json() == {
            "funnels": []
        }
        # The reports port serves reports only.
        assert requests.post(gw.reports_url("/track"), data={"data": "{}"}, timeout=10).status_code == 404
    finally:
        gw.stop()
    assert not answers(gw.reports_url("/healthz"))


def test_the_reports_process_ends_when_serve_is_killed(redis_server: RedisServer, tmp_path: Path) -> None:
    gw = Gateway(tmp_path, redis_url=redis_server.url)
    gw.start()
    # Granian's ingestion worker outlives a serve killed with SIGKILL: this test ends it itself.
    workers = gw.worker_pids()
    try:
        gw.signal(signal.SIGKILL)
        gw.wait()
        wait_for(lambda: not answers(gw.reports_url("/healthz")), 30, "the reports process to end")
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
