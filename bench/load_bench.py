"""End-to-end load benchmark: the gateway against a do-nothing Granian app (the ceiling), with wrk.

    .venv/bin/python bench/load_bench.py [--duration 10] [--connections 64] [--workers 1] [--json out.json]

In one run, on loopback only, it starts `trackgate serve` (with its private redis-server: persistence on,
as users run it) and `bench/ceiling_app.py` under Granian with the same worker settings, then drives
each with wrk for single-event GET requests and for POSTs of 50-event batches. It prints requests/s,
events/s, p50/p99 latency, the gateway's ratio to the ceiling, and CPU time per event of the gateway's
workers and of Redis (from /proc), and checks that every event the gateway acknowledged was stored.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
EVENTS_PER_POST = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")

# wrk prints this line from `done()`; everything else in its output is ignored.
LUA_DONE = r"""
function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Result:
    scenario: str
    target: str
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    gateway_cpu_us_per_event: float | None = None
    redis_cpu_us_per_event: float | None = None
    ratio_to_ceiling: float | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.05)


def lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


def event(token: str, i: int, now: float) -> dict[str, Any]:
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


def get_script(token: str, now: float, variants: int = 1000) -> str:
    """mixpanel-browser-style GETs (base64 data, ip=1, cache buster), one event each, users varied so the
    gateway's partitions all see traffic. Requests are formatted once, in init, not per request."""
    paths = []
    for i in range(variants):
        data = base64.b64encode(json.dumps(event(token, i, now)).encode()).decode()
        paths.append(f"/track/?data={urllib.request.quote(data, safe='')}&ip=1&_={i}")
    table = ",\n".join(lua_string(p) for p in paths)
    return f"""
local paths = {{{table}}}
local requests = {{}}
local n = 0
function init(args)
  for i, p in ipairs(paths) do requests[i] = wrk.format("GET", p) end
end
function request()
  n = n % #requests + 1
  return requests[n]
end
{LUA_DONE}"""


def post_script(token: str, now: float, variants: int = 50) -> str:
    """mixpanel-python-style POSTs: form body, raw JSON array of 50 events."""
    bodies = []
    for v in range(variants):
        batch = [event(token, v * EVENTS_PER_POST + i, now) for i in range(EVENTS_PER_POST)]
        bodies.append("data=" + urllib.request.quote(json.dumps(batch), safe="") + "&verbose=1&ip=0")
    table = ",\n".join(lua_string(b) for b in bodies)
    return f"""
local bodies = {{{table}}}
local requests = {{}}
local n = 0
function init(args)
  local headers = {{["Content-Type"] = "application/x-www-form-urlencoded"}}
  for i, b in ipairs(bodies) do requests[i] = wrk.format("POST", "/track", headers, b) end
end
function request()
  n = n % #requests + 1
  return requests[n]
end
{LUA_DONE}"""


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
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


def wrk(url: str, script: Path, args: argparse.Namespace, seconds: int) -> dict[str, int]:
    out = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"^RESULT (\{.*\})$", out, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no RESULT line in wrk's output:\n{out}")
    return dict(json.loads(found.group(1)))


