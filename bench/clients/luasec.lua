-- The LuaSocket + LuaSec alternative for make bench (Debian lua-socket, lua-sec),
-- auth-v2 signed in pure Lua (sha256.lua), as a user without cmsrec would write it.
--   lua5.4 luasec.lua sign N                  signatures/s (CPU time)
--   lua5.4 luasec.lua many URL CA N OUTDIR    N recordings, one https.request each
-- Prints RESULT key=value lines. Bench-only code.
package.path = arg[0]:gsub("[^/]*$", "") .. "?.lua;" .. package.path
local sha = require "sha256"
sha.selftest()

local AK, SK = "bench-ak", "bench-sk-0123456789"
local CTYPE = "application/json;charset=UTF-8"
local mode = arg[1]

if mode == "sign" then
  local n, t0 = tonumber(arg[2]), os.clock()
  local headers = { host = "10.0.0.1:28080", ["content-type"] = CTYPE, ["content-length"] = "80" }
  for _ = 1, n do
    sha.authv2(AK, SK, "POST", "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile", headers,
      ("x"):rep(80), "2024-10-31T14:06:52Z")
  end
  print(("RESULT rate=%.1f"):format(n / (os.clock() - t0)))
  return
end

local https = require "ssl.https"
local ltn12 = require "ltn12"
local url, ca, n, out = arg[2], arg[3], tonumber(arg[4]), arg[5]
local host, path = url:match("^https://([^/]+)(/.*)$")
local ok = 0
for i = 1, n do
  local body = ('{"callID":"small-%d","workNo":"","beginTime":"","callerNo":"","calleeNo":""}'):format(i)
  local headers = { host = host, ["content-type"] = CTYPE, ["content-length"] = tostring(#body) }
  headers.authorization = sha.authv2(AK, SK, "POST", path, headers, body, os.date("!%Y-%m-%dT%H:%M:%SZ"))
  local chunks = {}
  local _, code = https.request{ url = url, method = "POST", headers = headers,
    source = ltn12.source.string(body), sink = ltn12.sink.table(chunks),
    cafile = ca, verify = "peer", protocol = "any" }
  local data = table.concat(chunks)
  if code == 200 and data:sub(1, 4) == "RIFF" then
    local f = assert(io.open(("%s/small-%d.wav"):format(out, i), "wb"))
    f:write(data)
    f:close()
    ok = ok + 1
  end
end
print(("RESULT ok=%d"):format(ok))
