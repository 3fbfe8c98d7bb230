"""The `trackgate` function library and its loading, and the transaction that writes one batch.

The key names come from `keys.py`.
"""

from __future__ import annotations

import math
import struct
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from trackgate._native import PACKED_LAYOUT

# Named through `store` by the batcher and the CLI as well.
from trackgate.keys import mark_key as mark_key
from trackgate.keys import stream_key as stream_key
from trackgate.redis_pipe import bulk

LIBRARY: Final = "trackgate"
RING_SLOTS: Final = 256
"""Entries in a partition's ring of a writer's applied batches (see below)."""


# A batch is written as one transaction:
#
#     MULTI
#     SETRANGE tg:{<token>:<p>}:batch:<writer> <8 * slot> <seq, 8 bytes>
#     EXPIRE tg:{<token>:<p>}:batch:<writer> 86400
#     XADD tg:{<token>:<p>}:events * data <json>      (one per event, made by the decoder)
#     FCALL tg_count 1 <stream> ... <writer>:<seq>:<slot> <the events' arguments>
#     EXEC
#
# so the stream entries, the mark, the counters and the funnel state of a batch change together. The
# events go in by plain XADDs because a redis.call from Lua costs Redis far more than the command itself
# (XADD 1.1 µs in commandstats, the call ~3 µs more per event): the same 200-event batches cost Redis
# 2.7-4.1 µs per event this way against 4.2-5.8 µs with the XADDs inside the function. The function only
# counts.
#
# Batch ids are `<writer>:<seq>:<slot>`: a writer is one gateway worker's lifetime, and its sequence
# numbers grow with every transaction it sends. After a lost connection the batcher closes it (CLIENT
# KILL) and reads the marks: a transaction is applied exactly when its seq is in its partition's ring. A
# ring, not the highest seq: Redis may refuse a transaction when it is queued (OOM, MISCONF) and apply the
# next, and a highest seq would then count the refused one as applied. Slot k of the ring is for the
# writer's k-th transaction to the partition (mod RING_SLOTS; one not applied leaves the slot's older
# entry), so the ring holds the last RING_SLOTS numbered: more than twice as many as a partition can have
# unanswered at once (one per flush in flight, at most 64, and their resends). One 2 KiB key per writer
# and partition replaces a key per batch (which, at thousands of batches a second kept long enough for
# any retry, would be a steady churn of keys). A transaction found not applied goes again as a new one,
# with a new seq and slot.
#
# The function sets its batch's counted byte in the ring and counts only if it was not set: when it failed
# inside an applied transaction (Redis lost the library), it is run again by itself, under the batch's
# own seq and slot, and counts once. A retry reads both: not in the ring, the transaction goes again;
# in it but not counted, the function alone. A counting still waiting after its entry has left the ring
# (a connection lost again and again for long enough to number 256 more transactions to its partition)
# is given up and logged rather than sent: its slot may be another batch's by then.
#
# Per-event arguments: see PACKED_LAYOUT in the decoder (rust/src/resp.rs); the day and the counter field
# come ready-made, so the function does no date arithmetic or string building per event.
FUNCTION_SOURCE: Final = r"""#!lua name=trackgate

local DAY = 86400

-- Days since 1970-01-01 to YYYY-MM-DD (Howard Hinnant's civil_from_days): Redis' Lua has no os.date.
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)
  yoe = math.floor(yoe / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end

-- Trimming by age, once per call.
local function trim_by_age(stream, max_age)
  local now = redis.call('TIME')
  local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age * 1000
  if cutoff > 0 then
    redis.call('XTRIM', stream, 'MINID', '~', cutoff)
  end
end

local function server_time_us()
  local now = redis.call('TIME')
  return now[1] .. string.format('%06d', tonumber(now[2]))
end

-- A batch's funnel work: users' states read once and written back once, counters summed and written
-- once per field, each goal checked once.
local function funnel_batch()
  return { states = {}, dirty = {}, index = {}, counters = {}, goals = {} }
end

local function add(fb, key, field, n)
  local c = fb.counters[key]
  if not c then
    c = {}
    fb.counters[key] = c
  end
  c[field] = (c[field] or 0) + n
end

-- Goals: each partition keeps the first goal it saw per step, with the server time it saw it; a report
-- takes the earliest over the partitions, and counts as conflicts the hits (`q<step>:<goal>` keeps
-- them per goal) whose goal is another. That stays exact however users spread over partitions.
local function funnel_event(fb, prefix, day, window, uid, t, funnel, step, n, goal)
  local goals = prefix .. 'fg:' .. funnel
  local seen = goals .. '\0' .. n
  if not fb.goals[seen] then
    fb.goals[seen] = true
    if redis.call('HSETNX', goals, n, goal) == 1 then
      redis.call('HSET', goals, 't' .. n, server_time_us())
      redis.call('SADD', prefix .. 'funnels', funnel)
    end
  end
  local cohort = t
  local entry, reached, last
  local key = prefix .. 'fs:' .. funnel
  local users = fb.states[key]
  if not users then
    users = {}
    fb.states[key] = users
    fb.dirty[key] = {}
    fb.index[key] = prefix .. 'fx:' .. funnel
  end
  if uid ~= '' then
    local state = users[uid]
    if state == nil then
      state = false
      local raw = redis.call('HGET', key, uid)
      if raw then
        local e, r, l = string.match(raw, '^([%d%.%-]+):(%d+):([%d%.%-]+)$')
        state = { tonumber(e), tonumber(r), tonumber(l) }
      end
      users[uid] = state
    end
    if state then
      entry, reached, last = state[1], state[2], state[3]
      if t - entry <= window then
        cohort = entry
      else
        entry = nil
      end
    end
  end
  local counters = prefix .. 'fc:' .. funnel .. ':' .. day(math.floor(cohort / DAY))
  add(fb, counters, 'h' .. n, 1)
  add(fb, counters, 'q' .. n .. ':' .. goal, 1)
  if uid == '' then
    -- No user to follow: a hit, never a step taken.
    if step > 1 then add(fb, counters, 'o' .. n, 1) end
    return
  end
  if step == 1 then
    if not entry then
      users[uid] = { t, 1, t }
      fb.dirty[key][uid] = true
      add(fb, counters, 'u1', 1)
    end
  elseif entry and reached == step - 1 then
    users[uid] = { entry, step, t }
    fb.dirty[key][uid] = true
    add(fb, counters, 'u' .. n, 1)
    add(fb, counters, 's' .. n, t - last)
  elseif not (entry and reached >= step) then
    add(fb, counters, 'o' .. n, 1)
  end
end

-- Attempts are kept while a later event could still continue one: an event may arrive `late` seconds
-- after its time and continues an attempt begun at most `window` seconds before it, so an attempt begun
-- before now - window - late is over for good. Each call that writes a funnel's states removes up to
-- PRUNE of its attempts that are over (an hour's margin for the clocks of gateway and Redis), and both
-- keys expire when the funnel gets no events for that long.
local PRUNE = 500

local function write_funnel_batch(fb, window, late)
  local now = tonumber(redis.call('TIME')[1])
  local keep = window + late + 3600
  for key, uids in pairs(fb.dirty) do
    local users, flat, entries = fb.states[key], {}, {}
    local index = fb.index[key]
    for uid in pairs(uids) do
      local s = users[uid]
      flat[#flat + 1] = uid
      flat[#flat + 1] = string.format('%d:%d:%d', s[1], s[2], s[3])
      entries[#entries + 1] = s[1]
      entries[#entries + 1] = uid
    end
    for from = 1, #flat, 1000 do
      redis.call('HSET', key, unpack(flat, from, math.min(from + 999, #flat)))
      redis.call('ZADD', index, unpack(entries, from, math.min(from + 999, #entries)))
    end
    local over = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. (now - keep), 'LIMIT', 0, PRUNE)
    if #over > 0 then
      redis.call('HDEL', key, unpack(over))
      redis.call('ZREM', index, unpack(over))
    end
    redis.call('EXPIRE', key, keep)
    redis.call('EXPIRE', index, keep)
  end
  for key, fields in pairs(fb.counters) do
    for field, n in pairs(fields) do
      redis.call('HINCRBY', key, field, n)
    end
  end
end

-- KEYS: the partition's stream. ARGV: maxlen (0: none), max age in seconds (0: none), the project's
-- funnel window in seconds, the argument layout (the decoder's PACKED_LAYOUT), batch id
-- (<writer>:<seq>:<slot in the ring>), how late in seconds an event may arrive (the decoder's max age),
-- then the events' arguments: day, 'HH:<name>', distinct_id, funnel, and for mp_funnel events time,
-- step, goal. The events themselves are added by the XADDs of the same transaction.
-- Returns the number of events counted; 0 when the batch had been counted before.
local function tg_count(keys, args)
  local stream = keys[1]
  local prefix = string.sub(stream, 1, -7)
  local window = tonumber(args[3])
  local writer, slot = string.match(args[5], '^([%w%-]+):%d+:(%d+)$')
  slot = tonumber(slot)
  local late = tonumber(args[6])
  if args[4] ~= '@LAYOUT@' then
    return redis.error_reply('ERR tg_count: argument layout ' .. tostring(args[4]) .. ' is not @LAYOUT@: ' ..
      'the gateway and the function library are of different versions')
  end
  if not writer or not window or not late or slot >= @RING_SLOTS@ then
    return redis.error_reply('ERR tg_count: malformed arguments')
  end
  -- Walk the events' arguments once before changing anything: a malformed call changes nothing. A
  -- funnel event's time and step are read after the first writes, so they are checked here.
  local i, n = 7, #args
  while i <= n do
    if args[i + 3] ~= '' then
      if not (string.match(args[i + 4] or '', '^%-?%d+$') and string.match(args[i + 5] or '', '^%d+$')) then
        return redis.error_reply('ERR tg_count: malformed funnel event')
      end
      i = i + 7
    else
      i = i + 4
    end
  end
  if i ~= n + 1 then
    return redis.error_reply('ERR tg_count: malformed event arguments')
  end
  -- The batch's counted byte, the last of its ring entry: one call sets it and says whether it was set
  -- already (a resent counting), in which case nothing more is done.
  local mark = prefix .. 'batch:' .. writer
  if redis.call('BITFIELD', mark, 'SET', 'u8', '#' .. (slot * 8 + 7), 1)[1] ~= 0 then
    return 0
  end

  local days = {}
  local function day(n)
    local d = days[n]
    if not d then
      d = civil(n)
      days[n] = d
    end
    return d
  end
  -- Counters are summed over the batch first: one HINCRBY per (day, hour, event), one PFADD per
  -- (day, hour, event) with all its users, however many events share them.
  -- The funnel tables are made for the first mp_funnel event: most calls have none.
  local counts, users, added, fb = {}, {}, 0, nil
  i = 7
  while i <= n do
    added = added + 1
    local d, field, uid, funnel = args[i], args[i + 1], args[i + 2], args[i + 3]
    local per_day = counts[d]
    if not per_day then
      per_day = {}
      counts[d] = per_day
      users[d] = {}
    end
    per_day[field] = (per_day[field] or 0) + 1
    if uid ~= '' then
      local list = users[d][field]
      if not list then
        list = {}
        users[d][field] = list
      end
      list[#list + 1] = uid
    end
    if funnel ~= '' then
      local t, n = tonumber(args[i + 4]), args[i + 5]
      fb = fb or funnel_batch()
      funnel_event(fb, prefix, day, window, uid, t, funnel, tonumber(n), n, args[i + 6])
      i = i + 7
    else
      i = i + 4
    end
  end
  if fb then
    write_funnel_batch(fb, window, late)
  end
  for d, fields in pairs(counts) do
    local key = prefix .. 'ev:' .. d
    for field, count in pairs(fields) do
      redis.call('HINCRBY', key, field, count)
    end
  end
  for d, fields in pairs(users) do
    for field, list in pairs(fields) do
      local key = prefix .. 'eu:' .. d .. ':' .. string.sub(field, 4)
      -- PFADD in slices: Lua's unpack has a limit on the number of values.
      for from = 1, #list, 1000 do
        redis.call('PFADD', key, unpack(list, from, math.min(from + 999, #list)))
      end
    end
  end
  -- Trimmed once per batch, not per XADD: the same `~` bound (whole nodes only) for an XADD's worth of
  -- work, and fewer arguments in every XADD that the append-only file records.
  if args[1] ~= '0' then
    redis.call('XTRIM', stream, 'MAXLEN', '~', args[1])
  end
  local max_age = tonumber(args[2])
  if max_age > 0 then
    trim_by_age(stream, max_age)
  end
  return added
end

redis.register_function('tg_count', tg_count)
""".replace("@LAYOUT@", str(PACKED_LAYOUT)).replace("@RING_SLOTS@", str(RING_SLOTS))


