"""A Redis Cluster's slots: the slot of a partition (Redis' CRC16 of its hash tag, redis-py's
implementation of the cluster spec), and which primary serves each slot, as `CLUSTER SLOTS` says."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

from redis.asyncio import Redis
from redis.crc import key_slot

from trackgate import keys
from trackgate.redis_target import Address, Cluster

log = logging.getLogger("trackgate.cluster")

SLOTS: Final = 16384


def partition_slot(partition: int) -> int:
    """The slot every key of a partition is in, every project's: they share its hash tag."""
    return int(key_slot(keys.shared_prefix(partition).encode()))


class SlotMap:
    """Which primary serves each slot; `nodes`: every node named (primaries and replicas), which the
    next refresh may ask."""

    def __init__(self, ranges: Iterable[tuple[int, int, Address]], nodes: Iterable[Address]) -> None:
        self._owners: list[Address | None] = [None] * SLOTS
        for start, end, primary in ranges:
            self._owners[start : end + 1] = [primary] * (end + 1 - start)
        self.nodes = tuple(dict.fromkeys(nodes))

    def owner(self, slot: int) -> Address | None:
        """The primary serving `slot`; None while no node serves it."""
        return self._owners[slot]

    @property
    def primaries(self) -> set[Address]:
        return {owner for owner in self._owners if owner is not None}

    def first_slots(self) -> dict[Address, int]:
        """Each primary, with the first slot it serves."""
        found: dict[Address, int] = {}
        for slot, owner in enumerate(self._owners):
            if owner is not None and owner not in found:
                found[owner] = slot
        return found

    @property
    def uncovered(self) -> int:
        """Slots no primary serves."""
        return self._owners.count(None)


def _address(entry: list[Any], asked: Address) -> Address:
    """A node of `CLUSTER SLOTS`: an empty or unknown host is the one asked (Redis' own convention)."""
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    if host in ("", "?"):
        host = asked[0]
    return host, int(entry[1])


async def read_slot_map(target: Cluster, addresses: Iterable[Address], node_timeout: float) -> SlotMap:
    """The slot map, from the first of `addresses` that answers `CLUSTER SLOTS`; ConnectionError when
    none does."""
    errors = []
    for address in addresses:
        client = Redis.from_url(
            target.node_url(address), socket_timeout=node_timeout, socket_connect_timeout=node_timeout
        )
        try:
            reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        except Exception as err:  # any failure of one node: ask the next
            errors.append(f"{address[0]}:{address[1]}: {err or type(err).__name__}")
            continue
        finally:
            await client.aclose()
        ranges = []
        nodes = [address]
        for start, end, primary, *replicas in reply:
            owner = _address(primary, address)
            ranges.append((int(start), int(end), owner))
            nodes += [owner, *(_address(replica, address) for replica in replicas)]
        return SlotMap(ranges, nodes)
    raise ConnectionError("no node of the Redis Cluster answered: " + "; ".join(errors))
