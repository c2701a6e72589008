-- wrk script: replays pre-generated raw HTTP requests (one unique signed delivery each) and counts
-- answers by status, so a run that was not all-202 can be rejected.
-- Arguments (after `--`): <requests file> <index of the first request to send> <wrk threads>.
-- File format: for each request, "<byte length>\n" then the raw request bytes.

local threads = {}

function setup(thread)
   -- Each thread replays a disjoint stripe of the file, so ids stay unique whatever -t is.
   thread:set("stripe", #threads)
   table.insert(threads, thread)
end

function init(args)
   reqs = {}
   local first = tonumber(args[2] or "0")
   -- Each thread has its own Lua state and cannot see the others, so the count comes as an argument.
   local thread_count = tonumber(args[3] or "1")
   -- Read request by request: holding the whole file as one string too would double the memory.
   local file = assert(io.open(args[1], "rb"))
   local index = 0
   for line in file:lines() do
      local raw = file:read(tonumber(line))
      if index >= first and (index - first) % thread_count == stripe then
         reqs[#reqs + 1] = raw
      end
      index = index + 1
   end
   file:close()
   cursor = 0
   sent = 0
   wrapped = 0
   ok = 0
   others = {}
end

function request()
   cursor = cursor + 1
   if cursor > #reqs then
      -- Ran out: replaying repeats ids, which the relay answers 200 "duplicate" (flagged below).
      cursor = 1
      wrapped = wrapped + 1
   end
   sent = sent + 1
   return reqs[cursor]
end

function response(status, headers, body)
   if status == 202 then
      ok = ok + 1
   else
      others[status] = (others[status] or 0) + 1
   end
end

function done(summary, latency, requests)
   local total_sent, total_ok, total_wrapped = 0, 0, 0
   local other_parts = {}
   for _, thread in ipairs(threads) do
      total_sent = total_sent + thread:get("sent")
      total_ok = total_ok + thread:get("ok")
      total_wrapped = total_wrapped + thread:get("wrapped")
      for status, count in pairs(thread:get("others")) do
         other_parts[#other_parts + 1] = string.format('"%d": %d', status, count)
      end
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests": %d, "duration_us": %d, "sent": %d, "ok": %d, "wrapped": %d, '
         .. '"others": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
         .. '"timeout": %d}, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, total_sent, total_ok, total_wrapped,
      table.concat(other_parts, ", "), e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
