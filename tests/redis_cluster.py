"""Real Redis deployments beyond one server, for the tests: a Redis Cluster of 3 primaries with one replica
each, and a primary with one replica watched by 3 Sentinels. Every process is a redis-server on a free
loopback port, in its own directory, killed with the fixture."""

from __future__ import annotations

import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import wait_for
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


class SentinelGroup:
    """A primary with one replica, watched by 3 Sentinels under the name `SERVICE`."""

    SERVICE = "trackgate"

    def __init__(self, directory: Path) -> None:
        self.primary = Node(directory / "primary", "--appendonly", "yes", "--appendfsync", "everysec")
        self.replica = Node(directory / "replica", "--appendonly", "yes", "--appendfsync", "everysec")
        self.sentinels = [Node(directory / f"sentinel{i}") for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def start(self) -> None:
        self.primary.start()
        self.replica.args = (*self.replica.args, "--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        for sentinel in self.sentinels:
            config = sentinel.directory / "sentinel.conf"
            config.write_text(
                f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.directory}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
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


@pytest.fixture
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"))
    try:
        group.start()
        yield group
    finally:
        group.stop()
