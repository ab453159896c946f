-- client:download against the mock CMS: real libcurl, real TLS, loopback.
local H = require "spec.helper"
local cmsrec = require "cmsrec"
local cjson = require "cjson"
local mock = H.mock

local function assert_served(call_id, data, info, format)
  local want = mock.expect(call_id)
  assert.is_string(data, "download failed: " .. tostring(info))
  assert.equal(want.size, #data)
  assert.equal(want.size, info.bytes)
  assert.equal(want.sha256, H.sha256(data))
  assert.equal(format, info.format)
  assert.equal(200, info.status)
end

describe("client:download", function()
  local client
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() mock.reset() end)

  it("downloads the seed's call ID, signed so that the mock verifies it", function()
    local data, info = client:download{ callID = "1748587841-77268" }
    assert_served("1748587841-77268", data, info, "wav")
    assert.equal("RIFF", data:sub(1, 4))
    assert.equal("application/octet-stream", info.content_type)
    assert.is_number(info.elapsed)
    local last = mock.stats().last
    assert.is_true(last.auth_ok, tostring(last.auth_error))
    assert.equal("POST", last.method)
    assert.equal(cmsrec.DEFAULT_PATH, last.path)
    assert.equal("application/json;charset=UTF-8", last.headers["content-type"])
    assert.equal("127.0.0.1:" .. mock.https_port, last.headers["host"])
    assert.matches("^auth%-v2/mock%-ak/%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ/"
      .. "content%-length;content%-type;host/%x+$", last.headers["authorization"])
  end)

  it("sends the seed's body: compact JSON, five keys in order, \"\" for the missing", function()
    client:download{ callID = "1748587841-77268" }
    assert.equal('{"callID":"1748587841-77268","workNo":"","beginTime":"",'
      .. '"callerNo":"","calleeNo":""}', mock.stats().last.body)
    client:download{ callID = "notfound", workNo = 1001, beginTime = "20250530120000",
      callerNo = "+8613800000000", calleeNo = "中文 \"q\"" }
    local last = mock.stats().last
    assert.is_true(last.auth_ok, tostring(last.auth_error)) -- the escaped body was signed right
    local body = last.body
    assert.equal('{"callID":"notfound","workNo":"1001","beginTime":"20250530120000",'
      .. '"callerNo":"+8613800000000","calleeNo":"中文 \\"q\\""}', body)
    assert.same({ callID = "notfound", workNo = "1001", beginTime = "20250530120000",
      callerNo = "+8613800000000", calleeNo = "中文 \"q\"" }, cjson.decode(body))
  end)

  it("returns a several-megabyte WAV byte for byte", function()
    local data, info = client:download{ callID = "wav-6000000" }
    assert_served("wav-6000000", data, info, "wav")
  end)

  it("reads chunked bodies", function()
    local data, info = client:download{ callID = "chunked-3000000" }
    assert_served("chunked-3000000", data, info, "wav")
  end)

  it("detects a ZIP bundle by its first bytes", function()
    local data, info = client:download{ callID = "zip-3" }
    assert_served("zip-3", data, info, "zip")
    assert.equal("application/zip", info.content_type)
  end)

  it("returns unknown formats as format 'unknown'", function()
    local data, info = client:download{ callID = "unknown-5000" }
    assert_served("unknown-5000", data, info, "unknown")
  end)

  it("keeps the connection alive between downloads", function()
    for _ = 1, 3 do assert.truthy(client:download{ callID = "wav-1000" }) end
    local stats = mock.stats()
    assert.equal(3, stats.requests)
    assert.equal(1, stats.connections)
  end)

  it("signs only host when configured so", function()
    local data = H.download_with({ signed_headers = { "host" } }, { callID = "wav-2000" })
    assert.equal(2000, #data)
    local last = mock.stats().last
    assert.is_true(last.auth_ok)
    assert.matches("/host/%x+$", last.headers.authorization)
  end)

  it("lets an authorization function sign instead (the escape hatch)", function()
    local seen
    local c = H.client{ ak = false, sk = false, authorization = function(method, path, headers, body)
      seen = { method = method, path = path, headers = headers, body = body }
      return (cmsrec.sign{ ak = H.AK, sk = H.SK, method = method, path = path,
        headers = { host = headers.host }, body = body })
    end }
    local data = c:download{ callID = "wav-3000" }
    c:close()
    assert.equal(3000, #data)
    assert.is_true(mock.stats().last.auth_ok)
    assert.equal("POST", seen.method)
    assert.equal(cmsrec.DEFAULT_PATH, seen.path)
    assert.equal("127.0.0.1:" .. mock.https_port, seen.headers.host)
    assert.equal(tostring(#seen.body), seen.headers["content-length"])
    assert.equal(mock.stats().last.body, seen.body)
  end)

  it("signs the path as sent when base_url carries a prefix", function()
    local data = H.download_with({ base_url = mock.url .. "/gateway/" }, { callID = "wav-100" })
    assert.equal(100, #data)
    local last = mock.stats().last
    assert.equal("/gateway" .. cmsrec.DEFAULT_PATH, last.path)
    assert.is_true(last.auth_ok)
  end)

  it("talks plain HTTP only when allow_http is set", function()
    local data = H.download_with({ base_url = mock.http_url, allow_http = true }, { callID = "wav-500" })
    assert.equal(500, #data)
  end)

  it("sends the configured User-Agent", function()
    client:download{ callID = "wav-100" }
    assert.equal("cmsrec/" .. cmsrec.VERSION, mock.stats().last.headers["user-agent"])
    local c = H.client{ user_agent = "qa-robot/2" }
    c:download{ callID = "wav-100" }
    c:close()
    assert.equal("qa-robot/2", mock.stats().last.headers["user-agent"])
  end)

  it("is not affected by the application's use of lua-cjson", function()
    local cj = require "cjson"
    local encode = cj.encode
    cj.encode = function() error("application replaced cjson.encode") end
    local data = client:download{ callID = "wav-100" }
    cj.encode = encode
    assert.equal(100, #data)
  end)

  it("refuses to be closed or reused from its own callbacks", function()
    local c
    c = H.client{ ak = false, sk = false, authorization = function()
      c:close()
      return "x"
    end }
    local data, err = c:download{ callID = "wav-100" }
    assert.is_nil(data)
    assert.equal("invalid", err.kind)
    assert.matches("busy", err.message)
    c:close()
    local c2 = H.client()
    local info, err2 = c2:download_file({ callID = "wav-3000000" }, nil, {
      sink = function() c2:download{ callID = "wav-100" } end,
    })
    assert.is_nil(info)
    assert.equal("io", err2.kind)
    assert.matches("busy", err2.message)
    assert.equal(100, #c2:download{ callID = "wav-100" }) -- usable afterwards
    c2:close()
  end)

  it("works as a one-shot cmsrec.download(config, req)", function()
    local data, info = cmsrec.download(H.config(), { callID = "wav-4000" })
    assert_served("wav-4000", data, info, "wav")
    local none, err = cmsrec.download(H.config(), { callID = "notfound" })
    assert.is_nil(none)
    assert.equal("api", err.kind)
    none, err = cmsrec.download(H.config(), { callID = "wav-4000" }, { max_size = 100 })
    assert.is_nil(none)
    assert.equal("too_large", err.kind)
  end)
end)
