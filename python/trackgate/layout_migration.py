"""The keys written before the partitions were shared, moved to this layout's names (`keys.py`): run
before anything of this version reads or writes a partition (`trackgate serve` before its workers start,
every worker, every CLI command), and one round trip once done (`keys.LAYOUT_KEY`).

An old key is `tg:{<token>:<p>}:<rest>` (`keys.legacy_partition_prefix`): its hash tag, the text between
the `{` after the prefix and the first `}` after it, is a token and a partition number. It moves to
`keys.partition_prefix(token, p) + <rest>`, with its value, its expiry, and (a stream) its entries, their
ids and its consumer groups: on one Redis (or Sentinel's primary) by `RENAMENX`; on a Cluster, where the
new name is in another slot, by `DUMP`, then `RESTORE` under the new name with the old expiry, then `DEL`
of the old key once the `RESTORE` succeeded. A batch's payloads are held in memory meanwhile, so a
Cluster's batches are small. A key that exists already under the new name was written by a gateway of
this version and is kept, and so is the old key, under its old name, with a warning naming both: no
data is deleted, and the operator merges them if need be. A key that expires meanwhile is skipped.

The old keys of the partition's shared families (`keys.SHARED_FAMILIES`) are deleted, not moved. The
writers' marks belong to gateway writers that no longer run, so no retry will read them. The dedup sets
hold hashes that now include the project's token, so no new hash can match an old one: an event stored
before the upgrade and sent again after it, within `--dedup-window`, is stored twice.

Every gateway of the previous version must be stopped before the first process of this version starts:
the function library they call is replaced, and what they would write after the move goes to the old
names, which no process of this version reads (the move runs once).

Several processes start at once (workers, CLI commands): one takes `keys.LAYOUT_LOCK_KEY` (`SET NX PX`)
and moves the keys, renewing the lock's expiry while it runs; the others wait until the marker is set,
or until the lock expires (its holder died), and then take it themselves. The wait is bounded by the
lock's expiry, which only a live holder renews. A holder that dies leaves the keys it did not move yet
under their old names, and the next run moves them: a key is moved or kept whole, and a second mover
(the lock lost to a stalled holder) finds it gone, or its new name taken, and leaves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Final

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from trackgate import keys
from trackgate.redis_target import RedisClient

log = logging.getLogger("trackgate.layout")

LOCK_MS: Final = 30_000
"""How long the lock outlives its holder: how long the others wait for a mover that died."""
RENEW_SECONDS: Final = LOCK_MS / 3000
"""How often the holder renews the lock: a third of its life, so that a slow round does not lose it."""
POLL_SECONDS: Final = 0.2
"""How often a waiting process looks for the marker (or the lock gone)."""
RENAME_BATCH: Final = 1000
"""Old keys found per pipeline on one Redis (renames and deletes: small commands)."""
RESTORE_BATCH: Final = 64
"""Old keys found per pipeline on a Cluster: their payloads are held in memory between DUMP and
RESTORE, and a partition's stream can be large."""
PROGRESS_EVERY: Final = 100_000
"""Keys moved between two progress lines."""

SCAN_PATTERN: Final = keys.PREFIX + "{*:[0-9]*}:*"
"""What SCAN sends back: every old key, and possibly others (a `*` matches a `}` too): `old_key`
decides."""
_SHARED: Final = tuple(family.encode() for family in keys.SHARED_FAMILIES)
_TAG_START: Final = (keys.PREFIX + "{").encode()


def new_name(key: bytes) -> bytes | None:
    """The name an old key (module docstring) moves to; `b""` for an old key of a shared family (to be
    deleted), None for any other key."""
    if not key.startswith(_TAG_START):
        return None
    close = key.find(b"}", len(_TAG_START))
    if close < 0 or key[close + 1 : close + 2] != b":":
        return None
    token, colon, partition = key[len(_TAG_START) : close].partition(b":")
    if not colon or not partition.isdigit() or keys.TOKEN.fullmatch(token.decode("ascii", "replace")) is None:
        return None
    rest = key[close + 2 :]
    if rest.startswith(_SHARED):
        return b""
    return keys.partition_prefix(token.decode(), int(partition)).encode() + rest


async def migrate_layout(client: RedisClient) -> int:
    """Move every key of the old layout to its name in this one (module docstring); the number of keys
    moved (0 when the marker says it was done, the usual case: one round trip)."""
    if await client.exists(keys.LAYOUT_KEY):
        return 0
    holder = secrets.token_hex(8)
    if not await _lock(client, holder):
        return 0
    renewing = asyncio.create_task(_renew(client))
    try:
        moved = await _move(client)
        await client.set(keys.LAYOUT_KEY, keys.LAYOUT_VERSION)
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        if await client.get(keys.LAYOUT_LOCK_KEY) == holder.encode():
            await client.delete(keys.LAYOUT_LOCK_KEY)
    return moved


