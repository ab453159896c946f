-- Bulk download: one callID per line on stdin, the recordings of each call saved
-- into DIR/<callID>/ (ZIP bundles unpacked), temporary failures retried with backoff.
--
--   lua5.4 examples/save_all.lua DIR < call-ids.txt
--
-- Configuration from the environment: CMSREC_URL, CMSREC_AK, CMSREC_SK, CMSREC_CAFILE.
local cmsrec = require "cmsrec"

local dir = arg[1] or error("usage: lua5.4 examples/save_all.lua DIR < call-ids.txt")
assert(os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'"))

local client <close> = cmsrec.new{
  base_url = os.getenv("CMSREC_URL") or error("set CMSREC_URL"),
  cafile = os.getenv("CMSREC_CAFILE"),
  timeout = 600, -- a one-hour recording is about 29 MB
}

local function sleep(seconds) os.execute("sleep " .. tonumber(seconds)) end

-- Retry what may work later (network, timeout, 429/5xx, flow control), never auth failures.
local function fetch(call_id)
  local into = dir .. "/" .. call_id:gsub("[^%w%-_.]", "_"):gsub("^%.", "_")
  assert(os.execute("mkdir -p '" .. into .. "'"))
  for attempt = 1, 4 do
    local info, err = client:download_file({ callID = call_id }, into, {
      unzip = true,
      on_progress = function(received, total)
        io.stderr:write(("\r%s: %.1f / %s MB "):format(call_id, received / 1e6,
          total and ("%.1f"):format(total / 1e6) or "?"))
      end,
    })
    io.stderr:write("\r\27[K")
    if info or not err.retryable then return info, err end
    local pause = err.retry_after or 2 ^ attempt
    io.stderr:write(("%s: %s; retrying in %d s\n"):format(call_id, tostring(err), pause))
    sleep(pause)
  end
  return nil, "gave up after 4 attempts"
end

local ok, failed = 0, 0
for call_id in io.lines() do
  call_id = call_id:match("^%s*(.-)%s*$")
  if call_id ~= "" then
    local info, err = fetch(call_id)
    if info then
      ok = ok + 1
      for _, f in ipairs(info.files) do print(("%s\t%s\t%d"):format(call_id, f.path, f.size)) end
    else
      failed = failed + 1
      io.stderr:write(("%s: %s\n"):format(call_id, tostring(err)))
      if type(err) == "table" and err.kind == "auth" then break end -- stop before an IP lock
    end
  end
end
io.stderr:write(("%d saved, %d failed\n"):format(ok, failed))
os.exit(failed == 0)
