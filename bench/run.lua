-- make bench: cmsrec side by side with what users would use instead (curl,
-- LuaSocket + LuaSec, Python requests), against nginx on loopback with TLS.
--
-- Run by bench/bench.sh, which starts nginx and sets BENCH_DIR (its prefix:
-- server.pem, data/, logs/) and BENCH_URL. Every client runs in a process of
-- its own under build/bench/measure (wall time, user + sys CPU time and peak
-- RSS of the process and its children, from wait4); each row is the median of
-- several repetitions, the alternatives interleaved so that a disturbance hits
-- them alike. A client that fails is reported as failed and the rest goes on.
-- The table goes to stdout and build/bench/results.md, the plot to
-- bench/throughput.png. Lua 5.4 runs it; it parses as Lua 5.1 (luac5.1 -p).
local DIR = assert(os.getenv("BENCH_DIR"), "run by bench/bench.sh")
local URL = assert(os.getenv("BENCH_URL"), "run by bench/bench.sh")
local CA = DIR .. "/server.pem"
local OUT = "build/bench"
local MEASURE = OUT .. "/measure"
local PY = os.getenv("BENCH_PYTHON") or "/usr/bin/python3" -- Debian's, with python3-requests
local LUA = "lua5.4"
local BIG = tonumber(os.getenv("BENCH_BIG_BYTES") or "") or 300000000
local SMALL_N = tonumber(os.getenv("BENCH_SMALL_N") or "") or 1000
local REPS = tonumber(os.getenv("BENCH_REPS") or "")
local ONLY = os.getenv("BENCH_ONLY")
local API = "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile"
local AK, SK = "bench-ak", "bench-sk-0123456789"
local SCRATCH = DIR .. "/out" -- downloads go here: the file system of /tmp
local T0 = os.time()

-- ===== small helpers =====

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local function must(cmd) assert(sh(cmd), "failed: " .. cmd) end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function capture(cmd)
  local f = assert(io.popen(cmd))
  local s = f:read("*a")
  f:close()
  return (s:gsub("%s+$", ""))
end

local function median(xs)
  local t = {}
  for i = 1, #xs do t[i] = xs[i] end
  table.sort(t)
  local n = #t
  if n == 0 then return nil end
  if n % 2 == 1 then return t[(n + 1) / 2] end
  return (t[n / 2] + t[n / 2 + 1]) / 2
end

local function wanted(section)
  if not ONLY then return true end
  for s in ONLY:gmatch("[^,%s]+") do if s == section then return true end end
  return false
end

