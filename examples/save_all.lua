-- Bulk download: one callID per line on stdin, the recordings of each call saved
-- into DIR/<callID>/ (ZIP bundles unpacked), four at a time with client:download_many.
-- It retries temporary failures itself (network, timeouts, 429/502/503/504, flow
-- control), after the server's Retry-After (at most 60 s) or a growing pause, and never
-- retries authentication failures: after one, nothing new is started. Calls already
-- saved (DIR/<callID>/ not empty) are skipped, so a failed run can simply be rerun.
--
--   lua examples/save_all.lua DIR < call-ids.txt     (Lua 5.1 to 5.4, or LuaJIT)
--
-- Configuration from the environment: CMSREC_URL, CMSREC_AK, CMSREC_SK, CMSREC_CAFILE.
-- Prints "callID <tab> path <tab> bytes" for every file saved; exits 0 when all went well.
-- (`cmsrec batch --unzip` does this from the command line, with a journal and shards.)
local cmsrec = require "cmsrec"

local dir = arg[1] or error("usage: lua examples/save_all.lua DIR < call-ids.txt")

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
-- DIR/<callID>/ as download_many names it: [A-Za-z0-9._-] kept, anything else '_', no
-- leading dot, at most 200 bytes
local function call_dir(id)
  local name = id:sub(1, 200):gsub("[^A-Za-z0-9._-]", "_"):gsub("^%.", "_")
  return dir .. "/" .. (name ~= "" and name or "recording")
end
local function is_empty(path) -- true also when missing
  local p = io.popen("ls -A " .. sh_quote(path) .. " 2>/dev/null")
  local first = p:read("*l")
  p:close()
  return first == nil
end

local reqs, seen, skipped = {}, {}, 0
for line in io.lines() do
  local id = line:match("^%s*(.-)%s*$")
  if id ~= "" and not seen[id] then
    seen[id] = true
    if is_empty(call_dir(id)) then reqs[#reqs + 1] = { callID = id } else skipped = skipped + 1 end
  end
end
os.execute("mkdir -p " .. sh_quote(dir))

local client = cmsrec.new{
  base_url = os.getenv("CMSREC_URL") or error("set CMSREC_URL"),
  cafile = os.getenv("CMSREC_CAFILE"),
  timeout = 600, -- a one-hour recording is about 29 MB
}
local results = client:download_many(reqs, {
  dir = dir, unzip = true, concurrency = 4, retries = 3,
  on_result = function(_, req, info, err)
    if info then
      for _, f in ipairs(info.files) do print(("%s\t%s\t%d"):format(req.callID, f.path, f.size)) end
    elseif err.attempts > 0 then -- (the calls never started after an auth failure: counted below)
      io.stderr:write(("\r\27[K%s: %s\n"):format(req.callID, tostring(err)))
    end
  end,
  on_progress = function(p)
    io.stderr:write(("\r%d/%d calls, %.1f MB "):format(p.done, p.total, p.bytes / 1e6))
  end,
})
client:close()
io.stderr:write(("\r\27[K%d saved, %d already there, %d failed%s\n"):format(results.ok, skipped, results.failed,
  results.not_attempted > 0 and (", %d not attempted"):format(results.not_attempted) or ""))
os.exit(results.failed + results.not_attempted == 0 and 0 or 1) -- (Lua 5.1's os.exit takes no boolean)
