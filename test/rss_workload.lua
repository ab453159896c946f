-- RSS growth check (test/rss-check.sh): one process, one client, a long loop
-- of downloads and errors in turn: in memory, to a file, a bundle unzipped,
-- a reader, chunked; api, http, auth, protocol errors, dropped connections,
-- invalid requests; every 50th a timeout, every 500th a small batch. Every
-- outcome is checked (a loop that failed early would prove nothing).
-- RSS (/proc/self/statm) is sampled after `warmup` iterations and at the end,
-- each after a full garbage collection.
--   lua5.4 test/rss_workload.lua [iterations [warmup]]
-- prints "rss START_KIB END_KIB ITERATIONS SECONDS" (over the measured part)
-- and "mismatches N".
package.path = "./?.lua;" .. package.path
local H = require "spec.helper"

local iterations = tonumber(arg[1]) or 20000
local warmup = tonumber(arg[2]) or 2000
local page_kib = tonumber((H.capture("getconf PAGESIZE"):gsub("%s+$", ""))) / 1024

local function rss_kib()
  collectgarbage()
  collectgarbage()
  local f = assert(io.open("/proc/self/statm"))
  local _, resident = f:read("*l"):match("^(%d+) (%d+)")
  f:close()
  return tonumber(resident) * page_kib
end

local mock = H.mock.start()
local dir = H.tmpdir()
local c = H.client()
local slow = H.client{ timeout = 0.05 }
local mismatches, counts = 0, {}

-- `kind` is what the step must end with: "ok" or an error kind.
local function expect(kind, ok, err)
  local got = ok and "ok" or (type(err) == "table" and err.kind or tostring(err))
  counts[kind] = (counts[kind] or 0) + 1
  if got ~= kind then
    mismatches = mismatches + 1
    if mismatches <= 5 then io.stderr:write("expected ", kind, ", got ", tostring(err), "\n") end
  end
end

local function download(kind, id)
  local data, err = c:download{ callID = id }
  expect(kind, data, err)
end

local function unzip()
  local info, err = c:download_file({ callID = "zip-2" }, dir .. "/u", { unzip = true })
  expect("ok", info and #info.files == 2, err)
  for _, f in ipairs(info and info.files or {}) do os.remove(f.path) end
  os.remove(dir .. "/u")
end

local function reader()
  local r, n = c:reader({ callID = "wav-3000" }), 0
  while true do
    local chunk, err = r()
    if not chunk then expect("ok", not err and n == 3000, err) break end
    n = n + #chunk
  end
end

local steps = {
  function() download("ok", "wav-3000") end,
  function() expect("ok", c:download_file({ callID = "wav-3000" }, dir .. "/a.wav")) end,
  unzip,
  function() download("api", "notfound") end,
  function() download("api", "flow") end,
  function() download("http", "http-503") end,
  function() download("auth", "auth-401") end,
  function() download("network", "drop-3000") end,
  function() expect("invalid", c:download{ callId = "typo" }) end,
  function() expect("invalid", c:download{ callID = "1", beginTime = "20250230000000" }) end,
  reader,
  function() download("ok", "chunked-3000") end,
  function() download("protocol", "html") end,
}

local function step(i)
  if i % 500 == 0 then
    local res = c:download_many({ { callID = "wav-100" }, { callID = "notfound" },
                                  { callID = "zip-2" }, { callID = "" } }, { concurrency = 2 })
    expect("ok", res.ok == 2 and res.failed == 2, res)
  elseif i % 50 == 0 then
    expect("timeout", slow:download{ callID = "slowheaders-1" })
  else
    steps[i % #steps + 1]()
  end
end

for i = 1, warmup do step(i) end
local t0, rss0 = os.time(), rss_kib()
for i = warmup + 1, warmup + iterations do step(i) end
local rss1, t1 = rss_kib(), os.time()
c:close()
slow:close()
H.mock.stop()
H.rmrf(dir)
local kinds = {}
for k, n in pairs(counts) do kinds[#kinds + 1] = k .. "=" .. n end
table.sort(kinds)
print("steps " .. table.concat(kinds, " "))
print(("rss %d %d %d %d"):format(rss0, rss1, iterations, os.difftime(t1, t0)))
print("mismatches " .. mismatches)
