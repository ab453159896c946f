-- Lua idioms: LTN12 sinks, sinks for download, the pull-style reader, and the
-- pieces for callers that send the request themselves (prepare, classify).
local H = require "spec.helper"
local mock = H.mock
local cmsrec = require "cmsrec"
local ltn12 = require "ltn12"

-- A sink that records every call, answering `answer` (default 1) to chunks.
local function recording_sink(answer)
  local calls = {}
  local function sink(chunk, msg)
    calls[#calls + 1] = { chunk = chunk, msg = msg }
    if chunk == nil then return 1 end
    if answer == nil then return 1 end
    return answer
  end
  return sink, calls
end

local function concat_chunks(calls)
  local t = {}
  for _, c in ipairs(calls) do t[#t + 1] = c.chunk end
  return table.concat(t)
end

describe("LTN12 sinks", function()
  local client, dir
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  it("ltn12.sink.file has the whole file on disk when download_file returns", function()
    local path = dir .. "/call.wav"
    local info, err = client:download_file({ callID = "wav-200000" }, nil,
      { sink = ltn12.sink.file(assert(io.open(path, "wb"))) })
    assert.is_table(info, tostring(err))
    local want = mock.expect("wav-200000")
    -- sink(nil) closed (and so flushed) the file before download_file returned
    assert.equal(want.size, #H.read_file(path))
    assert.equal(want.sha256, H.sha256(H.read_file(path)))
    assert.equal(want.sha256, info.sha256)
  end)

  it("client:download takes a sink too: true, info; ltn12.sink.table works unchanged", function()
    local t = {}
    local ok, info = client:download({ callID = "wav-70000" }, { sink = ltn12.sink.table(t) })
    assert.is_true(ok, tostring(info))
    local want = mock.expect("wav-70000")
    assert.equal(want.sha256, H.sha256(table.concat(t)))
    assert.equal(want.sha256, info.sha256)
    assert.equal(want.size, info.bytes)
    assert.equal("wav", info.format)
  end)

  it("calls the sink with nil exactly once, after the last chunk", function()
    local sink, calls = recording_sink()
    assert.is_true((client:download({ callID = "wav-50000" }, { sink = sink })))
    assert.is_nil(calls[#calls].chunk)
    assert.is_nil(calls[#calls].msg)
    for i = 1, #calls - 1 do assert.is_string(calls[i].chunk) end
    assert.equal(mock.expect("wav-50000").sha256, H.sha256(concat_chunks(calls)))
  end)

  it("counts a sink that returns nothing as a failure, as LTN12 does", function()
    local n = 0
    local ok, err = client:download({ callID = "wav-50000" },
      { sink = function(chunk) if chunk then n = n + 1 end end })
    assert.is_nil(ok)
    assert.equal("io", err.kind)
    assert.matches("returned nothing", err.message)
    assert.equal(1, n) -- stopped at the first chunk
  end)

  it("tells the sink about a failure with sink(nil, message), once", function()
    local sink, calls = recording_sink()
    local ok, err = client:download({ callID = "notfound" }, { sink = sink })
    assert.is_nil(ok)
    assert.equal("api", err.kind)
    assert.equal(1, #calls)
    assert.is_nil(calls[1].chunk)
    assert.equal(err.message, calls[1].msg)
  end)

  it("closes the sink also when the request is invalid, and sends nothing", function()
    mock.reset()
    local sink, calls = recording_sink()
    local ok, err = client:download({ callID = "" }, { sink = sink })
    assert.is_nil(ok)
    assert.equal("invalid", err.kind)
    assert.equal(1, #calls)
    assert.is_nil(calls[1].chunk)
    assert.equal(0, mock.stats().requests)
  end)

  it("fails when the sink's final call fails", function()
    local path = dir .. "/x"
    local info, err = client:download_file({ callID = "wav-3000" }, nil, {
      sink = function(chunk) if chunk then return 1 end return nil, "disk quota exceeded" end,
    })
    assert.is_nil(info)
    assert.equal("io", err.kind)
    assert.matches("disk quota exceeded", err.message)
    assert.is_false(H.exists(path))
  end)
end)

describe("client:reader and client:chunks", function()
  local client
  H.with_mock(setup, teardown, function(c) client = c end)

  it("for chunk in client:chunks(req): the served bytes, in several chunks", function()
    local parts = {}
    for chunk in client:chunks({ callID = "wav-3000000" }) do parts[#parts + 1] = chunk end
    local data = table.concat(parts)
    local want = mock.expect("wav-3000000")
    assert.equal(want.size, #data)
    assert.equal(want.sha256, H.sha256(data))
    assert.is_true(#parts > 1)
  end)

  it("a reader is an LTN12 source: ltn12.pump.all into ltn12.sink.table", function()
    local reader = assert(client:reader({ callID = "zip-3" }))
    local t = {}
    assert.equal(1, ltn12.pump.all(reader, (ltn12.sink.table(t))))
    local want = mock.expect("zip-3")
    assert.equal(want.sha256, H.sha256(table.concat(t)))
    local info = reader:info()
    assert.equal("zip", info.format)
    assert.equal(want.sha256, info.sha256)
    assert.equal(want.size, info.bytes)
    assert.is_nil(reader()) -- stays at the end
  end)

  it("reader:info() tells the format once the first chunk arrived", function()
    local reader = assert(client:reader({ callID = "wav-500000" }))
    assert.is_nil(reader:info())
    assert.is_string(reader:read())
    assert.equal("wav", reader:info().format)
    assert.is_nil(reader:info().sha256) -- not complete yet
    reader:close()
  end)

  it("returns nil, err for an error answer; never gives its bytes as a chunk", function()
    local reader = assert(client:reader({ callID = "notfound" }))
    local chunk, err = reader()
    assert.is_nil(chunk)
    assert.equal("api", err.kind)
    assert.equal("1", err.result_code)
    assert.matches("Record List is empty", tostring(err))
    chunk, err = reader()
    assert.is_nil(chunk)
    assert.equal("api", err.kind) -- the failure stays
  end)

  it("chunks raises the error table (tostring works) on failure", function()
    local ok, err = pcall(function()
      for _ in client:chunks({ callID = "flow" }) do end
    end)
    assert.is_false(ok)
    assert.is_table(err)
    assert.equal("api", err.kind)
    assert.matches("^cmsrec: ", tostring(err))
  end)

  it("returns nil, err for an invalid request before sending anything", function()
    mock.reset()
    local reader, err = client:reader({ callID = "x", workNo = {} })
    assert.is_nil(reader)
    assert.equal("invalid", err.kind)
    assert.equal("workNo", err.field)
    assert.equal(0, mock.stats().requests)
    assert.has_error(function() client:chunks({ callID = "" }) end)
  end)

  it("holds the client while open; close gives it back, and the next download is right", function()
    local reader = assert(client:reader({ callID = "wav-2000000" }))
    assert.is_string(reader())
    reader:close()
    reader:close() -- twice is fine
    assert.is_nil(reader())
    local data = client:download({ callID = "wav-30000" })
    assert.equal(mock.expect("wav-30000").sha256, H.sha256(data))
  end)

  it("ends an open reader when its client starts another request", function()
    local reader = assert(client:reader({ callID = "wav-2000000" }))
    assert.is_string(reader())
    local data = client:download({ callID = "wav-30000" })
    assert.equal(mock.expect("wav-30000").sha256, H.sha256(data))
    local chunk, err = reader()
    assert.is_nil(chunk)
    assert.equal("cancelled", err.kind)
    assert.matches("another request", err.message)
  end)

  it("a reader dropped without close is collected and frees the client", function()
    local reader = assert(client:reader({ callID = "wav-2000000" }))
    assert.is_string(reader())
    reader = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    local data = client:download({ callID = "wav-3000" })
    assert.equal(mock.expect("wav-3000").sha256, H.sha256(data))
  end)

  it("closed before the end, it says so: nil, err, never a clean end", function()
    local reader = assert(client:reader({ callID = "wav-3000000" }))
    assert.is_string(reader())
    reader:close()
    local chunk, err = reader()
    assert.is_nil(chunk)
    assert.equal("cancelled", err.kind)
    assert.matches("closed before the end", err.message)
    local ok, perr = ltn12.pump.all(reader, (ltn12.sink.table({})))
    assert.is_nil(ok)
    assert.equal("cancelled", perr.kind)
  end)

  it("a recording complete but not read to its end survives the client's next request", function()
    local reader = assert(client:reader({ callID = "wav-100" }))
    local data = ""
    repeat data = data .. assert(reader()) until #data == 100 -- all came, the end not read
    assert.is_string(client:download({ callID = "wav-200" }))
    assert.is_nil(reader()) -- the end, not an error
    assert.equal(mock.expect("wav-100").sha256, reader:info().sha256)
  end)

  it("prepare, and calls refused for their arguments, leave an open reader alone", function()
    local reader = assert(client:reader({ callID = "wav-300000" }))
    local parts = { reader() }
    assert(client:prepare({ callID = "1" }))
    assert.is_false(pcall(client.download, client, "not a table"))
    assert.is_false(pcall(client.reader, client, { callID = "1" }, { nope = 1 }))
    for chunk in reader do parts[#parts + 1] = chunk end
    assert.equal(mock.expect("wav-300000").sha256, H.sha256(table.concat(parts)))
  end)

  it("shares one connection with download, and never takes a stray answer for its own", function()
    local want20, want30 = mock.expect("wav-20000").sha256, mock.expect("wav-30000").sha256
    mock.reset() -- (mock.expect and mock.stats use connections of their own)
    local got = {}
    for _ = 1, 3 do
      local parts = {}
      for chunk in client:chunks({ callID = "wav-20000" }) do parts[#parts + 1] = chunk end
      got[#got + 1] = table.concat(parts)
      got[#got + 1] = client:download{ callID = "wav-30000" }
    end
    assert.equal(1, mock.stats().connections)
    for i = 1, 6, 2 do
      assert.equal(want20, H.sha256(got[i]))
      assert.equal(want30, H.sha256(got[i + 1]))
    end
    -- extra-N sends an unrequested second answer (wav-(N+1)) 0.3 s later
    for _, first in ipairs{ "reader", "download" } do
      for _, second in ipairs{ "reader", "download" } do
        local function get(how, id)
          if how == "download" then return client:download{ callID = id } end
          local parts = {}
          for chunk in client:chunks({ callID = id }) do parts[#parts + 1] = chunk end
          return table.concat(parts)
        end
        assert.equal(mock.expect("extra-5000").sha256, H.sha256(get(first, "extra-5000")))
        os.execute("sleep 0.6")
        assert.equal(mock.expect("wav-2000").sha256, H.sha256(get(second, "wav-2000")),
          first .. " then " .. second)
      end
    end
  end)

  it("on_progress runs while reading and can cancel", function()
    local calls = 0
    local reader = assert(client:reader({ callID = "stall-3" }, {
      on_progress = function() calls = calls + 1; return calls < 3 end,
    }))
    local chunk, err
    repeat chunk, err = reader() until not chunk
    assert.equal("cancelled", err and err.kind)
    assert.equal(3, calls)
    assert.equal("wav", client:download({ callID = "wav-100" }) and "wav")
  end)

  it("on_progress cannot read or close its own reader", function()
    local reader
    reader = assert(client:reader({ callID = "stall-2" }, {
      on_progress = function() reader() end,
    }))
    local chunk, err = reader()
    assert.is_nil(chunk)
    assert.equal("cancelled", err.kind)
    assert.matches("on_progress cannot read", err.message)
  end)
end)

describe("client:prepare and cmsrec.classify", function()
  local client, dir
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  -- Send a prepared request with the curl command, as a proxy would.
  local function curl(prep, out)
    local args = {}
    for name, value in pairs(prep.headers) do
      args[#args + 1] = ("-H '%s: %s'"):format(name, value)
    end
    local body = dir .. "/body.json"
    H.write_file(body, prep.body)
    return H.capture(("curl -s -o %s -D %s/headers -w '%%{http_code}' --cacert %s %s "
      .. "-X %s --data-binary @%s %s"):format(out, dir, mock.ca, table.concat(args, " "),
      prep.method, body, prep.url))
  end

  it("prepares a signed request that any HTTP client can send", function()
    local prep = assert(client:prepare({ callID = "wav-40000" }))
    assert.equal("POST", prep.method)
    assert.equal(mock.url .. cmsrec.DEFAULT_PATH, prep.url)
    assert.equal(tostring(#prep.body), prep.headers["Content-Length"])
    assert.equal(1, prep.headers.Authorization:find("auth-v2/" .. H.AK .. "/", 1, true))
    for _, v in pairs(prep.headers) do assert.is_nil(v:find(H.SK, 1, true)) end
    assert.is_nil(prep.body:find(H.SK, 1, true))
    assert.equal("200", curl(prep, dir .. "/out"))
    local data = H.read_file(dir .. "/out")
    assert.equal(mock.expect("wav-40000").sha256, H.sha256(data))
    assert.equal("wav", cmsrec.classify(200, {}, data))
  end)

  it("refuses an invalid request naming the field", function()
    local prep, err = client:prepare({ callID = "1", beginTime = "yesterday" })
    assert.is_nil(prep)
    assert.equal("invalid", err.kind)
    assert.equal("beginTime", err.field)
  end)

  it("classifies what the CMS answered: a JSON error at HTTP 200 is an error", function()
    local prep = assert(client:prepare({ callID = "notfound" }))
    assert.equal("200", curl(prep, dir .. "/out"))
    local body = H.read_file(dir .. "/out")
    local fmt, err = cmsrec.classify(200, { ["Content-Type"] = "text/plain" }, body, true)
    assert.is_nil(fmt)
    assert.equal("api", err.kind)
    assert.equal("1", err.result_code)
    assert.equal(200, err.status)
  end)

  it("says when it needs more bytes, and decides at the end of a short body", function()
    assert.is_nil(cmsrec.classify(200, {}, "RIFF"))
    assert.equal(0, select("#", cmsrec.classify(200, {}, "RIFF")) - 1)
    assert.equal("unknown", cmsrec.classify(200, {}, "RIFF", true))
    local fmt, err = cmsrec.classify(200, nil, "", true)
    assert.is_nil(fmt)
    assert.equal("protocol", err.kind)
    assert.equal("zip", cmsrec.classify(200, {}, "PK\3\4\20\0\0\0\8\0\0\0\0\0"))
  end)

  it("waits for the rest of a JSON error before naming its kind", function()
    local body = '{"resultCode":"1","resultDesc":"Record List is empty"}'
    assert.is_nil(cmsrec.classify(200, {}, body:sub(1, 20)))
    assert.equal(1, select("#", cmsrec.classify(200, {}, body:sub(1, 20))))
    local _, err = cmsrec.classify(200, {}, body)
    assert.equal("api", err.kind)
    _, err = cmsrec.classify(200, {}, body:sub(1, 20), true)
    assert.equal("protocol", err.kind) -- cut short for good
  end)

  it("reads the status, Retry-After and Content-Encoding", function()
    local fmt, err = cmsrec.classify(503, { ["retry-after"] = "7" }, "")
    assert.is_nil(fmt)
    assert.equal("http", err.kind)
    assert.is_true(err.retryable)
    assert.equal(7, err.retry_after)
    fmt, err = cmsrec.classify(401, {}, '{"resultCode":"0100001","resultDesc":"bad"}')
    assert.equal("auth", err.kind)
    fmt, err = cmsrec.classify(200, { ["Content-Encoding"] = "gzip" }, ("\31\139"):rep(20))
    assert.is_nil(fmt)
    assert.equal("protocol", err.kind)
    assert.matches("encoded", err.message)
  end)

  it("cmsrec.error gives a copied error table its tostring back", function()
    local _, err = cmsrec.classify(404, {}, "no such path")
    local copy = {}
    for k, v in pairs(err) do copy[k] = v end
    assert.matches("^table", tostring(copy))
    assert.equal(copy, cmsrec.error(copy))
    assert.equal(tostring(err), tostring(copy))
    assert.has_error(function() cmsrec.error({}) end)
  end)
end)

describe("unzip into a missing directory", function()
  local client, dir
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  it("download_file makes it, as cmsrec.unzip does", function()
    local info, err = client:download_file({ callID = "zip-2" }, dir .. "/new", { unzip = true })
    assert.is_table(info, tostring(err))
    assert.equal(2, #info.files)
    local data = client:download({ callID = "zip-2" })
    assert.equal(2, #assert(cmsrec.unzip(data, dir .. "/new2")))
    assert.equal(H.ls(dir .. "/new"), H.ls(dir .. "/new2"))
  end)

  it("removes the directory it made when the download fails", function()
    local info, err = client:download_file({ callID = "notfound" }, dir .. "/new", { unzip = true })
    assert.is_nil(info)
    assert.equal("api", err.kind)
    assert.equal("", H.ls(dir))
    info, err = client:download_file({ callID = "zip-2" }, dir .. "/a/b", { unzip = true })
    assert.equal("io", err.kind) -- the parent must exist
    assert.equal("", H.ls(dir))
  end)
end)
