-- wrk's script for a closed loop: every connection sends its next request as soon as the answer to the
-- last one is in. The requests come from the file named after `--` on wrk's command line, one a line as
-- METHOD <tab> PATH <tab> BODY (URL-encoded, so neither holds a tab), formatted once in init() and cycled
-- through from a random place in each thread. done() prints the one line the bench reads of wrk's output.

local requests = {}
local n = 0

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
  end
  n = math.random(#requests) - 1
end

function request()
  n = n % #requests + 1
  return requests[n]
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
