"""Daily counts and names seen for days counted before gateways kept them: what `trackgate project
reindex` writes, from the hourly counts, with `tg_reindex` (one call per partition and day)."""

from __future__ import annotations

from redis.exceptions import ResponseError

from trackgate import keys
from trackgate.redis_target import RedisClient


class OldLibraryError(Exception):
    """The function library in Redis has no `tg_reindex`: an older gateway's."""


async def reindex_project(client: RedisClient, token: str) -> tuple[int, int]:
    """Every day of the project that has hourly counts, in every partition: (days, names) written."""
    days = names = 0
    pattern = keys.partitions_pattern(token) + keys.Family.HOURLY_COUNTS + "*"
    async for raw in client.scan_iter(match=pattern, count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        owner = keys.owner(key)
        if owner is None or owner[0] != token:
            continue  # (another project's key that the pattern also matches)
        prefix = keys.partition_prefix(*owner)
        day = key.removeprefix(prefix + keys.Family.HOURLY_COUNTS)
        if day == key:
            continue
        try:
            written = await client.fcall("tg_reindex", 1, prefix, day)
        except ResponseError as err:
            if "function not found" in str(err).lower():
                raise OldLibraryError(
                    "the function library in Redis is an older gateway's: start the upgraded gateway "
                    "(it loads its library), then run this again"
                ) from None
            raise
        days += 1
        names += int(written)
    return days, names
