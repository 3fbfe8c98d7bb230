"""Fixtures for the gateway tests: real redis-server processes and real `trackgate serve` processes
(Granian), each on a free loopback port, plus a TCP proxy that can lose a Redis reply on purpose."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests
from playwright.sync_api import Browser, sync_playwright
from redis.cluster import RedisCluster
from trackgate import bounds, keys, store
from trackgate._native import PartitionBatch
from trackgate.flush import Parts, Section, add_batch
from trackgate.keys import stream_key

BIN = Path(sys.executable).parent
TRACKGATE = str(BIN / "trackgate")
PARTITIONS = 4
PRIVATE_DB = 7
"""The database `RedisServer.private_client` empties for each test that asks for it."""
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The fixtures of a Redis Cluster and of Sentinel.
pytest_plugins = ["redis_cluster"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.02)


class RedisServer:
    """A redis-server with an append-only file, restartable on the same port and data."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def unix_url(self) -> str:
        """The same server on a Unix socket, as the gateway's private Redis is reached."""
        return f"unix://{self.directory / 'redis.sock'}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--unixsocket", str(self.directory / "redis.sock"), "--unixsocketperm", "700",
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self._answers, 10, "redis-server answering")

    def _answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last fsync -- what a crash looks like to the gateway."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, db=db)

    def private_client(self) -> redis.Redis:
        """A client of a database of its own, emptied: for tests that look at a partition's shared keys
        (the dedup sets, the marks), which every test writing to that partition would otherwise share."""
        client = self.client(db=PRIVATE_DB)
        client.flushdb()
        return client


class Gateway:
    """`trackgate serve` in a subprocess."""

    def __init__(self, directory: Path, *args: str, redis_url: str | None) -> None:
        self.directory = directory
        self.port = free_port()
        self.reports_port = free_port()
        self.args = list(args)
        self.redis_url = redis_url
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "serve.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def reports_url(self, path: str) -> str:
        """The query API and the dashboard, which the reports process serves on a port of its own."""
        return f"http://127.0.0.1:{self.reports_port}{path}"

    def start(self, timeout: float = 30) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [TRACKGATE, "serve", "--port", str(self.port), "--reports-port", str(self.reports_port)]
        command += ["--data-dir", str(self.directory / "data")]
        if self.redis_url:
            command += ["--redis-url", self.redis_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, *self.args], stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, env=env
            )
        wait_for(self._ready, timeout, f"gateway ready ({self.log_path})")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"trackgate serve exited {self.process.returncode}: {self.log()}")
        try:
            return (
                requests.get(self.url("/readyz"), timeout=1).status_code == 200
                and requests.get(self.reports_url("/healthz"), timeout=1).status_code == 200
            )
        except requests.RequestException:
            return False

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The Granian workers that answer /track: the children of `trackgate serve` that Granian forked
        from it (the reports process and multiprocessing's helper start from a new interpreter)."""
        assert self.process is not None
        pid = self.process.pid
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return [child for child in children if Path(f"/proc/{child}/cmdline").read_bytes() == command]


def create_project(redis_url: str, name: str, token: str | None = None) -> str:
    """Through the real CLI, as an operator would."""
    return create_project_keys(redis_url, name, token)[0]


def create_project_keys(redis_url: str, name: str, token: str | None = None, *extra: str) -> tuple[str, str]:
    """A new project's token and API secret, through the real CLI."""
    args = [TRACKGATE, "project", "create", name, "--redis-url", redis_url, *extra]
    if token:
        args += ["--token", token]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert set(lines) == {"token", "secret"}
    return lines["token"], lines["secret"]


def partition_of(distinct_id: str) -> int:
    """The decoder's partition function (CRC-32 of the distinct_id), as downstream tools would compute it."""
    return zlib.crc32(distinct_id.encode()) % PARTITIONS


def stream_entries(client: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XRANGE of a whole stream, typed as this suite's clients (no decode_responses) answer it."""
    return cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key))


def stored_events(client: redis.Redis, token: str) -> list[dict[str, Any]]:
    """Every event stored for a project, all partitions."""
    found = []
    for partition in range(PARTITIONS):
        for _id, fields in stream_entries(client, stream_key(token, partition)):
            found.append(json.loads(fields[b"data"]))
    return found


def send_packed(client: redis.Redis, command: bytes, replies: int = 1, key: str | None = None) -> Any:
    """Sends commands already packed in RESP, as the batcher does, and returns the last of their
    `replies`. On a cluster they go to the primary serving `key`'s slot."""
    if isinstance(client, RedisCluster):
        assert key is not None, "a cluster needs the key that says where the commands go"
        client = client.get_redis_connection(client.get_node_from_key(key))
    conn = client.connection_pool.get_connection()
    try:
        conn.send_packed_command([command])  # type: ignore[no-untyped-call]
        for _ in range(replies - 1):
            conn.read_response()
        return conn.read_response()
    finally:
        client.connection_pool.release(conn)


