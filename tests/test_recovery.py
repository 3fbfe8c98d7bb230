"""The batcher's decisions on a command whose reply it did not get, or whose counting Redis refused: every
case of `trackgate.recovery`, with no I/O."""

from __future__ import annotations

import itertools
import struct

import pytest
from trackgate import store
from trackgate.recovery import (
    LEFT_THE_RING,
    MAX_RELOADS,
    Action,
    Decision,
    Mark,
    Sent,
    after_counting_refused,
    after_loss,
)
from trackgate.redis_pipe import ReplyError

DEADLINE = 100.0
BEFORE, AT, AFTER = DEADLINE - 5, DEADLINE, DEADLINE + 0.001

# What the marks, once read, make of each command: the same whatever the time.
ONCE_READ = {
    (Sent.TRANSACTION, Mark.NOT_APPLIED): Decision(Action.RESEND),
    (Sent.TRANSACTION, Mark.APPLIED): Decision(Action.RESEND_COUNTING, found_stored=True),
    (Sent.TRANSACTION, Mark.COUNTED): Decision(Action.STORED, found_stored=True),
    (Sent.COUNTING, Mark.NOT_APPLIED): Decision(Action.GIVE_UP_COUNTING, reason=LEFT_THE_RING),
    (Sent.COUNTING, Mark.APPLIED): Decision(Action.RESEND_COUNTING),
    (Sent.COUNTING, Mark.COUNTED): Decision(Action.STORED),
}


def test_the_table_covers_every_command_and_mark_read() -> None:
    read = [mark for mark in Mark if mark is not Mark.UNREAD]
    assert set(ONCE_READ) == set(itertools.product(Sent, read))


@pytest.mark.parametrize(("sent", "mark"), list(ONCE_READ))
@pytest.mark.parametrize("now", [BEFORE, AT, AFTER])
def test_once_read_the_marks_decide_however_late(sent: Sent, mark: Mark, now: float) -> None:
    """A batch found stored is answered as such after the retry window too, and what the marks say is
    missing goes out on the connection that read them."""
    assert after_loss(sent, mark, now=now, deadline=DEADLINE) == ONCE_READ[sent, mark]


@pytest.mark.parametrize("sent", list(Sent))
@pytest.mark.parametrize("now", [BEFORE, AT])
def test_unread_marks_wait_for_the_next_connection_within_the_window(sent: Sent, now: float) -> None:
    assert after_loss(sent, Mark.UNREAD, now=now, deadline=DEADLINE).action is Action.WAIT


def test_past_the_window_a_transaction_fails_and_a_counting_is_given_up() -> None:
    """The transaction's events may not be stored: its requests fail. A counting's events are stored:
    they are answered so, uncounted."""
    failed = after_loss(Sent.TRANSACTION, Mark.UNREAD, now=AFTER, deadline=DEADLINE)
    given_up = after_loss(Sent.COUNTING, Mark.UNREAD, now=AFTER, deadline=DEADLINE)
    assert (failed.action, failed.found_stored) == (Action.FAIL, False)
    assert (given_up.action, given_up.found_stored) == (Action.GIVE_UP_COUNTING, False)
    assert "retry window" in given_up.reason


def test_no_decision_counts_a_batch_stored_twice() -> None:
    """`found_stored` is for a transaction whose lost reply would have said its events were stored; a
    counting's events were counted as stored when its transaction was answered."""
    for sent, mark, now in itertools.product(Sent, Mark, [BEFORE, AFTER]):
        decision = after_loss(sent, mark, now=now, deadline=DEADLINE)
        expected = sent is Sent.TRANSACTION and mark in (Mark.APPLIED, Mark.COUNTED)
        assert decision.found_stored is expected, (sent, mark, now)


def test_sent_of_a_command() -> None:
    assert Sent.of(count_only=False) is Sent.TRANSACTION
    assert Sent.of(count_only=True) is Sent.COUNTING


def ring(*entries: tuple[int, bool], slots: int = 4) -> bytes:
    """A partition's ring as Redis holds it: slot k holds (seq, counted) of the writer's k-th batch."""
    data = bytearray(8 * slots)
    for slot, (seq, counted) in enumerate(entries):
        data[8 * slot : 8 * slot + 8] = struct.pack("<Q", seq | (counted << 56))
    return bytes(data)


def test_a_mark_is_read_from_the_ring() -> None:
    entries = store.ring_entries(ring((7, True), (8, False)))
    assert Mark.read(entries, 7) is Mark.COUNTED
    assert Mark.read(entries, 8) is Mark.APPLIED
    assert Mark.read(entries, 9) is Mark.NOT_APPLIED
    # No ring at all (expired, deleted, never written): nothing in it is applied.
    assert Mark.read(store.ring_entries(None), 7) is Mark.NOT_APPLIED


@pytest.mark.parametrize("reloads", range(MAX_RELOADS))
def test_a_counting_refused_for_want_of_the_library_goes_again_after_a_load(reloads: int) -> None:
    decision = after_counting_refused(ReplyError("ERR Function not found"), reloads)
    assert decision == Decision(Action.RELOAD_AND_RESEND_COUNTING)


def test_a_counting_refused_for_want_of_the_library_too_often_is_given_up() -> None:
    decision = after_counting_refused(ReplyError("ERR Function not found"), MAX_RELOADS)
    assert decision.action is Action.GIVE_UP_COUNTING
    assert decision.reason == "Redis refused to count them: ERR Function not found"
    assert not decision.found_stored


def test_a_counting_refused_for_another_reason_is_given_up_at_once() -> None:
    error = ReplyError("ERR tg_count: malformed arguments")
    decision = after_counting_refused(error, 0)
    assert decision == Decision(Action.GIVE_UP_COUNTING, reason=f"Redis refused to count them: {error}")
