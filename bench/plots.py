"""The suite's plots (matplotlib, PNG), from its JSON results: gateway, ceiling and peer on the same axes.

    .venv/bin/python bench/plots.py bench/results/<date>-<host>.json

- <stem>-throughput.png: throughput against concurrency (GET 1 event, POST 50 events);
- <stem>-latency.png: latency percentiles at full load and at half the maximum throughput;
- <stem>-batch.png: events/s against batch size;
- <stem>-cpu.png: CPU per event, the server's and its Redis's;
- <stem>-soak.png: the workers' RSS over the soak (when the run had one).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter

STYLE: dict[str, dict[str, Any]] = {
    "gateway": {"color": "#1f6fb4", "marker": "o", "linestyle": "-", "label": "trackgate gateway"},
    "ceiling": {
        "color": "#7f7f7f",
        "marker": "s",
        "linestyle": "--",
        "label": "ceiling (Granian, answers 1)",
    },
    "peer": {"color": "#e07b00", "marker": "^", "linestyle": "-.", "label": "peer (FastAPI + redis-py)"},
}
TARGETS = ("gateway", "ceiling", "peer")
PERCENTILES = (
    ("p50", "p50_ms"),
    ("p75", "p75_ms"),
    ("p90", "p90_ms"),
    ("p99", "p99_ms"),
    ("p99.9", "p999_ms"),
)


def _si(value: float, _pos: Any = None) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _log_y(ax: Axes, text: Callable[[float], str]) -> None:
    """A log y axis labelled in plain numbers, with the 2s and 5s of each decade labelled too."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: text(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: text(v) if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _margins(ax: Axes, xs: list[int]) -> None:
    """Room around the points of a log-log plot, for their labels."""
    low, high = ax.get_ylim()
    ax.set_ylim(low / 1.4, high * 1.6)
    if xs:
        ax.set_xlim(xs[0] / 1.5, xs[-1] * 1.5)


def _middle(results: dict[str, Any]) -> int:
    """The concurrency level at which batch sizes and CPU are compared (64 unless told otherwise)."""
    settings = results["settings"]
    return int(settings.get("middle_connections", settings["half_load_connections"]))


def _runs(results: dict[str, Any], part: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r["part"] == part and all(r.get(k) == v for k, v in match.items())]