Batch = PartitionBatch
"""A decoded request's batch: token, partition, events, packed arguments, packed, XADDs."""


def _slot(seq: int, slot: int | None) -> int:
    """A transaction's slot in its partition's ring: by default, seq's own."""
    return seq % store.RING_SLOTS if slot is None else slot


def send_write(
    client: redis.Redis,
    writer: bytes,
    seq: int,
    batches: list[Batch],
    *,
    slot: int | None = None,
    window: int = 30 * 86400,
    maxlen: int = 0,
    max_age: float = 0,
    late: float = 400 * 86400,
    caps: bounds.Caps = bounds.DEFAULT_CAPS,
    dedup_window: int = store.DEFAULT_DEDUP_WINDOW,
) -> Any:
    """One partition's transaction as the batcher builds it from `batches` (one or more requests'
    batches for the same partition, of one project or more, joined in a section per project), its seq
    in `slot` of the ring (default: seq's own slot); returns EXEC's reply: the mark's two (SETRANGE,
    EXPIRE), one per XADD (the sections' in turn), the FCALL's."""
    partition = batches[0].partition
    events = sum(b.count for b in batches)
    out: list[bytes] = []
    store.WriteCommands(maxlen, max_age, late, dedup_window=dedup_window).transaction(
        out, partition, writer, seq, _slot(seq, slot), _sections(batches), lambda _: window, lambda _: caps
    )
    key = keys.shared_prefix(partition)
    return send_packed(client, b"".join(out), store.transaction_replies(events) + 1, key)


def _sections(batches: list[Batch]) -> list[Section]:
    """A partition's batches in a section per project, as a flush joins them."""
    parts: Parts = {}
    for request, batch in enumerate(batches):
        add_batch(parts, batch, request)
    [sections] = parts.values()
    return list(sections.values())


def send_count(
    client: redis.Redis,
    writer: bytes,
    seq: int,
    batches: list[Batch],
    *,
    slot: int | None = None,
    window: int = 30 * 86400,
    late: float = 400 * 86400,
) -> Any:
    """The FCALL of a transaction alone, as the batcher resends it when only the counting failed: under
    the transaction's seq and slot (default: seq's own slot)."""
    partition = batches[0].partition
    batch_id = store.batch_id(writer, seq, _slot(seq, slot))
    out: list[bytes] = []
    store.WriteCommands(0, 0, late).call(
        out,
        partition,
        batch_id,
        _sections(batches),
        lambda _: window,
        lambda _: bounds.DEFAULT_CAPS,
        alone=True,
    )
    return send_packed(client, b"".join(out), key=keys.shared_prefix(partition))


def stored_with(client: redis.Redis, token: str, prop: str, value: object) -> list[dict[str, Any]]:
    return [e for e in stored_events(client, token) if e["properties"].get(prop) == value]


class ReplyDropper:
    """A TCP proxy in front of Redis that, when armed, closes the connection that sent the next FCALL
    right after Redis has answered it, before the answer reaches the gateway: a lost reply. With `delay`,
    Redis' answers reach the gateway that many seconds late (a slow Redis: several flushes in flight).

    With `stall` set, the next connection to send a transaction goes silent: what the gateway sends on it
    is held, nothing comes back. Once the gateway has given up on it and closed it, the held commands
    reach Redis `late` seconds later, on the same Redis connection: commands still in flight when a
    connection was lost, that Redis runs after the gateway has moved on (`late_delivered` then says
    whether Redis still took them).

    With `mute` set, Redis' answers are thrown away: the gateway hears nothing on any connection. With
    `mute_after` set to some bytes, `mute` is set once an answer holding them has reached the gateway."""

    def __init__(self, upstream_port: int, delay: float = 0.0, late: float = 2.0) -> None:
        self.port = free_port()
        self.reports_port = free_port()
        self.upstream = upstream_port
        self.delay = delay
        self.late = late
        self.armed = threading.Event()
        self.dropped = threading.Event()
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.mute = threading.Event()
        self.mute_after: bytes | None = None
        self.late_delivered: bool | None = None
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            thread = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        saw_fcall = False
        held: list[bytes] | None = None
        with client, server:
            while not self._stop:
                readable, _, _ = select.select([client, server], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(1 << 20)
                    if not data:
                        if sock is client and held:
                            self._deliver_late(server, b"".join(held))
                        return
                    if held is None and sock is client and self.stall.is_set() and b"MULTI" in data:
                        self.stall.clear()
                        self.stalled.set()
                        held = []
                    if held is not None:
                        if sock is client:
                            held.append(data)
                        continue
                    if sock is client:
                        saw_fcall = saw_fcall or b"FCALL" in data
                        server.sendall(data)
                    elif saw_fcall and self.armed.is_set():
                        self.armed.clear()
                        self.dropped.set()
                        return
                    elif self.mute.is_set():
                        continue
                    else:
                        if self.delay:
                            time.sleep(self.delay)
                        client.sendall(data)
                        if self.mute_after is not None and self.mute_after in data:
                            self.mute_after = None
                            self.mute.set()

    def _deliver_late(self, server: socket.socket, data: bytes) -> None:
        time.sleep(self.late)
        try:
            server.sendall(data)
            server.settimeout(2)
            self.late_delivered = bool(server.recv(1 << 20))  # Redis' replies, or its end of a killed one
        except OSError:
            self.late_delivered = False

    def close(self) -> None:
        self._stop = True
        self._listener.close()


class Load:
    """Client threads posting small batches with unique sequence numbers, recording every answer."""

    def __init__(self, gateway: Gateway, token: str, threads: int = 6, batch: int = 1) -> None:
        self.gateway = gateway
        self.token = token
        self.run = uuid.uuid4().hex
        self.batch = batch
        self.results: list[tuple[int, int, str, str | None]] = []  # (first seq, status, body, retry-after)
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(threads)]

    def _event(self, seq: int) -> dict[str, object]:
        properties = {"token": self.token, "distinct_id": f"u{seq % 97}", "run": self.run, "seq": seq}
        return {"event": "load", "properties": properties}

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                with self._lock:
                    first = next(self._seq) * self.batch
                events = [self._event(first + i) for i in range(self.batch)]
                try:
                    r = session.post(
                        self.gateway.url("/track"), data={"data": json.dumps(events)}, timeout=15
                    )
                except requests.RequestException:
                    with self._lock:
                        self.results.append((first, 0, "", None))
                    time.sleep(0.01)
                    continue
                with self._lock:
                    self.results.append((first, r.status_code, r.text, r.headers.get("retry-after")))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def count(self, status: int, since: int = 0) -> int:
        with self._lock:
            return sum(1 for r in self.results[since:] if r[1] == status)

    def mark(self) -> int:
        with self._lock:
            return len(self.results)

    def acknowledged(self) -> set[int]:
        """Every event of every request answered `1`."""
        with self._lock:
            return {r[0] + i for r in self.results if (r[1], r[2]) == (200, "1") for i in range(self.batch)}


