-- cmsrec.sign: the auth-v2 vectors of shared/reference/cms-protocol.md, byte for byte.
local H = require "spec.helper"
local cmsrec = require "cmsrec"

local BODY = '{"say": "Hello world!"}'
local HOST = "10.22.26.181:28080"
local CT = "application/json;charset=UTF-8"

local function vector(extra)
  local t = {
    ak = "globalaktest", sk = "example-sk-0123456789", method = "POST",
    path = "/rest/cmsapp/v1/ping", body = BODY, timestamp = "2024-10-31T14:06:52Z",
  }
  for k, v in pairs(extra) do t[k] = v end
  return t
end

describe("cmsrec.sign", function()
  it("reproduces V1 (content-length;content-type;host)", function()
    local auth, d = cmsrec.sign(vector{
      headers = { ["content-length"] = #BODY, ["content-type"] = CT, host = HOST },
    })
    assert.equal("bb0c4d2407684a18485b7018d70a5ebdc2c895ffa7d24ff9465e9dcc2fa7bb0f", d.signing_key)
    assert.equal("auth-v2/globalaktest/2024-10-31T14:06:52Z/content-length;content-type;host/"
      .. "151388d296c25c51b38d6800e04a09201cd481eaf10e247de50d9cb16a08da8a", auth)
    assert.equal(table.concat({
      "POST", "/rest/cmsapp/v1/ping", "content-length;content-type;host", "content-length:23",
      "content-type:application%2Fjson%3Bcharset%3DUTF-8", "host:10.22.26.181%3A28080",
      "%7B%22say%22%3A%20%22Hello%20world%21%22%7D" }, "\n"), d.canonical_request)
    assert.equal("content-length;content-type;host", d.signed_headers)
    assert.equal("2024-10-31T14:06:52Z", d.timestamp)
  end)

  it("reproduces V2 (host only), header names in any case", function()
    local auth, d = cmsrec.sign(vector{ headers = { Host = HOST } })
    assert.equal("e77feacaa3781f9f4b7b391abc2cf2fb75677908c26de4cfa787c2cfb49c2487", d.signature)
    assert.equal("auth-v2/globalaktest/2024-10-31T14:06:52Z/host/" .. d.signature, auth)
  end)

  it("reproduces V3 (GET, query, empty body)", function()
    local _, d = cmsrec.sign(vector{
      method = "GET", body = "", query = { a = "1/2", b = "x y" }, headers = { host = HOST },
    })
    assert.equal("GET\n/rest/cmsapp/v1/ping\na=1%2F2&b=x%20y\nhost\nhost:10.22.26.181%3A28080\n",
      d.canonical_request)
    assert.equal("bf9b5078cf12b5efd40b94a325e2297f2b94adeba6bcdfa9e5cbad643784bed0", d.signature)
  end)

  it("stamps the current UTC time when no timestamp is given", function()
    local auth, d = cmsrec.sign{ ak = "a", sk = "s", path = "/p", headers = { host = "h" } }
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", d.timestamp)
    assert.equal(os.date("!%Y-%m-%d", os.time()), d.timestamp:sub(1, 10))
    assert.matches("^auth%-v2/a/" .. d.timestamp:gsub("%-", "%%-") .. "/host/%x+$", auth)
  end)

  it("raises errors that name the option, with a hint for near misses", function()
    local ok, msg = pcall(cmsrec.sign, { ak = "a", skk = "s", path = "/p", headers = { host = "h" } })
    assert.is_false(ok)
    assert.matches("unknown option 'skk' %(did you mean 'sk'%?%)", msg)
    ok, msg = pcall(cmsrec.sign, { ak = "a", path = "/p", headers = { host = "h" } })
    assert.is_false(ok)
    assert.matches("'sk' is missing", msg)
    ok, msg = pcall(cmsrec.sign, { ak = "a", sk = "s", path = "p", headers = { host = "h" } })
    assert.matches("'path' must start with '/'", msg)
    ok, msg = pcall(cmsrec.sign, { ak = "a", sk = "s", headers = { host = "h" } })
    assert.matches("'path' is missing", msg)
    ok, msg = pcall(cmsrec.sign, { ak = "a", sk = "s", path = "/p" })
    assert.matches("at least one header", msg)
    ok, msg = pcall(cmsrec.sign, { ak = "a", sk = "s", path = "/p", headers = { host = {} } })
    assert.matches("'headers' must map strings to strings", msg)
  end)

  it("never puts the SK in an error", function()
    local ok, msg = pcall(cmsrec.sign, { ak = "a/b", sk = H.SK, path = "/p", headers = { host = "h" } })
    assert.is_false(ok)
    assert.is_nil(msg:find(H.SK, 1, true))
  end)
end)
