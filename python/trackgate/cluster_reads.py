"""The reports' rounds on a Redis Cluster: one connection per primary, each command sent to the primary
that serves its key's slot, the replies put back in the order of the commands.

A key's slot is the CRC16 of its hash tag, as the cluster's spec defines it (redis-py's `key_slot`): the
keys a report reads carry their partition's tag, so a project's partitions spread over the primaries,
and a round goes to each of them at once. The slot map is read (`CLUSTER SLOTS`) from any node that
answers, at the first round and again when a node answers `MOVED` (its slots went elsewhere: a failover,
a resharding); the commands so answered go again to the new owner. `ASK` (a slot being migrated, the key
already on the target) sends that command alone to the target, after `ASKING`. A lost or silent node
fails the round (the caller closes every connection, and the next round reads the map afresh).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ResponseError

from trackgate.redis_pipe import Connection, RedisPipe, ReplyError, pack
from trackgate.redis_target import Address, Cluster

MAX_REDIRECTS: Final = 5
"""Times a round's commands may be redirected before it gives up: a slot map that keeps changing."""
_ASKING: Final = pack("ASKING")
_SLOTS: Final = pack("CLUSTER", "SLOTS")


def key_of(command: bytes) -> bytes:
    """The first argument of a command packed in RESP (`*n`, then `$length` and the bytes of each part):
    the key, in every command the reports send."""
    _, _, rest = command.partition(b"\r\n")
    length, _, rest = rest.partition(b"\r\n")
    rest = rest[int(length[1:]) + 2 :]
    length, _, rest = rest.partition(b"\r\n")
    return rest[: int(length[1:])]


class ClusterRoute:
    """Rounds of packed commands on a Cluster's primaries (see above); `close` drops every connection and
    the slot map."""

    def __init__(self, target: Cluster) -> None:
        self._target = target
        self._pipes: dict[Address, Connection] = {}
        self._owners: list[Address] | None = None  # slot -> the primary serving it

    async def call(self, packed: list[bytes]) -> list[Any]:
        slots = [key_slot(key_of(command)) for command in packed]
        replies: list[Any] = [None] * len(packed)
        pending = list(range(len(packed)))
        asked: dict[int, Address] = {}
        for _ in range(MAX_REDIRECTS + 1):
            owners = self._owners or await self._read_slots()
            # node -> the indexes of the commands it is sent (one call per connection at a time)
            groups: dict[Address, list[int]] = {}
            for i in pending:
                groups.setdefault(asked.get(i) or owners[slots[i]], []).append(i)
            answered = await asyncio.gather(
                *(
                    self._send(node, [(packed[i], i in asked) for i in group])
                    for node, group in groups.items()
                )
            )
            pending, asked, moved = [], {}, False
            for group, group_replies in zip(groups.values(), answered, strict=True):
                for i, reply in zip(group, group_replies, strict=True):
                    redirect = _redirect(reply)
                    if redirect is None:
                        replies[i] = reply
                        continue
                    pending.append(i)
                    kind, node = redirect
                    if kind == "ASK":
                        asked[i] = node
                    else:
                        moved = True
            if not pending:
                return replies
            if moved:
                self._owners = None
        raise ResponseError(
            f"the cluster redirected a report's reads {MAX_REDIRECTS} times: its slots keep moving"
        )

    async def _send(self, node: Address, commands: list[tuple[bytes, bool]]) -> list[Any]:
        """The replies to `commands` (each with whether it was answered ASK): those after an ASK go after
        an ASKING of their own, which holds for the next command only, and its reply is left out."""
        pipe = await self._pipe(node)
        replies = await pipe.call(
            [part for command, ask in commands for part in ((_ASKING, command) if ask else (command,))]
        )
        if len(replies) == len(commands):
            return replies
        found, at = [], 0
        for _, ask in commands:
            at += ask
            found.append(replies[at])
            at += 1
        return found

    async def _pipe(self, node: Address) -> Connection:
        pipe = self._pipes.get(node)
        if pipe is None:
            pipe = self._pipes[node] = await RedisPipe.open(self._target.node_url(node), _ignore, self._lost)
        return pipe

    async def _read_slots(self) -> list[Address]:
        """The slot map, from the first node that answers: the nodes already connected, then the seeds."""
        failure: Exception = ConnectionError("no node of the cluster to ask")
        for node in (*self._pipes, *self._target.addresses):
            try:
                [reply] = await (await self._pipe(node)).call([_SLOTS])
            except OSError as err:
                failure = err
                continue
            if isinstance(reply, ReplyError):
                raise ResponseError(f"CLUSTER SLOTS at {node[0]}:{node[1]}: {reply}")
            self._owners = _owners(reply, node)
            return self._owners
        raise failure

    def _lost(self, pipe: Connection, _: Exception) -> None:
        for node, known in list(self._pipes.items()):
            if known is pipe:
                del self._pipes[node]

    def close(self) -> None:
        for pipe in list(self._pipes.values()):
            pipe.close()
        self._pipes.clear()
        self._owners = None


def _owners(ranges: list[list[Any]], asked: Address) -> list[Address]:
    """Slot -> primary, from `CLUSTER SLOTS`' `[first, last, [host, port, id], replicas...]`; a node that
    names no host (`cluster-preferred-endpoint-type unknown-endpoint`) is the one asked."""
    owners: list[Address] = [asked] * REDIS_CLUSTER_HASH_SLOTS
    for first, last, primary, *_ in ranges:
        host = primary[0].decode() if primary[0] else asked[0]
        node = (host, int(primary[1]))
        owners[first : last + 1] = [node] * (last - first + 1)
    return owners


def _redirect(reply: Any) -> tuple[str, Address] | None:
    """`MOVED <slot> <host>:<port>` or `ASK ...`: the kind and the node named; None for any other reply."""
    if not isinstance(reply, ReplyError):
        return None
    kind, _, rest = str(reply).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    host, _, port = rest.partition(" ")[2].rpartition(":")
    return kind, (host, int(port))


def _ignore(_: Any) -> None:
    """Replies outside a call: none come, as nothing is sent outside one."""
