"""The batcher's connection to Redis, on its own: what it asks of the socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from conftest import RedisServer
from trackgate.redis_pipe import UNIX_SEND_BUFFER, RedisPipe, pack


def exchange(url: str, data: bytes, skips: list[int]) -> tuple[RedisPipe, list[Any], int]:
    """Open a pipe to `url`, write `data` with `skips`, and return the pipe (closed), the replies handed
    over (one per entry of `skips`) and the size of the socket's send buffer."""

    async def run() -> tuple[RedisPipe, list[Any], int]:
        replies: list[Any] = []
        got = asyncio.Event()

        def on_reply(reply: Any) -> None:
            replies.append(reply)
            if len(replies) == len(skips):
                got.set()

        pipe = await RedisPipe.open(url, on_reply, lambda pipe, exc: None)
        try:
            sock = pipe._transport.get_extra_info("socket")  # type: ignore[union-attr]
            send_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            pipe.write(data, skips)
            await asyncio.wait_for(got.wait(), 10)
        finally:
            pipe.close()
        return pipe, replies, send_buffer

    return asyncio.run(run())


def test_a_unix_socket_holds_several_flushes(private_redis: RedisServer) -> None:
    """Redis runs a command only once it has all of it: with the kernel's default 208 KiB a flush of
    50-event requests did not fit, and Redis waited for the worker to write the rest."""
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    value = b"x" * (3 * 1024 * 1024)
    data = pack("SET", "pipe-test", value) + pack("STRLEN", "pipe-test")
    _, replies, size = exchange(private_redis.unix_url, data, [0, 0])
    # Linux doubles the size asked for (its own bookkeeping) and caps it at net.core.wmem_max.
    assert size >= 2 * min(UNIX_SEND_BUFFER, wmem_max)
    assert replies == [b"OK", len(value)]


def test_replies_passed_over_are_not_handed_to_the_owner(private_redis: RedisServer) -> None:
    """A transaction's OK and QUEUEDs are passed over, EXEC's reply handed over; an error among those
    passed over (a command refused when queued) is kept, since EXEC's own error does not say what it was."""
    good = pack("MULTI") + pack("SET", "pipe-a", "1") + pack("INCR", "pipe-b") + pack("EXEC")
    bad = pack("MULTI") + pack("SET", "pipe-a") + pack("EXEC")  # SET with one argument: refused
    pipe, (first, ping, aborted), _ = exchange(private_redis.url, good + pack("PING") + bad, [3, 0, 2])
    assert first == [b"OK", 1]
    assert ping == b"PONG"
    assert "EXECABORT" in str(aborted)
    assert "wrong number of arguments" in str(pipe.passed_error)