local function loadavg() return ((read("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)")) end

-- ===== measuring =====

-- Run `cmd` (a shell command line) under measure; its stdout's RESULT lines
-- become fields. Raises when it fails: a broken client is not a figure.
local function measure(cmd)
  local res, out, err = OUT .. "/measure.txt", OUT .. "/stdout.txt", OUT .. "/stderr.txt"
  os.remove(res)
  local ok = sh(("%s %s -- %s >%s 2>%s"):format(MEASURE, q(res), cmd, q(out), q(err)))
  local m = {}
  for k, v in (read(res) or ""):gmatch("(%w+)=(%S+)") do m[k] = tonumber(v) end
  for line in (read(out) or ""):gmatch("RESULT ([^\n]*)") do
    for key, value in line:gmatch("(%w+)=(%S+)") do m[key] = tonumber(value) or value end
  end
  if not ok or not m.wall then
    error(("exit %s: %s\n%s"):format(tostring(m.status), cmd,
      ((read(err) or "") .. (read(out) or "")):sub(1, 2000)), 0)
  end
  m.cpu = m.user + m.sys
  return m
end

-- access.log lines written since the last call: connections (one TLS
-- handshake each) and how many of them resumed a session.
local log_seen = 0
local function connections()
  local s = read(DIR .. "/logs/access.log") or ""
  local new = s:sub(log_seen + 1)
  log_seen = #s
  local seen, n, resumed = {}, 0, 0
  for id, nreq, reused in new:gmatch("(%d+) (%d+) \"([^\"]*)\"[^\n]*\n") do
    if not seen[id] then
      seen[id] = true
      n = n + 1
      if reused == "r" and nreq == "1" then resumed = resumed + 1 end
    end
  end
  return n, resumed
end

-- CPU seconds nginx's workers used so far (utime + stime, in 10 ms ticks).
local function nginx_cpu()
  local master = tonumber(read(DIR .. "/logs/nginx.pid") or "") or 0
  local total = 0
  for pid in (read(("/proc/%d/task/%d/children"):format(master, master)) or ""):gmatch("%d+") do
    local fields = {}
    for f in (read("/proc/" .. pid .. "/stat") or ""):gsub("^.*%) ", ""):gmatch("%S+") do
      fields[#fields + 1] = f
    end
    total = total + (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)
  end
  return total / 100
end

-- Run every case `reps` times, interleaved; c.m gets the medians, c.failed
-- the first error (that case is not run again).
local function run_cases(cases, reps)
  for _, c in ipairs(cases) do c.runs = {} end
  for rep = 1, REPS or reps do
    for _, c in ipairs(cases) do
      if not c.failed then
        local ok, m = pcall(function()
          if c.before then c.before(rep) end
          local m = measure(c.cmd)
          if c.after then c.after(m, rep) end
          return m
        end)
        if ok then
          c.runs[#c.runs + 1] = m
          io.stderr:write(("  %-44s %7.3f s wall, %6.3f s CPU, %7.1f MB peak\n"):format(c.name,
            m.wall, m.cpu, m.maxrss / 1024))
        else
          c.failed = tostring(m)
          io.stderr:write(("  %-44s FAILED: %s\n"):format(c.name, c.failed))
        end
      end
    end
  end
  for _, c in ipairs(cases) do
    if not c.failed then
      c.m = {}
      for _, key in ipairs{ "wall", "user", "sys", "cpu", "maxrss", "rate" } do
        local xs = {}
        for _, m in ipairs(c.runs) do xs[#xs + 1] = m[key] end
        c.m[key] = median(xs)
      end
    end
  end
  return cases
end

-- ===== the table =====

local rows = {}

-- One row for case `c`; `cells()` gives {vs = ..., notes = ...} (it may fail
-- when the reference failed).
local function row(section, name, c, cells)
  local r = { section = section, name = name, m = c.m }
  if c.failed then
    r.cells = { notes = "FAILED: " .. c.failed:match("^[^\n]*"):sub(1, 120) }
  else
    local ok, t = pcall(cells or function() return {} end)
    r.cells = ok and t or { notes = "(no reference)" }
  end
  rows[#rows + 1] = r
end

local function ratio(a, b)
  return a and b and b > 0 and ("%.2fx"):format(a / b) or "-"
end

local function both(m, ref) return ratio(m.wall, ref.wall) .. " / " .. ratio(m.cpu, ref.cpu) end

local function table_md()
  local t = { "| measurement | wall s | user s | sys s | CPU s | peak RSS MB | vs. reference "
    .. "(wall / CPU) | notes |", "|---|---:|---:|---:|---:|---:|---|---|" }
  local section
  for _, r in ipairs(rows) do
    if r.section ~= section then
      section = r.section
      t[#t + 1] = ("| **%s** | | | | | | | |"):format(section)
    end
    local m, c = r.m, r.cells
    if m then
      t[#t + 1] = ("| %s | %.3f | %.3f | %.3f | %.3f | %.1f | %s | %s |"):format(r.name, m.wall,
        m.user, m.sys, m.cpu, m.maxrss / 1024, c.vs or "", c.notes or "")
    else
      t[#t + 1] = ("| %s | | | | | | | %s |"):format(r.name, c.notes or "")
    end
  end
  return table.concat(t, "\n")
end

-- ===== setup =====

must("mkdir -p " .. q(OUT) .. " " .. q(SCRATCH))
local cmsrec = require "cmsrec"
local BIG_SHA = capture("sha256sum " .. q(DIR .. "/data/big.wav")):match("^%x+")
local HAVE_LUASEC = sh(LUA .. " -e 'require \"ssl.https\"' 2>/dev/null")
local HAVE_REQUESTS = sh(PY .. " -c 'import requests' 2>/dev/null")

local function lua_client(args) return ("%s bench/clients/cmsrec.lua %s"):format(LUA, args) end

-- The signed request cmsrec would send, as curl arguments (nginx does not
-- check the signature; curl still sends exactly what cmsrec signed).
local function curl_args(prefix, call_id)
  local client = cmsrec.new{ base_url = URL .. prefix, ak = AK, sk = SK, cafile = CA }
  local p = assert(client:prepare{ callID = call_id })
  client:close()
  local args = { "-sS", "--fail", "--cacert", q(CA), "-H", q("Expect:") }
  for name, value in pairs(p.headers) do
    if name ~= "Content-Length" then args[#args + 1] = "-H " .. q(name .. ": " .. value) end
  end
  args[#args + 1] = "--data-binary " .. q(p.body)
  return table.concat(args, " ") .. " " .. q(p.url)
end

local function machine()
  local cpu = (read("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "?"
  local mem = tonumber((read("/proc/meminfo") or ""):match("MemTotal:%s*(%d+)")) or 0
  return {
    ("%s, %s cores, %.0f GB RAM, Linux %s"):format(cpu, capture("nproc"), mem / 1048576,
      capture("uname -r")),
    ("cmsrec %s on %s; %s"):format(cmsrec.VERSION, cmsrec.CURL_VERSION:match("^%S+ %S+"),
      capture("lua5.4 -v"):match("^Lua %S+")),
    ("curl %s; %s; %s"):format(capture("curl --version"):match("^curl (%S+)"),
      capture("nginx -v 2>&1"):match("nginx/%S+") or "nginx ?",
      capture("openssl version"):match("^%S+ %S+")),
    ("%s, requests %s; LuaSocket + LuaSec %s"):format(capture(PY .. " --version 2>&1"),
      HAVE_REQUESTS and capture(PY .. " -c 'import requests; print(requests.__version__)'") or "missing",
      HAVE_LUASEC and capture(LUA .. " -e 'print(require(\"ssl\")._VERSION)'") or "missing"),
    ("load at start: %s (/proc/loadavg: 1, 5, 15 min)"):format(loadavg()),
  }
end

local header = machine()
print("cmsrec benchmark, " .. os.date("!%Y-%m-%d %H:%M UTC"))
for _, line in ipairs(header) do print(line) end
print()
io.stdout:flush()

-- ===== 0. the server: faster than any client =====

if wanted("server") then
  io.stderr:write("server: nginx to curl -o /dev/null\n")
  local static, lua = curl_args("/big", "big-1"), curl_args("/lua", "big-1")
  local cpu0
  local c = run_cases({
    { name = "static + error_page", cmd = "curl -o /dev/null " .. static,
      before = function() cpu0 = nginx_cpu() end,
      after = function(m) m.server = nginx_cpu() - cpu0 end },
    { name = "Lua ngx.exec", cmd = "curl -o /dev/null " .. lua },
    { name = "two at once (static)", cmd = "sh -c " .. q(("curl -o /dev/null %s & curl -o /dev/null "
      .. "%s & wait"):format(static, static)) },
  }, 5)
  local S = ("0. the server: nginx sending %.0f MB to `curl -o /dev/null`"):format(BIG / 1e6)
  local mbs = function(m, n) return ("%.0f MB/s"):format((n or 1) * BIG / m.wall / 1e6) end
  row(S, "static file (POST -> 405 -> `error_page` -> GET)", c[1], function()
    local cpu = {}
    for _, m in ipairs(c[1].runs) do cpu[#cpu + 1] = m.server end
    local s = median(cpu)
    return { vs = "reference", notes = ("%s; nginx's workers used %.2f s of CPU: %.0f MB/s a core")
      :format(mbs(c[1].m), s, BIG / s / 1e6) }
  end)
  row(S, "Lua: `ngx.exec` to the static file", c[2], function()
    return { vs = ratio(c[2].m.wall, c[1].m.wall), notes = mbs(c[2].m) }
  end)
  row(S, ("two curl at once (%.0f MB)"):format(2 * BIG / 1e6), c[3], function()
    return { vs = ratio(c[3].m.wall, c[1].m.wall), notes = mbs(c[3].m, 2) .. " together" }
  end)
  connections()
end

-- ===== 1. one big recording to disk =====

local disk_case
if wanted("disk") then
  io.stderr:write("disk: one recording to a file\n")
  local target = SCRATCH .. "/big.wav"
  local args = curl_args("/big", "big-1")
  local function fresh() os.remove(target); must("sync") end -- no writeback of the last run
  local function check(m, rep)
    if m.sha256 then assert(m.sha256 == BIG_SHA, "cmsrec's sha256 differs from the served file's") end
    if rep == 1 then
      assert(capture("sha256sum " .. q(target)):match("^%x+") == BIG_SHA, "the file differs from the served one")
    end
  end
  local cmsrec_file = lua_client(("file %s %s %s"):format(q(URL .. "/big"), q(CA), q(target)))
  local c = run_cases({
    { name = "cmsrec download_file", cmd = cmsrec_file, before = fresh, after = check },
    { name = "cmsrec, SHA-256 inline (before)", cmd = "env LUA_CPATH='build/bench/inline-sha/?.so;;' "
      .. cmsrec_file, before = fresh, after = check },
    { name = "curl -o f && sync f", cmd = "sh -c " .. q(("curl -o %s %s && sync %s"):format(q(target), args,
      q(target))), before = fresh, after = check },
    { name = "curl -o f", cmd = ("curl -o %s %s"):format(q(target), args), before = fresh, after = check },
  }, 5)
  fresh()
  disk_case = c[1]
  local S = ("1. one %.0f MB recording to disk"):format(BIG / 1e6)
  local mbs = function(m) return ("%.0f MB/s"):format(BIG / m.wall / 1e6) end
  row(S, "cmsrec `download_file` (SHA-256, fsync, rename)", c[1], function()
    return { vs = both(c[1].m, c[3].m), notes = mbs(c[1].m) .. "; target: wall <= 1.05x" }
  end)
  row(S, "the same with SHA-256 inline, as before issue 11", c[2], function()
    return { vs = both(c[2].m, c[3].m), notes = mbs(c[2].m) }
  end)
  row(S, "`curl -o f && sync f` (the same signed request)", c[3], function()
    return { vs = "reference", notes = mbs(c[3].m) }
  end)
  row(S, "`curl -o f` (not durable)", c[4], function()
    return { vs = both(c[4].m, c[3].m), notes = mbs(c[4].m) }
  end)
  connections()
end

-- ===== 2. one big recording in memory =====

if wanted("mem") then
  io.stderr:write("mem: one recording in memory\n")
  local base = run_cases({ { name = "cmsrec download, 2 KB (baseline RSS)",
    cmd = lua_client(("mem %s %s"):format(q(URL .. "/small"), q(CA))) } }, 3)[1]
  local sized = function(m) assert(m.bytes == BIG, "wrong size in memory") end
  local cases = { { name = "cmsrec download (in memory)", after = sized,
    cmd = lua_client(("mem %s %s"):format(q(URL .. "/big"), q(CA))) } }
  if HAVE_REQUESTS then
    cases[2] = { name = "Python requests, r.content", after = sized,
      cmd = ("%s bench/clients/pyclient.py mem %s %s"):format(PY, q(URL .. "/big" .. API), q(CA)) }
  end
  local c = run_cases(cases, 5)
  local S = ("2. one %.0f MB recording in memory"):format(BIG / 1e6)
  row(S, "cmsrec `download` (a Lua string)", c[1], function()
    local m = c[1].m
    return { vs = disk_case and disk_case.m and (ratio(m.wall, disk_case.m.wall) .. " of to-disk") or "",
      notes = ("peak %.3fx the body (%.3fx above the %.1f MB of a 2 KB download); targets: <= 2.05x, "
        .. "wall <= 1.5x to-disk"):format(m.maxrss * 1024 / BIG, (m.maxrss - base.m.maxrss) * 1024 / BIG,
        base.m.maxrss / 1024) }
  end)
  if c[2] then
    row(S, "Python requests, `r.content`", c[2], function()
      return { vs = both(c[2].m, c[1].m), notes = ("peak %.3fx the body"):format(c[2].m.maxrss * 1024 / BIG) }
    end)
  end
  connections()
end

-- ===== 3. many small recordings, 20 ms of server latency =====

local plot = {}
if wanted("many") then
  io.stderr:write(("many: %d recordings of 2 KB, 20 ms server latency\n"):format(SMALL_N))
  local slow = URL .. "/slow"
  local dir = SCRATCH .. "/many"
  -- the curl loop's requests, signed beforehand (the loop does not sign: a lower bound)
  local client = cmsrec.new{ base_url = slow, ak = AK, sk = SK, cafile = CA }
  local lines, url = {}, nil
  for i = 1, SMALL_N do
    local p = assert(client:prepare{ callID = "small-" .. i })
    lines[i] = ("small-%d\t%s\t%s"):format(i, p.headers.Authorization, p.body)
    url = p.url
  end
  client:close()
  write(OUT .. "/requests.tsv", table.concat(lines, "\n") .. "\n")
  local loop = ("while IFS='\t' read -r id auth body; do curl -sS --fail --cacert %s "
    .. "-H 'Content-Type: application/json;charset=UTF-8' -H \"Authorization: $auth\" "
    .. "-H 'Accept-Encoding: identity' -H 'Expect:' --data-binary \"$body\" -o %s/\"$id\".wav %s "
    .. "|| exit 1; done < %s"):format(q(CA), q(dir), q(url), q(OUT .. "/requests.tsv"))
  local function fresh() must(("rm -rf %s && mkdir -p %s"):format(q(dir), q(dir))); connections() end
  local function count(m)
    m.conns, m.resumed = connections()
    local files = tonumber(capture(("ls %s | wc -l"):format(q(dir))))
    m.ok = m.ok or files
    assert(m.ok == SMALL_N and (files == SMALL_N or files == 0),
      ("%s of %d recordings, %d files"):format(tostring(m.ok), SMALL_N, files))
    m.rate = SMALL_N / m.wall
  end
  local cases = {}
  local function add(label, name, cmd, conc)
    cases[#cases + 1] = { label = label, name = name, cmd = cmd, conc = conc, before = fresh, after = count }
  end
  for _, conc in ipairs{ 1, 4, 16 } do
    add(("cmsrec `download_many`, concurrency %d%s"):format(conc, conc == 1 and " (in memory)" or ""),
      "cmsrec download_many c" .. conc, lua_client(("many %s %s %d %d"):format(q(slow), q(CA), SMALL_N, conc)),
      conc)
  end
  add("cmsrec `download_many`, concurrency 16, `dir` (each file fsync'ed, renamed)",
    "cmsrec download_many c16, dir", lua_client(("many %s %s %d 16 %s"):format(q(slow), q(CA), SMALL_N, q(dir))))
  add("curl per file, shell loop (requests signed beforehand)", "curl loop", "sh -c " .. q(loop))
  local curl = cases[#cases]
  if HAVE_LUASEC then
    add("LuaSocket + LuaSec `https.request` loop, pure-Lua signing", "LuaSocket + LuaSec loop",
      ("%s bench/clients/luasec.lua many %s %s %d %s"):format(LUA, q(slow .. API), q(CA), SMALL_N, q(dir)))
  end
  if HAVE_REQUESTS then
    add("Python `requests.Session` loop, `hmac` signing", "Python requests loop",
      ("%s bench/clients/pyclient.py many %s %s %d %s"):format(PY, q(slow .. API), q(CA), SMALL_N, q(dir)))
  end
  run_cases(cases, 3)
  local S = ("3. %d recordings of 2 KB, 20 ms server latency"):format(SMALL_N)
  for _, c in ipairs(cases) do
    row(S, c.label, c, function()
      local conns, resumed = {}, {}
      for _, m in ipairs(c.runs) do conns[#conns + 1] = m.conns; resumed[#resumed + 1] = m.resumed end
      return { vs = c == curl and "reference" or (ratio(c.m.rate, curl.m and curl.m.rate) .. " the rate"),
        notes = ("%.0f recordings/s; %d connection%s = TLS handshakes (%d resumed)%s"):format(c.m.rate,
          median(conns), median(conns) == 1 and "" or "s", median(resumed),
          c.name == "cmsrec download_many c16" and "; target >= 25x" or "") }
    end)
    if c.m and not c.name:find("dir", 1, true) then
      plot[#plot + 1] = { label = c.name, conc = c.conc, rate = c.m.rate }
    end
  end
  must("rm -rf " .. q(dir))
end

-- ===== 4. signing alone =====

if wanted("sign") then
  io.stderr:write("sign: signatures per second\n")
  local cases = {
    { name = "cmsrec.sign", label = "`cmsrec.sign` (OpenSSL HMAC)", cmd = lua_client("sign 30000") },
    { name = "pure Lua", label = "pure Lua 5.4 (SHA-256 and HMAC in Lua)",
      cmd = ("%s bench/clients/luasec.lua sign 1000"):format(LUA) },
  }
  cases[3] = { name = "Python hmac", label = "Python `hmac` + `hashlib`",
    cmd = ("%s bench/clients/pyclient.py sign 20000"):format(PY) }
  run_cases(cases, 5)
  local S = "4. auth-v2 signing alone (3 signed headers, 80-byte body; rate from CPU time)"
  for i, c in ipairs(cases) do
    row(S, c.label, c, function()
      return { vs = i == 1 and "reference" or (ratio(c.m.rate, cases[1].m.rate) .. " the rate"),
        notes = ("%.0f signatures/s"):format(c.m.rate) }
    end)
  end
end

-- ===== the results =====

local md = table_md()
print(md)
print()
print(("(medians; the bench took %d s; load at the end: %s)"):format(os.time() - T0, loadavg()))
write(OUT .. "/results.md", "Machine: " .. table.concat(header, "; ") .. "\n\n" .. md .. "\n")

if #plot > 0 and sh("command -v gnuplot >/dev/null 2>&1") then
  local data, refs = {}, {}
  for _, p in ipairs(plot) do
    if p.conc then
      data[#data + 1] = ("%d %.1f"):format(p.conc, p.rate)
    else
      refs[#refs + 1] = ("%.1f title %q dashtype 2 lw 2"):format(p.rate, ("%s (%.0f/s)"):format(p.label, p.rate))
    end
  end
  write(OUT .. "/many.dat", table.concat(data, "\n") .. "\n")
  local gp = {
    "set terminal pngcairo noenhanced size 900,560 font 'sans,11'",
    "set output 'bench/throughput.png'",
    ("set title 'cmsrec download_many against the alternatives: %d recordings of 2 KB, "
      .. "20 ms server latency'"):format(SMALL_N),
    "set xlabel 'concurrency (cmsrec download_many)'", "set ylabel 'recordings per second'",
    "set logscale xy 2", "set xrange [0.8:20]", "set yrange [8:*]", "set key top left", "set grid",
    "set xtics (1, 4, 16)",
    ("plot '%s/many.dat' using 1:2 with linespoints lw 2 pt 7 ps 1.5 title 'cmsrec download_many', "
      .. "'' using 1:2:(sprintf('%%.0f/s', $2)) with labels offset 0,1.2 notitle%s"):format(OUT,
      #refs > 0 and ", \\" or ""),
  }
  for i, r in ipairs(refs) do gp[#gp + 1] = "  " .. r .. (i < #refs and ", \\" or "") end
  write(OUT .. "/throughput.gp", table.concat(gp, "\n") .. "\n")
  if sh("gnuplot " .. q(OUT .. "/throughput.gp")) then print("plot: bench/throughput.png") end
end
