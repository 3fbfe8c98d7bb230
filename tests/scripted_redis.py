"""The batcher's Redis and clock, in memory and scripted by the test: its exactly-once logic run
in-process, with no redis-server, no socket and no sleeping.

`ScriptedRedis` keeps what the batcher's commands change in Redis -- the streams, the partitions' rings of
marks, the events counted, what profile updates' `$add`s made, the function library -- so that a test
checks the outcome as it would in Redis: every event stored once and counted once, every update applied
once. It runs MULTI/EXEC, SETRANGE, EXPIRE, XADD, FCALL
tg_count, FUNCTION LOAD, CLIENT KILL ID, GET and WAIT, as far as the batcher uses them, and fails as the
test says (`refuse`, `library`, `loading`, `reachable`, `replicas`).

Commands reach it as they reach Redis: a `ScriptedConnection` holds what was written until the test lets
Redis run it (`run`) and then answer it (`answer`); with `auto`, written commands are run and answered
on the next turn of the event loop. `lose` drops a connection with its commands still held: Redis runs
them later (`deliver_late`) only if nobody killed that connection meanwhile.

`ScriptedClock` is the batcher's clock: time moves, and timers fire, only when the test `advance`s it.
The helpers at the end build requests with the real decoder and start a batcher on these two.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any

from conftest import partition_of
from trackgate import Options, Request, TokenSet, decode_request, keys, store
from trackgate._native import ReplyError, ReplyReader, decode_profile_request
from trackgate.batcher import Batcher
from trackgate.keys import Family, stream_key

OnReply = Callable[[Any], None]
OnLost = Callable[[Any, Exception], None]

# The batcher sends these in transactions only (an EXPIRE of marks goes alone before a settle's WAIT).
MULTI_ONLY = {b"SETRANGE", b"XADD"}
EXECABORT = "EXECABORT Transaction discarded because of previous errors."
NOT_FOUND = "ERR Function not found"


def commands_in(data: bytes) -> list[list[bytes]]:
    """The commands of a write: RESP arrays of bulk strings, which the reply reader reads as well."""
    reader = ReplyReader()
    reader.feed(data)
    commands = []
    while (command := reader.gets()) is not False:
        assert isinstance(command, list)
        commands.append(command)
    assert not reader.has_data(), "a write ended inside a command"
    return commands


def packed_entries(
    args: list[bytes], *, dedup: bool = False
) -> tuple[int, list[list[bytes]], list[tuple[int, int, bytes]]]:
    """The events of tg_count's packed arguments (see PACKED_LAYOUT): 4 each, 7 for a funnel event's, one
    more with `dedup` (its dedup hash); the profile updates among them, each its arguments: 5, and as many
    more as the fifth says; and with `dedup` the events that have a hash: (entry, ordinal among the
    events, hash), their entry counting events and updates alike."""
    n, i, updates, hashes = 0, 0, [], []
    while i < len(args):
        if args[i].startswith(b"$"):
            end = i + 5 + int(args[i + 4])
            updates.append(args[i:end])
            i = end
        else:
            i += (7 if args[i + 3] else 4) + dedup
            if dedup and args[i - 1]:
                hashes.append((n + len(updates), n, args[i - 1]))
            n += 1
    assert i == len(args), "malformed event arguments"
    return n, updates, hashes


def sections_of(
    args: list[bytes], shared: bytes, *, dedup: bool
) -> list[tuple[bytes, int, list[list[bytes]], list[tuple[int, int, bytes]]]]:
    """tg_count's sections (see store.WriteCommands): per project, its stream of events and its
    `packed_entries`."""
    sections, i = [], 0
    while i < len(args):
        token, size = args[i], int(args[i + store.SECTION_ARGS - 1])
        start = i + store.SECTION_ARGS
        stream = shared + token + b":" + Family.STREAM.encode()
        sections.append((stream, *packed_entries(args[start : start + size], dedup=dedup)))
        i = start + size
    assert i == len(args), "malformed sections"
    return sections


class ScriptedRedis:
    def __init__(self) -> None:
        self.streams: dict[bytes, list[dict[str, Any]]] = {}
        self.rings: dict[bytes, bytearray] = {}
        self.counted: dict[bytes, int] = {}  # events counted, per stream
        self.hashes: set[tuple[bytes, bytes]] = set()  # (partition prefix, dedup hash) of the events stored
        # What the profile updates' `$add`s made, per profile (distinct_id or group id) and property: the
        # one operation a test needs to see an update applied twice.
        self.profiles: dict[bytes, Counter[bytes]] = {}
        self.library = True
        self.library_loads_refused = False
        self.loading = False  # every command answered LOADING, as after a restart
        self.reachable = True
        self.kill_refused = False  # a Redis user without +client|kill
        self.client_ids = True  # False: a Redis user without +client|id
        self.replicas: int | str = 1  # what WAIT answers: the replicas that have the writes, or an error
        self.waits: list[list[bytes]] = []  # every WAIT run
        # Called with each command queued in a transaction: an error message refuses it (EXECABORT).
        self.refuse: Callable[[list[bytes]], str | None] = lambda command: None
        self.wrong_type: set[bytes] = set()  # streams whose XADDs fail
        self.count_refused: dict[bytes, str] = {}  # streams whose counting Redis refuses, with the error
        self.auto = True
        self.run_id = b"run-1"
        self.connections: list[ScriptedConnection] = []
        self.calls: list[list[list[bytes]]] = []  # the commands of each `call` (the batcher's settles)
        self._ids = itertools.count(1)

    async def connect(self, on_reply: OnReply, on_lost: OnLost) -> ScriptedConnection:
        """The batcher's connection factory."""
        await asyncio.sleep(0)
        if not self.reachable:
            raise ConnectionRefusedError(111, "Connection refused")
        connection = ScriptedConnection(self, next(self._ids), on_reply, on_lost)
        self.connections.append(connection)
        return connection

    def restart(self) -> None:
        """A new Redis process: connections gone, client ids and run id new."""
        self.run_id += b"'"
        for connection in self.connections:
            connection.killed = True
            if not connection.closed:
                connection.lose(ConnectionResetError("Redis restarted"))

    # What the batcher stored

    def events(self, token: str, family: Family = Family.STREAM) -> list[dict[str, Any]]:
        """The entries of the project's streams of events (or of profile updates)."""
        suffix = family.encode()
        return [
            e
            for key, events in self.streams.items()
            if _owned_by(key, token) and key.endswith(suffix)
            for e in events
        ]

    def count_of(self, token: str) -> int:
        return sum(n for key, n in self.counted.items() if _owned_by(key, token))

    def ring(self, stream: bytes, writer: bytes) -> bytes | None:
        ring = self.rings.get(self._mark_key(stream, writer))
        return None if ring is None else bytes(ring)

    # Commands

    def execute(self, command: list[bytes]) -> Any:
        """A command outside a transaction, or one of EXEC's."""
        if self.loading:
            return ReplyError("LOADING Redis is loading the dataset in memory")
        name = command[0].upper()
        if name == b"SETRANGE":
            ring = self.rings.setdefault(command[1], bytearray())
            offset, value = int(command[2]), command[3]
            ring.extend(bytes(max(0, offset + len(value) - len(ring))))
            ring[offset : offset + len(value)] = value
            return len(ring)
        if name == b"EXPIRE":
            return 1
        if name == b"XADD":
            if command[1] in self.wrong_type:
                return ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value")
            events = self.streams.setdefault(command[1], [])
            events.append(json.loads(command[command.index(b"data") + 1]))
            return b"%d-0" % len(events)
        if name == b"FCALL":
            return self._tg_count(command)
        if name == b"FUNCTION":
            if self.library_loads_refused:
                return ReplyError("ERR Error compiling function")
            if self.library:
                return ReplyError("ERR Library 'trackgate' already exists")
            self.library = True
            return b"trackgate"
        if name == b"CLIENT":
            if self.kill_refused:
                return ReplyError("NOPERM this user has no permissions to run the 'client|kill' command")
            target = int(command[3])
            killed = [c for c in self.connections if c.client_id == target and not c.killed]
            for connection in killed:
                connection.killed = True
            return len(killed)
        if name == b"GET":
            found = self.rings.get(command[1])
            return None if found is None else bytes(found)
        if name == b"WAIT":
            self.waits.append(command)
            return ReplyError(self.replicas) if isinstance(self.replicas, str) else self.replicas
        raise AssertionError(f"the batcher sent {name!r}")

    def _tg_count(self, command: list[bytes]) -> Any:
        if not self.library:
            return ReplyError(NOT_FOUND)
        shared, args = command[3], fcall_args(command)
        dedup = args[2] == store.DEDUP_LAYOUT.encode()
        first = store.HEADER_ARGS + (store.DEDUP_ARGS if dedup else 0)
        sections = sections_of(args[first:], shared, dedup=dedup)
        for stream, *_ in sections:
            if stream in self.count_refused:
                return ReplyError(self.count_refused[stream])
        writer, _, slot = args[store.BATCH_ID_ARG].split(b":")
        ring = self.rings.setdefault(shared + Family.MARKS.encode() + writer, bytearray())
        counted_byte = int(slot) * 8 + 7
        ring.extend(bytes(max(0, counted_byte + 1 - len(ring))))
        updated = sum(len(updates) for _, _, updates, _ in sections)
        applied = [updated, 0] if updated else []
        if ring[counted_byte]:
            return [0, 0] + [0] * len(applied)
        ring[counted_byte] = 1
        # Deduplication as the function does it (no window: a test's run is shorter than any).
        duplicates, counted, first_entry = [], 0, 0
        for stream, n, updates, hashes in sections:
            gone = []
            for entry, ordinal, dedup_hash in hashes:
                if (shared, dedup_hash) in self.hashes:
                    duplicates.append(first_entry + entry)
                    gone.append(ordinal)
                else:
                    self.hashes.add((shared, dedup_hash))
            if gone and args[store.HEADER_ARGS + 1] != b"alone":
                # The section's events are its stream's last: its XADDs came just before, in the
                # transaction.
                events = self.streams[stream]
                start = len(events) - n
                for ordinal in reversed(gone):
                    del events[start + ordinal]
            self.counted[stream] = self.counted.get(stream, 0) + n - len(gone)
            counted += n - len(gone)
            first_entry += n + len(updates)
            for op, _group, profile, _seen, _n, *pairs in updates:
                if op == b"$add":
                    added = self.profiles.setdefault(profile, Counter())
                    for name, value in zip(pairs[::2], pairs[1::2], strict=True):
                        added[name] += int(value)
        return [counted, 0, updated, 0, duplicates] if duplicates else [counted, 0, *applied]

    @staticmethod
    def _mark_key(stream: bytes, writer: bytes) -> bytes:
        """The partition's marks of `writer`, from one of the partition's streams."""
        shared = stream[: stream.index(b"}:") + 2]
        return shared + Family.MARKS.encode() + writer


