-- Download one recording and save it next to you.
--
--   lua examples/download.lua CALL_ID [OUTPUT]     (Lua 5.1 to 5.4, or LuaJIT)
--
-- Configuration comes from the environment: CMSREC_URL (https://ip:port),
-- CMSREC_AK, CMSREC_SK and, for a private CA, CMSREC_CAFILE.
local cmsrec = require "cmsrec"

local call_id, output = arg[1], arg[2]
if not call_id then
  io.stderr:write("usage: lua examples/download.lua CALL_ID [OUTPUT]\n")
  os.exit(2)
end

local client = cmsrec.new{
  base_url = os.getenv("CMSREC_URL") or error("set CMSREC_URL, e.g. https://10.0.0.1:28080"),
  cafile = os.getenv("CMSREC_CAFILE"), -- ak and sk default to CMSREC_AK / CMSREC_SK
  timeout = 120,
}

local data, info = client:download{ callID = call_id }
client:close()
if not data then
  local err = info
  print(tostring(err))
  if err.kind == "api" and err.result_code == "1" then
    print("no recording yet: the CMS may index it later, try again in a few minutes")
  elseif err.retryable then
    print("temporary failure: retry" .. (err.retry_after and (" after " .. err.retry_after .. " s") or ""))
  end
  os.exit(1)
end

output = output or (call_id:gsub("[^%w%-_.]", "_") .. "." .. (info.format == "unknown" and "bin" or info.format))
local f = assert(io.open(output, "wb"))
f:write(data)
assert(f:close())
print(("saved %s: %s, %d bytes, HTTP %d in %.3f s"):format(output, info.format, info.bytes,
  info.status, info.elapsed))
