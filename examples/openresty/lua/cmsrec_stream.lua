-- Way 1, streaming: sign in Lua, proxy_pass with nginx, check the first bytes
-- in a body filter (nginx-stream.conf).
--
-- The recording goes from the CMS to the browser through nginx's buffers, in
-- constant memory. The catch: the CMS sends its JSON errors with HTTP 200, and
-- nginx sends the browser its status and headers before the first byte of the
-- body is seen. So:
--   * an answer that is an error by its status (401, 503, nginx's own 502/504)
--     is replaced, in the header filter, by the JSON error (502/504);
--   * at 200, the browser gets 200 at once; when the first bytes turn out to be
--     a JSON error (no recording yet, flow control...), the body filter ABORTS
--     the response (return ngx.ERROR): the connection is closed before the
--     announced Content-Length, so the browser sees a failed download, never a
--     complete recording made of a JSON error. It cannot get the JSON 404: use
--     nginx-capture.conf or nginx-thread.conf when it must.
--   * the Content-Type and the file name are decided from the CMS's
--     Content-Type (application/zip gives a .zip), since the bytes come later;
--     a mismatch with the sniffed format is logged.
local cmsrec = require "cmsrec"
local web = require "cmsrec_web"

local M = {}

-- access_by_lua: validate and sign; proxy_pass then sends what is set here.
function M.access()
  local req, vars = web.prepare()
  if not req then return end -- answered
  for name, value in pairs(vars) do ngx.var[name] = value end
  ngx.ctx.call_id = req.callID -- the filters below act only when this is set
end

-- header_filter_by_lua: the CMS's status and headers (or nginx's own error page).
function M.header_filter()
  local ctx = ngx.ctx
  if not ctx.call_id then return end -- our own JSON answer from M.access
  local headers = ngx.resp.get_headers()
  local format, err = cmsrec.classify(ngx.status, headers, "")
  if not format and not err then -- 2xx: the first bytes will tell
    ctx.status, ctx.headers, ctx.head = ngx.status, headers, ""
    local ctype = ngx.var.upstream_http_content_type -- hidden: see proxy_hide_header
    ctx.announced = type(ctype) == "string" and ctype:lower():find("zip", 1, true) and "zip" or "wav"
    ngx.status = ngx.HTTP_OK
    web.recording_headers(ctx.call_id, ctx.announced)
    -- the CMS's Content-Length stays: a response cut short is visibly incomplete
    return
  end
  -- an error by its status or headers alone: the browser gets our JSON instead
  err = err or { kind = "protocol", message = "an empty answer" }
  ngx.log(ngx.ERR, "cmsrec: callID ", ctx.call_id, ": ", err.kind, ": ", err.message)
  ngx.header["Content-Encoding"] = nil
  ctx.replace = web.error_answer(err, ctx.call_id)
end

-- body_filter_by_lua: hold the first bytes until classify() decides.
function M.body_filter()
  local ctx = ngx.ctx
  if ctx.replace then -- swallow the CMS's error body, send ours at its end
    ngx.arg[1] = ngx.arg[2] and ctx.replace or nil
    return
  end
  if ctx.aborted then -- whatever still comes goes nowhere
    ngx.arg[1] = nil
    return ngx.ERROR
  end
  if not ctx.head then return end -- not ours, or decided: pass everything through
  local head = ctx.head .. (ngx.arg[1] or "")
  local format, err = cmsrec.classify(ctx.status, ctx.headers, head, ngx.arg[2])
  if format then
    ctx.head = nil
    ngx.arg[1] = head
    if format ~= ctx.announced then
      ngx.log(ngx.WARN, "cmsrec: callID ", ctx.call_id, ": sent as ", ctx.announced,
              " but the recording is ", format)
    end
    return
  end
  if err then
    -- The 200 and the headers are gone already: abort, so that the browser
    -- never takes this JSON error for a (complete) recording.
    -- ngx.ERROR closes the connection: the browser sees a failed download.
    -- It takes effect only when returned from the directive itself
    -- (body_filter_by_lua_block { return ... }); the bytes are dropped as well,
    -- so that without the `return` the JSON still never reaches the browser.
    ngx.log(ngx.ERR, "cmsrec: callID ", ctx.call_id, ": aborting the response: ",
            err.kind, ": ", err.message)
    ctx.aborted = true
    ngx.arg[1] = nil
    return ngx.ERROR
  end
  ctx.head = head -- more bytes needed
  ngx.arg[1] = nil
end

return M
