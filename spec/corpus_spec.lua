-- The malformed-input corpus (issue 10): G.TOTAL generated cases of bad and
-- good requests, options and configurations (spec/corpus_gen.lua says how
-- they are made and what each must give) against every entry point: new,
-- download, download_file, prepare, reader, download_many, sign, classify,
-- unzip. Each case must end as its input says: a Lua error naming the
-- problem, nil + an "invalid" error naming the field, or (valid input only)
-- what the mock answers. The mock checks every request it receives
-- (test/mock_cms.py, strict request checks): none may be malformed, and it
-- must have seen exactly the requests of the valid cases, with their fields.
--
-- CORPUS_CASE=N runs case N alone (and prints it); CORPUS_VERBOSE=1 prints
-- each case number before it runs (to find one that kills the process).
local H = require "spec.helper"
local G = require "spec.corpus_gen"
local cjson = require "cjson"
local mock = H.mock

local unpack = G.unpack
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local ONLY = tonumber(os.getenv("CORPUS_CASE") or "")
local VERBOSE = os.getenv("CORPUS_VERBOSE") == "1"
local JSON_CT = "application/json;charset=UTF-8"
local DEFAULT_PATH = "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile"

local function fail(fmt, ...) error(string.format(fmt, ...), 0) end

local read_all = H.read_file

