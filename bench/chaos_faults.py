"""Chaos scenarios in which Redis or a gateway fails under load: Redis out of memory, Redis stopped
(SIGSTOP), Redis restarted without its data, one of two gateways SIGKILLed, a gateway stopped by SIGTERM.
Each runs `Load` clients throughout and audits the project at the end (chaos_audit)."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

from chaos_load import NO_ANSWER, Load
from chaos_scenario import Context, Scenario, get, wait_for
from targets import TRACKGATE, Target, demo_reports

WARM_ACKNOWLEDGED = 200
"""Events answered `1` before a fault is made: the load is under way."""
OOM_HEADROOM = 4 * 2**20
"""Bytes Redis may still take when its maxmemory is lowered: the load fills them within a moment."""
ACKNOWLEDGED_NEARBY = 1.0
"""Seconds around a /readyz `ready` within which an answer `1` shows that a write did succeed then."""
READY_AGAIN_WITHIN = 15.0


def warm_up(ctx: Context, load: Load) -> None:
    """Until the load is acknowledged, then the time before the fault that the rates count."""
    wait_for(lambda: len(load.answers.acknowledged()) >= WARM_ACKNOWLEDGED, 60, "the first answers 1")
    time.sleep(ctx.pick(3, 1))


@dataclass(frozen=True)
class Probe:
    """One GET /readyz."""

    sent: float
    status: int
    body: str


def probe_readiness(target: Target, seconds: float) -> list[Probe]:
    """GET /readyz every tenth of a second for `seconds`."""
    probes = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sent = time.monotonic()
        probes.append(Probe(sent, *get(target.base + "/readyz")))
        time.sleep(0.1)
    return probes


REFUSAL_LINE = re.compile(r"Redis refused a write .*? stored\): (?:EXECABORT [^(\n]*\((?!and )(\S+)|(\S+))")
"""A "Redis refused a write" line, and the code of the Redis error that says why, which the log's
throttle keys its lines by: what an EXECABORT carries in parentheses (why a queued command was refused),
else the reply's own."""


def refusal_lines(log: str) -> Counter[str]:
    """The log's "Redis refused a write" lines, by the Redis error that says why (OOM, ...)."""
    return Counter(m.group(1) or m.group(2) for m in REFUSAL_LINE.finditer(log))


def out_of_memory(ctx: Context) -> None:
    redis_server = ctx.redis()
    gateway = ctx.gateway(redis_server)
    load = ctx.load(gateway)
    warm_up(ctx, load)
    with redis_server.client() as admin:
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", used + OOM_HEADROOM)
        begin = ctx.fault_begins()
        try:
            wait_for(lambda: load.answers.count(503, begin) > 0, 60, "a write refused for want of memory")
            full = time.monotonic()
            probes = probe_readiness(gateway, ctx.pick(6, 3))
        finally:
            admin.config_set("maxmemory", 0)  # the operator gives Redis more memory
        end = ctx.fault_ends()
    ready_again = probe_readiness_until_ready(gateway)
    time.sleep(ctx.pick(3, 1))
    ctx.stop_loads()
    ctx.audit(gateway)

    acknowledged = [a.answered for a in load.answers.all() if a.acknowledged]
    ready = [p for p in probes if p.status == 200]
    # A `ready` is the truth if a write succeeded about then (Redis freed a little and took one).
    untrue = [p for p in ready if not any(abs(t - p.sent) <= ACKNOWLEDGED_NEARBY for t in acknowledged)]
    unexplained = [p for p in probes if p.status == 503 and "OOM" not in p.body]
    lines = refusal_lines(gateway.server.log.read_text())
    refused = load.answers.count(503, begin)
    most_lines = int(end - begin) + 2  # one a second per Redis error, and the seconds' ends
    ctx.figures.update(
        {
            "seconds_to_fill": round(full - begin, 2),
            "readyz_probes": len(probes),
            "readyz_not_ready": sum(1 for p in probes if p.status == 503),
            "readyz_ready_untrue": len(untrue),
            "ready_again_s": ready_again,
            "refused_requests": refused,
            "refusal_log_lines": dict(lines),
            "readyz_reason": next((p.body.strip() for p in probes if p.status == 503), None),
        }
    )
    ctx.check(not untrue, f"/readyz said ready {len(untrue)} times while writes were refused")
    ctx.check(not unexplained, f"/readyz was not ready {len(unexplained)} times without saying OOM")
    ctx.check(bool(lines), "no 'Redis refused a write' line in the log")
    ctx.check(
        all(n <= most_lines for n in lines.values()),
        f"'Redis refused a write' logged {dict(lines)} times in {end - begin:.0f} s: not once a second",
    )
    ctx.check(ready_again is not None, f"/readyz not ready again within {READY_AGAIN_WITHIN:.0f} s")


