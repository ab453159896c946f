-- Exercise every path of the module N times (arg[1]) for the leak check
-- (test/leak-check.sh): run under AddressSanitizer with leak detection, the
-- interpreter frees its state at exit, so what LeakSanitizer reports is what
-- C code never freed. Any per-call leak makes the total grow with N.
package.path = "./?.lua;" .. package.path
local H = require "spec.helper"
local cmsrec = require "cmsrec"

local iterations = tonumber(arg[1]) or 1
local mock = H.mock.start()
local dir = H.tmpdir()

local function workload()
  local c = H.client()
  for _, id in ipairs{ "wav-20000", "chunked-20000", "zip-2", "notfound", "flow", "auth-401",
                       "auth-403", "http-503", "http-302", "bigerror", "badjson", "ok-json",
                       "emptybody", "drop-20000", "numcode", "bom" } do
    c:download{ callID = id }
  end
  c:download{ callId = "typo" }
  c:download{ callID = "1", beginTime = "20250230000000" }
  c:download({ callID = "wav-20000" }, { max_size = 100, on_progress = function() end })
  c:download_file({ callID = "wav-20000" }, dir .. "/a.wav")
  c:download_file({ callID = "notfound" }, dir)
  c:download_file({ callID = "zip-3" }, dir, { unzip = true })
  c:download_file({ callID = "zipbad-slip" }, dir, { unzip = true })
  c:download_file({ callID = "zipbad-crc" }, dir, { unzip = true })
  c:download_file({ callID = "wav-20000" }, nil, { sink = function() return nil, "no" end })
  c:download_file({ callID = "wav-20000" }, nil, { sink = function() end,
    on_progress = function() return false end })
  c:download_file({ callID = "wav-20000" }, dir .. "/missing/x.wav")
  c:download_file({ callID = "zip-3" }, dir, { unzip = true }) -- members exist now: refused
  c:download_file({ callID = "zipbad-hugesize" }, dir, { unzip = true })
  c:download_file({ callID = "html" }, dir)
  c:download_file({ callID = "wsjson" }, nil, { sink = function() end })
  c:download({ callID = "slowheaders-1" }, { on_progress = function() return false end })
  -- review defects: devices, links, a directory in the way, stray and encoded answers,
  -- cancelling an unpack, names with controls, a file and a directory of one name
  c:download_file({ callID = "wav-20000" }, "/dev/null")
  os.execute("ln -sf missing " .. dir .. "/dangling; mkdir -p " .. dir .. "/wav-3000.wav " .. dir .. "/big")
  c:download_file({ callID = "wav-20000" }, dir .. "/dangling")
  c:download_file({ callID = "wav-3000" }, dir)
  c:download{ callID = "extra-2000" }
  c:download{ callID = "gzipjson" }
  c:download{ callID = "gzipwav-3000" }
  c:download{ callID = "gbkdesc" }
  c:download{ callID = "http09" }
  c:download{ callID = "bigheader" }
  c:download{ callID = "slowjson-0.5" }
  c:download_file({ callID = "zipbig-64" }, dir .. "/big", { unzip = true,
    on_progress = function(r, t) return r ~= t end })
  c:download_file({ callID = "zipbad-c1name" }, dir, { unzip = true })
  c:download_file({ callID = "zipbad-filedir" }, dir, { unzip = true })
  cmsrec.unzip((c:download{ callID = "zipbad-declared" }))
  pcall(c.download_file, c, { callID = "wav-100" }, dir .. "/a\0b")
  local data = c:download{ callID = "zip-2" }
  cmsrec.unzip(data)
  cmsrec.unzip(data, dir .. "/unz")
  cmsrec.unzip("/nonexistent.zip")
  -- LTN12 sinks, readers (read to the end, failed, abandoned, closed, dropped),
  -- prepare and classify
  c:download({ callID = "wav-20000" }, { sink = function() return 1 end })
  for _ in c:chunks({ callID = "wav-20000" }) do end
  local r = c:reader({ callID = "notfound" })
  r()
  r = c:reader({ callID = "wav-200000" })
  r()
  c:download{ callID = "wav-100" } -- ends the open reader
  r = c:reader({ callID = "wav-200000" })
  r()
  r:close()
  c:reader({ callID = "wav-200000" }, { on_progress = function() return false end })()
  c:reader({ callID = "wav-200000" }) -- dropped: ended by the next request or by the GC
  pcall(function() for _ in c:chunks({ callID = "flow" }) do end end)
  c:reader({ callID = "" })
  c:prepare({ callID = "1" })
  c:prepare({ callID = "" })
  cmsrec.classify(200, {}, "RIFF\0\0\0\0WAVEfmt ")
  cmsrec.classify(200, { ["Retry-After"] = "3" }, '{"resultCode":"1"}', true)
  cmsrec.classify(503, nil, ("x"):rep(100000))
  cmsrec.error({ kind = "io" })
  -- retries, batches (in memory, to a directory, unzipped, stopped, auth-stopped, raising)
  c:close()
  c = H.client{ retries = 1 }
  c:download{ callID = "retry-1-503-3000" }
  c:download_file({ callID = "retry-1-drop-20000" }, dir .. "/r.wav")
  c:download({ callID = "retry-2-flow-100" }, { on_progress = function() return false end })
  c:download_many({ { callID = "wav-100" }, { callID = "notfound" }, { callID = "" },
                    { callID = "retry-1-flow-200" }, { callID = "zip-2" } }, { concurrency = 3 })
  c:download_many({ { callID = "zip-2" }, { callID = "wav-300" } }, { dir = dir .. "/many",
                    unzip = true })
  c:download_many({ { callID = "wav-100" }, { callID = "slowwav-1" }, { callID = "wav-200" } },
                  { dir = dir, concurrency = 2, on_result = function() return false end })
  c:download_many({ { callID = "auth-401" }, { callID = "wav-100" } }, { concurrency = 1 })
  pcall(c.download_many, c, { { callID = "wav-100" } }, { on_progress = function() error("x") end })
  c:close()
  H.client():reader({ callID = "wav-200000" })() -- client and reader collected together
  -- a client dropped without close, one with a failing authorization function
  H.client():download{ callID = "wav-100" }
  H.client{ ak = false, sk = false, authorization = function() error("x") end }:download{ callID = "1" }
  cmsrec.download(H.config(), { callID = "wav-100" })
  H.client{ base_url = mock.wrong_name_url }:download{ callID = "wav-100" }
  H.client{ timeout = 1 }:download{ callID = "stall-3" }
  H.client{ stall_timeout = 1 }:download{ callID = "http-500" }
  cmsrec.sign{ ak = "a", sk = "s", path = "/p", query = { a = 1 }, headers = { host = "h" } }
  pcall(cmsrec.sign, { ak = "a", path = "/p", headers = { host = "h" } })
  pcall(cmsrec.new, { base_url = "https://h", ak = "a", sk = "s", cafile = 1 })
  pcall(cmsrec.new, { base_url = "ftp://h", ak = "a", sk = "s" })
  -- gateways: apig, bearer (fetched, cached, revoked, refused), extra headers, resolve,
  -- client:call, options refused after some were taken
  local waf = "cms.example.test:" .. mock.waf_port
  local token_url = mock.url .. "/apigovernance/api/oauth/tokenByAkSk"
  c = H.client{ auth = "apig", headers = { ["X-A"] = "1" }, resolve = { waf .. ":127.0.0.1" } }
  c:download{ callID = "wav-100" }
  c:call("/rest/x/v1/echo", { a = 1 })
  c:call("/rest/x/v1/echo", { _reply = "array" }, { raw = true })
  c:call("/rest/x/v1/echo", "[1]")
  c:call("rest", {})
  c:prepare({ callID = "1" })
  c:close()
  c = H.client{ auth = "bearer", token_url = token_url, headers = { ["X-B"] = "2" } }
  c:download{ callID = "wav-100" }
  H.mock.revoke()
  c:download{ callID = "wav-100" }
  c:download_many({ { callID = "wav-100" }, { callID = "wav-200" } })
  for _ in c:chunks({ callID = "wav-2000" }) do end
  c:prepare({ callID = "1" })
  c:close()
  H.client{ auth = "bearer", token_url = token_url, sk = "wrong-sk-0000000" }:download{ callID = "wav-1" }
  H.client{ base_url = "https://" .. waf, resolve = { waf .. ":127.0.0.1" } }:download{ callID = "wav-100" }
  pcall(cmsrec.new, H.config{ auth = "bearer", headers = { ["X-A"] = "1" }, resolve = { "a:1:127.0.0.1" },
                              ak = "a\r\nb" })
  pcall(cmsrec.new, H.config{ headers = { ["X-A"] = "1", Host = "x" } })
  cmsrec.sign{ scheme = "apig", ak = "a", sk = "s", path = "/p", headers = { host = "h", x = "1" } }
  pcall(cmsrec.sign, { scheme = "apig", ak = "a", sk = "s", path = "/p", headers = { x = "h" } })
  collectgarbage()
end

for _ = 1, iterations do workload() end
H.mock.stop()
H.rmrf(dir)
print("workload done: " .. iterations)
