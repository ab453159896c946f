-- TLS: every TLS failure is kind tls, writes nothing, is never retried, and leaves the
-- client usable; client certificates, pinned public keys, the lowest TLS version; bad
-- TLS options refused by cmsrec.new; the CMSREC_DEBUG trace; the same through bin/cmsrec.
-- The mock's TLS fault ports (expired, notyet, mtls, tls11, tls12, tls_switch) are
-- described in test/mock_cms.py; tls_switch_port changes what it serves on request, so
-- one client meets a failure and then a good server on the same base_url.
local H = require "spec.helper"
local cjson = require "cjson"
local cmsrec = require "cmsrec"
local mock, q = H.mock, H.q

local ports, tmp, ndirs = nil, nil, 0

local function port_url(name) return ("https://127.0.0.1:%d"):format(ports[name]) end
local function mode(m) return mock.ctl("tls", m) end
local function file(name) return mock.dir .. "/" .. name end

local function newdir()
  ndirs = ndirs + 1
  local dir = tmp .. "/d" .. ndirs
  assert(H.sh("mkdir " .. q(dir)))
  return dir
end

-- "sha256//<base64>" of the public key of the private key file `key`, by the openssl CLI.
local function pin_of(key)
  local out = H.capture(("openssl pkey -in %s -pubout -outform DER | openssl dgst -sha256 -binary | base64")
    :format(q(key)))
  return "sha256//" .. out:gsub("%s+", "")
end

-- A client with retries (so that a test sees a TLS failure is not retried).
local function client(extra)
  extra = extra or {}
  if extra.retries == nil then extra.retries = 2 end
  return H.client(extra)
end

-- A download of `id` by `c` must fail with kind tls and a message matching `pattern`,
-- attempted once, leaving nothing on disk (nor in memory), no request seen by the API.
local function refused(c, pattern, id)
  id = id or "wav-5000"
  local dir = newdir()
  local before = mock.stats().requests
  local info, err = c:download_file({ callID = id }, dir .. "/")
  assert.is_nil(info)
  assert.equal("tls", err.kind, tostring(err))
  assert.is_false(err.retryable)
  assert.equal(1, err.attempts)
  assert.matches(pattern, err.message)
  assert.equal("", H.ls(dir))
  local data, err2 = c:download{ callID = id }
  assert.is_nil(data)
  assert.equal("tls", err2.kind)
  assert.equal(before, mock.stats().requests, "a request reached the API")
  H.assert_no_secret(err)
  return err
end

-- `c` downloads `id` to disk: the bytes are the mock's (sha256 of the file).
local function works(c, id)
  id = id or "wav-5000"
  local info, err = c:download_file({ callID = id }, newdir() .. "/")
  assert.is_table(info, tostring(err))
  local want = mock.expect(id).sha256
  assert.equal(want, info.sha256)
  assert.equal(want, H.sha256(H.read_file(info.path)))
end

local function new_error(extra)
  local ok, msg = pcall(cmsrec.new, H.config(extra))
  assert.is_false(ok, "cmsrec.new accepted a bad TLS option")
  return msg
end

