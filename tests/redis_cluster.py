"""Real Redis deployments beyond one server, for the tests: a Redis Cluster of 3 primaries with one replica
each, and a primary with one replica watched by 3 Sentinels. Every process is a redis-server on a free
loopback port, in its own directory, killed with the fixture."""

from __future__ import annotations

import random
import select
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import free_port, wait_for
from redis.cluster import ClusterNode, RedisCluster

NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout: how long a primary may be silent before its replica is promoted. Short, so that a
failover in a test takes a few seconds."""


def cluster_port() -> int:
    """A free port a cluster node can have: its bus listens 10000 higher, so below 55536."""
    while True:
        port = random.randrange(20000, 30000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class Node:
    """One redis-server, restartable on the same port and data."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = directory
        self.port = cluster_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--logfile", "redis.log", *self.args],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self.answers, 10, f"redis-server on {self.port} answering")

    def answers(self) -> bool:
        try:
            with self.client(timeout=0.2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self, timeout: float = 5) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to everyone else."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Cluster:
    """3 primaries, one replica each (`redis-cli --cluster create --cluster-replicas 1`)."""

    def __init__(self, directory: Path, primaries: int = 3) -> None:
        self.nodes = [
            Node(directory / f"node{i}", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
                 "--cluster-replica-validity-factor", "0",
                 "--appendonly", "yes",
                 "--appendfsync", "everysec")
            for i in range(2 * primaries)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """The gateway's `--redis-url`: every node a seed."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(node.address for node in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )  # fmt: skip
        self.wait_healthy()
        # A replica that has not finished its first sync cannot be promoted.
        wait_for(self._replicas_in_sync, 30, "every replica in sync")

    def _replicas_in_sync(self) -> bool:
        links = []
        for node in self.nodes:
            with node.client(timeout=0.5) as client:
                info = client.info("replication")
            if info.get("role") == "slave":
                links.append(info.get("master_link_status") == "up")
        return len(links) == len(self.nodes) // 2 and all(links)

    def healthy(self) -> bool:
        """Every running node says the cluster is ok, and every slot has a primary that answers."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                with node.client(timeout=0.5) as client:
                    info = client.execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def wait_healthy(self, timeout: float = 30) -> None:
        wait_for(self.healthy, timeout, "the cluster's state ok on every node")

    def client(self) -> RedisCluster:
        node = next(n for n in self.nodes if n.process is not None and n.process.poll() is None)
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", node.port)], socket_timeout=5)  # type: ignore[no-untyped-call]

    def primaries(self) -> list[Node]:
        """The nodes that are primaries now (a failover changes which)."""
        found = []
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                with node.client(timeout=0.5) as client:
                    role = client.execute_command("ROLE")
            except redis.RedisError:
                continue
            if role[0] in (b"master", "master"):
                found.append(node)
        return found

    def replica_of(self, primary: Node) -> Node:
        for node in self.nodes:
            if node is primary or node.process is None or node.process.poll() is not None:
                continue
            with node.client(timeout=0.5) as client:
                role = client.execute_command("ROLE")
            if role[0] in (b"slave", "slave") and int(role[2]) == primary.port:
                return node
        raise LookupError(f"no replica of {primary.address}")

    def owner(self, key: str) -> Node:
        """The primary serving `key`'s slot now."""
        with self.primaries()[0].client() as client:
            slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            ranges = client.execute_command("CLUSTER", "SLOTS")
        for start, end, primary, *_ in ranges:
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(f"no primary serves {key}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class LaggingLink:
    """A forwarder in front of a primary that puts the replica `lag` seconds behind it: on the connection
    that replicates (the one that sends REPLCONF), what the primary sends reaches the replica `lag`
    seconds late, and what is held when the primary goes away is lost with it; every other connection
    passes straight through."""

    def __init__(self, upstream_port: int, lag: float) -> None:
        self.port = free_port()
        self.upstream = upstream_port
        self.lag = lag
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()  # the primary is down: so is its address
                continue
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        replicating = False
        held: deque[tuple[float, bytes]] = deque()
        with client, server:
            while not self._stop:
                wait = max(0.0, held[0][0] - time.monotonic()) if held else 0.2
                readable, _, _ = select.select([client, server], [], [], wait)
                try:
                    for sock in readable:
                        data = sock.recv(1 << 20)
                        if not data:
                            return
                        if sock is client:
                            replicating = replicating or b"REPLCONF" in data
                            server.sendall(data)
                        elif replicating:
                            held.append((time.monotonic() + self.lag, data))
                        else:
                            client.sendall(data)
                    while held and held[0][0] <= time.monotonic():
                        client.sendall(held.popleft()[1])
                except OSError:
                    return  # either end gone (a primary killed resets): so is the link

    def close(self) -> None:
        self._stop = True
        self._listener.close()


class SentinelGroup:
    """A primary with one replica, watched by 3 Sentinels under the name `SERVICE`. With `lag`, the
    replica and the Sentinels reach the primary through a LaggingLink: the replica is `lag` seconds
    behind it, and the Sentinels name the link's address as the primary's until a failover."""

    SERVICE = "trackgate"

    def __init__(self, directory: Path, lag: float = 0.0) -> None:
        # Either may be the primary a replica syncs from: at once, not after the default 5 s.
        data = ("--appendonly", "yes", "--appendfsync", "everysec", "--repl-diskless-sync-delay", "0")
        self.primary = Node(directory / "primary", *data)
        self.replica = Node(directory / "replica", *data)
        self.sentinels = [Node(directory / f"sentinel{i}") for i in range(3)]
        self.link = LaggingLink(self.primary.port, lag) if lag else None
        # Where the replica and the Sentinels reach the primary.
        self.primary_port = self.link.port if self.link is not None else self.primary.port

    @property
    def url(self) -> str:
        hosts = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def start(self) -> None:
        self.primary.start()
        self.replica.args = (*self.replica.args, "--replicaof", "127.0.0.1", str(self.primary_port))
        self.replica.start()
        for sentinel in self.sentinels:
            config = sentinel.directory / "sentinel.conf"
            config.write_text(
                f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.directory}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            sentinel.process = subprocess.Popen(
                ["redis-server", str(config), "--sentinel", "--logfile", "sentinel.log"],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
            wait_for(sentinel.answers, 10, f"sentinel on {sentinel.port} answering")
        wait_for(self._replica_seen, 20, "the Sentinels seeing the replica")

    def _replica_seen(self) -> bool:
        with self.sentinels[0].client(timeout=0.5) as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.SERVICE)
        return bool(replicas)

    def primary_address(self) -> tuple[str, int]:
        with self.sentinels[0].client(timeout=0.5) as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        return (host.decode(), int(port))

    def wait_promoted(self, node: Node, timeout: float = 30) -> None:
        def promoted() -> bool:
            try:
                return self.primary_address()[1] == node.port
            except redis.RedisError:
                return False

        wait_for(promoted, timeout, f"Sentinel naming {node.address} the primary")

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.primary):
            node.stop()
        if self.link is not None:
            self.link.close()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster for one test module: tests that kill or move nodes leave it as they found it, or have
    their own."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _started(group: SentinelGroup) -> Iterator[SentinelGroup]:
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    yield from _started(SentinelGroup(tmp_path_factory.mktemp("sentinel")))


REPLICATION_LAG = 0.2
"""Seconds the replica of `lagging_sentinel_group` is behind its primary."""


@pytest.fixture
def lagging_sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A SentinelGroup whose replica is REPLICATION_LAG seconds behind the primary."""
    yield from _started(SentinelGroup(tmp_path_factory.mktemp("sentinel"), REPLICATION_LAG))
