"""The benchmark suite: everything `make bench` measures, in one run, into one JSON file, one Markdown
report and its plots.

    .venv/bin/python bench/suite.py            # `make bench`
    .venv/bin/python bench/suite.py --quick    # `make bench-quick`: a subset, to check the bench runs

Parts, all in the same run so that their ratios share the machine's state (it is shared and noisy):

1. decoder: bench/decode_bench.py's measurement (native against stdlib and pybase64+orjson), imported;
2. load: wrk against the gateway (`trackgate serve`, private Redis), the ceiling (bench/ceiling_app.py) and
   the peer (bench/peer_app.py: FastAPI, uvicorn, one XADD per event), at several concurrency levels and
   batch sizes (1 event by GET; 10, 50, 200 by POST), the three targets measured back to back per cell;
3. funnels: the gateway with 20% `mp_funnel` events against none, alternated (A B B A), compared again
   once if a rewrite of Redis's append-only file overlapped it;
4. half load: p99 latency at a fixed rate of half each target's maximum (paced wrk);
5. CPU per event of the servers and of their Redis, from /proc, for every run;
6. soak: the gateway workers' RSS over 60 s at 80% of the maximum (bench/soak.py runs the long one).

Writes bench/results/<date>-<host>.json (`-quick` for --quick), the .md report beside it and PNG plots
(bench/report.py renders the report and plots from a JSON file again).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import soak as soak_mod
from measure import Run, measure, require_tools
from processes import run_main, servers_stopped_on_exit
from provenance import default_result, machine_info, versions
from targets import (
    PEER_STREAM_MAXLEN,
    STREAM_MAXLEN,
    GranianSettings,
    Target,
    gateway_granian_settings,
    start_ceiling,
    start_gateway,
    start_peer,
)
from workloads import Shape
from wrk import RequestFiles

TARGETS = ("ceiling", "gateway", "peer")


class Plan:
    def __init__(self, args: argparse.Namespace) -> None:
        self.quick: bool = args.quick
        if args.quick:
            self.concurrency = [64]
            self.sweep_batches = [1, 50]  # at every concurrency level
            self.batch_sizes = [1, 50]  # at the middle level
            self.seconds, self.warmup = 2, 0  # each server's first run is warmed up anyway
            self.half_targets: tuple[str, ...] = ("gateway",)
            self.funnel_seconds, self.funnel_pairs = 2, 1
            self.soak_seconds = 0
        else:
            self.concurrency = [16, 64, 256]
            self.sweep_batches = [1, 50]
            self.batch_sizes = [1, 10, 50, 200]
            self.seconds, self.warmup = 5, 1
            self.half_targets = TARGETS
            self.funnel_seconds, self.funnel_pairs = 3, 2
            self.soak_seconds = 60
        if args.seconds:
            self.seconds = args.seconds
        if args.concurrency:
            self.concurrency = args.concurrency
        if args.soak_seconds is not None:
            self.soak_seconds = args.soak_seconds
        self.middle = 64 if 64 in self.concurrency else self.concurrency[len(self.concurrency) // 2]
        self.half_connections = 64
        self.targets = tuple(t for t in TARGETS if t not in args.skip)


def decoder_part(quick: bool) -> dict[str, Any]:
    """bench/decode_bench.py's contestants, shapes and timing, imported and called."""
    import decode_bench as db

    seconds, repeats = db.loop_settings(quick)
    shapes, decoders = db.request_shapes(), db.decoders()
    db.check_same_events(shapes, decoders)
    rates: dict[str, dict[str, float]] = {}
    for shape, body in shapes.items():
        rates[shape] = {}
        for name, decode in decoders.items():
            rates[shape][name] = db.events_per_second(decode, body, seconds, repeats)
            log(f"decoder {shape:12} {name:>16} {rates[shape][name]:>12,.0f} events/s")
    library: dict[str, dict[str, float]] = {}
    for shape, data in db.data_shapes().items():
        if not db.same_typed_events(data):
            raise RuntimeError(f"trackgate.decode does not give the stored events for the {shape} data")
        library[shape] = {}
        for name, decode in db.library_decoders().items():
            library[shape][name] = db.events_per_second(decode, data, seconds, repeats)
            log(f"library {shape:12} {name:>28} {library[shape][name]:>12,.0f} events/s")
    return {
        "seconds_per_loop": seconds,
        "repeats": repeats,
        "events_per_s": rates,
        "library_events_per_s": library,
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def describe(run: Run) -> str:
    text = (
        f"{run.part:9} {run.target:8} {run.label:32} c={run.connections:<4} "
        f"{run.requests_per_s:>9,.0f} req/s {run.events_per_s:>10,.0f} ev/s  p99 {run.p99_ms:7.2f} ms"
    )
    if run.rate:
        text += f"  (asked {run.rate:,.0f} req/s)"
    if run.notes:
        text += "  ! " + "; ".join(run.notes)
    return text


def run_parts(
    work: Path,
    plan: Plan,
    args: argparse.Namespace,
    granian: GranianSettings,
    results: dict[str, Any],
    runs: list[Run],
) -> None:
    """Parts 2 to 6, with the servers up; what they measure goes into `results` and `runs` as it comes."""
    workers = granian.workers
    log("starting the servers")
    targets: dict[str, Target] = {"gateway": start_gateway(work, args.workers, args.gateway_arg)}
    token = targets["gateway"].token
    if "ceiling" in plan.targets:
        targets["ceiling"] = start_ceiling(work, granian)
    if "peer" in plan.targets:
        targets["peer"] = start_peer(work, workers, token)
    for target in targets.values():
        target.token = token
    order = [targets[name] for name in TARGETS if name in targets]
    requests = RequestFiles(work)

    def measured(target: Target, shape: Shape, connections: int, **kw: Any) -> Run:
        run = measure(target, requests, shape, connections, plan.seconds, threads=args.threads, **kw)
        runs.append(run)
        log(describe(run))
        return run

    log("part 2: load at several concurrency levels and batch sizes (part 5, CPU, in every run)")
    cells = [(c, b) for c in plan.concurrency for b in plan.sweep_batches]
    cells += [(plan.middle, b) for b in plan.batch_sizes if (plan.middle, b) not in cells]
    cells.sort(key=lambda cell: (cell[1], cell[0]))
    warmed: set[str] = set()
    for connections, batch in cells:
        for target in order:
            warmup = plan.warmup if target.name in warmed else max(plan.warmup, 1)
            warmed.add(target.name)
            measured(target, Shape(batch), connections, warmup=warmup, part="load")

    log("part 3: 20% mp_funnel events against none (gateway)")
    gateway = targets["gateway"]
    funnel: dict[str, Any] = {}
    for batch in (1, 50):
        plain, mixed = Shape(batch), Shape(batch, 0.2)
        sequence = [plain, mixed, mixed, plain][: 2 * plan.funnel_pairs]
        # A rewrite of Redis's append-only file takes a core for seconds: whichever runs it overlaps lose
        # throughput for a reason that is not the funnels. The comparison is made again once after it.
        redone = None
        for attempt in (1, 2):
            done: dict[str, list[Run]] = {plain.key: [], mixed.key: []}
            for shape in sequence:
                run = measure(
                    gateway, requests, shape, plan.middle, plan.funnel_seconds, threads=args.threads,
                    warmup=0 if done[shape.key] or plan.quick else 1, part="funnel",
                )  # fmt: skip
                runs.append(run)
                done[shape.key].append(run)
                log(describe(run))
            overlapped = sum(r.redis_rewriting for rs in done.values() for r in rs)
            if attempt == 2:
                if overlapped:
                    redone = f"{redone}, and {overlapped} of the second's"
                break
            if not overlapped:
                break
            # The next run waits for the rewrite to end, as every run does (measure.measure).
            redone = f"made again: a rewrite of Redis's append-only file overlapped {overlapped} of its runs"
            log(f"funnels, {Shape(batch).label}: {redone}")
        rate = {
            key: sum(r.acknowledged_events for r in rs) / sum(r.seconds for r in rs)
            for key, rs in done.items()
        }
        funnel[Shape(batch).key] = {
            "connections": plan.middle,
            "events_per_s_without": rate[plain.key],
            "events_per_s_with_20pct_funnel": rate[mixed.key],
            "ratio": rate[mixed.key] / rate[plain.key] if rate[plain.key] else None,
            "redone": redone,
        }
    results["funnel"] = funnel

    log("part 4: p99 latency at half the maximum throughput (paced)")
    maxima: dict[str, dict[str, float]] = {}
    for target in order:
        if target.name not in plan.half_targets:
            continue
        maxima[target.name] = {}
        for batch in (1, 50):
            best = max(
                (r for r in runs if r.part == "load" and r.target == target.name and r.batch == batch),
                key=lambda r: r.requests_per_s,
            )
            maxima[target.name][Shape(batch).key] = best.requests_per_s
            measured(
                target, Shape(batch), plan.half_connections, warmup=plan.warmup,
                rate=best.requests_per_s / 2, part="half-load",
            )  # fmt: skip
    results["max_requests_per_s"] = maxima

    if plan.soak_seconds > 0:
        for name in ("ceiling", "peer"):  # idle, but out of the way for the soak
            if name in targets:
                targets[name].stop()
        log(f"part 6: memory soak, {plan.soak_seconds} s at 80% of the maximum (gateway)")
        shape = soak_mod.SOAK_SHAPE
        peak = measure(gateway, requests, shape, soak_mod.CONNECTIONS, plan.seconds, part="soak-max")
        runs.append(peak)
        log(describe(peak))
        result = soak_mod.soak(gateway, requests, shape, peak.requests_per_s * 0.8, plan.soak_seconds)
        result["max_events_per_s"] = peak.events_per_s
        result["load_fraction"] = 0.8
        results["soak"] = result
        growth = result.get("rss_growth_percent")
        log(f"soak: RSS growth {growth:+.1f}%" if growth is not None else "soak: too short to measure")

    for target in targets.values():
        target.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the quick subset (`make bench-quick`)")
    parser.add_argument(
        "--workers",
        type=int,
        help="workers of each server (default: the gateway's own default, for all three)",
    )
    parser.add_argument("--gateway-arg", action="append", default=[], help="extra `trackgate serve` argument")
    parser.add_argument("--seconds", type=int, help="seconds measured per load run (default 5, quick 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="connection counts (default 16 64 256)")
    parser.add_argument("--soak-seconds", type=int, help="length of the in-suite soak (default 60, quick 0)")
    parser.add_argument(
        "--skip", nargs="+", default=[], choices=[*TARGETS, "decoder"], help="parts to leave out"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--out", type=Path, help="the JSON file to write (default bench/results/<date>-<host>)"
    )
    args = parser.parse_args()
    if "gateway" in args.skip:
        parser.error("the gateway cannot be skipped")
    require_tools()
    plan = Plan(args)
    started = time.time()
    out: Path = args.out or default_result("-quick" if plan.quick else "")
    out.parent.mkdir(parents=True, exist_ok=True)

    granian = gateway_granian_settings(args.workers, args.gateway_arg)
    workers = granian.workers  # what the gateway runs; the ceiling and the peer get as many
    results: dict[str, Any] = {
        "suite": {
            "mode": "quick" if plan.quick else "full",
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        },
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "workers": workers,
            "gateway_args": args.gateway_arg,
            "granian": vars(granian),
            "peer": f"uvicorn, {workers} worker(s), uvloop + httptools, access log off; "
            f"its own redis-server on TCP loopback",
            "redis": "private redis-server per server under test: appendonly yes, appendfsync everysec, "
            "no RDB snapshots",
            "stream_maxlen": f"gateway {STREAM_MAXLEN} per partition; peer {PEER_STREAM_MAXLEN} (one stream)",
            "wrk": f"-t{args.threads}, --timeout 10s, requests pre-formatted in init()",
            "concurrency": plan.concurrency,
            "batch_sizes": plan.batch_sizes,
            "seconds_per_run": plan.seconds,
            "warmup_seconds": plan.warmup,
            "middle_connections": plan.middle,
            "half_load_connections": plan.half_connections,
            "funnel_seconds": plan.funnel_seconds * plan.funnel_pairs * 2,
            "soak_seconds": plan.soak_seconds,
            "targets": list(plan.targets),
        },
        "runs": [],
    }
    runs: list[Run] = []

    if "decoder" not in args.skip:
        log("part 1: decoder micro-benchmark")
        try:
            results["decoder"] = decoder_part(plan.quick)
        except Exception as err:
            traceback.print_exc()
            results["decoder"] = {"error": f"{type(err).__name__}: {err}"}

    with servers_stopped_on_exit(), tempfile.TemporaryDirectory(prefix="trackgate-bench-") as tmp:
        try:
            run_parts(Path(tmp), plan, args, granian, results, runs)
        except Exception as err:  # keep what was measured: the report says where it stopped
            traceback.print_exc()
            results["error"] = f"{type(err).__name__}: {err}"
            log(f"stopped early: {results['error']}")

    results["runs"] = [run.as_dict() for run in runs]
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["suite"]["elapsed_s"] = round(time.time() - started, 1)
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {out}")

    import report

    for path in report.write_all(out):
        log(f"wrote {path}")
    print(report.summary_text(results))
    return 0


if __name__ == "__main__":
    run_main(main)
