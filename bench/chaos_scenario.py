"""What every chaos scenario works with: the scenario's description, the Context it runs in (the servers
and clients it starts, the fault's times, its checks and figures) and the Outcome it leaves.

A scenario starts its own redis-servers and gateways in a directory of its own and runs `Load`s against
them; it marks when its fault begins and ends, and audits the project once the load is over. The Context
derives the figures every scenario has from that: the answers, the events lost and doubled, the rate of
events answered `1` before, during and after the fault, the time from the fault's end to the first
answer `1`, and the peaks of the workers' and of Redis's memory, sampled throughout.
"""

from __future__ import annotations

import base64
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from chaos_audit import Audit, audit
from chaos_load import NO_ANSWER, Answers, Load, acknowledged_rate
from redis_servers import start_redis
from targets import Target, start_gateway

SAMPLE_SECONDS = 0.25
MIB = 2**20
EXPECTED_ANSWERS = frozenset({"1", "503", "no answer"})
"""What a client may be answered in a scenario (chaos_load.kind): stored, or refused so that it tries
again later, or nothing when the gateway itself is gone. A 401 would make a client drop its events."""
T = TypeVar("T")


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """A GET's status and body, whatever the status; NO_ANSWER when none came."""
    request = urllib.request.Request(url)
    if auth is not None:
        credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", "Basic " + credentials)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode(errors="replace")
    except OSError:
        return NO_ANSWER, ""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until `predicate()` holds; a TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.02)


@dataclass(frozen=True)
class Scenario:
    name: str
    does: str
    checks: str
    run: Callable[[Context], None]


@dataclass
class Outcome:
    """What one scenario found. Rates are events answered `1` per second; None where it does not
    apply."""

    name: str
    seconds: float
    answers: dict[str, int]
    acknowledged: int | None = None
    lost: int | None = None
    doubled: int | None = None
    stored_unacknowledged: int | None = None
    stream_events: int | None = None
    counted_events: int | None = None
    recovery_s: float | None = None
    worker_rss_peak_mib: float | None = None
    redis_rss_peak_mib: float | None = None
    rates: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of /proc/<pid>/status in bytes, 0 once the process is gone: VmHWM, the most
    resident memory it has had; VmRSS, what it has now."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class ChaosRedis:
    """A redis-server of the scenario's, on a Unix socket, that it can stop and start again on the same
    socket: with its data (append-only file) or, without persistence, empty."""

    def __init__(self, context: Context, name: str, persistence: str) -> None:
        self._context = context
        self._name = name
        self._persistence = persistence
        self.server, self.url = start_redis(context.work, name, persistence=persistence, unix=True)
        context.redis_servers.append(self)

    @property
    def pid(self) -> int:
        return self.server.process.pid

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10)

    def restart(self) -> None:
        self.server.stop()
        self.server, url = start_redis(
            self._context.work, self._name, persistence=self._persistence, unix=True
        )
        assert url == self.url


