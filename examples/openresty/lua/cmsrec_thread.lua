-- Way 2: download in nginx's thread pool, serve the file from nginx
-- (nginx-thread.conf).
--
-- The content handler hands the download to a thread of the pool with
-- ngx.run_worker_thread() (the request's coroutine waits, the worker does not),
-- the thread streams the recording into a file of the spool directory
-- (constant memory), and ngx.exec() passes the file to an internal location
-- that nginx serves with sendfile; the log phase removes it. The worker never
-- holds the recording in memory.
local cmsrec = require "cmsrec"
local web = require "cmsrec_web"

local M = {}

local POOL = "cmsrec" -- thread_pool cmsrec ... in nginx.conf

-- Downloads of this worker handed to the pool and not back yet. A worker runs
-- one Lua thread at a time, so a plain counter is exact. It must never exceed
-- the pool's max_queue: lua-nginx-module 0.10.23 crashes the worker (SIGABRT,
-- every request on it lost) when ngx.run_worker_thread meets a full queue.
local in_flight = 0

local function busy(call_id)
  ngx.header["Retry-After"] = "5"
  return web.fail({ kind = "busy", retryable = true,
                    message = "too many downloads at once, try again" }, call_id)
end

function M.handler()
  local req, err = web.request()
  if not req then return web.fail(err) end
  if in_flight >= (tonumber(ngx.var.cmsrec_max_downloads) or 0) then return busy(req.callID) end
  local spool, id = ngx.var.cmsrec_spool, ngx.var.request_id -- 32 hex digits, unique
  in_flight = in_flight + 1
  -- pcall: the counter must come down whatever happens (with lua_check_client_abort
  -- off, the default, the handler always gets here once the thread is done)
  local pok, ok, info, terr = pcall(ngx.run_worker_thread, POOL, "cmsrec_worker",
                                    "download_file", req, spool .. "/" .. id)
  in_flight = in_flight - 1
  if not pok or not ok then -- no Lua VM or memory, cmsrec_worker not found, or it raised
    return web.fail({ kind = "config", message = "ngx.run_worker_thread: " ..
                      tostring(pok and info or ok) }, req.callID)
  end
  if not info then
    err = cmsrec.error(terr) -- the metatable is lost between VMs: tostring(err) works again
    return web.fail(err, req.callID)
  end
  return ngx.exec("/_cmsrec_spool/" .. id, { callID = req.callID, format = info.format })
end

-- header_filter_by_lua of the spool location: name and type the recording.
function M.spool_headers()
  if ngx.status == ngx.HTTP_OK or ngx.status == ngx.HTTP_PARTIAL_CONTENT then
    local args = ngx.req.get_uri_args(4) -- set by ngx.exec above: the location is internal
    web.recording_headers(args.callID, args.format)
  end
end

-- log_by_lua of the spool location: the answer is over (sent, or the browser
-- went away), the file can go. On Linux a file being sent may be unlinked.
function M.spool_remove()
  local id = ngx.var.uri:match("^/_cmsrec_spool/(%x+)$")
  if id then
    local ok, err = os.remove(ngx.var.cmsrec_spool .. "/" .. id)
    if not ok then ngx.log(ngx.ERR, "cmsrec: cannot remove the spool file: ", err) end
  end
end

return M
