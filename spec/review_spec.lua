-- The defects of the adversarial review (issue 7), one spec (or more) each,
-- named "#N ..." after the defect's number. Each failed before its fix.
local H = require "spec.helper"
local cmsrec = require "cmsrec"
local mock = H.mock

-- Root, and allowed to make a private mount namespace (a container may not be).
local ns_ok
local function is_root()
  if ns_ok == nil then
    ns_ok = H.capture("id -u"):match("^0") ~= nil and
      H.capture("env -u LD_PRELOAD unshare -m --propagation private true 2>&1; echo $?")
        :match("^0%s*$") ~= nil
  end
  return ns_ok
end

local q = H.q

-- The module's cpath, for a child interpreter started in a namespace.
local function child_lua(code)
  return ("%s -e %s"):format(H.LUA,
    q(("package.cpath = %q; local cmsrec = require 'cmsrec'; %s"):format(H.absolute_cpath(), code)))
end

-- Run `script` (sh) as root in a private mount namespace: mounts made there
-- (a tmpfs over a scratch directory, over /proc) vanish with it and never
-- touch the real /dev or /proc. The sanitizer preload is kept for the Lua
-- child only ($PRELOAD). Returns the output.
local function in_namespace(script)
  local preload = os.getenv("LD_PRELOAD") or ""
  local cmd = ("env -u LD_PRELOAD PRELOAD=%s unshare -m --propagation private sh -c %s 2>&1")
    :format(q(preload), q(script))
  return H.capture(cmd, true)
end

local function lua_in_ns(code) return 'env LD_PRELOAD="$PRELOAD" ' .. child_lua(code) end

-- Code for a child: a client on the mock, `show` prints a result or an error.
local function client_code()
  return ([[
    local client = cmsrec.new{ base_url = %q, ak = %q, sk = %q, cafile = %q, timeout = 20 }
    local function show(info, err)
      if info then print("OK " .. (info.path or "") .. " " .. (info.sha256 or ""))
      else print("ERR " .. err.kind .. " " .. err.message) end
    end
  ]]):format(mock.url, H.AK, H.SK, mock.ca)
end

local function file_type(path)
  return H.capture(("stat -c %%F '%s' 2>&1"):format(path)):gsub("%s+$", "")
end

-- Valid UTF-8 without C0, DEL or C1 controls (in the common Lua subset).
local function printable_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local need, cp
    if c < 128 then
      if c < 32 or c == 127 then return false end
      need, cp = 0, c
    elseif c >= 194 and c <= 223 then need, cp = 1, c - 192
    elseif c >= 224 and c <= 239 then need, cp = 2, c - 224
    elseif c >= 240 and c <= 244 then need, cp = 3, c - 240
    else return false end
    for k = 1, need do
      local b = s:byte(i + k)
      if not b or b < 128 or b > 191 then return false end
      cp = cp * 64 + (b - 128)
    end
    if cp >= 128 and cp <= 159 then return false end
    i = i + need + 1
  end
  return true
end