describe("TLS", function()
  setup(function()
    mock.start()
    ports = cjson.decode(H.read_file(mock.dir .. "/ready.json"))
    tmp = H.tmpdir()
  end)
  teardown(function()
    mock.stop()
    if tmp then H.rmrf(tmp) end
  end)
  after_each(function() mode("good") end)

  describe("failures: kind tls, nothing written, the same client works afterwards", function()
    local cases = {
      { "a certificate of another CA", "otherca",
        "unable to get local issuer certificate %(is cafile the CA that signed" },
      { "an expired certificate", "expired", "certificate has expired" },
      { "a certificate not valid yet", "notyet", "certificate is not yet valid" },
      { "a certificate for another host name", "wrongname",
        "target host name .*does not name the host of base_url" },
      { "a server asking for a client certificate, none given", "mtls",
        "alert certificate required.*asks for a client certificate: set sslcert" },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local c = client{ base_url = port_url("tls_switch_port") }
        mode(case[2])
        refused(c, case[3])
        mode("good")
        works(c)
        c:close()
      end)
    end

    it("the fixed ports in ready.json fail the same ways", function()
      for _, case in ipairs({ { "expired_port", "has expired" }, { "notyet_port", "not yet valid" },
                              { "mtls_port", "certificate required" } }) do
        local c = client{ base_url = port_url(case[1]) }
        refused(c, case[2])
        c:close()
      end
    end)
  end)

  describe("insecure", function()
    it("is never the default: a default client refuses what the CA does not vouch for", function()
      mode("otherca")
      local c = client{ base_url = port_url("tls_switch_port") }
      refused(c, "local issuer")
      c:close()
      c = client{ base_url = port_url("tls_switch_port"), insecure = false }
      refused(c, "local issuer")
      c:close()
      mode("good")
      c = client{ cafile = false } -- the system CAs do not know the mock's CA
      refused(c, "local issuer")
      c:close()
    end)

    it("insecure = true accepts that server, and warns on stderr", function()
      mode("otherca")
      local out = H.run_lua(([[
        local c = require("cmsrec").new{ base_url = %q, ak = %q, sk = %q, cafile = %q, insecure = true }
        local info, err = c:download_file({ callID = "wav-5000" }, %q)
        print("sha256", info and info.sha256 or tostring(err))
      ]]):format(port_url("tls_switch_port"), H.AK, H.SK, mock.ca, newdir() .. "/"))
      assert.matches("WARNING: TLS certificate verification is disabled", out)
      assert.matches("sha256\t" .. mock.expect("wav-5000").sha256, out)
    end)
  end)

  describe("client certificates (sslcert, sslkey)", function()
    it("a certificate of the CA the server trusts: the download works", function()
      local c = client{ base_url = port_url("mtls_port"), sslcert = file("client.pem"),
                        sslkey = file("client.key") }
      works(c)
      works(c, "zip-3")
      c:close()
    end)

    it("the key in the certificate's file: sslkey is optional", function()
      local both = tmp .. "/both.pem"
      H.write_file(both, H.read_file(file("client.pem")) .. H.read_file(file("client.key")))
      local c = client{ base_url = port_url("mtls_port"), sslcert = both }
      works(c)
      c:close()
    end)

    it("a certificate of another CA is refused (after the handshake: still kind tls)", function()
      local c = client{ base_url = port_url("mtls_port"), sslcert = file("other-client.pem"),
                        sslkey = file("other-client.key") }
      refused(c, "alert unknown ca.*does not trust the client certificate")
      c:close()
    end)

    it("an encrypted key with sslkey_password; a wrong or missing password is kind tls", function()
      local enc, password = tmp .. "/enc.key", "pem-pass-2718281828"
      assert(H.sh(("openssl pkey -in %s -aes256 -passout pass:%s -out %s")
        :format(q(file("client.key")), password, q(enc))))
      local base = { base_url = port_url("mtls_port"), sslcert = file("client.pem"), sslkey = enc }
      base.sslkey_password = password
      local c = client(base)
      works(c)
      assert.is_nil(tostring(c):find(password, 1, true))
      c:close()
      base.sslkey_password = "wrong-pass-1414213562"
      c = client(base)
      local err = refused(c, "private key .*sslkey_password")
      assert.is_nil(tostring(err):find("wrong-pass", 1, true))
      c:close()
      base.sslkey_password = nil -- no password: a clean failure, never a prompt
      c = client(base)
      refused(c, "private key")
      c:close()
    end)

    it("a missing or unreadable file is an error of cmsrec.new naming the option", function()
      local missing = tmp .. "/no-such.pem"
      assert.matches("option 'sslcert': cannot read '" .. missing:gsub("%p", "%%%0")
        .. "': No such file or directory", new_error{ sslcert = missing })
      assert.matches("option 'sslkey': cannot read .*No such file",
        new_error{ sslcert = file("client.pem"), sslkey = missing })
      assert.matches("option 'sslcert': cannot read .*it is a directory", new_error{ sslcert = tmp })
      assert.matches("option 'sslkey' needs 'sslcert'", new_error{ sslkey = file("client.key") })
      local msg = new_error{ sslkey_password = "never-shown-577215" }
      assert.matches("option 'sslkey_password' needs 'sslcert'", msg)
      assert.is_nil(msg:find("never-shown", 1, true))
    end)
  end)

  describe("pinnedpubkey", function()
    it("the server's key, as a hash, in a list, or as a PEM or DER file: works", function()
      local pin = pin_of(file("server.key"))
      assert.matches("^sha256//[%w+/]+=$", pin)
      local pem, der = tmp .. "/pub.pem", tmp .. "/pub.der"
      assert(H.sh(("openssl pkey -in %s -pubout -out %s"):format(q(file("server.key")), q(pem))))
      assert(H.sh(("openssl pkey -in %s -pubout -outform DER -out %s"):format(q(file("server.key")), q(der))))
      for _, value in ipairs({ pin, pin_of(file("client.key")) .. ";" .. pin, pem, der }) do
        local c = client{ pinnedpubkey = value }
        works(c)
        c:close()
      end
    end)

    it("another key: kind tls, the message says pin", function()
      local c = client{ pinnedpubkey = pin_of(file("client.key")) }
      refused(c, "does not match pinned public key %(the CMS public key is not one of pinnedpubkey%)")
      c:close()
      local pem = tmp .. "/other.pem"
      assert(H.sh(("openssl pkey -in %s -pubout -out %s"):format(q(file("otherca.key")), q(pem))))
      c = client{ pinnedpubkey = pem }
      refused(c, "pinned")
      c:close()
    end)

    it("a malformed value or a missing file is refused by cmsrec.new", function()
      for _, bad in ipairs({ "sha256//short=", "sha256//" .. ("A"):rep(43) .. "=;", "sha256//" .. ("A"):rep(44),
                             "sha256//" .. ("A"):rep(42) .. "==;sha256//x" }) do
        assert.matches("option 'pinnedpubkey' must be \"sha256//", new_error{ pinnedpubkey = bad })
      end
      assert.matches("option 'pinnedpubkey': cannot read .*No such file",
        new_error{ pinnedpubkey = tmp .. "/none.pem" })
    end)
  end)

  describe("tls_min", function()
    it("by default (TLS 1.2) refuses a server of TLS 1.1 or older", function()
      if not ports.tls11_port then
        pending("this Python/OpenSSL cannot serve TLS 1.1: " .. tostring(ports.tls11_error))
        return
      end
      -- "protocol version": the client offered 1.2 and up (OpenSSL alone, offering 1.0,
      -- would fail otherwise, on the old signature algorithms)
      local c = client{ base_url = port_url("tls11_port") }
      refused(c, "alert protocol version .*tls_min")
      c:close()
      c = client{ base_url = port_url("tls11_port"), tls_min = "1.2" }
      refused(c, "protocol version")
      c:close()
    end)

    it("\"1.3\" refuses a TLS 1.2 server that the default accepts; the client recovers", function()
      local c = client{ base_url = port_url("tls12_port") }
      works(c)
      c:close()
      c = client{ base_url = port_url("tls12_port"), tls_min = "1.3" }
      refused(c, "protocol version")
      c:close()
      c = client{ base_url = port_url("tls_switch_port"), tls_min = "1.3" }
      mode("tls12")
      refused(c, "protocol version")
      mode("good")
      works(c)
      c:close()
    end)

    it("accepts only \"1.2\" and \"1.3\"", function()
      for _, bad in ipairs({ "1.1", "1.0", "1.4", "TLSv1.3", "" }) do
        assert.matches("option 'tls_min' must be \"1.2\" %(the default%) or \"1.3\"", new_error{ tls_min = bad })
      end
      assert.matches("option 'tls_min' must be a string, got number", new_error{ tls_min = 1.3 })
    end)
  end)

  it("wrong types of the TLS options are refused, naming the option", function()
    assert.matches("option 'sslcert' must be a string, got number", new_error{ sslcert = 1 })
    assert.matches("option 'sslkey' must be a string, got boolean",
      new_error{ sslcert = file("client.pem"), sslkey = true })
    assert.matches("option 'sslkey_password' must be a string, got table",
      new_error{ sslcert = file("client.pem"), sslkey_password = {} })
    assert.matches("option 'pinnedpubkey' must be a string, got number", new_error{ pinnedpubkey = 5 })
    assert.matches("option 'sslcert' must not contain NUL bytes", new_error{ sslcert = "a\0b" })
    assert.matches("unknown option 'sslcrt' %(did you mean 'sslcert'%?%)", new_error{ sslcrt = "x" })
  end)

  describe("CMSREC_DEBUG", function()
    -- a child process with the variable set downloads `ids`; returns what it printed
    local function traced(env, ids)
      return H.run_lua(([[
        local cmsrec = require "cmsrec"
        local c = cmsrec.new{ base_url = %q, ak = %q, sk = %q, cafile = %q, retries = 0 }
        for id in (%q):gmatch("%%S+") do c:download{ callID = id } end
        c:close()
      ]]):format(mock.url, H.AK, H.SK, mock.ca, table.concat(ids, " ")), env)
    end

    it("traces requests and answers, with the signature, the SK and recordings left out", function()
      local out = traced("CMSREC_DEBUG=1", { "notfound", "badtext", "wav-5000" })
      local last = mock.stats().last.headers.authorization
      local signature = last:match("/(%x+)$")
      assert.equal(64, #signature)
      local api = mock.url .. "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile"
      assert.matches("cmsrec%[%x%x%x%x%] > POST " .. api:gsub("%p", "%%%0") .. "\n", out)
      assert.matches("> Authorization: auth%-v2/mock%-ak/[%dT:Z-]+/content%-length;content%-type;host/"
        .. "<redacted>\n", out)
      assert.matches('> body %(76 bytes%): {"callID":"wav%-5000","workNo":""', out)
      assert.matches("%* SSL connection using TLSv1%.3", out)
      assert.matches("< HTTP/1%.1 200 OK\n", out)
      assert.matches('< body %(70 bytes%): {"resultData":"","resultCode":"1",'
        .. '"resultDesc":"Record List is empty"}\n', out)
      assert.matches("< HTTP/1%.1 500", out)
      assert.matches("< body: a recording %(wav%), 5000 bytes, not shown\n", out)
      assert.is_nil(out:find(signature, 1, true), "the signature was traced")
      assert.is_nil(out:find(("%x"):rep(64)), "something like a signature was traced")
      assert.is_nil(out:find(H.SK, 1, true), "the SK was traced")
      assert.is_nil(out:find("RIFF", 1, true), "recording bytes were traced")
      assert.is_nil(out:find("\27", 1, true), "a server's escape sequence reached the trace")
    end)

    it("is off unless set (and 0 turns it off)", function()
      assert.equal("", traced(nil, { "wav-100" }))
      assert.equal("", traced("CMSREC_DEBUG=0", { "wav-100" }))
      assert.equal("", traced("CMSREC_DEBUG=", { "wav-100" }))
    end)

    it("shows why a TLS connection failed, and the version a tls_min client got", function()
      mode("expired")
      local out = H.run_lua(([[
        local c = require("cmsrec").new{ base_url = %q, ak = %q, sk = %q, cafile = %q, retries = 0 }
        c:download{ callID = "wav-100" }
      ]]):format(port_url("tls_switch_port"), H.AK, H.SK, mock.ca), "CMSREC_DEBUG=1")
      assert.matches("%* failed %(tls error%): the TLS connection to .*certificate has expired", out)
      mode("good")
      out = H.run_lua(([[
        local c = require("cmsrec").new{ base_url = %q, ak = %q, sk = %q, cafile = %q, retries = 0 }
        c:download{ callID = "wav-100" }
      ]]):format(port_url("tls12_port"), H.AK, H.SK, mock.ca), "CMSREC_DEBUG=1")
      assert.matches("SSL connection using TLSv1%.2", out)
    end)
  end)

  describe("bin/cmsrec", function()
    local function get(args, o)
      local dir = newdir()
      local r = H.cli("get --quiet --call-id wav-5000 -o " .. q(dir .. "/") .. " " .. args, o)
      r.dir = dir
      return r
    end
    local function env(url, extra)
      local e = H.mock_env({ CMSREC_URL = url })
      for k, v in pairs(extra or {}) do e[k] = v end
      return e
    end
    local sha = function() return mock.expect("wav-5000").sha256 end

    it("--cert and --key for a server that asks; without them exit 5, nothing saved", function()
      local r = get("--cert " .. q(file("client.pem")) .. " --key " .. q(file("client.key")),
        { env = env(port_url("mtls_port")) })
      assert.equal(0, r.code, r.err)
      assert.matches("sha256 " .. sha(), r.out)
      r = get("", { env = env(port_url("mtls_port")) })
      assert.equal(5, r.code)
      assert.matches("client certificate", r.err)
      assert.equal("", H.ls(r.dir))
    end)

    it("--pinnedpubkey, --tlsv1.3 and --tlsv1.2", function()
      local r = get("--pinnedpubkey " .. q(pin_of(file("server.key"))), { env = env(mock.url) })
      assert.equal(0, r.code, r.err)
      r = get("--pinnedpubkey " .. q(pin_of(file("client.key"))), { env = env(mock.url) })
      assert.equal(5, r.code)
      assert.matches("pinned", r.err)
      r = get("--tlsv1.3", { env = env(port_url("tls12_port")) })
      assert.equal(5, r.code)
      assert.matches("protocol version", r.err)
      assert.equal(0, get("--tlsv1.2", { env = env(port_url("tls12_port")) }).code)
      r = get("--tlsv1.2 --tlsv1.3", { env = env(mock.url) })
      assert.equal(2, r.code)
      assert.matches("do not go together", r.err)
    end)

    it("the config file's sslcert, sslkey, pinnedpubkey and tls_min", function()
      local conf = tmp .. "/tls.conf"
      H.write_file(conf, table.concat({ "url = " .. port_url("mtls_port"), "cafile = " .. mock.ca,
        "sslcert = " .. file("client.pem"), "sslkey = " .. file("client.key"),
        "pinnedpubkey = " .. pin_of(file("server.key")), "tls_min = 1.3", "" }, "\n"))
      local r = get("--config " .. q(conf), { env = { CMSREC_AK = H.AK, CMSREC_SK = H.SK } })
      assert.equal(0, r.code, r.err)
      assert.matches("sha256 " .. sha(), r.out)
      H.write_file(conf, "tls_min = 1.1\n")
      r = get("--config " .. q(conf), { env = env(mock.url) })
      assert.equal(2, r.code)
      assert.matches("line 1: tls_min must be 1.2 or 1.3", r.err)
    end)

    it("a missing --cert file is a usage error naming it", function()
      local r = get("--cert " .. q(tmp .. "/none.pem"), { env = env(mock.url) })
      assert.equal(2, r.code)
      assert.matches("option 'sslcert': cannot read '.*none%.pem': No such file or directory", r.err)
    end)

    it("an encrypted key: the password from CMSREC_SSLKEY_PASSWORD, never printed", function()
      local enc, password = tmp .. "/cli-enc.key", "cli-pass-1618033988"
      assert(H.sh(("openssl pkey -in %s -aes256 -passout pass:%s -out %s")
        :format(q(file("client.key")), password, q(enc))))
      local args = "--cert " .. q(file("client.pem")) .. " --key " .. q(enc)
      local r = get(args, { env = env(port_url("mtls_port"), { CMSREC_SSLKEY_PASSWORD = password }) })
      assert.equal(0, r.code, r.err)
      r = get(args .. " --json", { env = env(port_url("mtls_port"), { CMSREC_SSLKEY_PASSWORD = "nope-" .. password }) })
      assert.equal(5, r.code)
      assert.is_nil((r.out .. r.err):find(password, 1, true))
      -- no password on a terminal: a failure at once, never a pass phrase prompt
      r = get(args, { env = env(port_url("mtls_port")), tty = true, limit = 20 })
      assert.equal(5, r.code, r.out)
      assert.is_nil(r.out:find("pass phrase", 1, true))
    end)
  end)
end)
