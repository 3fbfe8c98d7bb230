"""The worker's writer of accepted events, as `--redis-url` says: the batcher of one Redis (or of the
primary Sentinel names, `sentinel_primary.py`), or on a Redis Cluster a batcher per primary behind a
router (`cluster_batcher.py`). Every batcher waits for `--durability`'s replicas."""

from __future__ import annotations

from typing import Any

from trackgate import redis_target
from trackgate.batcher import Batcher, Connect
from trackgate.cluster_batcher import ClusterBatcher
from trackgate.projects import TokenCache
from trackgate.sentinel_primary import SentinelPrimary
from trackgate.settings import Settings


def writer(settings: Settings, tokens: TokenCache) -> Batcher | ClusterBatcher:
    """Not started: the caller starts it (`await writer.start()`)."""
    assert settings.redis_url is not None
    target = redis_target.parse(settings.redis_url)

    def batcher(connect: Connect | None = None, *, follows_redirects: bool = False) -> Batcher:
        return Batcher(
            settings.redis_url or "",
            max_events=settings.batch_max_events,
            linger=settings.batch_linger_ms / 1000,
            depth=settings.pipeline_depth,
            max_pending=settings.max_pending_events,
            timeout=settings.redis_timeout,
            retry_window=settings.retry_window,
            stream_maxlen=settings.stream_maxlen,
            stream_max_age=settings.stream_max_age,
            event_max_age=settings.max_age,
            dedup_window=settings.dedup_window,
            funnel_window=tokens.funnel_window,
            caps=tokens.caps,
            counter_retention_days=settings.counter_retention_days,
            durability=settings.write_durability(),
            connect=connect,
            follows_redirects=follows_redirects,
        )

    if isinstance(target, redis_target.Sentinel):
        return batcher(SentinelPrimary(target).connect)
    if not isinstance(target, redis_target.Cluster):
        return batcher()
    marks_client = redis_target.client(target, timeout=settings.redis_timeout, connect_timeout=1.0)

    async def read_marks(names: list[bytes]) -> list[Any]:
        # The cluster client follows MOVED and ASK to wherever each mark is now.
        return [await marks_client.get(name) for name in names]

    return ClusterBatcher(
        target,
        lambda connect: batcher(connect, follows_redirects=True),
        retry_window=settings.retry_window,
        read_marks=read_marks,
    )
