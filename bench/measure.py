"""One measured wrk run against one target: its throughput and latency, and the CPU time it cost the
server, its Redis, wrk and the rest of the machine, from /proc."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from procstat import cpu_seconds, descendants, machine_cpu_seconds
from redis_servers import redis_forks, wait_for_rewrites
from targets import Target, gateway_stored_events
from trackgate.metrics import PUBLISH_SECONDS
from workloads import Shape, Tokens
from wrk import RequestFiles, run_wrk


def require_tools() -> None:
    """Exit with what to install when wrk or redis-server is missing."""
    missing = [
        f"{tool} is missing: install it with `sudo apt-get install {tool}` (Debian's package)"
        for tool in ("wrk", "redis-server")
        if shutil.which(tool) is None
    ]
    if missing:
        sys.exit("\n".join(missing))


@dataclass
class Run:
    """One measured wrk run against one target."""

    target: str
    shape: str
    label: str
    part: str
    batch: int
    funnel_fraction: float
    connections: int
    seconds: float
    rate: float | None  # requests/s asked for (paced run), None for a closed loop
    requests: int = 0
    requests_per_s: float = 0.0
    events_per_s: float = 0.0
    p50_ms: float = 0.0
    p75_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: int = 0
    server_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    wrk_cpu_s: float = 0.0
    machine_busy_cores: float = 0.0  # everything on the machine, from /proc/stat
    kernel_threads_cores: float = 0.0  # kworkers & co. (the kernel's own threads)
    interrupt_cores: float = 0.0  # irq + softirq: mostly the kernel's network processing of the traffic
    other_cores: float = 0.0  # busy cores not used by any of the above: other work on the machine, noise
    steal_cores: float = 0.0
    server_us_per_event: float | None = None
    redis_us_per_event: float | None = None
    stored_events: float | None = None  # gateway only: its own count of events written during the run
    acknowledged_events: int = 0
    redis_forks: int = 0  # forks of the target's Redis during the run (see redis_servers.RedisForks)
    redis_rewriting: bool = False  # a rewrite of the target Redis's append-only file overlapped the run
    rewrite_wait_s: float = 0.0  # waited before the run for the bench's Redis servers to end their rewrites
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # what the run's probes read (see Probe)

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Probe(Protocol):
    """Something read just before and just after a run's measured window (a Redis's command statistics,
    each cluster node's CPU), outside it, so that reading it costs the run nothing."""

    def before(self) -> None: ...

    def after(self, run: Run) -> None:
        """Put what changed during the run into `run.extra`."""


