"""What many projects cost: single-event GETs spread over 300 projects against the same load on one
project, on one gateway and its Redis, alternated (one many many one, `--rounds` times) in the same run.

    .venv/bin/python bench/projects_cost.py                   # 300 projects, 2 rounds of 5 s runs
    .venv/bin/python bench/projects_cost.py --projects 100 --rounds 3 --seconds 3
    .venv/bin/python bench/projects_cost.py --batch 50        # POST 50 instead of GET 1
    .venv/bin/python bench/projects_cost.py -- --partitions 1 # `trackgate serve` flags after --

The gateway runs on the defaults with a redis-server of the bench's own configured as its private one;
the projects are created through trackgate's projects API on that Redis. Request v of the load is for
project v modulo their number, so every flush carries events of many projects, and each (project,
partition) is a transaction of its own. Every event is new (GETs too: `workloads.B64_MARK`), so the
gateway stores every one it answers, which the runs check. Per load: requests/s, events per flush (the
gateway's `trackgate_flush_events`), events per transaction (Redis's `cmdstat_exec` calls), CPU µs per
event and per transaction of the gateway and of Redis, and Redis's own µs per call of EXEC, MULTI, XADD
and the counting FCALL (`INFO commandstats`). The target: many keeps at least 85% of one's requests/s. Writes
bench/results/<date>-<host>-projects.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import Run, measure, require_tools
from processes import run_main, servers_stopped_on_exit
from provenance import default_result, run_record, write_record
from redis_servers import RedisNode
from run_probes import GatewayFlushes, RedisNodes, commands_totals
from targets import start_gateway
from trackgate import projects
from trackgate.cli.redis_access import registry_client
from workloads import Shape, Tokens
from wrk import RequestFiles

CONNECTIONS = 64
TARGET = 0.85
"""Requests/s over many projects, as a share of those of one, that it must keep."""
ORDER = ("one", "many", "many", "one")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _create_projects(url: str, count: int) -> tuple[str, ...]:
    async with registry_client(url) as client:
        made = [await projects.create_project(client, f"bench-{i:04d}") for i in range(count)]
    return tuple(project.token for project, _secret in made)


def summary(runs: list[Run]) -> dict[str, Any]:
    """Requests/s and what a transaction and an event cost, over the runs."""
    seconds = sum(r.seconds for r in runs)
    events = sum(r.acknowledged_events for r in runs)
    gateway_s, redis_s = sum(r.server_cpu_s for r in runs), sum(r.redis_cpu_s for r in runs)
    commands = commands_totals(runs)
    transactions = commands["exec"]["calls"]
    flushes = sum(r.extra["flushes"] for r in runs)
    return {
        "requests_per_s": sum(r.requests_per_s * r.seconds for r in runs) / seconds,
        "events_per_s": events / seconds,
        "per_round_requests_per_s": [r.requests_per_s for r in runs],
        "gateway_us_per_event": gateway_s / events * 1e6,
        "redis_us_per_event": redis_s / events * 1e6,
        "events_per_flush": sum(r.extra["flushed_events"] for r in runs) / flushes if flushes else None,
        "transactions": transactions,
        "events_per_transaction": events / transactions if transactions else None,
        "gateway_us_per_transaction": gateway_s / transactions * 1e6 if transactions else None,
        "redis_us_per_transaction": redis_s / transactions * 1e6 if transactions else None,
        "redis_usec_per_call": {
            name: stat["usec"] / stat["calls"] if stat["calls"] else None for name, stat in commands.items()
        },
        "calls_per_transaction": {
            name: stat["calls"] / transactions if transactions else None for name, stat in commands.items()
        },
        "answered_events": events,
        "stored_events": sum(r.stored_events or 0 for r in runs),
        "unattributed_cores": sum(r.other_cores * r.seconds for r in runs) / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--projects", type=int, default=300, help="projects of the many load (default 300)")
    parser.add_argument("--batch", type=int, default=1, help="events per request: 1 is a GET (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="one many many one rounds (default 2)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per measured run (default 5)")
    parser.add_argument(
        "--out", type=Path, help="JSON file (default bench/results/<date>-<host>-projects.json)"
    )
    parser.add_argument("serve_args", nargs="*", help="after --: `trackgate serve` flags")
    args = parser.parse_args()
    require_tools()
    out: Path = args.out or default_result("-projects")
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = Shape(args.batch, unique_gets=True)
    results = run_record(
        seconds=args.seconds,
        connections=CONNECTIONS,
        rounds=args.rounds,
        projects=args.projects,
        shape=shape.label,
        serve_args=args.serve_args,
    )
    runs: dict[str, list[Run]] = {"one": [], "many": []}
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory(prefix="trackgate-projects-") as tmp:
        work = Path(tmp)
        target = start_gateway(work, None, args.serve_args, persistence="everysec")
        try:
            assert target.redis is not None
            assert target.redis_url is not None
            tokens: dict[str, Tokens] = {
                "one": target.token,
                "many": asyncio.run(_create_projects(target.redis_url, args.projects)),
            }
            log(f"created {args.projects} projects")
            probes = (
                RedisNodes([RedisNode("redis", target.redis, target.redis_url)]),
                GatewayFlushes(target),
            )
            requests = RequestFiles(work)
            for _ in range(args.rounds):
                for name in ORDER:
                    run = measure(
                        target, requests, shape, CONNECTIONS, args.seconds, warmup=0 if runs[name] else 2,
                        part="projects", tokens=tokens[name], probes=probes,
                    )  # fmt: skip
                    runs[name].append(run)
                    log(f"{name:4}: {run.requests_per_s:>9,.0f} requests/s {' '.join(run.notes)}")
        finally:
            target.stop()
    results["loads"] = {name: summary(rs) for name, rs in runs.items()}
    results["runs"] = {name: [r.as_dict() for r in rs] for name, rs in runs.items()}
    results["ratio"] = results["loads"]["many"]["requests_per_s"] / results["loads"]["one"]["requests_per_s"]
    md = write_record(out, results, markdown)
    log(f"wrote {out} and {md}")
    return 0 if results["ratio"] >= TARGET else 1


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    loads = results["loads"]
    columns = {"one": "1 project", "many": f"{results['projects']} projects"}
    rows = [
        ("requests/s", lambda s: _f(s["requests_per_s"], 0)),
        ("requests/s per run", lambda s: ", ".join(f"{x:,.0f}" for x in s["per_round_requests_per_s"])),
        ("events per flush", lambda s: _f(s["events_per_flush"])),
        ("events per transaction (EXEC)", lambda s: _f(s["events_per_transaction"], 2)),
        ("gateway CPU µs per event", lambda s: _f(s["gateway_us_per_event"])),
        ("Redis CPU µs per event", lambda s: _f(s["redis_us_per_event"])),
        ("gateway CPU µs per transaction", lambda s: _f(s["gateway_us_per_transaction"])),
        ("Redis CPU µs per transaction", lambda s: _f(s["redis_us_per_transaction"])),
        *(
            (f"Redis `{name.upper()}` µs per call (calls per transaction)", _command_cell(name))
            for name in ("multi", "xadd", "fcall", "exec")
        ),
        ("unattributed cores", lambda s: _f(s["unattributed_cores"], 2)),
        ("answered / stored events", lambda s: f"{s['answered_events']:,} / {s['stored_events']:,.0f}"),
    ]
    table = "\n".join(f"| {label} | {cell(loads['one'])} | {cell(loads['many'])} |" for label, cell in rows)
    ratio = results["ratio"]
    verdict = "met" if ratio >= TARGET else "missed"
    return (
        f"# trackgate with many projects: {results['started'][:10]} on {m['host']}\n\n"
        f"`{results['command']}`; {m['cpus']} CPUs ({m['cpu_model']}), load average "
        f"{m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at the end; trackgate "
        f"{results['versions']['trackgate_commit']}. {results['shape']}, wrk -c{results['connections']}, "
        f"{results['seconds']} s per run, {results['rounds']} x (one many many one), one gateway "
        f"(`trackgate serve {' '.join(results['serve_args'])}`) and its Redis; request v for project v "
        f"modulo the projects.\n\n"
        f"| | {columns['one']} | {columns['many']} |\n| --- | ---: | ---: |\n{table}\n\n"
        f"Many / one: **{ratio:.2f}** of the requests/s (target {TARGET:.2f}: {verdict}).\n"
    )


def _command_cell(name: str) -> Any:
    def cell(s: dict[str, Any]) -> str:
        return f"{_f(s['redis_usec_per_call'][name], 2)} ({_f(s['calls_per_transaction'][name], 2)})"

    return cell


if __name__ == "__main__":
    run_main(main)
