-- Defects found by an adversarial review of bin/cmsrec and examples/save_all.lua;
-- each test names its defect number. Run as separate processes on the build under
-- test, against the mock CMS (H.run, H.cli), like spec/cli_spec.lua.
--
-- Kept to the Lua 5.1 subset (no //, goto, <close>, bitwise operators).
local H = require "spec.helper"
local cjson = require "cjson"
local mock = H.mock
local q, run, cli, listing, mock_env = H.q, H.run, H.cli, H.listing, H.mock_env

local function lines(text)
  return select(2, text:gsub("\n", ""))
end

-- No Lua error escaped: no "internal error", no traceback.
local function assert_clean(r)
  assert.is_nil(r.err:find("internal error", 1, true), r.err)
  assert.is_nil(r.err:find("traceback", 1, true), r.err)
  assert.is_nil(r.out:find("traceback", 1, true), r.out)
end

describe("cmsrec review", function()
  local tmp
  setup(function() mock.start() end)
  teardown(function() mock.stop() end)
  before_each(function() tmp = H.capture("mktemp -d /tmp/cmsrec-review.XXXXXX"):gsub("%s+$", "") end)
  after_each(function() H.capture("rm -rf " .. q(tmp)) end)

  -- ===== #8: a file the tool reads is a directory, or unreadable =====

  describe("#8", function()
    it("#8 --config <a directory> --json: exit 2 and one JSON object", function()
      local r = cli(("get --call-id X --config %s --json -o %s"):format(q(tmp), q(tmp)), { env = mock_env() })
      assert.equal(2, r.code, r.err)
      assert.equal(1, lines(r.out), "one line on stdout: " .. r.out)
      local j = cjson.decode(r.out)
      assert.is_false(j.ok)
      assert.equal("usage", j.error.kind)
      assert.truthy(j.error.message:find(tmp, 1, true), j.error.message)
      assert.matches("config file", j.error.message)
      assert.matches("directory", j.error.message)
      assert.truthy(r.err:find(tmp, 1, true), r.err)
      assert_clean(r)
      assert.same({}, listing(tmp))
    end)

    it("#8 CMSREC_CONFIG=<a directory>, and an unreadable config file: exit 2 naming it", function()
      local r = cli("get --call-id X -o " .. q(tmp), { env = mock_env({ CMSREC_CONFIG = tmp }) })
      assert.equal(2, r.code, r.err)
      assert.truthy(r.err:find("cannot read the config file '" .. tmp .. "'", 1, true), r.err)
      assert_clean(r)
      -- /proc/self/mem opens, and reading it from offset 0 fails (EIO), even for root
      r = cli("get --json --call-id X --config /proc/self/mem -o " .. q(tmp), { env = mock_env() })
      assert.equal(2, r.code, r.err)
      assert.equal(1, lines(r.out), r.out)
      assert.equal("usage", cjson.decode(r.out).error.kind)
      assert.truthy(r.err:find("/proc/self/mem", 1, true), r.err)
      assert_clean(r)
    end)

    it("#8 sign --body-file <a directory> or an unreadable file: exit 2, not an empty body", function()
      local sign = "sign --ak globalaktest --timestamp 2024-10-31T14:06:52Z --header host=h --body-file "
      for _, path in ipairs({ tmp, "/proc/self/mem" }) do
        local r = cli(sign .. q(path), { env = { CMSREC_SK = "example-sk-0123456789" } })
        assert.equal(2, r.code, r.err)
        assert.equal("", r.out)
        assert.truthy(r.err:find("--body-file '" .. path .. "'", 1, true), r.err)
        assert_clean(r)
      end
      -- an ordinary file is still read, an empty one is an empty body
      local body = tmp .. "/body.json"
      H.write_file(body, '{"say": "Hello world!"}')
      local r = cli(sign .. q(body) .. " --json", { env = { CMSREC_SK = "example-sk-0123456789" } })
      assert.equal(0, r.code, r.err)
      assert.matches("%%7B%%22say%%22", cjson.decode(r.out).canonical_request)
    end)
  end)

  -- ===== #12: the "others can read the SK" warning =====

  describe("#12", function()
    local WARNING = "others can read it"
    local function sk_config(path, mode)
      H.write_file(path, table.concat({ "url = " .. mock.url, "ak = " .. H.AK, "sk = " .. H.SK,
        "cafile = " .. mock.ca }, "\n") .. "\n")
      assert(H.sh("chmod " .. mode .. " " .. q(path)))
      return path
    end
    local function get_with(config, o)
      o = o or {}
      return cli(("get --config %s --call-id wav-2000 -o %s"):format(q(config), q(tmp)), o)
    end

    it("#12 a 0600 config file reached through a symlink: no warning", function()
      local real = sk_config(tmp .. "/real.conf", "600")
      assert(H.sh(("ln -s %s %s"):format(q(real), q(tmp .. "/link.conf"))))
      for _, path in ipairs({ tmp .. "/link.conf", "link.conf" }) do
        local r = get_with(path, { cd = tmp })
        assert.equal(0, r.code, r.err)
        assert.is_nil(r.err:find(WARNING, 1, true), path .. ": " .. r.err)
      end
      -- and a 0644 file behind a link is reported
      assert(H.sh("chmod 644 " .. q(real)))
      local r = get_with(tmp .. "/link.conf")
      assert.equal(0, r.code, r.err)
      assert.truthy(r.err:find(WARNING, 1, true), r.err)
    end)

    it("#12 a 0644 config file named '-conf': a warning, as ./-conf, as bare -conf, in CMSREC_CONFIG", function()
      sk_config(tmp .. "/-conf", "644")
      for _, path in ipairs({ "./-conf", "-conf", tmp .. "/-conf" }) do
        local r = get_with(path, { cd = tmp })
        assert.equal(0, r.code, r.err)
        assert.truthy(r.err:find(WARNING, 1, true), path .. ": no warning in " .. r.err)
      end
      local r = cli("get --call-id wav-2000 -o " .. q(tmp), { cd = tmp, env = { CMSREC_CONFIG = "-conf" } })
      assert.equal(0, r.code, r.err)
      assert.truthy(r.err:find(WARNING, 1, true), "CMSREC_CONFIG=-conf: no warning in " .. r.err)
      assert.is_nil(r.err:find(H.SK, 1, true))
      -- and no warning once it is private
      assert(H.sh("chmod 600 " .. q(tmp .. "/-conf")))
      r = get_with("-conf", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.is_nil(r.err:find(WARNING, 1, true), r.err)
    end)

    it("#12 plain files: 0644 and 0640 warn, 0600 and 0400 do not; any name", function()
      for _, name in ipairs({ "cmsrec.conf", "it's a conf" }) do
        local path = tmp .. "/" .. name
        for _, case in ipairs({ { "644", true }, { "640", true }, { "604", true }, { "600", false },
                                { "400", false } }) do
          sk_config(path, case[1])
          local r = get_with(path)
          assert.equal(0, r.code, r.err)
          assert.equal(case[2], r.err:find(WARNING, 1, true) ~= nil, name .. " " .. case[1] .. ": " .. r.err)
          assert.is_nil(r.err:find(H.SK, 1, true))
        end
      end
    end)
  end)

  -- ===== #13: examples/save_all.lua and Retry-After =====
  -- save_all.lua used to pause between its own attempts, for as long as a server asked
  -- (hours): it capped the pause at CMSREC_MAX_PAUSE. It now leaves retries to
  -- client:download_many, which caps a Retry-After at 60 s (test/unit_core.c: "a long
  -- Retry-After is capped") and goes on with the other calls meanwhile.

  describe("#13", function()
    -- examples/save_all.lua OUT < ids, with the mock's settings.
    local function save_all(ids, env, o)
      local list = tmp .. "/ids.txt"
      H.write_file(list, table.concat(ids, "\n") .. "\n")
      o = o or {}
      o.cd, o.stdin, o.env = tmp, list, mock_env(env)
      return run(("%s %s/examples/save_all.lua %s"):format(H.LUA, H.ROOT, q(tmp .. "/out")), o)
    end

    it("#13 save_all.lua waits the Retry-After the server asks between attempts, others go on", function()
      -- retry-2-flow-N: flow control with Retry-After: 1 twice, then the recording
      mock.reset()
      local r = save_all({ "retry-2-flow-2000", "wav-1001" }, nil, { limit = 20 })
      assert.equal(0, r.code, r.err)
      assert.matches("2 saved, 0 already there, 0 failed", r.err)
      assert.is_true(r.elapsed < 10, r.elapsed .. " s")
      local stats = mock.stats()
      assert.equal(3, stats.per_call["retry-2-flow-2000"])
      assert.equal(1, stats.per_call["wav-1001"])
      local times = stats.per_call_times["retry-2-flow-2000"]
      for k = 2, 3 do
        local gap = times[k] - times[k - 1]
        assert.is_true(gap >= 0.9, ("attempt %d came %.2f s after"):format(k, gap))
      end
      assert.is_true(stats.per_call_times["wav-1001"][1] < times[2], "wav-1001 waited for the retries")
      assert.equal(mock.expect("retry-2-flow-2000").sha256,
        H.sha256(H.read_file(tmp .. "/out/retry-2-flow-2000/retry-2-flow-2000.wav")))
    end)

    it("#13 save_all.lua never retries refused credentials, and starts nothing after them", function()
      mock.reset()
      local ids = {}
      for k = 1, 12 do ids[k] = "wav-" .. (1000 + k) end
      local r = save_all(ids, { CMSREC_SK = "wrong-sk-0123456789" }, { limit = 20 })
      assert.equal(1, r.code, r.err)
      local stats = mock.stats()
      assert.is_true(stats.requests <= 4, stats.requests .. " requests") -- at most the first four, once each
      for _, n in pairs(stats.per_call) do assert.equal(1, n) end
      local failed, not_attempted = r.err:match("0 saved, 0 already there, (%d+) failed, (%d+) not attempted")
      assert.equal(stats.requests, tonumber(failed), r.err)
      assert.equal(12 - stats.requests, tonumber(not_attempted))
      assert.same({}, listing(tmp .. "/out"))
      assert.is_nil(r.err:find("wrong-sk", 1, true))
    end)
  end)

  -- ===== #2: Ctrl-C that lands outside on_progress =====

  describe("#2", function()
    -- Needs the C change that calls on_progress every 200 ms while an error answer arrives;
    -- without it Ctrl-C takes effect only when the 6 s answer is complete.
    it("#2 Ctrl-C while a JSON error answer trickles in: exit 6 within ~3 s, no traceback", function()
      local r = cli("get --call-id slowjson-6 -o " .. q(tmp), { env = mock_env(), interrupt = 2 })
      assert.equal(6, r.code, r.err)
      assert.is_true(r.elapsed < 3.5, ("took %.1f s"):format(r.elapsed))
      assert.truthy(r.err:find("cancel") or r.err:find("interrupt"), r.err)
      assert_clean(r)
      assert.same({}, listing(tmp))
      r = cli("get --json --call-id slowjson-6 -o " .. q(tmp), { env = mock_env(), interrupt = 2 })
      assert.equal(6, r.code, r.err)
      assert.is_true(r.elapsed < 3.5, ("took %.1f s"):format(r.elapsed))
      assert.equal(1, lines(r.out), r.out)
      assert.equal("cancelled", cjson.decode(r.out).error.kind)
      assert_clean(r)
      assert.same({}, listing(tmp))
    end)

    -- The top-level handling on its own: the config file is a FIFO nobody writes to, so the
    -- tool is blocked in io.open when Ctrl-C comes, and "interrupted!" is raised in plain
    -- Lua code, outside any pcall, by the hook the interpreter's SIGINT handler sets. Lua
    -- 5.3 and 5.4 install that handler so that the open fails at once (EINTR); Lua 5.1,
    -- 5.2 and LuaJIT with signal(), which restarts the open: there the hook runs when the
    -- open returns, so the FIFO is then opened at its other end (read-write: that never
    -- blocks, whether or not the tool is still waiting).
    it("#2 Ctrl-C outside any download: 'cmsrec: interrupted', exit 6, one JSON object", function()
      local fifo = tmp .. "/conf.fifo"
      assert(H.sh("mkfifo " .. q(fifo)))
      for _, json in ipairs({ false, true }) do
        local r = cli(("get %s--config %s --call-id wav-2000 -o %s"):format(json and "--json " or "",
          q(fifo), q(tmp .. "/")), { env = mock_env(), interrupt = 1, limit = 10,
          after_interrupt = "sleep 0.5; : 3<>" .. q(fifo) })
        assert.equal(6, r.code, r.err)
        assert.matches("^cmsrec: interrupted", r.err)
        assert_clean(r)
        if json then
          assert.equal(1, lines(r.out), r.out)
          local j = cjson.decode(r.out)
          assert.is_false(j.ok)
          assert.equal("cancelled", j.error.kind)
        else
          assert.equal("", r.out)
        end
        assert.same({ "conf.fifo" }, listing(tmp))
      end
    end)
  end)

  -- ===== #1: -o - writes the recording to stdout =====

  describe("#1", function()
    it("#1 -o - writes exactly the recording to stdout, the summary to stderr", function()
      for _, id in ipairs({ "1748587841-77268", "zip-3" }) do
        local want = mock.expect(id)
        local r = cli("get --call-id " .. id .. " -o -", { env = mock_env(), cd = tmp })
        assert.equal(0, r.code, r.err)
        assert.equal(want.size, #r.out)
        assert.equal(want.sha256, H.sha256(r.out))
        assert.truthy(r.err:find(("saved to stdout (%s, %d bytes, sha256 %s)"):format(id == "zip-3" and "zip" or "wav",
          want.size, want.sha256), 1, true), r.err)
        assert.same({}, listing(tmp)) -- no file named "-"
      end
      -- --quiet: the recording only
      local r = cli("get --quiet --call-id wav-2000 -o -", { env = mock_env(), cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.equal("", r.err)
      assert.equal(mock.expect("wav-2000").sha256, H.sha256(r.out))
    end)

    it("#1 -o /dev/stdout behaves exactly like -o -", function()
      local want = mock.expect("wav-100000")
      local r = cli("get --call-id wav-100000 -o /dev/stdout", { env = mock_env(), cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.equal(want.sha256, H.sha256(r.out))
      assert.matches("saved to stdout %(wav, 100000 bytes", r.err)
      assert.equal(2, cli("get --json --call-id wav-2000 -o /dev/stdout", { env = mock_env(), cd = tmp }).code)
      assert.same({}, listing(tmp))
    end)

    it("#1 --json -o - and --unzip -o - are usage errors: exit 2, nothing downloaded", function()
      local r = cli("get --json --call-id wav-2000 -o -", { env = mock_env(), cd = tmp })
      assert.equal(2, r.code, r.err)
      assert.equal(1, lines(r.out), r.out)
      local j = cjson.decode(r.out)
      assert.equal("usage", j.error.kind)
      assert.matches("%-%-json", j.error.message)
      r = cli("get --unzip --call-id zip-3 -o -", { env = mock_env(), cd = tmp })
      assert.equal(2, r.code, r.err)
      assert.equal("", r.out)
      assert.matches("%-%-unzip", r.err)
      assert.same({}, listing(tmp))
    end)

    it("#1 a JSON error answer (notfound) with -o -: nothing on stdout, exit 3", function()
      local r = cli("get --call-id notfound -o -", { env = mock_env(), cd = tmp })
      assert.equal(3, r.code, r.err)
      assert.equal("", r.out)
      assert.matches("Record List is empty", r.err)
      assert.same({}, listing(tmp))
    end)

    it("#1 -o - when stdout cannot be written (/dev/full): exit 6, kind io", function()
      local r = cli("get --call-id wav-100000 -o -", { env = mock_env(), cd = tmp, stdout = "/dev/full" })
      assert.equal(6, r.code, r.err)
      assert.matches("stdout", r.err)
      assert.is_nil(r.err:find("saved", 1, true), r.err)
      assert_clean(r)
      assert.same({}, listing(tmp))
    end)
  end)
end)
