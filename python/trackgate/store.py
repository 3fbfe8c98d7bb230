"""The `trackgate` function library and its loading, and the transaction that writes one batch.

The key names come from `keys.py`; the library's source is `lua/trackgate.lua`, `lua/profiles.lua` and
`lua/rate_limits.lua`.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Final

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from trackgate import bounds, keys
from trackgate._native import DEDUP_HASH_BYTES, PACKED_LAYOUT, Options
from trackgate.flush import Section
from trackgate.redis_pipe import bulk
from trackgate.redis_target import RedisClient

LIBRARY: Final = "trackgate"
RING_SLOTS: Final = 256
"""Entries in a partition's ring of a writer's applied batches (see below)."""
HEADER_VERSION: Final = 3
"""The version of tg_count's header (below); raised with every change of it."""
LAYOUT: Final = f"{PACKED_LAYOUT}.{HEADER_VERSION}"
"""What names a call's argument layout: the decoder's packed events' and the header's."""
HEADER_ARGS: Final = 6
"""tg_count's arguments before its sections': see WriteCommands."""
BATCH_ID_ARG: Final = 3
"""Where the batch id is among tg_count's arguments after its key, from 0."""
SECTION_ARGS: Final = 5
"""The arguments that begin a project's section of a call, before its events': see WriteCommands."""
DEDUP_VERSION: Final = 2
"""The version of the dedup hashes' form (the decoder's `dedup_hash`); raised with every change of it."""
DEDUP_LAYOUT: Final = f"{LAYOUT}+dedup.{DEDUP_VERSION}"
"""What names the layout of a call that deduplicates: the header has DEDUP_ARGS arguments more, and each
event's arguments end with its dedup hash."""
DEDUP_ARGS: Final = 2
"""The dedup window, and whether the call comes after its events' XADDs or alone."""
DEFAULT_DEDUP_WINDOW: Final = Options().dedup_window
"""The decoder's default (`--dedup-window`): batches it packs by default carry dedup hashes."""