async def _lock(client: RedisClient, holder: str) -> bool:
    """Whether this process took the lock to move the keys; False once another set the marker."""
    waiting = False
    while True:
        if await client.set(keys.LAYOUT_LOCK_KEY, holder, nx=True, px=LOCK_MS):
            # Another may have finished between the marker's check and the lock.
            if not await client.exists(keys.LAYOUT_KEY):
                return True
            await client.delete(keys.LAYOUT_LOCK_KEY)
            return False
        if not waiting:
            waiting = True
            log.warning(
                "waiting for another process to move the keys to the shared partitions (%s held; "
                "it expires %d s after its holder dies)",
                keys.LAYOUT_LOCK_KEY,
                LOCK_MS // 1000,
            )
        await asyncio.sleep(POLL_SECONDS)
        if await client.exists(keys.LAYOUT_KEY):
            return False


async def _renew(client: RedisClient) -> None:
    while True:
        await asyncio.sleep(RENEW_SECONDS)
        await client.pexpire(keys.LAYOUT_LOCK_KEY, LOCK_MS)


async def _move(client: RedisClient) -> int:
    """Every old key moved or deleted, batch by batch as SCAN finds them; the number moved."""
    cluster = isinstance(client, RedisCluster)
    started = time.monotonic()
    moved = deleted = 0
    async for found in _old_keys(client, RESTORE_BATCH if cluster else RENAME_BATCH):
        before = moved
        moves = [(old, new) for old, new in found if new]
        dropped = [old for old, new in found if not new]
        moved += await (_restore(client, moves, dropped) if cluster else _rename(client, moves, dropped))
        deleted += len(dropped)
        if moved // PROGRESS_EVERY > before // PROGRESS_EVERY:
            log.warning("%d keys moved to the shared partitions so far (%.0f s)", moved, _since(started))
    level = logging.WARNING if moved or deleted else logging.INFO
    log.log(
        level,
        "%d keys moved to the shared partitions, %d old writer marks and dedup sets deleted, in %.1f s",
        moved,
        deleted,
        _since(started),
    )
    return moved


async def _old_keys(client: RedisClient, size: int) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """The old keys (on a Cluster, of every primary) with their new names, in lists of up to `size`."""
    found: list[tuple[bytes, bytes]] = []
    async for key in client.scan_iter(match=SCAN_PATTERN, count=1000):
        name = key.encode() if isinstance(key, str) else key
        new = new_name(name)
        if new is None:
            continue
        found.append((name, new))
        if len(found) == size:
            yield found
            found = []
    if found:
        yield found


async def _rename(client: RedisClient, moves: Sequence[tuple[bytes, bytes]], dropped: Sequence[bytes]) -> int:
    """One pipeline: each move a RENAMENX, each dropped key a DEL; the number moved."""
    async with client.pipeline(transaction=False) as pipe:
        for old, new in moves:
            pipe.renamenx(old, new)
        for old in dropped:
            pipe.delete(old)
        replies = await pipe.execute(raise_on_error=False)
    moved = 0
    for (old, new), reply in zip(moves, replies[: len(moves)], strict=True):
        if isinstance(reply, ResponseError):
            if "no such key" not in str(reply).lower():
                raise reply
        elif reply:
            moved += 1
        else:
            _kept(old, new)
    _raise_any(replies[len(moves) :])
    return moved


async def _restore(
    client: RedisClient, moves: Sequence[tuple[bytes, bytes]], dropped: Sequence[bytes]
) -> int:
    """DUMP and expiry of each move, then RESTORE under the new name, then DEL of each old key restored;
    each round one pipeline, over the nodes that serve the keys. The number moved."""
    async with client.pipeline(transaction=False) as pipe:
        for old, _ in moves:
            pipe.dump(old)
            pipe.execute_command("PEXPIRETIME", old)
        for old in dropped:
            pipe.delete(old)
        replies = await pipe.execute()
    payloads, expiries = replies[: 2 * len(moves) : 2], replies[1 : 2 * len(moves) : 2]
    found = [
        (old, new, payload, expiry)
        for (old, new), payload, expiry in zip(moves, payloads, expiries, strict=True)
        if payload is not None and expiry != -2
    ]
    if not found:
        return 0
    async with client.pipeline(transaction=False) as pipe:
        for _, new, payload, expiry in found:
            # The expiry as an absolute time: the key expires when it would have.
            pipe.restore(new, max(expiry, 0), payload, absttl=True)
        replies = await pipe.execute(raise_on_error=False)
    restored = []
    for (old, new, _, _), reply in zip(found, replies, strict=True):
        if isinstance(reply, ResponseError):
            if not str(reply).startswith("BUSYKEY"):
                raise reply
            _kept(old, new)
        else:
            restored.append(old)
    if restored:
        async with client.pipeline(transaction=False) as pipe:
            for old in restored:
                pipe.delete(old)
            await pipe.execute()
    return len(restored)


def _kept(old: bytes, new: bytes) -> None:
    log.warning(
        "%r kept under its old name: %r exists already (written by this version); merge them if need be",
        old,
        new,
    )


def _raise_any(replies: Sequence[object]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _since(started: float) -> float:
    return time.monotonic() - started
