"""One Redis against a Redis Cluster of 3 primaries (one replica each): the same gateway on each, the same
load, alternated in the same run (single cluster cluster single, per request shape, `--rounds` times).

    .venv/bin/python bench/cluster_cost.py                    # GET 1 and POST 50, 2 rounds of 5 s runs
    .venv/bin/python bench/cluster_cost.py --rounds 3 --seconds 3 --primaries 3
    .venv/bin/python bench/cluster_cost.py -- --workers 2     # `trackgate serve` flags after --
    .venv/bin/python bench/cluster_cost.py --primaries 6 --partitions 48 --threads 4 -- --workers 8

Both gateways run `trackgate serve --partitions 16` (`--partitions`: a few per primary) on the defaults
otherwise; every Redis is a redis-server of the bench's own on TCP loopback, with the gateway's
persistence (append-only file, fsync every second). Every event is new (GETs too:
`workloads.B64_MARK`), so each gateway stores every event it answers, which the runs check. Per target
and shape: events/s, p99, the gateway's CPU µs per event, and each Redis server's CPU µs per event
(from /proc; primaries and replicas apart), with its transactions (`cmdstat_exec`). On a machine with
fewer cores than the cluster has primaries this shows what a cluster costs, not what it gains: the model
in bench/README.md turns these per-event costs into throughput on a bigger machine. Writes
bench/results/<date>-<host>-cluster.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster_servers import cluster_url, start_cluster
from measure import Run, measure, require_tools
from processes import run_main, servers_stopped_on_exit
from provenance import default_result, run_record, write_record
from redis_servers import RedisNode, start_redis
from run_probes import GatewayFlushes, RedisNodes, commands_totals
from targets import Target, start_gateway
from workloads import Shape
from wrk import RequestFiles

CONNECTIONS = 64
PARTITIONS = 16
"""The default: a few partitions per primary of the default cluster."""
SHAPES = (Shape(1, unique_gets=True), Shape(50))
ORDER = ("single", "cluster", "cluster", "single")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_targets(
    work: Path, primaries: int, partitions: int, serve_args: list[str]
) -> dict[str, tuple[Target, list[RedisNode]]]:
    """Each gateway with the Redis servers it writes to."""
    single_server, single_url = start_redis(work, "single-redis")
    single = [RedisNode("single", single_server, single_url)]
    cluster = start_cluster(work, primaries)
    out = {}
    for name, nodes, url in (("single", single, single_url), ("cluster", cluster, cluster_url(cluster))):
        flags = ["--redis-url", url, "--partitions", str(partitions), *serve_args]
        target = start_gateway(work, None, flags, name=f"gateway-{name}")
        target.redis_nodes = tuple(node.server for node in nodes)
        target.redis_url = single_url if name == "single" else None  # forks: RedisNodes counts a cluster's
        out[name] = (target, nodes)
    return out


def summary(runs: list[Run]) -> dict[str, Any]:
    """Events/s, p99, and CPU per event of the gateway and of each Redis server, over the runs."""
    seconds = sum(r.seconds for r in runs)
    events = sum(r.acknowledged_events for r in runs)
    nodes: dict[str, dict[str, Any]] = {}
    for run in runs:
        for name, node in run.extra["nodes"].items():
            total = nodes.setdefault(name, {"address": node["address"], "role": node["role"], "cpu_s": 0.0})
            total["cpu_s"] += node["cpu_s"]
    for node in nodes.values():
        node["us_per_event"] = node["cpu_s"] / events * 1e6
    by_role = {
        role: sum(n["cpu_s"] for n in nodes.values() if n["role"] == role) / events * 1e6
        for role in ("primary", "replica")
    }
    transactions = commands_totals(runs, "primary")["exec"]["calls"]
    return {
        "events_per_s": events / seconds,
        "per_round_events_per_s": [r.events_per_s for r in runs],
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "per_round_p99_ms": [r.p99_ms for r in runs],
        "gateway_us_per_event": sum(r.server_cpu_s for r in runs) / events * 1e6,
        "redis_us_per_event": sum(r.redis_cpu_s for r in runs) / events * 1e6,
        "primaries_us_per_event": by_role["primary"],
        "replicas_us_per_event": by_role["replica"],
        "nodes": nodes,
        "events_per_transaction": events / transactions if transactions else None,
        "answered_events": events,
        "stored_events": sum(r.stored_events or 0 for r in runs),
        "errors": sum(r.errors for r in runs),
        "unattributed_cores": sum(r.other_cores * r.seconds for r in runs) / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--primaries", type=int, default=3, help="the cluster's primaries (default 3)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="single cluster cluster single rounds (default 2)"
    )
    parser.add_argument("--seconds", type=int, default=5, help="seconds per measured run (default 5)")
    parser.add_argument(
        "--partitions", type=int, default=PARTITIONS, help=f"both gateways' (default {PARTITIONS})"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk's threads (default 1)")
    parser.add_argument(
        "--out", type=Path, help="JSON file (default bench/results/<date>-<host>-cluster.json)"
    )
    parser.add_argument("serve_args", nargs="*", help="after --: `trackgate serve` flags for both gateways")
    args = parser.parse_args()
    require_tools()
    out: Path = args.out or default_result("-cluster")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = run_record(
        seconds=args.seconds,
        connections=CONNECTIONS,
        rounds=args.rounds,
        primaries=args.primaries,
        partitions=args.partitions,
        threads=args.threads,
        serve_args=args.serve_args,
    )
    runs: dict[str, dict[str, list[Run]]] = {s.key: {"single": [], "cluster": []} for s in SHAPES}
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory(prefix="trackgate-cluster-") as tmp:
        work = Path(tmp)
        targets = start_targets(work, args.primaries, args.partitions, args.serve_args)
        log("the single Redis, the cluster and their gateways are up")
        try:
            requests = RequestFiles(work)
            probes = {name: (RedisNodes(nodes), GatewayFlushes(t)) for name, (t, nodes) in targets.items()}
            for _ in range(args.rounds):
                for shape in SHAPES:
                    for name in ORDER:
                        done = runs[shape.key][name]
                        run = measure(
                            targets[name][0], requests, shape, CONNECTIONS, args.seconds,
                            warmup=0 if done else 2, threads=args.threads, part="cluster",
                            probes=probes[name],
                        )  # fmt: skip
                        done.append(run)
                        log(
                            f"{shape.label:22} {name:7}: {run.events_per_s:>9,.0f} events/s, p99 "
                            f"{run.p99_ms:.1f} ms {' '.join(run.notes)}"
                        )
        finally:
            for target, _nodes in targets.values():
                target.stop()
    results["shapes"] = {
        s.key: {"label": s.label, **{name: summary(rs) for name, rs in runs[s.key].items()}} for s in SHAPES
    }
    results["runs"] = {
        key: {n: [r.as_dict() for r in rs] for n, rs in by.items()} for key, by in runs.items()
    }
    md = write_record(out, results, markdown)
    log(f"wrote {out} and {md}")
    short = [
        f"{shape['label']} on {name}"
        for shape in results["shapes"].values()
        for name in ("single", "cluster")
        if shape[name]["stored_events"] < shape[name]["answered_events"]
    ]
    if short:
        log(f"stored fewer events than answered: {', '.join(short)}")
    return 1 if short else 0


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# trackgate on one Redis and on a Redis Cluster: {results['started'][:10]} on {m['host']}\n",
        f"`{results['command']}`; {m['cpus']} CPUs ({m['cpu_model']}), load average "
        f"{m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at the end; trackgate "
        f"{results['versions']['trackgate_commit']}. wrk -t{results['threads']} -c{results['connections']}, "
        f"{results['seconds']} s "
        f"per run, {results['rounds']} x (single cluster cluster single) per shape; both gateways "
        f"`--partitions {results['partitions']} {' '.join(results['serve_args'])}`; the cluster "
        f"{results['primaries']} primaries with one replica each; every Redis on TCP loopback, "
        "append-only file fsynced every second. CPU µs per acknowledged event.\n",
        "| shape | Redis | events/s | per run | p99 ms (median) | gateway µs | Redis µs: primaries + "
        "replicas | events per transaction | unattributed cores | answered / stored |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for shape in results["shapes"].values():
        for name in ("single", "cluster"):
            s = shape[name]
            per_run = ", ".join(f"{x:,.0f}" for x in s["per_round_events_per_s"])
            lines.append(
                f"| {shape['label']} | {name} | {s['events_per_s']:,.0f} | {per_run} | {s['p99_ms']:.1f} | "
                f"{s['gateway_us_per_event']:.1f} | {s['primaries_us_per_event']:.1f} + "
                f"{s['replicas_us_per_event']:.1f} | {s['events_per_transaction'] or 0:.1f} | "
                f"{s['unattributed_cores']:.2f} | {s['answered_events']:,} / {s['stored_events']:,.0f} |"
            )
    lines += ["", "Per Redis server, CPU µs per event:", "", "| shape | node | role | µs per event |"]
    lines.append("| --- | --- | --- | ---: |")
    for shape in results["shapes"].values():
        for name in ("single", "cluster"):
            for node, n in shape[name]["nodes"].items():
                lines.append(
                    f"| {shape['label']} | {node} ({n['address']}) | {n['role']} | {n['us_per_event']:.2f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main)
