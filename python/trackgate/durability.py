"""How far a write must have gone before its requests are answered `1` (`--durability`).

- `local`: once the primary applied it. What survives is what the primary's persistence keeps (with
  `appendfsync everysec`, all but the last second or so) and what its replicas had received when it
  died: a failover to a replica loses the writes it had not received yet.
- `replicas=N`: only once `WAIT N` says N replicas have it, within `--durability-timeout` ms; else its
  requests get 503 (the events may be stored: clients retry, and deduplication on `$insert_id` makes
  the retry harmless). A write answered `1` survives the loss of the primary, and of N - 1 replicas
  besides, whatever their persistence.

WAIT blocks the connection until the replicas acknowledge, or the timeout passes, so each write of the
batcher costs a round trip to the replicas before the next one on the connection runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from trackgate.redis_pipe import ReplyError, pack

LOCAL_LEVEL: Final = "local"
_REPLICAS: Final = re.compile(r"replicas=([1-9][0-9]{0,2})")
LEVELS: Final = f"{LOCAL_LEVEL} or replicas=N (N from 1 to 999)"
"""What `--durability` accepts, as its help and its error say."""


@dataclass(frozen=True, slots=True)
class Durability:
    """`replicas`: how many replicas must have a write (0: `local`); `timeout_ms`: how long WAIT may
    wait for them."""

    replicas: int = 0
    timeout_ms: int = 1000
    wait: bytes = field(init=False, repr=False, compare=False)
    """The WAIT sent after each write; nothing with `local`."""

    def __post_init__(self) -> None:
        wait = pack("WAIT", str(self.replicas), str(self.timeout_ms)) if self.replicas else b""
        object.__setattr__(self, "wait", wait)

    @classmethod
    def parse(cls, level: str, timeout_ms: int) -> Durability:
        """`--durability` and `--durability-timeout`; ValueError for a level that is neither."""
        if level == LOCAL_LEVEL:
            return cls(0, timeout_ms)
        found = _REPLICAS.fullmatch(level)
        if found is None:
            raise ValueError(f"expected {LEVELS}")
        return cls(int(found[1]), timeout_ms)

    def confirmed(self, reply: Any) -> bool:
        """Whether WAIT's reply says enough replicas have the connection's writes."""
        return isinstance(reply, int) and reply >= self.replicas

    def shortfall(self, reply: Any) -> str:
        """Why a WAIT's reply is not enough, for the log and /readyz."""
        if isinstance(reply, ReplyError):
            return f"Redis refused WAIT: {reply}"
        if isinstance(reply, Exception):
            return str(reply)
        return f"{reply} of {self.replicas} replicas had the write within {self.timeout_ms} ms"


LOCAL: Final = Durability()
