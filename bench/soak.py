"""Memory soak: the RSS of the gateway's workers over a long run at a fixed 80% of its maximum throughput.

    .venv/bin/python bench/soak.py --minutes 10          # the full soak
    .venv/bin/python bench/soak.py --minutes 1 --json /tmp/soak.json

It starts `trackgate serve` with its private Redis (on 127.0.0.1 only), measures the maximum throughput of
the soak's requests (POSTs of 50 events, 20% of them `mp_funnel` steps, 64 connections) for 10 s, then
sends them at 80% of that rate (wrk, paced by its Lua script) for the given time, reading each worker's
resident memory (RSS, from /proc) every second. It reports the growth from the start of the soak (after a
warm-up of 10% of it) to its end, in percent, and Redis's RSS for comparison (Redis grows until the streams
reach their trim length). `make bench` runs a one-minute version of the same measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import Run, measure, require_tools
from processes import run_main, servers_stopped_on_exit
from procstat import cpu_seconds, rss_bytes, start_time
from provenance import machine_info, versions
from targets import Target, gateway_granian_settings, gateway_stored_events, start_gateway
from workloads import Shape
from wrk import RequestFiles, finish_wrk, start_wrk

SOAK_SHAPE = Shape(50, 0.2)
CONNECTIONS = 64


def soak(
    target: Target,
    requests: RequestFiles,
    shape: Shape,
    rate_rps: float,
    seconds: float,
    *,
    connections: int = CONNECTIONS,
    every: float = 1.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Send `shape` at `rate_rps` requests/s for `seconds`, sampling the RSS of the target's workers and
    of its Redis every `every` seconds."""
    script = requests.script(target.token, shape, rate_rps)
    workers = target.server.worker_pids()
    started = {pid: start_time(pid) for pid in workers}
    _, redis = target.split_pids()
    samples: list[dict[str, Any]] = []
    aborted = None
    cpu_before = (cpu_seconds(workers), cpu_seconds(redis))
    stored_before = gateway_stored_events(target)
    start = time.monotonic()
    wrk = start_wrk(target.base + "/track", script, connections, seconds)
    next_sample = start
    while wrk.poll() is None:
        now = time.monotonic()
        gone = [pid for pid in workers if start_time(pid) != started[pid]]
        if gone or target.server.process.poll() is not None:
            # A worker that crashed (Granian starts another) or a gateway that was stopped from outside:
            # what was sampled so far is all there is.
            aborted = f"after {now - start:.0f} s: " + (
                f"worker(s) {gone} exited" if gone else "the gateway exited"
            )
            print(f"soak aborted {aborted}", file=sys.stderr, flush=True)
            wrk.kill()
            break
        if now >= next_sample:
            samples.append(
                {
                    "t": round(now - start, 2),
                    "workers_rss": [rss_bytes(pid) for pid in workers],
                    "redis_rss": sum(rss_bytes(pid) for pid in redis),
                }
            )
            next_sample += every
            if progress and len(samples) % 30 == 0:
                mib = sum(samples[-1]["workers_rss"]) / 2**20
                print(f"  {now - start:5.0f} s: workers {mib:.1f} MiB", file=sys.stderr, flush=True)
        time.sleep(min(0.1, max(0.0, next_sample - time.monotonic())))
    if aborted:
        wrk.communicate()
        raw: dict[str, Any] = {"requests": 0, "non_2xx": 0, "socket_errors": 0, "p50_us": 0, "p99_us": 0}
        raw["duration_us"] = (time.monotonic() - start) * 1e6
    else:
        raw = finish_wrk(wrk, 60)
    elapsed = raw["duration_us"] / 1e6
    stored_after = gateway_stored_events(target)
    cpu = (cpu_seconds(workers) - cpu_before[0], cpu_seconds(redis) - cpu_before[1])
    ok = raw["requests"] - raw["non_2xx"]
    result: dict[str, Any] = {
        "shape": shape.key,
        "label": shape.label,
        "connections": connections,
        "seconds": elapsed,
        "rate_asked_rps": rate_rps,
        "rate_done_rps": ok / elapsed,
        "events_per_s": ok * shape.batch / elapsed,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["non_2xx"] + raw["socket_errors"],
        "workers": workers,
        "worker_cpu_cores": cpu[0] / elapsed,
        "redis_cpu_cores": cpu[1] / elapsed,
        "stored_events": None
        if stored_before is None or stored_after is None
        else stored_after - stored_before,
        "samples": samples,
        "aborted": aborted,
    }
    result.update(growth(samples, seconds))
    return result


