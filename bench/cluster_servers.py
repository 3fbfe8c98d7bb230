"""A private Redis Cluster for the bench: primaries with one replica each, every node a redis-server of
the bench's own (`redis_servers.start_redis`: the gateway's persistence, stopped with the bench), joined
with `redis-cli --cluster create`."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis_servers import RedisNode, start_redis

NODE_TIMEOUT_MS = 15_000
"""cluster-node-timeout, Redis's default: a node starved of CPU for a moment by the load on a small
machine must not be failed over in the middle of a run."""

CLUSTER_ARGS = (
    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
)  # fmt: skip


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too, both below the kernel's ephemeral
    ports (`ip_local_port_range`), where `processes.free_port` would hand a bus port to another server."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(low - 12_000, low - 10_000)
        with socket.socket() as node, socket.socket() as bus:
            try:
                node.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def start_cluster(work: Path, primaries: int = 3) -> list[RedisNode]:
    """`primaries` primaries with one replica each, once every node says the cluster is ok and every
    replica has finished its first sync."""
    nodes = []
    for i in range(2 * primaries):
        server, url = start_redis(work, f"cluster-node{i}", port=_cluster_port(), extra=CLUSTER_ARGS)
        nodes.append(RedisNode(f"node{i}", server, url))
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(node.address for node in nodes),
         "--cluster-replicas", "1", "--cluster-yes"],
        check=True, stdout=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not _ready(nodes, primaries):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not become ready within 60 s")
        time.sleep(0.2)
    return nodes


def _ready(nodes: list[RedisNode], primaries: int) -> bool:
    """Every node says cluster_state:ok, and `primaries` replicas have their primary's link up."""
    replicas_in_sync = 0
    for node in nodes:
        try:
            with node.client(timeout=1) as client:
                state = client.execute_command("CLUSTER", "INFO")
                replication = client.info("replication")
        except redis.RedisError:
            return False
        text = state.decode() if isinstance(state, bytes) else str(state)
        if "cluster_state:ok" not in text:
            return False
        if replication.get("role") == "slave" and replication.get("master_link_status") == "up":
            replicas_in_sync += 1
    return replicas_in_sync == primaries


def cluster_url(nodes: list[RedisNode]) -> str:
    """The gateway's `--redis-url`: every node a seed."""
    return "redis+cluster://" + ",".join(node.address for node in nodes)
