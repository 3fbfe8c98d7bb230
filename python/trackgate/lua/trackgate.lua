#!lua name=@LIBRARY@
-- trackgate's function library: `tg_count`, the counting of a batch's events and the applying of its
-- profile updates; `tg_take` (rate_limits.lua); `tg_reindex`, for days counted by older gateways. store.py loads it with each name between @ signs
-- replaced by its value on the Python side, and profiles.lua and rate_limits.lua in the place of the
-- lines that name them.

local DAY = 86400

-- Small counts as text: a number passed to redis.call is formatted with sprintf("%.17g"), which costs more
-- than the HINCRBY it is for; a partition's call with many projects makes such a count per project.
local COUNT_TEXT = {}
for n = 1, 1024 do
  COUNT_TEXT[n] = '' .. n
end

-- Key names are keys.py's: the partition prefix the caller passes, a family, the key's own parts joined
-- by ':'.
local MARKS, HOURLY_COUNTS, DAILY_USERS = '@MARKS@', '@HOURLY_COUNTS@', '@DAILY_USERS@'
local DAILY_COUNTS, EVENT_NAMES, NAMES_SEEN = '@DAILY_COUNTS@', '@EVENT_NAMES@', '@NAMES_SEEN@'
local STREAM, PROFILE_UPDATES = '@STREAM@', '@PROFILE_UPDATES@'
local DEDUP, DEDUP_BY_TIME = '@DEDUP@', '@DEDUP_BY_TIME@'
local FUNNEL_NAMES, FUNNEL_ACTIVITY = '@FUNNEL_NAMES@', '@FUNNEL_ACTIVITY@'
local FUNNEL_GOALS, FUNNEL_STATES = '@FUNNEL_GOALS@', '@FUNNEL_STATES@'
local FUNNEL_ATTEMPTS, FUNNEL_COUNTERS = '@FUNNEL_ATTEMPTS@', '@FUNNEL_COUNTERS@'

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

-- YYYY-MM-DD to the number YYYYMMDD, which orders days as their dates do.
local function day_number(day)
  return tonumber((string.gsub(day, '-', '')))
end

-- What the library keeps between calls (the numbers, the tokens and the trims below): tables of at most
-- their `size` entries, emptied when full, so that their memory is bounded. A table's count is kept
-- beside it, so that a lookup, the common case, is a plain index.
local counted = {}

local function memo(size)
  local kept = {}
  counted[kept] = { count = 0, size = size }
  return kept
end

local function remember(kept, key, value)
  local c = counted[kept]
  if c.count == c.size then
    for old in pairs(kept) do
      kept[old] = nil
    end
    c.count = 0
  end
  kept[key], c.count = value, c.count + 1
  return value
end

