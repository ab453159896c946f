-- ZIP bundles: reading, safe extraction, download_file{unzip = true}.
local H = require "spec.helper"
local cmsrec = require "cmsrec"
local mock = H.mock

describe("ZIP bundles", function()
  local client, dir
  H.with_mock(setup, teardown, function(c) client = c end)
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmrf(dir) end)

  local function member_sha(i) return mock.expect("wav-" .. (10000 + i)).sha256 end

  it("cmsrec.unzip(data) returns every member with its bytes", function()
    local data = assert(client:download{ callID = "zip-3" })
    local members = assert(cmsrec.unzip(data))
    assert.equal(3, #members)
    for i, m in ipairs(members) do
      assert.equal("rec_" .. i .. ".wav", m.name)
      assert.equal(10000 + i, m.size)
      assert.equal(10000 + i, #m.data)
      assert.equal(member_sha(i), H.sha256(m.data))
    end
  end)

  it("cmsrec.unzip(path, dir) extracts a file on disk, keeping subdirectories", function()
    local zip = client:download_file({ callID = "zip-dirs" }, dir .. "/bundle.zip")
    local out = dir .. "/out"
    local files = assert(cmsrec.unzip(zip.path, out))
    assert.equal(2, #files)
    assert.equal("day1/rec_1.wav", files[1].name)
    assert.equal(out .. "/day1/rec_2.wav", files[2].path)
    assert.equal(member_sha(2), H.sha256(H.read_file(out .. "/day1/rec_2.wav")))
    assert.equal("day1", H.ls(out)) -- no staging directory left
    assert.equal("rec_1.wav rec_2.wav", H.ls(out .. "/day1"))
  end)

  it("download_file(req, dir, {unzip = true}) downloads and unpacks in one step", function()
    local info = assert(client:download_file({ callID = "zip-3" }, dir, { unzip = true }))
    assert.equal("zip", info.format)
    assert.equal(mock.expect("zip-3").sha256, info.sha256)
    assert.equal(dir, info.path)
    assert.equal(3, #info.files)
    for i, f in ipairs(info.files) do
      assert.equal(dir .. "/rec_" .. i .. ".wav", f.path)
      assert.equal(member_sha(i), H.sha256(H.read_file(f.path)))
    end
    assert.equal("rec_1.wav rec_2.wav rec_3.wav", H.ls(dir)) -- the archive itself is gone
  end)

  it("lists a single WAV the same way when the answer is not a bundle", function()
    local info = assert(client:download_file({ callID = "wav-5000" }, dir, { unzip = true }))
    assert.equal(1, #info.files)
    assert.equal("wav-5000.wav", info.files[1].name)
    assert.equal(dir .. "/wav-5000.wav", info.files[1].path)
    assert.equal(5000, info.files[1].size)
  end)

  it("needs a directory to unzip into, not a file", function()
    H.write_file(dir .. "/x.zip", "MINE")
    local info, err = client:download_file({ callID = "zip-3" }, dir .. "/x.zip", { unzip = true })
    assert.is_nil(info)
    assert.equal("io", err.kind) -- as for any unusable destination
    assert.matches("not a directory", err.message)
    assert.equal("MINE", H.read_file(dir .. "/x.zip"))
  end)

  local bad = {
    { "zipbad-slip", "would escape the target directory" },
    { "zipbad-abs", "would escape the target directory" },
    { "zipbad-symlink", "symbolic link" },
    { "zipbad-crc", "corrupt" },
    { "zipbad-trunc", "not a valid archive" },
    { "zipbad-hugesize", "impossible size" },
  }
  for _, case in ipairs(bad) do
    local id, pattern = case[1], case[2]
    it("refuses " .. id .. " with nothing extracted", function()
      H.write_file(dir .. "/rec_1.wav", "ORIGINAL")
      local info, err = client:download_file({ callID = id }, dir, { unzip = true })
      assert.is_nil(info)
      assert.equal("protocol", err.kind)
      assert.matches(pattern, err.message)
      assert.equal("rec_1.wav", H.ls(dir)) -- no archive, no staging dir, no member
      assert.equal("ORIGINAL", H.read_file(dir .. "/rec_1.wav"))
      -- the same archive through cmsrec.unzip, from memory and into a directory
      local data = assert(client:download{ callID = id })
      local members, err2 = cmsrec.unzip(data)
      assert.is_nil(members)
      assert.equal("protocol", err2.kind)
      members, err2 = cmsrec.unzip(data, dir .. "/sub")
      assert.is_nil(members)
      assert.equal("protocol", err2.kind)
      assert.is_false(H.exists(dir .. "/sub")) -- the directory it made is gone too
    end)
  end

  it("never replaces a file: with one member already there, nothing is extracted", function()
    H.write_file(dir .. "/rec_3.wav", "ORIGINAL")
    local info, err = client:download_file({ callID = "zip-3" }, dir, { unzip = true })
    assert.is_nil(info)
    assert.equal("io", err.kind)
    assert.matches("'.*/rec_3%.wav' already exists", err.message)
    assert.equal("rec_3.wav", H.ls(dir)) -- rec_1 and rec_2 were not placed either
    assert.equal("ORIGINAL", H.read_file(dir .. "/rec_3.wav"))
  end)

  it("refuses a symbolic link among the parents in the destination", function()
    local outside = H.tmpdir()
    assert(H.sh(("ln -s '%s' '%s/day1'"):format(outside, dir)))
    local info, err = client:download_file({ callID = "zip-dirs" }, dir, { unzip = true })
    local left = H.ls(outside)
    H.rmrf(outside)
    assert.is_nil(info)
    assert.equal("io", err.kind)
    assert.matches("symbolic link", err.message)
    assert.equal("", left)
    assert.equal("day1", H.ls(dir))
  end)

  it("bounds what a bundle may unpack to", function()
    local data = assert(client:download{ callID = "zip-3" })
    local members, err = cmsrec.unzip(data, nil, { max_size = 20000 })
    assert.is_nil(members)
    assert.equal("too_large", err.kind)
    members, err = cmsrec.unzip(data, dir, { max_size = 20000 })
    assert.equal("too_large", err.kind)
    assert.equal("", H.ls(dir))
    assert.equal(3, #cmsrec.unzip(data, nil, { max_size = 40000 }))
    local info
    info, err = client:download_file({ callID = "zip-3" }, dir, { unzip = true, max_size = 20000 })
    assert.is_nil(info)
    assert.equal("too_large", err.kind)
    assert.equal("", H.ls(dir))
  end)

  it("never writes outside the directory", function()
    client:download_file({ callID = "zipbad-slip" }, dir, { unzip = true })
    client:download_file({ callID = "zipbad-abs" }, dir, { unzip = true })
    assert.is_nil(H.read_file(dir .. "/../evil.wav"))
    assert.is_nil(H.read_file("/tmp/cmsrec-evil.wav"))
  end)

  it("reads a path that happens to start with PK as a path", function()
    local zip = client:download_file({ callID = "zip-2" }, dir .. "/bundle.zip")
    assert(H.sh(("mkdir %s/PKG && mv %s %s/PKG/b.zip"):format(dir, zip.path, dir)))
    local cpath = H.absolute_cpath()
    local out = H.capture(("cd %s && %s -e %s 2>&1"):format(dir, H.LUA,
      H.q(("package.cpath = %q; print(#assert(require('cmsrec').unzip('PKG/b.zip')))"):format(cpath))),
      true)
    assert.equal("2", out:match("^(%S+)"), out)
  end)

  it("reports a missing archive file as io", function()
    local members, err = cmsrec.unzip(dir .. "/none.zip")
    assert.is_nil(members)
    assert.equal("io", err.kind)
  end)
end)
