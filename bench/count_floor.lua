#!lua name=count_floor
-- What `tg_count` sends Redis for a batch of one plain event (no funnel, no profile update, no dedup,
-- a name the day knows), and nothing else: no header walk, no tables, no closures. `count_cost.py`
-- calls it where the gateway calls tg_count, with the same keys and arguments, so that the difference
-- is tg_count's own code. It counts nothing a report could read right: a measuring device only.
redis.register_function('count_floor', function(keys, args)
  -- One section's: its token after tg_count's header (store.HEADER_ARGS, 6, without dedup's two), its
  -- event's arguments after the section's own (store.SECTION_ARGS, 5).
  local shared, section = keys[1], 7
  local prefix = shared .. args[section] .. ':'
  local stream, first = prefix .. 'events', section + 5
  local day, field, uid = args[first], args[first + 1], args[first + 2]
  local name = string.sub(field, 4)
  redis.call('BITFIELD', shared .. 'batch:floor', 'SET', 'u8', '#7', 1)
  redis.call('SMISMEMBER', prefix .. 'en:' .. day, name)
  redis.call('HINCRBY', prefix .. 'ev:' .. day, field, 1)
  redis.call('HINCRBY', prefix .. 'ed:' .. day, name, 1)
  redis.call('PFADD', prefix .. 'eu:' .. day .. ':' .. name, uid)
  redis.call('TIME')
  redis.call('XTRIM', stream, 'MINID', '~', 1)
  return { 1, 0 }
end)
