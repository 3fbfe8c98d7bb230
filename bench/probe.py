"""One gateway, one kind of request, a few runs: the quick look while tuning a single setting.

    .venv/bin/python bench/probe.py                                  # POST 50, closed loop, 64 connections
    .venv/bin/python bench/probe.py --batch 1 --runs 3               # GET 1, three runs
    .venv/bin/python bench/probe.py --rate 1400 -- --pipeline-depth 1   # paced at 1,400 requests/s
    .venv/bin/python bench/probe.py --persistence none               # its own Redis, no append-only file

Everything after `--` goes to `trackgate serve`. Each run prints events/s, latency percentiles, and CPU
µs per event and cores of the gateway's processes, its Redis and wrk, from /proc. No ceiling, no peer:
compare two settings by running both, alternating, and read `bench/knobs.py` for the careful version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from measure import measure, require_tools
from processes import run_main, servers_stopped_on_exit
from targets import start_gateway
from workloads import Shape
from wrk import RequestFiles


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=50, help="events per request: 1 is a GET (default 50)")
    parser.add_argument("--funnel", type=float, default=0.0, help="fraction of mp_funnel events (0-1)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5, help="per run (default 5)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--rate", type=float, help="requests/s, paced (default: a closed loop)")
    parser.add_argument(
        "--persistence",
        choices=["everysec", "always", "none"],
        help="run the gateway on a redis-server of the bench's own with this persistence",
    )
    parser.add_argument("serve_args", nargs="*", help="after --: `trackgate serve` flags")
    args = parser.parse_args()
    require_tools()
    shape = Shape(args.batch, args.funnel)
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory(prefix="trackgate-probe-") as tmp:
        work = Path(tmp)
        target = start_gateway(work, None, args.serve_args, persistence=args.persistence)
        requests = RequestFiles(work)
        for i in range(args.runs):
            run = measure(
                target, requests, shape, args.connections, args.seconds, rate=args.rate, warmup=0 if i else 1
            )
            d = run.seconds
            gateway_us, redis_us = run.server_us_per_event or 0, run.redis_us_per_event or 0
            print(
                f"{run.label}, c={run.connections}: {run.events_per_s:,.0f} events/s "
                f"({run.requests_per_s:,.0f} req/s); p50 {run.p50_ms:.1f} p90 {run.p90_ms:.1f} "
                f"p99 {run.p99_ms:.1f} p99.9 {run.p999_ms:.1f} ms; gateway {gateway_us:.1f} µs/event "
                f"({run.server_cpu_s / d:.2f} cores), Redis {redis_us:.1f} µs/event "
                f"({run.redis_cpu_s / d:.2f} cores), wrk {run.wrk_cpu_s / d:.2f} cores, machine busy "
                f"{run.machine_busy_cores:.2f} of which unattributed {run.other_cores:.2f}",
                flush=True,
            )
            for note in run.notes:
                print(f"  note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
