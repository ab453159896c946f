-- Way 1, buffered: sign in Lua, send with nginx (nginx-capture.conf).
--
-- client:prepare() validates the request and signs it with the SK held in C;
-- ngx.location.capture() sends it through the internal location
-- /_cmsrec_upstream (proxy_pass, TLS verified by nginx) without blocking the
-- worker; cmsrec.classify() decides what came back. The whole answer, the
-- recording included, is held in this worker's memory until it is sent: fine
-- for recordings of a few MB (a one-hour call is about 29 MB), not for many
-- large ones at once (use nginx-stream.conf or nginx-thread.conf then).
local cmsrec = require "cmsrec"
local web = require "cmsrec_web"

local M = {}

function M.handler()
  local req, vars = web.prepare()
  if not req then return end -- answered
  local body = vars.cmsrec_body
  vars.cmsrec_body = nil -- the subrequest's body, not a variable here
  local res = ngx.location.capture("/_cmsrec_upstream", {
    method = ngx.HTTP_POST,
    body = body,
    vars = vars, -- read by proxy_pass and proxy_set_header in /_cmsrec_upstream
  })

  if res.truncated then
    -- the CMS (or the connection to it) broke off midway: never send part of a recording
    return web.fail({ kind = "network", retryable = true, status = res.status,
                      message = "the CMS connection broke off during the answer" }, req.callID)
  end
  -- A timeout or an unreachable CMS reaches here as nginx's own 504 / 502 page:
  -- classify() makes them kind "http" with that status, like any other non-2xx.
  local format, err = cmsrec.classify(res.status, res.header, res.body, true)
  if not format then
    return web.fail(err or { kind = "protocol", message = "the CMS answer could not be classified" },
                    req.callID)
  end
  ngx.status = ngx.HTTP_OK
  web.recording_headers(req.callID, format)
  ngx.header["Content-Length"] = #res.body
  ngx.print(res.body)
end

return M
