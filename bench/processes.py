"""The lifecycle of every process a benchmark starts, so that none outlives it, even when interrupted.

A server is started in its own process group and stopped by that group (SIGTERM, then SIGKILL after a grace
period); processes it started outside its group (the gateway's private redis-server runs in its own
session) are remembered by pid and start time once the server is up, and stopped the same way. Other
children (wrk) are killed on exit. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from procstat import comm, descendants, start_time

_SERVERS: list[Server] = []
_CHILDREN: list[subprocess.Popen[str]] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kill_on_exit(process: subprocess.Popen[str]) -> None:
    """Kill this child if the benchmark ends before it does."""
    _CHILDREN.append(process)


def forget(process: subprocess.Popen[str]) -> None:
    """A child passed to kill_on_exit that has ended."""
    if process in _CHILDREN:
        _CHILDREN.remove(process)


def _stop_all() -> None:
    for process in _CHILDREN:
        if process.poll() is None:
            process.kill()
            process.wait()
    _CHILDREN.clear()
    for server in reversed(_SERVERS[:]):
        server.stop()


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def servers_stopped_on_exit() -> Iterator[None]:
    """Stop every server and child on leaving, on exit, on Ctrl-C, SIGTERM and SIGHUP."""
    atexit.register(_stop_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        yield
    finally:
        _stop_all()


def run_main(main: Callable[[], int]) -> NoReturn:
    """A benchmark script's entry point: its exit code, or 130 when interrupted (the cleanup handlers
    have stopped every server it started by then)."""
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; every server it started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None


def _forked_children(root: int) -> list[int]:
    """The children of `root` that run its own command line."""
    try:
        command = Path(f"/proc/{root}/cmdline").read_bytes()
        children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
    except OSError:
        return []
    forked = []
    for child in children:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes() == command:
                forked.append(int(child))
    return forked


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
        _SERVERS.append(self)

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
        """Note every process now below the server, to stop those that leave its group too."""
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
        """The workers that answer requests: the root's children forked from it (sharing its command line:
        Granian's workers under `trackgate serve`, not its reports process nor multiprocessing's
        helper); else the processes below the root that are not Redis. A server without child processes
        is its own worker."""
        forked = _forked_children(self.process.pid)
        if forked:
            return forked
        own, _ = self.split_pids()
        workers = [pid for pid in own if pid != self.process.pid]
        return workers or [self.process.pid]

    def _alive_known(self) -> list[int]:
        return [pid for pid, started in self._known.items() if start_time(pid) == started]

    def stop(self, grace: float = 30) -> None:
        if self not in _SERVERS:
            return
        _SERVERS.remove(self)
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
