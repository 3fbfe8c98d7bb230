"""What the benchmark scripts share: starting and stopping the servers, building wrk's Lua scripts, running
wrk, and reading CPU time and memory from /proc.

Everything listens on 127.0.0.1 only. Every server is started in its own process group and stopped by that
group (SIGTERM, then SIGKILL after a grace period); processes it started outside its group (the gateway's
private redis-server runs in its own session) are remembered by pid and start time when the server comes
up and stopped the same way, so a benchmark never leaves redis-server or granian running, even when it is
interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from trackgate.metrics import PUBLISH_SECONDS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# The gateway keeps each partition's stream to about this many entries in the benchmark, so a long run
# cannot fill memory; the peer keeps its one stream to as many as the gateway holds with 16 partitions.
STREAM_MAXLEN = 100_000
PEER_STREAM_MAXLEN = 16 * STREAM_MAXLEN

WRK_MISSING = "wrk is missing: install it with `sudo apt-get install wrk` (Debian's package)"


def require_tools() -> None:
    missing = []
    if shutil.which("wrk") is None:
        missing.append(WRK_MISSING)
    if shutil.which("redis-server") is None:
        missing.append("redis-server is missing: install it with `sudo apt-get install redis-server`")
    if missing:
        sys.exit("\n".join(missing))


# --------------------------------------------------------------------------------------------------------
# /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of stat: starttime


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) and of their children that ended
    (Redis's append-only-file rewrites, for one), in seconds."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[21]) * PAGE_SIZE if fields else 0  # field 24 of stat: rss in pages


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
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
    network processing, loopback included; with tick-based accounting, as on the VM these numbers come
    from, that time is also charged to the process each tick interrupted, so it is part of the processes'
    times, not in addition to them); stolen is what the hypervisor gave to other guests."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, (irq + softirq) / CLK_TCK, steal / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children: wrk's, measured around each run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_RUNNING: list[Server] = []


def _stop_all() -> None:
    kill_wrk()
    for server in reversed(_RUNNING[:]):
        server.stop()


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_main(main: Callable[[], int]) -> NoReturn:
    """A benchmark script's entry point: its exit code, or 130 when interrupted (the cleanup handlers
    have stopped every server it started by then)."""
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; every server it started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None


def install_cleanup() -> None:
    """Stop every server on exit, on Ctrl-C and on SIGTERM."""
    atexit.register(_stop_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


class Server:
    """A process group this benchmark started, and the processes it spawned into other sessions."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._known: dict[int, int] = {}  # pid -> start time, of everything seen under it
        _RUNNING.append(self)

    def wait_ready(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {url} did not answer within {timeout} s: {self.log_tail()}")
            time.sleep(0.05)
        self.remember()

    def remember(self) -> None:
        for pid in descendants(self.process.pid):
            started = start_time(pid)
            if started is not None:
                self._known.setdefault(pid, started)

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        return descendants(self.process.pid)

    def split_pids(self) -> tuple[list[int], list[int]]:
        """(the server's own processes, its redis-servers)."""
        pids = self.pids()
        redis = [pid for pid in pids if comm(pid).startswith("redis-server")]
        return [pid for pid in pids if pid not in redis], redis

    def worker_pids(self) -> list[int]:
        """The processes below the root that are not Redis: Granian's (or uvicorn's) workers. A server
        without child processes is its own worker."""
        own, _ = self.split_pids()
        workers = [pid for pid in own if pid != self.process.pid]
        return workers or [self.process.pid]

    def _alive_known(self) -> list[int]:
        return [pid for pid, started in self._known.items() if start_time(pid) == started]

    def stop(self, grace: float = 30) -> None:
        if self not in _RUNNING:
            return
        _RUNNING.remove(self)
        self.remember()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # What it started in other sessions (the gateway's redis-server stops with the gateway; this is in
        # case the gateway was killed before it could stop it).
        deadline = time.monotonic() + grace
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._alive_known():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            while self._alive_known() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._alive_known():
                break
        with contextlib.suppress(ProcessLookupError):  # anything left in the group
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class GranianSettings:
    """The Granian runtime settings of the gateway, which the ceiling copies."""

    workers: int
    runtime_threads: int
    runtime_mode: str
    event_loop: str
    task_impl: str
    backpressure: int


def gateway_granian_settings(workers: int | None, gateway_args: list[str]) -> GranianSettings:
    """What `trackgate serve [--workers N] <gateway_args>` runs Granian with: its defaults, TRACKGATE_*
    variables and the flags, read by trackgate's own settings module and its own flags."""
    from trackgate import settings as tg_settings

    parser = argparse.ArgumentParser(add_help=False)
    tg_settings.add_arguments(parser)
    known, _ = parser.parse_known_args(gateway_args)
    if workers is not None:
        known.workers = workers
    config = tg_settings.build(known)
    return GranianSettings(**{f.name: getattr(config, f.name) for f in fields(GranianSettings)})


@dataclass
class Target:
    """A running server under test."""

    name: str
    base: str
    server: Server
    redis: Server | None = None  # a redis-server the bench started for it (the peer's)
    token: str = ""
    redis_url: str | None = None  # the Redis it writes to, when the bench knows it

    def split_pids(self) -> tuple[list[int], list[int]]:
        own, redis = self.server.split_pids()
        if self.redis is not None:
            redis += self.redis.pids()
        return own, redis

    def stop(self) -> None:
        self.server.stop()
        if self.redis is not None:
            self.redis.stop()


def start_gateway(
    work: Path,
    workers: int | None,
    gateway_args: list[str],
    name: str = "gateway",
    *,
    persistence: str | None = None,
) -> Target:
    """`trackgate serve --demo` with its private Redis (unless gateway_args has --redis-url); workers:
    None for the gateway's own default. With `persistence` (everysec, always, none) it runs on a
    redis-server of the bench's own so configured instead, counted and stopped with it."""
    redis = None
    if persistence is not None:
        redis, url = start_redis(work, f"{name}-redis", persistence=persistence, unix=True)
        gateway_args = [*gateway_args, "--redis-url", url]
    port = free_port()
    args = [
        str(BIN / "trackgate"), "serve", "--demo", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(work / f"{name}-data"), "--log-level", "warning",
        "--stream-maxlen", str(STREAM_MAXLEN),
    ]  # fmt: skip
    if workers is not None:
        args += ["--workers", str(workers)]
    try:
        server = Server(name, [*args, *gateway_args], log=work / f"{name}.log")
        base = f"http://127.0.0.1:{port}"
        server.wait_ready(base + "/readyz")
        found = re.search(r"^token: (\S+)$", server.log.read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"the gateway did not print the demo token: {server.log_tail()}")
    except BaseException:
        if redis is not None:
            redis.stop()
        raise
    if redis is None:
        # The private redis-server's socket, unless the data directory's path was too long for one.
        sock = work / f"{name}-data" / "redis.sock"
        url = f"unix://{sock}" if sock.is_socket() else None
        if url is not None:
            _REDIS_URLS.append(url)
    return Target(name, base, server, redis=redis, token=found.group(1), redis_url=url)


def start_ceiling(work: Path, granian: GranianSettings) -> Target:
    port = free_port()
    args = [
        str(BIN / "granian"), "--interface", "rsgi", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(granian.workers), "--runtime-threads", str(granian.runtime_threads),
        "--runtime-mode", granian.runtime_mode, "--loop", granian.event_loop,
        "--task-impl", granian.task_impl,
        "--no-ws", "--log-level", "warning",
    ]  # fmt: skip
    if granian.backpressure:
        args += ["--backpressure", str(granian.backpressure)]
    server = Server("ceiling", [*args, "ceiling_app:app"], log=work / "ceiling.log", cwd=HERE)
    base = f"http://127.0.0.1:{port}"
    server.wait_ready(base + "/")
    return Target("ceiling", base, server)


def start_redis(
    work: Path, name: str, *, persistence: str = "everysec", unix: bool = False
) -> tuple[Server, str]:
    """A private redis-server configured as the gateway configures its own: append-only file fsynced
    every second, no RDB snapshots. `persistence`: everysec, always, or none (no append-only file)."""
    data = work / f"{name}-data"
    data.mkdir(parents=True, exist_ok=True)
    args = ["redis-server", "--dir", str(data), "--save", "", "--daemonize", "no", "--logfile", ""]
    if persistence == "none":
        args += ["--appendonly", "no"]
    else:
        args += ["--appendonly", "yes", "--appendfsync", persistence, "--auto-aof-rewrite-min-size", "1gb"]
    if unix:
        sock = data / "redis.sock"
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        url = f"unix://{sock}"
    else:
        port = free_port()
        args += ["--port", str(port), "--bind", "127.0.0.1"]
        url = f"redis://127.0.0.1:{port}/0"
    server = Server(name, args, log=work / f"{name}.log")
    deadline = time.monotonic() + 15
    while not _redis_ping(url):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {server.log_tail()}")
        time.sleep(0.05)
    server.remember()
    _REDIS_URLS.append(url)
    return server, url


@dataclass(frozen=True)
class RedisForks:
    """What a Redis says of its forks: an append-only-file rewrite (every --auto-aof-rewrite-min-size of
    writes) forks it, which stops it for milliseconds, then the child takes CPU for seconds."""

    forks: int
    last_fork_usec: int
    rewriting: bool  # a rewrite's child is running now


def redis_forks(url: str | None) -> RedisForks | None:
    """None if Redis cannot be asked."""
    import redis

    if url is None:
        return None
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            info = client.info("all")
            return RedisForks(
                int(info["total_forks"]), int(info["latest_fork_usec"]), bool(info["aof_rewrite_in_progress"])
            )
    except (redis.RedisError, OSError, KeyError):
        return None


def wait_for_rewrite(url: str | None, timeout: float = 120) -> float:
    """Wait until Redis is not rewriting its append-only file; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = redis_forks(url)
        if state is None or not state.rewriting:
            break
        time.sleep(0.2)
    return time.monotonic() - started


# Every redis-server of the bench's targets: a rewrite that one of them started after its own target's run
# must not take a core from the next run, whichever target that is.
_REDIS_URLS: list[str] = []


def wait_for_rewrites() -> float:
    """Wait until no Redis of the bench is rewriting its append-only file; returns the seconds waited."""
    return sum(wait_for_rewrite(url) for url in _REDIS_URLS)


def _redis_ping(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def start_peer(work: Path, workers: int, token: str) -> Target:
    redis_server, url = start_redis(work, "peer-redis")
    port = free_port()
    env = {
        **os.environ,
        "PEER_REDIS_URL": url,
        "PEER_TOKENS": token,
        "PEER_STREAM_MAXLEN": str(PEER_STREAM_MAXLEN),
    }
    args = [
        str(BIN / "python"), "-m", "uvicorn", "peer_app:app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    if workers > 1:
        args += ["--workers", str(workers)]
    try:
        server = Server("peer", args, log=work / "peer.log", cwd=HERE, env=env)
        base = f"http://127.0.0.1:{port}"
        server.wait_ready(base + "/healthz")
    except BaseException:
        redis_server.stop()
        raise
    return Target("peer", base, server, redis=redis_server, token=token, redis_url=url)


def gateway_stored_events(target: Target) -> float | None:
    """trackgate_events_stored_total from the gateway's /metrics, None if it cannot be read."""
    try:
        with urllib.request.urlopen(target.base + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = re.search(r"^trackgate_events_stored_total(?:\{\})? ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


# --------------------------------------------------------------------------------------------------------
# Request shapes and wrk scripts


@dataclass(frozen=True)
class Shape:
    """What each request carries: one event by GET (mixpanel-browser style: base64 in the query string,
    ip=1, a cache buster), or a batch by POST (mixpanel-python style: a form body `data=<JSON array>`)."""

    batch: int
    funnel_fraction: float = 0.0

    @property
    def key(self) -> str:
        name = "get1" if self.batch == 1 else f"post{self.batch}"
        return name + (f"+funnel{round(self.funnel_fraction * 100)}" if self.funnel_fraction else "")

    @property
    def label(self) -> str:
        name = "GET 1 event" if self.batch == 1 else f"POST {self.batch} events"
        return name + (f", {round(self.funnel_fraction * 100)}% mp_funnel" if self.funnel_fraction else "")


def make_event(token: str, i: int, now: float, funnel_index: int | None = None) -> dict[str, Any]:
    """A ~300-byte event; with `funnel_index`, an mp_funnel step instead: users go through steps 1, 2, 3
    of a `checkout` funnel in order, three funnel events per user."""
    if funnel_index is not None:
        return {
            "event": "mp_funnel",
            "properties": {
                "token": token,
                "distinct_id": f"funnel-user-{funnel_index // 3}",
                "time": now,
                "$insert_id": f"f{funnel_index:031x}",
                "mp_lib": "web",
                "funnel": "checkout",
                "step": funnel_index % 3 + 1,
                "goal": ("view cart", "enter address", "pay")[funnel_index % 3],
            },
        }
    return {
        "event": "bench event",
        "properties": {
            "token": token,
            "distinct_id": f"user-{i}",
            "time": now,
            "$insert_id": f"{i:032x}",
            "mp_lib": "web",
            "$current_url": "https://shop.example.com/products/42?ref=bench",
            "plan": "pro",
            "amount": 42.5,
        },
    }


def _events(token: str, shape: Shape, start: int, now: float) -> list[dict[str, Any]]:
    """Events start .. start+batch-1; with a funnel fraction f, every (1/f)-th event overall is a funnel
    step (so exactly f of them over the script)."""
    every = round(1 / shape.funnel_fraction) if shape.funnel_fraction else 0
    out = []
    for i in range(start, start + shape.batch):
        if every and i % every == every - 1:
            out.append(make_event(token, i, now, funnel_index=i // every))
        else:
            out.append(make_event(token, i, now))
    return out


def requests_for(token: str, shape: Shape, now: float) -> list[tuple[str, str, str]]:
    """(method, path, body) of the script's distinct requests: about 10,000 users in all."""
    variants = 1000 if shape.batch == 1 else max(10, 10_000 // shape.batch)
    out = []
    for v in range(variants):
        events = _events(token, shape, v * shape.batch, now)
        if shape.batch == 1:
            data = base64.b64encode(json.dumps(events[0]).encode()).decode()
            out.append(("GET", f"/track/?data={urllib.parse.quote(data, safe='')}&ip=1&_={v}", ""))
        else:
            body = "data=" + urllib.parse.quote(json.dumps(events), safe="") + "&verbose=1&ip=0"
            out.append(("POST", "/track", body))
    return out


# wrk prints this line from `done()`; everything else in its output is ignored.
_LUA_DONE = r"""
function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p75_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""

# A fixed request rate with wrk (wrk2 is not packaged): every connection asks `delay()` before each of its
# requests, and delay() hands out send slots from one schedule per thread, `interval` ms apart (LuaJIT's
# FFI reads CLOCK_MONOTONIC). The schedule never slips: a slot missed because every connection was busy is
# sent as soon as one is free, so the rate holds as long as the server keeps up. Latency is wrk's, from
# the moment the request is written (no coordinated-omission correction).
_LUA_PACER = r"""
local ffi = require("ffi")
pcall(ffi.cdef, [[
  typedef struct { long tv_sec; long tv_nsec; } tg_timespec;
  int clock_gettime(int, tg_timespec *);
]])
local ts = ffi.new("tg_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = INTERVAL_MS
local next_at = nil
function delay()
  local now = now_ms()
  if next_at == nil then next_at = now end
  local wait = next_at - now
  next_at = next_at + interval
  if wait < 0 then return 0 end
  return wait
end
"""


def wrk_script(requests: list[tuple[str, str, str]], rate: float | None = None, threads: int = 1) -> str:
    """The Lua script: requests formatted once in init(), cycled through by request(); `rate` requests/s
    in all (over all threads) when given, else as fast as the connections go (a closed loop)."""
    rows = ",\n".join(
        "{" + ",".join("[==[" + part + "]==]" for part in request) + "}" for request in requests
    )
    script = f"""
local raw = {{{rows}}}
local requests = {{}}
local n = 0
function init(args)
  local form = {{["Content-Type"] = "application/x-www-form-urlencoded"}}
  for i, r in ipairs(raw) do
    if r[1] == "GET" then
      requests[i] = wrk.format("GET", r[2])
    else
      requests[i] = wrk.format("POST", r[2], form, r[3])
    end
  end
  n = math.random(#requests) - 1
end
function request()
  n = n % #requests + 1
  return requests[n]
end
{_LUA_DONE}"""
    if rate is not None:
        script += _LUA_PACER.replace("INTERVAL_MS", repr(1000.0 * threads / rate))
    return script


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
    redis_forks: int = 0  # forks of the target's Redis during the run (see redis_forks)
    redis_rewriting: bool = False  # a rewrite of the target Redis's append-only file overlapped the run
    rewrite_wait_s: float = 0.0  # waited before the run for the bench's Redis servers to end their rewrites
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scripts:
    """wrk scripts written once per (target token, shape, rate) into the work directory."""

    def __init__(self, work: Path, now: float | None = None) -> None:
        self.work = work
        self.now = time.time() if now is None else now
        self._written: dict[tuple[str, str, float | None], Path] = {}
        self._requests: dict[tuple[str, Shape], list[tuple[str, str, str]]] = {}

    def path(self, token: str, shape: Shape, rate: float | None = None, threads: int = 1) -> Path:
        key = (token, shape.key, rate)
        if key not in self._written:
            if (token, shape) not in self._requests:
                self._requests[(token, shape)] = requests_for(token, shape, self.now)
            path = self.work / f"wrk-{len(self._written)}-{shape.key}.lua"
            path.write_text(wrk_script(self._requests[(token, shape)], rate, threads))
            self._written[key] = path
        return self._written[key]


def start_wrk(
    url: str, script: Path, connections: int, seconds: float, threads: int = 1
) -> subprocess.Popen[str]:
    threads = max(1, min(threads, connections))
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(script), url]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _WRK.append(process)
    return process


_WRK: list[subprocess.Popen[str]] = []


def kill_wrk() -> None:
    """Stop any wrk still running (the benchmark was interrupted)."""
    for process in _WRK:
        if process.poll() is None:
            process.kill()
            process.wait()
    _WRK.clear()


def finish_wrk(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Wait for wrk; its done() numbers."""
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:  # a timeout, or the benchmark interrupted: wrk must not run on
        process.kill()
        process.communicate()
        raise
    finally:
        if process in _WRK and process.poll() is not None:
            _WRK.remove(process)
    found = re.search(r"^RESULT (\{.*\})$", out, re.MULTILINE)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {out[-2000:]} {err[-2000:]}")
    result: dict[str, Any] = json.loads(found.group(1))
    return result


def run_wrk(url: str, script: Path, connections: int, seconds: float, threads: int = 1) -> dict[str, Any]:
    """wrk's done() numbers, plus its own CPU seconds (`wrk_cpu_s`)."""
    cpu_before = children_cpu_seconds()
    result = finish_wrk(start_wrk(url, script, connections, seconds, threads), seconds + 120)
    result["wrk_cpu_s"] = children_cpu_seconds() - cpu_before
    return result


def measure(
    target: Target,
    scripts: Scripts,
    shape: Shape,
    connections: int,
    seconds: float,
    *,
    warmup: float = 0,
    rate: float | None = None,
    threads: int = 1,
    part: str = "load",
) -> Run:
    """Warm up (unmeasured), then one measured wrk run, with CPU time of the server and its Redis."""
    script = scripts.path(target.token, shape, rate, threads)
    url = target.base + "/track"
    waited = wait_for_rewrites()
    if warmup > 0:
        run_wrk(url, script, connections, warmup, threads)
    own, redis = target.split_pids()
    stored_before = gateway_stored_events(target) if target.name.startswith("gateway") else None
    kernel = descendants(2)  # kthreadd's children: the kernel's own threads
    forks_before = redis_forks(target.redis_url)
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
    run.machine_busy_cores = (machine_after[0] - machine_before[0]) / duration
    run.interrupt_cores = (machine_after[1] - machine_before[1]) / duration
    run.steal_cores = (machine_after[2] - machine_before[2]) / duration
    run.kernel_threads_cores = (cpu_after[2] - cpu_before[2]) / duration
    ours = (run.server_cpu_s + run.redis_cpu_s + run.wrk_cpu_s) / duration
    # Interrupt time is inside the processes' own times already (see machine_cpu_seconds).
    run.other_cores = max(0.0, run.machine_busy_cores - ours - run.kernel_threads_cores)
    if run.acknowledged_events:
        run.server_us_per_event = run.server_cpu_s / run.acknowledged_events * 1e6
        if redis:
            run.redis_us_per_event = run.redis_cpu_s / run.acknowledged_events * 1e6
    if stored_before is not None:
        stored_after = gateway_stored_events(target)
        # Each worker adds its counts to the shared metrics every PUBLISH_SECONDS, and a scrape publishes
        # only the worker that answers it: with several workers the total lags by up to that long.
        deadline = time.monotonic() + 4 * PUBLISH_SECONDS
        while (
            stored_after is not None
            and stored_after - stored_before < ok_requests * shape.batch
            and time.monotonic() < deadline
        ):
            time.sleep(PUBLISH_SECONDS / 2)
            stored_after = gateway_stored_events(target)
        if stored_after is not None:
            run.stored_events = stored_after - stored_before
            # Requests cut off when wrk stopped may add a few that wrk did not count, never fewer.
            if run.stored_events < run.acknowledged_events:
                run.notes.append(
                    f"{run.acknowledged_events} events answered but {run.stored_events:.0f} stored"
                )
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


# --------------------------------------------------------------------------------------------------------
# The machine and the versions


def _first(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1).strip() if found else "?"


def _command(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=cwd, check=False)
    except OSError:
        return ""
    return (done.stdout + done.stderr).strip()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = Path("/proc/meminfo").read_text()
    return {
        "host": socket.gethostname(),
        "cpu_model": _first(r"^model name\s*:\s*(.*)$", cpuinfo),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(_first(r"^MemTotal:\s*(\d+)", meminfo)) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _first(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text())
        if Path("/etc/os-release").exists()
        else platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, Any]:
    import trackgate

    commit = _command(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT) or "?"
    dirty = _command(["git", "status", "--porcelain", "--", "python", "rust"], cwd=ROOT)
    native = next(iter((ROOT / "python" / "trackgate").glob("_native*.so")), None)
    if native is None:
        native = Path(trackgate._native.__file__)
    return {
        "python": platform.python_version(),
        "granian": _version("granian"),
        "redis_server": _first(r"v=(\S+)", _command(["redis-server", "--version"])),
        "wrk": _first(r"^wrk (\S+)", _command(["wrk", "-v"])),
        "trackgate": getattr(trackgate, "__version__", "?"),
        "trackgate_commit": commit + ("+uncommitted changes in python/ or rust/" if dirty else ""),
        "native_extension_built": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(native.stat().st_mtime)),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "uvloop": _version("uvloop"),
        "httptools": _version("httptools"),
    }


@contextlib.contextmanager
def servers_stopped_on_exit() -> Iterator[None]:
    install_cleanup()
    try:
        yield
    finally:
        _stop_all()