-- The numbers of the arguments that recur call after call (a section's size, a project's window and
-- caps, the header's), each read once: Lua's tonumber costs two strtod calls.
local numbers = memo(4096)

local function number(text)
  if text == nil then
    return nil
  end
  local n = numbers[text]
  if n == nil then
    n = remember(numbers, text, tonumber(text) or false)
  end
  return n or nil
end

-- The tokens found well-formed: a token is matched against the pattern once, not in every call (with
-- many projects a call has a section, so a match, per event or two).
local good_tokens = memo(4096)

local function good_token(token)
  if good_tokens[token] then
    return true
  end
  if not (token and #token >= 8 and string.match(token, '^[%w_%-]+$')) then
    return false
  end
  return remember(good_tokens, token, true)
end

-- A call's server time, read once: `seconds`, and `ms` (milliseconds, as stream ids count them).
local function server_clock()
  local now = redis.call('TIME')
  local seconds = tonumber(now[1])
  return { seconds = seconds, ms = seconds * 1000 + math.floor(tonumber(now[2]) / 1000) }
end

-- Trimmed by the batch, not by each XADD: the same `~` bound (whole nodes only) for an XADD's worth of
-- work, and fewer arguments in every XADD that the append-only file records. And not by every batch: a
-- stream is trimmed again once a TRIM_SHARE-th of its length limit was added to it, or a TRIM_SHARE-th
-- of its age limit went by, since this library last trimmed it. With many projects a partition's call
-- holds one or two events of each, and two XTRIMs per stream and call were a good part of its work
-- (bench/README.md, "Many projects"). So a stream holds at most a TRIM_SHARE-th more than its limits
-- allow, beyond the whole nodes that `~` keeps. What was trimmed when is the library's (kept between
-- calls, at most 65,536 streams): lost with it, a stream is trimmed at its next write.
local TRIM_SHARE, trimmed = 64, memo(65536)

-- `added`: the entries just added to `stream`; `limits` the call's {maxlen (text), max age, ...}.
local function trim(stream, added, limits, clock)
  local maxlen, max_age = limits[1], limits[2]
  local last = trimmed[stream]
  if last then
    last.added = last.added + added
    local by_length = maxlen ~= '0' and last.added * TRIM_SHARE >= number(maxlen)
    local by_age = max_age > 0 and (clock.seconds - last.at) * TRIM_SHARE >= max_age
    if not (by_length or by_age) then
      return
    end
    last.added, last.at = 0, clock.seconds
  else
    remember(trimmed, stream, { added = 0, at = clock.seconds })
  end
  if maxlen ~= '0' then
    redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
  end
  local cutoff = clock.ms - max_age * 1000
  if max_age > 0 and cutoff > 0 then
    redis.call('XTRIM', stream, 'MINID', '~', cutoff)
  end
end

@PROFILES@

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
  local goals = prefix .. FUNNEL_GOALS .. funnel
  local seen = goals .. '\0' .. n
  if not fb.goals[seen] then
    fb.goals[seen] = true
    if redis.call('HSETNX', goals, n, goal) == 1 then
      redis.call('HSET', goals, 't' .. n, server_time_us())
    end
  end
  local cohort = t
  local entry, reached, last
  local key = prefix .. FUNNEL_STATES .. funnel
  local users = fb.states[key]
  if not users then
    users = {}
    fb.states[key] = users
    fb.dirty[key] = {}
    fb.index[key] = prefix .. FUNNEL_ATTEMPTS .. funnel
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
  local counters = prefix .. FUNNEL_COUNTERS .. funnel .. ':' .. day(math.floor(cohort / DAY))
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

local function write_funnel_batch(fb, now, window, late, keep_counters)
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
  -- A cohort day's counters expire `keep_counters` seconds after their first write (NX: a later batch
  -- does not push the expiry on).
  for key, fields in pairs(fb.counters) do
    for field, n in pairs(fields) do
      redis.call('HINCRBY', key, field, COUNT_TEXT[n] or n)
    end
    redis.call('EXPIRE', key, keep_counters, 'NX')
  end
end

-- Caps (bounds.py): names past a cap are counted under OVERFLOW. Each partition keeps a set of the day's
-- names, what the cap is checked against, and a name's keys get their expiry when the set first holds
-- the name: once per key and day, not per event or batch.
local OVERFLOW = '@OVERFLOW@'

-- The arguments an event takes (PACKED_LAYOUT): 7 for an mp_funnel event, else 4; `extra` more (its
-- dedup hash) when the call deduplicates.
local function width(args, i, extra)
  return (args[i + 3] ~= '' and 7 or 4) + extra
end

-- Deduplication (store.py): each event with an `$insert_id` comes with its dedup hash, the last of its
-- arguments: its time in seconds (4 bytes, big-endian), then the hash of its identity, which has that
-- time in it, so that a retry of an event has the event's time. A partition keeps the hashes it stored in
-- sets by bucket of `window` seconds. An event that comes while its time's bucket is not over (server
-- time) is kept in the set of its time's bucket (DEDUP_BY_TIME), one that comes later (a late event, or
-- /import's history) in the set of the server time's bucket (DEDUP); each set expires when the bucket
-- after its own ends. An event stored at server time s is found until at least s + window:
-- - kept in the set of its time's bucket b (so s is before the end of b): a retry within the window
--   comes before the end of b + 1, on time (asking the same set) or late in b + 1, which also asks the
--   set of the time's bucket when it is the previous one;
-- - kept in the set of server bucket B (late): a retry within the window comes late, in B or B + 1, and
--   asks the sets of the server's bucket and the previous one.
-- An event that comes on time, as nearly all of /track's do, is looked up in one set. Every hash kept was
-- stored within the last two windows, or within two windows and how far ahead an event's time may be.

-- The time (seconds) at the head of a dedup hash, 4 bytes big-endian; `byte` is string.byte (which
-- the library cannot take at load, outside its functions).
local function dedup_time(byte, hash)
  local a, b, c, d = byte(hash, 1, 4)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

