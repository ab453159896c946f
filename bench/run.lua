-- make bench: throughput and memory of cmsrec against the mock CMS on loopback.
--
-- Each measurement runs in a fresh lua5.4 process so that its peak RSS
-- (VmHWM from /proc/self/status) belongs to that measurement alone. The mock
-- is a Python server: transfer rates measure the pair, and the mock is
-- usually the slower side. Figures go to BENCHMARKS.md by hand.
package.path = "./?.lua;" .. package.path
local H = require "spec.helper"

local mock = H.mock.start()
local dir = H.tmpdir()

-- H.run_measured gives each body `cmsrec`, `client`, `kb(field)` and `rss0`.
local NOW = [[
  local function now()
    local f = io.popen("date +%s.%N"); local t = tonumber(f:read("*l")); f:close(); return t
  end
]]

local function run(name, body)
  local out = H.run_measured(NOW .. body)
  local line = out:match("RESULT ([^\n]+)")
  print(("%-44s %s"):format(name, line or ("FAILED: " .. out)))
end

print(("cmsrec %s, %s"):format(require("cmsrec").VERSION, require("cmsrec").CURL_VERSION))
print()

run("sign (cmsrec.sign, 3 headers, 80-byte body)", [[
  local n, t0 = 20000, now()
  for i = 1, n do
    cmsrec.sign{ ak = "ak", sk = "sk", path = cmsrec.DEFAULT_PATH, body = ("x"):rep(80),
      headers = { host = "10.0.0.1:28080", ["content-type"] = "application/json",
                  ["content-length"] = "80" }, timestamp = "2024-10-31T14:06:52Z" }
  end
  print(("RESULT %.0f signatures/s"):format(n / (now() - t0)))
]])

run("small downloads, keep-alive (160 KB x 200)", [[
  local n, t0 = 200, now()
  for i = 1, n do assert(client:download{ callID = "1748587841-77268" }) end
  local dt = now() - t0
  print(("RESULT %.0f downloads/s, %.1f ms each"):format(n / dt, dt * 1000 / n))
]])

run("in memory, 100 MB", [[
  local t0 = now()
  local data = assert(client:download{ callID = "wav-100000000" })
  local dt = now() - t0
  print(("RESULT %.2f s, %.0f MB/s, peak RSS %.1f MB, peak-to-body %.2f"):format(dt,
    #data / dt / 1e6, kb("VmHWM") / 1024, (kb("VmHWM") - rss0) * 1024 / #data))
]])

run("to file, 200 MB", ([[
  local t0 = now()
  local info = assert(client:download_file({ callID = "wav-200000000" }, %q))
  local dt = now() - t0
  print(("RESULT %%.2f s, %%.0f MB/s, peak RSS %%.1f MB"):format(dt, info.bytes / dt / 1e6,
    kb("VmHWM") / 1024))
]]):format(dir .. "/big.wav"))

run("to a Lua sink, 200 MB (bytes counted)", [[
  local n, t0 = 0, now()
  local info = assert(client:download_file({ callID = "wav-200000000" }, nil,
    { sink = function(chunk) n = n + #(chunk or "") return 1 end }))
  local dt = now() - t0
  assert(n == info.bytes)
  print(("RESULT %.2f s, %.0f MB/s, peak RSS %.1f MB"):format(dt, n / dt / 1e6,
    kb("VmHWM") / 1024))
]])

run("pull-style reader, 200 MB (chunks counted)", [[
  local n, chunks, biggest, t0 = 0, 0, 0, now()
  local reader = assert(client:reader{ callID = "wav-200000000" })
  for chunk in reader do
    n, chunks = n + #chunk, chunks + 1
    if #chunk > biggest then biggest = #chunk end
  end
  local dt = now() - t0
  assert(n == reader:info().bytes)
  print(("RESULT %.2f s, %.0f MB/s, peak RSS %.1f MB, %d chunks, largest %d KB"):format(dt,
    n / dt / 1e6, kb("VmHWM") / 1024, chunks, math.floor(biggest / 1024)))
]])

run("download_file + unzip, zip-50 (50 WAVs)", ([[
  local t0 = now()
  local info = assert(client:download_file({ callID = "zip-50" }, %q, { unzip = true }))
  print(("RESULT %%.3f s for %%d files"):format(now() - t0, #info.files))
]]):format(dir))

-- Batches: 2 KB recordings with 20 ms of server latency, so that waiting,
-- not bytes, is what concurrency saves (1,000 calls to a directory last).
mock.ctl("set", "latency_ms", 20)
for _, conc in ipairs{ 1, 4, 16 } do
  local n = conc == 1 and 100 or 400
  mock.reset()
  mock.ctl("set", "latency_ms", 20)
  run(("download_many, 2 KB x %d, concurrency %d"):format(n, conc), ([[
    local reqs = {}
    for i = 1, %d do reqs[i] = { callID = "wav-" .. (2000 + i) } end
    local t0 = now()
    local r = client:download_many(reqs, { concurrency = %d })
    local dt = now() - t0
    assert(r.ok == #reqs)
    print(("RESULT %%.0f recordings/s (%%.2f s)"):format(#reqs / dt, dt))
  ]]):format(n, conc))
  local st = mock.stats()
  print(("%-44s %d connections, %d TLS handshakes (%d resumed)"):format("", st.https_connections,
    st.handshakes, st.resumed))
end
mock.reset()
mock.ctl("set", "latency_ms", 20)
run("download_many to a dir, 1,000 x 2 KB, conc. 16", ([[
  local reqs = {}
  for i = 1, 1000 do reqs[i] = { callID = "wav-" .. (2000 + i) } end
  local t0 = now()
  local r = client:download_many(reqs, { concurrency = 16, dir = %q })
  local dt = now() - t0
  assert(r.ok == 1000)
  print(("RESULT %%.2f s, %%.0f recordings/s, peak RSS %%.1f MB"):format(dt, 1000 / dt,
    kb("VmHWM") / 1024))
]]):format(dir .. "/batch"))
mock.ctl("set", "latency_ms", 0)

H.rmrf(dir)
mock.stop()
