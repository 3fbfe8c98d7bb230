"""Probes (`measure.Probe`) read around a measured run: per Redis server, its CPU, its commands and its
forks; per gateway, its flushes. What they read goes into `Run.extra`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from measure import Run
from procstat import cpu_seconds
from redis_servers import RedisNode
from targets import Target, gateway_metric

COMMANDS = ("exec", "multi", "xadd", "fcall")
"""The commands of a partition's write transaction (MULTI, the XADDs, the counting FCALL, EXEC): a
transaction is one EXEC."""


@dataclass(frozen=True)
class NodeState:
    cpu_s: float
    forks: int
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)


def node_state(node: RedisNode) -> NodeState:
    """Its CPU from /proc (its rewrites' children included), its forks and its command statistics."""
    with node.client() as client:
        stats = client.info("commandstats")
        forks = int(client.info("stats")["total_forks"])
    commands = {}
    for name in COMMANDS:
        stat = stats.get(f"cmdstat_{name}", {})
        commands[name] = (int(stat.get("calls", 0)), int(stat.get("usec", 0)))
    return NodeState(cpu_seconds(node.server.pids()), forks, commands)


@dataclass
class RedisNodes:
    """Per node of the Redis (one server or a cluster's): role, CPU seconds and µs per acknowledged event,
    forks, and the calls and µs of each of COMMANDS, during the run: `run.extra["nodes"][name]`."""

    nodes: list[RedisNode]
    _before: dict[str, NodeState] = field(default_factory=dict)
    _roles: dict[str, str] = field(default_factory=dict)

    def before(self) -> None:
        for node in self.nodes:
            self._roles[node.name] = node.role()
            self._before[node.name] = node_state(node)

    def after(self, run: Run) -> None:
        out: dict[str, Any] = {}
        for node in self.nodes:
            now, then = node_state(node), self._before[node.name]
            cpu = now.cpu_s - then.cpu_s
            out[node.name] = {
                "address": node.address,
                "role": self._roles[node.name],
                "cpu_s": cpu,
                "us_per_event": cpu / run.acknowledged_events * 1e6 if run.acknowledged_events else None,
                "forks": now.forks - then.forks,
                "commands": {
                    name: {"calls": calls - then.commands[name][0], "usec": usec - then.commands[name][1]}
                    for name, (calls, usec) in now.commands.items()
                },
            }
            if now.forks > then.forks:
                run.notes.append(f"{node.name} forked (an append-only-file rewrite)")
        run.extra["nodes"] = out


@dataclass
class GatewayFlushes:
    """The gateway's flushes during the run and the events in them (`trackgate_flush_events`):
    `run.extra["flushes"]`, `run.extra["flushed_events"]`."""

    target: Target
    _before: tuple[float, float] = (0.0, 0.0)

    def _read(self) -> tuple[float, float]:
        return (
            gateway_metric(self.target, "trackgate_flush_events_count") or 0.0,
            gateway_metric(self.target, "trackgate_flush_events_sum") or 0.0,
        )

    def before(self) -> None:
        self._before = self._read()

    def after(self, run: Run) -> None:
        count, total = self._read()
        run.extra["flushes"] = count - self._before[0]
        run.extra["flushed_events"] = total - self._before[1]


def commands_totals(runs: list[Run], role: str | None = None) -> dict[str, dict[str, int]]:
    """COMMANDS' calls and µs summed over the runs and the nodes (of one role, if given)."""
    totals = {name: {"calls": 0, "usec": 0} for name in COMMANDS}
    for run in runs:
        for node in run.extra.get("nodes", {}).values():
            if role is not None and node["role"] != role:
                continue
            for name, stat in node["commands"].items():
                totals[name]["calls"] += stat["calls"]
                totals[name]["usec"] += stat["usec"]
    return totals
