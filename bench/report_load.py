"""Reports beside ingestion: /track's throughput with and without report load, in the same run, and the
latency of 30-day reports over a project holding many event names.

    .venv/bin/python bench/report_load.py                 # 10,000 names, 20 s per run
    .venv/bin/python bench/report_load.py --names 2000 --seconds 5

One gateway (`trackgate serve`, one ingestion worker, its reports process on --reports-port) with its
private Redis. wrk sends GET /track (one event per request, 16 connections) alone, then beside 8 report
clients (wrk, no pause: 30 days of event counts, the first page of names) and 2 exports (30 days each,
over again): the ratio of the two /track figures is what reports cost ingestion. Report answers past
--max-report-requests are 429, as production would answer them; the table counts both. The report
clients run at the lowest CPU priority: in production they are elsewhere, and here they would otherwise
take the cores the gateway is measured on.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import requests
from measure import require_tools
from processes import run_main, servers_stopped_on_exit
from targets import Target, demo_reports, start_gateway
from workloads import Shape
from wrk import CLOSED_LOOP, RequestFiles, WrkScript, finish_wrk, start_wrk

DAYS = 30
TRACK_CONNECTIONS = 16
REPORT_CLIENTS = 8
EXPORTS = 2


def fill(target: Target, names: int, now: float) -> int:
    """Each name once a day over the last DAYS days, through /track (POSTs of 2000 events): the counters
    and streams a project of that many names holds."""
    events = [
        {
            "event": f"event {n:05d}",
            "properties": {"token": target.token, "distinct_id": f"u{n % 500}", "time": now - d * 86400 - 60},
        }
        for d in range(DAYS)
        for n in range(names)
    ]
    with requests.Session() as http:
        for i in range(0, len(events), 2000):
            r = http.post(target.base + "/track", data={"data": json.dumps(events[i : i + 2000])}, timeout=60)
            r.raise_for_status()
    return len(events)


def report_query(end: dt.date) -> str:
    start = end - dt.timedelta(days=DAYS - 1)
    return urllib.parse.urlencode({"from": start.isoformat(), "to": end.isoformat()})


def latencies(reports: str, auth: tuple[str, str], end: dt.date, names: int) -> dict[str, dict[str, float]]:
    """Median and slowest of 20 calls of each 30-day report, as a client sees them."""
    query = report_query(end)
    calls = {
        "event counts per day, first 100 names": f"/api/events?{query}",
        "event counts per day, one name": f"/api/events?{query}&event=event%20{names // 2:05d}",
        "event counts per hour, one name": f"/api/events?{query}&unit=hour&event=event%2000000",
    }
    out = {}
    with requests.Session() as http:
        for name, path in calls.items():
            times = []
            for _ in range(20):
                started = time.perf_counter()
                r = http.get(reports + path, auth=auth, timeout=60)
                times.append((time.perf_counter() - started) * 1000)
                r.raise_for_status()
            out[name] = {"median_ms": statistics.median(times), "max_ms": max(times)}
    return out


def start_report_clients(
    work: Path, reports: str, auth: tuple[str, str], end: dt.date, seconds: float, clients: int, exports: int
) -> list[subprocess.Popen[str]]:
    """wrk processes asking the reports process without pause, at the lowest CPU priority, for `seconds`:
    `clients` connections for DAYS days of event counts (the first page of names), `exports` for
    exports of DAYS days. Those with connections, in that order; finish_wrk collects them."""
    header = ("Authorization: Basic " + base64.b64encode(f"{auth[0]}:".encode()).decode(),)
    started = []
    for kind, connections in (("events", clients), ("export", exports)):
        if connections:
            request_file = work / f"{kind}.tsv"
            request_file.write_text(f"GET\t/api/{kind}?{report_query(end)}\t\n")
            script = WrkScript(CLOSED_LOOP, (str(request_file),))
            started.append(start_wrk(reports, script, connections, seconds, headers=header, niceness=19))
    return started


def track_throughput(
    target: Target, files: RequestFiles, seconds: float, load: list[Any] | None
) -> dict[str, Any]:
    """wrk's numbers for /track; `load` (started report wrk processes) run meanwhile and are collected."""
    track = start_wrk(target.base, files.script(target.token, Shape(1)), TRACK_CONNECTIONS, seconds)
    result = finish_wrk(track, seconds + 120)
    result["loads"] = [finish_wrk(p, seconds + 120) for p in load or []]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--report-clients", type=int, default=REPORT_CLIENTS)
    parser.add_argument("--exports", type=int, default=EXPORTS)
    args = parser.parse_args()
    require_tools()
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Events up to DAYS days old are taken, so that the project holds a month of counters.
        target = start_gateway(work, 1, ["--max-age", str((DAYS + 1) * 86400)])
        try:
            reports, auth = demo_reports(target)
            now = time.time()
            stored = fill(target, args.names, now)
            print(f"{stored} events of {args.names} names over {DAYS} days stored")
            end = dt.datetime.fromtimestamp(now, dt.UTC).date()
            for name, t in latencies(reports, auth, end, args.names).items():
                print(f"{name}: median {t['median_ms']:.1f} ms, slowest {t['max_ms']:.1f} ms")

            files = RequestFiles(work, now)
            alone = track_throughput(target, files, args.seconds, None)
            load = start_report_clients(
                work, reports, auth, end, args.seconds + 2, args.report_clients, args.exports
            )
            time.sleep(1)  # the report clients are at it before /track is measured
            beside = track_throughput(target, files, args.seconds, load)
        finally:
            target.stop()
    rate = {k: r["requests"] / (r["duration_us"] / 1e6) for k, r in (("alone", alone), ("beside", beside))}
    print(f"/track alone: {rate['alone']:.0f} requests/s (p99 {alone['p99_us'] / 1000:.1f} ms)")
    print(
        f"/track beside {args.report_clients} report clients and {args.exports} exports: "
        f"{rate['beside']:.0f} requests/s (p99 {beside['p99_us'] / 1000:.1f} ms), "
        f"{100 * rate['beside'] / rate['alone']:.1f}% of alone"
    )
    kinds = ["event counts"] * bool(args.report_clients) + ["exports"] * bool(args.exports)
    for what, r in zip(kinds, beside["loads"], strict=True):
        print(f"  {what}: {r['requests']} answered, {r['non_2xx']} of them 429 (or other non-2xx)")
    return 0


if __name__ == "__main__":
    run_main(main)