# A batch is a partition's events of one flush, every project's, written as one transaction:
#
#     MULTI
#     SETRANGE <mark key> <8 * slot> <seq, 8 bytes>
#     EXPIRE <mark key> <MARK_SECONDS>
#     XADD <stream> * data <json>      (one per event or profile update, made by the decoder)
#     FCALL tg_count <keys> ... <writer>:<seq>:<slot> ... <per project: its section's arguments>
#     EXEC
#
# so the stream entries, the mark, the counters, the funnel state and the profiles of a batch change
# together. The partition is shared by the projects (`keys.py`), so a flush sends one transaction, one
# mark and one function call per partition however many projects its events are from. The events go
# in by plain XADDs because a redis.call from Lua costs Redis more than the command itself does, a cost
# paid per event (bench/README.md): the function only counts, and applies the profile updates (which
# the XADDs put in the partition's streams of updates).
#
# Batch ids are `<writer>:<seq>:<slot>`: a writer is one gateway worker's lifetime, and its sequence
# numbers grow with every transaction it sends. After a lost connection the batcher closes it (CLIENT
# KILL) and reads the marks: a transaction is applied exactly when its seq is in its partition's ring. A
# ring, not the highest seq: Redis may refuse a transaction when it is queued (OOM, MISCONF) and apply the
# next, and a highest seq would then count the refused one as applied. Slot k of the ring is for the
# writer's k-th transaction to the partition (mod RING_SLOTS; one not applied leaves the slot's older
# entry), so the ring holds the last RING_SLOTS numbered: more than twice as many as a partition can have
# unanswered at once (one per flush in flight, at most 64, and their resends). One small key per writer
# and partition replaces a key per batch (which, with every batch's key kept long enough for any retry,
# would be a steady churn of keys). A transaction found not applied goes again as a new one, with a new
# seq and slot.
#
# The function sets its batch's counted byte in the ring and counts only if it was not set: when it failed
# inside an applied transaction (Redis lost the library), it is run again by itself, under the batch's
# own seq and slot, and counts once. A retry reads both: not in the ring, the transaction goes again;
# in it but not counted, the function alone. A counting still waiting after its entry has left the ring
# (a connection lost again and again for long enough to number RING_SLOTS more transactions to its
# partition) is given up and logged rather than sent: its slot may be another batch's by then.
#
# Per-event arguments: see PACKED_LAYOUT in the decoder (rust/src/resp.rs); the day and the counter field
# come ready-made, so the function does no date arithmetic or string building per event.
#
# Deduplication (`--dedup-window`, 0: off). A retried request may hold events already stored; an event
# with an `$insert_id` is stored and counted once however often it comes within the window. The decoder
# packs each event's time in seconds and a 128-bit hash of its (name, distinct_id, time in whole seconds,
# $insert_id) after its arguments, and the header says so (DEDUP_LAYOUT). The events still go in by the
# plain XADDs (an XADD from Lua would cost Redis more per event than all the rest of dedup:
# bench/README.md); the function, right after them in the same transaction, looks the batch's hashes up
# in the partition's sets of hashes stored, adds the new ones, counts only those, and XDELs the
# duplicates' entries, which are the stream's last ones: their
# XADD and XDEL are one atomic change that no reader sees. Its reply lists the duplicates, which the
# batcher reports to their requests. The marks and their recovery are as above: the lookups and the
# XDELs are writes of the same transaction, applied with it or not at all, and a counting resent alone
# is told so ('alone'): it does not count the duplicates, but can no longer tell their entries in the
# stream apart, and leaves them there (the batcher logs it). With the window 0 none of this is sent.
#
# The sets are by bucket of `window` seconds: a retry has its event's time, so an event that came while
# its time's bucket was not over is kept in that bucket's set (`keys.dedup_by_time_key`) and its retry
# looked up in that one set; an event that comes later (a late one, /import's history) is kept in the
# set of the server time's bucket (`keys.dedup_key`), and looked up in two. `lua/trackgate.lua`
# (find_duplicates) says why no retry within the window is missed, and what the sets hold.


def _library_source() -> str:
    """The library's source with the values it shares with this side filled in: each `@NAME@` in its
    files, and `@PROFILES@` and `@RATE_LIMITS@` (lines of trackgate.lua) replaced by their files. The key
    families go in with the source rather than as arguments of every call: Redis makes a Lua string of
    every key a call passes."""
    values = {
        "LIBRARY": LIBRARY,
        "LAYOUT": LAYOUT,
        "RING_SLOTS": str(RING_SLOTS),
        "HEADER_ARGS": str(HEADER_ARGS),
        "DEDUP_LAYOUT": DEDUP_LAYOUT,
        "DEDUP_ARGS": str(DEDUP_ARGS),
        "DEDUP_HASH_BYTES": str(DEDUP_HASH_BYTES),
        "SECTION_ARGS": str(SECTION_ARGS),
        "OVERFLOW": bounds.OVERFLOW,
        "MAX_PROFILE_PROPERTIES": str(bounds.MAX_PROFILE_PROPERTIES),
        "MAX_PROFILE_LIST": str(bounds.MAX_PROFILE_LIST),
        **{family.name: family.value for family in keys.Family},
    }

    def filled(name: str) -> str:
        source = (resources.files("trackgate") / "lua" / name).read_text(encoding="utf-8")
        return re.sub(r"@([A-Z_]+)@", lambda match: values[match[1]], source)

    values["PROFILES"] = filled("profiles.lua")
    values["RATE_LIMITS"] = filled("rate_limits.lua")
    return filled("trackgate.lua")


FUNCTION_SOURCE: Final = _library_source()


