-- `tg_take`: take events from a rate-limited project's token bucket (rate_limit.py), which every gateway
-- worker and process shares. A worker takes a lease of events at a time and answers its requests from it
-- (gateway/rate_limiter.py), so that this runs once a lease, not once a request.
--
-- KEYS[1]: the bucket (keys.rate_bucket_key); ARGV: events per second, burst, events wanted.
-- Returns the events granted (at most those wanted, at most those the bucket holds: none when it holds
-- less than one) and, as text, what the bucket holds after, from which the caller tells when to ask again.
--
-- The bucket fills at the rate, up to the burst, by Redis' own clock: one clock for every gateway,
-- whatever theirs say. A missing bucket is a full one, so the key expires once it would be full again.
local function tg_take(keys, args)
  local rate, burst, want = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  local state = redis.call('HMGET', keys[1], 'level', 'at')
  local level = burst
  if state[1] and state[2] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    level = math.min(burst, tonumber(state[1]) + elapsed * rate)
  end
  local granted = math.max(0, math.min(want, math.floor(level)))
  level = level - granted
  redis.call('HSET', keys[1], 'level', string.format('%.17g', level), 'at', string.format('%.6f', now))
  redis.call('PEXPIRE', keys[1], math.ceil((burst - level) / rate * 1000) + 1)
  return { granted, string.format('%.17g', level) }
end

redis.register_function('tg_take', tg_take)
