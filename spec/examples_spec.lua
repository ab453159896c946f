-- The scripts in examples/, run as a user would, against the mock CMS.
local H = require "spec.helper"
local mock = H.mock

-- Run examples/<script> with the mock's settings in `cwd`; returns exit code, stdout, stderr.
local function run(script, args, cwd, stdin)
  local r = H.run(("%s %s %s"):format(H.LUA, H.q(H.ROOT .. "/examples/" .. script), args),
    { cd = cwd, stdin = stdin, env = H.mock_env() })
  return r.code, r.out, r.err
end

describe("examples", function()
  local dir
  setup(function() mock.start() end)
  teardown(function() mock.stop() end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  it("download.lua saves a recording named after the call, and explains an error", function()
    local code, out = run("download.lua", "1748587841-77268", dir)
    assert.equal(0, code, out)
    assert.matches("^saved 1748587841%-77268%.wav: wav, 160044 bytes", out)
    assert.equal(mock.expect("1748587841-77268").sha256,
      H.sha256(H.read_file(dir .. "/1748587841-77268.wav")))
    code, out = run("download.lua", "notfound", dir)
    assert.equal(1, code)
    assert.matches("Record List is empty", out)
    assert.matches("try again in a few minutes", out)
  end)

  it("save_all.lua saves every call in its own directory, and a rerun skips them", function()
    local list = dir .. "/ids.txt"
    H.write_file(list, "1748587841-77268\nzip-3\n\nnotfound\n")
    local code, out, err = run("save_all.lua", dir .. "/out", dir, list)
    assert.equal(1, code, err) -- notfound failed
    assert.matches("2 saved, 0 already there, 1 failed", err)
    assert.equal("1748587841-77268 zip-3", H.ls(dir .. "/out")) -- no empty notfound/
    assert.equal("rec_1.wav rec_2.wav rec_3.wav", H.ls(dir .. "/out/zip-3"))
    assert.equal(mock.expect("wav-10002").sha256, H.sha256(H.read_file(dir .. "/out/zip-3/rec_2.wav")))
    assert.equal(4, select(2, out:gsub("\n", "")))
    code, out, err = run("save_all.lua", dir .. "/out", dir, list)
    assert.matches("0 saved, 2 already there, 1 failed", err)
    assert.equal("", out)
  end)
end)
