"""What the batcher does with a write command whose reply it did not get, or whose counting Redis
refused: decisions only, from what was sent and what Redis says, with no I/O, so that every case can be
checked on its own (the batcher carries them out).

A transaction records its seq in its partition's ring, and its FCALL sets the entry's counted byte (see
`store.py`), so after a lost connection the ring says, for each command whose reply was not read, what
Redis made of it:

- a transaction not applied goes again, under a new seq (its old slot may be taken by a later batch);
- one applied but not counted has its FCALL sent alone, under the batch's own seq and slot;
- one applied and counted is answered as stored;
- an FCALL sent alone whose batch is no longer in the ring is given up: whether it ran cannot be known,
  and its slot may be another batch's by now. Its events are stored, so its requests are answered so.

Until the marks are read (no connection since the loss) nothing is known; the commands wait for the next
connection, until their flush's retry window has run out: then a transaction's requests fail, and a
counting is given up (its events are stored). Once read, the marks decide, however late: a batch found
stored is answered as such, and what is resent goes out on the connection that read them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from trackgate import store

MAX_RELOADS: Final = 3
"""A counting refused this many times for a missing function library is given up: loading it is not
working."""

LEFT_THE_RING: Final = "its batch has left the partition's ring"


class Sent(enum.Enum):
    """What a command whose reply is awaited is."""

    TRANSACTION = "transaction"  # the batch's whole transaction: mark, XADDs, FCALL
    COUNTING = "counting"  # its FCALL alone, for a batch whose events are stored

    @classmethod
    def of(cls, count_only: bool) -> Sent:
        return cls.COUNTING if count_only else cls.TRANSACTION


class Mark(enum.Enum):
    """What the batch's entry in its partition's ring says, read after the connection was lost."""

    UNREAD = "unread"  # not read since (no connection), or the command waits to go again
    NOT_APPLIED = "not applied"  # the seq is not in the ring
    APPLIED = "applied"  # in the ring, its counted byte not set
    COUNTED = "counted"  # in the ring and counted

    @classmethod
    def read(cls, ring: dict[int, bool], seq: int) -> Mark:
        """The entry of `seq` in a ring as `store.ring_entries` reads it."""
        counted = ring.get(seq)
        if counted is None:
            return cls.NOT_APPLIED
        return cls.COUNTED if counted else cls.APPLIED


class Action(enum.Enum):
    WAIT = "wait"  # kept for the next connection
    STORED = "stored"  # its requests are answered as stored
    RESEND = "resend"  # the whole transaction again, under a new seq and slot
    RESEND_COUNTING = "resend counting"  # its FCALL alone, under the batch's seq and slot
    RELOAD_AND_RESEND_COUNTING = "reload"  # its FCALL alone, after a FUNCTION LOAD
    GIVE_UP_COUNTING = "give up counting"  # stored and answered so; the counting is not tried again
    FAIL = "fail"  # its requests fail: the events may not be stored


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    found_stored: bool = False
    """The marks show the transaction's events stored, which its lost reply would have said: they count
    as stored now (deduplicated)."""
    reason: str = ""
    """Why its counting is given up, or its requests fail, for the log."""


WAIT: Final = Decision(Action.WAIT)
EXPIRED: Final = Decision(Action.FAIL, reason="the retry window ran out")
EXPIRED_COUNTING: Final = Decision(Action.GIVE_UP_COUNTING, reason="the retry window ran out")


def after_loss(sent: Sent, mark: Mark, *, now: float, deadline: float) -> Decision:
    """The decision on a command whose reply was not read when its connection was lost (or that waits to
    go again), given what its partition's ring says and its flush's retry deadline."""
    if mark is Mark.UNREAD:
        if now <= deadline:
            return WAIT
        return EXPIRED if sent is Sent.TRANSACTION else EXPIRED_COUNTING
    if sent is Sent.COUNTING:
        # Its events were stored before; only its counting is in question.
        if mark is Mark.NOT_APPLIED:
            return Decision(Action.GIVE_UP_COUNTING, reason=LEFT_THE_RING)
        if mark is Mark.APPLIED:
            return Decision(Action.RESEND_COUNTING)
        return Decision(Action.STORED)
    if mark is Mark.NOT_APPLIED:
        # The closed connection cannot apply it now: the whole transaction again, as a new one.
        return Decision(Action.RESEND)
    if mark is Mark.APPLIED:
        return Decision(Action.RESEND_COUNTING, found_stored=True)  # its events are in; its FCALL failed
    return Decision(Action.STORED, found_stored=True)


def after_counting_refused(error: Exception, reloads: int) -> Decision:
    """The decision on a batch whose events are stored but whose FCALL Redis refused (`error`), after
    `reloads` FUNCTION LOADs for it already."""
    if store.is_missing_function(error) and reloads < MAX_RELOADS:
        return Decision(Action.RELOAD_AND_RESEND_COUNTING)
    return Decision(Action.GIVE_UP_COUNTING, reason=f"Redis refused to count them: {error}")
