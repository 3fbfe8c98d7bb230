"""Where trackgate's data lives, as `--redis-url` says: one Redis, a Redis Cluster, or a primary that
Redis Sentinel watches.

- `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS), `unix://[[user]:password@]/path?db=N`:
  one Redis, read by redis-py's own parser (its query parameters too).
- `redis+cluster://[[user]:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS): a Redis
  Cluster, found through these seed nodes (any one that answers gives the others). The credentials and
  the TLS parameters of the query string are every node's.
- `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]` (`rediss+sentinel://`): the
  primary that these Sentinels know as `service`, asked for again after every lost connection. The
  credentials and TLS parameters are the data nodes'; the Sentinels are asked without (a query parameter
  `sentinel_password=` gives theirs).

Everything that talks to Redis is given the parsed target, and asks it for the URL of one node
(`node_url`), or for a redis-py client (`client`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel as SentinelClient
from redis.connection import parse_url

CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEMES: Final = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
DEFAULT_PORT: Final = 6379
DEFAULT_SENTINEL_PORT: Final = 26379

Address = tuple[str, int]
"""A node's host and port."""
RedisClient = Redis | RedisCluster
"""What `client` gives: redis-py's client of one Redis (or of the primary Sentinel names), or of a
Cluster."""


@dataclass(frozen=True, slots=True)
class Single:
    """One Redis."""

    url: str

    def node_url(self, address: Address | None = None) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class _Nodes:
    """What a cluster's and a Sentinel's URL share: the seed addresses, and how to reach any node."""

    addresses: tuple[Address, ...]
    scheme: str  # redis or rediss: the data nodes'
    userinfo: str  # `user:password@`, or empty
    query: str  # the data nodes' query parameters (TLS)

    def node_url(self, address: Address) -> str:
        """The `redis://` URL of one data node, with the target's credentials and TLS parameters."""
        host, port = address
        host = f"[{host}]" if ":" in host else host
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.userinfo}{host}:{port}{query}"


@dataclass(frozen=True, slots=True)
class Cluster(_Nodes):
    """A Redis Cluster, through its seed nodes."""


@dataclass(frozen=True, slots=True)
class Sentinel(_Nodes):
    """The primary that the Sentinels at `addresses` know as `service`."""

    service: str = ""
    db: int = 0
    sentinel_password: str | None = None

    def node_url(self, address: Address) -> str:
        url = _Nodes.node_url(self, address)
        if not self.db:
            return url
        head, _, query = url.partition("?")
        return f"{head}/{self.db}" + (f"?{query}" if query else "")


Target = Single | Cluster | Sentinel


def parse(url: str) -> Target:
    """The target a `--redis-url` names; ValueError saying what is wrong with it."""
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        path, addresses, userinfo, query = _nodes(url, DEFAULT_PORT)
        if path.strip("/"):
            raise ValueError("a cluster URL has no path: every node's database is 0")
        return Cluster(addresses, CLUSTER_SCHEMES[scheme], userinfo, query)
    if scheme in SENTINEL_SCHEMES:
        whole, addresses, userinfo, query = _nodes(url, DEFAULT_SENTINEL_PORT)
        names = [p for p in whole.split("/") if p]
        if not names or len(names) > 2:
            raise ValueError(
                "a Sentinel URL names the service after the hosts: redis+sentinel://host:port/mymaster"
            )
        db = 0
        if len(names) == 2:
            if not names[1].isdigit():
                raise ValueError(f"database {names[1]!r} is not a number")
            db = int(names[1])
        params = dict(parse_qsl(query, keep_blank_values=True))
        sentinel_password = params.pop("sentinel_password", None)
        return Sentinel(
            addresses, SENTINEL_SCHEMES[scheme], userinfo, urlencode(params), names[0], db, sentinel_password
        )
    parse_url(url)  # type: ignore[no-untyped-call]  # raises ValueError for what it cannot read
    return Single(url)


def _nodes(url: str, default_port: int) -> tuple[str, tuple[Address, ...], str, str]:
    """A cluster's or Sentinel's URL: its path, its addresses, its `user:password@` and its query."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    addresses: list[Address] = []
    for item in hosts.split(","):
        host, port = _address(item.strip(), default_port)
        addresses.append((host, port))
    if not addresses:
        raise ValueError("no host: name at least one node, host:port")
    return parts.path, tuple(addresses), f"{userinfo}@" if userinfo else "", parts.query


def _address(item: str, default_port: int) -> Address:
    if not item:
        raise ValueError("an empty host in the list: host:port,host:port")
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"no host in {item!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} of {item!r} is not a port number")
    return host, int(port_text)


def client(target: Target, *, timeout: float, connect_timeout: float) -> RedisClient:
    """A redis-py client of the target: of the one Redis, of the Cluster (it follows MOVED and ASK), or of
    the primary that Sentinel names (asked again when its connection is lost)."""
    if isinstance(target, Single):
        return Redis.from_url(target.url, socket_timeout=timeout, socket_connect_timeout=connect_timeout)
    options = dict(parse_url(target.node_url(target.addresses[0])))  # type: ignore[no-untyped-call]
    options.pop("host", None)
    options.pop("port", None)
    options.update(socket_timeout=timeout, socket_connect_timeout=connect_timeout)
    if isinstance(target, Cluster):
        options.pop("db", None)
        options.pop("connection_class", None)
        if target.scheme == "rediss":
            options["ssl"] = True
        nodes = [ClusterNode(host, port) for host, port in target.addresses]
        return RedisCluster(startup_nodes=nodes, **options)
    primary: Redis = _sentinels(target, timeout, connect_timeout, options).master_for(
        target.service, socket_timeout=timeout
    )
    return primary


async def primary_address(target: Sentinel, *, socket_timeout: float) -> Address:
    """The address of the primary that the Sentinels name now (for a connection of one's own)."""
    host, port = await _sentinels(target, socket_timeout, socket_timeout, {}).discover_master(target.service)
    return str(host), int(port)


def _sentinels(
    target: Sentinel, timeout: float, connect_timeout: float, options: dict[str, Any]
) -> SentinelClient:
    return SentinelClient(
        list(target.addresses),
        sentinel_kwargs={
            "password": target.sentinel_password,
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
        },
        **options,
    )
