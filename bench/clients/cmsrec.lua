-- cmsrec's side of make bench; one measurement per process, so that its peak
-- RSS is that measurement's alone.
--   lua5.4 cmsrec.lua file URL CA OUT          download_file to OUT
--   lua5.4 cmsrec.lua mem URL CA               download into memory
--   lua5.4 cmsrec.lua many URL CA N CONC [DIR] download_many, N small recordings
--   lua5.4 cmsrec.lua sign N                   cmsrec.sign, signatures/s (CPU time)
--   lua5.4 cmsrec.lua prepare URL CA ID        the signed request, for curl
-- Prints RESULT key=value lines.
local cmsrec = require "cmsrec"
local mode, url, ca = arg[1], arg[2], arg[3]
local AK, SK = "bench-ak", "bench-sk-0123456789"

if mode == "sign" then
  local n, t0 = tonumber(arg[2]), os.clock()
  local headers = { host = "10.0.0.1:28080", ["content-type"] = "application/json;charset=UTF-8",
                    ["content-length"] = "80" }
  for _ = 1, n do
    cmsrec.sign{ ak = AK, sk = SK, path = cmsrec.DEFAULT_PATH, body = ("x"):rep(80),
                 headers = headers, timestamp = "2024-10-31T14:06:52Z" }
  end
  print(("RESULT rate=%.1f"):format(n / (os.clock() - t0)))
  return
end

local client = cmsrec.new{ base_url = url, ak = AK, sk = SK, cafile = ca, retries = 0 }

if mode == "file" then
  local info = assert(client:download_file({ callID = "big-1" }, arg[4]))
  print(("RESULT bytes=%d sha256=%s"):format(info.bytes, info.sha256))
elseif mode == "mem" then
  local data = assert(client:download{ callID = "big-1" })
  print(("RESULT bytes=%d"):format(#data))
elseif mode == "many" then
  local n, conc, dir = tonumber(arg[4]), tonumber(arg[5]), arg[6]
  local reqs = {}
  for i = 1, n do reqs[i] = { callID = "small-" .. i } end
  local r = client:download_many(reqs, { concurrency = conc, dir = dir, retries = 0 })
  print(("RESULT ok=%d"):format(r.ok))
elseif mode == "prepare" then
  local p = assert(client:prepare{ callID = arg[4] })
  -- one "name: value" line per header, then the body on the last line
  for name, value in pairs(p.headers) do print(name .. ": " .. value) end
  print("")
  io.write(p.body)
else
  error("unknown mode " .. tostring(mode))
end
client:close()