def probe_readiness_until_ready(target: Target) -> float | None:
    """Seconds until /readyz answers `ready`, None if not within READY_AGAIN_WITHIN."""
    start = time.monotonic()
    while time.monotonic() - start < READY_AGAIN_WITHIN:
        if get(target.base + "/readyz")[0] == 200:
            return round(time.monotonic() - start, 2)
        time.sleep(0.1)
    return None


def redis_stopped(ctx: Context) -> None:
    redis_server = ctx.redis()
    gateway = ctx.gateway(redis_server)
    load = ctx.load(gateway)
    warm_up(ctx, load)
    stopped = ctx.pick(20, 5)
    os.kill(redis_server.pid, signal.SIGSTOP)
    begin = ctx.fault_begins()
    try:
        time.sleep(stopped)
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    end = ctx.fault_ends()
    time.sleep(ctx.pick(5, 2))
    ctx.stop_loads()
    ctx.audit(gateway)
    during = [a for a in load.answers.all() if begin <= a.sent < end]
    first_refusal = min((a.answered for a in during if a.status == 503), default=None)
    ctx.figures.update(
        {
            "redis_stopped_s": stopped,
            "refused_during": sum(1 for a in during if a.status == 503),
            "first_503_after_s": None if first_refusal is None else round(first_refusal - begin, 2),
            "longest_wait_s": round(max((a.answered - a.sent for a in during), default=0.0), 2),
        }
    )
    ctx.check(all(a.status != 0 for a in during), "requests sent while Redis was stopped went unanswered")


def trackgate(*args: str) -> str:
    return subprocess.run([TRACKGATE, *args], capture_output=True, text=True, check=True, timeout=60).stdout


def redis_loses_its_data(ctx: Context) -> None:
    redis_server = ctx.redis(persistence="none")
    gateway = ctx.gateway(redis_server)
    reports, secret = demo_reports(gateway)
    backup = ctx.work / "projects.json"
    trackgate("project", "backup", "-o", str(backup), "--redis-url", redis_server.url)
    load = ctx.load(gateway)
    warm_up(ctx, load)
    acknowledged_before = len(load.answers.acknowledged())
    ctx.fault_begins()
    redis_server.restart()  # no persistence: it comes back empty
    back = time.monotonic()
    wait_for(lambda: load.answers.count(503, back) > 0, 30, "503 once the registry is gone")
    # While Redis restarts, /readyz says that it is not reachable; once it answers, the registry's absence.
    wait_for(lambda: "project restore" in get(gateway.base + "/readyz")[1], 30, "/readyz naming the restore")
    noticed = time.monotonic()
    probes = probe_readiness(gateway, ctx.pick(3, 1))
    trackgate("project", "restore", str(backup), "--redis-url", redis_server.url)
    end = ctx.fault_ends()
    ready_again = probe_readiness_until_ready(gateway)
    wait_for(lambda: load.answers.count(200, end) > 0, 30, "answers 1 after the restore")
    time.sleep(ctx.pick(3, 1))
    today = dt.datetime.now(dt.UTC).date()
    query = f"from={today - dt.timedelta(days=1)}&to={today}"
    report_status, _ = get(f"{reports}/api/events?{query}", auth=secret)
    ctx.stop_loads()
    # What was acknowledged before Redis came back empty is gone with it; from then on, nothing may be.
    ctx.audit(gateway, sent_after=back)
    untold = [p for p in probes if p.status != 503 or "trackgate project restore" not in p.body]
    ctx.figures.update(
        {
            "acknowledged_then_lost_with_redis": acknowledged_before,
            "first_503_after_s": round(noticed - back, 2),
            "refused_requests": load.answers.count(503, back),
            "readyz_reason": probes[0].body.strip() if probes else None,
            "ready_again_s": ready_again,
            "report_with_the_same_secret": report_status,
        }
    )
    ctx.check(not untold, f"/readyz did not name the restore {len(untold)} times while the registry was gone")
    ctx.check(ready_again is not None, f"/readyz not ready again within {READY_AGAIN_WITHIN:.0f} s")
    ctx.check(report_status == 200, f"the restored project's secret got {report_status} from /api/events")