local function list_names(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = tostring(k) end
  table.sort(out)
  return table.concat(out, "/")
end

local function shown(v)
  if type(v) == "table" and rawget(v, "kind") then
    return ("err{kind=%s, field=%s, message=%s}"):format(tostring(rawget(v, "kind")),
      tostring(rawget(v, "field")), G.describe(tostring(rawget(v, "message"))))
  end
  if type(v) == "string" or type(v) == "number" then return G.describe(v) end
  return tostring(v)
end

local function shown_results(res, from)
  local out = {}
  for i = from, res.n do out[#out + 1] = shown(res[i]) end
  return table.concat(out, ", ")
end

describe("the malformed-input corpus", function()
  local cmsrec, client, ctx
  local tally = { cases = 0, invalid = 0, raise_string = 0, raise_table = 0, sent = 0, maybe = 0,
                  other = 0, sent_outcomes = {} }
  local expected_bodies, maybe_bodies = {}, {} -- body -> requests certain, and possible
  local unzipped = {} -- every file cmsrec.unzip reported written

  setup(function()
    mock.start()
    cmsrec = require "cmsrec"
    client = cmsrec.new(H.config{ timeout = 2 })
    local root = H.tmpdir()
    ctx = { cmsrec = cmsrec, url = mock.url, port = mock.https_port, http_url = mock.http_url,
            ak = H.AK, sk = H.SK, ca = mock.ca, root = root, dir = root .. "/f", mdir = root .. "/m",
            udir = root .. "/u", zip_path = root .. "/zip-2.zip", bytes = {}, members = {} }
    assert(H.sh(("mkdir %s %s %s"):format(H.q(ctx.dir), H.q(ctx.mdir), H.q(ctx.udir))))
    -- what the answers hold, checked against the mock's sha256
    for answer, id in pairs({ wav = "1-2", odd = "odd", zip = "zip-2", rec_1 = "wav-10001", rec_2 = "wav-10002" }) do
      local data = assert(client:download{ callID = id })
      assert.equal(mock.expect(id).sha256, H.sha256(data))
      ctx.bytes[answer] = data
    end
    ctx.zip = ctx.bytes.zip
    ctx.members = { ["rec_1.wav"] = ctx.bytes.rec_1, ["rec_2.wav"] = ctx.bytes.rec_2 }
    H.write_file(ctx.zip_path, ctx.zip)
    ctx.client_url = mock.url .. DEFAULT_PATH
    mock.reset() -- the corpus starts from no request at all
  end)

  teardown(function()
    if client then client:close() end
    mock.stop()
    if ctx and ctx.root then H.rmrf(ctx.root) end
    local outcomes = {}
    for k, v in pairs(tally.sent_outcomes) do outcomes[#outcomes + 1] = k .. " " .. v end
    table.sort(outcomes)
    io.stderr:write(("\ncorpus: %d cases: %d invalid, %d Lua errors (%d strings, %d tables), " ..
      "%d requests sent (+ %d cancelled maybe before sending) (%s), %d other results; " ..
      "mock: %s requests seen, %s malformed\n"):format(
      tally.cases, tally.invalid, tally.raise_string + tally.raise_table, tally.raise_string,
      tally.raise_table, tally.sent, tally.maybe, table.concat(outcomes, ", "), tally.other,
      tally.seen and ("%d"):format(tally.seen) or "?", tally.malformed and ("%d"):format(tally.malformed) or "?"))
  end)

  -- ===== the outcomes =====

  local function check_raise(res, exp)
    if res[1] then fail("expected a Lua error naming %s; got %s", table.concat(exp.names or { "-" }, " or "),
      shown_results(res, 2)) end
    local e, msg = res[2], nil
    if type(e) == "string" then
      tally.raise_string = tally.raise_string + 1
      msg = e
    elseif type(e) == "table" then
      tally.raise_table = tally.raise_table + 1
      if exp.tables and rawget(e, "corpus") == "raised" then return end -- a callback's, as it raised it
      msg = tostring(rawget(e, "message") or "")
    else
      fail("raised a %s, not a string or a table", type(e))
    end
    if msg:find(H.SK, 1, true) then fail("the SK is in the error") end
    if exp.names then
      for _, name in ipairs(exp.names) do
        if msg:find(name, 1, true) then return end
      end
      fail("the error %s names none of %s", G.describe(msg), G.describe(table.concat(exp.names, " | ")))
    end
  end

  -- nil, err (kind invalid, naming one of `fields`); nothing was sent.
  local function check_invalid_err(first, err, exp, has_attempts)
    if first ~= nil then fail("expected nil, err (invalid %s); got %s, %s", table.concat(exp.fields, "|"),
      shown(first), shown(err)) end
    if type(err) ~= "table" or err.kind ~= "invalid" then
      fail("expected kind invalid naming %s; got %s", table.concat(exp.fields, " or "), shown(err))
    end
    local ok = false
    for _, f in ipairs(exp.fields) do ok = ok or err.field == f end
    if not ok then fail("err.field is %s, want one of %s (%s)", G.describe(tostring(err.field)),
      G.describe(table.concat(exp.fields, " | ")), G.describe(err.message)) end
    if not err.message:find(err.field, 1, true) then
      fail("the message %s does not name the field %s", G.describe(err.message), G.describe(err.field))
    end
    if err.retryable ~= false then fail("an invalid error is retryable") end
    if not tostring(err):find("^cmsrec: .+ %(invalid error%)$") then fail("tostring(err) is %s", tostring(err)) end
    if has_attempts and err.attempts ~= 0 then
      fail("err.attempts is %s for an invalid request", tostring(err.attempts))
    end
    H.assert_no_secret(err)
    if not G.printable(err.message) then fail("the message is not printable UTF-8") end
    tally.invalid = tally.invalid + 1
  end

  local function check_invalid(res, exp, has_attempts)
    if not res[1] then fail("raised %s; expected nil, err (invalid)", shown(res[2])) end
    check_invalid_err(res[2], res[3], exp, has_attempts)
  end

  -- What a download gave, as {ok, data} or {kind, err}; checked against exp.
  local function check_outcome(obs, exp, case)
    if obs.ok then
      if not exp.outcomes.ok then fail("succeeded; expected %s", list_names(exp.outcomes)) end
      local want = ctx.bytes[exp.answer]
      if obs.data ~= want then
        fail("the recording differs (%d bytes, want %d)", obs.data and #obs.data or -1, #want)
      end
      if obs.info and (obs.info.format ~= "wav" or obs.info.bytes ~= #want) then
        fail("info says %s, %s bytes", tostring(obs.info.format), tostring(obs.info.bytes))
      end
      tally.sent_outcomes.ok = (tally.sent_outcomes.ok or 0) + 1
    else
      local err = obs.err
      if type(err) ~= "table" or not exp.outcomes[err.kind] then
        fail("expected %s; got %s", list_names(exp.outcomes), shown(err))
      end
      if err.kind == "api" and err.result_code ~= "1" then fail("resultCode %s", tostring(err.result_code)) end
      if err.kind == "http" and err.status ~= 404 then fail("HTTP %s", tostring(err.status)) end
      H.assert_no_secret(err)
      local key = (case.sent > 0 or #case.maybe_bodies > 0) and err.kind or err.kind .. " before sending"
      tally.sent_outcomes[key] = (tally.sent_outcomes[key] or 0) + 1
    end
  end

  -- The result of a download call: data or true (with a sink), info | nil, err.
  local function observe_download(res, case)
    if not res[1] then fail("raised %s; expected a result", shown(res[2])) end
    if res[2] == nil then return { err = res[3] } end
    local data = res[2]
    if case.beh and case.beh.parts then
      if data ~= true then fail("with a sink the first result is %s, not true", shown(data)) end
      data = table.concat(case.beh.parts)
    end
    return { ok = true, data = data, info = res[3] }
  end

  -- ===== the entry points =====

  local RUN = {}

  function RUN.new(case)
    local res = pack(pcall(cmsrec.new, unpack(case.args, 1, case.nargs)))
    if case.expect.how == "raise" then return check_raise(res, case.expect) end
    if not res[1] then fail("raised %s; the configuration is valid", shown(res[2])) end
    local c = res[2]
    if not tostring(c):find("^cmsrec%.client") or tostring(c):find(H.SK, 1, true) then
      fail("tostring(client) is %s", tostring(c))
    end
    if not case.then_expect then
      c:close()
      tally.other = tally.other + 1
      return
    end
    local dl = pack(pcall(c.download, c, case.req))
    c:close()
    if case.then_expect.how == "invalid" then return check_invalid(dl, case.then_expect, true) end
    check_outcome(observe_download(dl, case), case.then_expect, case)
  end

  function RUN.download(case)
    local res = pack(pcall(client.download, client, unpack(case.args, 1, case.nargs)))
    local how = case.expect.how
    if how == "raise" then return check_raise(res, case.expect) end
    if how == "invalid" then return check_invalid(res, case.expect, true) end
    check_outcome(observe_download(res, case), case.expect, case)
  end

  -- A file download_file wrote: its bytes, then it is removed.
  local function take_file(path, case)
    if type(path) ~= "string" then fail("info.path is %s", shown(path)) end
    if path:sub(1, #ctx.dir + 1) ~= ctx.dir .. "/" then fail("wrote %s, outside the directory", G.describe(path)) end
    local data = read_all(path)
    os.remove(path)
    if case.dest_kind == "file" and not case.unzip and path ~= case.dest then
      fail("wrote %s, not the path given", G.describe(path))
    end
    return data
  end

  function RUN.download_file(case)
    local res = pack(pcall(client.download_file, client, unpack(case.args, 1, case.nargs)))
    local how = case.expect.how
    if how == "raise" then return check_raise(res, case.expect) end
    if how == "invalid" then return check_invalid(res, case.expect, true) end
    if not res[1] then fail("raised %s; expected a result", shown(res[2])) end
    local info, obs = res[2], nil
    if info == nil then
      obs = { err = res[3] }
      if case.dest_kind == "file" and read_all(case.dest) then
        fail("a failed download left %s", G.describe(case.dest))
      end
    elseif case.beh.parts then
      obs = { ok = true, data = table.concat(case.beh.parts), info = info }
    elseif case.unzip then
      if type(info.files) ~= "table" or #info.files ~= 1 then fail("info.files is %s", shown(info.files)) end
      obs = { ok = true, data = take_file(info.files[1].path, case) }
      if info.path ~= ctx.dir then os.remove(info.path) end
    else
      obs = { ok = true, data = take_file(info.path, case), info = info }
    end
    check_outcome(obs, case.expect, case)
  end

  function RUN.reader(case)
    local res = pack(pcall(client.reader, client, unpack(case.args, 1, case.nargs)))
    local how = case.expect.how
    if how == "raise" then return check_raise(res, case.expect) end
    if how == "invalid" then return check_invalid(res, case.expect, false) end
    if not res[1] then fail("raised %s; expected a reader", shown(res[2])) end
    local reader = res[2]
    if reader == nil then return check_outcome({ err = res[3] }, case.expect, case) end
    local parts, obs = {}, nil
    for _ = 1, 100000 do
      local chunk, err = reader()
      if chunk then
        parts[#parts + 1] = chunk
      else
        obs = err and { err = err } or { ok = true, data = table.concat(parts), info = reader:info() }
        break
      end
    end
    reader:close()
    if not obs then fail("the reader never ended") end
    check_outcome(obs, case.expect, case)
  end

  local function check_prepared(p, wire)
    if type(p) ~= "table" then fail("prepare gave %s", shown(p)) end
    if p.method ~= "POST" or p.url ~= ctx.client_url then
      fail("method %s, url %s", tostring(p.method), tostring(p.url))
    end
    local h = p.headers
    local want = { Host = "127.0.0.1:" .. ctx.port, ["Content-Type"] = JSON_CT,
                   ["Content-Length"] = tostring(#p.body), ["Accept-Encoding"] = "identity" }
    local n = 0
    for k, v in pairs(h) do
      n = n + 1
      if type(v) ~= "string" or v:find("[%c]") then fail("header %s is %s", tostring(k), shown(v)) end
      if want[k] and want[k] ~= v then fail("header %s is %s, want %s", k, G.describe(v), want[k]) end
    end
    if n ~= 5 or not h.Authorization then fail("headers %s", list_names(h)) end
    if not h.Authorization:find("^auth%-v2/mock%-ak/%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ/" ..
        "content%-length;content%-type;host/" .. ("%x"):rep(64) .. "$") then
      fail("Authorization %s", h.Authorization)
    end
    if not G.printable(p.body) then fail("the body is not printable UTF-8") end
    local ok, body = pcall(cjson.decode, p.body)
    if not ok or type(body) ~= "table" then fail("the body %s is not a JSON object", G.describe(p.body)) end
    local last, count = 0, 0
    for i, f in ipairs(G.FIELDS) do
      if body[f] ~= wire[i] then fail("the body's %s is %s, want %s", f, shown(body[f]), G.describe(wire[i])) end
      local at = p.body:find('"' .. f .. '":', 1, true)
      if not at or at < last then fail("the body's fields are not in the documented order") end
      last = at
    end
    for _ in pairs(body) do count = count + 1 end
    if count ~= 5 then fail("the body has %d fields", count) end
  end

  function RUN.prepare(case)
    local res = pack(pcall(client.prepare, client, unpack(case.args, 1, case.nargs)))
    local how = case.expect.how
    if how == "raise" then return check_raise(res, case.expect) end
    if how == "invalid" then return check_invalid(res, case.expect, false) end
    if not res[1] then fail("raised %s; expected a prepared request", shown(res[2])) end
    check_prepared(res[2], case.expect.wire)
    tally.other = tally.other + 1
  end

  function RUN.download_many(case)
    local res = pack(pcall(client.download_many, client, unpack(case.args, 1, case.nargs)))
    local exp = case.expect
    if exp.how == "raise" then return check_raise(res, exp) end
    -- a callback that raised: its error again (os.time's own, from others())
    if exp.raises then return check_raise(res, { names = { "raises", "'time'", "date table" }, tables = true }) end
    if not res[1] then fail("raised %s; expected results", shown(res[2])) end
    local results, ok, failed, missed = res[2], 0, 0, 0
    for i, e in ipairs(exp.entries) do
      local rr = results[i]
      if type(rr) ~= "table" then fail("results[%d] is %s", i, shown(rr)) end
      if e.fields then
        if exp.stops and rr.err and rr.err.kind == "cancelled" and rr.err.attempts == 0 then
          missed = missed + 1
        else
          check_invalid_err(nil, rr.err, e, true)
          tally.invalid = tally.invalid - 1 -- counted as a case below
          failed = failed + 1
        end
      else
        local obs
        if rr.err then
          obs = { err = rr.err }
          failed = failed + 1
        elseif exp.dir then
          local p = rr.info and rr.info.path
          if type(p) ~= "string" or p:sub(1, #ctx.mdir + 1) ~= ctx.mdir .. "/" then
            fail("results[%d] was written to %s", i, shown(p))
          end
          obs = { ok = true, data = read_all(rr.info.files and rr.info.files[1].path or p) }
          ok = ok + 1
        else
          obs = { ok = true, data = rr.data, info = rr.info }
          ok = ok + 1
        end
        local good, why = pcall(check_outcome, obs, e, case)
        if not good then fail("results[%d]: %s", i, why) end
      end
    end
    if results[#exp.entries + 1] ~= nil then fail("more results than requests") end
    if results.ok ~= ok or results.failed ~= failed or results.not_attempted ~= missed then
      fail("ok/failed/not_attempted %s/%s/%s, want %d/%d/%d", tostring(results.ok), tostring(results.failed),
        tostring(results.not_attempted), ok, failed, missed)
    end
    -- what was written goes
    for i = 1, #exp.entries do
      local info = results[i].info
      if info and info.files then
        for _, f in ipairs(info.files) do os.remove(f.path) end
        os.remove(info.path)
      elseif info and info.path then
        os.remove(info.path)
      end
    end
    tally.other = tally.other + 1
  end

  function RUN.sign(case)
    local res = pack(pcall(cmsrec.sign, unpack(case.args, 1, case.nargs)))
    local exp = case.expect
    if exp.how == "raise" then return check_raise(res, exp) end
    if not res[1] then fail("raised %s; the arguments are valid", shown(res[2])) end
    local auth, d = res[2], res[3]
    local prefix = "auth-v2/" .. exp.ak .. "/"
    if type(auth) ~= "string" or auth:sub(1, #prefix) ~= prefix then fail("Authorization %s", shown(auth)) end
    local rest = auth:sub(#prefix + 1)
    local ts = exp.timestamp or rest:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ")
    if not ts or rest:sub(1, #ts + 1) ~= ts .. "/" then fail("the timestamp of %s", G.describe(auth)) end
    rest = rest:sub(#ts + 2)
    if rest ~= exp.signed .. "/" .. d.signature or not d.signature:find("^" .. ("%x"):rep(64) .. "$") then
      fail("signed headers and signature %s, want %s/<64 hex>", G.describe(rest), G.describe(exp.signed))
    end
    if d.signed_headers ~= exp.signed or d.timestamp ~= ts or not tostring(d.signing_key):find("^%x+$") then
      fail("details %s %s", shown(d.signed_headers), shown(d.timestamp))
    end
    if exp.timestamp and cmsrec.sign(unpack(case.args, 1, case.nargs)) ~= auth then
      fail("signing twice gave another result")
    end
    tally.other = tally.other + 1
  end

  local KINDS = {}
  for _, k in ipairs(require("cmsrec").kinds) do KINDS[k] = true end

  function RUN.classify(case)
    local res = pack(pcall(cmsrec.classify, unpack(case.args, 1, case.nargs)))
    local exp = case.expect
    if exp.how == "raise" then return check_raise(res, exp) end
    if not res[1] then fail("raised %s; the arguments are valid", shown(res[2])) end
    local st, body, r1, r2 = exp.status, exp.body, res[2], res[3]
    local success = st and st >= 200 and st <= 299
    if type(r1) == "string" then
      if r1 ~= "wav" and r1 ~= "zip" and r1 ~= "unknown" then fail("format %s", r1) end
      if (st and not success) or exp.encoded then
        fail("a format for HTTP %s (encoded %s)", tostring(st), tostring(exp.encoded))
      end
      if body:find("^RIFF....WAVE") and r1 ~= "wav" then fail("a WAV classified %s", r1) end
      if body:sub(1, 4) == "PK\3\4" and r1 ~= "zip" then fail("a ZIP classified %s", r1) end
    elseif r1 == nil and res.n == 2 then
      if (st and not success) or case.args[4] then fail("\"more bytes\" for HTTP %s, eof %s", tostring(st),
        tostring(case.args[4])) end
    elseif r1 == nil and type(r2) == "table" then
      if not KINDS[r2.kind] or r2.kind == "invalid" then fail("kind %s", tostring(r2.kind)) end
      if type(r2.message) ~= "string" or not G.printable(r2.message) then fail("message %s", shown(r2.message)) end
      if st and st > 0 and not success and r2.status ~= st then fail("status %s, want %d", tostring(r2.status), st) end
      if success and body:find("^RIFF....WAVE") and not exp.encoded then fail("a WAV gave %s", shown(r2)) end
    else
      fail("classify returned %s", shown_results(res, 2))
    end
    tally.other = tally.other + 1
  end

  function RUN.unzip(case)
    local res = pack(pcall(cmsrec.unzip, unpack(case.args, 1, case.nargs)))
    local exp = case.expect
    if exp.how == "raise" then return check_raise(res, exp) end
    if not res[1] then fail("raised %s; the arguments are valid", shown(res[2])) end
    local members, err = res[2], res[3]
    if members == nil then
      if exp.good then fail("a good ZIP failed: %s", shown(err)) end
      if type(err) ~= "table" or not (err.kind == "protocol" or err.kind == "io" or err.kind == "too_large") then
        fail("expected kind protocol, io or too_large; got %s", shown(err))
      end
    else
      if type(members) ~= "table" or #members == 0 then fail("unzip returned %s", shown(members)) end
      if exp.dir_kind == "io" then fail("extracted into a missing directory") end
      for _, m in ipairs(members) do
        local name = m.name
        if type(name) ~= "string" or name:find("^/") or ("/" .. name .. "/"):find("/%.%./") or
            not G.printable(name) then
          fail("a member named %s", shown(name))
        end
        local data = m.data
        if exp.dir then
          if m.path ~= exp.dir .. "/" .. name then fail("member %s written to %s", name, shown(m.path)) end
          data = read_all(m.path)
          unzipped[m.path] = true
        end
        if type(data) ~= "string" or #data ~= m.size then fail("member %s: %s bytes, size %s", name,
          tostring(data and #data), tostring(m.size)) end
        if exp.good and data ~= ctx.members[name] then fail("member %s differs", name) end
      end
      if exp.good and #members ~= 2 then fail("%d members, want 2", #members) end
    end
    tally.other = tally.other + 1
  end

  -- ===== the corpus, one test per entry point =====

  local function run_cases(target)
    local failures = {}
    local first, last = ONLY or 1, ONLY or G.TOTAL
    for n = first, last do
      if G.target(n) == target then
        local case = G.case(n, ctx)
        if VERBOSE or ONLY then io.stderr:write(("case %d %s: %s\n"):format(n, target, case.label)) end
        tally.cases = tally.cases + 1
        for _, key in ipairs(case.bodies) do expected_bodies[key] = (expected_bodies[key] or 0) + 1 end
        for _, key in ipairs(case.maybe_bodies) do maybe_bodies[key] = (maybe_bodies[key] or 0) + 1 end
        tally.sent = tally.sent + case.sent
        tally.maybe = tally.maybe + #case.maybe_bodies
        local t0 = VERBOSE and H.now()
        local ok, why = pcall(RUN[target], case)
        if VERBOSE and H.now() - t0 > 0.1 then
          io.stderr:write(("case %d took %.2f s\n"):format(n, H.now() - t0))
        end
        if not ok then
          failures[#failures + 1] = ("case %d (%s: %s): %s"):format(n, target, case.label, tostring(why))
        end
      end
    end
    return failures
  end

  for _, target in ipairs(G.TARGETS) do
    it(target .. ": every case ends as its input says", function()
      local failures = run_cases(target)
      if #failures > 0 then
        local shown_failures = {}
        for i = 1, math.min(#failures, 25) do shown_failures[i] = failures[i] end
        error(("%d cases failed (re-run one with CORPUS_CASE=N):\n%s"):format(#failures,
          table.concat(shown_failures, "\n")), 0)
      end
    end)
  end

  it("download_file and download_many left nothing behind; unzip wrote only what it listed", function()
    assert.equal("", H.ls(ctx.dir))
    assert.equal("", H.capture("find " .. H.q(ctx.mdir) .. " -type f"))
    local found = {}
    for path in H.capture("find " .. H.q(ctx.udir) .. " -type f"):gmatch("[^\n]+") do found[path] = true end
    for path in pairs(unzipped) do assert.is_true(found[path] ~= nil, "missing: " .. path) end
    for path in pairs(found) do assert.is_true(unzipped[path] ~= nil, "not listed: " .. path) end
    assert.equal("", H.capture("find " .. H.q(ctx.root) .. " -name '.cmsrec*'"))
  end)

  -- (A request whose on_progress cancels at its first call may or may not have
  -- been sent: those count as possible, not certain.)
  it("the mock saw exactly the valid cases' requests, and none was malformed", function()
    local strict = mock.ctl("strict")
    tally.seen, tally.malformed = strict.seen, strict.malformed
    assert.equal(0, strict.malformed, "malformed: " .. tostring(strict.reason))
    local diffs = {}
    for key, count in pairs(expected_bodies) do
      local got = strict.bodies[key] or 0
      if got < count or got > count + (maybe_bodies[key] or 0) then
        diffs[#diffs + 1] = ("%s: sent %d times, want %d"):format(G.describe(key), got, count)
      end
    end
    for key, count in pairs(strict.bodies) do
      if not expected_bodies[key] and count > (maybe_bodies[key] or 0) then
        diffs[#diffs + 1] = ("%s: sent %d times, not expected"):format(G.describe(key), count)
      end
    end
    assert.equal(0, #diffs, table.concat(diffs, "\n", 1, math.min(#diffs, 20)))
    assert.is_true(strict.seen >= tally.sent and strict.seen <= tally.sent + tally.maybe,
      ("the mock saw %d requests, want %d (+ up to %d)"):format(strict.seen, tally.sent, tally.maybe))
  end)

  -- The checks are live: requests cmsrec never sends count as malformed.
  it("the mock counts a request with an obs-fold, or for HTTP/1.0, as malformed", function()
    local before = mock.ctl("strict")
    local script = os.tmpname()
    H.write_file(script, [[
import socket, sys
port = int(sys.argv[1])
for raw in (b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
            b"POST /x HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nContent-Length: 0\r\n\r\n"):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(raw % port)
    s.recv(65536)
    s.close()
]])
    assert.is_true(H.sh(("python3 %s %s"):format(script, mock.http_port)))
    os.remove(script)
    local after = mock.ctl("strict")
    assert.equal(before.seen + 2, after.seen)
    assert.equal(before.malformed + 2, after.malformed)
    assert.matches("HTTP/1.1", after.reason)
  end)
end)
