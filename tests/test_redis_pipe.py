"""The batcher's connection to Redis, on its own: what it asks of the socket, and its reader of replies
(hiredis, which redis-py brings, is the reference)."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

import hiredis
import pytest
from conftest import RedisServer
from trackgate._native import ReplyError, ReplyReader
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
    """Redis runs a command only once it has all of it: a flush that does not fit in the socket's send
    buffer (the kernel's default may be smaller than one) leaves Redis waiting for the worker to write
    the rest."""
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


# The reader, fed as a socket would: replies cut anywhere.

SAMPLE_REPLIES = [
    b"+OK\r\n",
    b"+QUEUED\r\n",
    b"-ERR unknown command 'FOO'\r\n",
    b":0\r\n",
    b":-42\r\n",
    b":9223372036854775807\r\n",
    b"$5\r\nhello\r\n",
    b"$4\r\na\r\nb\r\n",  # CRLF inside a bulk string is data
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*4\r\n:1\r\n$15\r\n1732626000000-0\r\n-WRONGTYPE Operation against a key\r\n*2\r\n$-1\r\n+OK\r\n",
]


def plain(reply: Any) -> Any:
    """A reply in comparable form: error replies by class name and text."""
    if isinstance(reply, Exception):
        return (type(reply).__name__, str(reply))
    if isinstance(reply, list):
        return [plain(r) for r in reply]
    return reply


def test_the_reader_gives_what_hiredis_gives_however_the_bytes_are_cut() -> None:
    rng = random.Random(5)
    for _ in range(300):
        data = b"".join(rng.choice(SAMPLE_REPLIES) for _ in range(12))
        ours, theirs = ReplyReader(), hiredis.Reader()
        got: list[Any] = []
        expected: list[Any] = []
        at = 0
        while at < len(data):
            cut = rng.randint(1, 9)
            for reader, out in ((ours, got), (theirs, expected)):
                reader.feed(data[at : at + cut])
                while (reply := reader.gets()) is not False:
                    out.append(plain(reply))
            at += cut
        assert got == expected
        assert len(got) == 12
        assert not ours.has_data()


def test_the_reader_passes_over_whole_replies_only() -> None:
    reader = ReplyReader()
    reader.feed(b"+OK\r\n-OOM command not allowed\r\n*2\r\n:1\r\n")
    passed, error = reader.skip(3)
    # The array is not whole yet: two passed over, the error among them kept.
    assert passed == 2
    assert isinstance(error, ReplyError)
    assert str(error) == "OOM command not allowed"
    reader.feed(b":2\r\n$2\r\nok\r\n")
    assert reader.skip(1) == (1, None)
    assert reader.gets() == b"ok"
    assert reader.gets() is False


def test_the_reader_refuses_what_is_not_resp() -> None:
    for bad in (b"?what\r\n", b":12x\r\n", b"$-7\r\n", b"$2\r\nabc\r\n", b"*1\r\n" * 40):
        reader = ReplyReader()
        reader.feed(bad)
        with pytest.raises(ValueError, match="not RESP2"):
            reader.gets()


def test_a_reply_to_no_command_drops_the_connection(private_redis: RedisServer) -> None:
    """Had a reply come with no command waiting for it, every later reply would be matched to the wrong
    command: the pipe gives the connection up instead, so what was sent on it is sent again."""

    replies: list[Any] = []

    async def run() -> BaseException | None:
        lost: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        pipe = await RedisPipe.open(private_redis.url, replies.append, lambda p, exc: lost.set_result(exc))
        pipe.write(pack("PING") + pack("PING"), [0])  # two commands, one reply expected
        try:
            return await asyncio.wait_for(lost, 10)
        finally:
            pipe.close()

    assert "reply to no command" in str(asyncio.run(run()))
    assert replies == [b"PONG"]