def one_of_two_gateways_killed(ctx: Context) -> None:
    redis_server = ctx.redis()
    first = ctx.gateway(redis_server, name="gateway-a")
    second = ctx.gateway(redis_server, name="gateway-b")
    killed, survivor = ctx.load(first, clients=3), ctx.load(second, clients=3)
    warm_up(ctx, killed)
    os.killpg(first.server.process.pid, signal.SIGKILL)
    begin = ctx.fault_begins()
    first.server.process.wait()
    time.sleep(ctx.pick(5, 2))
    end = ctx.fault_ends()
    replacement = ctx.gateway(redis_server, name="gateway-a2")
    killed.retarget(replacement.base)
    wait_for(lambda: killed.answers.count(200, end) > 0, 30, "answers 1 from the restarted gateway")
    time.sleep(ctx.pick(3, 1))
    ctx.stop_loads()
    ctx.audit(second)
    restarted = killed.answers.first_acknowledged(end)
    ctx.recovery_s = None if restarted is None else restarted - end
    stored_meanwhile = survivor.answers.acknowledged_between(begin, end)
    ctx.figures.update(
        {
            "survivor_acknowledged_while_the_other_was_dead": stored_meanwhile,
            "survivor_not_1": sum(1 for a in survivor.answers.all() if not a.acknowledged),
            "killed_unanswered": killed.answers.count(NO_ANSWER),
        }
    )
    ctx.check(stored_meanwhile > 0, "the other gateway stored nothing while one was dead")


def sigterm_under_load(ctx: Context) -> None:
    redis_server = ctx.redis()
    gateway = ctx.gateway(redis_server, workers=2)
    load = ctx.load(gateway, clients=6)
    warm_up(ctx, load)
    begin = ctx.fault_begins()
    gateway.server.process.send_signal(signal.SIGTERM)
    code = gateway.server.process.wait(60)
    exited = time.monotonic()
    ctx.stop_loads()
    ctx.audit(gateway)
    ctx.figures.update({"exit_code": code, "exit_s": round(exited - begin, 2)})
    ctx.check(code == 0, f"trackgate serve exited with {code} on SIGTERM")


SCENARIOS = (
    Scenario(
        "oom",
        "Redis's maxmemory lowered to what it holds plus 4 MiB under load, then lifted after a few seconds",
        "/readyz not ready, naming OOM, while writes are refused; the refusal logged at most once a "
        "second; ready again once writes succeed",
        out_of_memory,
    ),
    Scenario(
        "redis-stop",
        "Redis stopped (SIGSTOP) for 20 s under load (5 s with --quick), then continued",
        "every request answered (503 with Retry-After once --redis-timeout passes), writes resume",
        redis_stopped,
    ),
    Scenario(
        "data-loss",
        "Redis without persistence restarted under load: it comes back empty, the project registry gone; "
        "then `trackgate project restore` of a backup taken before",
        "503 with Retry-After, never 401; /readyz names the restore; after it, the same token is stored "
        "and the same secret reads reports",
        redis_loses_its_data,
    ),
    Scenario(
        "two-gateways",
        "two gateways on one Redis under load; one SIGKILLed (its whole process group), and started again "
        "after a few seconds",
        "the other goes on storing; the restarted one stores again",
        one_of_two_gateways_killed,
    ),
    Scenario(
        "sigterm",
        "a gateway of two workers sent SIGTERM under load",
        "it exits 0 having stored what it answered",
        sigterm_under_load,
    ),
)
