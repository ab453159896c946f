-- The hot paths of issue 11: a large download to a file is hashed by a thread
-- reading the file back (src/cms_sink.c), a large recording in memory is
-- received into and pushed from prefaulted memory (cms_prefault,
-- push_recording). The bytes, the digest and what is left on disk must be
-- those of the inline paths, and no thread may outlive its download.
local H = require "spec.helper"
local mock = H.mock

describe("hot paths", function()
  local client, dir
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  -- threads of this process (the shell's parent), from /proc
  local function tasks()
    local out = H.capture("ls /proc/$PPID/task")
    local n = 0
    for _ in out:gmatch("%d+") do n = n + 1 end
    return n
  end

  it("hashes a large download in a thread that ends with it", function()
    local base, during = tasks(), 0
    local info, err = client:download_file({ callID = "wav-100000000" }, dir .. "/big.wav", {
      on_progress = function(received, total)
        if received > 8e6 and received < total then during = math.max(during, tasks()) end
      end,
    })
    assert.is_table(info, tostring(err))
    local want = mock.expect("wav-100000000")
    assert.equal(want.sha256, info.sha256)
    assert.equal(want.sha256, H.capture("sha256sum " .. H.q(dir .. "/big.wav")):match("^%x+"))
    assert.equal(want.size, info.bytes)
    assert.is_true(during > base, ("threads: %d before, %d while receiving"):format(base, during))
    assert.equal(base, tasks())
    assert.equal("big.wav", H.ls(dir))
  end)

  it("hashes a large download of unknown length (chunked) the same way", function()
    local base = tasks()
    local info, err = client:download_file({ callID = "chunked-20000000" }, dir)
    assert.is_table(info, tostring(err))
    local want = mock.expect("chunked-20000000")
    assert.equal(want.sha256, info.sha256)
    assert.equal(want.sha256, H.capture("sha256sum " .. H.q(info.path)):match("^%x+"))
    assert.equal(base, tasks())
  end)

  it("stops the thread and leaves nothing when a large download breaks off, every attempt", function()
    local base = tasks()
    local info, err = client:download_file({ callID = "drop-20000000" }, dir .. "/x.wav",
      { retries = 1 })
    assert.is_nil(info)
    assert.equal("network", err.kind)
    assert.equal(2, err.attempts)
    assert.equal("", H.ls(dir))
    assert.equal(base, tasks())
  end)

  it("stops the thread when the caller cancels midway", function()
    local base = tasks()
    local info, err = client:download_file({ callID = "wav-100000000" }, dir .. "/x.wav", {
      on_progress = function(received) return received < 8e6 end,
    })
    assert.is_nil(info)
    assert.equal("cancelled", err.kind)
    assert.equal("", H.ls(dir))
    assert.equal(base, tasks())
  end)

  it("digests a large bundle before unpacking it", function()
    local info, err = client:download_file({ callID = "zip-500" }, dir .. "/calls", { unzip = true })
    assert.is_table(info, tostring(err))
    local want = mock.expect("zip-500")
    assert.is_true(want.size > 4 * 1024 * 1024, "the bundle must be large enough for the thread")
    assert.equal(want.sha256, info.sha256)
    assert.equal(500, #info.files)
    assert.equal(mock.expect("wav-10500").sha256, H.sha256(H.read_file(dir .. "/calls/rec_500.wav")))
  end)

  it("gives large recordings in memory byte for byte, the allocator put back", function()
    for _, id in ipairs{ "wav-6000000", "chunked-3000000" } do
      local data, info = client:download{ callID = id }
      assert.is_string(data, tostring(info))
      assert.equal(mock.expect(id).sha256, H.sha256(data))
    end
    -- allocations after the push go through Lua's own allocator again
    local t = {}
    for i = 1, 20000 do t[i] = ("x"):rep(i % 100) .. i end
    assert.equal("x19999", t[19999]:sub(-6))
    local results = client:download_many({ { callID = "wav-2000000" }, { callID = "wav-1500000" } })
    assert.equal(2, results.ok)
    assert.equal(mock.expect("wav-2000000").sha256, H.sha256(results[1].data))
    assert.equal(mock.expect("wav-1500000").sha256, H.sha256(results[2].data))
  end)
end)
