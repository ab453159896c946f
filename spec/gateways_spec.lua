-- Field gateways (issue 12): auth = "apig" | "bearer", extra headers, resolve (a WAF that
-- wants SNI), client:call, and the CLI's options for them, against the mock CMS, whose
-- verifiers are written independently of the module (test/mock_cms.py).
local H = require "spec.helper"
local cmsrec = require "cmsrec"
local cjson = require "cjson"
local mock = H.mock

local TOKEN_PATH = "/apigovernance/api/oauth/tokenByAkSk"
local BODY = '{"say": "Hello world!"}'
local CT = "application/json;charset=UTF-8"

local function token_url() return mock.url .. TOKEN_PATH end

-- A client on the mock with auth = "bearer".
local function bearer(extra)
  local t = { auth = "bearer", token_url = token_url() }
  for k, v in pairs(extra or {}) do t[k] = v end
  return H.client(t)
end

-- pcall(cmsrec.new, config): the message it raised (fails if it did not raise).
local function refused(extra)
  local ok, msg = pcall(cmsrec.new, H.config(extra))
  assert(not ok, "cmsrec.new accepted it")
  return msg
end

-- Neither `secret` nor the SK anywhere in an error table or its tostring.
local function assert_clean(err, secret)
  H.assert_no_secret(err)
  assert(not tostring(err):find(secret, 1, true), "the token leaked into tostring(err)")
  for k, v in pairs(err) do
    assert(type(v) ~= "string" or not v:find(secret, 1, true), "the token leaked into err." .. k)
  end
end

