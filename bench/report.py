"""The suite's Markdown report and plots, from its JSON results (the suite calls this itself).

.venv/bin/python bench/report.py bench/results/<date>-<host>.json   # writes the .md and the PNGs again
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import plots

TARGETS = ("gateway", "ceiling", "peer")
_LABELS = {"get1": "GET 1 event", "post50": "POST 50 events"}


def _fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def best(results: dict[str, Any], target: str, batch: int) -> dict[str, Any] | None:
    """The target's highest-throughput load run for this batch size, over the concurrency levels."""
    rows = [
        r for r in results["runs"] if r["part"] == "load" and r["target"] == target and r["batch"] == batch
    ]
    return max(rows, key=lambda r: r["events_per_s"]) if rows else None


def _half(results: dict[str, Any], target: str, batch: int) -> dict[str, Any] | None:
    rows = [
        r
        for r in results["runs"]
        if r["part"] == "half-load" and r["target"] == target and r["batch"] == batch
    ]
    return rows[-1] if rows else None


def _at_connections(run: dict[str, Any] | None) -> str:
    return f" (c={run['connections']})" if run else ""


def _value(run: dict[str, Any] | None, key: str) -> float | None:
    return None if run is None else run[key]


def goals(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(what, measured, goal, met) for each of issue 5's targets."""
    post_gw, post_peer = best(results, "gateway", 50), best(results, "peer", 50)
    get_gw, get_ceiling, get_peer = (
        best(results, "gateway", 1),
        best(results, "ceiling", 1),
        best(results, "peer", 1),
    )
    rows: list[tuple[str, str, str, bool | None]] = []

    def add(what: str, value: float | None, text: str, goal: str, ok: bool | None) -> None:
        rows.append(
            (what, text if value is not None else "not measured", goal, ok if value is not None else None)
        )

    v = _value(post_gw, "events_per_s")
    add("POST 50 events: gateway events/s", v, _fmt(v), ">= 200,000", v is not None and v >= 200_000)
    r = _ratio(v, _value(post_peer, "events_per_s"))
    add("POST 50 events: gateway / peer", r, _x(r), ">= 10x", r is not None and r >= 10)
    r = _ratio(_value(get_gw, "requests_per_s"), _value(get_ceiling, "requests_per_s"))
    add(
        "GET 1 event: gateway / ceiling (requests/s)",
        r,
        f"{r:.0%}" if r else "-",
        ">= 65%",
        r is not None and r >= 0.65,
    )
    r = _ratio(_value(get_gw, "requests_per_s"), _value(get_peer, "requests_per_s"))
    add("GET 1 event: gateway / peer", r, _x(r), ">= 4x", r is not None and r >= 4)
    for key, name in (("post50", "POST 50 events"), ("get1", "GET 1 event")):
        r = (results.get("funnel") or {}).get(key, {}).get("ratio")
        add(
            f"{name}: with 20% mp_funnel / without",
            r,
            f"{r:.0%}" if r else "-",
            ">= 80%",
            r is not None and r >= 0.8,
        )
    for batch, name in ((1, "GET 1 event"), (50, "POST 50 events")):
        v = _value(_half(results, "gateway", batch), "p99_ms")
        add(
            f"{name}: gateway p99 at half its maximum",
            v,
            _fmt(v, 2, " ms"),
            "< 5 ms",
            v is not None and v < 5,
        )
    soak = results.get("soak") or {}
    v = soak.get("rss_growth_percent")
    add(
        f"worker RSS growth over a {soak['seconds']:.0f} s soak at 80%"
        if soak
        else "worker RSS growth at 80% (no soak in this run)",
        v,
        _fmt(v, 1, "%") + (" (aborted)" if soak.get("aborted") else ""),
        "within 10% (over 10 min)",
        v is not None and abs(v) <= 10 and not soak.get("aborted"),
    )
    return rows


def _setting(key: str, value: Any) -> str:
    if key == "gateway_args":
        return f"`{' '.join(value)}`" if value else "none (`trackgate serve` defaults)"
    if key == "granian" and isinstance(value, dict):
        return (
            f"{value['workers']} worker(s), {value['runtime_threads']} runtime thread(s), runtime mode "
            f"{value['runtime_mode']}, loop {value['event_loop']}, task impl {value['task_impl']}, "
            f"backpressure {value['backpressure'] or 'Granian default'} (the gateway's settings; the "
            "ceiling runs the same)"
        )
    if isinstance(value, list):
        return ", ".join(str(x) for x in value) or "none"
    return str(value)


def _kernel(run: dict[str, Any]) -> float | None:
    if "kernel_threads_cores" not in run:
        return None
    return float(run["kernel_threads_cores"])


def _idle(run: dict[str, Any], cpus: int) -> float | None:
    """Idle cores during the run. /proc/stat samples busy time at each tick and a process's times are
    the scheduler's exact ones, so the two disagree when processes wake often: the larger busy figure is
    taken."""
    if "machine_busy_cores" not in run:
        return None
    ours = (run["server_cpu_s"] + run["redis_cpu_s"] + run["wrk_cpu_s"]) / run["seconds"]
    busy = max(run["machine_busy_cores"], ours + (_kernel(run) or 0.0))
    return max(0.0, cpus - float(busy))


def _load_note(results: dict[str, Any]) -> str:
    runs = [r for r in results["runs"] if r["part"] == "load"]
    if not runs:
        return ""
    other = sum(r.get("other_cores", 0.0) for r in runs) / len(runs)
    steal = sum(r.get("steal_cores", 0.0) for r in runs) / len(runs)
    text = (
        f"Busy CPU not charged to the benchmark's processes averaged {other:.2f} cores during the load "
        "runs (from /proc/stat; other work on the machine, or kernel time charged to no process)"
    )
    if steal >= 0.01:
        text += f", and the hypervisor stole {steal:.2f} cores"
    if other > 0.4:
        text += (
            ": the machine was shared, so absolute numbers are low and noisy; ratios between targets "
            "measured back to back hold better"
        )
    return text + "."


def summary_text(results: dict[str, Any]) -> str:
    lines = ["", "against the targets of issue 5:"]
    for what, measured, goal, ok in goals(results):
        mark = {True: "met", False: "MISSED", None: "-"}[ok]
        lines.append(f"  {what:50} {measured:>16}   goal {goal:26} {mark}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def markdown(results: dict[str, Any], images: list[Path]) -> str:
    m, v, s, suite = results["machine"], results["versions"], results["settings"], results["suite"]
    parts = [
        f"# trackgate benchmark: {suite['started'][:10]} on {m['host']} ({suite['mode']} run)",
        f"`{suite['command']}`, started {suite['started']}, took {suite.get('elapsed_s', 0):.0f} s. "
        "Every number below comes from this one run; ratios are between targets measured back to back. "
        + _load_note(results)
        + (f"\n\n**The run stopped early: {results['error']}**" if results.get("error") else ""),
        "## Machine",
        _table(
            ["", ""],
            [
                ["CPU", f"{m['cpu_model']}, {m['cpus']} CPUs ({m['cpus_usable']} usable)"],
                ["memory", f"{m['memory_gib']} GiB"],
                ["kernel", m["kernel"]],
                ["OS", m["os"]],
                [
                    "load average",
                    f"{m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at the end",
                ],
            ],
            "ll",
        ),
        "## Versions",
        _table(["", ""], [[k.replace("_", " "), str(val)] for k, val in v.items()], "ll"),
        "## Settings",
        _table(["", ""], [[k.replace("_", " "), _setting(k, val)] for k, val in s.items()], "ll"),
        "## Against the targets (issue 5)",
        _table(
            ["", "measured", "goal", ""],
            [
                [w, meas, g, {True: "met", False: "**missed**", None: "-"}[ok]]
                for w, meas, g, ok in goals(results)
            ],
            "lrll",
        ),
        "The best throughput of each target over the concurrency levels; the soak in `make bench` is short "
        "(`bench/soak.py --minutes 10` is the full one).",
    ]

    rows = []
    for batch in sorted({r["batch"] for r in results["runs"] if r["part"] == "load"}):
        b = {t: best(results, t, batch) for t in TARGETS}
        key = "requests_per_s" if batch == 1 else "events_per_s"
        unit = "req/s" if batch == 1 else "events/s"
        label = "GET 1 event" if batch == 1 else f"POST {batch} events"
        rows.append(
            [label, unit]
            + [_fmt(_value(b[t], key)) + _at_connections(b[t]) for t in TARGETS]
            + [
                _x(_ratio(_value(b["gateway"], key), _value(b["ceiling"], key))),
                _x(_ratio(_value(b["gateway"], key), _value(b["peer"], key))),
            ]
        )
    parts += [
        "## Throughput: each target at its best concurrency",
        _table(
            ["request", "unit", "gateway", "ceiling", "peer", "gateway/ceiling", "gateway/peer"],
            rows,
            "llrrrrr",
        ),
    ]

    rows = []
    for r in sorted(
        (r for r in results["runs"] if r["part"] == "load"),
        key=lambda r: (r["batch"], r["connections"], TARGETS.index(r["target"])),
    ):
        rows.append(
            [
                r["label"],
                str(r["connections"]),
                r["target"],
                _fmt(r["requests_per_s"]),
                _fmt(r["events_per_s"]),
                _fmt(r["p50_ms"], 2),
                _fmt(r["p90_ms"], 2),
                _fmt(r["p99_ms"], 2),
                _fmt(r["p999_ms"], 2),
                _fmt(r["server_us_per_event"], 1),
                _fmt(r["redis_us_per_event"], 1),
                _fmt(r["server_cpu_s"] / r["seconds"], 2),
                _fmt(r["redis_cpu_s"] / r["seconds"] if r["redis_us_per_event"] is not None else None, 2),
                _fmt(r["wrk_cpu_s"] / r["seconds"], 2),
                _fmt(_kernel(r), 2),
                _fmt(r.get("other_cores"), 2),
                str(r["non_2xx"] + r["socket_errors"]),
            ]
        )
    parts += [
        "## Every load run (closed loop: each connection sends its next request when the answer arrives)",
        "Latencies in ms. CPU: µs per acknowledged event, and cores busy over the run (utime + stime from "
        "/proc of the server's processes and their ended children, of its Redis, and of wrk, interrupt "
        "handling included; kernel: the kernel's own threads; unattributed: the rest of the machine's "
        "busy CPU in /proc/stat, other work on the machine).",
        _table(
            [
                "request",
                "conn.",
                "target",
                "req/s",
                "events/s",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "server µs/ev",
                "Redis µs/ev",
                "server cores",
                "Redis cores",
                "wrk cores",
                "kernel cores",
                "unattributed cores",
                "errors",
            ],
            rows,
            "lrl" + "r" * 14,
        ),
    ]

    rows = []
    for r in (r for r in results["runs"] if r["part"] == "half-load"):
        rows.append(
            [
                r["label"],
                r["target"],
                _fmt(r["rate"]),
                _fmt(r["requests_per_s"]),
                _fmt(r["events_per_s"]),
                _fmt(r["p50_ms"], 2),
                _fmt(r["p90_ms"], 2),
                _fmt(r["p99_ms"], 2),
                _fmt(r["p999_ms"], 2),
                _fmt(r["server_us_per_event"], 1),
                _fmt(r["redis_us_per_event"], 1),
                str(r["non_2xx"] + r["socket_errors"]),
            ]
        )
    if rows:
        parts += [
            "## Latency at half the maximum throughput",
            "A fixed rate of half the target's best requests/s above, "
            f"{s['half_load_connections']} connections, "
            "paced by the Lua script (wrk2 is not packaged): each request waits for the next free send slot "
            "of a fixed schedule. Latency is measured from the moment wrk writes the request, so a stall "
            "that holds every connection delays later requests without showing in their latency (no "
            "coordinated-omission correction); at half load most connections are idle, so that is rare.",
            _table(
                [
                    "request",
                    "target",
                    "asked req/s",
                    "done req/s",
                    "events/s",
                    "p50",
                    "p90",
                    "p99",
                    "p99.9",
                    "server µs/ev",
                    "Redis µs/ev",
                    "errors",
                ],
                rows,
                "ll" + "r" * 10,
            ),
        ]

    middle = s.get("middle_connections", s["half_load_connections"])
    cpus = m["cpus"]
    rows = []
    for batch in (1, 50):
        for t in TARGETS:
            run = next(
                (
                    r
                    for r in results["runs"]
                    if r["part"] == "load"
                    and r["target"] == t
                    and r["batch"] == batch
                    and r["connections"] == middle
                ),
                None,
            )
            if run is None:
                continue
            server_us, redis_us = run["server_us_per_event"] or 0.0, run["redis_us_per_event"] or 0.0
            total = server_us + redis_us
            rows.append(
                [
                    run["label"],
                    t,
                    _fmt(server_us, 1),
                    _fmt(redis_us if run["redis_us_per_event"] is not None else None, 1),
                    f"{redis_us / total:.0%}" if total and run["redis_us_per_event"] is not None else "-",
                    _fmt(run["server_cpu_s"] / run["seconds"], 2),
                    _fmt(run["redis_cpu_s"] / run["seconds"], 2),
                    _fmt(run["wrk_cpu_s"] / run["seconds"], 2),
                    _fmt(_kernel(run), 2),
                    _fmt(run.get("other_cores"), 2),
                    _fmt(_idle(run, cpus), 2),
                ]
            )
    if rows:
        parts += [
            f"## Where the CPU goes ({middle} connections, full load)",
            "µs of CPU per event: the server's processes (Granian or uvicorn workers and their supervisor) "
            "and its Redis. Cores: CPU seconds per second of the run, of the server, its Redis, wrk, the "
            "kernel's own threads, busy CPU charged to none of these (other work, or "
            f"kernel time charged to no process), and what was left idle of the {cpus} CPUs (/proc/stat's "
            "tick-sampled busy time and the processes' exact times disagree by up to ~0.2 cores, so these "
            "are approximate). A server "
            "that leaves CPU idle under full load is waiting (on Redis, or on its own hand-offs), not short "
            "of CPU.",
            _table(
                [
                    "request",
                    "target",
                    "server µs/event",
                    "Redis µs/event",
                    "Redis share",
                    "server cores",
                    "Redis cores",
                    "wrk cores",
                    "kernel cores",
                    "unattributed cores",
                    "idle cores",
                ],
                rows,
                "ll" + "r" * 9,
            ),
        ]

    funnel = results.get("funnel") or {}
    if funnel:
        rows = [
            [
                _LABELS.get(key, key),
                _fmt(f["events_per_s_without"]),
                _fmt(f["events_per_s_with_20pct_funnel"]),
                f"{f['ratio']:.0%}" if f["ratio"] else "-",
            ]
            for key, f in funnel.items()
        ]
        parts += [
            "## Funnels: 20% mp_funnel events against none (gateway)",
            f"{next(iter(funnel.values()))['connections']} connections, alternated A B B A "
            "(A B in quick runs). "
            "Every fifth event is an `mp_funnel` step (users go through steps 1, 2, 3 of one funnel).",
            _table(["request", "events/s without", "events/s with 20% mp_funnel", "ratio"], rows, "lrrr"),
        ]
        parts += [
            f"{_LABELS.get(key, key)}: {f['redone']}; the table has the second comparison."
            for key, f in funnel.items()
            if f.get("redone")
        ]

    soak = results.get("soak")
    if soak:
        lines = [
            f"- {soak['label']}, {soak['connections']} connections, {soak['seconds']:.0f} s at "
            f"{soak['rate_done_rps']:,.0f} requests/s ({soak['events_per_s']:,.0f} events/s; 80% of "
            f"{soak['max_events_per_s']:,.0f} measured just before), p99 {soak['p99_ms']:.2f} ms, "
            f"{soak['errors']} errors",
        ]
        if soak.get("aborted"):
            lines.append(f"- **aborted {soak['aborted']}**; the numbers below cover the time before that")
        for i, w in enumerate(soak.get("per_worker", [])):
            lines.append(
                f"- worker {i}: RSS {w['rss_start_mib']:.1f} MiB after the warm-up "
                f"({soak['warmup_s']:.0f} s) "
                f"-> {w['rss_end_mib']:.1f} MiB at the end: **{w['growth_percent']:+.1f}%** "
                f"(max {w['rss_max_mib']:.1f} MiB; {w['growth_from_first_sample_percent']:+.1f}% from "
                "the first sample)"
            )
        if soak.get("redis_rss_start_mib") is not None:
            lines.append(
                f"- Redis RSS {soak['redis_rss_start_mib']:.0f} -> {soak['redis_rss_end_mib']:.0f} MiB "
                "(streams grow until they reach their trim length)"
            )
        parts += ["## Memory soak (gateway)", "\n".join(lines)]

    decoder = results.get("decoder")
    if decoder and "events_per_s" in decoder:
        rows = []
        for shape, rates in decoder["events_per_s"].items():
            native = rates["native"]
            rows.append(
                [
                    shape,
                    _fmt(native),
                    _fmt(rates["stdlib"]),
                    _fmt(rates["pybase64+orjson"]),
                    _x(native / rates["stdlib"]),
                    _x(native / rates["pybase64+orjson"]),
                ]
            )
        parts += [
            "## Decoder (bench/decode_bench.py, one process)",
            "Events/s of a whole mixpanel-browser request (form body, base64, every rule, normalised JSON), "
            f"best of {decoder['repeats']} loops of {decoder['seconds_per_loop']} s.",
            _table(
                ["request", "native", "stdlib", "pybase64+orjson", "native/stdlib", "native/pybase64+orjson"],
                rows,
            ),
        ]
        library = decoder.get("library_events_per_s", {})
        if library:
            rows = []
            for shape, rates in library.items():
                native, stdlib = rates["trackgate.decode"], rates["stdlib"]
                parsing = rates["pybase64+orjson, no checks"]
                rows.append(
                    [
                        shape,
                        _fmt(native),
                        _fmt(stdlib),
                        _fmt(parsing),
                        _x(native / stdlib),
                        _x(native / parsing),
                    ]
                )
            parts += [
                "Events/s of `trackgate.decode` on the same events' `data` value (base64), giving typed "
                "Events, against the reference decoder's checks on the standard library and against "
                "pybase64 + orjson parsing with no checks at all.",
                _table(
                    ["data", "trackgate.decode", "stdlib", "pybase64+orjson", "/stdlib", "/pybase64+orjson"],
                    rows,
                ),
            ]
    elif decoder:
        parts += ["## Decoder", f"failed: {decoder.get('error')}"]

    notes = [
        f"- {r['part']} {r['target']} {r['label']} c={r['connections']}: {n}"
        for r in results["runs"]
        for n in r["notes"]
    ]
    if notes:
        parts += ["## Warnings", "\n".join(notes)]
    if images:
        parts += ["## Plots", "\n\n".join(f"![{p.stem}]({p.name})" for p in images)]
    return "\n\n".join(parts) + "\n"


def write_all(json_path: Path) -> list[Path]:
    results = json.loads(json_path.read_text())
    images = plots.write_all(json_path)
    md = json_path.with_suffix(".md")
    md.write_text(markdown(results, images))
    return [md, *images]


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for written in write_all(Path(arg)):
            print(written)
