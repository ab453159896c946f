-- Review of issue 10 (secrets, trace, TLS options, fault fixes): reproducers of the
-- problems found at e1e0d9b. Each test FAILS at e1e0d9b because of the bug it names.
-- (fix10: cmsrec.new now refuses a proxy option libcurl cannot use, so the download-time
-- path of such a proxy is shown with https_proxy, which new cannot check.)
-- spec/trace_review_raw.py is a raw plain-HTTP server on loopback for answers the mock
-- cannot give (see its docstring); proxies point at 127.0.0.1:1 (connection refused).
local H = require "spec.helper"
local cmsrec = require "cmsrec"
local mock, q = H.mock, H.q

describe("trace review (issue 10)", function()
  local raw_url, raw_pid, portfile

  setup(function()
    mock.start()
    portfile = os.tmpname()
    os.remove(portfile)
    raw_pid = H.capture(("python3 spec/trace_review_raw.py %s >/dev/null 2>&1 & echo $!"):format(q(portfile)))
      :gsub("%s+", "")
    for _ = 1, 200 do
      local port = H.read_file(portfile)
      if port then raw_url = "http://127.0.0.1:" .. port break end
      H.sh("sleep 0.05")
    end
    assert(raw_url, "the raw server did not start")
  end)
  teardown(function()
    if raw_pid and raw_pid ~= "" then H.sh("kill " .. raw_pid .. " 2>/dev/null") end
    os.remove(portfile)
    mock.stop()
  end)

  -- A child process with `env` downloads `id` from `url` with CMSREC_DEBUG=1; `extra`
  -- is Lua source of more config fields. Returns all it printed (stderr too).
  local function traced(url, id, env, extra)
    return H.run_lua(([[
      local c = require("cmsrec").new{ base_url = %q, ak = %q, sk = %q, cafile = %q, retries = 0,
                                        timeout = 10, allow_http = true, %s }
      local d, err = c:download{ callID = %q }
      print("RESULT", d and #d, err and tostring(err))
      if err then print("KIND", err.kind, err.field, tostring(err.retryable)) end
      c:close()
    ]]):format(url, H.AK, H.SK, mock.ca, extra or "", id),
      "CMSREC_DEBUG=1 NO_PROXY= no_proxy= HTTPS_PROXY= " .. (env or ""))
  end

  local function raw_client()
    return cmsrec.new{ base_url = raw_url, allow_http = true, ak = H.AK, sk = H.SK, retries = 0,
                       timeout = 10 }
  end

  describe("CMSREC_DEBUG keeps proxy credentials out (src/cms_trace.c redact_userinfo)", function()
    it("a proxy from the environment without a scheme (user:password@host:port)", function()
      local out = traced(mock.url, "wav-100", "https_proxy=" .. q("proxyuser:R10SECRET-A@127.0.0.1:1"))
      assert.matches("Uses proxy env variable", out) -- the note that carries the URL
      assert.is_nil(out:find("R10SECRET-A", 1, true), "the proxy password was traced:\n" .. out)
    end)

    it("a long proxy password (the note is cut at 240 bytes before the redaction)", function()
      local secret = "R10SECRET-B" .. ("x"):rep(200)
      local out = traced(mock.url, "wav-100", "https_proxy=" .. q("http://u:" .. secret .. "@127.0.0.1:1"))
      assert.matches("Uses proxy env variable", out)
      assert.is_nil(out:find("R10SECRET-B", 1, true), "the proxy password was traced:\n" .. out)
    end)
  end)

  describe("a proxy URL that libcurl refuses (src/cms_transfer.c transport_error)", function()
    local proxy = "socks9://proxyuser:R10SECRET-C@127.0.0.1:1"
    -- longer than libcurl's error buffer (256 bytes): its message is cut before the '@'
    local long = "socks9://u:R10SECRET-D" .. ("x"):rep(300) .. "@127.0.0.1:1"
    local unparsable = "http://u:R10SECRET-E@127.0.0.1:99999"

    it("as the proxy option: cmsrec.new refuses it, naming the option, never the password",
      function()
      for _, bad in ipairs{ proxy, long, unparsable } do
        local ok, msg = pcall(cmsrec.new, H.config{ proxy = bad })
        assert.is_false(ok)
        assert.matches("cmsrec.new: option 'proxy' ", msg)
        assert.is_nil(msg:find("R10SECRET", 1, true), msg)
      end
      local out = traced(mock.url, "wav-100", nil, ("proxy = %q"):format(proxy))
      assert.matches("option 'proxy'", out)
      assert.is_nil(out:find("R10SECRET-C", 1, true), "the proxy password was shown:\n" .. out)
      for _, good in ipairs{ "", "u:p@127.0.0.1:1", "socks5h://127.0.0.1:1" } do
        cmsrec.new(H.config{ proxy = good }):close() -- "": none; no scheme: http
      end
    end)

    it("from the environment: never puts its password in err.message, tostring(err) or the trace",
      function()
      for _, bad in ipairs{ proxy, long, unparsable } do
        local out = traced(mock.url, "wav-100", "https_proxy=" .. q(bad))
        assert.matches("Uses proxy env variable", out)
        assert.matches("RESULT\tnil\tcmsrec: the proxy cannot be used", out)
        assert.is_nil(out:find("R10SECRET", 1, true), "the proxy password was shown:\n" .. out)
      end
    end)

    it("from the environment: a configuration error (kind invalid, field proxy), not retryable",
      function()
      for _, bad in ipairs{ proxy, unparsable } do
        local out = traced(mock.url, "wav-100", "https_proxy=" .. q(bad))
        assert.matches("KIND\tinvalid\tproxy\tfalse\n", out)
      end
    end)
  end)

  describe("CMSREC_DEBUG redacts a server's credential headers (src/cms_trace.c header_line)", function()
    for _, case in ipairs{
      { "longtok", "RAWSECRET1", "a name of 64 bytes or more" },
      { "spacetok", "RAWSECRET2", "a space before the colon (Set-Cookie :)" },
      { "foldtok", "RAWSECRET3", "a value folded onto a continuation line" },
    } do
      it(case[3], function()
        local out = traced(raw_url, case[1])
        assert.matches("< HTTP/1%.1 200 OK\n", out) -- the trace is on
        assert.matches("RESULT\tnil\tcmsrec: the CMS answered resultCode \"1\"", out) -- it was answered
        assert.is_nil(out:find(case[2], 1, true), "a credential header's value was traced:\n" .. out)
      end)
    end
  end)

  it("Content-Length followed by a tab (optional whitespace) is a length, as at 89f479e "
    .. "(src/cms_transfer.c on_header trims only spaces)", function()
    local c = raw_client()
    local want = assert(c:download{ callID = "wav-3000" })
    local data, err = c:download{ callID = "tabcl-3000" }
    c:close()
    assert.is_string(data, tostring(err))
    assert.equal(H.sha256(want), H.sha256(data))
  end)

  it("a recording of a format cmsrec does not sniff, labelled application/json, is still a recording "
    .. "as at 89f479e (the Content-Type is not reliable: cms-protocol.md)", function()
    local c = raw_client()
    local data, err = c:download{ callID = "jsonmp3-100000" }
    c:close()
    assert.is_string(data, tostring(err))
    assert.equal(100000, #data)
    assert.equal("ID3", data:sub(1, 3))
  end)
end)
