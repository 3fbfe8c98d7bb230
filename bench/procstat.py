"""CPU time and memory of processes and of the whole machine, read from /proc (Linux only)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(stat: Path) -> list[str] | None:
    """The fields of a /proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    field 3 of proc(5) is the first of them."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pid_fields(pid: int) -> list[str] | None:
    return _stat_fields(Path(f"/proc/{pid}/stat"))


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot: a pid together with it names one process, even
    after the pid is reused."""
    fields = _pid_fields(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) and of their children that ended
    (Redis's append-only-file rewrites, for one), in seconds."""
    total = 0
    for pid in pids:
        fields = _pid_fields(pid)
        if fields:
            total += sum(int(f) for f in fields[11:15])  # fields 14-17: utime, stime, cutime, cstime
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    fields = _pid_fields(pid)
    return int(fields[21]) * PAGE_SIZE if fields else 0  # field 24: rss, in pages


def descendants(root: int) -> list[int]:
    """root and every process below it, however deep."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))  # field 4: ppid
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, interrupts, stolen) CPU seconds of the whole machine since boot, from /proc/stat: busy is
    user, nice, system, irq and softirq time; interrupts the irq and softirq part of it (the kernel's
    network processing, loopback included; with tick-based accounting, as on virtual machines, that time
    is also charged to the process each tick interrupted, so it is part of the processes' times, not in
    addition to them); stolen is what the hypervisor gave to other guests."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, (irq + softirq) / CLK_TCK, steal / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children (wrk's, read around each of its runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
