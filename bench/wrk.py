"""Driving wrk, the load generator: the request files its Lua scripts read, its runs, and its numbers."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import forget, kill_on_exit
from procstat import children_cpu_seconds
from workloads import Shape, Tokens, requests_for

CLOSED_LOOP = Path(__file__).resolve().with_name("wrk_requests.lua")
PACED = CLOSED_LOOP.with_name("wrk_paced.lua")


@dataclass(frozen=True)
class WrkScript:
    """A Lua script of wrk's and the arguments it reads in init()."""

    lua: Path
    args: tuple[str, ...]


class RequestFiles:
    """The requests of each (token, shape), written once into the work directory for wrk's scripts."""

    def __init__(self, work: Path, now: float | None = None) -> None:
        self.work = work
        self.now = time.time() if now is None else now
        self._written: dict[tuple[Tokens, Shape], Path] = {}

    def script(self, tokens: Tokens, shape: Shape, rate: float | None = None, threads: int = 1) -> WrkScript:
        """The script sending `shape` for the project `tokens` (or the projects, in turn): `rate` requests/s
        in all (over all threads) when given, else as fast as the connections go (a closed loop)."""
        if (tokens, shape) not in self._written:
            path = self.work / f"requests-{len(self._written)}-{shape.key}.tsv"
            lines = ("\t".join(request) + "\n" for request in requests_for(tokens, shape, self.now))
            path.write_text("".join(lines))
            self._written[(tokens, shape)] = path
        requests = str(self._written[(tokens, shape)])
        if rate is None:
            return WrkScript(CLOSED_LOOP, (requests,))
        return WrkScript(PACED, (requests, repr(1000.0 * threads / rate)))


def start_wrk(
    url: str,
    script: WrkScript,
    connections: int,
    seconds: float,
    threads: int = 1,
    headers: tuple[str, ...] = (),
    niceness: int = 0,
) -> subprocess.Popen[str]:
    """wrk running `script`; `headers` ("Name: value") are sent with every request; `niceness` lowers
    its CPU priority (a client that would run on other machines in production)."""
    threads = max(1, min(threads, connections))
    args = [*(["nice", "-n", str(niceness)] if niceness else []),
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            *(a for h in headers for a in ("-H", h)),
            "-s", str(script.lua), url, "--", *script.args]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_on_exit(process)
    return process


def finish_wrk(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Wait for wrk; the numbers its script's done() printed."""
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:  # a timeout, or the benchmark interrupted: wrk must not run on
        process.kill()
        process.communicate()
        raise
    finally:
        if process.poll() is not None:
            forget(process)
    found = re.search(r"^RESULT (\{.*\})$", out, re.MULTILINE)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {out[-2000:]} {err[-2000:]}")
    result: dict[str, Any] = json.loads(found.group(1))
    return result


def run_wrk(
    url: str, script: WrkScript, connections: int, seconds: float, threads: int = 1
) -> dict[str, Any]:
    """wrk's numbers, plus its own CPU seconds (`wrk_cpu_s`)."""
    cpu_before = children_cpu_seconds()
    result = finish_wrk(start_wrk(url, script, connections, seconds, threads), seconds + 120)
    result["wrk_cpu_s"] = children_cpu_seconds() - cpu_before
    return result