# Fixtures


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis",
        choices=("single", "cluster"),
        default="single",
        help="what the session's Redis is: one redis-server, or a Redis Cluster of 3 primaries with a "
        "replica each (`make test` runs the end-to-end modules that matter on both)",
    )


class ClusterAsServer(RedisServer):
    """The session's Redis when the suite runs on a cluster (`--redis cluster`): its URL and a client, as
    a RedisServer's; killing or restarting it is for the cluster's own tests."""

    def __init__(self, directory: Path) -> None:
        from redis_cluster import Cluster

        super().__init__(directory)
        self.cluster = Cluster(directory / "cluster")

    @property
    def url(self) -> str:
        return self.cluster.url

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    def kill(self) -> None:
        raise NotImplementedError("a test that kills the session's Redis runs on one redis-server only")

    def client(self, db: int = 0) -> redis.Redis:
        assert db == 0, "a Redis Cluster has one database"
        return cast(redis.Redis, self.cluster.client())


@pytest.fixture(scope="session")
def redis_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    directory = tmp_path_factory.mktemp("redis")
    server = (
        ClusterAsServer(directory)
        if request.config.getoption("--redis") == "cluster"
        else RedisServer(directory)
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rclient(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


@pytest.fixture(scope="session")
def token(redis_server: RedisServer) -> str:
    return create_project(redis_server.url, "tests")


@pytest.fixture(scope="session")
def gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Default settings, plus redirect hosts and trusted proxies (loopback and 10/8)."""
    gw = Gateway(
        tmp_path_factory.mktemp("gateway"),
        "--redirect-hosts", "example.com,shop.example.org",
        "--trusted-proxies", "127.0.0.1,10.0.0.0/8",
        redis_url=redis_server.url,
    )  # fmt: skip
    gw.start()
    yield gw
    gw.stop()


# The origins of the pages in the captured mixpanel-browser requests.
CAPTURE_ORIGIN = "http://127.0.0.1:46359"
CAPTURE_ORIGIN_GET_FIRST = "http://127.0.0.1:38077"


@pytest.fixture(scope="session")
def tuned_gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """An allow-list of origins, a 100 kB request cap, a body timeout of 1 s, no trusted proxies, and
    events accepted from ten years back (the captured requests carry the capture day's times)."""
    gw = Gateway(
        tmp_path_factory.mktemp("tuned"),
        "--allowed-origins", f"https://app.example.com,{CAPTURE_ORIGIN},{CAPTURE_ORIGIN_GET_FIRST}",
        "--max-request-bytes", "100000",
        "--body-timeout", "1",
        "--max-age", str(10 * 365 * 86400),
        redis_url=redis_server.url,
    )  # fmt: skip
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium)")
    with sync_playwright() as playwright:
        # Debian's Chromium, never a downloaded one; headless (Playwright's default).
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of one test's own, for tests that stop it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    with contextlib.suppress(Exception):
        server.stop()
