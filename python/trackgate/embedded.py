"""The private redis-server that `trackgate serve` runs when no --redis-url is given.

Its data lives in the data directory (append-only file on, fsync every second). It listens on a Unix
socket there when the path is short enough (cheaper per command than TCP), else on a free loopback port;
the address is written to `redis.url` so that `trackgate project ...` finds a running instance.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import redis

INSTALL_HINT = "install it with `sudo apt-get install redis-server`, or pass --redis-url"
_SOCKET_NAME = "redis.sock"
_URL_FILE = "redis.url"
_LOCK_FILE = "lock"
# sun_path holds 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The private redis-server cannot be found, started or reached."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(url: str, timeout: float = 0.5) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


class DataDirLock:
    """Who owns the data directory: one `serve`, or one short-lived `project` command.

    An exclusive flock, released by the kernel when the process dies, so a crashed serve never blocks
    the next one."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / _LOCK_FILE
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def running_url(data_dir: Path) -> str | None:
    """The address of the embedded redis-server that a `serve` on this data directory runs, if any."""
    try:
        url = (data_dir / _URL_FILE).read_text().strip()
    except OSError:
        return None
    return url if url and _ping(url) else None


class EmbeddedRedis:
    """A redis-server child process with its data in `data_dir`."""

    def __init__(self, data_dir: Path, *, start_timeout: float = 15.0) -> None:
        self.data_dir = data_dir.resolve()
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._start_timeout = start_timeout

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(f"redis-server was not found on PATH: {INSTALL_HINT}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        sock_path = self.data_dir / _SOCKET_NAME
        # The server of an earlier serve that was killed with SIGKILL may still hold the data: stop it
        # first, since two servers appending to one file would corrupt it.
        self._stop_orphan()
        args = [
            binary,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # Redis' default (rewrite from 64 MB) forks a rewrite of the whole data set every few seconds
            # under load: a fork stall each time, and a second process re-serialising every stream. The
            # rewrite rate at each threshold is in bench/README.md.
            "--auto-aof-rewrite-min-size", "1gb",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "redis.log",
            "--pidfile", str(self.data_dir / "redis.pid"),
        ]  # fmt: skip
        if len(str(sock_path)) <= _MAX_SOCKET_PATH:
            sock_path.unlink(missing_ok=True)
            args += ["--port", "0", "--unixsocket", str(sock_path), "--unixsocketperm", "700"]
            self.url = f"unix://{sock_path}"
        else:
            port = _free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            self.url = f"redis://127.0.0.1:{port}"
        # Its own session: Ctrl-C in the terminal must reach serve, which stops Redis last, after the
        # workers have written their batches; a SIGINT straight to Redis would stop it under them.
        self._process = subprocess.Popen(  # noqa: S603 -- a fixed binary from PATH, our own arguments
            args,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self._start_timeout
        while not _ping(self.url, timeout=0.2):
            if self._process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with status {self._process.returncode}: {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(f"redis-server did not answer within {self._start_timeout:g} s")
            time.sleep(0.05)
        self._check_version()
        (self.data_dir / _URL_FILE).write_text(self.url + "\n")
        return self.url

    def _check_version(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            version = str(client.info("server").get("redis_version", "0"))
        if int(version.split(".")[0]) < 7:
            self.stop()
            raise EmbeddedRedisError(
                f"redis-server {version} is too old: trackgate needs Redis 7 (functions)"
            )

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-5:]) or "no log"

    def _stop_orphan(self) -> None:
        try:
            pid = int((self.data_dir / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"redis-server" not in cmdline.read():
                    return
            os.kill(pid, 15)
        except (OSError, ProcessLookupError):
            return
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM makes redis-server fsync its append-only file and exit."""
        process, self._process = self._process, None
        with contextlib.suppress(OSError):
            (self.data_dir / _URL_FILE).unlink()
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