def _title(results: dict[str, Any]) -> str:
    m, v, s = results["machine"], results["versions"], results["settings"]
    return (
        f"{m['host']}: {m['cpus']} CPUs ({m['cpu_model']}), trackgate {v['trackgate_commit'].split('+')[0]}, "
        f"{s['workers']} worker(s), {results['suite']['started'][:10]}"
    )


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(results: dict[str, Any], path: Path) -> Path | None:
    panels = [
        (1, "GET, 1 event per request", "requests/s", "requests_per_s"),
        (50, "POST, 50 events per request", "events/s", "events_per_s"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    plotted = False
    for ax, (batch, title, ylabel, key) in zip(axes, panels, strict=True):
        for target in TARGETS:
            rows = sorted(_runs(results, "load", target=target, batch=batch), key=lambda r: r["connections"])
            if rows:
                plotted = True
                xs, ys = [r["connections"] for r in rows], [r[key] for r in rows]
                ax.plot(xs, ys, **STYLE[target])
                for x, y in zip(xs, ys, strict=True):
                    ax.annotate(_si(float(f"{y:.2g}")), (x, y), textcoords="offset points", xytext=(0, 7),
                                ha="center", fontsize=7, color=STYLE[target]["color"])  # fmt: skip
        levels = sorted({r["connections"] for r in _runs(results, "load", batch=batch)})
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.xaxis.set_minor_formatter(NullFormatter())
        _log_y(ax, _si)
        _margins(ax, levels)
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_ylabel(ylabel + " (log scale)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="best", fontsize=9)
    fig.suptitle("Throughput against concurrency\n" + _title(results), fontsize=10)
    return _save(fig, path) if plotted else None


def latency(results: dict[str, Any], path: Path) -> Path | None:
    middle = _middle(results)
    rows_spec: list[tuple[str, Callable[[int, str], dict[str, Any] | None]]] = [
        (f"full load ({middle} connections, closed loop)", lambda b, t: _one(results, "load", t, b, middle)),
        ("half the maximum throughput (paced)", lambda b, t: _one(results, "half-load", t, b)),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained", squeeze=False)
    plotted = False
    for row, (row_title, pick) in enumerate(rows_spec):
        for col, (batch, name) in enumerate(((1, "GET 1 event"), (50, "POST 50 events"))):
            ax: Axes = axes[row][col]
            for target in TARGETS:
                run = pick(batch, target)
                if run is None:
                    continue
                plotted = True
                label = STYLE[target]["label"]
                if run.get("rate"):
                    label += f", {run['requests_per_s']:,.0f} req/s"
                ax.plot(
                    range(len(PERCENTILES)),
                    [run[key] for _, key in PERCENTILES],
                    **{**STYLE[target], "label": label},
                )
            ax.set_xticks(range(len(PERCENTILES)), [name for name, _ in PERCENTILES])
            _log_y(ax, lambda v: f"{v:g}")
            ax.axhline(5, color="#c0392b", linewidth=0.8, linestyle=":")
            ax.text(
                0.02, 5, " 5 ms", color="#c0392b", fontsize=8, va="bottom", transform=ax.get_yaxis_transform()
            )
            ax.set_ylabel("latency, ms (log scale)")
            ax.set_title(f"{name}: {row_title}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Latency percentiles (wrk)\n" + _title(results), fontsize=10)
    return _save(fig, path) if plotted else None


def _one(
    results: dict[str, Any], part: str, target: str, batch: int, connections: int | None = None
) -> dict[str, Any] | None:
    match: dict[str, Any] = {"target": target, "batch": batch}
    if connections is not None:
        match["connections"] = connections
    rows = _runs(results, part, **match)
    return rows[-1] if rows else None


def batch_sizes(results: dict[str, Any], path: Path) -> Path | None:
    middle = _middle(results)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    plotted = False
    for target in TARGETS:
        rows = sorted(_runs(results, "load", target=target, connections=middle), key=lambda r: r["batch"])
        if len(rows) > 1:
            plotted = True
            xs, ys = [r["batch"] for r in rows], [r["events_per_s"] for r in rows]
            ax.plot(xs, ys, **STYLE[target])
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(_si(float(f"{y:.2g}")), (x, y), textcoords="offset points", xytext=(0, 7),
                            ha="center", fontsize=7, color=STYLE[target]["color"])  # fmt: skip
    batches = sorted({r["batch"] for r in _runs(results, "load", connections=middle)})
    ax.set_xscale("log")
    ax.set_xticks(batches, [f"{b}\n{'GET' if b == 1 else 'POST'}" for b in batches])
    ax.xaxis.set_minor_formatter(NullFormatter())
    _log_y(ax, _si)
    ax.set_xlabel(f"events per request ({middle} connections)")
    ax.set_ylabel("events/s (log scale)")
    _margins(ax, batches)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title("Events/s against batch size\n" + _title(results), fontsize=10)
    return _save(fig, path) if plotted else None


def cpu(results: dict[str, Any], path: Path) -> Path | None:
    middle = _middle(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    plotted = False
    for ax, (batch, name) in zip(axes, ((1, "GET 1 event"), (50, "POST 50 events")), strict=True):
        labels, server, redis = [], [], []
        for target in TARGETS:
            run = _one(results, "load", target, batch, middle)
            if run is None or run["server_us_per_event"] is None:
                continue
            labels.append(target)
            server.append(run["server_us_per_event"])
            redis.append(run["redis_us_per_event"])
        if not labels:
            continue
        plotted = True
        height = 0.38
        legend = {"server": "server process(es)", "redis": "its Redis"}  # each labelled once
        for y, (s, r) in enumerate(zip(server, redis, strict=True)):
            ax.barh(y - height / 2, s, height, color="#1f6fb4", label=legend.pop("server", None))
            ax.text(s, y - height / 2, f" {s:.1f}", va="center", fontsize=8)
            if r is None:
                ax.text(
                    min(server) / 1.9, y + height / 2, "no Redis", va="center", fontsize=8, color="#7f7f7f"
                )
            else:
                ax.barh(
                    y + height / 2,
                    r,
                    height,
                    color="#d62728",
                    label=legend.pop("redis", None),
                )
                ax.text(r, y + height / 2, f" {r:.1f}", va="center", fontsize=8)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xscale("log")
        values = [v for v in server + redis if v]
        ax.set_xlim(min(values) / 2, max(values) * 3)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, p: f"{v:g}"))
        ax.set_xlabel("CPU µs per event (log scale)")
        ax.set_title(f"{name}, {middle} connections", fontsize=10)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=2, fontsize=8)
    fig.suptitle("Where the CPU goes (/proc utime + stime)\n" + _title(results), fontsize=10)
    return _save(fig, path) if plotted else None


def soak(results: dict[str, Any], path: Path) -> Path | None:
    data = results.get("soak")
    if not data or not data.get("samples"):
        return None
    samples = data["samples"]
    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    for i in range(len(samples[0]["workers_rss"])):
        ax.plot(t, [s["workers_rss"][i] / 2**20 for s in samples], label=f"worker {i} RSS", color="#1f6fb4")
    if data.get("per_worker"):
        base = data["per_worker"][0]["rss_start_mib"]
        ax.axhspan(base, base * 1.1, color="#2ca02c", alpha=0.12, label="start of soak +10%")
        ax.axvline(data["warmup_s"], color="#7f7f7f", linestyle=":", label="end of warm-up")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    growth = data.get("rss_growth_percent")
    growth_text = f"growth {growth:+.1f}%" if growth is not None else "too short to measure growth"
    ax.set_title(
        f"Worker memory at {data['rate_done_rps']:,.0f} requests/s ({data['events_per_s']:,.0f} events/s), "
        f"{data['label']}: {growth_text}\n{_title(results)}",
        fontsize=10,
    )
    return _save(fig, path)


def write_all(json_path: Path) -> list[Path]:
    results = json.loads(json_path.read_text())
    stem = json_path.with_suffix("")
    made = [
        throughput(results, Path(f"{stem}-throughput.png")),
        latency(results, Path(f"{stem}-latency.png")),
        batch_sizes(results, Path(f"{stem}-batch.png")),
        cpu(results, Path(f"{stem}-cpu.png")),
        soak(results, Path(f"{stem}-soak.png")),
    ]
    return [path for path in made if path is not None]


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for written in write_all(Path(arg)):
            print(written)
