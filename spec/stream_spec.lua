-- download_file, sinks, progress and max_size: recordings of any size, and
-- nothing left behind when anything fails.
local H = require "spec.helper"
local mock = H.mock

describe("client:download_file", function()
  local client, dir
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  it("streams to a file path: served bytes, sha256, info", function()
    local path = dir .. "/call.wav"
    local info, err = client:download_file({ callID = "wav-5000000" }, path)
    assert.is_table(info, tostring(err))
    local want = mock.expect("wav-5000000")
    assert.equal(path, info.path)
    assert.equal(want.sha256, info.sha256)
    assert.equal(want.sha256, H.sha256(H.read_file(path)))
    assert.equal(want.size, info.bytes)
    assert.equal("wav", info.format)
    assert.equal(200, info.status)
    assert.equal("call.wav", H.ls(dir)) -- no temporary file left
  end)

  it("names the file from the callID and the format in a directory", function()
    assert.equal(dir .. "/1748587841-77268.wav",
      client:download_file({ callID = "1748587841-77268" }, dir).path)
    assert.equal(dir .. "/zip-2.zip", client:download_file({ callID = "zip-2" }, dir).path)
    assert.equal(dir .. "/unknown-300.bin", client:download_file({ callID = "unknown-300" }, dir).path)
    assert.equal(dir .. "/odd_.._x_y.wav",
      client:download_file({ callID = "odd/../x y" }, dir .. "/").path)
    assert.equal(dir .. "/_odd.wav", client:download_file({ callID = ".odd" }, dir).path)
    assert.equal("1748587841-77268.wav _odd.wav odd_.._x_y.wav unknown-300.bin zip-2.zip",
      H.ls(dir))
  end)

  it("replaces an existing file only when the download succeeds", function()
    local path = dir .. "/call.wav"
    H.write_file(path, "ORIGINAL")
    local info = client:download_file({ callID = "wav-2000" }, path)
    assert.equal(mock.expect("wav-2000").sha256, H.sha256(H.read_file(path)))
    assert.equal(2000, info.bytes)
  end)

  it("respects the umask for the new file", function()
    local path = dir .. "/call.wav"
    client:download_file({ callID = "wav-2000" }, path)
    local mode = H.capture("stat -c %a '" .. path .. "'"):gsub("%s+$", "")
    local umask = tonumber(H.capture("sh -c umask"), 8)
    local want, bit = 0, 1 -- 0666 & ~umask, bit by bit (no bitwise operators in Lua 5.1)
    for _ = 1, 9 do
      if tonumber("666", 8) % (2 * bit) >= bit and umask % (2 * bit) < bit then want = want + bit end
      bit = bit * 2
    end
    assert.equal(("%o"):format(want), mode)
  end)

  -- Each failure: the right kind, no file, no temp file, the old file intact.
  local failures = {
    { "a JSON error at HTTP 200", { callID = "notfound" }, nil, "api" },
    { "a JSON error after blank lines", { callID = "wsjson" }, nil, "api" },
    { "an HTML page at HTTP 200", { callID = "html" }, nil, "protocol" },
    { "a connection dropped mid-body", { callID = "drop-3000000" }, nil, "network" },
    { "a stall past the timeout", { callID = "stall-5" }, nil, "timeout" },
    { "a 503", { callID = "http-503" }, nil, "http" },
    { "max_size exceeded (Content-Length)", { callID = "wav-100000" }, { max_size = 1000 }, "too_large" },
    { "max_size exceeded (chunked)", { callID = "chunked-100000" }, { max_size = 50000 }, "too_large" },
    { "on_progress returning false", { callID = "wav-30000000" },
      { on_progress = function() return false end }, "cancelled" },
    { "on_progress raising", { callID = "wav-30000000" },
      { on_progress = function() error("boom") end }, "cancelled" },
  }
  for _, case in ipairs(failures) do
    local name, req, opts, kind = case[1], case[2], case[3], case[4]
    it("leaves nothing behind on " .. name, function()
      local c = H.client{ timeout = 2 }
      local path = dir .. "/call.wav"
      H.write_file(path, "ORIGINAL")
      local info, err = c:download_file(req, path, opts)
      assert.is_nil(info)
      assert.equal(kind, err.kind, tostring(err))
      assert.equal("ORIGINAL", H.read_file(path))
      assert.equal("call.wav", H.ls(dir))
      -- and in directory mode: nothing at all
      H.rmrf(dir)
      dir = H.tmpdir()
      info, err = c:download_file(req, dir, opts)
      c:close()
      assert.is_nil(info)
      assert.equal(kind, err.kind)
      assert.equal("", H.ls(dir))
    end)
  end

  it("leaves nothing behind when the disk is full", function()
    local mnt = dir .. "/small"
    assert(H.sh("mkdir " .. mnt))
    if not H.sh("mount -t tmpfs -o size=1m cmsrec-test " .. mnt .. " 2>/dev/null") then
      pending("mounting a small tmpfs needs root")
      return
    end
    H.write_file(mnt .. "/call.wav", "ORIGINAL")
    local info, err = client:download_file({ callID = "wav-3000000" }, mnt .. "/call.wav")
    local left, content = H.ls(mnt), H.read_file(mnt .. "/call.wav")
    assert(H.sh("umount " .. mnt))
    assert.is_nil(info)
    assert.equal("io", err.kind)
    assert.matches("disk full", err.message)
    assert.equal("call.wav", left)
    assert.equal("ORIGINAL", content)
  end)

  it("leaves nothing behind even when the process is killed mid-body", function()
    local code = ([[
      local c = require("cmsrec").new{ base_url = %q, ak = %q, sk = %q, cafile = %q }
      c:download_file({ callID = "stall-10" }, %q)
    ]]):format(mock.url, H.AK, H.SK, mock.ca, dir)
    H.capture(("%s -e %s & pid=$!; sleep 1; kill -KILL $pid; wait $pid 2>/dev/null"):format(
      H.LUA, H.q(("package.cpath = %q; %s"):format(package.cpath, code))), true)
    if H.under_asan() then
      -- the sanitizer build uses a named temporary file (no O_TMPFILE): a killed
      -- process leaves that hidden file, as the README says, and nothing else
      assert.matches("^%.cmsrec%-%x%x%x%x%x%x%x%x%x%x%x%x$", H.ls(dir))
    else
      assert.equal("", H.ls(dir)) -- the unnamed temporary file died with the process
    end
  end)

  it("fails before sending anything when the destination is unusable", function()
    mock.reset()
    local info, err = client:download_file({ callID = "wav-100" }, dir .. "/missing/call.wav")
    assert.is_nil(info)
    assert.equal("io", err.kind)
    assert.matches("/missing", err.message)
    info, err = client:download_file({ callID = "wav-100" }, dir .. "/missing/")
    assert.equal("io", err.kind)
    assert.equal(0, mock.stats().requests)
  end)

  it("raises on misuse of the arguments", function()
    assert.has_error(function() client:download_file({ callID = "1" }) end)
    assert.has_error(function() client:download_file({ callID = "1" }, dir, { sink = print }) end)
    assert.has_error(function() client:download_file({ callID = "1" }, dir, { on_progres = print }) end)
    assert.has_error(function() client:download_file({ callID = "1" }, dir, { max_size = -1 }) end)
  end)
end)