def measure(
    target: Target,
    requests: RequestFiles,
    shape: Shape,
    connections: int,
    seconds: float,
    *,
    warmup: float = 0,
    rate: float | None = None,
    threads: int = 1,
    part: str = "load",
    tokens: Tokens | None = None,
    probes: Sequence[Probe] = (),
) -> Run:
    """Warm up (unmeasured), then one measured wrk run, with CPU time of the server and its Redis.
    `tokens`: the projects the events are for (default: the target's own); `probes`: read around the
    measured run."""
    script = requests.script(target.token if tokens is None else tokens, shape, rate, threads)
    url = target.base + "/track"
    waited = wait_for_rewrites()
    if warmup > 0:
        run_wrk(url, script, connections, warmup, threads)
    own, redis = target.split_pids()
    stored_before = gateway_stored_events(target) if target.name.startswith("gateway") else None
    kernel = descendants(2)  # kthreadd's children: the kernel's own threads
    forks_before = redis_forks(target.redis_url)
    for probe in probes:
        probe.before()
    cpu_before = (cpu_seconds(own), cpu_seconds(redis), cpu_seconds(kernel))
    machine_before = machine_cpu_seconds()
    raw = run_wrk(url, script, connections, seconds, threads)
    machine_after = machine_cpu_seconds()
    cpu_after = (cpu_seconds(own), cpu_seconds(redis), cpu_seconds(kernel))
    duration = raw["duration_us"] / 1e6
    ok_requests = raw["requests"] - raw["non_2xx"]
    run = Run(
        target=target.name, shape=shape.key, label=shape.label, part=part, batch=shape.batch,
        funnel_fraction=shape.funnel_fraction, connections=connections, seconds=duration, rate=rate,
        rewrite_wait_s=waited,
        requests=raw["requests"], requests_per_s=ok_requests / duration,
        events_per_s=ok_requests * shape.batch / duration,
        p50_ms=raw["p50_us"] / 1000, p75_ms=raw["p75_us"] / 1000, p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000, p999_ms=raw["p999_us"] / 1000, max_ms=raw["max_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000, non_2xx=raw["non_2xx"], socket_errors=raw["socket_errors"],
        server_cpu_s=cpu_after[0] - cpu_before[0], redis_cpu_s=cpu_after[1] - cpu_before[1],
        wrk_cpu_s=raw["wrk_cpu_s"], acknowledged_events=ok_requests * shape.batch,
    )  # fmt: skip
    for probe in probes:
        probe.after(run)
    run.machine_busy_cores = (machine_after[0] - machine_before[0]) / duration
    run.interrupt_cores = (machine_after[1] - machine_before[1]) / duration
    run.steal_cores = (machine_after[2] - machine_before[2]) / duration
    run.kernel_threads_cores = (cpu_after[2] - cpu_before[2]) / duration
    ours = (run.server_cpu_s + run.redis_cpu_s + run.wrk_cpu_s) / duration
    # Interrupt time is inside the processes' own times already (see procstat.machine_cpu_seconds).
    run.other_cores = max(0.0, run.machine_busy_cores - ours - run.kernel_threads_cores)
    if run.acknowledged_events:
        run.server_us_per_event = run.server_cpu_s / run.acknowledged_events * 1e6
        if redis:
            run.redis_us_per_event = run.redis_cpu_s / run.acknowledged_events * 1e6
    if stored_before is not None:
        _count_stored(run, target, stored_before)
    forks_after = redis_forks(target.redis_url)
    if forks_before is not None and forks_after is not None:
        run.redis_forks = forks_after.forks - forks_before.forks
        run.redis_rewriting = bool(run.redis_forks) or forks_before.rewriting or forks_after.rewriting
        if run.redis_forks:
            run.notes.append(
                f"Redis forked {run.redis_forks}x (an append-only-file rewrite; the last fork stopped it for "
                f"{forks_after.last_fork_usec / 1000:.1f} ms, and the rewrite shared the cores)"
            )
        elif run.redis_rewriting:
            run.notes.append("Redis was rewriting its append-only file (the rewrite shared the cores)")
    if rate is not None and run.requests_per_s < 0.95 * rate:
        run.notes.append(
            f"asked {rate:,.0f} requests/s, did {run.requests_per_s:,.0f}: the rate was not held"
        )
    if run.errors:
        run.notes.append(f"{run.non_2xx} non-2xx answers, {run.socket_errors} socket errors")
    return run


def _count_stored(run: Run, target: Target, stored_before: float) -> None:
    """The gateway's own count of the events it stored during the run, and a note if it is short."""
    stored_after = gateway_stored_events(target)
    # Each worker adds its counts to the shared metrics every PUBLISH_SECONDS, and a scrape publishes
    # only the worker that answers it: with several workers the total lags by up to that long.
    deadline = time.monotonic() + 4 * PUBLISH_SECONDS
    while (
        stored_after is not None
        and stored_after - stored_before < run.acknowledged_events
        and time.monotonic() < deadline
    ):
        time.sleep(PUBLISH_SECONDS / 2)
        stored_after = gateway_stored_events(target)
    if stored_after is not None:
        run.stored_events = stored_after - stored_before
        # Requests cut off when wrk stopped may add a few that wrk did not count, never fewer.
        if run.stored_events < run.acknowledged_events:
            run.notes.append(f"{run.acknowledged_events} events answered but {run.stored_events:.0f} stored")
