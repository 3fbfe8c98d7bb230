"""The batcher's connection to the primary that Redis Sentinel names (`redis+sentinel://` targets).

Every connect asks the Sentinels again (`SENTINEL GET-MASTER-ADDR-BY-NAME`, each in turn until one
answers; the one that did is asked first next time), then checks that the node says `ROLE` master: a
Sentinel may still name a primary it is failing over from, and an old primary that comes back is a
primary by its own account until Sentinel demotes it. After a failover the batcher's lost connection
is followed by a connect to the promoted replica, whose marks the settle reads: a transaction is
replicated whole or not at all, so what the marks say there is what the new primary holds.
"""

from __future__ import annotations

from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from trackgate.redis_pipe import Connection, OnLost, OnReply, RedisPipe, ReplyError, pack
from trackgate.redis_target import Address, Sentinel

SENTINEL_TIMEOUT: Final = 0.5
"""Seconds one Sentinel may take to answer before the next is asked (the batcher bounds the whole
connect)."""


class SentinelPrimary:
    """Connects to the primary that the target's Sentinels know as its service."""

    def __init__(self, target: Sentinel) -> None:
        self._target = target
        self._sentinels = list(target.addresses)

    async def address(self) -> Address:
        """The primary's address, from the first Sentinel that knows it; ConnectionError when none does."""
        service = self._target.service
        failures = []
        for sentinel in list(self._sentinels):
            host, port = sentinel
            try:
                async with Redis(
                    host=host,
                    port=port,
                    password=self._target.sentinel_password,
                    socket_timeout=SENTINEL_TIMEOUT,
                    socket_connect_timeout=SENTINEL_TIMEOUT,
                ) as client:
                    found = await client.execute_command(  # type: ignore[no-untyped-call]
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", service
                    )
            except (RedisError, OSError) as err:
                failures.append(f"{host}:{port}: {err or type(err).__name__}")
                continue
            if not found:
                failures.append(f"{host}:{port} does not know {service!r}")
                continue
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)
            primary_host, primary_port = found
            return _text(primary_host), int(primary_port)
        raise ConnectionError(f"no Sentinel named the primary of {service!r}: " + "; ".join(failures))

    async def connect(self, on_reply: OnReply, on_lost: OnLost) -> Connection:
        """A pipe to the primary (the batcher's `Connect`); ConnectionError when the node Sentinel names
        is not a primary (yet, or any more)."""
        address = await self.address()
        pipe = await RedisPipe.open(self._target.node_url(address), on_reply, on_lost)
        try:
            [role] = await pipe.call([pack("ROLE")])
        except BaseException:
            pipe.close()
            raise
        if isinstance(role, ReplyError) or not role or role[0] != b"master":
            pipe.close()
            said = role if isinstance(role, ReplyError) else _text(role[0]) if role else "nothing"
            host, port = address
            raise ConnectionError(f"{host}:{port}, which Sentinel names the primary, says its role is {said}")
        return pipe


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
