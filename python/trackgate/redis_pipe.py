"""The batcher's Redis connection: already-packed commands out, replies in, pipelined without limit.

redis-py's asyncio connection reads one reply per await, through a stream reader and a parser object;
with many write commands in flight that reading costs more than building the commands. Here an asyncio
protocol feeds whatever bytes arrive to a reader and hands each complete reply, in order, to the
owner's callback, with no await and no task switch per reply. Matching replies to commands is the
owner's job: Redis answers the commands of one connection in the order they were sent.

The reader is the native one: a transaction answers `+QUEUED` once per event before EXEC's array, and
those replies, which the owner asks to pass over, are passed over in Rust, with no Python object and no
Python loop iteration each; hiredis would build every one of them for a Python loop to discard.

The URL is read by redis-py's own parser, so `--redis-url` means the same here as everywhere else:
`redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS; `ssl_cert_reqs`, `ssl_ca_certs`,
`ssl_certfile`, `ssl_keyfile` and `ssl_check_hostname` in the query string), and
`unix://[[user]:password@]/path?db=N`.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from redis.asyncio.connection import SSLConnection, parse_url

from trackgate._native import ReplyError as ReplyError  # what a reply is when Redis answered `-ERR ...`
from trackgate._native import ReplyReader

# A Unix socket's send buffer bounds what is in flight to Redis, and the kernel's default can hold less than
# one flush. Redis cannot run a command before it has all of it, so it would wait, idle, for the worker's
# loop to come round and write the rest. This size (the kernel caps it at net.core.wmem_max) lets several
# flushes wait in the socket. TCP sizes its own buffers.
UNIX_SEND_BUFFER: Final = 4 * 1024 * 1024

_RUN_ID: Final = re.compile(rb"^run_id:(\w+)", re.MULTILINE)
_CERT_REQS: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack(*args: bytes | str) -> bytes:
    """One command in RESP, for those that the decoder does not pack."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a.encode() if isinstance(a, str) else a) for a in args)


class Connection(Protocol):
    """What the batcher uses of a connection: RedisPipe's interface, which a test's fake can script."""

    client_id: int | None
    run_id: bytes | None
    passed_error: ReplyError | None

    async def call(self, commands: list[bytes]) -> list[Any]: ...
    def write(self, data: bytes, skips: list[int]) -> None: ...
    def close(self) -> None: ...


OnReply = Callable[[Any], None]
"""Called with each reply handed over, in order."""
OnLost = Callable[[Connection, Exception], None]
"""Called once when a connection is gone, whoever closed it."""


class RedisPipe(asyncio.Protocol):
    """One connection. `on_reply(reply)` is called for each reply in order (a `ReplyError` for an error
    reply), except those the writer asked to pass over; `on_lost(pipe, exc)` once, when the connection is
    gone, whoever closed it."""

    def __init__(self, on_reply: OnReply, on_lost: OnLost) -> None:
        self.on_reply = on_reply
        self._on_lost = on_lost
        self._reader = ReplyReader()
        self._transport: asyncio.Transport | None = None
        self._lost = False
        self.client_id: int | None = None  # Redis' id of this connection (CLIENT KILL ID closes it)
        self.run_id: bytes | None = None  # the Redis process's: ids are only unique within one
        self._call: asyncio.Future[None] | None = None
        # Per reply still to hand over, how many replies before it to pass over (a transaction's OK and
        # QUEUEDs): a Python call saved per event.
        self._skips: deque[int] = deque()
        self.passed_error: ReplyError | None = None  # the last error among the replies passed over

    @classmethod
    async def open(cls, url: str, on_reply: OnReply, on_lost: OnLost) -> RedisPipe:
        """Connect, authenticate and select the database (the caller bounds the time); raises OSError
        (ConnectionError when Redis refuses the set-up)."""
        options: dict[str, Any] = dict(parse_url(url))
        loop = asyncio.get_running_loop()
        pipe = cls(on_reply, on_lost)
        if "path" in options:
            await loop.create_unix_connection(lambda: pipe, options["path"])
        else:
            tls = _tls_context(options) if options.get("connection_class") is SSLConnection else None
            await loop.create_connection(
                lambda: pipe,
                options.get("host", "localhost"),
                options.get("port", 6379),
                ssl=tls,
                server_hostname=options.get("host", "localhost") if tls else None,
            )
        try:
            await pipe._handshake(options)
        except BaseException:
            pipe.close()
            raise
        return pipe

    async def _handshake(self, options: dict[str, Any]) -> None:
        commands = []
        if options.get("password") is not None:
            if options.get("username"):
                commands.append(pack("AUTH", options["username"], options["password"]))
            else:
                commands.append(pack("AUTH", options["password"]))
        if options.get("db"):
            commands.append(pack("SELECT", str(options["db"])))
        commands += [pack("CLIENT", "ID"), pack("INFO", "server")]
        *replies, client_id, info = await self.call(commands)
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise ConnectionError(f"Redis refused the connection's set-up: {reply}")
        # A Redis user without +client|id can still write; the batcher says what that costs.
        self.client_id = None if isinstance(client_id, ReplyError) else client_id
        found = None if isinstance(info, ReplyError) else _RUN_ID.search(info)
        self.run_id = found.group(1) if found else None

    async def call(self, commands: list[bytes]) -> list[Any]:
        """Send `commands` and wait for their replies, while nothing else is in flight on the pipe (the
        caller bounds the time)."""
        owner = self.on_reply
        replies: list[Any] = []
        done = self._call = asyncio.get_running_loop().create_future()

        def collect(reply: Any) -> None:
            replies.append(reply)
            if len(replies) == len(commands) and not done.done():
                done.set_result(None)

        self.on_reply = collect
        try:
            self.write(b"".join(commands), [0] * len(commands))
            await done
        finally:
            self.on_reply = owner
            self._call = None
        return replies

    def write(self, data: bytes, skips: list[int]) -> None:
        """Send `data`: commands whose replies the owner gets one per entry of `skips`, in order, each
        after passing over that many replies."""
        if self._transport is None or self._lost:
            raise ConnectionError("the Redis connection is closed")
        self._transport.write(data)
        self._skips.extend(skips)

    def close(self) -> None:
        """Close at once: replies not yet read are lost (the owner resends their commands)."""
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not derive from asyncio.Transport, so no isinstance check).
        self._transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        skips, on_reply = self._skips, self.on_reply
        while skips:
            passing = skips[0]
            if passing:
                passed, error = reader.skip(passing)
                if error is not None:
                    self.passed_error = error
                if passed < passing:
                    skips[0] = passing - passed
                    return
                skips[0] = 0
            reply = reader.gets()
            if reply is False:
                return
            skips.popleft()
            on_reply(reply)
        if reader.has_data():
            # Replies would be matched to the wrong commands from here on: the connection is dropped,
            # and what was sent on it goes again on the next.
            raise ConnectionError("Redis sent a reply to no command")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._call is not None and not self._call.done():
            self._call.set_exception(ConnectionError("the Redis connection was lost"))
        self._on_lost(self, exc if exc is not None else ConnectionError("Redis closed the connection"))


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    reqs = options.get("ssl_cert_reqs")
    if isinstance(reqs, str):
        reqs = _CERT_REQS.get(reqs.lower(), ssl.CERT_REQUIRED)
    if reqs == ssl.CERT_NONE:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif reqs is not None:
        context.verify_mode = reqs
    if options.get("ssl_check_hostname") is False:
        context.check_hostname = False
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    return context
