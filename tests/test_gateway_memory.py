"""A worker's memory stays bounded under many large uploads at once, end to end: the budget of body bytes
in flight (--max-body-bytes-in-flight) refuses what would pass it, before reading it, and what is
answered as accepted is stored."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from conftest import Gateway, RedisServer, create_project, stored_with

MB = 1024 * 1024
BUDGET = 64 * MB
UPLOADS = 200
# What a worker holds beside the bodies the budget counts: per body, Granian's copy of it as it hands it
# over, the decoded data, the normalised events and their packed writes (each about the body's size),
# and the allocator's slack. Without the budget, 200 uploads of 10 MB at once would take it to gigabytes.
MARGIN = 4 * BUDGET + 64 * MB


def memory_kb(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in kB: VmRSS (resident now), VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def upload_body(token: str, run: str, n: int) -> bytes:
    """Nearly 10 MB of form body: ten events of about 1 MB each (within the decoder's limits)."""
    events = [
        {"event": "upload", "properties": {"token": token, "distinct_id": f"u{i}", "run": run, "n": n, "i": i,
                                           "blob": "x" * 985_000}}
        for i in range(10)
    ]  # fmt: skip
    return b"data=" + json.dumps(events).encode()


def test_many_large_uploads_keep_the_worker_within_its_budget(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    token = create_project(private_redis.url, "uploads")
    gw = Gateway(tmp_path / "gw", "--max-body-bytes-in-flight", str(BUDGET), redis_url=private_redis.url)
    gw.start()
    run = uuid.uuid4().hex
    bodies = [upload_body(token, run, n) for n in range(4)]  # shared by the uploads: the client stays small
    headers = {"content-type": "application/x-www-form-urlencoded"}

    def upload(n: int) -> tuple[int, int, str | None]:
        try:
            r = requests.post(gw.url("/track"), data=bodies[n % 4], headers=headers, timeout=60)
        except requests.ConnectionError:
            return n, 0, None  # refused while still sending: the connection closed under the upload
        return n, r.status_code, r.headers.get("retry-after")

    try:
        [worker] = gw.worker_pids()
        before = memory_kb(worker, "VmRSS") * 1024
        with ThreadPoolExecutor(max_workers=UPLOADS) as pool:
            answers = list(pool.map(upload, range(UPLOADS)))
        peak = memory_kb(worker, "VmHWM") * 1024
    finally:
        gw.stop()
    statuses = Counter(status for _, status, _ in answers)
    assert set(statuses) <= {200, 503, 0}
    assert statuses[200] > 0
    assert statuses[503] + statuses[0] > 0
    assert all(retry is not None and int(retry) > 0 for _, status, retry in answers if status == 503)
    assert peak - before < BUDGET + MARGIN, f"{(peak - before) / MB:.0f} MB more at the peak"
    # Each upload accepted stored its ten events; none refused stored any (bodies repeat: count them).
    stored = Counter(e["properties"]["n"] for e in stored_with(private_redis.client(), token, "run", run))
    accepted = Counter(n % 4 for n, status, _ in answers if status == 200)
    assert stored == Counter({n: 10 * times for n, times in accepted.items()})