def stored_events(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(r"^trackgate_events_stored_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads (default 1: leave the cores to the servers)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="Granian workers of the gateway and the ceiling"
    )
    parser.add_argument("--gateway-arg", action="append", default=[], help="extra `trackgate serve` argument")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: sudo apt-get install wrk", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="trackgate-bench-") as tmp:
        work = Path(tmp)
        gw_port, ceiling_port = free_port(), free_port()
        gateway_log = (work / "gateway.log").open("w")
        gateway = subprocess.Popen(
            [str(BIN / "trackgate"), "serve", "--demo", "--host", "127.0.0.1", "--port", str(gw_port),
             "--workers", str(args.workers), "--data-dir", str(work / "data"), "--log-level", "warning",
             "--stream-maxlen", "100000", *args.gateway_arg],
            stdout=gateway_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        ceiling = subprocess.Popen(
            [str(BIN / "granian"), "--interface", "rsgi", "--host", "127.0.0.1", "--port", str(ceiling_port),
             "--workers", str(args.workers), "--runtime-threads", "1", "--runtime-mode", "st", "--no-ws",
             "--log-level", "warning", "ceiling_app:app"],
            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            gw_base, ceiling_base = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{ceiling_port}"
            wait_http(gw_base + "/readyz")
            wait_http(ceiling_base + "/")
            token_line = re.search(r"^token: (\S+)$", (work / "gateway.log").read_text(), re.MULTILINE)
            assert token_line, "the gateway did not print the demo token"
            token, now = token_line.group(1), time.time()
            scripts = {
                "GET 1 event": (get_script(token, now), 1),
                "POST 50 events": (post_script(token, now), 50),
            }
            results = []
            for scenario, (lua, per_request) in scripts.items():
                script = work / f"{scenario.replace(' ', '_')}.lua"
                script.write_text(lua)
                ceiling_result = None
                for target, base, root in (
                    ("ceiling", ceiling_base, ceiling.pid),
                    ("gateway", gw_base, gateway.pid),
                ):
                    pids = descendants(root)
                    redis_pids = [p for p in pids if comm(p) == "redis-server"]
                    server_pids = [p for p in pids if p not in redis_pids]
                    if args.warmup > 0:
                        wrk(base + "/track", script, args, args.warmup)
                    stored_before = stored_events(base) if target == "gateway" else 0.0
                    cpu_before = (cpu_seconds(server_pids), cpu_seconds(redis_pids))
                    raw = wrk(base + "/track", script, args, args.duration)
                    cpu_after = (cpu_seconds(server_pids), cpu_seconds(redis_pids))
                    seconds = raw["duration_us"] / 1e6
                    rps = raw["requests"] / seconds
                    result = Result(
                        scenario=scenario, target=target, requests_per_s=rps, events_per_s=rps * per_request,
                        p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
                        non_2xx=raw["non_2xx"], socket_errors=raw["socket_errors"],
                    )  # fmt: skip
                    if target == "gateway":
                        # The gateway's own count of events written to Redis during the run; requests cut
                        # off when wrk stopped may add a few that wrk did not count.
                        stored = stored_events(base) - stored_before
                        acknowledged = (raw["requests"] - raw["non_2xx"]) * per_request
                        if stored < acknowledged:
                            print(f"WARNING: {scenario}: {acknowledged} events answered, {stored:.0f} stored")
                        result.gateway_cpu_us_per_event = (cpu_after[0] - cpu_before[0]) / stored * 1e6
                        result.redis_cpu_us_per_event = (cpu_after[1] - cpu_before[1]) / stored * 1e6
                        if ceiling_result is not None:
                            result.ratio_to_ceiling = rps / ceiling_result.requests_per_s
                    else:
                        ceiling_result = result
                    results.append(result)
        finally:
            for process in (gateway, ceiling):
                process.send_signal(signal.SIGTERM)
            for process in (gateway, ceiling):
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
            gateway_log.close()

    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.workers} worker(s), "
        f"{os.cpu_count()} CPUs, loopback"
    )
    header = f"{'scenario':<16}{'target':<9}{'req/s':>10}{'events/s':>11}{'p50 ms':>8}{'p99 ms':>8}"
    header += f"{'ratio':>7}{'gw µs/ev':>10}{'redis µs/ev':>12}{'errors':>8}"
    print(header)
    for r in results:
        ratio = f"{r.ratio_to_ceiling:.2f}" if r.ratio_to_ceiling is not None else "-"
        gw_cpu = f"{r.gateway_cpu_us_per_event:.1f}" if r.gateway_cpu_us_per_event is not None else "-"
        redis_cpu = f"{r.redis_cpu_us_per_event:.1f}" if r.redis_cpu_us_per_event is not None else "-"
        print(
            f"{r.scenario:<16}{r.target:<9}{r.requests_per_s:>10.0f}{r.events_per_s:>11.0f}{r.p50_ms:>8.2f}"
            f"{r.p99_ms:>8.2f}{ratio:>7}{gw_cpu:>10}{redis_cpu:>12}{r.non_2xx + r.socket_errors:>8}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