-- The bearer token the mock saw last (from the request's Authorization header).
local function last_token()
  return (mock.stats().last.headers.authorization or ""):match("^Bearer (%S+)$")
end

local function per_call(id) return mock.stats().per_call[id] or 0 end

describe("cmsrec.sign{scheme = 'apig'}", function()
  local function v4(ts)
    return cmsrec.sign{
      scheme = "apig", ak = "globalaktest", sk = "example-sk-0123456789", path = "/rest/cmsapp/v1/ping",
      headers = { host = "10.22.26.181:28080", ["Content-Type"] = CT }, body = BODY, timestamp = ts,
    }
  end

  it("reproduces V4 byte for byte, from either timestamp form", function()
    for _, ts in ipairs({ "20241031T140652Z", "2024-10-31T14:06:52Z" }) do
      local auth, d = v4(ts)
      assert.equal("SDK-HMAC-SHA256 Access=globalaktest, SignedHeaders=content-type;host;x-sdk-date, "
        .. "Signature=c34e6acee3d185e6c72e77d72331e863ad694280734904f68daaeb3046125adb", auth)
      assert.equal("POST\n/rest/cmsapp/v1/ping/\n\ncontent-type:application/json;charset=UTF-8\n"
        .. "host:10.22.26.181:28080\nx-sdk-date:20241031T140652Z\n\ncontent-type;host;x-sdk-date\n"
        .. "9a02a6785649cc14afb95999a3ddbb7bed2370840b9bca6d403c0b8dbf1d40a9", d.canonical_request)
      assert.equal("SDK-HMAC-SHA256\n20241031T140652Z\n"
        .. "5a2899caf872bbfa54f09ca2b35f8f6c60fd803621d00b317ae68e46b5db1bc6", d.string_to_sign)
      assert.equal("20241031T140652Z", d.timestamp)
      assert.equal("content-type;host;x-sdk-date", d.signed_headers)
      assert.is_nil(d.signing_key) -- no derived key in this scheme
    end
  end)

  it("stamps now as X-Sdk-Date; refuses other schemes, bad timestamps, a given x-sdk-date", function()
    local _, d = cmsrec.sign{ scheme = "apig", ak = "a", sk = "s", path = "/p", headers = { host = "h" } }
    assert.matches("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$", d.timestamp)
    assert.equal(os.date("!%Y%m%d", os.time()), d.timestamp:sub(1, 8))
    local ok, msg = pcall(cmsrec.sign, { scheme = "bearer", ak = "a", sk = "s", path = "/p", headers = { host = "h" } })
    assert.is_false(ok)
    assert.matches("option 'scheme' must be", msg)
    ok, msg = pcall(cmsrec.sign, { scheme = "apig", ak = "a", sk = "s", path = "/p", headers = { host = "h" },
                                   timestamp = "20241331T000000Z" })
    assert.is_false(ok)
    assert.matches("'timestamp' must be", msg)
    ok, msg = pcall(cmsrec.sign, { scheme = "apig", ak = "a", sk = "s", path = "/p",
                                   headers = { host = "h", ["X-Sdk-Date"] = "20241031T140652Z" } })
    assert.is_false(ok)
    assert.matches("x%-sdk%-date' comes from 'timestamp'", msg)
  end)
end)

describe("gateways against the mock", function()
  setup(function() mock.start() end)
  teardown(function() mock.stop() end)
  before_each(function() mock.reset() end)

  describe("each scheme, verified by the mock", function()
    it("downloads with auth-v2, apig and bearer, the bytes checked", function()
      local want = mock.expect("wav-20000")
      for _, auth in ipairs({ "auth-v2", "apig", "bearer" }) do
        local c = auth == "bearer" and bearer() or H.client{ auth = auth }
        local data, info = c:download{ callID = "wav-20000" }
        c:close()
        assert.is_string(data, auth .. ": " .. tostring(info))
        assert.equal(want.sha256, H.sha256(data))
        local last = mock.stats().last
        assert.equal(auth, last.scheme)
        assert.is_true(last.auth_ok)
      end
      local last = mock.stats().last -- the bearer request
      assert.equal(H.AK, last.headers["x-app-key"])
      assert.matches("^Bearer %S+$", last.headers.authorization)
    end)

    it("apig sends X-Sdk-Date and signs it with content-type and host", function()
      local c = H.client{ auth = "apig" }
      assert.is_string((c:download{ callID = "wav-100" }))
      c:close()
      local h = mock.stats().last.headers
      assert.matches("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$", h["x-sdk-date"])
      assert.matches("^SDK%-HMAC%-SHA256 Access=" .. H.AK:gsub("%p", "%%%0") .. ", SignedHeaders=content%-type;host;x%-sdk%-date, "
        .. "Signature=%x+$", h.authorization)
    end)

    it("the mock's verifiers refuse what is wrong (they are not rubber stamps)", function()
      local c = H.client{ auth = "apig", sk = "not-the-mock-sk-0000" }
      local data, err = c:download{ callID = "wav-100" }
      c:close()
      assert.is_nil(data)
      assert.equal("auth", err.kind)
      assert.equal(401, err.status)
      assert.equal("signature mismatch", mock.stats().last.auth_error)
      -- a made-up bearer token (sent by an authorization function, X-APP-Key as an extra header)
      c = H.client{ authorization = function() return "Bearer made-up-token-123" end,
                    headers = { ["X-APP-Key"] = H.AK } }
      data, err = c:download{ callID = "wav-100" }
      c:close()
      assert.equal("auth", err.kind)
      assert.equal("unknown or revoked token", mock.stats().last.auth_error)
    end)
  end)

  describe("bearer tokens", function()
    it("one token for many downloads: single, batch, reader and call", function()
      local c = bearer()
      for i = 1, 3 do assert.is_string((c:download{ callID = "wav-" .. (100 + i) })) end
      local results = c:download_many({ { callID = "wav-200" }, { callID = "wav-201" }, { callID = "wav-202" } },
                                      { concurrency = 3 })
      assert.equal(3, results.ok)
      local parts = {}
      for chunk in c:chunks{ callID = "wav-300" } do parts[#parts + 1] = chunk end
      assert.equal(300, #table.concat(parts))
      assert.is_table((c:call("/rest/x/v1/echo", { a = 1 })))
      c:close()
      local st = mock.stats()
      assert.equal(1, st.tokens_issued)
      assert.equal(1, st.token_requests)
      assert.equal(8, st.requests)
    end)

    it("a revoked token: exactly one refresh, the request tried once more", function()
      local c = bearer()
      assert.is_string((c:download{ callID = "wav-100" }))
      local old = last_token()
      mock.revoke()
      local data, info = c:download{ callID = "wav-101" }
      assert.is_string(data, tostring(info))
      assert.equal(2, info.attempts)
      assert.equal(2, per_call("wav-101"))
      assert.equal(2, mock.stats().tokens_issued)
      assert.not_equal(old, last_token())
      assert.is_string((c:download{ callID = "wav-102" })) -- the new token is kept
      assert.equal(2, mock.stats().tokens_issued)
      -- a batch after a revocation: every request still succeeds
      mock.revoke()
      local results = c:download_many({ { callID = "wav-200" }, { callID = "wav-201" } }, { concurrency = 2 })
      assert.equal(2, results.ok)
      assert.equal(3, mock.stats().tokens_issued) -- one refresh, whichever request saw the 401 first
      c:close()
    end)

    it("a second 401 after the refresh is kind auth: no loop", function()
      local c = bearer()
      assert.is_string((c:download{ callID = "wav-100" }))
      mock.set("bearer_reject", 1)
      local data, err = c:download{ callID = "wav-101" }
      assert.is_nil(data)
      assert.equal("auth", err.kind)
      assert.equal(401, err.status)
      assert.is_false(err.retryable)
      assert.equal(2, err.attempts)
      assert.equal(2, per_call("wav-101"))
      assert.equal(2, mock.stats().tokens_issued)
      -- a token fetched for the request itself is not refreshed on a 401
      local fresh = bearer()
      mock.reset()
      mock.set("bearer_reject", 1)
      data, err = fresh:download{ callID = "wav-102" }
      assert.equal("auth", err.kind)
      assert.equal(1, per_call("wav-102"))
      assert.equal(1, mock.stats().tokens_issued)
      fresh:close()
      c:close()
    end)

    it("a token refused by the token endpoint is kind auth; its 503 is kind http", function()
      local c = bearer{ sk = "wrong-secret-key-000" }
      local data, err = c:download{ callID = "wav-100" }
      c:close()
      assert.is_nil(data)
      assert.equal("auth", err.kind)
      assert.equal(401, err.status)
      assert.truthy(err.message:find(token_url(), 1, true), err.message)
      assert.matches("Incorrect app_key or app_secret", err.message)
      assert.equal(0, mock.stats().requests) -- nothing reached the CMS
      mock.set("token_mode", "noaccess")
      c = bearer()
      data, err = c:download{ callID = "wav-100" }
      assert.equal("auth", err.kind)
      assert.matches("without an AccessToken: the app is disabled", err.message)
      mock.set("token_mode", "503")
      data, err = c:download({ callID = "wav-100" }, { retries = 1 })
      assert.equal("http", err.kind)
      assert.equal(503, err.status)
      assert.is_true(err.retryable)
      assert.equal(2, err.attempts) -- a token request is an attempt: retries end
      assert.equal(1 + 1 + 2, mock.stats().token_requests)
      c:close()
    end)

    it("a token is used until shortly before expiresIn", function()
      mock.set("token_ttl", 2) -- used for 1.8 s (a tenth of the lifetime before it ends)
      local c = bearer()
      assert.is_string((c:download{ callID = "wav-100" }))
      assert.is_string((c:download{ callID = "wav-101" }))
      assert.equal(1, mock.stats().tokens_issued)
      H.sh("sleep 2")
      assert.is_string((c:download{ callID = "wav-102" }))
      assert.equal(2, mock.stats().tokens_issued)
      assert.equal(3, mock.stats().requests) -- no 401 on the way: it was renewed before
      c:close()
    end)

    it("the default token URL is the base URL's host on port 443", function()
      local c = H.client{ auth = "bearer", connect_timeout = 2 }
      local data, err = c:download{ callID = "wav-100" }
      c:close()
      assert.is_nil(data)
      assert.truthy(err.message:find("https://127.0.0.1:443" .. TOKEN_PATH, 1, true), err.message)
    end)

    it("neither the token nor the SK in errors or tostring, on every path", function()
      local c = bearer()
      assert.is_string((c:download{ callID = "wav-100" }))
      mock.set("bearer_reject", 1) -- the mock then quotes the token in its 401 answers
      local checks = {
        function() return select(2, c:download{ callID = "wav-101" }) end,
        function() return select(2, c:call("/rest/x/v1/echo", { a = 1 })) end,
        function() return c:download_many({ { callID = "wav-1" } })[1].err end,
        function()
          local reader, err = c:reader{ callID = "wav-1" }
          if not reader then return err end
          return select(2, reader())
        end,
      }
      for i, check in ipairs(checks) do
        local err = check()
        local token = last_token() -- the token of the last refused request
        assert.truthy(token and #token > 20)
        assert.is_table(err, "check " .. i)
        assert.equal("auth", err.kind)
        assert_clean(err, token)
        assert.matches("token %*%*%* is not allowed", err.result_desc) -- quoted, then scrubbed
        assert.is_nil(tostring(c):find(token, 1, true))
      end
      c:close()
    end)
  end)

  describe("the CMSREC_DEBUG trace with auth = bearer", function()
    it("shows neither the token nor the SK, even quoted by the gateway", function()
      mock.set("bearer_reject", 1) -- the mock quotes the token in its 401 answer
      local out = H.run_lua(([[
        local c = require("cmsrec").new{ base_url = %q, ak = %q, sk = %q, cafile = %q, retries = 0,
                                         auth = "bearer", token_url = %q }
        local _, err = c:download{ callID = "wav-100" }
        print("kind " .. err.kind)
      ]]):format(mock.url, H.AK, H.SK, mock.ca, token_url()), "CMSREC_DEBUG=1")
      local token = last_token()
      assert.truthy(token and #token > 20)
      assert.truthy(out:find("kind auth", 1, true), out)
      assert.truthy(out:find("> POST " .. token_url(), 1, true), out) -- the token request is traced
      assert.truthy(out:find("(the token endpoint's answer: not shown)", 1, true), out)
      assert.truthy(out:find("Authorization: Bearer <redacted>", 1, true), out)
      assert.truthy(out:find("token <redacted> is not allowed", 1, true), out) -- quoted, then hidden
      assert.is_nil(out:find(token, 1, true))
      assert.is_nil(out:find(H.SK, 1, true))
    end)
  end)

  describe("extra headers", function()
    local HEADERS = { ["X-TenantSpaceID"] = "tenant-42", ["X-Trace"] = "caf\195\169 1" }

    it("go on the wire with every scheme; apig signs them, auth-v2 does not", function()
      for _, auth in ipairs({ "auth-v2", "apig", "bearer" }) do
        local c = auth == "bearer" and bearer{ headers = HEADERS } or H.client{ auth = auth, headers = HEADERS }
        assert.is_string((c:download{ callID = "wav-100" }))
        assert.is_table((c:call("/rest/x/v1/echo", {})))
        c:close()
        local last = mock.stats().last
        assert.is_true(last.auth_ok)
        assert.equal("tenant-42", last.headers["x-tenantspaceid"])
        assert.equal("caf\195\131\194\169 1", last.headers["x-trace"]) -- (the mock reads bytes as Latin-1)
        if auth == "apig" then
          assert.matches("SignedHeaders=content%-type;host;x%-sdk%-date;x%-tenantspaceid;x%-trace,",
            last.headers.authorization)
        elseif auth == "auth-v2" then
          assert.matches("/content%-length;content%-type;host/", last.headers.authorization)
        end
      end
    end)

    it("client:prepare lists them, and what the scheme adds", function()
      local c = H.client{ auth = "apig", headers = HEADERS }
      local p = assert(c:prepare{ callID = "x" })
      assert.equal("tenant-42", p.headers["X-TenantSpaceID"])
      assert.matches("^%d+T%d+Z$", p.headers["X-Sdk-Date"])
      assert.matches("^SDK%-HMAC%-SHA256 ", p.headers.Authorization)
      c:close()
      c = bearer()
      p = assert(c:prepare{ callID = "x" })
      assert.equal(H.AK, p.headers["X-APP-Key"])
      assert.matches("^Bearer %S+$", p.headers.Authorization)
      c:close()
    end)

    it("bad ones are refused at new, naming the option and the header, never the value", function()
      local secret_value = "s3cr3t-value\r\nX-Injected: 1"
      local cases = {
        { { ["X-Tenant"] = secret_value }, "header 'X%-Tenant': its value has a control character" },
        { { ["X-Tab"] = "a\tb" }, "control character" },
        { { Host = "evil" }, "header 'Host': cmsrec sets this header itself" },
        { { authorization = "x" }, "header 'authorization': cmsrec sets" },
        { { ["X-SDK-DATE"] = "x" }, "cmsrec sets" },
        { { ["Content-Length"] = "1" }, "cmsrec sets" },
        { { ["Content-Type"] = "text/plain" }, "cmsrec sets" },
        { { ["X Tenant"] = "1" }, "its name must be an HTTP token" },
        { { [""] = "1" }, "its name must have 1 to 64" },
        { { ["X-A"] = "1", ["x-a"] = "2" }, "given twice" },
        { { ["X-A"] = {} }, "must map header names to strings" },
        { { "positional" }, "must map header names to strings" },
        { { ["X-Long"] = ("v"):rep(801) }, "longer than 800 bytes" },
      }
      for _, case in ipairs(cases) do
        local msg = refused{ headers = case[1] }
        assert.matches("^cmsrec.new: option 'headers'", msg)
        assert.matches(case[2], msg)
        assert.is_nil(msg:find("s3cr3t", 1, true))
      end
      assert.matches("'X%-APP%-Key': auth = \"bearer\" sends it",
        refused{ auth = "bearer", headers = { ["X-APP-Key"] = "x" } })
      local many = {}
      for i = 1, 25 do many["X-H" .. i] = "v" end
      assert.matches("too many", refused{ headers = many })
      assert.matches("must be a table", refused{ headers = "X-A: 1" })
    end)
  end)

  describe("options", function()
    it("auth is checked, and never goes with an authorization function", function()
      assert.matches("option 'auth' must be \"auth%-v2\", \"apig\" or \"bearer\" %(did you mean 'bearer'%?%)",
        refused{ auth = "beare" })
      assert.matches("options 'auth' and 'authorization' do not go together",
        refused{ auth = "apig", authorization = function() return "x" end })
      assert.matches("option 'token_url' needs auth = \"bearer\"", refused{ token_url = token_url() })
      assert.matches("option 'signed_headers' applies to auth = \"auth%-v2\" only",
        refused{ auth = "apig", signed_headers = { "host" } })
      assert.matches("option 'token_url' uses http://", refused{ auth = "bearer", token_url = "http://127.0.0.1/t" })
      assert.matches("option 'auth' must be a string", refused{ auth = true })
    end)

    it("an AK with CR, LF or other control characters is refused (it would inject a header)", function()
      for _, ak in ipairs({ "mock-ak\r\nX-Injected: yes", "mock\tak", "mock-ak\127" }) do
        assert.matches("option 'ak' goes into the Authorization header: it must have no '/' or control characters", refused{ ak = ak })
      end
    end)

    it("resolve entries are checked", function()
      for _, bad in ipairs({ "cms.example.test:443", "cms.example.test:0:127.0.0.1", "cms:443:::1",
                             ":443:127.0.0.1", "cms:443:127.0.0.1,", "c ms:443:127.0.0.1" }) do
        local msg = refused{ resolve = { bad } }
        assert.matches("^cmsrec.new: option 'resolve' entry 1", msg)
      end
      assert.matches("entry 2 %(", refused{ resolve = { "a:1:127.0.0.1", "b" } })
      assert.matches("must be a string", refused{ resolve = { 7 } })
      assert.matches("non%-empty list", refused{ resolve = "a:1:127.0.0.1" })
      assert.matches("non%-empty list", refused{ resolve = {} })
      local c = H.client{ resolve = { "cms.example.test:443:[::1],127.0.0.1" } }
      c:close()
    end)
  end)

  describe("a WAF that wants the host name in SNI", function()
    local function by_name(extra)
      local t = { base_url = ("https://%s:%s"):format(mock.waf_name, mock.waf_port),
                  resolve = { ("%s:%s:127.0.0.1"):format(mock.waf_name, mock.waf_port) } }
      for k, v in pairs(extra or {}) do t[k] = v end
      return H.client(t)
    end

    it("answers 418 to a connection by IP: kind http, status 418", function()
      local c = H.client{ base_url = "https://127.0.0.1:" .. mock.waf_port }
      local data, err = c:download{ callID = "wav-100" }
      c:close()
      assert.is_nil(data)
      assert.equal("http", err.kind)
      assert.equal(418, err.status)
      assert.is_false(err.retryable)
      assert.equal(1, mock.stats().waf_refused)
    end)

    it("serves a connection by name with resolve: download, batch, call, bearer token", function()
      local want = mock.expect("wav-5000")
      local c = by_name()
      local data, info = c:download{ callID = "wav-5000" }
      assert.is_string(data, tostring(info))
      assert.equal(want.sha256, H.sha256(data))
      assert.equal(mock.waf_name .. ":" .. mock.waf_port, mock.stats().last.headers.host) -- signed as sent
      local results = c:download_many({ { callID = "wav-5000" }, { callID = "wav-5001" } }, { concurrency = 2 })
      assert.equal(2, results.ok)
      assert.equal(want.sha256, H.sha256(results[1].data))
      assert.is_table((c:call("/rest/x/v1/echo", { a = 1 })))
      c:close()
      c = by_name{ auth = "bearer", token_url = ("https://%s:%s%s"):format(mock.waf_name, mock.waf_port, TOKEN_PATH) }
      assert.is_string((c:download{ callID = "wav-5000" }))
      c:close()
      local st = mock.stats()
      assert.equal(0, st.waf_refused)
      assert.equal(1, st.tokens_issued)
    end)
  end)

  describe("client:call", function()
    it("round trip: a signed JSON POST answered with a JSON object", function()
      for _, auth in ipairs({ "auth-v2", "apig", "bearer" }) do
        local c = auth == "bearer" and bearer() or H.client{ auth = auth }
        local answer, info = c:call("/rest/cmsapp/v1/openapi/calls!/query", { callId = "1-2", page = { size = 10 } })
        c:close()
        assert.is_table(answer, auth .. ": " .. tostring(info))
        assert.equal("0", answer.resultCode)
        assert.same({ callId = "1-2", page = { size = 10 } }, answer.resultData.echo)
        assert.equal(200, info.status)
        assert.equal(1, info.attempts)
        local last = mock.stats().last
        assert.equal(auth, last.scheme)
        assert.is_true(last.auth_ok)
        assert.equal("/rest/cmsapp/v1/openapi/calls!/query", last.path)
        assert.same({ callId = "1-2", page = { size = 10 } }, cjson.decode(last.body))
        assert.equal(CT, last.headers["content-type"])
      end
    end)

    it("a JSON text is sent as it is, and raw = true returns the answer's text", function()
      local c = H.client{ base_url = mock.url .. "/gw/" }
      local text = '{"big":12345678901234567890,"s":"a/b"}'
      local answer = assert(c:call("/rest/x/v1/echo", text, { raw = true }))
      assert.equal(text, mock.stats().last.body)
      assert.equal("/gw/rest/x/v1/echo", mock.stats().last.path) -- relative to base_url's prefix
      assert.is_string(answer)
      assert.truthy(answer:find("12345678901234567890", 1, true))
      c:close()
    end)

    it("an authorization function signs a call with the call's path and body", function()
      local seen
      local c = H.client{ ak = false, sk = false, authorization = function(method, path, headers, body)
        seen = path
        return (cmsrec.sign{ ak = H.AK, sk = H.SK, method = method, path = path, headers = headers, body = body })
      end }
      local answer, info = c:call("/rest/x/v1/echo", { a = "b" })
      c:close()
      assert.is_table(answer, tostring(info))
      assert.equal("/rest/x/v1/echo", seen)
      assert.is_true(mock.stats().last.auth_ok)
    end)

    it("leaves resultCode to the caller", function()
      local c = H.client()
      local answer = assert(c:call("/rest/x/v1/echo", { resultCode = "0300008" }))
      assert.equal("0300008", answer.resultData.echo.resultCode)
      c:close()
    end)

    it("an answer that is not a JSON object is kind protocol", function()
      local c = H.client()
      for _, reply in ipairs({ "array", "html" }) do
        local answer, err = c:call("/rest/x/v1/echo", { _reply = reply })
        assert.is_nil(answer)
        assert.equal("protocol", err.kind)
        assert.equal(200, err.status)
      end
      c:close()
    end)

    it("statuses, retries and size as for downloads", function()
      local c = H.client()
      local answer, err = c:call("/rest/x/v1/echo", { _reply = "status-500" })
      assert.is_nil(answer)
      assert.equal("http", err.kind)
      assert.equal(500, err.status)
      answer, err = c:call("/rest/x/v1/echo", { _reply = "status-401" })
      assert.equal("auth", err.kind)
      answer, err = c:call("/rest/x/v1/echo", { _reply = "status-503" }, { retries = 1 })
      assert.equal("http", err.kind)
      assert.equal(2, err.attempts)
      answer, err = c:call("/rest/x/v1/echo", { _reply = "big-5000" }, { max_size = 1000 })
      assert.equal("too_large", err.kind)
      answer = assert(c:call("/rest/x/v1/echo", { _reply = "big-5000" }))
      assert.equal(5000, #answer.resultData.pad)
      answer, err = c:call("/rest/x/v1/echo", { _reply = "big-17825792" }) -- 17 MiB
      assert.equal("too_large", err.kind) -- 16 MiB by default
      c:close()
    end)

    it("a bad path or body is kind invalid, and nothing is sent", function()
      local c = H.client()
      for _, case in ipairs({ { "rest/x", {}, "path" }, { "/rest/x?a=1", {}, "path" }, { "/rest/a b", {}, "path" },
                              { "/rest/x", { 1, 2 }, "body" }, { "/rest/x", "[1]", "body" },
                              { "/rest/x", "not json", "body" }, { "/rest/x", { f = print }, "body" } }) do
        local answer, err = c:call(case[1], case[2])
        assert.is_nil(answer)
        assert.equal("invalid", err.kind)
        assert.equal(case[3], err.field)
        assert.equal(0, err.attempts)
      end
      assert.equal(0, mock.stats().requests)
      assert.has_error(function() c:call("/rest/x", 42) end)
      assert.has_error(function() c:call("/rest/x", {}, { retrys = 1 }) end)
      c:close()
    end)
  end)

  describe("the command line", function()
    local function env(extra) return H.mock_env(extra) end

    it("cmsrec sign --auth apig reproduces V4", function()
      local r = H.cli("sign --auth apig --ak globalaktest --path /rest/cmsapp/v1/ping --header host=10.22.26.181:28080 "
        .. "--header 'content-type=" .. CT .. "' --body " .. H.q(BODY) .. " --timestamp 2024-10-31T14:06:52Z --json",
        { env = { CMSREC_SK = "example-sk-0123456789" } })
      assert.equal(0, r.code, r.err)
      local d = cjson.decode(r.out)
      assert.equal("SDK-HMAC-SHA256 Access=globalaktest, SignedHeaders=content-type;host;x-sdk-date, "
        .. "Signature=c34e6acee3d185e6c72e77d72331e863ad694280734904f68daaeb3046125adb", d.authorization)
      assert.equal("20241031T140652Z", d.timestamp)
      assert.is_nil(r.out:find("example-sk-0123456789", 1, true))
    end)

    it("cmsrec call PATH --data JSON prints the answer; exit codes as for get", function()
      local r = H.cli("call /rest/x/v1/echo --data '{\"n\":12345678901234567890}'", { env = env() })
      assert.equal(0, r.code, r.err)
      local answer = r.out
      assert.truthy(answer:find('"echo":{"n":12345678901234567890}', 1, true), answer)
      assert.equal("0", cjson.decode(answer).resultCode)
      r = H.cli("call /rest/x/v1/echo --data '{\"_reply\":\"array\"}'", { env = env() })
      assert.equal(1, r.code)
      assert.matches("protocol error", r.err)
      r = H.cli("call /rest/x/v1/echo --data '{\"_reply\":\"status-401\"}' --json", { env = env() })
      assert.equal(4, r.code)
      assert.equal("auth", cjson.decode(r.out).error.kind)
      r = H.cli("call /rest/x/v1/echo --data '[1]'", { env = env() })
      assert.equal(2, r.code)
      r = H.cli("call --data '{}'", { env = env() })
      assert.equal(2, r.code)
      assert.matches("missing PATH", r.err)
    end)

    it("--auth, --token-url, --header and --resolve, and their config-file keys", function()
      local url = ("https://%s:%s"):format(mock.waf_name, mock.waf_port)
      local resolve = ("%s:%s:127.0.0.1"):format(mock.waf_name, mock.waf_port)
      local dir = H.tmpdir()
      local r = H.cli(("get --call-id wav-100 -o %s/ --auth bearer --token-url %s --header 'X-TenantSpaceID: t-7' "
        .. "--resolve %s --quiet"):format(dir, H.q(url .. TOKEN_PATH), H.q(resolve)),
        { env = env{ CMSREC_URL = url } })
      assert.equal(0, r.code, r.err)
      assert.equal(mock.expect("wav-100").sha256, H.sha256(H.read_file(dir .. "/wav-100.wav")))
      local last = mock.stats().last
      assert.equal("bearer", last.scheme)
      assert.equal("t-7", last.headers["x-tenantspaceid"])
      local conf = dir .. "/cms.conf"
      H.write_file(conf, table.concat({ "url = " .. url, "auth = apig", "header = X-TenantSpaceID: t-8",
        "header = X-Other: o", "resolve = " .. resolve, "" }, "\n"))
      r = H.cli(("call /rest/x/v1/echo --data '{}' --config %s"):format(H.q(conf)), { env = env{ CMSREC_URL = false } })
      assert.equal(0, r.code, r.err)
      last = mock.stats().last
      assert.equal("apig", last.scheme)
      assert.equal("t-8", last.headers["x-tenantspaceid"])
      assert.equal("o", last.headers["x-other"])
      H.write_file(conf, "auth = bearer\ntoken_url = " .. token_url() .. "\n")
      r = H.cli(("get --call-id wav-101 -o %s/ --config %s --quiet"):format(dir, H.q(conf)), { env = env() })
      assert.equal(0, r.code, r.err)
      assert.equal("bearer", mock.stats().last.scheme)
      r = H.cli("get --call-id wav-100 --header 'Host: evil'", { env = env() })
      assert.equal(2, r.code)
      assert.matches("header 'Host'", r.err)
      r = H.cli("get --call-id wav-100 --header 'no colon'", { env = env() })
      assert.equal(2, r.code)
      assert.matches("%-%-header wants 'Name: value'", r.err)
      r = H.cli("get --call-id wav-100 --auth bearr", { env = env() })
      assert.equal(2, r.code)
      assert.matches("did you mean 'bearer'", r.err)
      r = H.cli("get --call-id wav-100 --resolve nonsense", { env = env() })
      assert.equal(2, r.code)
      assert.matches("option 'resolve' entry 1", r.err)
      H.rmrf(dir)
    end)

    it("--resolve reaches the WAF by name; by IP it is refused with 418", function()
      local dir = H.tmpdir()
      local r = H.cli(("get --call-id wav-100 -o %s/ --quiet"):format(dir),
        { env = env{ CMSREC_URL = "https://127.0.0.1:" .. mock.waf_port } })
      assert.equal(1, r.code)
      assert.matches("HTTP 418", r.err)
      r = H.cli(("get --call-id wav-100 -o %s/ --quiet --resolve %s:%s:127.0.0.1"):format(dir, mock.waf_name, mock.waf_port),
        { env = env{ CMSREC_URL = ("https://%s:%s"):format(mock.waf_name, mock.waf_port) } })
      assert.equal(0, r.code, r.err)
      H.rmrf(dir)
    end)

    it("prints neither the token nor the SK", function()
      local dir = H.tmpdir()
      mock.set("bearer_reject", 1) -- the mock quotes each token it refuses
      for _, args in ipairs({ "get --call-id wav-101 --json -o " .. dir .. "/", "get --call-id wav-101 -o " .. dir .. "/",
                              "call /rest/x/v1/echo --data '{}'", "call /rest/x/v1/echo --data '{}' --json" }) do
        local r = H.cli(args .. " --auth bearer --token-url " .. H.q(token_url()), { env = env() })
        assert.equal(4, r.code, r.err)
        local token = last_token()
        assert.truthy(token and #token > 20)
        local text = r.out .. r.err
        assert.truthy(text:find("token *** is not allowed", 1, true), text) -- quoted, then scrubbed
        assert.is_nil(text:find(token, 1, true))
        assert.is_nil(text:find(H.SK, 1, true))
      end
      assert.equal(4, mock.stats().tokens_issued) -- each process: one token, refused, not refreshed
      assert.equal("", H.ls(dir))
      H.rmrf(dir)
    end)
  end)
end)
