"""What deduplication costs: POST 50 against a gateway with `--dedup-window` on (the default) and one with
it off (0), side by side, each with its own private Redis, measured alternately (off on on off, `--rounds`
times) in the same run, so that the machine's drift falls on both alike.

    .venv/bin/python bench/dedup_cost.py                   # 2 rounds of 5 s runs, 64 connections
    .venv/bin/python bench/dedup_cost.py --rounds 4 --seconds 3

Every event wrk sends is new (its `$insert_id` is made unique per request: `workloads.UNIQUE_MARK`), so
the gateway with dedup on does the lookups and stores every event: the runs check that it stored as many
as it answered. Writes bench/results/<date>-<host>-dedup.json and .md (the target: on keeps at least 85%
of the events/s of off).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import Run, measure, require_tools
from processes import run_main, servers_stopped_on_exit
from provenance import default_result, run_record, write_record
from targets import start_gateway
from workloads import Shape
from wrk import RequestFiles

CONNECTIONS = 64
SHAPE = Shape(50)
TARGET = 0.85
"""Events/s with dedup on, as a share of those with it off, that it must keep."""
SETTINGS = {"on": [], "off": ["--dedup-window", "0"]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary(runs: list[Run]) -> dict[str, Any]:
    """Events/s over the runs, CPU µs per event (gateway workers, Redis), events answered and stored."""
    events = sum(r.acknowledged_events for r in runs)
    return {
        "events_per_s": events / sum(r.seconds for r in runs),
        "gateway_us_per_event": sum(r.server_cpu_s for r in runs) / events * 1e6,
        "redis_us_per_event": sum(r.redis_cpu_s for r in runs) / events * 1e6,
        "answered_events": events,
        "stored_events": sum(r.stored_events or 0 for r in runs),
        "per_round_events_per_s": [r.events_per_s for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="off on on off rounds (default 2)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per measured run (default 5)")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/<date>-<host>-dedup.json)")
    args = parser.parse_args()
    require_tools()
    out: Path = args.out or default_result("-dedup")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = run_record(seconds=args.seconds, connections=CONNECTIONS, rounds=args.rounds)
    runs: dict[str, list[Run]] = {"on": [], "off": []}
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory(prefix="trackgate-dedup-") as tmp:
        work = Path(tmp)
        requests = RequestFiles(work)
        targets = {
            name: start_gateway(work, None, flags, name=f"gateway-{name}") for name, flags in SETTINGS.items()
        }
        try:
            for _ in range(args.rounds):
                for name in ("off", "on", "on", "off"):
                    warmup = 0 if runs[name] else 1
                    run = measure(
                        targets[name], requests, SHAPE, CONNECTIONS, args.seconds, warmup=warmup, part="dedup"
                    )
                    runs[name].append(run)
                    log(f"dedup {name:3}: {run.events_per_s:>9,.0f} events/s {' '.join(run.notes)}")
        finally:
            for target in targets.values():
                target.stop()
    results["settings"] = {name: summary(rs) for name, rs in runs.items()}
    results["runs"] = {name: [r.as_dict() for r in rs] for name, rs in runs.items()}
    on, off = results["settings"]["on"], results["settings"]["off"]
    results["ratio"] = on["events_per_s"] / off["events_per_s"]
    md = write_record(out, results, markdown)
    log(f"wrote {out} and {md}")
    return 0 if results["ratio"] >= TARGET else 1


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = []
    for name in ("off", "on"):
        s = results["settings"][name]
        rounds = ", ".join(f"{x:,.0f}" for x in s["per_round_events_per_s"])
        rows.append(
            f"| {name} | {s['events_per_s']:,.0f} | {rounds} | {s['gateway_us_per_event']:.1f} + "
            f"{s['redis_us_per_event']:.1f} | {s['answered_events']:,} / {s['stored_events']:,.0f} |"
        )
    ratio = results["ratio"]
    verdict = "met" if ratio >= TARGET else "missed"
    return (
        f"# trackgate deduplication: {results['started'][:10]} on {m['host']}\n\n"
        f"`{results['command']}`; {m['cpus']} CPUs ({m['cpu_model']}), load average "
        f"{m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at the end; trackgate "
        f"{results['versions']['trackgate_commit']}. POST 50, wrk -c{results['connections']}, "
        f"{results['seconds']} s per run, {results['rounds']} x (off on on off), each gateway with its own "
        "private Redis; every event new.\n\n"
        "| --dedup-window | events/s | per run | CPU µs/event (gateway + Redis) | answered / stored |\n"
        "| --- | ---: | --- | ---: | ---: |\n" + "\n".join(rows) + "\n\n"
        f"On / off: **{ratio:.2f}** (target {TARGET:.2f}: {verdict}).\n"
    )


if __name__ == "__main__":
    run_main(main)
