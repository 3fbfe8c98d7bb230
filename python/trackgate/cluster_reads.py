"""The reports' rounds on a Redis Cluster: one connection per primary, each command sent to the primary
that serves its key's slot, the replies put back in the order of the commands.

A key's slot is the CRC16 of its hash tag, as the cluster's spec defines it (redis-py's `key_slot`): the
keys a report reads carry their partition's tag, so a project's partitions spread over the primaries,
and a round goes to each of them at once. The slot map is read (`cluster_slots.py`) from any node that
answers, at the first round and again when a node answers `MOVED` (its slots went elsewhere: a failover,
a resharding); the commands so answered go again to the new owner. `ASK` (a slot being migrated, the key
already on the target) sends that command alone to the target, after `ASKING`. A lost or silent node
fails the round (the caller closes every connection, and the next round reads the map afresh).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from redis.crc import key_slot
from redis.exceptions import ResponseError

from trackgate.cluster_slots import SlotMap, read_slot_map
from trackgate.redis_pipe import Connection, RedisPipe, ReplyError, pack
from trackgate.redis_target import Address, Cluster

MAX_REDIRECTS: Final = 5
"""Times a round's commands may be redirected before it gives up: a slot map that keeps changing."""
_ASKING: Final = pack("ASKING")


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
    the slot map. `timeout` bounds each node's answer to `CLUSTER SLOTS`."""

    def __init__(self, target: Cluster, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._pipes: dict[Address, Connection] = {}
        self._map: SlotMap | None = None
        self._known: tuple[Address, ...] = (
            target.addresses
        )  # who to ask for the map: the last one's nodes first

    async def call(self, packed: list[bytes]) -> list[Any]:
        slots = [key_slot(key_of(command)) for command in packed]
        replies: list[Any] = [None] * len(packed)
        pending = list(range(len(packed)))
        asked: dict[int, Address] = {}
        for _ in range(MAX_REDIRECTS + 1):
            slot_map = self._map or await self._read_map()
            # node -> the indexes of the commands it is sent (one call per connection at a time)
            groups: dict[Address, list[int]] = {}
            for i in pending:
                node = asked.get(i) or slot_map.owner(slots[i])
                if node is None:
                    self._map = None
                    raise ResponseError(f"CLUSTERDOWN no primary serves slot {slots[i]}")
                groups.setdefault(node, []).append(i)
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
                self._map = None
        raise ResponseError(
            f"the cluster redirected a report's reads {MAX_REDIRECTS} times: its slots keep moving"
        )

    async def _send(self, node: Address, commands: list[tuple[bytes, bool]]) -> list[Any]:
        """The replies to `commands` (each with whether it was answered ASK): those after an ASK go after
        an ASKING of their own, which holds for the next command only, and its reply is left out."""
        pipe = self._pipes.get(node)
        if pipe is None:
            pipe = self._pipes[node] = await RedisPipe.open(self._target.node_url(node), _ignore, self._lost)
        sent = [part for command, ask in commands for part in ((_ASKING, command) if ask else (command,))]
        replies = await pipe.call(sent)
        if len(replies) == len(commands):
            return replies
        found, at = [], 0
        for _, ask in commands:
            at += ask
            found.append(replies[at])
            at += 1
        return found

    async def _read_map(self) -> SlotMap:
        self._map = await read_slot_map(self._target, (*self._known, *self._target.addresses), self._timeout)
        self._known = self._map.nodes
        return self._map

    def _lost(self, pipe: Connection, _: Exception) -> None:
        for node, known in list(self._pipes.items()):
            if known is pipe:
                del self._pipes[node]

    def close(self) -> None:
        for pipe in list(self._pipes.values()):
            pipe.close()
        self._pipes.clear()
        self._map = None


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
