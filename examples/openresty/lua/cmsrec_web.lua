-- Shared by the OpenResty examples (nginx-capture.conf, nginx-stream.conf,
-- nginx-thread.conf): the client configuration, the request fields, and the
-- answers the browser gets.
--
-- The browser asks GET /recording?callID=...[&beginTime=...&workNo=...
-- &callerNo=...&calleeNo=...] and gets either the recording (200, Content-Type
-- from the bytes, Content-Disposition "<callID>.wav|.zip") or a JSON error:
--   400 {"error":"invalid","field":...}    the request fields are wrong
--   404 {"error":"notfound",...}           the CMS has no recording (yet)
--   502 {"error":"cms","kind":...}         the CMS failed or refused (Retry-After when it said so)
--   504 {"error":"timeout",...}            the CMS did not answer in time
--   503 {"error":"busy",...}               too many downloads in flight (nginx-thread.conf)
--   500 {"error":"config",...}             this server is misconfigured (see the error log)
local cjson = require "cjson.safe"

local M = {}

local FIELDS = { "callID", "workNo", "beginTime", "callerNo", "calleeNo" }

-- The client configuration. The URL and the CA come from the environment (the
-- nginx.conf `env` directives let them through; nginx clears every other
-- variable). The AK and SK are not read here: cmsrec.new takes them from
-- CMSREC_AK / CMSREC_SK itself, so the SK never becomes a Lua string; it is
-- copied into the client's C memory, one copy per client (per worker, and per
-- Lua VM of the thread pool).
function M.config()
  return {
    base_url = os.getenv("CMSREC_URL"),
    cafile = os.getenv("CMSREC_CAFILE"),
    -- a whole download (way 2 only: with proxy_pass, nginx's proxy_*_timeout apply)
    timeout = tonumber(os.getenv("CMSREC_TIMEOUT") or "") or 300,
    connect_timeout = 5,
    stall_timeout = 30,
    -- a browser is waiting: no retries behind its back; a 503's Retry-After
    -- reaches it with the JSON 502, and it decides
    retries = 0,
  }
end

-- The client of this Lua VM, made on first use: one per worker for way 1, one
-- per VM of the thread pool for way 2. Never make it in init_by_lua: that runs
-- in the master, and every worker would inherit a copy of its libcurl handle.
local client

function M.client()
  if not client then
    local cmsrec = require "cmsrec"
    local ok, c = pcall(cmsrec.new, M.config())
    if not ok then return nil, { kind = "config", message = tostring(c) } end
    client = c
  end
  return client
end

-- The request fields from the query string: each at most once, with a value.
function M.request()
  local args = ngx.req.get_uri_args(16)
  local req = {}
  for _, name in ipairs(FIELDS) do
    local v = args[name]
    if v ~= nil and type(v) ~= "string" then
      return nil, { kind = "invalid", field = name,
                    message = name .. " must be given once, with a value" }
    end
    req[name] = v
  end
  return req
end

-- The callID made safe for a file name, as download_file does: [A-Za-z0-9._-],
-- anything else becomes "_", no leading dot, at most 200 bytes.
function M.file_name(call_id, format)
  local base = tostring(call_id or "recording"):gsub("[^%w._-]", "_"):gsub("^%.", "_"):sub(1, 200)
  local ext = (format == "wav" or format == "zip") and format or "bin"
  return base .. "." .. ext
end

local TYPES = { wav = "audio/wav", zip = "application/zip" }

function M.content_type(format)
  return TYPES[format] or "application/octet-stream"
end

-- Headers of a recording answer (before any byte of it is sent).
function M.recording_headers(call_id, format)
  ngx.header["Content-Type"] = M.content_type(format)
  ngx.header["Content-Disposition"] = ('attachment; filename="%s"'):format(M.file_name(call_id, format))
  ngx.header["Cache-Control"] = "no-store"
  ngx.header["X-Content-Type-Options"] = "nosniff"
end

-- No recording for this call (yet): the CMS's resultCode "1", "Record List is empty".
function M.is_notfound(err)
  return err.kind == "api" and tostring(err.result_code) == "1"
end

-- The browser's status and error code for a cmsrec error table.
function M.status_for(err)
  if M.is_notfound(err) then return 404, "notfound" end
  if err.kind == "invalid" then return 400, "invalid" end
  if err.kind == "config" then return 500, "config" end -- ours, not cmsrec's
  if err.kind == "busy" then return 503, "busy" end     -- ours, not cmsrec's
  -- a timeout here, or one the CMS's own gateway reported
  if err.kind == "timeout" or err.status == 504 then return 504, "timeout" end
  return 502, "cms"
end

-- The JSON error answer: the body, and its status (headers are set here).
function M.error_answer(err, call_id)
  local status, code = M.status_for(err)
  local body = cjson.encode {
    error = code,
    kind = err.kind,
    message = err.message,     -- cmsrec's sentence: never holds the SK; server text is sanitised
    field = err.field,
    status = err.status,       -- the CMS's HTTP status, when it answered
    result_code = err.result_code,
    retryable = err.retryable or false,
    callID = call_id,
  } .. "\n"
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #body
  ngx.header["Content-Disposition"] = nil
  ngx.header["Cache-Control"] = "no-store"
  if err.retry_after then ngx.header["Retry-After"] = err.retry_after end
  return body, status
end

-- Send a JSON error from a rewrite, access or content handler and end the request.
function M.fail(err, call_id)
  if err.kind == "config" then -- the details are for the log, not for the browser
    ngx.log(ngx.ERR, "cmsrec: bad configuration: ", err.message)
    err = { kind = "config", message = "the recording service is misconfigured" }
  end
  local level = (err.kind == "invalid" or M.is_notfound(err)) and ngx.INFO or ngx.ERR
  ngx.log(level, "cmsrec: callID ", tostring(call_id), ": ", err.kind, ": ", err.message)
  local body = M.error_answer(err, call_id)
  ngx.print(body)
  return ngx.exit(ngx.HTTP_OK) -- the status is sent already: OK ends the request as is
end

-- Way 1: the browser's request validated and signed (the SK stays in C), as the
-- nginx variables the upstream location reads (proxy_pass, proxy_set_header).
-- Returns the request and those variables, or nothing after answering the error.
function M.prepare()
  local req, err = M.request()
  if not req then return M.fail(err) end
  local c, cerr = M.client()
  if not c then return M.fail(cerr) end
  local prep
  prep, err = c:prepare(req)
  if not prep then return M.fail(err, req.callID) end
  local h = prep.headers
  return req, {
    cmsrec_url = prep.url,
    cmsrec_body = prep.body,
    cmsrec_host = h["Host"],
    cmsrec_content_type = h["Content-Type"],
    cmsrec_content_length = h["Content-Length"],
    cmsrec_authorization = h["Authorization"],
    cmsrec_accept_encoding = h["Accept-Encoding"],
  }
end

return M