async def load_functions(client: Redis, *, replace: bool) -> None:
    """Load the library; without `replace`, a library already there (another worker's) is kept."""
    try:
        if replace:
            await client.function_load(FUNCTION_SOURCE, replace=True)
        else:
            await client.function_load(FUNCTION_SOURCE)
    except ResponseError as err:
        if replace or "already exists" not in str(err):
            raise


def is_missing_function(err: Exception) -> bool:
    """Redis lost the library (restarted without persistence, FUNCTION FLUSH): load it and resend."""
    return "function not found" in str(err).lower()


_FCALL: Final = bulk(b"FCALL") + bulk(b"tg_count") + bulk(b"1")
_FIXED_ARGS: Final = 6
MULTI: Final = b"*1\r\n$5\r\nMULTI\r\n"
EXEC: Final = b"*1\r\n$4\r\nEXEC\r\n"
# A writer's marks outlive any retry of its commands by far: a day.
MARK_SECONDS: Final = b"86400"
_SEQ: Final = struct.Struct("<Q")
_COUNTED: Final = 1 << 56  # the entry's last byte, set by tg_count
_OFFSETS: Final = tuple(bulk(b"%d" % (slot * _SEQ.size)) for slot in range(RING_SLOTS))


def ring_entries(ring: bytes | None) -> dict[int, bool]:
    """What a partition's ring (`mark_key`) holds: the applied batches among the writer's last RING_SLOTS
    numbered for the partition, each seq with whether it was counted. Slots not written yet read 0, which
    is no seq (they start at 1)."""
    if not ring:
        return {}
    whole = ring[: len(ring) - len(ring) % _SEQ.size]
    return {n % _COUNTED: n >= _COUNTED for (n,) in _SEQ.iter_unpack(whole) if n % _COUNTED}


