-- Bulk download: one callID per line on stdin, the recordings of each call saved
-- into DIR/<callID>/ (ZIP bundles unpacked), temporary failures retried with
-- backoff. Calls already saved are skipped, so a failed run can simply be rerun.
--
--   lua examples/save_all.lua DIR < call-ids.txt     (Lua 5.1 to 5.4, or LuaJIT)
--
-- Configuration from the environment: CMSREC_URL, CMSREC_AK, CMSREC_SK, CMSREC_CAFILE.
-- A pause between attempts follows the server's Retry-After, else 2, 4, 8 s, and is at
-- most CMSREC_MAX_PAUSE seconds (default 60): a server asking for hours does not stall
-- the whole run.
-- Prints "callID <tab> path <tab> bytes" for every file saved; exits 0 when all went well.
local cmsrec = require "cmsrec"

local ATTEMPTS = 4
local MAX_PAUSE = tonumber(os.getenv("CMSREC_MAX_PAUSE") or "") or 60
if not (MAX_PAUSE >= 0) then MAX_PAUSE = 60 end -- negative or NaN

local dir = arg[1] or error("usage: lua examples/save_all.lua DIR < call-ids.txt")

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
-- os.execute returns the wait status in Lua 5.1 and LuaJIT (0 for success), true or nil in 5.2+
local function execute(command)
  local status = os.execute(command)
  return status == true or status == 0
end
local function sleep(seconds) os.execute(("sleep %.3f"):format(seconds)) end
local function is_empty(path) -- true also when missing
  local p = io.popen("ls -A " .. sh_quote(path) .. " 2>/dev/null")
  local first = p:read("*l")
  p:close()
  return first == nil
end

local client = cmsrec.new{
  base_url = os.getenv("CMSREC_URL") or error("set CMSREC_URL"),
  cafile = os.getenv("CMSREC_CAFILE"),
  timeout = 600, -- a one-hour recording is about 29 MB
}

-- Retry what may work later (network, timeout, 429/5xx, flow control), never auth failures.
local function fetch(call_id, into)
  local info, err
  for attempt = 1, ATTEMPTS do
    info, err = client:download_file({ callID = call_id }, into, {
      unzip = true,
      on_progress = function(received, total)
        io.stderr:write(("\r%s: %.1f / %s MB "):format(call_id, received / 1e6,
          total and ("%.1f"):format(total / 1e6) or "?"))
      end,
    })
    io.stderr:write("\r\27[K")
    if info or not err.retryable or attempt == ATTEMPTS then break end
    -- the server's wish (or exponential backoff), within [0, MAX_PAUSE]
    local pause = tonumber(err.retry_after) or 2 ^ attempt
    if not (pause >= 0) then pause = 0 end -- negative or NaN
    pause = math.min(pause, MAX_PAUSE)
    io.stderr:write(("%s: %s; retrying in %g s\n"):format(call_id, tostring(err), pause))
    sleep(pause)
  end
  return info, err
end

local saved, skipped, failed = 0, 0, 0
for line in io.lines() do
  local call_id = line:match("^%s*(.-)%s*$")
  local into = dir .. "/" .. call_id:gsub("[^%w%-_.]", "_"):gsub("^%.", "_")
  if call_id == "" then
    -- blank line
  elseif not is_empty(into) then
    skipped = skipped + 1
  else
    assert(execute("mkdir -p " .. sh_quote(into)), "cannot make " .. into)
    local info, err = fetch(call_id, into)
    if info then
      saved = saved + 1
      for _, f in ipairs(info.files) do print(("%s\t%s\t%d"):format(call_id, f.path, f.size)) end
    else
      failed = failed + 1
      os.remove(into) -- the empty directory: a rerun tries this call again
      io.stderr:write(("%s: %s\n"):format(call_id, tostring(err)))
      if err.kind == "auth" then break end -- stop before the CMS locks this IP
    end
  end
end
client:close()
io.stderr:write(("%d saved, %d already there, %d failed\n"):format(saved, skipped, failed))
os.exit(failed == 0 and 0 or 1) -- (Lua 5.1's os.exit takes no boolean)
