"""The gateway's knobs, one at a time, each against the defaults measured alongside it.

    .venv/bin/python bench/knobs.py                       # every knob
    .venv/bin/python bench/knobs.py --only workers linger --seconds 5
    .venv/bin/python bench/knobs.py --variant "4 partitions=--partitions 4"

The machine this runs on is shared and its speed drifts from minute to minute, so every variant is
compared with a gateway on the defaults that runs at the same time: both are up (each with its own
private Redis, or the variant with a redis-server this script starts with other persistence settings),
and wrk measures them alternately, defaults-variant-variant-defaults, for GETs of 1 event and POSTs of 50
events (64 connections, --seconds each). Then p99 latency of each at a fixed rate, half of what the
defaults did at the start. The first variant is a control: a second gateway on the defaults, so the
noise of the comparison shows. Writes bench/results/<date>-<host>-knobs.json and .md. A knob that
`trackgate serve --help` does not list is reported as not available.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from measure import Run, measure, require_tools
from processes import run_main, servers_stopped_on_exit
from provenance import default_result, run_record, write_record
from targets import TRACKGATE, Target, start_gateway
from workloads import Shape
from wrk import RequestFiles

CONNECTIONS = 64
BATCHES = (1, 50)


@dataclass
class Variant:
    group: str
    name: str
    args: list[str] = field(default_factory=list)
    redis: str | None = None  # persistence of a redis-server started for it (everysec, always, none)


def default_variants() -> list[Variant]:
    variants = [
        # Two gateways on the same defaults: what the comparison shows when nothing differs (the noise).
        Variant("control", "defaults (control: no change)"),
        Variant("workers", "--workers 2", ["--workers", "2"]),
        Variant("linger", "--batch-linger-ms 1", ["--batch-linger-ms", "1"]),
        Variant("linger", "--batch-linger-ms 5", ["--batch-linger-ms", "5"]),
        Variant("batch", "--batch-max-events 100", ["--batch-max-events", "100"]),
        Variant("partitions", "--partitions 1", ["--partitions", "1"]),
        Variant("partitions", "--partitions 64", ["--partitions", "64"]),
        Variant("persistence", "Redis without append-only file", redis="none"),
        Variant("persistence", "Redis appendfsync always", redis="always"),
        Variant(
            "runtime",
            "--runtime-threads 2 --runtime-mode mt",
            ["--runtime-threads", "2", "--runtime-mode", "mt"],
        ),
        Variant("runtime", "--event-loop asyncio", ["--event-loop", "asyncio"]),
        Variant("runtime", "--task-impl rust", ["--task-impl", "rust"]),
    ]
    # Flushes in flight per worker (the default is 4).
    variants += [
        Variant("pipeline", f"--pipeline-depth {value}", ["--pipeline-depth", value])
        for value in ("1", "2", "8")
    ]
    return variants


def available(variant: Variant, help_text: str) -> bool:
    return all(arg in help_text for arg in variant.args if arg.startswith("--"))


def start_variant(work: Path, variant: Variant) -> Target:
    name = "gateway-" + re.sub(r"[^a-z0-9]+", "-", variant.name.lower()).strip("-")[:40]
    return start_gateway(work, None, list(variant.args), name=name, persistence=variant.redis)


def compare(
    base: Target, other: Target, requests: RequestFiles, seconds: int, half: dict[int, float], name: str
) -> dict[str, Any]:
    """A B B A closed-loop runs per batch size, then one half-load run of each."""
    out: dict[str, Any] = {}
    for batch in BATCHES:
        shape = Shape(batch)
        runs: dict[str, list[Run]] = {"defaults": [], "variant": []}
        for label, target in (("defaults", base), ("variant", other), ("variant", other), ("defaults", base)):
            warmup = 0 if runs[label] else 1
            runs[label].append(
                measure(target, requests, shape, CONNECTIONS, seconds, warmup=warmup, part="knob")
            )
        rate = {k: sum(r.acknowledged_events for r in v) / sum(r.seconds for r in v) for k, v in runs.items()}
        cpu = {
            k: (
                sum(r.server_cpu_s for r in v) / sum(r.acknowledged_events for r in v) * 1e6,
                sum(r.redis_cpu_s for r in v) / sum(r.acknowledged_events for r in v) * 1e6,
            )
            for k, v in runs.items()
        }
        halves = {
            label: measure(target, requests, shape, CONNECTIONS, seconds, rate=half[batch], part="knob-half")
            for label, target in (("defaults", base), ("variant", other))
        }
        out[shape.key] = {
            "events_per_s": rate,
            "ratio": rate["variant"] / rate["defaults"] if rate["defaults"] else None,
            "cpu_us_per_event": cpu,
            "half_rate_rps": half[batch],
            "half_p99_ms": {k: r.p99_ms for k, r in halves.items()},
            "half_notes": {k: r.notes for k, r in halves.items() if r.notes},
            "runs": [r.as_dict() for v in runs.values() for r in v] + [r.as_dict() for r in halves.values()],
        }
        log(
            f"{name:40} {shape.label:15} {rate['defaults']:>9,.0f} -> {rate['variant']:>9,.0f} ev/s "
            f"({out[shape.key]['ratio']:.2f}x); p99 at {half[batch]:,.0f} req/s "
            f"{halves['defaults'].p99_ms:.2f} -> {halves['variant'].p99_ms:.2f} ms"
        )
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=3, help="seconds per measured run (default 3)")
    parser.add_argument(
        "--only",
        nargs="+",
        help="groups to run: workers linger batch partitions persistence runtime pipeline",
    )
    parser.add_argument(
        "--variant", action="append", default=[], help='"NAME=--flag value ...": a variant of your own'
    )
    parser.add_argument(
        "--out", type=Path, help="JSON file to write (default bench/results/<date>-<host>-knobs.json)"
    )
    args = parser.parse_args()
    require_tools()
    help_text = subprocess.run(
        [TRACKGATE, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    variants = default_variants()
    if args.only:
        variants = [v for v in variants if v.group in args.only or v.group == "control"]
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        variants.append(Variant("custom", name.strip(), flags.split()))
    missing = [v.name for v in variants if not available(v, help_text)]
    variants = [v for v in variants if available(v, help_text)]
    out: Path = args.out or default_result("-knobs")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = run_record(seconds=args.seconds, connections=CONNECTIONS, not_available=missing, variants=[])
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory(prefix="trackgate-knobs-") as tmp:
        work = Path(tmp)
        requests = RequestFiles(work)
        first = start_gateway(work, None, [], name="gateway-first")
        half: dict[int, float] = {}
        for batch in BATCHES:
            run = measure(first, requests, Shape(batch), CONNECTIONS, args.seconds, warmup=1, part="knob")
            half[batch] = run.requests_per_s / 2
        first.stop()
        for i, variant in enumerate(variants):
            # Both fresh: a gateway whose Redis has filled its streams to the trim length works harder
            # than a new one.
            base = start_gateway(work, None, [], name=f"gateway-defaults-{i}")
            other = start_variant(work, variant)
            try:
                compared = compare(base, other, requests, args.seconds, half, variant.name)
            finally:
                other.stop()
                base.stop()
            results["variants"].append(
                {"group": variant.group, "name": variant.name, "args": variant.args, "redis": variant.redis,
                 "shapes": compared}
            )  # fmt: skip
    md = write_record(out, results, markdown)
    log(f"wrote {out} and {md}")
    return 0


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for v in results["variants"]:
        cells = [v["name"]]
        for key in ("get1", "post50"):
            c = v["shapes"][key]
            rate, cpu, p99 = c["events_per_s"], c["cpu_us_per_event"], c["half_p99_ms"]
            cells += [
                f"{rate['defaults']:,.0f} -> {rate['variant']:,.0f}",
                f"**{c['ratio']:.2f}x**" if c["ratio"] else "-",
                f"{p99['defaults']:.1f} -> {p99['variant']:.1f}",
                "{:.1f}+{:.1f} -> {:.1f}+{:.1f}".format(*cpu["defaults"], *cpu["variant"]),
            ]
        rows.append("| " + " | ".join(cells) + " |")
    m = results["machine"]
    head = (
        f"# trackgate knobs: {results['started'][:10]} on {m['host']}\n\n"
        f"`{results['command']}`; {m['cpus']} CPUs ({m['cpu_model']}), load average "
        f"{m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at the end; trackgate "
        f"{results['versions']['trackgate_commit']}. wrk -c{results['connections']}, {results['seconds']} s "
        "per run. Each variant against a defaults gateway measured alongside it (A B B A): events/s, their "
        "ratio, p99 in ms at a fixed half of the defaults' first throughput, and CPU µs per event (gateway "
        "workers + Redis).\n\n"
        "| variant | GET 1: events/s | ratio | p99 at half, ms | CPU µs/ev "
        "| POST 50: events/s | ratio | p99 at half, ms | CPU µs/ev |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    tail = ""
    if results["not_available"]:
        tail = "\nNot available in this version of `trackgate serve`: " + ", ".join(results["not_available"])
    return head + "\n".join(rows) + "\n" + tail + "\n"


if __name__ == "__main__":
    run_main(main)
