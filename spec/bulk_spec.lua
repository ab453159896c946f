-- Retries on every download path, max_rate, and client:download_many: a batch
-- on the multi interface over kept-alive connections.
local H = require "spec.helper"
local mock = H.mock
local cmsrec = require "cmsrec"

local function now()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("*l"))
  p:close()
  return t
end

local function ids(prefix, n, first)
  local reqs = {}
  for i = 1, n do reqs[i] = { callID = prefix .. ((first or 1000) + i) } end
  return reqs
end

describe("retries", function()
  local dir
  H.with_mock(setup, teardown)
  before_each(function() mock.reset(); dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  it("default 2: flow control, then 503, each with Retry-After, then the recording", function()
    local c = H.client{ retries = false } -- the module's default
    local t0 = now()
    local data, info = c:download{ callID = "retry-2-flow-3000" }
    assert.is_string(data, tostring(info))
    assert.equal(3, info.attempts)
    assert.is_true(now() - t0 >= 2) -- Retry-After: 1, twice
    assert.equal(mock.expect("wav-3000").sha256, H.sha256(data))
    info = c:download_file({ callID = "retry-2-503-3000" }, dir .. "/x.wav")
    assert.equal(3, info.attempts)
    assert.equal(mock.expect("wav-3000").sha256, H.sha256(H.read_file(dir .. "/x.wav")))
    c:close()
  end)

  it("gives up after `retries`, reporting the last error and the attempts", function()
    local c = H.client{ retries = 1 }
    local data, err = c:download{ callID = "retry-3-flow-3000" }
    assert.is_nil(data)
    assert.equal("api", err.kind)
    assert.equal("0300008", err.result_code)
    assert.equal(2, err.attempts)
    assert.equal(2, mock.stats().per_call["retry-3-flow-3000"])
    -- per call: opts.retries beats the client's
    data, err = c:download({ callID = "retry-3-503-3000" }, { retries = 0 })
    assert.equal(1, err.attempts)
    c:close()
  end)

  it("a dropped transfer to a file is tried again: the file whole, no partial file", function()
    local c = H.client{ retries = 2 }
    local info, err = c:download_file({ callID = "retry-1-drop-200000" }, dir)
    assert.is_table(info, tostring(err))
    assert.equal(2, info.attempts)
    assert.equal(mock.expect("wav-200000").sha256, info.sha256)
    assert.equal("retry-1-drop-200000.wav", H.ls(dir))
    c:close()
  end)

  it("a timeout is tried again, and each attempt is signed afresh", function()
    local signed = 0
    local c = H.client{ retries = 2, timeout = 2, ak = false, sk = false,
      authorization = function(method, path, headers, body)
        signed = signed + 1
        return cmsrec.sign{ ak = H.AK, sk = H.SK, path = path, body = body, headers = headers }
      end }
    local data, info = c:download{ callID = "retry-1-slow-5000" }
    assert.is_string(data, tostring(info))
    assert.equal(2, info.attempts)
    assert.equal(2, signed)
    c:close()
  end)

  it("never retries auth, invalid, not found, or after bytes reached a Lua sink", function()
    local c = H.client{ retries = 2 }
    local _, err = c:download{ callID = "auth-401" }
    assert.equal("auth", err.kind)
    assert.equal(1, err.attempts)
    assert.equal(1, mock.stats().per_call["auth-401"])
    _, err = c:download{ callID = "notfound" }
    assert.equal(1, err.attempts)
    _, err = c:download{ callID = "" }
    assert.equal("invalid", err.kind)
    assert.equal(0, err.attempts)
    local got = 0
    _, err = c:download({ callID = "retry-1-drop-200000" },
      { sink = function(chunk) got = got + #(chunk or "") return 1 end })
    assert.equal("network", err.kind)
    assert.equal(1, err.attempts) -- the sink saw bytes: they cannot be taken back
    assert.is_true(got > 0)
    -- but a flow-control answer reached no sink: tried again
    local ok, info = c:download({ callID = "retry-1-flow-3000" },
      { sink = function() return 1 end })
    assert.is_true(ok)
    assert.equal(2, info.attempts)
    c:close()
  end)

  it("on_progress keeps being called while waiting to try again, and can cancel", function()
    local c = H.client{ retries = 2 }
    local calls, t0 = 0, now()
    local _, err = c:download({ callID = "retry-2-flow-3000" }, {
      on_progress = function() calls = calls + 1; return now() - t0 < 0.5 end,
    })
    assert.equal("cancelled", err.kind)
    assert.is_true(now() - t0 < 1.5)
    assert.is_true(calls >= 2)
    c:close()
  end)

  it("a device written into is not retried after its first byte", function()
    local out = H.run_lua(([[
      local cmsrec = require "cmsrec"
      local c = cmsrec.new{ base_url = %q, ak = %q, sk = %q, cafile = %q, retries = 2 }
      local info, err = c:download_file({ callID = "retry-1-drop-20000" }, "/dev/stderr")
      io.stdout:write("RESULT ", tostring(info), " ", err.kind, " ", err.attempts, "\n")
    ]]):format(mock.url, H.AK, H.SK, mock.ca))
    assert.matches("RESULT nil network 1", out)
  end)

  it("a reader is paced by max_rate and tried again before its first byte", function()
    local c = H.client{ max_rate = 4, retries = 2 }
    for i = 1, 3 do
      for _ in c:chunks({ callID = "wav-" .. (300 + i) }) do end
    end
    local t = mock.stats().request_times
    for i = 2, 3 do assert.is_true(t[i] - t[i - 1] >= 0.23, "spacing " .. (t[i] - t[i - 1])) end
    local reader = assert(c:reader({ callID = "retry-1-503-1000" }))
    local parts = {}
    for chunk in reader do parts[#parts + 1] = chunk end
    assert.equal(mock.expect("wav-1000").sha256, H.sha256(table.concat(parts)))
    assert.equal(2, reader:info().attempts)
    local _, err = c:reader({ callID = "retry-3-503-1000" }, { retries = 1 })()
    assert.equal("http", err.kind)
    assert.equal(2, err.attempts)
    c:close()
  end)

  it("max_rate paces a client's requests", function()
    local c = H.client{ max_rate = 5 }
    for i = 1, 6 do assert(c:download{ callID = "wav-" .. (100 + i) }) end
    local t = mock.stats().request_times
    assert.equal(6, #t)
    for i = 2, 6 do assert.is_true(t[i] - t[i - 1] >= 0.18, "spacing " .. (t[i] - t[i - 1])) end
    c:close()
  end)
end)

describe("client:download_many", function()
  local client, dir
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() mock.reset(); dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  it("in memory: every recording as served, results in order, counts", function()
    local reqs = ids("wav-", 30)
    reqs[31] = { callID = "notfound" }
    reqs[32] = { callID = "x", beginTime = "yesterday" }
    local r = client:download_many(reqs, { concurrency = 6 })
    assert.equal(30, r.ok)
    assert.equal(2, r.failed)
    assert.equal(0, r.not_attempted)
    for i = 1, 30 do
      assert.equal(mock.expect(reqs[i].callID).sha256, H.sha256(r[i].data))
      assert.equal(r[i].info.sha256 or H.sha256(r[i].data), H.sha256(r[i].data))
      assert.equal(1, r[i].info.attempts)
    end
    assert.equal("api", r[31].err.kind)
    assert.equal("invalid", r[32].err.kind)
    assert.equal("beginTime", r[32].err.field)
    assert.is_nil(r[31].data)
  end)

  it("concurrency 16 is at least 8x faster than 1 at 50 ms latency; connections as allowed", function()
    mock.ctl("set", "latency_ms", 50)
    local one = ids("wav-", 20, 2000)
    local t0 = now()
    local r1 = client:download_many(one, { concurrency = 1 })
    local rate1 = 20 / (now() - t0)
    assert.equal(20, r1.ok)
    local sixteen = ids("wav-", 200, 3000)
    mock.reset()
    mock.ctl("set", "latency_ms", 50)
    t0 = now()
    local r16 = client:download_many(sixteen, { concurrency = 16 })
    local rate16 = 200 / (now() - t0)
    local st = mock.stats()
    mock.ctl("set", "latency_ms", 0)
    assert.equal(200, r16.ok)
    assert.is_true(rate16 >= 8 * rate1, ("%.0f/s at 16 vs %.0f/s at 1"):format(rate16, rate1))
    assert.is_true(st.max_open <= 16, st.max_open .. " connections open at once")
    assert.is_true(st.https_connections <= 16, st.https_connections .. " connections")
    assert.is_true(st.handshakes <= st.https_connections)
    assert.equal(200, st.requests)
  end)

  it("to a directory: every guarantee of download_file; unzip gives each call its own", function()
    local r = client:download_many({ { callID = "wav-5000" }, { callID = "zip-2" },
      { callID = "notfound" } }, { dir = dir .. "/out", concurrency = 3 })
    assert.equal(2, r.ok)
    assert.equal(dir .. "/out/wav-5000.wav", r[1].info.path)
    assert.equal(mock.expect("wav-5000").sha256, H.sha256(H.read_file(r[1].info.path)))
    assert.equal("wav-5000.wav zip-2.zip", H.ls(dir .. "/out")) -- nothing of notfound
    r = client:download_many({ { callID = "zip-2" }, { callID = "wav-3000" },
      { callID = "notfound" } }, { dir = dir .. "/unz", unzip = true })
    assert.equal(2, r.ok)
    assert.equal("wav-3000 zip-2", H.ls(dir .. "/unz"))
    assert.equal("rec_1.wav rec_2.wav", H.ls(dir .. "/unz/zip-2"))
    assert.equal(2, #r[1].info.files)
    assert.has_error(function() client:download_many({}, { dir = dir .. "/out/wav-5000.wav" }) end)
    assert.has_error(function() client:download_many({}, { unzip = true }) end)
  end)

  it("retries inside the batch: flow control and 503 with Retry-After succeed", function()
    local c = H.client{ retries = 2 }
    local r = c:download_many({ { callID = "retry-2-flow-3000" }, { callID = "retry-1-503-4000" },
      { callID = "retry-1-drop-5000" }, { callID = "wav-6000" } }, { concurrency = 4 })
    assert.equal(4, r.ok)
    assert.equal(3, r[1].info.attempts)
    assert.equal(2, r[2].info.attempts)
    assert.equal(2, r[3].info.attempts)
    assert.equal(1, r[4].info.attempts)
    assert.equal(mock.expect("wav-5000").sha256, H.sha256(r[3].data))
    c:close()
  end)

  it("after an auth failure starts nothing new: the rest is not attempted", function()
    local reqs = { { callID = "auth-401" } }
    for i = 2, 10 do reqs[i] = { callID = "wav-" .. (7000 + i) } end
    local r = client:download_many(reqs, { concurrency = 1 })
    assert.equal(1, r.failed)
    assert.equal(9, r.not_attempted)
    assert.equal("auth", r[1].err.kind)
    assert.equal(1, r[1].err.attempts)
    for i = 2, 10 do
      assert.equal("cancelled", r[i].err.kind)
      assert.equal(0, r[i].err.attempts)
      assert.matches("not attempted", r[i].err.message)
    end
    local st = mock.stats()
    assert.equal(1, st.requests)
    assert.equal(1, st.per_call["auth-401"])
  end)

  it("on_result returning false stops the batch: nothing in flight is kept", function()
    local seen = {}
    local r = client:download_many({ { callID = "wav-100" }, { callID = "slowwav-3" },
      { callID = "wav-200" }, { callID = "wav-300" } }, {
      dir = dir, concurrency = 2,
      on_result = function(i, req, info, err)
        seen[#seen + 1] = req.callID
        return false
      end,
    })
    assert.equal(1, r.ok)
    assert.equal("wav-100", seen[1])
    assert.equal("cancelled", r[2].err.kind)
    assert.equal(1, r[2].err.attempts)
    assert.equal(2, r.not_attempted)
    assert.equal("wav-100.wav", H.ls(dir)) -- no partial slowwav-3, no temporary file
  end)

  it("on_progress sees the whole batch; a callback's error is raised after cleanup", function()
    local last
    local r = client:download_many(ids("wav-", 12, 9000), { concurrency = 3,
      on_progress = function(p) last = p end })
    assert.equal(12, r.ok)
    assert.same({ done = 12, total = 12, ok = 12, failed = 0, active = 0 },
      { done = last.done, total = last.total, ok = last.ok, failed = last.failed,
        active = last.active })
    local bytes = 0
    for i = 1, 12 do bytes = bytes + #r[i].data end
    assert.equal(bytes, last.bytes)
    assert.has_error(function()
      client:download_many(ids("wav-", 5), { on_result = function() error("boom") end })
    end)
    assert.is_string(client:download{ callID = "wav-100" }) -- the client is free again
  end)

  -- from an independent review of download_many
  it("never takes a stray answer on a kept-alive connection for the next recording", function()
    local c = H.client{ max_rate = 1.5 } -- extra-N's stray answer comes 0.3 s after it
    local r = c:download_many({ { callID = "extra-1000" }, { callID = "wav-5000" },
      { callID = "wav-7000" } }, { concurrency = 1 })
    assert.equal(3, r.ok)
    for i, id in ipairs{ "extra-1000", "wav-5000", "wav-7000" } do
      assert.equal(mock.expect(id).sha256, H.sha256(r[i].data), id)
      assert.equal(1, r[i].info.attempts) -- the request was never sent on the bad connection
    end
    assert.equal(1, mock.stats().extra_sent)
    c:close()
  end)

  it("on_result returning false stops in-flight transfers also after an auth stop", function()
    local t0 = now()
    local r = client:download_many({ { callID = "auth-401" }, { callID = "slowwav-6" },
      { callID = "slowwav-6" }, { callID = "wav-100" } }, {
      dir = dir, concurrency = 3, on_result = function() return false end })
    assert.is_true(now() - t0 < 3)
    assert.equal(0, r.ok)
    assert.equal("cancelled", r[2].err.kind)
    assert.equal("cancelled", r[3].err.kind)
    assert.equal("", H.ls(dir))
  end)

  it("raises the first error of a callback once, and calls no callback after it", function()
    local calls = 0
    local ok, err = pcall(client.download_many, client, ids("wav-", 6, 500), {
      concurrency = 3, on_result = function() calls = calls + 1; error("boom " .. calls) end })
    assert.is_false(ok)
    assert.matches("boom 1$", err)
    assert.equal(1, calls)
  end)

  it("leaves the client usable when an error unwinds the batch (a failing __gc)", function()
    local c = H.client()
    local armed = true
    local function boom() if armed then error("gc boom") end end
    collectgarbage()
    collectgarbage("stop")
    for _ = 1, 20000 do -- userdata in 5.1 and LuaJIT (newproxy), tables elsewhere
      if newproxy then getmetatable(newproxy(true)).__gc = boom
      else setmetatable({}, { __gc = boom }) end
    end
    collectgarbage("restart")
    pcall(c.download_many, c, ids("wav-", 100, 20000), { concurrency = 8 })
    armed = false -- what is left of them finalizes quietly, here or in later specs
    assert.is_string(c:download{ callID = "wav-100" }) -- not "busy"
    c:close()
    collectgarbage()
  end)

  it("limits sizes as download_file (to a directory) and download (in memory) do", function()
    local c = H.client{ max_size = 5000 }
    local r = c:download_many({ { callID = "wav-10000" } }, { dir = dir })
    assert.equal(1, r.ok) -- the client's max_size is for memory
    r = c:download_many({ { callID = "wav-10000" } }, { dir = dir, max_size = 5000 })
    assert.equal("too_large", r[1].err.kind)
    r = c:download_many({ { callID = "wav-10000" } }, { dir = dir .. "/u", unzip = true })
    assert.equal(1, r.ok)
    r = c:download_many({ { callID = "wav-10000" } })
    assert.equal("too_large", r[1].err.kind)
    c:close()
  end)

  it("max_rate paces a batch too", function()
    local c = H.client{ max_rate = 10 }
    local r = c:download_many(ids("wav-", 8, 4000), { concurrency = 8 })
    assert.equal(8, r.ok)
    local t = mock.stats().request_times
    assert.is_true(t[8] - t[1] >= 0.65, "8 requests in " .. (t[8] - t[1]) .. " s")
    c:close()
  end)
end)