def batch_id(writer: bytes, seq: int, slot: int) -> bytes:
    """What tg_count is told of its batch: the writer, the seq, and the seq's slot in the ring."""
    return b"%s:%d:%d" % (writer, seq, slot)


MARK_REPLIES: Final = 2
"""The replies in EXEC's that answer the mark's commands (SETRANGE, EXPIRE); the XADDs' follow."""


def transaction_replies(events: int) -> int:
    """Replies Redis sends to a batch's transaction before EXEC's: MULTI's and one per queued command
    (the mark's SETRANGE and EXPIRE, the XADDs, the FCALL)."""
    return events + 2 + MARK_REPLIES


class WriteCommands:
    """Builds a batch's transaction (see above) and `FCALL tg_count 1 <stream> <maxlen> <max age> <window>
    <layout> <batch id> <event max age>` headers; the decoder's XADD commands and the events' `args`
    packed arguments follow unchanged. What depends on the partition alone is encoded once."""

    def __init__(self, stream_maxlen: int, stream_max_age: float, event_max_age: float) -> None:
        self._limits = bulk(str(stream_maxlen).encode()) + bulk(str(int(stream_max_age)).encode())
        self._layout = bulk(str(PACKED_LAYOUT).encode())
        self._late = bulk(str(math.ceil(event_max_age)).encode())
        self._prefixes: dict[tuple[str, int, int], bytes] = {}
        self._marks: dict[tuple[str, int, bytes], tuple[bytes, bytes]] = {}

    def _prefix(self, token: str, partition: int, window: int) -> bytes:
        """`FCALL tg_count 1 <stream> <maxlen> <max age> <window> <layout>`, without its array header."""
        key = (token, partition, window)
        prefix = self._prefixes.get(key)
        if prefix is None:
            stream = bulk(stream_key(token, partition).encode())
            prefix = self._prefixes[key] = (
                _FCALL + stream + self._limits + bulk(str(window).encode()) + self._layout
            )
        return prefix

    def header(self, token: str, partition: int, window: int, batch_id: bytes, args: int) -> bytes:
        prefix = self._prefix(token, partition, window)
        return b"*%d\r\n%s%s%s" % (4 + _FIXED_ARGS + args, prefix, bulk(batch_id), self._late)

    def transaction(
        self,
        out: list[bytes],
        token: str,
        partition: int,
        window: int,
        writer: bytes,
        seq: int,
        slot: int,
        args: int,
        packed: list[bytes],
        xadds: list[bytes],
    ) -> None:
        """Append to `out` the transaction that writes one batch: `packed` and `xadds` are the decoder's
        sections of one or more requests for this partition, `args` their packed arguments in all; `slot`
        is where the partition's ring records `seq`. Called for every partition of every flush: what does
        not change is made once."""
        key = (token, partition, writer)
        marks = self._marks.get(key)
        if marks is None:
            ring = bulk(mark_key(token, partition, writer))
            marks = self._marks[key] = (
                MULTI + b"*4\r\n$8\r\nSETRANGE\r\n" + ring,
                b"*3\r\n$6\r\nEXPIRE\r\n" + ring + bulk(MARK_SECONDS),
            )
        setrange, expire = marks
        out.append(b"%s%s$8\r\n%s\r\n%s" % (setrange, _OFFSETS[slot], _SEQ.pack(seq), expire))
        out.extend(xadds)
        out.append(self.header(token, partition, window, batch_id(writer, seq, slot), args))
        out.extend(packed)
        out.append(EXEC)