async def load_functions(client: RedisClient, *, replace: bool) -> None:
    """Load the library, on every primary of a Cluster (each runs the functions of the slots it serves);
    without `replace`, a library already there (another worker's) is kept."""
    command = ("FUNCTION", "LOAD", *(("REPLACE",) if replace else ()), FUNCTION_SOURCE)
    if not isinstance(client, RedisCluster):
        await _load(client.execute_command(*command), replace)  # type: ignore[no-untyped-call]
        return
    await client.initialize()
    for node in client.get_primaries():
        await _load(client.execute_command(*command, target_nodes=node), replace)


async def _load(loading: Awaitable[object], replace: bool) -> None:
    try:
        await loading
    except ResponseError as err:
        if replace or "already exists" not in str(err):
            raise


def is_missing_function(err: Exception) -> bool:
    """Redis lost the library (restarted without persistence, FUNCTION FLUSH): load it and resend."""
    return "function not found" in str(err).lower()


MULTI: Final = b"*1\r\n$5\r\nMULTI\r\n"
EXEC: Final = b"*1\r\n$4\r\nEXEC\r\n"
# A writer's marks outlive any retry of its commands by far: a day.
MARK_SECONDS: Final = b"86400"
_SEQ: Final = struct.Struct("<Q")
_COUNTED: Final = 1 << 56  # the entry's last byte, set by tg_count
_OFFSETS: Final = tuple(bulk(b"%d" % (slot * _SEQ.size)) for slot in range(RING_SLOTS))


def ring_entries(ring: bytes | None) -> dict[int, bool]:
    """What a partition's ring (`mark_key`) holds: the applied batches among the writer's last RING_SLOTS
    numbered for the partition, each seq with whether it was counted. Slots not written yet read 0, which
    is no seq (they start at 1)."""
    if not ring:
        return {}
    whole = ring[: len(ring) - len(ring) % _SEQ.size]
    return {n % _COUNTED: n >= _COUNTED for (n,) in _SEQ.iter_unpack(whole) if n % _COUNTED}


def batch_id(writer: bytes, seq: int, slot: int) -> bytes:
    """What tg_count is told of its batch: the writer, the seq, and the seq's slot in the ring."""
    return b"%s:%d:%d" % (writer, seq, slot)


MARK_REPLIES: Final = 2
"""The replies in EXEC's that answer the mark's commands (SETRANGE, EXPIRE); the XADDs' follow."""


def transaction_replies(events: int) -> int:
    """Replies Redis sends to a batch's transaction before EXEC's: MULTI's and one per queued command
    (the mark's SETRANGE and EXPIRE, the XADDs, the FCALL)."""
    return events + 2 + MARK_REPLIES


_SIZES: Final = tuple(bulk(b"%d" % size) for size in range(1024))
"""A section's number of arguments, encoded once for the sections of few events."""

CALL_PARTS: Final = 4
"""`FCALL tg_count 1 <key>`: the bulk strings of a call before its header."""


