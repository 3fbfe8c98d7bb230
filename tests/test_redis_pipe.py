"""The batcher's connection to Redis, on its own: what it asks of the socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from conftest import RedisServer
from trackgate.redis_pipe import UNIX_SEND_BUFFER, RedisPipe, pack


def test_a_unix_socket_holds_several_flushes(private_redis: RedisServer) -> None:
    """Redis runs a command only once it has all of it: with the kernel's default 208 KiB a flush of
    50-event requests did not fit, and Redis waited for the worker to write the rest."""
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    value = b"x" * (3 * 1024 * 1024)

    async def exchange() -> tuple[int, list[Any]]:
        replies: list[Any] = []
        got = asyncio.Event()

        def on_reply(reply: Any) -> None:
            replies.append(reply)
            if len(replies) == 2:
                got.set()

        pipe = await RedisPipe.open(private_redis.unix_url, on_reply, lambda pipe, exc: None)
        try:
            sock = pipe._transport.get_extra_info("socket")  # type: ignore[union-attr]
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            pipe.write(pack("SET", "pipe-test", value) + pack("STRLEN", "pipe-test"))
            await asyncio.wait_for(got.wait(), 10)
        finally:
            pipe.close()
        return size, replies

    size, replies = asyncio.run(exchange())
    # Linux doubles the size asked for (its own bookkeeping) and caps it at net.core.wmem_max.
    assert size >= 2 * min(UNIX_SEND_BUFFER, wmem_max)
    assert replies == [b"OK", len(value)]
