-- wrk script for benches/load.sh: POSTs valid ticks to /api/v1/ticks and counts every
-- response that is not 201 Created, so the throughput reported is of acknowledged ticks.
--
--   wrk -t2 -c32 -d15s --latency -s benches/tick.lua http://127.0.0.1:PORT/api/v1/ticks \
--       -- TOKENS_FILE THREADS BODY
--
-- TOKENS_FILE holds one supporter token (org helse-vestfjord) per line; THREADS is wrk's -t;
-- BODY is the tick's JSON (load.sh passes one valid value per dimension of the policy).
-- Thread i takes every THREADS-th token starting at the i-th and rotates through them one
-- request at a time, so no two threads share a token, and with at least as many tokens as
-- connections no two requests in flight carry the same token (one supporter does not log two
-- contacts at the same instant). The caller sizes the token list so the per-supporter cap of the
-- load policy is never reached.

local threads = {}
local next_id = 1

-- Runs in the main Lua state once per thread, before that thread's init.
function setup(thread)
  thread:set("id", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end

-- Runs in each thread's own Lua state. args[0] is the URL.
function init(args)
  local path, nthreads, body = args[1], tonumber(args[2]), args[3]
  if not path or not nthreads or not body then
    error("usage: wrk ... -s tick.lua URL -- TOKENS_FILE THREADS BODY")
  end
  local all = {}
  for line in io.lines(path) do
    if #line > 0 then
      all[#all + 1] = line
    end
  end
  reqs = {}
  for i = id, #all, nthreads do
    reqs[#reqs + 1] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. all[i],
    }, body)
  end
  if #reqs == 0 then
    error("thread " .. id .. " has no token; give at least THREADS tokens")
  end
  n = 0
  responses = 0
  non201 = 0
  sample = ""
end

function request()
  n = n + 1
  return reqs[(n - 1) % #reqs + 1]
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 201 then
    non201 = non201 + 1
    if sample == "" then
      sample = status .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

function done(summary, latency, requests)
  local total, bad, sample_out = 0, 0, ""
  for _, t in ipairs(threads) do
    total = total + t:get("responses")
    bad = bad + t:get("non201")
    local s = t:get("sample")
    if sample_out == "" and s and s ~= "" then
      sample_out = s
    end
  end
  local secs = summary.duration / 1e6
  -- Socket errors and timeouts are requests that got no response at all.
  local e = summary.errors
  io.write(string.format(
    "TICK_RESULT responses=%d non201=%d acked=%d seconds=%.3f acked_per_s=%.1f "
      .. "connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    total, bad, total - bad, secs, (total - bad) / secs,
    e.connect, e.read, e.write, e.timeout))
  if bad > 0 then
    io.write("TICK_NON201_SAMPLE " .. sample_out .. "\n")
  end
end
