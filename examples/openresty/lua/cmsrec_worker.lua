-- Way 2: the function that runs in nginx's thread pool (nginx-thread.conf).
--
-- ngx.run_worker_thread() runs it in a Lua VM of its own, on a thread of the
-- pool: blocking there is fine, the worker's event loop goes on. Only plain
-- values cross between the VMs (strings, numbers, booleans, tables without
-- metatables), so an error table arrives without its __tostring: the handler
-- puts it back with cmsrec.error(err). The VM has no ngx.sleep, no cosockets,
-- no ngx.var: nothing here may yield (an on_progress that calls ngx.sleep
-- fails and cancels the download, kind "cancelled").
local web = require "cmsrec_web" -- only its ngx-free parts: config() and client()

local M = {}

-- web.client(): one client per Lua VM of the pool (lua_worker_thread_vm_pool_size
-- keeps the VMs, so the client and its kept-alive TLS connection are reused). A
-- VM runs one task at a time, so a client is never shared between threads. Each
-- holds its own copy of the SK in C memory.
-- Download `req` into the file `path` (replaced only when the download
-- succeeded; nothing is left there on failure). Returns plain tables.
function M.download_file(req, path)
  local client, err = web.client()
  if not client then return nil, err end
  local info
  info, err = client:download_file(req, path)
  if not info then return nil, err end
  return { path = info.path, format = info.format, bytes = info.bytes,
           sha256 = info.sha256, status = info.status }
end

return M
