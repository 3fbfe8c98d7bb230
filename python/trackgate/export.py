"""Raw export: a project's stored events over a date range, as JSON lines, read a slice at a time.

Stream entries are ordered by arrival (an entry's id is the time Redis stored it, in ms), events are
selected by their own `time`, so only the entries that arrived while the range's events could arrive are
read, whatever the streams hold before or after. An event of time `t` arrived at `t - max_future_skew` at
the earliest (later times are set to the receive time), and at `t + max_age` at the latest (older events
are rejected), plus the time its batch took to reach Redis (a failed write is retried for the retry
window, an hour at most, so `WRITE_DELAY` covers it). Each bound is widened to a day at least, should
the gateway that wrote the events allow more skew or age than the reader's settings say.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Collection

import msgspec

from trackgate.keys import stream_key
from trackgate.report_reads import Reads

SLICE = 1000
WRITE_DELAY = 2 * 3600.0
"""Seconds an accepted event may take to be stored, beyond its `max_age`."""


class _Timed(msgspec.Struct):
    time: float


class _Named(msgspec.Struct):
    time: float
    event: str


_decode_time = msgspec.json.Decoder(_Timed).decode
_decode_named = msgspec.json.Decoder(_Named).decode


def day_bounds(start: dt.date, end: dt.date) -> tuple[float, float]:
    """Seconds since 1970 of the start of `start` and of the day after `end`, UTC."""
    lo = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC).timestamp()
    hi = dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC).timestamp() + 86400
    return lo, hi


async def export_events(
    reads: Reads,
    token: str,
    partitions: int,
    start: dt.date,
    end: dt.date,
    *,
    max_future_skew: float,
    max_age: float,
    names: Collection[str] | None = None,
    limit: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> AsyncIterator[bytes]:
    """Each event of the project whose time falls from `start` to `end` (inclusive), as one line of
    normalised JSON, partition by partition: of the events named in `names` only when given, and the
    first `limit` of them when given. At most `SLICE` entries are held at a time; `progress` is told how
    many entries each read returned."""
    if limit is not None and limit <= 0:
        return
    wanted = None if names is None else frozenset(names)
    left = limit
    lo, hi = day_bounds(start, end)
    first_id = max(0, int((lo - max(max_future_skew, 86400)) * 1000))
    # Ids of the last ms that can hold an event of the range (any sequence number within it).
    last_id = str(int((hi + max(max_age, 86400) + WRITE_DELAY) * 1000) - 1)
    for partition in range(partitions):
        key = stream_key(token, partition)
        cursor = str(first_id)
        while True:
            # Each entry: [id, [field, value, ...]], the one field `data`.
            [entries] = await reads([("XRANGE", key, cursor, last_id, "COUNT", SLICE)])
            if progress is not None:
                progress(len(entries))
            for _, (_, data) in entries:
                if wanted is None:
                    if not lo <= _decode_time(data).time < hi:
                        continue
                else:
                    named = _decode_named(data)
                    if not (lo <= named.time < hi and named.event in wanted):
                        continue
                yield data + b"\n"
                if left is not None:
                    left -= 1
                    if left == 0:
                        return
            if len(entries) < SLICE:
                break
            cursor = "(" + entries[-1][0].decode()
