"""A project's rate limit: how many events (and profile updates) a second its clients may send, and how
many at once after a quiet spell.

It is a token bucket shared by every gateway worker and process (see `gateway/rate_limiter.py` for how
the workers take from it without a Redis round trip per request, and `lua/rate_limits.lua` for the
bucket). `trackgate project set-limit` writes it into the project's registry hash, beside the caps, and
the workers read it at their next reload of the project list.
"""

from __future__ import annotations

from typing import Final

import msgspec

MAX_RATE: Final = 100_000_000
"""The highest events per second (and burst) a limit takes: far above what one Redis stores."""


class RateLimitError(ValueError):
    """A limit out of its range."""


class RateLimit(msgspec.Struct, frozen=True):
    """`events_per_second` on average; up to `burst` at once when the project was quiet."""

    events_per_second: int
    burst: int

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if not 1 <= value <= MAX_RATE:
                raise RateLimitError(f"--{name.replace('_', '-')} is from 1 to {MAX_RATE:,}, not {value}")

    @classmethod
    def of(cls, events_per_second: int, burst: int | None = None) -> RateLimit:
        """A limit whose burst is, unless given, one second's events."""
        return cls(events_per_second, events_per_second if burst is None else burst)

    def text(self) -> str:
        """As `set-limit` takes it: `events-per-second=100 burst=200`."""
        return " ".join(f"{name.replace('_', '-')}={getattr(self, name)}" for name in self.__struct_fields__)


FIELDS: Final = RateLimit.__struct_fields__
"""The project hash's fields of its limit, named as `RateLimit`'s."""

UNLIMITED_TEXT: Final = f"{FIELDS[0].replace('_', '-')}=unlimited"
"""What `project list` shows for a project without a limit."""
