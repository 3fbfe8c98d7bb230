-- wrk's script for a fixed request rate (wrk2, which paces itself, is not packaged): the requests of
-- wrk_requests.lua, and a delay() that every connection asks before each of its requests. It hands out
-- send slots from one schedule per thread, the interval after `--` on wrk's command line (the file of
-- requests, then the milliseconds between two sends of a thread) apart; LuaJIT's FFI reads
-- CLOCK_MONOTONIC. The schedule never slips: a slot missed because every connection was busy is sent as
-- soon as one is free, so the rate holds as long as the server keeps up. Latency is wrk's, from the moment
-- the request is written (no coordinated-omission correction).
--
-- A separate script because wrk sends every request through a timer once delay() exists, even a delay of
-- 0: the closed loop must not define it.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "wrk_requests.lua")

local ffi = require("ffi")
pcall(ffi.cdef, [[
  typedef struct { long tv_sec; long tv_nsec; } tg_timespec;
  int clock_gettime(int, tg_timespec *);
]])
local ts = ffi.new("tg_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval = nil
local next_at = nil
local load_requests = init

function init(args)
  load_requests(args)
  interval = assert(tonumber(args[2]), "wrk_paced.lua needs the interval in ms after the file of requests")
end

function delay()
  local now = now_ms()
  if next_at == nil then next_at = now end
  local wait = next_at - now
  next_at = next_at + interval
  if wait < 0 then return 0 end
  return wait
end