def _owned_by(key: bytes, token: str) -> bool:
    owner = keys.owner(key.decode())
    return owner is not None and owner[0] == token


class ScriptedConnection:
    """One connection, as the batcher sees a RedisPipe."""

    def __init__(self, redis: ScriptedRedis, client_id: int, on_reply: OnReply, on_lost: OnLost) -> None:
        self.redis = redis
        self.client_id: int | None = client_id if redis.client_ids else None
        self.run_id: bytes | None = redis.run_id
        self.passed_error: ReplyError | None = None
        self.writes: list[list[list[bytes]]] = []  # the commands of each write
        self.closed = False  # by the batcher, or lost
        self.killed = False  # by CLIENT KILL: Redis runs nothing more of it
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._held: deque[list[bytes]] = deque()  # written, not yet run
        self._replies: deque[Any] = deque()  # run, not yet read
        self._skips: deque[int] = deque()
        self._transaction: list[list[bytes]] | None = None
        self._refused = False

    @property
    def held(self) -> int:
        return len(self._held)

    # The batcher's side

    async def call(self, commands: list[bytes]) -> list[Any]:
        if self.closed:
            raise ConnectionError("the Redis connection is closed")
        parsed = [c for data in commands for c in commands_in(data)]
        self.redis.calls.append(parsed)
        await asyncio.sleep(0)
        return [self.redis.execute(command) for command in parsed]

    def write(self, data: bytes, skips: list[int]) -> None:
        if self.closed:
            raise ConnectionError("the Redis connection is closed")
        commands = commands_in(data)
        self.writes.append(commands)
        self._held.extend(commands)
        self._skips.extend(skips)
        if self.redis.auto:
            asyncio.get_running_loop().call_soon(self.process)

    def close(self) -> None:
        """As RedisPipe's: the loss is reported on a later turn of the loop."""
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(
                self._on_lost, self, ConnectionError("Redis closed the connection")
            )

    # The test's side

    def process(self) -> None:
        if not self.closed:
            self.run()
            self.answer()

    def run(self, commands: int | None = None) -> None:
        """Redis runs the commands held (the first `commands` of them)."""
        for _ in range(len(self._held) if commands is None else commands):
            self._replies.append(self._run(self._held.popleft()))

    def answer(self, replies: int | None = None) -> int:
        """The replies of the commands run reach the batcher (`replies` of those it reads at most), with
        those it asked to pass over passed over. Returns how many it read."""
        read = 0
        while self._skips and (replies is None or read < replies):
            passing = self._skips[0]
            if len(self._replies) <= passing:
                break
            for _ in range(passing):
                passed = self._replies.popleft()
                if isinstance(passed, ReplyError):
                    self.passed_error = passed
            self._skips.popleft()
            read += 1
            self._on_reply(self._replies.popleft())
        return read

    def lose(self, error: Exception | None = None) -> None:
        """The connection drops: what Redis has not run stays held, what it answered is never read."""
        self.closed = True
        self._on_lost(self, error or ConnectionResetError("Connection reset by peer"))

    def deliver_late(self) -> int:
        """The held commands of a lost connection reach Redis after all: it runs them unless the
        connection was killed. Returns how many ran."""
        if self.killed:
            self._held.clear()
            return 0
        n = len(self._held)
        self.run()
        return n

    def _run(self, command: list[bytes]) -> Any:
        name = command[0].upper()
        if name == b"MULTI":
            self._transaction, self._refused = [], False
            return b"OK"
        if name == b"EXEC":
            queued, self._transaction = self._transaction, None
            assert queued is not None, "EXEC without MULTI"
            if self._refused:
                return ReplyError(EXECABORT)
            return [self.redis.execute(c) for c in queued]
        if self._transaction is None:
            assert name not in MULTI_ONLY, f"{name!r} outside a transaction"
            return self.redis.execute(command)
        refusal = self.redis.refuse(command)
        if refusal is not None:
            self._refused = True
            return ReplyError(refusal)
        self._transaction.append(command)
        return b"QUEUED"