class Context:
    """One scenario's run: see the module's docstring."""

    def __init__(self, name: str, work: Path, quick: bool) -> None:
        self.name = name
        self.work = work
        self.quick = quick
        self.figures: dict[str, Any] = {}
        self.failures: list[str] = []
        self.redis_servers: list[ChaosRedis] = []
        self.gateways: list[Target] = []
        self.loads: list[Load] = []
        self.other_answers: list[Answers] = []  # events sent by the scenario's own clients
        self.recovery_s: float | None = None  # when the scenario measures it itself
        self._fault: list[float] = []
        self._loads_ran: list[float] = []
        self._audit: Audit | None = None
        self._peaks = {"workers": 0, "redis": 0}
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self._started = time.monotonic()

    def pick(self, full: T, quick: T) -> T:
        """A duration or a count: `full`, or `quick` in the quick suite."""
        return quick if self.quick else full

    # What the scenario starts

    def redis(self, name: str = "redis", persistence: str = "everysec") -> ChaosRedis:
        return ChaosRedis(self, name, persistence)

    def gateway(
        self, redis_server: ChaosRedis, *args: str, name: str = "gateway", workers: int = 1
    ) -> Target:
        """`trackgate serve --demo` on `redis_server`, its streams never trimmed: a trimmed event would
        be counted but no longer in a stream."""
        target = start_gateway(
            self.work, workers, [*args, "--redis-url", redis_server.url, "--stream-maxlen", "0"], name
        )
        target.redis_url = redis_server.url
        self.gateways.append(target)
        return target

    def load(self, target: Target, **kwargs: Any) -> Load:
        load = Load(target.base, target.token, **kwargs)
        self.loads.append(load)
        if not self._loads_ran:
            self._loads_ran.append(time.monotonic())
        return load

    def stop_loads(self) -> None:
        for load in self.loads:
            load.stop()
        if len(self._loads_ran) == 1:
            self._loads_ran.append(time.monotonic())

    # What it records

    def fault_begins(self) -> float:
        self._fault = [time.monotonic()]
        return self._fault[0]

    def fault_ends(self) -> float:
        self._fault.append(time.monotonic())
        return self._fault[1]

    def check(self, ok: bool, failure: str) -> None:
        """A check of the scenario's own: `failure` says what went wrong when it does not hold."""
        if not ok:
            self.failures.append(failure)

    def audit(self, target: Target, sent_after: float = 0.0) -> Audit:
        """The audit of the project of `target` against every answer of the scenario's clients (see
        chaos_audit.audit); its failures are the scenario's."""
        assert target.redis_url is not None
        runs = [load.answers for load in self.loads] + self.other_answers
        self._audit = audit(target.redis_url, target.token, runs, sent_after)
        self.failures.extend(self._audit.failures())
        return self._audit

    def _sample(self) -> None:
        while not self._sampling.wait(SAMPLE_SECONDS):
            self._sample_once()

    def _sample_once(self) -> None:
        workers = [pid for target in self.gateways for pid in target.server.worker_pids()]
        redis_pids = [pid for server in self.redis_servers for pid in server.server.pids()]
        for kind, pids in (("workers", workers), ("redis", redis_pids)):
            self._peaks[kind] = max([self._peaks[kind], *(memory(pid) for pid in pids)])

    # The end

    def close(self) -> None:
        """Stop every client and server the scenario started (a server already stopped is left)."""
        self.stop_loads()
        self._sample_once()
        self._sampling.set()
        self._sampler.join()
        for target in self.gateways:
            target.stop()
        for server in self.redis_servers:
            server.server.stop()

    def outcome(self) -> Outcome:
        runs = [load.answers for load in self.loads] + self.other_answers
        answers: Counter[str] = Counter()
        for run in runs:
            answers.update(run.kinds())
        unexpected = {k: n for k, n in answers.items() if k not in EXPECTED_ANSWERS}
        self.check(not unexpected, f"requests answered otherwise than expected: {unexpected}")
        bare = sum(1 for run in runs for a in run.all() if a.status == 503 and not _positive(a.retry_after))
        self.check(not bare, f"{bare} answers 503 without a Retry-After of at least a second")
        outcome = Outcome(
            self.name,
            round(time.monotonic() - self._started, 1),
            dict(answers),
            recovery_s=self.recovery_s,
            worker_rss_peak_mib=self._peaks["workers"] / MIB or None,
            redis_rss_peak_mib=self._peaks["redis"] / MIB or None,
            figures=self.figures,
            failures=self.failures,
        )
        if self._audit is not None:
            a = self._audit
            outcome.acknowledged, outcome.lost, outcome.doubled = a.acknowledged, a.lost, a.doubled
            outcome.stored_unacknowledged = a.stored_unacknowledged
            outcome.stream_events, outcome.counted_events = a.stream_events, a.counted_events
        if self._fault and len(self._loads_ran) == 2:
            # A fault with no end (the gateway stopped for good) lasts until the clients stop.
            (first, last), begin = self._loads_ran, self._fault[0]
            end = self._fault[1] if len(self._fault) == 2 else last
            phases = {"before": (first, begin), "during": (begin, end)}
            if len(self._fault) == 2:
                phases["after"] = (end, last)
            outcome.rates = {phase: acknowledged_rate(runs, *span) for phase, span in phases.items()}
            if outcome.recovery_s is None and len(self._fault) == 2:
                answered = [t for run in runs if (t := run.first_acknowledged(end)) is not None]
                outcome.recovery_s = min(answered) - end if answered else None
        return outcome


def _positive(retry_after: str | None) -> bool:
    return retry_after is not None and retry_after.isdigit() and int(retry_after) > 0
