-- Every error kind, produced by a real exchange with the mock CMS.
local H = require "spec.helper"
local mock = H.mock

local function fails(client, call_id)
  local data, err = client:download{ callID = call_id }
  assert.is_nil(data, "expected a failure for " .. call_id)
  assert.equal("table", type(err))
  H.assert_no_secret(err)
  assert.matches("^cmsrec: %S.+ %(" .. err.kind .. " error[,%w ]*%)$", tostring(err))
  return err
end

describe("errors", function()
  local client
  H.with_mock(setup, teardown, function(c) client = c end)

  it("api: the seed's JSON error at HTTP 200 with a text/plain content type", function()
    local err = fails(client, "notfound")
    assert.equal("api", err.kind)
    assert.equal("1", err.result_code)
    assert.equal("Record List is empty", err.result_desc)
    assert.equal(200, err.status)
    assert.is_false(err.retryable)
    assert.equal('cmsrec: the CMS answered resultCode "1": Record List is empty (api error)',
      tostring(err))
  end)

  it("api: a numeric resultCode and a byte-order mark are understood", function()
    local err = fails(client, "numcode")
    assert.equal("api", err.kind)
    assert.equal("1", err.result_code)
    err = fails(client, "bom")
    assert.equal("api", err.kind)
    assert.equal("Record List is empty", err.result_desc)
  end)

  it("api: Retry-After is kept for flow control at HTTP 200", function()
    local err = fails(client, "flow-retry")
    assert.is_true(err.retryable)
    assert.equal(30, err.retry_after)
  end)

  it("api: flow control is retryable, other 7-digit codes are not", function()
    local err = fails(client, "flow")
    assert.equal("api", err.kind)
    assert.equal("0300008", err.result_code)
    assert.is_true(err.retryable)
    assert.matches("%(api error, retryable%)$", tostring(err))
    err = fails(client, "param")
    assert.equal("0100003", err.result_code)
    assert.is_false(err.retryable)
  end)

  it("auth: 401 from a bad signature, never retryable", function()
    local c = H.client{ sk = "wrong-secret" }
    local err = fails(c, "wav-100")
    c:close()
    assert.equal("auth", err.kind)
    assert.equal(401, err.status)
    assert.is_false(err.retryable)
    assert.equal("0100001", err.result_code)
    assert.matches("HTTP 401", err.message)
    assert.is_false(mock.stats().last.auth_ok)
  end)

  it("auth: 401 and the 403 IP lock with a Spring-style body", function()
    local err = fails(client, "auth-401")
    assert.equal("auth", err.kind)
    assert.equal(401, err.status)
    err = fails(client, "auth-403")
    assert.equal("auth", err.kind)
    assert.equal(403, err.status)
    assert.is_false(err.retryable)
    assert.matches("IP locked after repeated authentication failures", err.message)
  end)

  it("http: 500 is not retryable; 503 and 429 are, with Retry-After", function()
    local err = fails(client, "http-500")
    assert.equal("http", err.kind)
    assert.equal(500, err.status)
    assert.is_false(err.retryable)
    assert.matches("HTTP 500: mock 500", err.message)
    for _, code in ipairs{ 503, 429, 502, 504 } do
      err = fails(client, "http-" .. code)
      assert.equal("http", err.kind)
      assert.equal(code, err.status)
      assert.is_true(err.retryable)
    end
    err = fails(client, "http-503")
    assert.equal(7, err.retry_after)
  end)

  it("http: a redirect is reported, never followed", function()
    mock.reset()
    local err = fails(client, "http-302")
    assert.equal("http", err.kind)
    assert.equal(302, err.status)
    assert.matches("never followed", err.message)
    assert.equal(1, mock.stats().requests)
  end)

  it("http: a huge error body is bounded, not read into memory", function()
    local err = fails(client, "bigerror")
    assert.equal("http", err.kind)
    assert.equal(500, err.status)
    local sent
    for _ = 1, 100 do -- the server notices the hang-up when its socket buffers fill
      sent = mock.stats().bigerror_sent
      if sent then break end
      os.execute("sleep 0.05")
    end
    assert.is_number(sent)
    assert.is_true(sent < 32 * 1024 * 1024, ("the client read %d bytes of 64 MiB"):format(sent))
  end)

  it("network: a connection dropped mid-body is retryable", function()
    local err = fails(client, "drop-200000")
    assert.equal("network", err.kind)
    assert.equal(18, err.curl_code) -- CURLE_PARTIAL_FILE
    assert.is_true(err.retryable)
  end)

  it("network: nothing listening", function()
    local c = H.client{ base_url = "https://127.0.0.1:1" }
    local err = fails(c, "wav-100")
    c:close()
    assert.equal("network", err.kind)
    assert.equal(7, err.curl_code) -- CURLE_COULDNT_CONNECT
    assert.is_true(err.retryable)
  end)

  -- one attempt each (retries = 0): what one timeout looks like
  it("timeout: a server that stalls past the timeout", function()
    local c = H.client{ timeout = 1, retries = 0 }
    local t0 = os.time()
    local err = fails(c, "stall-4")
    c:close()
    assert.equal("timeout", err.kind)
    assert.equal(28, err.curl_code) -- CURLE_OPERATION_TIMEDOUT
    assert.is_true(err.retryable)
    assert.equal(1, err.attempts)
    assert.is_true(os.time() - t0 <= 3)
  end)

  it("timeout: connect_timeout bounds a connection that never completes", function()
    local c = H.client{ base_url = mock.blackhole_url, connect_timeout = 1, timeout = false,
                        retries = 0 }
    local t0 = os.time()
    local err = fails(c, "wav-100")
    c:close()
    assert.equal("timeout", err.kind)
    assert.equal(28, err.curl_code)
    assert.matches("[Tt]ime", err.message)
    assert.is_true(os.time() - t0 <= 3)
    assert.is_true(err.retryable)
  end)

  it("timeout: stall_timeout gives up on a transfer that stopped moving", function()
    local c = H.client{ timeout = false, stall_timeout = 1, retries = 0 }
    local t0 = os.time()
    local err = fails(c, "stall-15")
    c:close()
    assert.equal("timeout", err.kind)
    assert.equal(28, err.curl_code)
    assert.matches("too slow", err.message)
    -- libcurl measures speed over a window of about 5 s, so the cut comes that late
    assert.is_true(os.time() - t0 <= 11)
  end)

  it("tls: verification is on by default and fails against an unknown CA", function()
    local c = H.client{ cafile = mock.other_ca }
    local err = fails(c, "wav-100")
    c:close()
    assert.equal("tls", err.kind)
    assert.is_false(err.retryable)
    assert.matches("TLS connection", err.message)
  end)

  it("tls: the host name must match the certificate", function()
    local c = H.client{ base_url = mock.wrong_name_url }
    local err = fails(c, "wav-100")
    c:close()
    assert.equal("tls", err.kind)
    assert.equal(60, err.curl_code) -- CURLE_PEER_FAILED_VERIFICATION
    c = H.client{ base_url = "https://localhost:" .. mock.https_port }
    assert.equal(100, #c:download{ callID = "wav-100" })
    c:close()
  end)

  it("tls: insecure = true skips verification (and says so)", function()
    local data = H.download_with({ cafile = mock.other_ca, insecure = true }, { callID = "wav-100" })
    assert.equal(100, #data)
  end)

  it("protocol: broken JSON, success without a recording, an empty body", function()
    local err = fails(client, "badjson")
    assert.equal("protocol", err.kind)
    assert.matches("not a JSON object", err.message)
    err = fails(client, "ok-json")
    assert.equal("protocol", err.kind)
    assert.equal("0", err.result_code)
    err = fails(client, "emptybody")
    assert.equal("protocol", err.kind)
    assert.equal(200, err.status)
  end)

  it("the client stays usable after every failure", function()
    local data = client:download{ callID = "wav-1234" }
    assert.equal(1234, #data)
  end)
end)