describe("opts.sink", function()
  local client
  H.with_mock(setup, teardown, function(c) client = c end)

  it("streams every byte to a Lua function", function()
    local chunks = {}
    local info = client:download_file({ callID = "chunked-2000000" }, nil, {
      sink = function(chunk) chunks[#chunks + 1] = chunk; return true end,
    })
    local data = table.concat(chunks)
    local want = mock.expect("chunked-2000000")
    assert.equal(want.sha256, H.sha256(data))
    assert.equal(want.sha256, info.sha256)
    assert.equal(want.size, info.bytes)
    assert.is_nil(info.path)
    assert.is_true(#chunks > 1)
  end)

  it("is never given the bytes of an error answer, even after blanks, or of text", function()
    local cases = { notfound = "api", wsjson = "api", bom = "api", html = "protocol",
                    jsonarray = "protocol", blank = "protocol" }
    for id, kind in pairs(cases) do
      local called = false
      local info, err = client:download_file({ callID = id }, nil, {
        sink = function(chunk) if chunk then called = true end return 1 end,
      })
      assert.is_nil(info, id)
      assert.equal(kind, err.kind, id)
      assert.is_false(called, id)
    end
    local _, err = client:download{ callID = "html" }
    assert.matches("with text, not a recording: <!DOCTYPE html>", err.message)
  end)

  it("aborts with kind io when it returns nil, msg, false, or raises", function()
    for _, sink in ipairs{
      function() return nil, "disk quota" end,
      function() return false end,
      function() error("exploded") end,
    } do
      local info, err = client:download_file({ callID = "wav-2000000" }, nil, { sink = sink })
      assert.is_nil(info)
      assert.equal("io", err.kind)
      assert.matches("sink", err.message)
    end
    assert.equal(100, #client:download{ callID = "wav-100" }) -- the client is still usable
  end)
end)

describe("progress and max_size", function()
  local client
  H.with_mock(setup, teardown, function(c) client = c end)

  it("reports progress at a bounded rate, ending with the full size", function()
    local calls, t0 = {}, os.time()
    local data = client:download({ callID = "wav-60000000" }, {
      on_progress = function(received, total) calls[#calls + 1] = { received, total } end,
    })
    local seconds = os.time() - t0 + 1
    assert.equal(60000000, #data)
    assert.is_true(#calls >= 2) -- at least one report before the final one
    assert.is_true(calls[1][1] < 60000000)
    -- at most one call per 200 ms, plus the final one (16 KiB chunks would be ~3700)
    assert.is_true(#calls <= seconds * 5 + 2, #calls .. " calls in " .. seconds .. " s")
    assert.same({ 60000000, 60000000 }, calls[#calls])
    for i = 2, #calls do assert.is_true(calls[i][1] >= calls[i - 1][1]) end
  end)

  it("reports while waiting for the answer, so it can cancel a stalled request", function()
    local calls = 0
    local t0 = os.time()
    local data, err = client:download({ callID = "slowheaders-5" }, {
      on_progress = function(received, total)
        calls = calls + 1
        assert(received == 0 and total == nil)
        return calls < 3
      end,
    })
    assert.is_nil(data)
    assert.equal("cancelled", err.kind)
    assert.is_true(os.time() - t0 <= 3)
  end)

  it("passes total = nil when the length is unknown (chunked)", function()
    local last
    client:download({ callID = "chunked-3000000" }, {
      on_progress = function(received, total) last = { received, total } end,
    })
    assert.equal(3000000, last[1])
    assert.is_nil(last[2])
  end)

  it("refuses a body over max_size early from Content-Length", function()
    mock.reset()
    local data, err = client:download({ callID = "wav-200000000" }, { max_size = 1000000 })
    assert.is_nil(data)
    assert.equal("too_large", err.kind)
    assert.matches("announced", err.message)
    assert.is_false(err.retryable)
  end)

  it("has a default max_size of 1 GiB for in-memory downloads", function()
    local data, err = client:download{ callID = "wav-1073741825" } -- one byte over
    assert.is_nil(data)
    assert.equal("too_large", err.kind)
    assert.matches("max_size %(1073741824 bytes%): the server announced more", err.message)
  end)

  it("counts a chunked body against max_size, from the config or per call", function()
    local c = H.client{ max_size = 100000 }
    local data, err = c:download{ callID = "chunked-300000" }
    assert.is_nil(data)
    assert.equal("too_large", err.kind)
    data = c:download({ callID = "chunked-300000" }, { max_size = 400000 })
    c:close()
    assert.equal(300000, #data)
  end)

  it("rejects a bad max_size in the config", function()
    assert.has_error(function() H.client{ max_size = 0 } end,
      "cmsrec.new: option 'max_size' must be a positive integer (bytes)")
    assert.has_error(function() H.client{ max_size = 1.5 } end)
  end)
end)

describe("memory", function()
  setup(function() mock.start() end)
  teardown(function() mock.stop() end)

  -- VmHWM is the process's peak RSS; the child does nothing but the download.
  local function peak_rss_mb(code)
    local out = H.run_measured(code ..
      '\nprint(("peak_mb=%.1f before_mb=%.1f"):format(kb("VmHWM") / 1024, rss0 / 1024))')
    local peak, before = out:match("peak_mb=([%d.]+) before_mb=([%d.]+)")
    assert(peak, out)
    return tonumber(peak), tonumber(before), out
  end

  it("streams 200 MB to a file with a peak RSS under 64 MB", function()
    if H.under_asan() then return pending("RSS is meaningless under AddressSanitizer") end
    local dir = H.tmpdir()
    local peak, _, out = peak_rss_mb(([[
      local info = assert(client:download_file({ callID = "wav-200000000" }, %q))
      print("sha256=" .. info.sha256)
    ]]):format(dir .. "/big.wav"))
    local sha = out:match("sha256=(%x+)")
    local on_disk = H.capture("sha256sum " .. dir .. "/big.wav"):match("^(%x+)")
    H.rmrf(dir)
    local want = mock.expect("wav-200000000").sha256
    assert.equal(want, sha)
    assert.equal(want, on_disk)
    assert.is_true(peak < 64, ("peak RSS %.1f MB"):format(peak))
    print(("# 200 MB to file: peak RSS %.1f MB"):format(peak))
  end)

  it("keeps an in-memory download near 2x the body", function()
    if H.under_asan() then return pending("RSS is meaningless under AddressSanitizer") end
    local size = 100000000
    local peak, before = peak_rss_mb(([[
      local data = assert(client:download{ callID = "wav-%d" })
      assert(#data == %d)
    ]]):format(size, size))
    local ratio = (peak - before) * 1024 * 1024 / size
    assert.is_true(ratio < 2.2, ("peak-to-body ratio %.2f"):format(ratio))
    print(("# 100 MB in memory: peak-to-body ratio %.2f"):format(ratio))
  end)
end)
