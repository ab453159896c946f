-- cmsrec batch (bin/cmsrec): its parts in this process (the script loaded as a library:
-- input parsing, shards, the journal), and the command as a process against the mock CMS.
local H = require "spec.helper"
local cjson = require "cjson"
local mock = H.mock
local q = H.q

-- bin/cmsrec returns its parts when called with a table (never a command-line argument).
local CLI = assert(loadfile(H.ROOT .. "/bin/cmsrec"))({})

-- Whether the module under test has client:download_many.
local REAL = (function()
  local probe = require("cmsrec").new{ base_url = "https://127.0.0.1:1", ak = "a", sk = "b" }
  local has = probe.download_many ~= nil
  probe:close()
  return has
end)()

-- Until the module has client:download_many, the end-to-end tests run the command on this
-- stand-in, loaded before the script (lua -e): one call at a time with download_file, the
-- same results, callbacks and stops. It tests the command, not download_many; once the
-- module has it, the stand-in is not used.
local STAND_IN = [[
local probe = require("cmsrec").new{ base_url = "https://127.0.0.1:1", ak = "a", sk = "b" }
local methods = debug.getmetatable(probe).__index
probe:close()
local function safe(id)
  local s = id:sub(1, 200):gsub("[^A-Za-z0-9._-]", "_"):gsub("^%.", "_")
  return s ~= "" and s or "recording"
end
local function clock() local f = io.open("/proc/uptime") local t = f:read("*n") f:close() return t end
methods.download_many = function(client, reqs, o)
  local results = { ok = 0, failed = 0, not_attempted = 0 }
  local p = { done = 0, total = #reqs, ok = 0, failed = 0, bytes = 0, active = 0 }
  local stopped, last = false, 0
  local function progress()
    local t = clock()
    if o.on_progress and t - last >= 0.2 then
      last = t
      if o.on_progress(p) == false then stopped = true end
    end
    return not stopped
  end
  for i, req in ipairs(reqs) do
    if stopped then
      results[i] = { err = { kind = "cancelled", message = "not attempted", attempts = 0 } }
      results.not_attempted = results.not_attempted + 1
    else
      local info, err, attempts = nil, nil, 0
      repeat
        attempts, p.active = attempts + 1, 1
        info, err = client:download_file(req, o.unzip and o.dir .. "/" .. safe(req.callID) or o.dir,
          { unzip = o.unzip, on_progress = function() if not progress() then return false end end })
        if err and err.kind == "cancelled" then stopped = true end
        if err and err.retryable and not stopped then os.execute("sleep 0.2") end
      until info or stopped or not err.retryable or attempts > (o.retries or 2)
      p.active, p.done = 0, p.done + 1
      local r = info or err
      r.attempts = attempts
      if info then
        p.ok, p.bytes, results.ok = p.ok + 1, p.bytes + info.bytes, results.ok + 1
      else
        p.failed, results.failed = p.failed + 1, results.failed + 1
      end
      results[i] = { info = info, err = err }
      if o.on_result and o.on_result(i, req, info, err) == false then stopped = true end
      if err and err.kind == "auth" then stopped = true end
    end
  end
  return results
end
]]

-- bin/cmsrec batch ARGS as a process (H.run options); the mock's settings unless o.env.
local function batch(args, o)
  o = o or {}
  o.env = o.env or H.mock_env()
  local pre = REAL and "" or "-e " .. q(STAND_IN) .. " "
  return H.run(("%s %s%s batch %s"):format(H.LUA, pre, q(H.ROOT .. "/bin/cmsrec"), args), o)
end

-- Settings that let a dry run check requests without any server.
local DRY_ENV = { CMSREC_URL = "https://127.0.0.1:1", CMSREC_AK = "a", CMSREC_SK = "bbbbbbbbbbbbbbbb" }

-- The Failure a function raises: its kind and message.
local function raised(fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok, "no error raised")
  assert.equal(CLI.Failure, getmetatable(e), tostring(e))
  return e.kind, e.message
end

local function ids_of(reqs)
  local ids = {}
  for i, req in ipairs(reqs) do ids[i] = req.callID end
  return ids
end

-- The rows of a CSV text: { {fields, line}, ... }.
local function csv_rows(text)
  local rows = {}
  CLI.csv_rows(text, "x", function(fields, line) rows[#rows + 1] = { fields, line } end)
  return rows
end

local function journal_entries(path)
  local list = {}
  for line in (H.read_file(path) or ""):gmatch("([^\n]*)\n") do list[#list + 1] = cjson.decode(line) end
  return list
end

-- `count` call IDs of several shapes, the same every time.
local function generated_ids(count, first)
  local ids, seed = {}, 12345
  for k = first or 1, (first or 1) + count - 1 do
    seed = (seed * 1103515245 + 12345) % 2147483648
    local shape = k % 4
    ids[#ids + 1] = shape == 0 and ("%d-%d"):format(1748587841 + k, seed % 100000)
      or shape == 1 and ("call-%d"):format(k)
      or shape == 2 and ("%d"):format(seed)
      or ("x%d.%d"):format(k, seed % 997)
  end
  return ids
end

describe("cmsrec batch", function()
  local tmp
  before_each(function() tmp = H.capture("mktemp -d /tmp/cmsrec-batch.XXXXXX"):gsub("%s+$", "") end)
  after_each(function() H.capture("rm -rf " .. q(tmp)) end)

  it("help batch: the options, the input formats, the journal and the exit codes", function()
    local r = H.cli("help batch")
    assert.equal(0, r.code, r.err)
    for _, word in ipairs({ "--input", "--output", "--concurrency", "--retries", "--max-rate", "--unzip", "--shard",
                            "JOB_COMPLETION_INDEX", "--journal", "--dry-run", "--json", "--quiet", "CSV", "JSON lines",
                            "FNV-1a", "exit codes of batch", "kill -9" }) do
      assert.truthy(r.out:find(word, 1, true), "help batch does not mention " .. word)
    end
    assert.is_nil(r.out:find("exit codes of get", 1, true))
    r = H.cli("help")
    assert.truthy(r.out:find("batch      download the calls listed", 1, true))
  end)

  describe("shards", function()
    it("FNV-1a 32 of the callID's bytes, as Python computes it (the documented hash)", function()
      -- the published FNV-1a 32 vectors, then generated IDs, bytes 128-255 and a long one
      assert.equal(2166136261, CLI.fnv1a32(""))
      assert.equal(0xe40c292c, CLI.fnv1a32("a"))
      assert.equal(0xbf9cf968, CLI.fnv1a32("foobar"))
      local ids = generated_ids(2000)
      local all = {}
      for b = 1, 255 do if b ~= 10 then all[#all + 1] = string.char(b) end end
      ids[#ids + 1] = table.concat(all)
      ids[#ids + 1] = "\228\184\173\230\150\135-\255\128"
      ids[#ids + 1] = ("9"):rep(5000)
      local path = tmp .. "/ids"
      H.write_file(path, table.concat(ids, "\n") .. "\n")
      local py = [[
import sys
for line in open(sys.argv[1], "rb").read().split(b"\n")[:-1]:
    h = 2166136261
    for c in line:
        h = ((h ^ c) * 16777619) & 0xffffffff
    print(h)
]]
      local expected = {}
      for n in H.capture("python3 -c " .. q(py) .. " " .. q(path)):gmatch("%d+") do expected[#expected + 1] = n end
      assert.equal(#ids, #expected)
      for i, id in ipairs(ids) do
        assert.equal(expected[i], ("%.0f"):format(CLI.fnv1a32(id)), "callID #" .. i)
      end
    end)

    it("puts every callID in exactly one shard, for 1 to 7 shards, and spreads them", function()
      local ids = generated_ids(3000)
      for n = 1, 7 do
        local sizes = {}
        for i = 0, n - 1 do sizes[i] = 0 end
        for _, id in ipairs(ids) do
          local hits = 0
          for i = 0, n - 1 do
            if CLI.in_shard(id, { index = i, count = n }) then hits, sizes[i] = hits + 1, sizes[i] + 1 end
          end
          assert.equal(1, hits, id .. " with " .. n .. " shards")
        end
        for i = 0, n - 1 do -- a fair share: within 25% of 3000/n
          assert.is_true(math.abs(sizes[i] - 3000 / n) < 0.25 * 3000 / n, ("shard %d/%d has %d"):format(i, n, sizes[i]))
        end
      end
    end)

    it("--shard I/N: the processes together download each call once; a longer list moves none", function()
      local old, new = generated_ids(600), generated_ids(400, 601)
      local header = "callID\n"
      H.write_file(tmp .. "/old.csv", header .. table.concat(old, "\n") .. "\n")
      -- the longer list: new IDs before, between and after the old ones
      local grown = {}
      for k, id in ipairs(old) do
        if new[k] then grown[#grown + 1] = new[k] end
        grown[#grown + 1] = id
      end
      H.write_file(tmp .. "/grown.csv", header .. table.concat(grown, "\n") .. "\n")
      local seen, in_old = {}, {}
      for _, id in ipairs(old) do in_old[id] = true end
      for i = 0, 2 do
        local r = batch("--dry-run --input old.csv --shard " .. i .. "/3", { cd = tmp, env = DRY_ENV })
        assert.equal(0, r.code, r.err)
        local mine = {}
        for id in r.out:gmatch("[^\n]+") do
          assert.is_nil(seen[id], id .. " in two shards")
          seen[id], mine[id] = i, true
          assert.is_true(CLI.in_shard(id, { index = i, count = 3 }))
        end
        r = batch("--dry-run --input grown.csv --shard " .. i .. "/3", { cd = tmp, env = DRY_ENV })
        assert.equal(0, r.code, r.err)
        local kept = 0
        for id in r.out:gmatch("[^\n]+") do
          if in_old[id] then
            assert.is_true(mine[id], id .. " moved to shard " .. i)
            kept = kept + 1
          end
        end
        local n = 0
        for _ in pairs(mine) do n = n + 1 end
        assert.equal(n, kept)
      end
      for _, id in ipairs(old) do assert.is_not_nil(seen[id], id .. " in no shard") end
    end)

    it("--shard auto reads JOB_COMPLETION_INDEX and JOB_COMPLETIONS; bad or missing ones are usage errors", function()
      local env = function(t) return function(k) return t[k] end end
      assert.same({ index = 2, count = 4 },
        CLI.parse_shard("auto", env{ JOB_COMPLETION_INDEX = "2", JOB_COMPLETIONS = "4" }))
      assert.same({ index = 0, count = 1 }, CLI.parse_shard("0/1", env{}))
      assert.same({ index = 6, count = 7 }, CLI.parse_shard("6/7", env{}))
      for _, bad in ipairs({ "4/4", "0/0", "1", "-1/3", "1/-3", "a/b", "1/3/4", " 1/3", "1.5/3", "" }) do
        assert.equal("usage", (raised(CLI.parse_shard, bad, env{})))
      end
      local _, msg = raised(CLI.parse_shard, "auto", env{ JOB_COMPLETIONS = "4" })
      assert.matches("JOB_COMPLETION_INDEX is not set", msg)
      _, msg = raised(CLI.parse_shard, "auto", env{ JOB_COMPLETION_INDEX = "1" })
      assert.matches("JOB_COMPLETIONS is not set", msg)
      for _, pair in ipairs({ { "4", "4" }, { "x", "4" }, { "1", "0" }, { "-1", "4" }, { "1", "four" } }) do
        assert.equal("usage", (raised(CLI.parse_shard, "auto",
          env{ JOB_COMPLETION_INDEX = pair[1], JOB_COMPLETIONS = pair[2] })))
      end

      -- the command: the same calls as --shard 1/3; an unset or bad variable exits 2
      H.write_file(tmp .. "/c.csv", "callID\n" .. table.concat(generated_ids(60), "\n") .. "\n")
      local want = batch("--dry-run --input c.csv --shard 1/3", { cd = tmp, env = DRY_ENV })
      local auto_env = { JOB_COMPLETION_INDEX = "1", JOB_COMPLETIONS = "3" }
      for k, v in pairs(DRY_ENV) do auto_env[k] = v end
      local got = batch("--dry-run --input c.csv --shard auto", { cd = tmp, env = auto_env })
      assert.equal(0, got.code, got.err)
      assert.equal(want.out, got.out)
      assert.is_true(#got.out > 0)
      auto_env.JOB_COMPLETIONS = nil
      local r = batch("--dry-run --input c.csv --shard auto", { cd = tmp, env = auto_env })
      assert.equal(2, r.code)
      assert.matches("JOB_COMPLETIONS is not set", r.err)
      auto_env.JOB_COMPLETIONS = "1"
      r = batch("--dry-run --input c.csv --shard auto", { cd = tmp, env = auto_env })
      assert.equal(2, r.code)
      assert.matches("JOB_COMPLETION_INDEX=1 JOB_COMPLETIONS=1", r.err)
    end)
  end)

  describe("input", function()
    local function parse(text) return CLI.parse_input(text, "in.csv") end

    it("CSV: quoted commas, doubled quotes and line breaks; CRLF; a BOM; blank lines; any case", function()
      local text = "\239\187\191 CallId , BEGINTIME,notes\r\n" ..
        "1748587841-77268,20250530120000,plain\r\n" ..
        "\r\n" ..
        '"a,b","",  "say ""hi"""\r\n' ..
        ",,\r\n" ..
        '"multi\r\nline" , 20250530120001,"x\ny"\r\n' ..
        "  spaced  ,,last line without a newline"
      local reqs, lines = parse(text)
      assert.same({ "1748587841-77268", "a,b", "multi\r\nline", "spaced" }, ids_of(reqs))
      assert.same({ 2, 4, 6, 9 }, lines)
      assert.same({ callID = "1748587841-77268", beginTime = "20250530120000" }, reqs[1])
      assert.same({ callID = "a,b" }, reqs[2]) -- an empty value is no value
      assert.equal("20250530120001", reqs[3].beginTime)
      -- the raw rows, extra column included
      assert.same({ { { "a", 'b "c" d', "e" }, 1 }, { { "f", "", "" }, 2 } }, csv_rows('a,"b ""c"" d",e\nf,,'))
      assert.same({}, csv_rows('""\n"",""\n , \n')) -- empty fields only: blank rows
      -- every known column, in any order; a header only: no calls
      reqs = parse("calleeNo,callerNo,workNo,beginTime,callID\n5,4,3,20250101000000,1\n")
      assert.same({ callID = "1", beginTime = "20250101000000", workNo = "3", callerNo = "4", calleeNo = "5" },
        reqs[1])
      assert.same({}, parse("callID\r\n"))
    end)

    -- each {input, message}: parsing it is a usage error that starts with message
    local function assert_usage_errors(cases)
      for _, c in ipairs(cases) do
        local kind, msg = raised(parse, c[1])
        assert.equal("usage", kind)
        assert.equal(c[2], msg:sub(1, #c[2]), msg)
      end
    end

    it("CSV: a bad line is a usage error naming its line", function()
      local cases = {
        { "callID\nx\n\"open\n\nstill open\n", "in.csv, line 3: a quoted field has no closing quote" },
        { "callID,workNo\nx,1\ny\n", "in.csv, line 3: 1 fields, but the header has 2" },
        { "callID\nx,1\n", "in.csv, line 2: 2 fields, but the header has 1" },
        { "callID\n\"a\"b\n", "in.csv, line 2: text after a closing quote" },
        { "callID\nab\"c\n", "in.csv, line 2: a quote inside an unquoted value" },
        { "callID,workNo\n\"x\ny\",1\n,2\n", "in.csv, line 4: no callID" },
        { "workNo,beginTime\n1,2\n", "in.csv, line 1: the header has no callID column" },
        { "1748587841-77268\n", "in.csv, line 1: the header has no callID column" },
        { "\n\ncallid,CALLID\nx,y\n", "in.csv, line 3: two callID columns" },
        { "", "in.csv is empty" },
      }
      assert_usage_errors(cases)
    end)

    it("JSON lines: found by a leading '{', keys in any case, numbers as digits, bad lines named", function()
      local reqs, lines = parse('\239\187\191\n  {"callID": "a", "beginTime": "20250530120000", "x": [1]}\r\n\n' ..
        '{"CALLID": 1748587841, "workno": 7, "callerNo": null, "calleeNo": ""}\n{"callID":"c"}')
      assert.same({ "a", "1748587841", "c" }, ids_of(reqs))
      assert.same({ 2, 4, 5 }, lines)
      assert.same({ callID = "1748587841", workNo = "7" }, reqs[2])
      local cases = {
        { '{"callID":"a"}\n{"callID": "b"\n', "in.csv, line 2: not a JSON object" },
        { '{"callID":"a"}\n[1]\n', "in.csv, line 2: not a JSON object" },
        { '{"callID":"a"}\n\n"b"\n', "in.csv, line 3: not a JSON object" },
        { '{"workNo":"1"}\n', "in.csv, line 1: no callID" },
        { '{"callID":1.5}\n', "in.csv, line 1: callID must be a string or a whole number" },
        { '{"callID":"a","beginTime":{}}\n', "in.csv, line 1: beginTime must be a string" },
      }
      assert_usage_errors(cases)
    end)

    it("a callID listed twice is downloaded once; two that share a file name are refused", function()
      local reqs, lines = parse("callID,workNo\na,1\nb,2\na,3\na,4\n")
      local list, list_lines, dups = CLI.unique(reqs, lines, "in.csv")
      assert.same({ "a", "b" }, ids_of(list))
      assert.same({ 2, 3 }, list_lines)
      assert.equal("1", list[1].workNo) -- the first one
      assert.equal(2, dups)
      reqs, lines = parse("callID\na/b\nc\na_b\n")
      local kind, msg = raised(CLI.unique, reqs, lines, "in.csv")
      assert.equal("usage", kind)
      assert.matches("lines 2 and 4: the call IDs 'a/b' and 'a_b' would be saved under the same name 'a_b'", msg)
      assert.equal("a_b", CLI.safe_name("a/b"))
      assert.equal("_x.y", CLI.safe_name(".x.y"))
      assert.equal("recording", CLI.safe_name(""))
      assert.equal(200, #CLI.safe_name(("x"):rep(300)))
    end)

    it("the command: exit 2 naming the line before anything is sent, stdin with -", function()
      local cases = {
        { "workNo\n1\n", "in.csv, line 1: the header has no callID column" },
        { "callID,beginTime\nok,20250530120000\nbad,2025\n", "in.csv, line 3: 'beginTime' must be a real date%-time" },
        { "callID\nx\n\"y\n", "in.csv, line 3: a quoted field has no closing quote" },
      }
      for _, c in ipairs(cases) do
        H.write_file(tmp .. "/in.csv", c[1])
        local r = batch("--input in.csv -o out", { cd = tmp, env = DRY_ENV })
        assert.equal(2, r.code, r.err)
        assert.matches(c[2], r.err)
        assert.is_false(H.exists(tmp .. "/out")) -- nothing made, nothing sent (the URL leads nowhere)
        r = batch("--json --input in.csv -o out", { cd = tmp, env = DRY_ENV })
        assert.equal(2, r.code)
        assert.equal("usage", cjson.decode(r.out).error.kind)
      end
      H.write_file(tmp .. "/in.jsonl", '{"callID":"b"}\n{"callID":"a"}\n{"callID":"b"}\n')
      local r = batch("--dry-run --input - -o out", { cd = tmp, env = DRY_ENV, stdin = tmp .. "/in.jsonl" })
      assert.equal(0, r.code, r.err)
      assert.equal("b\na\n", r.out)
      assert.matches("2 calls %(3 in the input, 1 duplicate%)", r.err)
      for _, args in ipairs({ "-o out", "--input nothere.csv", "--input . -o out", "--input in.jsonl --shard 3/3",
                              "--input in.jsonl --concurrency 0", "--input in.jsonl --concurrency 65",
                              "--input in.jsonl --retries 11",
                              "--input in.jsonl --max-rate -1", "--input in.jsonl --bogus" }) do
        r = batch(args, { cd = tmp, env = DRY_ENV })
        assert.equal(2, r.code, args .. ": " .. r.err)
      end
    end)
  end)

  describe("journal", function()
    local function entry(id, path, bytes)
      return cjson.encode({ callID = id, status = "ok", path = path, bytes = bytes, sha256 = "00" })
    end

    it("a torn last line is ignored with a note; the next entry starts on a line of its own", function()
      local dir = tmp
      H.write_file(dir .. "/a.wav", ("x"):rep(10))
      H.write_file(dir .. "/b.wav", ("x"):rep(20))
      local path = dir .. "/journal"
      H.write_file(path, entry("a", dir .. "/a.wav", 10) .. "\n" ..
        "garbage\n" ..
        cjson.encode({ callID = "n", status = "notfound", kind = "api" }) .. "\n" ..
        entry("b", dir .. "/b.wav", 20):sub(1, 30))
      local saved, notes = {}, {}
      local clean, n = CLI.read_journal(path, saved, function(text) notes[#notes + 1] = text end)
      assert.is_false(clean)
      assert.equal(2, n)
      assert.same({ path .. ", line 2: not a journal entry: ignored",
                    path .. ", line 4: no newline at the end (a write was interrupted): ignored" }, notes)
      assert.is_true(CLI.still_saved(saved.a, false))
      assert.is_nil(saved.b)
      assert.is_nil(saved.n) -- notfound: tried again
      -- appending ends the torn line first
      local f = CLI.open_journal(path, clean)
      CLI.journal_write(f, { callID = "b", status = "ok", path = dir .. "/b.wav", bytes = 20, sha256 = "00" })
      f:close()
      saved, notes = {}, {}
      clean, n = CLI.read_journal(path, saved, function(text) notes[#notes + 1] = text end)
      assert.is_true(clean)
      assert.equal(3, n)
      assert.equal(2, #notes) -- garbage, and the old torn line, now a line that is no entry
      assert.matches("line 4: not a journal entry", notes[2])
      assert.is_true(CLI.still_saved(saved.b, false))
      -- a missing journal is an empty one
      assert.same({ true, 0 }, { CLI.read_journal(dir .. "/none", {}, error) })
    end)

    it("an ok entry counts only while its files are there with their sizes, saved the same way", function()
      H.write_file(tmp .. "/a.wav", ("x"):rep(10))
      local e = { path = tmp .. "/a.wav", bytes = 10 }
      assert.is_true(CLI.still_saved({ e }, false))
      assert.is_false(CLI.still_saved({ e }, true)) -- --unzip wants a directory of files
      assert.is_false(CLI.still_saved({ { path = tmp .. "/a.wav", bytes = 11 } }, false))
      assert.is_false(CLI.still_saved({ { path = tmp .. "/gone.wav", bytes = 10 } }, false))
      assert.is_true(CLI.still_saved({ { path = tmp .. "/gone.wav", bytes = 10 }, e }, false))
      assert.is_false(CLI.still_saved(nil, false))
      H.capture("mkdir " .. q(tmp .. "/z"))
      H.write_file(tmp .. "/z/1.wav", "12345")
      H.write_file(tmp .. "/z/2.wav", "123")
      local z = { path = tmp .. "/z", bytes = 99, files = { { name = "1.wav", size = 5, path = tmp .. "/z/1.wav" },
                                                          { name = "2.wav", size = 3, path = tmp .. "/z/2.wav" } } }
      assert.is_true(CLI.still_saved({ z }, true))
      assert.is_false(CLI.still_saved({ z }, false))
      os.remove(tmp .. "/z/2.wav")
      assert.is_false(CLI.still_saved({ z }, true))
    end)
  end)

  it("examples/k8s/batch-job.yaml: YAML, an Indexed Job whose shards match its completions", function()
    if not H.sh("python3 -c 'import yaml' 2>/dev/null") then
      pending("python3 has no yaml module (Debian: apt-get install python3-yaml)")
      return
    end
    local py = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))"
    local docs = cjson.decode(H.capture("python3 -c " .. q(py) .. " " .. q(H.ROOT .. "/examples/k8s/batch-job.yaml")))
    local by_kind = {}
    for _, d in ipairs(docs) do by_kind[d.kind] = by_kind[d.kind] or {} table.insert(by_kind[d.kind], d) end
    local job = by_kind.Job[1]
    assert.equal("batch/v1", job.apiVersion)
    assert.equal("Indexed", job.spec.completionMode)
    assert.is_true(job.spec.parallelism >= 1)
    local pod = job.spec.template.spec
    assert.equal("Never", pod.restartPolicy) -- podFailurePolicy needs it
    local c = pod.containers[1]
    local argv = table.concat(c.args, " ")
    assert.matches("^batch %-%-shard auto %-%-input /input/calls%.csv %-o /data/recordings", argv)
    local env = {}
    for _, e in ipairs(c.env) do env[e.name] = e end
    assert.equal(("%d"):format(job.spec.completions), env.JOB_COMPLETIONS.value)
    assert.is_nil(env.JOB_COMPLETION_INDEX) -- Kubernetes sets it
    for _, name in ipairs({ "CMSREC_AK", "CMSREC_SK" }) do
      local ref = env[name].valueFrom.secretKeyRef
      local secret
      for _, s in ipairs(by_kind.Secret) do if s.metadata.name == ref.name then secret = s end end
      assert.is_not_nil(secret and secret.stringData[ref.key], name)
    end
    -- every path the command reads or writes is on a mounted volume of the right source
    local volumes, mounts = {}, {}
    for _, v in ipairs(pod.volumes) do volumes[v.name] = v end
    for _, m in ipairs(c.volumeMounts) do mounts[m.mountPath] = volumes[m.name] end
    assert.equal("cmsrec-calls", mounts["/input"].configMap.name)
    assert.is_string(by_kind.ConfigMap[1].data["calls.csv"])
    assert.matches("^callID", by_kind.ConfigMap[1].data["calls.csv"])
    assert.equal(by_kind.PersistentVolumeClaim[1].metadata.name, mounts["/data"].persistentVolumeClaim.claimName)
    local ca_dir, ca_file = env.CMSREC_CAFILE.value:match("^(.*)/([^/]+)$")
    local ca_map
    for _, m in ipairs(by_kind.ConfigMap) do if m.metadata.name == mounts[ca_dir].configMap.name then ca_map = m end end
    assert.matches("BEGIN CERTIFICATE", ca_map.data[ca_file])
  end)

  describe("against the mock (download_many: " .. (REAL and "the module's" or
    "a one-at-a-time stand-in in this spec, as the module has none yet") .. ")", function()
    setup(function() mock.start() end)
    teardown(function() mock.stop() end)
    before_each(function() mock.reset() end)

    -- Every entry of `dir` that is no recording of `ids` nor a journal: temporary files.
    local function strays(dir, names)
      local known, left = {}, {}
      for _, n in ipairs(names) do known[n] = true end
      for _, n in ipairs(H.listing(dir)) do
        if not known[n] and not n:find("^%.cmsrec%-journal") then left[#left + 1] = n end
      end
      return left
    end

    it("-o DIR: every recording saved with the mock's sha256, a journal line each; notfound exits 3", function()
      local ids = { "1748587841-77268", "wav-2000", "zip-3", "chunked-70000", "notfound" }
      H.write_file(tmp .. "/calls.csv", "callID,beginTime\n" .. table.concat(ids, ",\n") .. ",\n")
      local r = batch("--input calls.csv -o out/ --json --concurrency 3", { cd = tmp })
      assert.equal(3, r.code, r.err)
      local s = cjson.decode(r.out)
      assert.same({ false, 3, 5, 4, 0, 1, 0, 0 },
        { s.ok, s.exit, s.calls, s.saved, s.skipped, s.notfound, s.failed, s.not_attempted })
      local names = { "1748587841-77268.wav", "wav-2000.wav", "zip-3.zip", "chunked-70000.wav" }
      assert.same({ ".cmsrec-journal", "1748587841-77268.wav", "chunked-70000.wav", "wav-2000.wav", "zip-3.zip" },
        H.listing(tmp .. "/out"))
      local entries = {}
      for _, e in ipairs(journal_entries(tmp .. "/out/.cmsrec-journal")) do entries[e.callID] = e end
      for k, name in ipairs(names) do
        local want = mock.expect(ids[k]).sha256
        assert.equal(want, H.sha256(H.read_file(tmp .. "/out/" .. name)), name)
        assert.equal("ok", entries[ids[k]].status)
        assert.equal(want, entries[ids[k]].sha256)
        assert.equal("out/" .. name, entries[ids[k]].path)
      end
      assert.equal("notfound", entries.notfound.status)
      assert.equal("api", entries.notfound.kind)
      assert.equal("1", entries.notfound.result_code)
      assert.is_string(entries.notfound.time)
      -- all found: exit 0, and a summary on stdout without --json
      H.write_file(tmp .. "/ok.csv", "callID\nwav-3000\n")
      r = batch("--input ok.csv -o out2", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.matches("saved%s+1", r.out)
      assert.matches("journal: out2/%.cmsrec%-journal", r.out)
    end)

    it("a rerun skips the saved calls (no request for them) and tries notfound and failed ones again", function()
      H.write_file(tmp .. "/calls.csv", "callID\nwav-2000\nwav-3000\nnotfound\nhttp-500\nwav-4000\n")
      local r = batch("--input calls.csv -o out --json --retries 0", { cd = tmp })
      assert.equal(1, r.code, r.err)
      assert.matches("http%-500: the CMS answered HTTP 500", r.err)
      assert.same({ ["http 500"] = 1 }, cjson.decode(r.out).failures)
      -- one file removed, one cut short: both downloaded again
      os.remove(tmp .. "/out/wav-3000.wav")
      H.write_file(tmp .. "/out/wav-4000.wav", "short")
      mock.reset()
      r = batch("--input calls.csv -o out --json --retries 0", { cd = tmp })
      assert.equal(1, r.code, r.err)
      local s = cjson.decode(r.out)
      assert.same({ 1, 2, 1, 1 }, { s.skipped, s.saved, s.notfound, s.failed })
      local per_call = mock.stats().per_call
      assert.is_nil(per_call["wav-2000"])
      assert.same({ 1, 1, 1, 1 }, { per_call["wav-3000"], per_call["wav-4000"], per_call.notfound,
                                    per_call["http-500"] })
      assert.equal(mock.expect("wav-4000").sha256, H.sha256(H.read_file(tmp .. "/out/wav-4000.wav")))
      -- the journal: one line per finished call and run, each a JSON object
      local statuses = {}
      for _, e in ipairs(journal_entries(tmp .. "/out/.cmsrec-journal")) do
        statuses[#statuses + 1] = e.callID .. "=" .. e.status
      end
      table.sort(statuses)
      assert.same({ "http-500=failed", "http-500=failed", "notfound=notfound", "notfound=notfound",
                    "wav-2000=ok", "wav-3000=ok", "wav-3000=ok", "wav-4000=ok", "wav-4000=ok" }, statuses)
    end)

    it("--unzip: each call in DIR/<callID>/, listed in the journal; a rerun skips it", function()
      H.write_file(tmp .. "/calls.jsonl", '{"callID":"zip-2"}\n{"callID":"wav-1000"}\n')
      local r = batch("--input calls.jsonl -o out --unzip", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.same({ "rec_1.wav", "rec_2.wav" }, H.listing(tmp .. "/out/zip-2"))
      assert.equal(mock.expect("wav-10002").sha256, H.sha256(H.read_file(tmp .. "/out/zip-2/rec_2.wav")))
      assert.equal(mock.expect("wav-1000").sha256, H.sha256(H.read_file(tmp .. "/out/wav-1000/wav-1000.wav")))
      local e = journal_entries(tmp .. "/out/.cmsrec-journal")
      assert.equal(2, #e)
      mock.reset()
      r = batch("--input calls.jsonl -o out --unzip --json", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.equal(2, cjson.decode(r.out).skipped)
      assert.equal(0, mock.stats().requests)
      -- without --unzip the same calls are saved as files, not taken for saved
      r = batch("--input calls.jsonl -o out --json", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.equal(2, cjson.decode(r.out).saved)
    end)

    it("a torn journal line is noted and ignored, the batch goes on", function()
      H.capture("mkdir " .. q(tmp .. "/out"))
      H.write_file(tmp .. "/out/.cmsrec-journal", '{"callID":"wav-2000","status":"ok","pa')
      H.write_file(tmp .. "/calls.csv", "callID\nwav-2000\n")
      local r = batch("--input calls.csv -o out", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.matches("note: out/%.cmsrec%-journal, line 1: no newline at the end", r.err)
      local torn, line = H.read_file(tmp .. "/out/.cmsrec-journal"):match("^([^\n]*)\n([^\n]*)\n$")
      assert.equal('{"callID":"wav-2000","status":"ok","pa', torn) -- left as it was, ended
      assert.same({ "wav-2000", "ok" }, { cjson.decode(line).callID, cjson.decode(line).status })
    end)

    it("killed with kill -9 midway: no partial file, the journal intact; a rerun completes the rest only", function()
      -- one at a time: two quick ones, then a recording trickled over 2 s, then one more
      H.write_file(tmp .. "/calls.csv", "callID\nwav-1001\nwav-1002\nslowwav-2\nwav-1003\n")
      local cmd = ("%s %s%s batch --input calls.csv -o out --concurrency 1 --quiet"):format(H.LUA,
        REAL and "" or "-e " .. q(STAND_IN) .. " ", q(H.ROOT .. "/bin/cmsrec"))
      local r = H.run("sh -c " .. q(cmd .. " & pid=$!; sleep 1; kill -9 $pid; wait $pid"),
        { cd = tmp, env = H.mock_env() })
      assert.equal(137, r.code, r.err) -- 128 + SIGKILL
      local left = strays(tmp .. "/out", { "wav-1001.wav", "wav-1002.wav" })
      if H.under_asan() then
        -- the asan build is made without O_TMPFILE, to test the module's fallback: a hidden
        -- named temporary file, which a kill -9 leaves (never under the recording's name)
        assert.is_true(#left <= 1, table.concat(left, " "))
        if left[1] then assert.matches("^%.cmsrec%-%x+$", left[1]) end
        left = {}
      end
      assert.same({}, left)
      assert.is_false(H.exists(tmp .. "/out/slowwav-2.wav"))
      local e = journal_entries(tmp .. "/out/.cmsrec-journal") -- every line parses
      assert.equal(2, #e)
      mock.reset()
      r = batch("--input calls.csv -o out --json", { cd = tmp })
      assert.equal(0, r.code, r.err)
      local s = cjson.decode(r.out)
      assert.same({ 2, 2 }, { s.skipped, s.saved })
      local per_call = mock.stats().per_call
      assert.is_nil(per_call["wav-1001"])
      assert.is_nil(per_call["wav-1002"])
      assert.equal(1, per_call["slowwav-2"])
      assert.equal(mock.expect("wav-160044").sha256, H.sha256(H.read_file(tmp .. "/out/slowwav-2.wav")))
      local left = strays(tmp .. "/out", { "wav-1001.wav", "wav-1002.wav", "wav-1003.wav", "slowwav-2.wav" })
      if H.under_asan() and left[1] then assert.matches("^%.cmsrec%-%x+$", left[1]) left = {} end
      assert.same({}, left)
    end)

    it("hidden temporary files left by a killed download (no O_TMPFILE) go after an hour", function()
      H.capture("mkdir " .. q(tmp .. "/out"))
      for _, name in ipairs({ ".cmsrec-0123456789ab", ".cmsrec-ba9876543210", ".cmsrec-notatempfile",
                              "keep.wav" }) do
        H.write_file(tmp .. "/out/" .. name, "partial")
      end
      -- two of them untouched for two hours; the other two are another batch's, or no temporary
      H.capture("touch -d '2 hours ago' " .. q(tmp .. "/out/.cmsrec-0123456789ab") .. " " ..
        q(tmp .. "/out/.cmsrec-notatempfile") .. " " .. q(tmp .. "/out/keep.wav"))
      H.write_file(tmp .. "/calls.csv", "callID\nwav-1001\n")
      local r = batch("--input calls.csv -o out", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.matches("note: removed out/%.cmsrec%-0123456789ab, left by a download that was killed", r.err)
      assert.same({ ".cmsrec-ba9876543210", ".cmsrec-journal", ".cmsrec-notatempfile", "keep.wav", "wav-1001.wav" },
        H.listing(tmp .. "/out"))
    end)

    it("Ctrl-C: exit 6 at once, no partial file, a journal line per finished call; the same command goes on", function()
      H.write_file(tmp .. "/calls.csv", "callID\nwav-1001\nslowwav-2\nwav-1003\n")
      local r = batch("--input calls.csv -o out --concurrency 1 --json", { cd = tmp, interrupt = 1, limit = 20 })
      assert.equal(6, r.code, r.err)
      assert.is_true(r.elapsed < 3, r.elapsed .. " s")
      assert.matches("interrupted", r.err)
      local s = cjson.decode(r.out)
      assert.is_true(s.interrupted)
      assert.same({ 1, 2 }, { s.saved, s.not_attempted })
      assert.same({}, strays(tmp .. "/out", { "wav-1001.wav" }))
      assert.equal(1, #journal_entries(tmp .. "/out/.cmsrec-journal"))
      mock.reset()
      r = batch("--input calls.csv -o out --json --concurrency 1", { cd = tmp, limit = 20 })
      assert.equal(0, r.code, r.err)
      s = cjson.decode(r.out)
      assert.same({ 1, 2 }, { s.skipped, s.saved })
      assert.is_nil(mock.stats().per_call["wav-1001"])
    end)

    it("rejected credentials: exit 4, nothing more is started", function()
      H.write_file(tmp .. "/calls.csv", "callID\nwav-1001\nwav-1002\nwav-1003\n")
      local r = batch("--input calls.csv -o out --concurrency 1 --json",
        { cd = tmp, env = H.mock_env({ CMSREC_SK = "wrong-sk-0123456789" }) })
      assert.equal(4, r.code, r.err)
      assert.equal(1, mock.stats().requests)
      local s = cjson.decode(r.out)
      assert.same({ 0, 1, 2 }, { s.saved, s.failed, s.not_attempted })
      assert.same({ auth = 1 }, s.failures)
      assert.matches("the batch stops", r.err)
      assert.is_nil(r.err:find("wrong-sk-0123456789", 1, true))
      local e = journal_entries(tmp .. "/out/.cmsrec-journal")
      assert.same({ "wav-1001", "failed", "auth" }, { e[1].callID, e[1].status, e[1].kind })
    end)

    it("--retries: temporary failures tried again (get too), --retries 0 gives up at once", function()
      -- retry-1-503-N: the first request answers 503 with Retry-After: 1, the next the recording
      H.write_file(tmp .. "/calls.csv", "callID\nretry-1-503-3000\nwav-1001\n")
      local r = batch("--input calls.csv -o out --retries 0 --json", { cd = tmp })
      assert.equal(1, r.code, r.err)
      assert.same({ ["http 503"] = 1 }, cjson.decode(r.out).failures)
      mock.reset() -- the first request fails again
      r = batch("--input calls.csv -o out --json", { cd = tmp }) -- the default: 2 retries
      assert.equal(0, r.code, r.err)
      assert.equal(2, mock.stats().per_call["retry-1-503-3000"])
      local e = journal_entries(tmp .. "/out/.cmsrec-journal")
      assert.same({ "retry-1-503-3000", "ok", 2 }, { e[3].callID, e[3].status, e[3].attempts })
      assert.equal(mock.expect("retry-1-503-3000").sha256, H.sha256(H.read_file(tmp .. "/out/retry-1-503-3000.wav")))
      mock.reset()
      r = H.cli("get --retries 0 --call-id retry-1-503-3000 -o " .. q(tmp .. "/g/"), { env = H.mock_env() })
      assert.equal(1, r.code, r.err)
      r = H.cli("get --call-id retry-1-503-3000 -o " .. q(tmp .. "/g/"), { env = H.mock_env() })
      assert.equal(0, r.code, r.err)
      assert.equal(2, mock.stats().per_call["retry-1-503-3000"])
      r = H.cli("get --retries 11 --call-id x", { env = H.mock_env() })
      assert.equal(2, r.code)
    end)

    it("--max-rate R: requests spaced 1/R s apart, whatever the concurrency", function()
      H.write_file(tmp .. "/calls.csv", "callID\nwav-1001\nwav-1002\nwav-1003\nwav-1004\nwav-1005\n")
      local r = batch("--input calls.csv -o out --concurrency 5 --max-rate 5 --quiet", { cd = tmp })
      assert.equal(0, r.code, r.err)
      local times = mock.stats().request_times
      assert.equal(5, #times)
      for k = 2, 5 do
        local gap = times[k] - times[k - 1]
        assert.is_true(gap >= 0.15, ("request %d came %.3f s after"):format(k, gap))
      end
    end)

    it("progress: a line redrawn on a terminal, plain lines in a log, nothing with --quiet", function()
      H.write_file(tmp .. "/calls.csv", "callID\nslowwav-1\nwav-1002\n")
      local r = batch("--input calls.csv -o out", { cd = tmp, tty = true, limit = 20 })
      assert.equal(0, r.code, r.out)
      assert.matches("\r[ %d]+%% %[[#.]+%]  %d/2 calls", r.out)
      assert.matches("100%% %[#+%]  2/2 calls", r.out) -- the last figures
      H.write_file(tmp .. "/quick.csv", "callID\nwav-1001\nwav-1002\n")
      r = batch("--input quick.csv -o out2", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.is_nil(r.err:find("\r", 1, true))
      assert.matches("^batch: 2 calls, 0 already saved: 2 to download into out2\n", r.err)
      r = batch("--input quick.csv -o out3 --quiet", { cd = tmp })
      assert.equal(0, r.code, r.err)
      assert.equal("", r.err)
    end)
  end)
end)