class WriteCommands:
    """Builds a batch's transaction (see above) and its `FCALL tg_count 1 <partition prefix> <maxlen>
    <max age> <layout> <batch id> <event max age> <counter retention days>` (HEADER_ARGS arguments after
    the key; with a `dedup_window`, DEDUP_ARGS more: `<dedup window> after|alone`), then per project a
    section: `<token> <funnel window> <event names a day> <funnel names> <number of arguments>`
    (SECTION_ARGS), and the decoder's packed arguments of its events, unchanged; the decoder's XADD
    commands go ahead of the call unchanged. What depends on the partition or the project alone is
    encoded once. The decoder that packs the batches must have the same `dedup_window` (both come from one
    setting)."""

    def __init__(
        self,
        stream_maxlen: int,
        stream_max_age: float,
        event_max_age: float,
        counter_retention_days: int = bounds.DEFAULT_COUNTER_RETENTION_DAYS,
        dedup_window: int = DEFAULT_DEDUP_WINDOW,
    ) -> None:
        layout = (DEDUP_LAYOUT if dedup_window else LAYOUT).encode()
        self._limits = (
            bulk(str(stream_maxlen).encode()) + bulk(str(int(stream_max_age)).encode()) + bulk(layout)
        )
        self.dedup_window = dedup_window
        # After the retention, with deduplication: the window, and where the events' entries are.
        self._dedup = {
            alone: bulk(b"%d" % dedup_window) + bulk(b"alone" if alone else b"after") if dedup_window else b""
            for alone in (False, True)
        }
        self._late = bulk(str(math.ceil(event_max_age)).encode()) + bulk(b"%d" % counter_retention_days)
        self._calls: dict[int, bytes] = {}
        self._sections: dict[str, tuple[int, bounds.Caps, bytes]] = {}
        self._marks: dict[tuple[int, bytes], tuple[bytes, bytes]] = {}

    def _call(self, partition: int) -> bytes:
        """`FCALL tg_count 1 <key> <maxlen> <max age> <layout>`, without its array header."""
        call = self._calls.get(partition)
        if call is None:
            (key,) = keys.count_function_keys(partition)
            call = self._calls[partition] = (
                b"".join(map(bulk, (b"FCALL", b"tg_count", b"1", key.encode()))) + self._limits
            )
        return call

    def _section(self, token: str, window: int, caps: bounds.Caps) -> bytes:
        """A section's arguments before its number of arguments, kept per project until its window or
        caps change."""
        head = self._sections.get(token)
        if head is None or head[0] != window or head[1] != caps:
            head = self._sections[token] = (
                window,
                caps,
                b"".join(
                    map(
                        bulk,
                        (
                            token.encode(),
                            b"%d" % window,
                            b"%d" % caps.event_names_per_day,
                            b"%d" % caps.funnel_names,
                        ),
                    )
                ),
            )
        return head[2]

    def call(
        self,
        out: list[bytes],
        partition: int,
        batch_id: bytes,
        sections: Sequence[Section],
        window: Callable[[str], int],
        caps: Callable[[str], bounds.Caps],
        *,
        alone: bool = False,
    ) -> None:
        """Append to `out` the FCALL that counts `sections`, each with its project's funnel `window` and
        `caps`. `alone`: it is sent without its transaction (its events are stored already)."""
        dedup = self._dedup[alone]
        size = CALL_PARTS + HEADER_ARGS + (DEDUP_ARGS if dedup else 0)
        size += sum(SECTION_ARGS + section.args for section in sections)
        out.append(b"*%d\r\n%s%s%s%s" % (size, self._call(partition), bulk(batch_id), self._late, dedup))
        head = self._section
        for section in sections:
            token = section.token
            args = section.args
            out.append(
                head(token, window(token), caps(token))
                + (_SIZES[args] if args < len(_SIZES) else bulk(b"%d" % args))
            )
            out.extend(section.packed)

    def transaction(
        self,
        out: list[bytes],
        partition: int,
        writer: bytes,
        seq: int,
        slot: int,
        sections: Sequence[Section],
        window: Callable[[str], int],
        caps: Callable[[str], bounds.Caps],
    ) -> None:
        """Append to `out` the transaction that writes one batch: `sections` are the projects' events for
        this partition; `slot` is where the partition's ring records `seq`. Called for every partition of
        every flush: what does not change is made once."""
        key = (partition, writer)
        marks = self._marks.get(key)
        if marks is None:
            ring = bulk(keys.mark_key(partition, writer))
            marks = self._marks[key] = (
                MULTI + b"*4\r\n$8\r\nSETRANGE\r\n" + ring,
                b"*3\r\n$6\r\nEXPIRE\r\n" + ring + bulk(MARK_SECONDS),
            )
        setrange, expire = marks
        out.append(b"%s%s$8\r\n%s\r\n%s" % (setrange, _OFFSETS[slot], _SEQ.pack(seq), expire))
        for section in sections:
            out.extend(section.xadds)
        self.call(out, partition, batch_id(writer, seq, slot), sections, window, caps)
        out.append(EXEC)