def growth(samples: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """RSS growth of each worker from just after the warm-up (10% of the soak, at least 10 s) to the end:
    the mean of a window (5% of the soak, at least 5 s) at each end, so one sample does not decide."""
    warmup, window = max(10.0, seconds * 0.1), max(5.0, seconds * 0.05)
    start = [s for s in samples if warmup <= s["t"] < warmup + window]
    end = [s for s in samples if s["t"] >= samples[-1]["t"] - window] if samples else []
    if not start or not end or len(samples) < 3:
        return {"rss_growth_percent": None, "note": "too short to measure growth"}
    per_worker = []
    for i in range(len(samples[0]["workers_rss"])):
        first = statistics.fmean(s["workers_rss"][i] for s in start)
        last = statistics.fmean(s["workers_rss"][i] for s in end)
        per_worker.append(
            {
                "rss_start_mib": first / 2**20,
                "rss_end_mib": last / 2**20,
                "rss_max_mib": max(s["workers_rss"][i] for s in samples) / 2**20,
                "growth_percent": (last - first) / first * 100 if first else None,
                "growth_from_first_sample_percent": (last - samples[0]["workers_rss"][i])
                / samples[0]["workers_rss"][i]
                * 100
                if samples[0]["workers_rss"][i]
                else None,
            }
        )
    growths = [w["growth_percent"] for w in per_worker if w["growth_percent"] is not None]
    redis_first = statistics.fmean(s["redis_rss"] for s in start)
    redis_last = statistics.fmean(s["redis_rss"] for s in end)
    return {
        "warmup_s": warmup,
        "window_s": window,
        "rss_growth_percent": max(growths) if growths else None,
        "per_worker": per_worker,
        "redis_rss_start_mib": redis_first / 2**20,
        "redis_rss_end_mib": redis_last / 2**20,
    }


def find_max(target: Target, requests: RequestFiles, shape: Shape, seconds: float) -> Run:
    return measure(target, requests, shape, CONNECTIONS, seconds, warmup=2, part="soak-max")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10, help="length of the soak (default 10)")
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the maximum (default 0.8)")
    parser.add_argument("--workers", type=int, help="gateway workers (default: the gateway's default)")
    parser.add_argument("--gateway-arg", action="append", default=[], help="extra `trackgate serve` argument")
    parser.add_argument(
        "--json", type=Path, help="also write the result here, and its plot beside it (<name>-soak.png)"
    )
    args = parser.parse_args()
    require_tools()
    seconds = args.minutes * 60
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine, software = machine_info(), versions()
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory(prefix="trackgate-soak-") as tmp:
        work = Path(tmp)
        gateway = start_gateway(work, args.workers, args.gateway_arg)
        requests = RequestFiles(work)
        peak = find_max(gateway, requests, SOAK_SHAPE, 10)
        rate = peak.requests_per_s * args.load
        print(
            f"maximum: {peak.events_per_s:,.0f} events/s ({peak.requests_per_s:,.0f} requests/s); "
            f"soaking at {args.load:.0%} = {rate:,.0f} requests/s for {seconds:.0f} s",
            file=sys.stderr,
        )
        result = soak(gateway, requests, SOAK_SHAPE, rate, seconds, progress=True)
        result["max_events_per_s"] = peak.events_per_s
        result["load_fraction"] = args.load
        gateway.stop()
    print_result(result)
    if args.json:
        granian = gateway_granian_settings(args.workers, args.gateway_arg)
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        document = {
            "suite": {"mode": "soak", "command": shlex.join(["python", *sys.argv]), "started": started},
            "machine": machine,
            "versions": software,
            "settings": {"workers": granian.workers, "gateway_args": args.gateway_arg},
            "soak": result,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
        import plots

        png = plots.soak(document, args.json.with_name(args.json.stem + "-soak.png"))
        print(f"wrote {args.json}" + (f" and {png}" if png else ""))
    return 0


def print_result(result: dict[str, Any]) -> None:
    print(
        f"soak: {result['label']}, {result['seconds']:.0f} s at {result['rate_done_rps']:,.0f} requests/s "
        f"({result['events_per_s']:,.0f} events/s; asked {result['rate_asked_rps']:,.0f}), "
        f"p99 {result['p99_ms']:.2f} ms, {result['errors']} errors"
    )
    if result.get("aborted"):
        print(f"ABORTED {result['aborted']}: the numbers below cover the time before that")
    for i, worker in enumerate(result.get("per_worker", [])):
        print(
            f"worker {i}: RSS {worker['rss_start_mib']:.1f} MiB after warm-up -> "
            f"{worker['rss_end_mib']:.1f} MiB "
            f"at the end ({worker['growth_percent']:+.1f}%), max {worker['rss_max_mib']:.1f} MiB"
        )
    if result.get("rss_growth_percent") is not None:
        print(
            f"RSS growth: {result['rss_growth_percent']:+.1f}% (largest over the workers); Redis RSS "
            f"{result['redis_rss_start_mib']:.0f} -> {result['redis_rss_end_mib']:.0f} MiB"
        )
    else:
        print(result.get("note", ""))


if __name__ == "__main__":
    run_main(main)
