-- wrk's script for a closed loop: every connection sends its next request as soon as the answer to the
-- last one is in. The requests come from the file named after `--` on wrk's command line, one a line as
-- METHOD <tab> PATH <tab> BODY (URL-encoded, so neither holds a tab), formatted once in init() and cycled
-- through from a random place in each thread. done() prints the one line the bench reads of wrk's output.

--
-- A POST body's events begin their $insert_id with MARK (workloads.UNIQUE_MARK): each request sent puts a
-- string of the same length of its own there (when the thread began, its number, a count), so that no
-- event is sent twice and a gateway that deduplicates stores every one. A request is kept as its pieces
-- between the marks, joined with that string as it goes out.
--
-- A GET's event is inside base64: one whose data holds B64_MARK (workloads.B64_MARK, 24 characters that
-- base64 never uses) gets there the base64 of "u-" and that same string, 18 bytes, so that it is new too.

local MARK = string.rep("~", 16)
local B64_MARK = string.rep("_", 24)
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local requests = {}
local pieces = {} -- per request with marks: its text split at them
local encoded = {} -- per request with marks: true when they are B64_MARKs
local n = 0
local sent = 0
local threads = 0
thread_number = 0 -- set by setup() in each thread's own script
local started = string.format("%08x", os.time() % 4294967296)

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

local function split(text, mark)
  local out, from = {}, 1
  while true do
    local at = text:find(mark, from, true)
    if not at then break end
    out[#out + 1] = text:sub(from, at - 1)
    from = at + #mark
  end
  if from == 1 then return nil end
  out[#out + 1] = text:sub(from)
  return out
end

-- Standard base64 of a string whose length is a multiple of 3, percent-encoded for a query string.
local function base64(text)
  local out = {}
  for i = 1, #text, 3 do
    local a, b, c = text:byte(i, i + 2)
    local n = a * 65536 + b * 256 + c
    for shift = 18, 0, -6 do
      local k = math.floor(n / 2 ^ shift) % 64 + 1
      out[#out + 1] = B64:sub(k, k)
    end
  end
  return (table.concat(out):gsub("%+", "%%2B"):gsub("/", "%%2F"))
end

function init(args)
  local form = {["Content-Type"] = "application/x-www-form-urlencoded"}
  for line in io.lines(args[1]) do
    local method, path, body = line:match("^(%u+)\t([^\t]*)\t(.*)$")
    assert(method, "a request line is not METHOD<tab>PATH<tab>BODY: " .. line:sub(1, 80))
    if method == "GET" then
      requests[#requests + 1] = wrk.format("GET", path)
    else
      requests[#requests + 1] = wrk.format(method, path, form, body)
    end
    pieces[#requests] = split(requests[#requests], MARK)
    if pieces[#requests] == nil then
      pieces[#requests] = split(requests[#requests], B64_MARK)
      encoded[#requests] = pieces[#requests] ~= nil
    end
  end
  n = math.random(#requests) - 1
end

function request()
  n = n % #requests + 1
  local parts = pieces[n]
  if parts == nil then
    return requests[n]
  end
  sent = sent + 1
  local fill = string.format("%s%02x%06x", started, thread_number % 256, sent % 16777216)
  if encoded[n] then
    fill = base64("u-" .. fill)
  end
  return table.concat(parts, fill)
end

function done(summary, latency, _)
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p75_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