describe("review defects", function()
  local client, dir
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  describe("#1 download_file never replaces what is not a regular file", function()
    local function ns_run(setup_sh, code, after_sh)
      return in_namespace(("set -e; mount -t tmpfs tmpfs '%s'; cd '%s'; %s; %s; %s; echo; "
        .. "for f in *; do printf '%%s=' \"$f\"; stat -c %%F \"$f\"; done")
        :format(dir, dir, setup_sh, lua_in_ns(client_code() .. code), after_sh or "true"))
    end

    it("writes into a character device and leaves it one", function()
      if not is_root() then pending("needs root for mknod and unshare") return end
      local out = ns_run("mknod null c 1 3; ln -s null link",
        [[show(client:download_file({callID = "wav-3000"}, "null"))
          show(client:download_file({callID = "wav-3000"}, "link"))]])
      assert.matches("OK null " .. mock.expect("wav-3000").sha256, out, 1, true)
      assert.matches("OK link ", out, 1, true)
      assert.matches("null=character special file", out, 1, true)
      assert.matches("link=symbolic link", out, 1, true)
    end)

    it("writes into a FIFO (the bytes reach its reader) and leaves it one", function()
      if not is_root() then pending("needs root for unshare") return end
      local out = ns_run("mkfifo pipe; (timeout 10 sh -c 'sha256sum < pipe > sum') & true",
        [[show(client:download_file({callID = "wav-70000"}, "pipe"))]], "wait; cat sum")
      assert.matches("OK pipe", out, 1, true)
      assert.matches(mock.expect("wav-70000").sha256 .. "  -", out, 1, true)
      assert.matches("pipe=fifo", out, 1, true)
    end)

    it("refuses a block device and a dangling link before sending anything", function()
      if not is_root() then pending("needs root for mknod and unshare") return end
      mock.reset()
      local out = ns_run("mknod blk b 7 250; ln -s missing dangling",
        [[show(client:download_file({callID = "wav-3000"}, "blk"))
          show(client:download_file({callID = "wav-3000"}, "dangling"))]])
      assert.matches("ERR io 'blk' is a block device", out, 1, true)
      assert.matches("ERR io 'dangling' is a symbolic link to a missing file", out, 1, true)
      assert.matches("blk=block special file", out, 1, true)
      assert.matches("dangling=symbolic link", out, 1, true)
      assert.equal(0, mock.stats().requests)
    end)

    it("writes into the descriptor /dev/stdout names (appending to '>> log')", function()
      local log = dir .. "/log"
      H.write_file(log, "EARLIER\n")
      local out = H.capture(("%s 2>&1 >> %s"):format(child_lua(client_code()
        .. [[local info, err = client:download_file({callID = "wav-3000"}, "/dev/stdout")
             io.stdout:write("LATER\n")
             io.stderr:write(info and "OK" or tostring(err))]]), log), true)
      assert.equal("OK", out)
      local data = H.read_file(log)
      assert.equal(8 + 3000 + 6, #data)
      assert.equal("EARLIER\n", data:sub(1, 8))
      assert.equal(mock.expect("wav-3000").sha256, H.sha256(data:sub(9, 3008)))
      assert.equal("LATER\n", data:sub(3009))
      assert.equal("regular file", file_type(log))
    end)

    it("refuses a socket before sending anything", function()
      local sock = dir .. "/sock"
      assert.is_true(H.sh(("python3 -c 'import socket,sys; "
        .. "socket.socket(socket.AF_UNIX).bind(sys.argv[1])' %s"):format(sock)))
      mock.reset()
      local info, err = client:download_file({ callID = "wav-3000" }, sock)
      assert.is_nil(info)
      assert.equal("io", err.kind)
      assert.matches("is a socket", err.message, 1, true)
      assert.equal("socket", file_type(sock))
      assert.equal(0, mock.stats().requests)
    end)

    it("follows a link to a regular file: the file is replaced, the link stays", function()
      H.write_file(dir .. "/target.wav", "OLD")
      assert.is_true(H.sh(("ln -s target.wav '%s/link.wav'"):format(dir)))
      local info, err = client:download_file({ callID = "wav-3000" }, dir .. "/link.wav")
      assert.is_table(info, tostring(err))
      assert.equal("symbolic link", file_type(dir .. "/link.wav"))
      assert.equal(mock.expect("wav-3000").sha256, H.sha256(H.read_file(dir .. "/target.wav")))
      assert.equal("link.wav target.wav", H.ls(dir))
    end)
  end)

  describe("#2 on_progress and cancel work throughout", function()
    for _, id in ipairs({ "slowjson-3", "slow503-3" }) do
      it("keeps being called while an error answer arrives slowly (" .. id .. ")", function()
        local calls = 0
        local info, err = client:download_file({ callID = id }, dir, {
          on_progress = function(received) calls = calls + 1; assert(received == 0) end })
        assert.is_nil(info)
        assert.is_true(err.kind == "api" or err.kind == "http", err.kind)
        assert.is_true(calls >= 8, "on_progress called " .. calls .. " times in 3 s")
        assert.equal("", H.ls(dir))
      end)
    end

    it("cancels 1 s into a slow error answer", function()
      local t0 = os.time()
      local start
      local info, err = client:download_file({ callID = "slowjson-6" }, dir, {
        on_progress = function()
          start = start or os.clock()
          return os.time() - t0 < 2
        end })
      assert.is_nil(info)
      assert.equal("cancelled", err.kind)
      assert.is_true(os.time() - t0 <= 4, "took " .. (os.time() - t0) .. " s")
      assert.equal("", H.ls(dir))
    end)

    -- lua's Ctrl-C hook raises once, wherever it lands: also in the last report
    it("cancels when the final report raises: no file, nothing unpacked", function()
      local function raise_at_end(received, total)
        if total and received == total then error("interrupted!") end
      end
      local info, err = client:download_file({ callID = "wav-100000" }, dir,
        { on_progress = raise_at_end })
      assert.is_nil(info)
      assert.equal("cancelled", err.kind)
      info, err = client:download_file({ callID = "zip-3" }, dir,
        { unzip = true, on_progress = raise_at_end })
      assert.is_nil(info)
      assert.equal("cancelled", err.kind)
      assert.equal("", H.ls(dir))
    end)

    it("is called while a bundle is unpacked, and cancelling there leaves nothing", function()
      local done, during = false, 0
      local info, err = client:download_file({ callID = "zipbig-64" }, dir, {
        unzip = true,
        on_progress = function(received, total)
          if done then during = during + 1; return false end
          done = total ~= nil and received == total
        end })
      assert.is_nil(info)
      assert.equal("cancelled", err.kind)
      assert.equal(1, during)
      assert.equal("", H.ls(dir))
    end)
  end)

  describe("#3 the file sink works without /proc", function()
    local function ns_download(prefix)
      return in_namespace(("set -e; mount -t tmpfs tmpfs /proc; umask 077; %s %s")
        :format(prefix, lua_in_ns(client_code()
          .. ("show(client:download_file({callID = 'wav-4000'}, %q))"):format(dir))))
    end

    it("names the download, and follows the umask, with /proc hidden", function()
      if not is_root() then pending("needs root for unshare") return end
      local out = ns_download("")
      assert.matches("OK " .. dir .. "/wav-4000.wav " .. mock.expect("wav-4000").sha256, out,
        1, true)
      assert.equal("wav-4000.wav", H.ls(dir))
      assert.equal("600", (H.capture("stat -c %a " .. dir .. "/wav-4000.wav"):gsub("%s+$", "")))
    end)

    it("falls back to a named temporary file without linkat(AT_EMPTY_PATH)", function()
      if not is_root() then pending("needs root for unshare") return end
      -- without CAP_DAC_READ_SEARCH linkat(AT_EMPTY_PATH) is refused, as for any user
      local out = ns_download("setpriv --inh-caps=-dac_read_search "
        .. "--bounding-set=-dac_read_search")
      assert.matches("OK " .. dir .. "/wav-4000.wav " .. mock.expect("wav-4000").sha256, out,
        1, true)
      assert.equal("wav-4000.wav", H.ls(dir))
      assert.equal("600", (H.capture("stat -c %a " .. dir .. "/wav-4000.wav"):gsub("%s+$", "")))
    end)
  end)

  it("#4 a full disk while unpacking says 'No space left on device'", function()
    if not is_root() then pending("needs root for unshare") return end
    local out = in_namespace(("set -e; mount -t tmpfs -o size=1m tmpfs '%s'; %s; ls -A '%s'")
      :format(dir, lua_in_ns(client_code() .. ([[
        show(client:download_file({callID = "zipbig-1"}, %q, {unzip = true}))
        local data = client:download{callID = "zipbig-1"}
        local list, err = cmsrec.unzip(data, %q)
        print("ERR " .. err.kind .. " " .. err.message)]]):format(dir, dir)), dir))
    local _, n = out:gsub("ERR io writing 'big_%d.wav' failed: No space left on device", "")
    assert.equal(2, n, out)
    assert.not_matches("%.cmsrec", out) -- no staging directory, no temporary file left
  end)

  describe("#5 an encoded body is decoded before it is judged", function()
    it("a gzipped JSON error is an api error, never a file", function()
      local info, err = client:download_file({ callID = "gzipjson" }, dir)
      assert.is_nil(info)
      assert.equal("api", err.kind)
      assert.equal("1", err.result_code)
      assert.equal("", H.ls(dir))
    end)

    it("a gzipped recording arrives decoded", function()
      local data, info = client:download{ callID = "gzipwav-100000" }
      assert.is_string(data, tostring(info))
      assert.equal(mock.expect("gzipwav-100000").sha256, H.sha256(data))
      assert.equal("wav", info.format)
    end)
  end)

  it("#6 an unrequested answer that arrived while idle is never the next call's", function()
    local c = H.client()
    mock.reset()
    local first = c:download{ callID = "extra-5000" }
    assert.equal(mock.expect("extra-5000").sha256, H.sha256(first))
    H.sh("sleep 0.8") -- the extra answer is sent 0.3 s after the first
    local second, info = c:download{ callID = "wav-3000" }
    c:close()
    assert.is_string(second, tostring(info))
    assert.equal(mock.expect("wav-3000").sha256, H.sha256(second))
    assert.equal(1, mock.stats().extra_sent)
  end)

  -- HTTP/1.1 cannot tell a stray answer that comes after the next request was
  -- sent from that request's answer: reuse = false takes no chances.
  it("#6 with reuse = false, back-to-back calls each get their own answer", function()
    local conf = H.config()
    conf.reuse = false -- (H.config takes false as "leave the key out")
    local c = cmsrec.new(conf)
    mock.reset()
    local first = c:download{ callID = "extra-5000" }
    local second, info = c:download{ callID = "wav-3000" }
    c:close()
    assert.equal(3, mock.stats().connections) -- two downloads, and this query
    assert.equal(mock.expect("extra-5000").sha256, H.sha256(first))
    assert.is_string(second, tostring(info))
    assert.equal(mock.expect("wav-3000").sha256, H.sha256(second))
  end)

  describe("#7 server text is valid UTF-8 without control characters", function()
    for _, id in ipairs({ "gbkdesc", "c1desc", "badtext" }) do
      it("in the error of " .. id, function()
        local data, err = client:download{ callID = id }
        assert.is_nil(data)
        for _, k in ipairs({ "message", "result_desc" }) do
          assert.is_true(printable_utf8(err[k] or ""), k .. ": " .. tostring(err[k]))
        end
        assert.is_true(printable_utf8(tostring(err)))
      end)
    end

    it("shows text that is partly not UTF-8, cleaned, rather than '(binary)'", function()
      local _, err = client:download{ callID = "badtext" }
      assert.matches("bad ?31m gateway ???? ?[2J end", err.message, 1, true)
    end)

    it("and the CLI's --json output parses", function()
      local out = H.capture(("CMSREC_URL=%s CMSREC_AK=%s CMSREC_SK=%s CMSREC_CAFILE=%s "
        .. "LUA_CPATH=%s %s bin/cmsrec get --call-id gbkdesc --json -o %s 2>/dev/null | "
        .. "python3 -c 'import json,sys; "
        .. "print(json.loads(sys.stdin.buffer.read().decode())[\"error\"][\"kind\"])'")
        :format(mock.url, H.AK, H.SK, mock.ca, q(H.absolute_cpath()), H.LUA, dir), true)
      assert.equal("api", (out:gsub("%s+$", "")))
    end)

    it("a ZIP member name with a C1 control is refused", function()
      local info, err = client:download_file({ callID = "zipbad-c1name" }, dir, { unzip = true })
      assert.is_nil(info)
      assert.equal("protocol", err.kind)
      assert.is_true(printable_utf8(err.message), err.message)
      assert.equal("", H.ls(dir))
      local list, err2 = cmsrec.unzip((client:download{ callID = "zipbad-c1name" }))
      assert.is_nil(list)
      assert.equal("protocol", err2.kind)
    end)
  end)

  describe("#9 error kinds say what happened", function()
    it("an answer without a status line (HTTP/0.9) is protocol, not invalid", function()
      local data, err = client:download{ callID = "http09" }
      assert.is_nil(data)
      assert.equal("protocol", err.kind)
      assert.is_nil(err.field)
    end)

    it("a 200 KB header line is protocol, not nomem", function()
      local data, err = client:download{ callID = "bigheader" }
      assert.is_nil(data)
      assert.equal("protocol", err.kind)
    end)

    it("a ZIP declaring a 3 GiB member is protocol under a memory limit", function()
      local data = assert(client:download{ callID = "zipbad-declared" })
      local path = dir .. "/declared.zip"
      H.write_file(path, data)
      local limit = H.under_asan()
        and "ASAN_OPTIONS=max_allocation_size_mb=1024:allocator_may_return_null=1:detect_leaks=0 "
        or "ulimit -v 2000000; "
      local out = H.capture(("%s%s 2>&1"):format(limit, child_lua(([[
        local list, err = cmsrec.unzip(%q)
        print(list and "OK" or "ERR " .. err.kind .. " " .. err.message)]]):format(path))), true)
      assert.matches("^ERR protocol ", out)
    end)
  end)

  it("#10 a directory named <callID>.wav stops the download at its first bytes", function()
    assert.is_true(H.sh(("mkdir '%s/wav-50000000.wav'"):format(dir)))
    local most = 0
    local info, err = client:download_file({ callID = "wav-50000000" }, dir, {
      on_progress = function(received) most = math.max(most, received) end })
    assert.is_nil(info)
    assert.equal("io", err.kind)
    assert.matches("is a directory", err.message, 1, true)
    assert.is_true(most < 1000000, "received " .. most .. " bytes first")
    assert.equal("wav-50000000.wav", H.ls(dir))
    assert.equal("", H.ls(dir .. "/wav-50000000.wav"))
  end)

  describe("#11 NUL bytes in paths are refused, never cut", function()
    it("in the download_file path", function()
      local ok, msg = pcall(client.download_file, client, { callID = "wav-3000" },
        dir .. "/keep.wav\0.tmp")
      assert.is_false(ok)
      assert.matches("NUL", msg)
      assert.equal("", H.ls(dir))
    end)

    it("in base_url, path and the unzip directory", function()
      local ok, msg = pcall(cmsrec.new, H.config{ base_url = mock.url .. "\0evil" })
      assert.is_false(ok)
      assert.matches("base_url.*NUL", msg)
      ok, msg = pcall(cmsrec.new, H.config{ path = "/rest/x\0y" })
      assert.is_false(ok)
      assert.matches("path.*NUL", msg)
      ok, msg = pcall(cmsrec.unzip, client:download{ callID = "zip-1" }, dir .. "/a\0b")
      assert.is_false(ok)
      assert.matches("NUL", msg)
      assert.equal("", H.ls(dir))
    end)
  end)

  it("#14 a ZIP holding both 'a' and 'a/' is refused", function()
    local info, err = client:download_file({ callID = "zipbad-filedir" }, dir, { unzip = true })
    assert.is_nil(info)
    assert.equal("protocol", err.kind)
    assert.matches("'a' is both a file and a directory", err.message, 1, true)
    assert.equal("", H.ls(dir))
    local list, err2 = cmsrec.unzip((client:download{ callID = "zipbad-filedir" }))
    assert.is_nil(list)
    assert.equal("protocol", err2.kind)
  end)
end)
