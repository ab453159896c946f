-- cmsrec.new: a wrong configuration is a programming error that names the key.
local H = require "spec.helper"
local cmsrec = require "cmsrec"

local function new_error(cfg)
  local ok, msg = pcall(cmsrec.new, cfg)
  assert.is_false(ok, "cmsrec.new accepted a bad config")
  return msg
end

local base = { base_url = "https://127.0.0.1:9", ak = "ak", sk = H.SK }
local function with(extra)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(extra) do t[k] = v end
  return t
end

describe("cmsrec.new", function()
  it("exposes the module facts", function()
    assert.equal("/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile", cmsrec.DEFAULT_PATH)
    assert.matches("^%d+%.%d+%.%d+$", cmsrec.VERSION)
    assert.same({ "invalid", "api", "auth", "http", "network", "timeout", "tls", "protocol", "io",
      "cancelled", "too_large", "nomem" },
      cmsrec.kinds)
  end)

  it("rejects unknown options with a did-you-mean hint", function()
    assert.matches("unknown option 'bse_url' %(did you mean 'base_url'%?%)",
      new_error(with{ bse_url = "x" }))
    assert.matches("unknown option 'time_out' %(did you mean 'timeout'%?%)",
      new_error(with{ time_out = 5 }))
    assert.matches("unknown option 'colour'$", new_error(with{ colour = 1 }))
  end)

  it("requires base_url and https", function()
    assert.matches("'base_url' is required", new_error{ ak = "a", sk = "s" })
    assert.matches("'base_url' uses http://", new_error(with{ base_url = "http://127.0.0.1:1" }))
    assert.matches("'base_url' must start with https://", new_error(with{ base_url = "ftp://h/" }))
    assert.matches("'base_url' is not a valid URL", new_error(with{ base_url = "https://" }))
    assert.matches("must not contain credentials, a query",
      new_error(with{ base_url = "https://h:1/?a=b" }))
    assert.matches("characters that would be escaped",
      new_error(with{ base_url = "https://h:1/caf\195\169" }))
    assert.matches("non%-ASCII", new_error(with{ path = "/caf\195\169" }))
    local c = cmsrec.new(with{ base_url = "http://127.0.0.1:1", allow_http = true })
    assert.matches("http://127.0.0.1:1/rest/cmsapp", tostring(c))
  end)

  it("checks types and ranges, naming the option", function()
    assert.matches("'timeout' must be a positive number", new_error(with{ timeout = "5" }))
    assert.matches("'connect_timeout' must be a positive number", new_error(with{ connect_timeout = -1 }))
    assert.matches("'insecure' must be a boolean", new_error(with{ insecure = "yes" }))
    assert.matches("'cafile' must be a string", new_error(with{ cafile = 1 }))
    assert.matches("'authorization' must be a function", new_error(with{ authorization = "x" }))
    assert.matches("'path' must start with '/'", new_error(with{ path = "rest" }))
    assert.matches("'path' must start with '/' and contain no spaces",
      new_error(with{ path = "/a b" }))
  end)

  it("takes whole-number floats where integers are expected", function()
    assert.truthy(cmsrec.new(with{ max_size = 2 ^ 30 }))
    assert.truthy(cmsrec.new(with{ max_size = 1e9 }))
    assert.matches("'max_size' must be a positive integer", new_error(with{ max_size = 1.5 }))
    assert.matches("'max_size' must be a positive integer", new_error(with{ max_size = "10" }))
  end)

  it("has a stall timeout by default that false turns off", function()
    assert.truthy(cmsrec.new(with{ stall_timeout = false }))
    assert.truthy(cmsrec.new(with{ stall_timeout = 30 }))
    assert.matches("'stall_timeout' must be a positive number", new_error(with{ stall_timeout = true }))
  end)

  it("accepts signed_headers {\"host\"} and rejects anything without host", function()
    assert.truthy(cmsrec.new(with{ signed_headers = { "host" } }))
    assert.matches("must include 'host'", new_error(with{ signed_headers = { "content-type" } }))
    assert.matches("entry 1 %('hots'%) must be one of .* %(did you mean 'host'%?%)",
      new_error(with{ signed_headers = { "hots" } }))
    assert.matches("lists 'host' twice", new_error(with{ signed_headers = { "host", "host" } }))
    assert.matches("non%-empty list", new_error(with{ signed_headers = {} }))
  end)

  it("requires ak and sk unless an authorization function signs", function()
    assert.matches("'sk' is required", new_error{ base_url = "https://h", ak = "a" })
    assert.matches("'ak' is required", new_error{ base_url = "https://h", sk = "s" })
    assert.truthy(cmsrec.new{ base_url = "https://h", authorization = function() return "x" end })
  end)

  it("reads CMSREC_AK and CMSREC_SK from the environment", function()
    local out = H.run_lua([[print(require("cmsrec").new{base_url="https://h:1"})]],
      "CMSREC_AK=env-ak CMSREC_SK=env-sk")
    assert.matches("ak env%-ak", out)
    out = H.run_lua([[print(pcall(require("cmsrec").new, {base_url="https://h:1"}))]],
      "env -u CMSREC_AK -u CMSREC_SK")
    assert.matches("option 'ak' is required %(or set CMSREC_AK%)", out)
  end)

  it("warns loudly on stderr when TLS verification is turned off", function()
    local out = H.run_lua([[require("cmsrec").new{base_url="https://h:1", ak="a", sk="s", insecure=true}]])
    assert.matches("WARNING: TLS certificate verification is disabled", out)
  end)

  it("never shows the SK in tostring, and close is idempotent", function()
    local c = cmsrec.new(base)
    local s = tostring(c)
    assert.matches("^cmsrec%.client %(https://127%.0%.0%.1:9/rest/cmsapp/v1/openapi/hisindex/"
      .. "downloadRecordFile, ak ak%)", s)
    assert.is_nil(s:find(H.SK, 1, true))
    c:close()
    c:close()
    assert.matches("^cmsrec%.client %(closed%)", tostring(c))
    local ok, msg = pcall(c.download, c, { callID = "1" })
    assert.is_false(ok)
    assert.matches("attempt to use a closed cmsrec client", msg)
    assert.equal("cmsrec", getmetatable(c))
  end)

  it("survives __gc after close", function()
    local c = cmsrec.new(base)
    c:close()
    c = nil
    collectgarbage()
    collectgarbage()
  end)

  it("supports Lua 5.4 <close> and survives __gc after it", function()
    -- <close> is Lua 5.4 syntax: no other Lua can even compile the chunk
    if _VERSION ~= "Lua 5.4" then
      pending("<close> needs Lua 5.4")
      return
    end
    local chunk = assert(load([[
      local cmsrec, cfg = ...
      local kept
      do
        local c <close> = cmsrec.new(cfg)
        kept = c
      end
      return kept
    ]]))
    local c = chunk(cmsrec, base)
    assert.matches("%(closed%)", tostring(c))
    c = nil
    collectgarbage()
    collectgarbage()
  end)

  it("reads option tables raw: values made by __index are not options", function()
    local cfg = setmetatable({}, { __index = function(_, k)
      collectgarbage()
      return ({ base_url = "https://h:1", ak = ("a"):rep(60), sk = ("s"):rep(60) })[k]
    end })
    assert.matches("'base_url' is required", new_error(cfg))
    local ok, msg = pcall(cmsrec.sign, setmetatable({}, { __index = function(_, k)
      collectgarbage()
      return ({ ak = ("a"):rep(60), sk = ("s"):rep(60), path = "/" .. ("p"):rep(60),
        headers = { host = "h" } })[k]
    end }))
    assert.is_false(ok)
    assert.matches("'ak' is missing", msg)
  end)

  it("puts a base_url path prefix before the API path", function()
    local c = cmsrec.new(with{ base_url = "https://[::1]:8443/gw/" })
    assert.matches("https://%[::1%]:8443/gw/rest/cmsapp/v1/openapi", tostring(c))
  end)
end)
