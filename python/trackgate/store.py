"""What trackgate keeps in Redis: the key layout, the `trackgate` function library, its loading.

Keys (every key of one partition carries the hash tag `{<token>:<p>}`, so one function call touches one
Redis Cluster slot and a later move to a cluster needs no change of layout):

    tg:{<token>:<p>}:events           stream of partition p of a project; entry field `data` holds the
                                      event's normalised JSON; entry ids are Redis' own (time-ordered)
    tg:{<token>:<p>}:batch:<writer>   highest batch sequence number of one gateway writer applied to the
                                      partition (expires after a day): makes a retried write idempotent
    tg:projects                       set of project tokens
    tg:project:<token>                hash: name, secret (a hash of it), created
    tg:project-names                  hash: project name -> token

`p` is a stable hash of the distinct_id (the decoder's), so one user's events share a stream, in order.
"""

from __future__ import annotations

from typing import Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from trackgate._native import FIELDS_PER_EVENT

LIBRARY: Final = "trackgate"
PROJECTS_KEY: Final = "tg:projects"
PROJECT_NAMES_KEY: Final = "tg:project-names"


def stream_key(token: str, partition: int) -> str:
    return f"tg:{{{token}:{partition}}}:events"


def project_key(token: str) -> str:
    return f"tg:project:{token}"


# Batch ids are `<writer>:<seq>`: a writer is one gateway worker's lifetime, and its sequence numbers grow
# with every command it sends. Redis applies one writer's commands to a partition in the order it sent
# them, and a retry resends the unanswered ones in the same order, so "seq <= the last applied seq" is
# exactly "already applied". One small key per writer and partition replaces a key per batch (which, at
# hundreds of batches a second per partition kept for a day, would grow to gigabytes).
#
# Per-event arguments (FIELDS_PER_EVENT of them): JSON, event name, distinct_id, whole seconds, funnel
# name, step, goal. Only the JSON is used today; `apply_event` is where funnel and counter updates go.
FUNCTION_SOURCE: Final = r"""#!lua name=trackgate

local function apply_event(prefix, stream, args, i)
  redis.call('XADD', stream, '*', 'data', args[i])
end

local function trim(stream, maxlen, max_age)
  if maxlen > 0 then
    redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
  end
  if max_age > 0 then
    local now = redis.call('TIME')
    local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age * 1000
    if cutoff > 0 then
      redis.call('XTRIM', stream, 'MINID', '~', cutoff)
    end
  end
end

-- KEYS: the partition's stream. ARGV: batch id (<writer>:<seq>), maxlen (0: none), max age in seconds
-- (0: none), arguments per event, then that many arguments for each event.
-- Returns the number of events added; 0 when the batch had been applied before.
local function tg_write(keys, args)
  local stream = keys[1]
  local prefix = string.sub(stream, 1, -7)
  local writer, seq = string.match(args[1], '^([%w%-]+):(%d+)$')
  local width = tonumber(args[4])
  if not writer or not width or width < 1 or (#args - 4) % width ~= 0 then
    return redis.error_reply('ERR tg_write: malformed arguments')
  end
  seq = tonumber(seq)
  local mark = prefix .. 'batch:' .. writer
  local last = redis.call('GET', mark)
  if last and tonumber(last) >= seq then
    return 0
  end
  redis.call('SET', mark, seq, 'EX', 86400)
  local added = 0
  for i = 5, #args, width do
    apply_event(prefix, stream, args, i)
    added = added + 1
  end
  trim(stream, tonumber(args[2]), tonumber(args[3]))
  return added
end

redis.register_function('tg_write', tg_write)
"""


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


def is_missing_function(err: ResponseError) -> bool:
    """Redis lost the library (restarted without persistence, FUNCTION FLUSH): load it and resend."""
    return "function not found" in str(err).lower()


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def fixed_write_arguments(maxlen: int, max_age: float) -> bytes:
    """The arguments of `tg_write` that are the same for every call of a gateway: maxlen, max age, width."""
    return b"".join(bulk(str(v).encode()) for v in (maxlen, int(max_age), FIELDS_PER_EVENT))


_FCALL: Final = b"$5\r\nFCALL\r\n$8\r\ntg_write\r\n$1\r\n1\r\n"


def write_header(key_bulk: bytes, batch_id: bytes, fixed: bytes, count: int) -> bytes:
    """The RESP header of `FCALL tg_write 1 <key> <batch id> <maxlen> <max age> <width>` for `count`
    events; the events' packed arguments (from the decoder) follow it unchanged."""
    return b"*%d\r\n%s%s$%d\r\n%s\r\n%s" % (
        8 + count * FIELDS_PER_EVENT,
        _FCALL,
        key_bulk,
        len(batch_id),
        batch_id,
        fixed,
    )
