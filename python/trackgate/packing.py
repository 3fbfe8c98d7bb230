"""The bytes of the batcher's writes: its commands numbered and packed as one write, with what the
connection passes over of their replies.

A transaction's seq grows with every transaction the writer sends, and its slot is its place in its
partition's ring (see `store.py`); the writer is one worker's lifetime, so `<writer>:<seq>` names one
batch for as long as its mark is kept.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Final

from trackgate import bounds, metrics, store
from trackgate.flush import Command, Key
from trackgate.redis_pipe import ReplyError, pack

log = logging.getLogger("trackgate.batcher")  # the batcher's log, whichever of its modules writes

LOAD_COMMAND: Final = pack("FUNCTION", "LOAD", store.FUNCTION_SOURCE)


def library_loaded(reply: object) -> bool:
    """Whether the reply to LOAD_COMMAND leaves the library in Redis (loaded now, or there already:
    another worker's); a refusal is logged and counted."""
    if isinstance(reply, ReplyError) and "already exists" not in str(reply):
        log.error("Redis refused to load the function library: %s", reply)
        metrics.REDIS_ERRORS.labels("function_load").inc()
        return False
    return True


class Packer:
    """Numbers commands and packs them: the decoder's XADDs and packed FCALL arguments are appended
    unchanged, around the transaction's own few commands."""

    def __init__(
        self,
        commands: store.WriteCommands,
        funnel_window: Callable[[str], int],
        caps: Callable[[str], bounds.Caps],
    ) -> None:
        self._headers = commands
        self._funnel_window = funnel_window
        self._caps = caps
        self.writer = secrets.token_hex(8).encode()
        self._seq = 0
        self._slots: dict[Key, int] = {}  # per partition: the ring slot of its next transaction

    def number(self, command: Command) -> None:
        """A transaction's seq, and its slot in its partition's ring."""
        self._seq += 1
        command.seq = self._seq
        slot = self._slots.get(command.key, 0)
        command.slot = slot
        self._slots[command.key] = (slot + 1) % store.RING_SLOTS

    def write(self, commands: list[Command], after_load: list[Command]) -> tuple[bytes, list[int]]:
        """`commands`, then a FUNCTION LOAD and `after_load` when there are any: the bytes, and per
        command how many of its replies come before the one that answers it."""
        out: list[bytes] = []
        skips = [self._pack(command, out) for command in commands]
        if after_load:
            out.append(LOAD_COMMAND)
            skips.append(0)
            skips.extend(self._pack(command, out) for command in after_load)
        return b"".join(out), skips

    def _pack(self, command: Command, out: list[bytes]) -> int:
        if not command.seq:
            self.number(command)
        if command.count_only:
            batch_id = store.batch_id(self.writer, command.seq, command.slot)
            self._headers.call(
                out, command.key, batch_id, command.sections, self._funnel_window, self._caps, alone=True
            )
            return 0
        self._headers.transaction(
            out,
            command.key,
            self.writer,
            command.seq,
            command.slot,
            command.sections,
            self._funnel_window,
            self._caps,
        )
        return store.transaction_replies(command.count)
