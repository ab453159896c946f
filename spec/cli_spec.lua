-- bin/cmsrec, run as a separate process on the build under test, against the mock CMS
-- (H.cli: a clean CMSREC_* environment, the same build as this spec).
local H = require "spec.helper"
local cjson = require "cjson"
local mock = H.mock
local q, cli, listing, mock_env, write_file = H.q, H.cli, H.listing, H.mock_env, H.write_file

local function file_sha256(path)
  local data = H.read_file(path)
  return data and H.sha256(data)
end

local function assert_no_sk(r, sk)
  for _, text in ipairs({ r.out, r.err }) do
    assert.is_nil(text:find(sk or H.SK, 1, true), "the SK was printed")
  end
end

describe("cmsrec CLI", function()
  local tmp
  setup(function() mock.start() end)
  teardown(function() mock.stop() end)
  before_each(function() tmp = H.capture("mktemp -d /tmp/cmsrec-cli.XXXXXX"):gsub("%s+$", "") end)
  after_each(function() H.capture("rm -rf " .. q(tmp)) end)

  describe("usage", function()
    it("help lists the commands, the options and the exit codes", function()
      for _, args in ipairs({ "help", "--help", "-h" }) do
        local r = cli(args)
        assert.equal(0, r.code)
        assert.equal("", r.err)
        for _, word in ipairs({ "get", "sign", "--call-id", "--unzip", "--sk-env", "CMSREC_SK", "exit codes",
                                "resultCode 1" }) do
          assert.truthy(r.out:find(word, 1, true), args .. " does not mention " .. word)
        end
      end
      local r = cli("get --help")
      assert.equal(0, r.code)
      assert.truthy(r.out:find("--begin-time", 1, true))
    end)

    it("--version prints the module's version", function()
      local r = cli("--version")
      assert.equal(0, r.code)
      assert.equal("cmsrec " .. require("cmsrec").VERSION .. "\n", r.out)
    end)

    it("an unknown option exits 2 and names it, with a did-you-mean", function()
      local r = cli("get --callid 1748587841-77268", { env = mock_env() })
      assert.equal(2, r.code)
      assert.equal("", r.out)
      assert.matches("unknown option '%-%-callid'", r.err)
      assert.matches("did you mean '%-%-call%-id'", r.err)
      r = cli("get --json --callid 1748587841-77268", { env = mock_env() })
      assert.equal(2, r.code)
      assert.same({ ok = false, error = { kind = "usage", retryable = false,
        message = "unknown option '--callid' for 'get' (did you mean '--call-id'?)" } }, cjson.decode(r.out))
      r = cli("gte --call-id x")
      assert.equal(2, r.code)
      assert.matches("unknown command 'gte' %(did you mean 'get'%?%)", r.err)
    end)

    it("a missing --call-id exits 2, in JSON too with --json", function()
      local r = cli("get", { env = mock_env() })
      assert.equal(2, r.code)
      assert.matches("missing %-%-call%-id", r.err)
      r = cli("get --json", { env = mock_env() })
      assert.equal(2, r.code)
      local j = cjson.decode(r.out)
      assert.is_false(j.ok)
      assert.equal("usage", j.error.kind)
    end)

    it("refuses an SK on the command line, without echoing it", function()
      local r = cli("get --call-id x --sk " .. H.SK, { env = mock_env({ CMSREC_SK = false }) })
      assert.equal(2, r.code)
      assert.matches("CMSREC_SK", r.err)
      assert_no_sk(r)
    end)

    it("an invalid request exits 2 before anything is sent", function()
      local r = cli("get --call-id x --begin-time 2025 -o " .. q(tmp), { env = mock_env() })
      assert.equal(2, r.code)
      assert.matches("beginTime", r.err)
    end)
  end)

  describe("get", function()
    it("saves into the current directory by default, named by the call ID", function()
      local id = "1748587841-77268"
      local r = cli("get --call-id " .. id, { env = mock_env(), cd = tmp })
      assert.equal(0, r.code, r.err)
      local want = mock.expect(id)
      assert.same({ id .. ".wav" }, listing(tmp))
      assert.equal(want.sha256, file_sha256(tmp .. "/" .. id .. ".wav"))
      assert.equal(("saved ./%s.wav (wav, 160044 bytes, sha256 %s)\n"):format(id, want.sha256), r.out)
      assert_no_sk(r)
    end)

    it("saves to a file path given with -o", function()
      local path = tmp .. "/call.wav"
      local r = cli("get --call-id wav-100000 -o " .. q(path), { env = mock_env() })
      assert.equal(0, r.code, r.err)
      assert.equal(mock.expect("wav-100000").sha256, file_sha256(path))
      assert.same({ "call.wav" }, listing(tmp))
    end)

    it("--json prints one object with the result", function()
      local r = cli("get --json --call-id wav-2000 -o " .. q(tmp), { env = mock_env() })
      assert.equal(0, r.code, r.err)
      assert.equal(1, select(2, r.out:gsub("\n", "")), "one line on stdout")
      local j = cjson.decode(r.out)
      local want = mock.expect("wav-2000")
      assert.is_true(j.ok)
      assert.equal(tmp .. "/wav-2000.wav", j.path)
      assert.equal(2000, j.bytes)
      assert.equal(want.sha256, j.sha256)
      assert.equal("wav", j.format)
      assert.equal(200, j.status)
      assert.is_number(j.elapsed)
      assert.same({ { name = "wav-2000.wav", size = 2000, path = tmp .. "/wav-2000.wav" } }, j.files)
      assert.equal(want.sha256, file_sha256(j.path))
    end)

    it("not found: exit 3, a JSON error with the CMS's result, and no file", function()
      local r = cli("get --json --call-id notfound -o " .. q(tmp), { env = mock_env() })
      assert.equal(3, r.code)
      local j = cjson.decode(r.out)
      assert.is_false(j.ok)
      assert.equal("api", j.error.kind)
      assert.equal("1", j.error.result_code)
      assert.equal("Record List is empty", j.error.result_desc)
      assert.equal(200, j.error.status)
      assert.is_false(j.error.retryable)
      assert.matches("Record List is empty", j.error.message)
      assert.matches("^cmsrec: the CMS answered", r.err)
      assert.same({}, listing(tmp))
    end)

    it("a wrong SK: exit 4, and neither SK is printed", function()
      local wrong = "wrong-sk-ffffffffffff"
      local r = cli("get --json --call-id wav-2000 -o " .. q(tmp), { env = mock_env({ CMSREC_SK = wrong }) })
      assert.equal(4, r.code)
      assert.equal("auth", cjson.decode(r.out).error.kind)
      assert.equal(401, cjson.decode(r.out).error.status)
      assert_no_sk(r)
      assert_no_sk(r, wrong)
      assert.same({}, listing(tmp))
    end)

    it("a closed port: exit 5, kind network, retryable", function()
      local r = cli("get --json --call-id wav-2000 --url https://127.0.0.1:1 -o " .. q(tmp), { env = mock_env() })
      assert.equal(5, r.code)
      local j = cjson.decode(r.out)
      assert.equal("network", j.error.kind)
      assert.is_true(j.error.retryable)
      assert.matches("^cmsrec: .*127%.0%.0%.1:1", r.err)
    end)

    it("an HTTP error status exits 1; a missing directory exits 6", function()
      assert.equal(1, cli("get --quiet --call-id http-500 -o " .. q(tmp), { env = mock_env() }).code)
      -- a file in a missing directory (a path ending in / would be made)
      local r = cli("get --call-id wav-2000 -o " .. q(tmp .. "/missing/x.wav"), { env = mock_env() })
      assert.equal(6, r.code)
      assert.same({}, listing(tmp))
    end)

    it("--unzip unpacks a ZIP answer, each member as served", function()
      local r = cli("get --json --unzip --call-id zip-3 -o " .. q(tmp), { env = mock_env() })
      assert.equal(0, r.code, r.err)
      local j = cjson.decode(r.out)
      assert.equal("zip", j.format)
      assert.equal(mock.expect("zip-3").sha256, j.sha256)
      assert.equal(3, #j.files)
      assert.same({ "rec_1.wav", "rec_2.wav", "rec_3.wav" }, listing(tmp))
      for i = 1, 3 do
        local path = tmp .. "/rec_" .. i .. ".wav"
        assert.equal(mock.expect("wav-" .. (10000 + i)).sha256, file_sha256(path))
        assert.equal(10000 + i, j.files[i].size)
      end
    end)
  end)

  describe("progress", function()
    it("Ctrl-C while waiting for the CMS cancels cleanly: exit 6, nothing on disk", function()
      local r = cli("get --call-id slowheaders-4 -o " .. q(tmp), { env = mock_env(), interrupt = 1 })
      assert.equal(6, r.code, r.err)
      assert.matches("cancelled", r.err)
      assert.same({}, listing(tmp))
    end)

    it("Ctrl-C in the middle of the body removes the partial download", function()
      local r = cli("get --call-id stall-4 -o " .. q(tmp), { env = mock_env(), interrupt = 1 })
      assert.equal(6, r.code, r.err)
      assert.same({}, listing(tmp))
    end)

    it("--quiet prints nothing on stderr, the result on stdout", function()
      local r = cli("get --quiet --call-id wav-2000000 -o " .. q(tmp), { env = mock_env() })
      assert.equal(0, r.code)
      assert.equal("", r.err)
      assert.matches("^saved ", r.out)
    end)

    it("not on a terminal: a few plain lines on stderr, never on stdout", function()
      local r = cli("get --call-id wav-20000000 -o " .. q(tmp), { env = mock_env() })
      assert.equal(0, r.code, r.err)
      assert.equal(mock.expect("wav-20000000").sha256, file_sha256(tmp .. "/wav-20000000.wav"))
      assert.is_nil(r.err:find("\r", 1, true))
      local lines = 0
      for line in r.err:gmatch("[^\n]+") do
        lines = lines + 1
        assert.matches("^progress: [%d.]+ MB of 20%.0 MB %(%d+%%%)$", line)
      end
      assert.is_true(lines >= 1 and lines <= 11, lines .. " progress lines")
      assert.truthy(r.err:find("(100%)", 1, true))
      assert.matches("^saved ", r.out)
    end)

    it("not on a terminal: a stalled transfer is not reported at every callback", function()
      -- the module calls on_progress about every 200 ms during the 2 s stall (one attempt:
      -- with retries the run passes 5 s, when a plain line is due)
      local r = cli("get --retries 0 --call-id stall-2 -o " .. q(tmp), { env = mock_env() })
      assert.equal(5, r.code)
      assert.is_nil(r.err:find("progress:", 1, true))
      assert.same({}, listing(tmp))
    end)

    it("on a terminal: one bar redrawn with \\r, with a percentage, ended by a newline", function()
      local r = cli("get --call-id wav-5000000 -o " .. q(tmp), { env = mock_env(), tty = true })
      assert.equal(0, r.code, r.out)
      -- the terminal turns \n into \r\n: a \r not followed by \n is a redraw
      assert.truthy(r.out:find("\r[^\n]"), "no redraw in " .. r.out)
      assert.truthy(r.out:find("\r%s*100%% %[#+%]  5%.0/5%.0 MB"), "no complete bar in " .. r.out)
      assert.truthy(r.out:find("\r%s*100%%[^\r\n]*\r\nsaved "), "the bar does not end with a newline")
      assert.equal(mock.expect("wav-5000000").sha256, file_sha256(tmp .. "/wav-5000000.wav"))
    end)

    it("on a terminal: a stall keeps redrawing with the rate and an ETA", function()
      local r = cli("get --call-id stall-2 -o " .. q(tmp), { env = mock_env(), tty = true })
      assert.equal(5, r.code)
      local redraws = select(2, r.out:gsub("\r[^\n]", ""))
      assert.is_true(redraws >= 2, redraws .. " redraws")
      assert.matches("%d+%% %[%.+%]", r.out)
      assert.matches("ETA %d+:%d%d", r.out)
    end)
  end)

  describe("configuration", function()
    local function config(lines)
      local path = tmp .. "/cmsrec.conf"
      write_file(path, table.concat(lines, "\n") .. "\n")
      return path
    end

    it("reads url, ak, sk and cafile from a config file", function()
      local path = config({
        "# the mock CMS", "", "url = " .. mock.url, "  ak=" .. H.AK, 'sk = "' .. H.SK .. '"',
        "cafile = " .. mock.ca, "timeout = 20", "insecure = false", "signed_headers = content-length, content-type, host",
      })
      local r = cli(("get --config %s --call-id wav-2000 -o %s"):format(q(path), q(tmp)))
      assert.equal(0, r.code, r.err)
      assert.equal(mock.expect("wav-2000").sha256, file_sha256(tmp .. "/wav-2000.wav"))
      r = cli(("get --call-id wav-3000 -o %s"):format(q(tmp)), { env = { CMSREC_CONFIG = path } })
      assert.equal(0, r.code, r.err)
      assert_no_sk(r)
    end)

    it("a flag beats --config, which beats the environment, which beats CMSREC_CONFIG", function()
      local closed = "https://127.0.0.1:1"
      local path = config({ "url = " .. closed, "ak = " .. H.AK, "sk = wrong-sk-from-file",
                            "cafile = " .. mock.ca })
      local named = ("get --json --config %s --call-id wav-2000 -o %s"):format(q(path), q(tmp))
      -- a file asked for with --config wins over stray variables: the closed port
      assert.equal(5, cli(named, { env = { CMSREC_URL = mock.url, CMSREC_SK = H.SK } }).code)
      -- a flag wins over that file: the mock, but the file's wrong SK
      assert.equal(4, cli(named .. " --url " .. mock.url).code)
      -- the file named by CMSREC_CONFIG only fills in what the environment lacks
      local plain = ("get --json --call-id wav-2000 -o %s"):format(q(tmp))
      local r = cli(plain, { env = { CMSREC_CONFIG = path, CMSREC_URL = mock.url, CMSREC_SK = H.SK } })
      assert.equal(0, r.code, r.err)
      assert.equal(4, cli(plain, { env = { CMSREC_CONFIG = path, CMSREC_URL = mock.url } }).code)
      -- a flag wins over the environment
      r = cli(plain .. " --ak nobody", { env = mock_env() })
      assert.equal(4, r.code)
    end)

    it("reads stall_timeout as its own setting, and -o dir/ makes the directory", function()
      local path = config({ "url = " .. mock.url, "ak = " .. H.AK, "sk = " .. H.SK, "cafile = " .. mock.ca,
                            "timeout = 30", "stall_timeout = 1" })
      assert(H.sh("chmod 600 " .. q(path)))
      local out = tmp .. "/new/dir/"
      local r = cli(("get --config %s --call-id stall-15 -o %s"):format(q(path), q(out)))
      assert.equal(5, r.code, r.err) -- cut by the 1 s stall timeout, long before 30 s
      assert.matches("too slow", r.err)
      r = cli(("get --config %s --stall-timeout x --call-id wav-2000 -o %s"):format(q(path), q(out)))
      assert.equal(2, r.code)
      assert.matches("%-%-stall%-timeout must be", r.err)
      r = cli(("get --config %s --call-id wav-2000 -o %s"):format(q(path), q(out)))
      assert.equal(0, r.code, r.err)
      assert.same({ "wav-2000.wav" }, listing(out))
    end)

    it("warns when a config file holding the SK is readable by others", function()
      local path = config({ "url = " .. mock.url, "ak = " .. H.AK, "sk = " .. H.SK, "cafile = " .. mock.ca })
      assert(H.sh("chmod 644 " .. q(path)))
      local args = ("get --config %s --call-id wav-2000 -o %s"):format(q(path), q(tmp))
      local r = cli(args)
      assert.equal(0, r.code, r.err)
      assert.matches("others can read it %(chmod 600", r.err)
      assert(H.sh("chmod 600 " .. q(path)))
      r = cli(args)
      assert.equal(0, r.code, r.err)
      assert.is_nil(r.err:find("warning", 1, true))
      assert_no_sk(r)
    end)

    it("an unknown key is a usage error naming the line", function()
      local path = config({ "url = " .. mock.url, "# comment", "bse_url = x" })
      local r = cli(("get --config %s --call-id wav-2000 -o %s"):format(q(path), q(tmp)), { env = mock_env() })
      assert.equal(2, r.code)
      assert.matches("line 3: unknown key 'bse_url'", r.err)
      assert.same({ "cmsrec.conf" }, listing(tmp))
    end)

    it("is never run as Lua", function()
      local marker = tmp .. "/ran"
      local path = config({ ('os.execute("touch %s")'):format(marker), "url = " .. mock.url })
      local r = cli(("get --config %s --call-id wav-2000 -o %s"):format(q(path), q(tmp)), { env = mock_env() })
      assert.equal(2, r.code)
      assert.matches("line 1: expected 'key = value'", r.err)
      assert.is_nil(H.read_file(marker))
    end)

    it("needs a URL, an AK and an SK", function()
      local r = cli("get --call-id x -o " .. q(tmp), { env = mock_env({ CMSREC_SK = false }) })
      assert.equal(2, r.code)
      assert.matches("CMSREC_SK", r.err)
      r = cli("get --call-id x -o " .. q(tmp), { env = mock_env({ CMSREC_URL = false }) })
      assert.equal(2, r.code)
      assert.matches("%-%-url", r.err)
    end)
  end)

  describe("sign", function()
    local V1 = {
      sk = "example-sk-0123456789",
      args = "sign --ak globalaktest --timestamp 2024-10-31T14:06:52Z --path /rest/cmsapp/v1/ping"
        .. " --header content-length=23 --header 'content-type=application/json;charset=UTF-8'"
        .. " --header host=10.22.26.181:28080 --body '{\"say\": \"Hello world!\"}'",
      canonical = table.concat({ "POST", "/rest/cmsapp/v1/ping", "content-length;content-type;host",
        "content-length:23", "content-type:application%2Fjson%3Bcharset%3DUTF-8", "host:10.22.26.181%3A28080",
        "%7B%22say%22%3A%20%22Hello%20world%21%22%7D" }, "\n"),
      signing_key = "bb0c4d2407684a18485b7018d70a5ebdc2c895ffa7d24ff9465e9dcc2fa7bb0f",
      signature = "151388d296c25c51b38d6800e04a09201cd481eaf10e247de50d9cb16a08da8a",
    }
    V1.authorization = "auth-v2/globalaktest/2024-10-31T14:06:52Z/content-length;content-type;host/" .. V1.signature

    it("reproduces vector V1 with the SK from CMSREC_SK, and never prints it", function()
      local r = cli(V1.args, { env = { CMSREC_SK = V1.sk } })
      assert.equal(0, r.code, r.err)
      local canonical = r.out:match("%-%-%-%-%-BEGIN CANONICAL REQUEST%-%-%-%-%-\n(.-)\n%-%-%-%-%-END CANONICAL REQUEST")
      assert.equal(V1.canonical, canonical)
      assert.matches("signed headers: +content%-length;content%-type;host\n", r.out)
      assert.matches("signing key: +" .. V1.signing_key, r.out)
      assert.matches("signature: +" .. V1.signature, r.out)
      assert.truthy(r.out:find("Authorization:  " .. V1.authorization .. "\n", 1, true))
      assert_no_sk(r, V1.sk)
    end)

    it("--json, with the SK in another variable", function()
      local r = cli(V1.args .. " --json --sk-env MY_SK", { env = { MY_SK = V1.sk } })
      assert.equal(0, r.code, r.err)
      local j = cjson.decode(r.out)
      assert.equal(V1.canonical, j.canonical_request)
      assert.equal(V1.signing_key, j.signing_key)
      assert.equal(V1.signature, j.signature)
      assert.equal(V1.authorization, j.authorization)
      assert.equal("content-length;content-type;host", j.signed_headers)
      assert.equal("2024-10-31T14:06:52Z", j.timestamp)
      assert_no_sk(r, V1.sk)
    end)

    it("without the SK variable: exit 2", function()
      local r = cli(V1.args)
      assert.equal(2, r.code)
      assert.matches("CMSREC_SK", r.err)
    end)
  end)
end)
