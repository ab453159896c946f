-- The fault suite: every class of transport and HTTP fault, against the mock
-- CMS (the "fault suite" modes and raw ports of test/mock_cms.py). Each case
-- checks (a) the error kind and a sane message, (b) that nothing was written
-- (download_file to a file that was absent, over a file that was there, into
-- a directory, unpacked into a directory, and the in-memory download), (c)
-- that the same client then downloads correctly, and (d) where the fault is a
-- stall, that on_progress kept being called meanwhile. The few faults that
-- must not fail (1xx, close-delimited bodies, extra bytes) check the bytes.
local H = require "spec.helper"
local cjson = require "cjson"
local mock = H.mock

-- mock.expect runs a Python process: ask once per callID
local expected = {}
local function expect(call_id)
  expected[call_id] = expected[call_id] or mock.expect(call_id)
  return expected[call_id]
end

local PRIOR = "PRIOR CONTENT: a recording saved earlier\n" .. ("\0\1\2\3"):rep(100)
local PRIOR_SHA = H.sha256(PRIOR)

describe("fault suite", function()
  local ready, dir

  setup(function()
    mock.start()
    ready = cjson.decode(H.read_file(mock.dir .. "/ready.json"))
  end)
  teardown(function() mock.stop() end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  -- https://127.0.0.1:PORT of one of the mock's raw fault ports
  local function port_url(name)
    return ("https://127.0.0.1:%d"):format(ready[name .. "_port"])
  end

  -- Arms the raw fault port `name` for its next `k` connections (GET /_mock/fault).
  local function arm(name, k)
    local out = H.capture(("curl -sSf 'http://127.0.0.1:%d/_mock/fault?%s=%d'")
      :format(ready.http_port, name, k))
    assert.equal(k, cjson.decode(out)[name], out)
  end

  -- A client on the mock; `extra` overrides H.config's keys.
  local function client(extra)
    return H.client(extra)
  end

  -- (a): a failure of kind `o.kind`, with a bounded, printable, secret-free message.
  local function check_error(res, err, o, way)
    local what = o.id .. " (" .. way .. ")"
    assert.is_nil(res, what .. ": expected a failure")
    assert.is_table(err, what)
    assert.equal(o.kind, err.kind, what .. ": " .. tostring(err))
    H.assert_no_secret(err)
    assert.matches("^cmsrec: %S.+ %(" .. o.kind .. " error[,%w ]*%)$", tostring(err))
    assert.is_true(#err.message > 10 and #err.message < 600, what .. ": " .. err.message)
    assert.is_nil(err.message:find("[%z\1-\31\127]"), what .. ": control bytes in the message")
    if o.message then assert.matches(o.message, err.message, 1, false, what) end
    if o.retryable ~= nil then assert.equal(o.retryable, err.retryable, what) end
    if o.curl_code then assert.equal(o.curl_code, err.curl_code, what) end
    if o.status then assert.equal(o.status, err.status, what) end
    if o.check then o.check(err, way) end
  end

  -- (c): the same client downloads right after, to a file and to memory.
  local function check_still_works(c)
    local want = expect("wav-7000")
    local path = dir .. "/after.wav"
    local info, err = c:download_file({ callID = "wav-7000" }, path)
    assert.is_table(info, "the client no longer works: " .. tostring(err))
    assert.equal(want.sha256, info.sha256)
    assert.equal(want.sha256, H.sha256(H.read_file(path)))
    os.remove(path)
    local data
    data, err = c:download{ callID = "wav-7001" }
    assert.is_string(data, "the client no longer works: " .. tostring(err))
    assert.equal(expect("wav-7001").sha256, H.sha256(data))
  end

  -- on_progress that counts its calls into `counter.n`
  local function counting(counter)
    return function() counter.n = counter.n + 1 end
  end

  -- The whole check of one failing case. o: id (callID), kind, and optionally
  -- config (client keys), url (the client's base_url), ways (a subset of
  -- prior, absent, dir, unzip, memory; all by default), stall (true: on_progress
  -- must have been called at least 3 times in each way), arm (a raw port
  -- to arm for the ways: one connection each), message, retryable, curl_code,
  -- status, check(err, way), after() (run before the client is tried again).
  local function fails(o)
    local cfg = o.config or {}
    if o.url then cfg.base_url = o.url end
    local c = client(cfg)
    local ways = o.ways or { "prior", "absent", "dir", "unzip", "memory" }
    if o.arm then arm(o.arm, #ways) end
    local req = { callID = o.id }
    for _, way in ipairs(ways) do
      local counter = { n = 0 }
      local opts = { on_progress = counting(counter) }
      local res, err
      if way == "prior" then -- (b) a file already there stays byte for byte
        local path = dir .. "/prior.wav"
        H.write_file(path, PRIOR)
        res, err = c:download_file(req, path, opts)
        assert.equal(PRIOR_SHA, H.sha256(H.read_file(path)), o.id .. ": the earlier file changed")
        assert.equal("prior.wav", H.ls(dir))
        os.remove(path)
      elseif way == "absent" then -- (b) no file where there was none
        local path = dir .. "/absent.wav"
        res, err = c:download_file(req, path, opts)
        assert.is_false(H.exists(path), o.id .. ": a file was left at dest")
        assert.equal("", H.ls(dir))
      elseif way == "dir" then -- (b) a directory gets nothing new
        local sub = dir .. "/d"
        assert(H.sh("mkdir " .. sub))
        H.write_file(sub .. "/keep.wav", PRIOR)
        res, err = c:download_file(req, sub, opts)
        assert.equal("keep.wav", H.ls(sub))
        assert.equal(PRIOR_SHA, H.sha256(H.read_file(sub .. "/keep.wav")))
        assert(H.sh("rm -r " .. sub))
      elseif way == "unzip" then -- (b) unpacking: the directory holds nothing new
        local sub = dir .. "/u"
        assert(H.sh("mkdir " .. sub))
        H.write_file(sub .. "/keep.txt", "kept")
        opts.unzip = true
        res, err = c:download_file(req, sub, opts)
        assert.equal("keep.txt", H.ls(sub))
        assert.equal("kept", H.read_file(sub .. "/keep.txt"))
        assert(H.sh("rm -r " .. sub))
      elseif way == "memory" then
        res, err = c:download(req, opts)
      end
      check_error(res, err, o, way)
      if o.stall then -- (d) progress kept coming while nothing did
        assert.is_true(counter.n >= 3, ("%s (%s): on_progress called %d times during the stall")
          :format(o.id, way, counter.n))
      end
    end
    if o.after then o.after() end
    check_still_works(c)
    c:close()
  end

  -- A fault that must not fail: every way gets exactly `want` (the bytes'
  -- sha256 and size), a file already at dest is replaced, and the client
  -- downloads right after.
  local function succeeds(o)
    local c = client(o.config)
    local req = { callID = o.id }
    local path = dir .. "/prior.wav"
    H.write_file(path, PRIOR)
    local info, err = c:download_file(req, path)
    assert.is_table(info, o.id .. ": " .. tostring(err))
    assert.equal(o.sha256, info.sha256)
    assert.equal(o.bytes, info.bytes)
    assert.equal("wav", info.format)
    assert.equal(o.sha256, H.sha256(H.read_file(path)))
    local sub = dir .. "/d"
    assert(H.sh("mkdir " .. sub))
    info, err = c:download_file(req, sub)
    assert.is_table(info, o.id .. ": " .. tostring(err))
    assert.equal(sub .. "/" .. o.id .. ".wav", info.path)
    assert.equal(o.sha256, H.sha256(H.read_file(info.path)))
    local data
    data, err = c:download(req)
    assert.is_string(data, o.id .. ": " .. tostring(err))
    assert.equal(o.sha256, H.sha256(data))
    check_still_works(c)
    c:close()
  end

  -- The first `n` bytes of wav-`size`, as the mock serves them.
  local function wav_prefix(size, n)
    local data = assert(H.download_with(nil, { callID = "wav-" .. size }))
    return data:sub(1, n)
  end

  -- ===== before any HTTP =====

  it("connection refused: a closed loopback port", function()
    -- the port refuses from the start; then it listens, for the same client to try again
    fails{ id = "wav-100", url = port_url("refused"), kind = "network", curl_code = 7,
           retryable = true, message = "connect", after = function() arm("refused", 0) end }
  end)

  it("TCP accepted, the TLS handshake stalls: connect_timeout", function()
    fails{ id = "wav-100", url = port_url("hang"), arm = "hang", ways = { "prior", "absent" },
           config = { connect_timeout = 1, timeout = 5 }, kind = "timeout", curl_code = 28,
           retryable = true, stall = true }
  end)

  it("dropped after accept, before any byte", function()
    fails{ id = "wav-100", url = port_url("cut"), arm = "cut", kind = "network",
           retryable = true }
  end)

  it("dropped mid-handshake: part of a TLS record, then close", function()
    fails{ id = "wav-100", url = port_url("halfhello"), arm = "halfhello", kind = "network",
           retryable = true }
  end)

  -- ===== stalls and timeouts =====

  it("a stall in the headers (slowheaders-S): timeout", function()
    fails{ id = "slowheaders-3", config = { timeout = 1 }, ways = { "prior", "absent" },
           kind = "timeout", curl_code = 28, retryable = true, stall = true }
  end)

  it("a stall in the body (stall-S): timeout", function()
    fails{ id = "stall-3", config = { timeout = 1.2 }, ways = { "prior", "absent" },
           kind = "timeout", curl_code = 28, retryable = true, stall = true }
  end)

  it("an answer only after the timeout (delay-MS-N): timeout", function()
    fails{ id = "delay-2500-5000", config = { timeout = 1 }, ways = { "prior", "memory" },
           kind = "timeout", curl_code = 28, retryable = true, stall = true }
  end)

  -- ===== drops =====

  it("dropped after the request, before the status line", function()
    fails{ id = "fault-nostatus", kind = "network", curl_code = 52, retryable = true }
  end)

  it("dropped mid-headers", function()
    fails{ id = "fault-midheaders", kind = "network", retryable = true,
           message = "headers" }
  end)

  it("dropped mid-body (drop-N)", function()
    fails{ id = "drop-300000", kind = "network", curl_code = 18, retryable = true }
  end)

  it("dropped mid-chunk", function()
    fails{ id = "fault-midchunk-100000", kind = "network", retryable = true }
  end)

  -- ===== body length =====

  -- The excess comes in the same TLS record as the body's end: OpenSSL holds it,
  -- where the idle-socket check cannot see it.
  it("a body longer than Content-Length: the announced bytes, the excess never reused", function()
    local want = expect("wav-5000")
    succeeds{ id = "fault-long-5000", sha256 = want.sha256, bytes = 5000 }
    -- the same on download_many's connections, one after the other
    local c = client()
    local r = c:download_many({ { callID = "fault-long-5000" }, { callID = "wav-5001" },
                                { callID = "fault-long-5000" }, { callID = "wav-5002" } },
                              { concurrency = 1 })
    c:close()
    assert.equal(4, r.ok)
    for i, id in ipairs{ "wav-5000", "wav-5001", "wav-5000", "wav-5002" } do
      assert.equal(expect(id).sha256, H.sha256(r[i].data), "result " .. i)
    end
  end)

  it("a body shorter than Content-Length (closed cleanly)", function()
    fails{ id = "fault-short-100000", kind = "network", curl_code = 18, retryable = true,
           message = "50000 bytes remaining" }
  end)

  -- ===== chunked encoding =====

  it("chunked: a chunk size that is not hex", function()
    fails{ id = "fault-badhex-100000", kind = "network", curl_code = 56,
           message = "chunked" }
  end)

  it("chunked: no final chunk before the close", function()
    fails{ id = "fault-noend-100000", kind = "network", curl_code = 18, retryable = true }
  end)

  it("chunked: a chunk longer than announced", function()
    fails{ id = "fault-chunklong-1000", kind = "network", curl_code = 56,
           message = "chunked" }
  end)

  -- ===== JSON answers =====

  -- Peak memory (KiB) of downloading `id` 3 times in a fresh interpreter, over a warm client.
  local function peak_growth(id)
    local out = H.run_measured(([[
      assert(client:download{ callID = "wav-5000" })
      local hwm0 = kb("VmHWM")
      for _ = 1, 3 do assert(not client:download{ callID = %q }) end
      print("growth", kb("VmHWM") - hwm0)
    ]]):format(id))
    return tonumber(out:match("growth%s+(%-?%d+)")), out
  end

  it("a huge (5 MiB) JSON answer at 200: bounded memory and message", function()
    fails{ id = "fault-hugejson-200", kind = "protocol", retryable = false, status = 200,
           message = "64 KiB" }
    if not H.under_asan() then -- the sanitizer's allocator makes the figures meaningless
      local growth, out = peak_growth("fault-hugejson-200")
      assert.is_number(growth, out)
      assert.is_true(growth < 2048, ("peak memory grew by %d KiB"):format(growth))
    end
  end)

  it("a huge (5 MiB) JSON answer at 500: kind http, bounded memory and message", function()
    fails{ id = "fault-hugejson-500", kind = "http", retryable = false, status = 500,
           message = "^the CMS answered HTTP 500: {\"resultCode\":\"1\",\"resultDesc\"" }
    if not H.under_asan() then
      local growth, out = peak_growth("fault-hugejson-500")
      assert.is_number(growth, out)
      assert.is_true(growth < 2048, ("peak memory grew by %d KiB"):format(growth))
    end
  end)

  it("malformed JSON at 200", function()
    fails{ id = "badjson", kind = "protocol", retryable = false, status = 200,
           message = "not a JSON object" }
  end)

  it("a JSON array at 200", function()
    fails{ id = "jsonarray", kind = "protocol", retryable = false, status = 200 }
  end)

  it("a JSON string at 200 with application/json", function()
    fails{ id = "fault-jsonstring", kind = "protocol", retryable = false, status = 200 }
  end)

  it("a JSON number at 200 with application/json", function()
    fails{ id = "fault-jsonnumber", kind = "protocol", retryable = false, status = 200 }
  end)

  -- ===== HTTP/1.0 close-delimited bodies =====

  it("HTTP/1.0, no Content-Length, closed at the end: succeeds", function()
    local want = expect("wav-100000")
    succeeds{ id = "fault-http10-100000", sha256 = want.sha256, bytes = 100000 }
  end)

  -- What the module can promise: without Content-Length or chunked encoding the
  -- end of the body is the end of the connection, so a cut looks like the end,
  -- with or without TLS close_notify (libcurl takes a bare close as the end
  -- too). The bytes are those that came; nothing tells it they are short.
  it("HTTP/1.0 cut short with a clean close: cannot be detected (the bytes that came)", function()
    local half = wav_prefix(100000, 50000)
    succeeds{ id = "fault-http10cut-100000", sha256 = H.sha256(half), bytes = 50000 }
  end)

  it("HTTP/1.0 cut short without TLS close_notify: cannot be detected either", function()
    local half = wav_prefix(100000, 50000)
    succeeds{ id = "fault-http10drop-100000", sha256 = H.sha256(half), bytes = 50000 }
  end)

  -- ===== 1xx =====

  it("100 Continue before the 200: succeeds", function()
    succeeds{ id = "fault-continue-5000", sha256 = expect("wav-5000").sha256, bytes = 5000 }
  end)

  it("103 Early Hints before the 200: succeeds", function()
    succeeds{ id = "fault-early-5000", sha256 = expect("wav-5000").sha256, bytes = 5000 }
  end)

  -- ===== headers =====

  it("two different Content-Length headers: protocol, never a wrong body", function()
    fails{ id = "fault-dupcl-5000", kind = "protocol", retryable = false,
           message = "Content%-Length" }
  end)

  it("a Content-Length list of two values: protocol, never a wrong body", function()
    fails{ id = "fault-clist-5000", kind = "protocol", retryable = false,
           message = "Content%-Length" }
  end)

  it("two Content-Type headers: succeeds (the body decides)", function()
    succeeds{ id = "fault-dupct-5000", sha256 = expect("wav-5000").sha256, bytes = 5000 }
  end)

  it("an oversized header line (bigheader)", function()
    fails{ id = "bigheader", kind = "protocol", retryable = false, message = "100 KB" }
  end)

  it("many headers (3000, about 100 KB): read, the answer understood", function()
    fails{ id = "fault-manyheaders", kind = "api", retryable = false, status = 200,
           message = "Record List is empty" }
  end)

  -- ===== redirects and stray answers =====

  it("3xx with Location: kind http, never followed, nothing sent there", function()
    for _, code in ipairs{ 301, 302, 303, 307, 308 } do
      mock.reset()
      fails{ id = "fault-redirect-" .. code, kind = "http", retryable = false, status = code,
             ways = { "absent", "memory" }, message = "never followed" }
      local stats = mock.stats()
      -- two failing ways and the two good downloads of check_still_works
      assert.equal(4, stats.requests)
      assert.is_nil(stats.last.path:find("redirected", 1, true))
      assert.is_nil(H.read_file(mock.dir .. "/server.log"):find("redirected=1", 1, true),
        "a request went to the Location")
    end
  end)

  it("an unrequested extra response on a kept-alive connection (extra-N)", function()
    local c = client()
    mock.reset()
    local path = dir .. "/first.wav"
    local info, err = c:download_file({ callID = "extra-5000" }, path)
    assert.is_table(info, tostring(err))
    assert.equal(expect("extra-5000").sha256, info.sha256)
    H.sh("sleep 0.8") -- the extra answer comes 0.3 s after the first
    assert.equal(1, mock.stats().extra_sent)
    -- the stray wav-5001 is never taken for the next call's answer
    info, err = c:download_file({ callID = "wav-5001" }, dir .. "/second.wav")
    assert.is_table(info, tostring(err))
    assert.equal(expect("wav-5001").sha256, info.sha256)
    local data = c:download{ callID = "extra-6000" }
    assert.equal(expect("extra-6000").sha256, H.sha256(data))
    H.sh("sleep 0.8")
    data, err = c:download{ callID = "wav-5002" }
    assert.is_string(data, tostring(err))
    assert.equal(expect("wav-5002").sha256, H.sha256(data))
    assert.equal("first.wav second.wav", H.ls(dir))
    check_still_works(c)
    c:close()
  end)

  -- ===== not HTTP =====

  it("a garbage status line", function()
    fails{ id = "fault-badstatus", kind = "protocol", retryable = false }
  end)

  it("HTTP/0.9: no status line (http09)", function()
    fails{ id = "http09", kind = "protocol", retryable = false, message = "no status line" }
  end)

  it("not HTTP at all (an SSH banner)", function()
    fails{ id = "fault-garbage", kind = "protocol", retryable = false }
  end)
end)