class _Timer:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Timer:
        timer = _Timer(callback, args)
        heapq.heappush(self._timers, (self.now + delay, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Time moves on: the timers due by then fire, in order, each at its time."""
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.now = until


# Driving a batcher

TOKEN = "scriptedtoken"
SETTINGS: dict[str, Any] = {
    "max_events": 1000,
    "linger": 0.0,
    "depth": 4,
    "max_pending": 100_000,
    "timeout": 3.0,
    "retry_window": 2.0,
    "stream_maxlen": 0,
    "stream_max_age": 0.0,
    "event_max_age": 3600.0,
}
_numbers = itertools.count()


def play(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs a scenario on an event loop of its own; a scenario that hangs fails instead of the suite."""
    asyncio.run(asyncio.wait_for(scenario(), 60))


async def started(redis: ScriptedRedis, clock: ScriptedClock, **settings: Any) -> Batcher:
    """A batcher on `redis` and `clock`, started (SETTINGS, but for `settings`)."""
    batcher = Batcher(
        "redis://scripted",
        **(SETTINGS | settings),
        funnel_window=lambda token: 30 * 86400,
        connect=redis.connect,
        clock=clock,
    )
    await batcher.start()
    return batcher


async def started_held(**settings: Any) -> tuple[ScriptedRedis, ScriptedClock, Batcher]:
    """A batcher started on a scripted Redis that runs nothing the batcher writes until the test says
    so (`auto` off), and the clock the test advances."""
    redis, clock = ScriptedRedis(), ScriptedClock()
    redis.auto = False
    return redis, clock, await started(redis, clock, **settings)


async def until(condition: Callable[[], object], what: str) -> None:
    """Lets the event loop turn until `condition` holds: the batcher only runs while the test awaits."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def quiet() -> None:
    """Lets the event loop turn until the batcher has done all it can without the test."""
    for _ in range(200):
        await asyncio.sleep(0)


def user_in(partition: int, n: int = 0) -> str:
    """The n-th distinct_id of those the decoder puts in `partition`."""
    users = (f"user-{i}" for i in itertools.count())
    return next(itertools.islice((u for u in users if partition_of(u) == partition), n, None))


def stream(partition: int) -> bytes:
    return stream_key(TOKEN, partition).encode()


def request(*users: str) -> Request:
    """A /track request as the real decoder makes it: one event per user named, each numbered."""
    events = [
        {"event": "e", "properties": {"token": TOKEN, "distinct_id": user, "n": next(_numbers)}}
        for user in users
    ]
    return decode_request(
        b"",
        json.dumps(events).encode(),
        "application/json",
        now=time.time(),
        options=Options(),
        tokens=TokenSet([TOKEN]),
    )


def profile_request(*users: str) -> Request:
    """A /engage request as the real decoder makes it: an `$add` of 1 to `n` per user named."""
    updates = [{"$token": TOKEN, "$distinct_id": user, "$add": {"n": 1}} for user in users]
    return decode_profile_request(
        b"",
        json.dumps(updates).encode(),
        "application/json",
        groups=False,
        now=time.time(),
        options=Options(),
        tokens=TokenSet([TOKEN]),
    )


def numbers(*requests: Request) -> Counter[int]:
    """The requests' events, by number."""
    return Counter(json.loads(event)["properties"]["n"] for r in requests for event in r.events())


def assert_stored_once(redis: ScriptedRedis, *requests: Request) -> None:
    """Exactly the requests' events are in the streams, each once, and counted once."""
    stored = Counter(event["properties"]["n"] for event in redis.events(TOKEN))
    assert stored == numbers(*requests)
    assert redis.count_of(TOKEN) == stored.total()


def batch_ids(write: list[list[bytes]]) -> list[bytes]:
    """The batch ids (`<writer>:<seq>:<slot>`) of a write's FCALLs."""
    return [fcall_args(command)[store.BATCH_ID_ARG] for command in write if command[0] == b"FCALL"]


def fcall_args(command: list[bytes]) -> list[bytes]:
    """An FCALL's arguments after its keys."""
    return command[3 + int(command[2]) :]