-- The call's hashes by the bucket of their events' time, in the order first seen: a list of groups,
-- each with its bucket, its hashes and their indexes in `hashes` (`at`: none when the call's events are
-- all of one bucket, as nearly all are; then the group's hashes are `hashes`, and finding that out is
-- the whole cost per hash).
local function by_bucket(hashes, window)
  local byte, n = string.byte, #hashes
  local first = dedup_time(byte, hashes[1])
  first = first - first % window
  local k, after = 2, first + window
  while k <= n do
    local a, b, c, d = byte(hashes[k], 1, 4)
    local t = ((a * 256 + b) * 256 + c) * 256 + d
    if t < first or t >= after then
      break
    end
    k = k + 1
  end
  if k > n then
    return { { bucket = first / window, hashes = hashes } }
  end
  local groups, index = {}, {}
  for j = 1, n do
    local hash = hashes[j]
    local t = dedup_time(byte, hash)
    local bucket = (t - t % window) / window
    local group = index[bucket]
    if not group then
      group = { bucket = bucket, hashes = {}, at = {} }
      index[bucket] = group
      groups[#groups + 1] = group
    end
    local m = #group.hashes + 1
    group.hashes[m] = hash
    group.at[m] = j
  end
  return groups
end

-- Looks `hashes` up in the set `into` and in those of `also` that exist, and adds the ones not found to
-- `into`, which expires at `expiry`. Returns the indexes in `hashes` (a set) of the duplicates, of stored
-- events or of an earlier one among `hashes`, or nil when there are none. The common call has no
-- duplicate: it pays for one lookup and one insert per hash, and for no table built per hash.
local function look_up_and_keep(into, also, hashes, expiry)
  local sets, dup = { into }, nil
  for _, key in ipairs(also) do
    if redis.call('EXISTS', key) == 1 then
      sets[#sets + 1] = key
    end
  end
  for _, key in ipairs(sets) do
    for from = 1, #hashes, 1000 do
      local last = math.min(from + 999, #hashes)
      local there = redis.call('SMISMEMBER', key, unpack(hashes, from, last))
      for j = from, last do
        if there[j - from + 1] == 1 then
          dup = dup or {}
          dup[j] = true
        end
      end
    end
  end
  local fresh = hashes
  if dup then
    fresh = {}
    for j, hash in ipairs(hashes) do
      if not dup[j] then fresh[#fresh + 1] = hash end
    end
  end
  local added = 0
  for from = 1, #fresh, 1000 do
    added = added + redis.call('SADD', into, unpack(fresh, from, math.min(from + 999, #fresh)))
  end
  if added > 0 then
    redis.call('EXPIREAT', into, expiry)
  end
  if added < #fresh then
    -- Some hash came twice: its first event is stored, the later ones are duplicates.
    local seen = {}
    for j, hash in ipairs(hashes) do
      if not (dup and dup[j]) then
        if seen[hash] then
          dup = dup or {}
          dup[j] = true
        end
        seen[hash] = true
      end
    end
  end
  return dup
end

-- `hashes` holds the call's hashes in the order of their events. Returns the indexes in `hashes` (a set)
-- of the duplicates, or nil when there are none; the others are kept.
local function find_duplicates(shared, hashes, window, clock)
  if #hashes == 0 then
    return nil
  end
  local now = math.floor(clock.seconds / window)
  local by_time, late = shared .. DEDUP_BY_TIME .. window .. ':', shared .. DEDUP .. window .. ':'
  local dup = nil
  for _, group in ipairs(by_bucket(hashes, window)) do
    local bucket, found = group.bucket, nil
    if bucket >= now then
      found = look_up_and_keep(by_time .. bucket, {}, group.hashes, (bucket + 2) * window)
    else
      local also = { late .. (now - 1) }
      if bucket == now - 1 then
        also[2] = by_time .. bucket
      end
      found = look_up_and_keep(late .. now, also, group.hashes, (now + 2) * window)
    end
    if found then
      dup = dup or {}
      for j in pairs(found) do
        dup[group.at and group.at[j] or j] = true
      end
    end
  end
  return dup
end

-- The duplicates' entries (index among the call's events and updates, from 0), from the indexes of
-- their hashes (`dup`, see find_duplicates), by a second walk over the sections' arguments: made only for
-- a call with duplicates. Each section gets `gone`, the duplicates' ordinals among its events.
local function duplicate_positions(args, sections, dup)
  local found, k, entry = {}, 0, 0
  for _, section in ipairs(sections) do
    local gone, events, i = {}, 0, section.from
    while i <= section.to do
      if is_update(args, i) then
        i = i + update_width(args, i)
      else
        local w = width(args, i, 1)
        if args[i + w - 1] ~= '' then
          k = k + 1
          if dup[k] then
            found[#found + 1] = entry
            gone[#gone + 1] = events
          end
        end
        events = events + 1
        i = i + w
      end
      entry = entry + 1
    end
    section.gone = gone
  end
  return found
end

-- The duplicates' entries out of the stream. The call's events went in by the XADDs just before it in
-- the same transaction, so they are the stream's last `events` entries, in order: `gone`'s ordinals
-- (ascending) name them. Their XADD and their XDEL are one atomic change, which no reader sees.
local function remove_duplicates(stream, gone, events)
  local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', events - gone[1])
  local ids = {}
  for _, ordinal in ipairs(gone) do
    ids[#ids + 1] = tail[events - ordinal][1]
  end
  for from = 1, #ids, 1000 do
    redis.call('XDEL', stream, unpack(ids, from, math.min(from + 999, #ids)))
  end
end

-- Whether a funnel is followed: decided when the batch first names it. The funnel cap is checked
-- against the partition's active funnels, those a batch followed within `window + late` seconds (server
-- time): past that no event can continue an attempt begun while the funnel was followed, so a quiet
-- funnel gives its place up. An active funnel is followed (one ZSCORE); another, new or quiet, is
-- admitted while fewer than `cap` funnels are active, counted once per batch that names one (one
-- ZREMRANGEBYSCORE of the quiet ones and one ZCARD). Returns the decisions so far (funnel -> boolean)
-- and the function that makes them.
local function funnel_admission(prefix, cap, now, window, late)
  local active, admitted, known = prefix .. FUNNEL_ACTIVITY, {}, nil
  local since = now - window - late
  return admitted, function(funnel)
    local followed = admitted[funnel]
    if followed == nil then
      local last = redis.call('ZSCORE', active, funnel)
      followed = last and tonumber(last) >= since
      if not followed then
        if not known then
          redis.call('ZREMRANGEBYSCORE', active, '-inf', '(' .. since)
          known = redis.call('ZCARD', active)
        end
        followed = known < cap
        if followed then
          redis.call('SADD', prefix .. FUNNEL_NAMES, funnel)
          known = known + 1
        end
      end
      admitted[funnel] = followed
    end
    return followed
  end
end

-- A funnel's goals, the partition's funnel names and its activity last while a funnel has events:
-- renewed by every batch that follows one, after its goals are written, with the followed funnels'
-- activity set to `now`.
local function keep_funnels(prefix, admitted, now, keep)
  local activity = {}
  for funnel, followed in pairs(admitted) do
    if followed then
      redis.call('EXPIRE', prefix .. FUNNEL_GOALS .. funnel, keep)
      activity[#activity + 1] = now
      activity[#activity + 1] = funnel
    end
  end
  if #activity > 0 then
    local active = prefix .. FUNNEL_ACTIVITY
    for from = 1, #activity, 1000 do
      redis.call('ZADD', active, unpack(activity, from, math.min(from + 999, #activity)))
    end
    redis.call('EXPIRE', active, keep)
    redis.call('EXPIRE', prefix .. FUNNEL_NAMES, keep)
  end
end

-- Which of a day's names (a list, each once) are counted under their own name: those in the day's set,
-- then new ones while the set holds fewer than `cap` (OVERFLOW aside). Returns the admitted (a set), the
-- names new to the day (a list), whether the set is new, and whether any name was refused.
local function admit_names(key, list, cap)
  local admitted, fresh, candidates = {}, {}, {}
  for from = 1, #list, 1000 do
    local last = math.min(from + 999, #list)
    local found = redis.call('SMISMEMBER', key, unpack(list, from, last))
    for j = from, last do
      if found[j - from + 1] == 1 then
        admitted[list[j]] = true
      else
        candidates[#candidates + 1] = list[j]
      end
    end
  end
  if #candidates == 0 then
    return admitted, fresh, false, false
  end
  local members = redis.call('SCARD', key)
  local room = cap - members + redis.call('SISMEMBER', key, OVERFLOW)
  local refused = false
  for _, name in ipairs(candidates) do
    if name == OVERFLOW or room > 0 then
      admitted[name] = true
      fresh[#fresh + 1] = name
      if name ~= OVERFLOW then room = room - 1 end
    else
      refused = true
    end
  end
  -- Names refused are counted under OVERFLOW, which then joins the day's names as any new name does.
  if refused and not admitted[OVERFLOW] then
    admitted[OVERFLOW] = true
    fresh[#fresh + 1] = OVERFLOW
  end
  for from = 1, #fresh, 1000 do
    redis.call('SADD', key, unpack(fresh, from, math.min(from + 999, #fresh)))
  end
  return admitted, fresh, members == 0, refused
end

-- A day's counters (field -> count) and users (field -> list) with the fields of names not `admitted`
-- folded into OVERFLOW's, and `over` plus the events now counted as OVERFLOW.
local function fold_refused(counts, users, admitted, over)
  local folded_counts, folded_users = {}, {}
  for field, count in pairs(counts) do
    local name = string.sub(field, 4)
    if not admitted[name] then
      name = OVERFLOW
      field = string.sub(field, 1, 3) .. OVERFLOW
    end
    if name == OVERFLOW then
      over = over + count
    end
    folded_counts[field] = (folded_counts[field] or 0) + count
  end
  for field, list in pairs(users) do
    if not admitted[string.sub(field, 4)] then
      field = string.sub(field, 1, 3) .. OVERFLOW
    end
    local into = folded_users[field]
    if into then
      for _, uid in ipairs(list) do
        into[#into + 1] = uid
      end
    else
      folded_users[field] = list
    end
  end
  return folded_counts, folded_users, over
end

-- KEYS (keys.count_function_keys): the partition's prefix, shared by its projects. ARGV (the header
-- store.WriteCommands builds): maxlen (0: none), max age in seconds (0: none), the argument layout
-- (store.LAYOUT, or store.DEDUP_LAYOUT: then two more, the dedup window in seconds and 'alone' when the
-- call is sent without its transaction's XADDs, else 'after'), batch id (<writer>:<seq>:<slot in the
-- ring>), how late in seconds an event may arrive (the decoder's max age), the counter retention in
-- days; then one section per project: its token, its funnel window in seconds, its caps on event names
-- a day and on funnel names, the number of arguments that follow for it; then its events' arguments
-- (the decoder's PACKED_LAYOUT): day ('' when not counted), 'HH:<name>', distinct_id, funnel, and for
-- mp_funnel events time, step, goal, and with DEDUP_LAYOUT the dedup hash; and among them, in the order
-- sent, the profile updates' (see profiles.lua). The events and the updates themselves are added to
-- their streams by the XADDs of the same transaction.
-- Returns {events counted, events counted under OVERFLOW}, and when the batch holds profile updates two
-- more: updates applied, new profile properties refused for want of room; zeros when the batch had been
-- counted before. When some events were duplicates (DEDUP_LAYOUT) all four, and a fifth: the
-- duplicates' entries (index among the call's events and updates, all sections', from 0), not counted,
-- and out of the streams unless the call came 'alone'.
local FIRST = @HEADER_ARGS@ + 1
local SECTION = @SECTION_ARGS@

-- One project's section of a call, checked before anything changes (a malformed call changes nothing):
-- its prefix, caps and window, where its arguments are, how many events and updates they hold, whether
-- an mp_funnel event is among them, and its dedup hashes appended to `hashes`. A funnel event's time and
-- step are read after the first writes, so they are checked here. Returns the section, or nil and why.
local function read_section(args, i, extra, hashes, shared)
  local token, size = args[i], number(args[i + SECTION - 1])
  local section = {
    prefix = shared .. (token or '') .. ':',
    window = number(args[i + 1]),
    name_cap = number(args[i + 2]),
    funnel_cap = number(args[i + 3]),
    from = i + SECTION,
    events = 0,
    updates = 0,
    named = false,
  }
  if not (good_token(token) and size and section.window
      and section.name_cap and section.funnel_cap) then
    return nil, 'malformed arguments'
  end
  section.to = section.from + size - 1
  if section.to > #args then
    return nil, 'malformed event arguments'
  end
  i = section.from
  while i <= section.to do
    if is_update(args, i) then
      local taken = update_width(args, i)
      if not taken then
        return nil, 'malformed profile update'
      end
      section.updates = section.updates + 1
      i = i + taken
    else
      if args[i + 3] ~= '' then
        if not (string.match(args[i + 4] or '', '^%-?%d+$') and string.match(args[i + 5] or '', '^%d+$')) then
          return nil, 'malformed funnel event'
        end
        section.named = true
      end
      local w = width(args, i, extra)
      local hash = args[i + w - 1]
      -- (a hash missing from the end is malformed arguments, below)
      if extra > 0 and hash and hash ~= '' then
        if #hash ~= @DEDUP_HASH_BYTES@ then
          return nil, 'malformed dedup hash'
        end
        hashes[#hashes + 1] = hash
      end
      section.events = section.events + 1
      i = i + w
    end
  end
  if i ~= section.to + 1 then
    return nil, 'malformed event arguments'
  end
  return section
end

-- A section of one plain event (no funnel, no profile update), of a name its hour knows: the common
-- section of a partition's call when many projects send a few events each. It is counted as the general
-- path below counts it, without the tables that path builds per section; false when the section is not
-- such a one (then that path counts it).
local function count_one_known(args, section, duplicate, entry, limits, clock)
  local i, prefix = section.from, section.prefix
  local d, field, uid = args[i], args[i + 1], args[i + 2]
  if duplicate[entry] or d == '' then
    return 0
  end
  local name = string.sub(field, 4)
  if name == OVERFLOW then
    return false
  end
  -- The name's counter of the hour was there before: then its day admitted the name (a name's counters
  -- are only written once the day's set holds it) and its day's keys have their expiry. If it was not,
  -- the count is taken back and the general path decides.
  local hourly = prefix .. HOURLY_COUNTS .. d
  if redis.call('HINCRBY', hourly, field, '1') == 1 then
    redis.call('HDEL', hourly, field)
    return false
  end
  redis.call('HINCRBY', prefix .. DAILY_COUNTS .. d, name, '1')
  if uid ~= '' then
    redis.call('PFADD', prefix .. DAILY_USERS .. d .. ':' .. name, uid)
  end
  trim(prefix .. STREAM, 1, limits, clock)
  return 1
end

-- Counts one section's events (those not `duplicate`: entries from `entry`, the index of its first),
-- applies its profile updates, trims its streams. `day` formats a day number; `limits` is the call's
-- {maxlen, max age, late, retention}; `clock` its server time. Returns what the call returns, for this section.
local function count_section(args, section, extra, duplicate, entry, day, limits, clock)
  if section.events == 1 and section.updates == 0 and not section.named then
    local added = count_one_known(args, section, duplicate, entry, limits, clock)
    if added then
      return added, 0, 0
    end
  end
  local prefix, window, late, retention = section.prefix, section.window, limits[3], limits[4]
  local keep = retention * DAY
  -- One walk over the events: counters summed by (day, hour, name), one HINCRBY and one PFADD (with
  -- all its users) each however many events share them; each funnel admitted or not when first named,
  -- an event of a funnel not followed counted as OVERFLOW; each day's names listed in the order first
  -- seen. The funnel tables are made for the first mp_funnel event: most calls have none.
  local counts, users, listed, added, fb = {}, {}, {}, 0, nil
  -- Server time, seconds, for the funnels' activity and attempts.
  local now = clock.seconds
  local funnels, follows = nil, nil
  if section.named then
    funnels, follows = funnel_admission(prefix, section.funnel_cap, now, window, late)
  end
  local i, n = section.from, section.to
  entry = entry - 1
  while i <= n do
    entry = entry + 1
    if is_update(args, i) then
      i = i + update_width(args, i)
    elseif duplicate[entry] or args[i] == '' then
      -- (a day '': an event stored, not counted, of a day past the counter retention)
      i = i + width(args, i, extra)
    else
      added = added + 1
      local d, field, uid, funnel = args[i], args[i + 1], args[i + 2], args[i + 3]
      local followed = funnel ~= '' and follows(funnel)
      if funnel ~= '' and not followed then
        field = string.sub(field, 1, 3) .. OVERFLOW
      end
      local per_day = counts[d]
      if not per_day then
        per_day = {}
        counts[d] = per_day
        users[d] = {}
        listed[d] = {}
      end
      local count = per_day[field]
      if not count then
        -- The day's names in the order first seen, each also a key of the same table.
        local seen, name = listed[d], string.sub(field, 4)
        if not seen[name] then
          seen[name] = true
          seen[#seen + 1] = name
        end
      end
      per_day[field] = (count or 0) + 1
      if uid ~= '' then
        local list = users[d][field]
        if not list then
          list = {}
          users[d][field] = list
        end
        list[#list + 1] = uid
      end
      if followed then
        local t, step = tonumber(args[i + 4]), args[i + 5]
        fb = fb or funnel_batch()
        funnel_event(fb, prefix, day, window, uid, t, funnel, tonumber(step), step, args[i + 6])
      end
      i = i + width(args, i, extra)
    end
  end
  -- The name cap, per day: the counters of names it refuses go to OVERFLOW's (a day without either
  -- needs no folding).
  local fresh, over = {}, 0
  for d, seen in pairs(listed) do
    local admitted, new, created, refused = admit_names(prefix .. EVENT_NAMES .. d, seen, section.name_cap)
    fresh[d] = { names = new, created = created }
    if refused or seen[OVERFLOW] then
      counts[d], users[d], over = fold_refused(counts[d], users[d], admitted, over)
    end
  end
  if fb then
    write_funnel_batch(fb, now, window, late, keep)
    keep_funnels(prefix, funnels, now, keep)
  end
  for d, fields in pairs(counts) do
    local key, totals = prefix .. HOURLY_COUNTS .. d, {}
    for field, count in pairs(fields) do
      redis.call('HINCRBY', key, field, COUNT_TEXT[count] or count)
      local name = string.sub(field, 4)
      totals[name] = (totals[name] or 0) + count
    end
    key = prefix .. DAILY_COUNTS .. d
    for name, count in pairs(totals) do
      redis.call('HINCRBY', key, name, COUNT_TEXT[count] or count)
    end
  end
  for d, fields in pairs(users) do
    for field, list in pairs(fields) do
      local key = prefix .. DAILY_USERS .. d .. ':' .. string.sub(field, 4)
      -- PFADD in slices: Lua's unpack has a limit on the number of values.
      for from = 1, #list, 1000 do
        redis.call('PFADD', key, unpack(list, from, math.min(from + 999, #list)))
      end
    end
  end
  -- A day's keys expire `retention` days after their first write: the day's set and hourly counts when
  -- the set is made, a name's unique users when the name joins the set (made empty if the batch had no
  -- user for it, so that a later user's PFADD finds the expiry set).
  -- A name new to a day moves its entry in the names seen to that day (to a later day only: a late event
  -- does not move it back); entries of days past the retention leave with their counters.
  local seen_key, seen = prefix .. NAMES_SEEN, false
  for d, new in pairs(fresh) do
    if new.created then
      redis.call('EXPIRE', prefix .. EVENT_NAMES .. d, keep)
      redis.call('EXPIRE', prefix .. HOURLY_COUNTS .. d, keep)
      redis.call('EXPIRE', prefix .. DAILY_COUNTS .. d, keep)
    end
    local score, entries = day_number(d), {}
    for _, name in ipairs(new.names) do
      local key = prefix .. DAILY_USERS .. d .. ':' .. name
      redis.call('PFADD', key)
      redis.call('EXPIRE', key, keep)
      entries[#entries + 1] = score
      entries[#entries + 1] = name
    end
    for from = 1, #entries, 1000 do
      redis.call('ZADD', seen_key, 'GT', unpack(entries, from, math.min(from + 999, #entries)))
      seen = true
    end
  end
  if seen then
    local today = math.floor(clock.seconds / DAY)
    -- A day's counters live `retention` days from their first write, which a late event makes up to
    -- `late` seconds after the day.
    local oldest = today - retention - math.ceil(late / DAY)
    redis.call('ZREMRANGEBYSCORE', seen_key, '-inf', '(' .. day_number(civil(oldest)))
    redis.call('EXPIRE', seen_key, keep)
  end
  -- The profile updates, in the order sent, each to its profile.
  local refused = 0
  if section.updates > 0 then
    i = section.from
    while i <= n do
      if is_update(args, i) then
        refused = refused + apply_update(prefix, args, i)
        i = i + update_width(args, i)
      else
        i = i + width(args, i, extra)
      end
    end
  end
  -- The stream of profile updates is trimmed as the events' is.
  if added > 0 then
    trim(prefix .. STREAM, section.events, limits, clock)
  end
  if section.updates > 0 then
    trim(prefix .. PROFILE_UPDATES, section.updates, limits, clock)
  end
  return added, over, refused
end

local function tg_count(keys, args)
  local shared = keys[1]
  local writer, slot = string.match(args[4], '^([%w%-]+):%d+:(%d+)$')
  slot = tonumber(slot)
  local late, retention = number(args[5]), number(args[6])
  local first, dedup, extra, alone = FIRST, nil, 0, false
  if args[3] == '@DEDUP_LAYOUT@' then
    dedup, extra, alone = number(args[FIRST]), 1, args[FIRST + 1] == 'alone'
    first = FIRST + @DEDUP_ARGS@
    if not dedup or dedup < 1 or dedup ~= math.floor(dedup) then
      return redis.error_reply('ERR tg_count: malformed arguments')
    end
  elseif args[3] ~= '@LAYOUT@' then
    return redis.error_reply('ERR tg_count: argument layout ' .. tostring(args[3]) .. ' is not @LAYOUT@: ' ..
      'the gateway and the function library are of different versions')
  end
  if #keys ~= 1 then
    return redis.error_reply('ERR tg_count: called with ' .. #keys .. ' keys, not 1: ' ..
      'the gateway and the function library are of different versions')
  end
  local limits = { args[1], number(args[2]), late, retention }
  if not writer or not late or slot >= @RING_SLOTS@ or not retention or not limits[2] then
    return redis.error_reply('ERR tg_count: malformed arguments')
  end
  -- Walk every section's arguments once before changing anything; with deduplication the walk also
  -- gathers the hashes (see find_duplicates), all sections' in one list: the sets are the partition's.
  local sections, hashes, updates, i = {}, {}, 0, first
  while i <= #args do
    local section, why = read_section(args, i, extra, hashes, shared)
    if not section then
      return redis.error_reply('ERR tg_count: ' .. why)
    end
    sections[#sections + 1] = section
    updates = updates + section.updates
    i = section.to + 1
  end
  -- The batch's counted byte, the last of its ring entry: one call sets it and says whether it was set
  -- already (a resent counting), in which case nothing more is done.
  local mark = shared .. MARKS .. writer
  if redis.call('BITFIELD', mark, 'SET', 'u8', '#' .. (slot * 8 + 7), 1)[1] ~= 0 then
    return updates > 0 and { 0, 0, 0, 0 } or { 0, 0 }
  end
  -- Duplicates are found, and taken out of the streams, before anything is counted or trimmed.
  local found, duplicate = {}, {}
  local clock = server_clock()
  local dup = dedup and find_duplicates(shared, hashes, dedup, clock)
  if dup then
    found = duplicate_positions(args, sections, dup)
    for _, entry in ipairs(found) do
      duplicate[entry] = true
    end
    if not alone then
      for _, section in ipairs(sections) do
        if #section.gone > 0 then
          remove_duplicates(section.prefix .. STREAM, section.gone, section.events)
        end
      end
    end
  end
  local days = {}
  local function day(number)
    local d = days[number]
    if not d then
      d = civil(number)
      days[number] = d
    end
    return d
  end
  local added, over, refused, entry = 0, 0, 0, 0
  for _, section in ipairs(sections) do
    local a, o, r = count_section(args, section, extra, duplicate, entry, day, limits, clock)
    added, over, refused = added + a, over + o, refused + r
    entry = entry + section.events + section.updates
  end
  if #found > 0 then
    return { added, over, updates, refused, found }
  end
  if updates > 0 then
    return { added, over, updates, refused }
  end
  return { added, over }
end

redis.register_function('tg_count', tg_count)

-- KEYS: a partition's prefix. ARGV: a day (YYYY-MM-DD). Writes the day's daily counts and names seen
-- from its hourly counts, for days counted by a gateway that kept neither: each name's daily count set
-- to the sum of its hours (the hourly counts hold every event counted that day, so this is right
-- whenever it runs), the daily counts' expiry the hourly counts'. Returns the names written.
local function tg_reindex(keys, args)
  local prefix, d = keys[1], args[1]
  if #keys ~= 1 or not string.match(d or '', '^%d%d%d%d%-%d%d%-%d%d$') then
    return redis.error_reply('ERR tg_reindex: expected one key and a day YYYY-MM-DD')
  end
  local hourly = redis.call('HGETALL', prefix .. HOURLY_COUNTS .. d)
  local totals, names = {}, {}
  for j = 1, #hourly, 2 do
    local name = string.sub(hourly[j], 4)
    if not totals[name] then
      names[#names + 1] = name
    end
    totals[name] = (totals[name] or 0) + tonumber(hourly[j + 1])
  end
  local daily, score = prefix .. DAILY_COUNTS .. d, day_number(d)
  local fields, entries = {}, {}
  for _, name in ipairs(names) do
    fields[#fields + 1] = name
    fields[#fields + 1] = totals[name]
    entries[#entries + 1] = score
    entries[#entries + 1] = name
  end
  for from = 1, #fields, 1000 do
    redis.call('HSET', daily, unpack(fields, from, math.min(from + 999, #fields)))
    redis.call('ZADD', prefix .. NAMES_SEEN, 'GT', unpack(entries, from, math.min(from + 999, #entries)))
  end
  local ttl = redis.call('PTTL', prefix .. HOURLY_COUNTS .. d)
  if #names > 0 and ttl > 0 then
    redis.call('PEXPIRE', daily, ttl)
  end
  return #names
end

redis.register_function('tg_reindex', tg_reindex)

@RATE_LIMITS@
