-- make bench: cmsrec side by side with what users would use instead (curl,
-- LuaSocket + LuaSec, Python requests), against nginx on loopback with TLS.
--
-- Run by bench/bench.sh, which starts nginx and sets BENCH_DIR (its prefix:
-- server.pem, data/, logs/) and BENCH_URL. Every client runs in a process of
-- its own under build/bench/measure (wall time, user + sys CPU time and peak
-- RSS of the process and its children, from wait4); each row is the median of
-- several repetitions, the alternatives interleaved so that a disturbance hits
-- them alike. The table goes to stdout and build/bench/results.md, the plot to
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
local SCRATCH = DIR .. "/out" -- downloads go here: the same file system as /tmp
local T0 = os.time()

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local ok, how, code = os.execute(cmd)
  if ok == true or ok == 0 then return true end
  return false, ("%s %s: %s"):format(tostring(how), tostring(code), cmd)
end

local function must(cmd) assert(sh(cmd)) end

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

-- ===== measuring =====

-- Run `cmd` (a shell command line) under measure; its stdout's RESULT lines
-- become fields. Raises when it fails: a broken client is not a figure.
local function measure(cmd)
  local res, out, err = OUT .. "/measure.txt", OUT .. "/stdout.txt", OUT .. "/stderr.txt"
  os.remove(res)
  local ok = sh(("%s %s -- %s >%s 2>%s"):format(MEASURE, q(res), cmd, q(out), q(err)))
  local line = read(res) or ""
  local m = {}
  for k, v in line:gmatch("(%w+)=(%S+)") do m[k] = tonumber(v) end
  for k, v in (read(out) or ""):gmatch("RESULT ([^\n]*)") do
    for key, value in k:gmatch("(%w+)=(%S+)") do m[key] = tonumber(value) or value end
  end
  if not ok or not m.wall then
    error(("failed: %s\n%s%s"):format(cmd, read(out) or "", read(err) or ""), 0)
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
  local conns, n, resumed, requests = {}, 0, 0, 0
  for id, nreq, reused in new:gmatch("(%d+) (%d+) \"([^\"]*)\"[^\n]*\n") do
    requests = requests + 1
    if not conns[id] then
      conns[id] = true
      n = n + 1
      if reused == "r" and nreq == "1" then resumed = resumed + 1 end
    end
  end
  return n, resumed, requests
end

-- CPU seconds nginx's workers used so far (utime + stime, clock ticks of 10 ms).
local function nginx_cpu()
  local master = tonumber(read(DIR .. "/logs/nginx.pid") or "")
  local total = 0
  for pid in (read(("/proc/%d/task/%d/children"):format(master, master)) or ""):gmatch("%d+") do
    local stat = read("/proc/" .. pid .. "/stat") or ""
    local fields = {}
    for f in stat:gsub("^.*%) ", ""):gmatch("%S+") do fields[#fields + 1] = f end
    total = total + (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)
  end
  return total / 100
end

-- Run every case `reps` times, interleaved; rows get the medians.
local function run_cases(cases, reps)
  reps = REPS or reps
  for _, c in ipairs(cases) do c.runs = {} end
  for rep = 1, reps do
    for _, c in ipairs(cases) do
      if c.before then c.before(rep) end
      local m = measure(c.cmd)
      if c.after then c.after(m, rep) end
      c.runs[#c.runs + 1] = m
      io.stderr:write(("  %-44s %6.3f s wall, %6.3f s cpu, %7.1f MB peak\n"):format(c.name, m.wall,
        m.cpu, m.maxrss / 1024))
    end
  end
  for _, c in ipairs(cases) do
    local med = {}
    for _, key in ipairs{ "wall", "user", "sys", "cpu", "maxrss", "rate" } do
      local xs = {}
      for _, m in ipairs(c.runs) do xs[#xs + 1] = m[key] end
      med[key] = median(xs)
    end
    c.m = med
  end
  return cases
end

-- ===== the table =====

local rows = {}
local function row(section, name, m, cells)
  rows[#rows + 1] = { section = section, name = name, m = m, cells = cells or {} }
end

local function ratio(a, b) return b and b > 0 and ("%.2fx"):format(a / b) or "" end

local function mb(kb) return ("%.1f"):format(kb / 1024) end

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
    t[#t + 1] = ("| %s | %.3f | %.3f | %.3f | %.3f | %s | %s | %s |"):format(r.name, m.wall,
      m.user, m.sys, m.cpu, mb(m.maxrss), c.vs or "", c.notes or "")
  end
  return table.concat(t, "\n")
end

-- ===== setup =====

must("mkdir -p " .. q(OUT) .. " " .. q(SCRATCH))
local cmsrec = require "cmsrec"
local BIG_SHA = capture("sha256sum " .. q(DIR .. "/data/big.wav")):match("^%x+")
local function lua_client(args) return ("%s bench/clients/cmsrec.lua %s"):format(LUA, args) end

-- The signed request cmsrec would send, as curl arguments (nginx does not
-- check the signature; curl still sends exactly what cmsrec signed).
local function curl_args(prefix, call_id)
  local client = cmsrec.new{ base_url = URL .. prefix, ak = "bench-ak", sk = "bench-sk-0123456789",
                             cafile = CA }
  local p = assert(client:prepare{ callID = call_id })
  client:close()
  local args = { "-sS", "--fail", "--cacert", q(CA), "-X POST", "-H", q("Expect:") }
  for name, value in pairs(p.headers) do
    if name ~= "Content-Length" then args[#args + 1] = "-H " .. q(name .. ": " .. value) end
  end
  args[#args + 1] = "--data-binary " .. q(p.body)
  return table.concat(args, " ") .. " " .. q(p.url), p
end

local function machine()
  local cpu = (read("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "?"
  local cores = capture("nproc")
  local mem = (read("/proc/meminfo") or ""):match("MemTotal:%s*(%d+)")
  return {
    ("%s, %s cores, %.0f GB RAM, Linux %s"):format(cpu, cores, (tonumber(mem) or 0) / 1048576,
      capture("uname -r")),
    ("cmsrec %s on %s; %s"):format(cmsrec.VERSION, cmsrec.CURL_VERSION:match("^%S+ %S+"),
      capture("lua5.4 -v"):match("^Lua %S+")),
    ("curl %s; %s; %s"):format(capture("curl --version"):match("^curl (%S+)"),
      capture("nginx -v 2>&1"):match("nginx/%S+"), capture("openssl version"):match("^%S+ %S+")),
    ("%s, requests %s; LuaSocket + LuaSec %s"):format(capture(PY .. " --version 2>&1"),
      capture(PY .. " -c 'import requests; print(requests.__version__)' 2>/dev/null"),
      capture(LUA .. " -e 'print(require(\"ssl\")._VERSION)' 2>/dev/null")),
    ("load at start: %s (/proc/loadavg: 1, 5, 15 min)"):format(
      ((read("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)"))),
  }
end

local header = machine()
print("cmsrec benchmark, " .. os.date("!%Y-%m-%d %H:%M UTC"))
for _, line in ipairs(header) do print(line) end
print()

-- ===== 0. the server: faster than any client =====

if wanted("server") then
  io.stderr:write("server: nginx alone (curl -o /dev/null)\n")
  local static_args = curl_args("/big", "big-1")
  local lua_args = curl_args("/lua", "big-1")
  local cpu0
  local cases = run_cases({
    { name = "static + error_page", cmd = "curl -o /dev/null " .. static_args,
      before = function() cpu0 = nginx_cpu() end,
      after = function(m) m.server = nginx_cpu() - cpu0 end },
    { name = "Lua ngx.exec", cmd = "curl -o /dev/null " .. lua_args },
    { name = "two at once (static)", cmd = ("sh -c %s"):format(q(("curl -o /dev/null %s & curl -o "
      .. "/dev/null %s & wait"):format(static_args, static_args))) },
  }, 5)
  local NG = ("nginx: %.0f MB to curl -o /dev/null"):format(BIG / 1e6)
  local server_cpu = {}
  for _, m in ipairs(cases[1].runs) do server_cpu[#server_cpu + 1] = m.server end
  local s = median(server_cpu)
  local best = cases[1].m.wall
  row(NG, "static file (POST -> 405 -> error_page -> GET)",
    cases[1].m, { vs = "reference", notes = ("%.0f MB/s; nginx used %.2f s of CPU (%.0f MB/s a "
      .. "core)"):format(BIG / cases[1].m.wall / 1e6, s, BIG / s / 1e6) })
  row(NG, "Lua: ngx.exec to the static file", cases[2].m,
    { vs = ratio(cases[2].m.wall, best), notes = ("%.0f MB/s"):format(BIG / cases[2].m.wall / 1e6) })
  row(NG, ("two curl at once (%.0f MB)"):format(2 * BIG / 1e6), cases[3].m,
    { vs = ratio(cases[3].m.wall, best), notes = ("%.0f MB/s together"):format(2 * BIG / cases[3].m.wall / 1e6) })
  connections()
end

-- ===== 1. one big recording to disk =====

local disk_ref
if wanted("disk") then
  io.stderr:write("disk: one recording to a file\n")
  local target = SCRATCH .. "/big.wav"
  local args = curl_args("/big", "big-1")
  local function fresh() os.remove(target); must("sync") end -- no writeback of the last run
  local function check_file(m, rep)
    if rep == 1 then
      local sha = capture("sha256sum " .. q(target)):match("^%x+")
      assert(sha == BIG_SHA, "the downloaded file differs from the served one")
    end
  end
  local cases = run_cases({
    { name = "cmsrec download_file", cmd = lua_client(("file %s %s %s"):format(q(URL .. "/big"), q(CA),
      q(target))), before = fresh, after = function(m, rep)
        assert(m.sha256 == BIG_SHA, "cmsrec's sha256 differs from the served file's")
        check_file(m, rep)
      end },
    { name = "curl -o f && sync f", cmd = ("sh -c %s"):format(q(("curl -o %s %s && sync %s"):format(q(target),
      args, q(target)))), before = fresh, after = check_file },
    { name = "curl -o f", cmd = ("curl -o %s %s"):format(q(target), args), before = fresh,
      after = check_file },
  }, 5)
  fresh()
  local ref = cases[2].m
  disk_ref = cases[1].m
  local S = ("1. one %.0f MB recording to disk"):format(BIG / 1e6)
  row(S, "cmsrec `download_file` (SHA-256, fsync, rename)", cases[1].m,
    { vs = ratio(cases[1].m.wall, ref.wall) .. " / " .. ratio(cases[1].m.cpu, ref.cpu),
      notes = ("%.0f MB/s; target: wall <= 1.05x"):format(BIG / cases[1].m.wall / 1e6) })
  row(S, "`curl -o f && sync f` (same request)", ref,
    { vs = "reference", notes = ("%.0f MB/s"):format(BIG / ref.wall / 1e6) })
  row(S, "`curl -o f` (not durable)", cases[3].m,
    { vs = ratio(cases[3].m.wall, ref.wall) .. " / " .. ratio(cases[3].m.cpu, ref.cpu),
      notes = ("%.0f MB/s"):format(BIG / cases[3].m.wall / 1e6) })
  connections()
end

-- ===== 2. one big recording in memory =====

if wanted("mem") then
  io.stderr:write("mem: one recording in memory\n")
  local base = run_cases({ { name = "cmsrec download, 2 KB (baseline RSS)",
    cmd = lua_client(("mem %s %s"):format(q(URL .. "/small"), q(CA))) } }, 3)[1].m
  local cases = run_cases({
    { name = "cmsrec download (in memory)", cmd = lua_client(("mem %s %s"):format(q(URL .. "/big"), q(CA))),
      after = function(m) assert(m.bytes == BIG, "wrong size in memory") end },
    { name = "Python requests, r.content", cmd = ("%s bench/clients/pyclient.py mem %s %s"):format(PY,
      q(URL .. "/big" .. API), q(CA)), after = function(m) assert(m.bytes == BIG) end },
  }, 5)
  local m = cases[1].m
  local S = ("2. one %.0f MB recording in memory"):format(BIG / 1e6)
  row(S, "cmsrec `download` (a Lua string)", m,
    { vs = disk_ref and (ratio(m.wall, disk_ref.wall) .. " of to-disk") or "",
      notes = ("peak %.3fx the body (%.3fx above the %.1f MB baseline); targets: <= 2.05x, "
        .. "wall <= 1.5x to-disk"):format(m.maxrss * 1024 / BIG, (m.maxrss - base.maxrss) * 1024 / BIG,
        base.maxrss / 1024) })
  row(S, "Python requests, `r.content`", cases[2].m,
    { vs = ratio(cases[2].m.wall, m.wall) .. " / " .. ratio(cases[2].m.cpu, m.cpu),
      notes = ("peak %.3fx the body"):format(cases[2].m.maxrss * 1024 / BIG) })
  connections()
end

-- ===== 3. many small recordings, 20 ms of server latency =====

local plot = {}
if wanted("many") then
  io.stderr:write(("many: %d recordings of 2 KB, 20 ms server latency\n"):format(SMALL_N))
  local slow = URL .. "/slow"
  local dir = SCRATCH .. "/many"
  -- the curl loop's requests, signed beforehand (the loop does not sign: a lower bound)
  local client = cmsrec.new{ base_url = slow, ak = "bench-ak", sk = "bench-sk-0123456789", cafile = CA }
  local lines = {}
  local auth_url
  for i = 1, SMALL_N do
    local p = assert(client:prepare{ callID = "small-" .. i })
    lines[#lines + 1] = ("small-%d\t%s\t%s"):format(i, p.headers.Authorization, p.body)
    auth_url = p.url
  end
  client:close()
  write(OUT .. "/requests.tsv", table.concat(lines, "\n") .. "\n")
  local loop = ("while IFS='\t' read -r id auth body; do curl -sS --fail --cacert %s "
    .. "-H 'Content-Type: application/json;charset=UTF-8' -H \"Authorization: $auth\" "
    .. "-H 'Accept-Encoding: identity' -H 'Expect:' --data-binary \"$body\" -o %s/\"$id\".wav %s "
    .. "|| exit 1; done < %s"):format(q(CA), q(dir), q(auth_url), q(OUT .. "/requests.tsv"))
  local function fresh() must(("rm -rf %s && mkdir -p %s"):format(q(dir), q(dir))); connections() end
  local function count(m)
    m.conns, m.resumed, m.requests = connections()
    local files = tonumber(capture(("ls %s | wc -l"):format(q(dir))))
    m.ok = m.ok or files
    assert(m.ok == SMALL_N, ("%d of %d recordings"):format(m.ok, SMALL_N))
    assert(files == SMALL_N or files == 0, "files missing")
    m.rate = SMALL_N / m.wall
  end
  local cases = {}
  for _, conc in ipairs{ 1, 4, 16 } do
    cases[#cases + 1] = { name = "cmsrec download_many c" .. conc, conc = conc, cmd = lua_client(
      ("many %s %s %d %d"):format(q(slow), q(CA), SMALL_N, conc)), before = fresh, after = count }
  end
  cases[#cases + 1] = { name = "cmsrec download_many c16, dir", conc = 16, cmd = lua_client(
    ("many %s %s %d 16 %s"):format(q(slow), q(CA), SMALL_N, q(dir))), before = fresh, after = count }
  cases[#cases + 1] = { name = "curl loop", cmd = "sh -c " .. q(loop), before = fresh, after = count }
  cases[#cases + 1] = { name = "LuaSocket + LuaSec loop", cmd = ("%s bench/clients/luasec.lua many %s %s %d %s")
    :format(LUA, q(slow .. API), q(CA), SMALL_N, q(dir)), before = fresh, after = count }
  cases[#cases + 1] = { name = "Python requests loop", cmd = ("%s bench/clients/pyclient.py many %s %s %d %s")
    :format(PY, q(slow .. API), q(CA), SMALL_N, q(dir)), before = fresh, after = count }
  run_cases(cases, 3)
  local curl = cases[5]
  local S = ("3. %d recordings of 2 KB, 20 ms server latency"):format(SMALL_N)
  local labels = {
    "cmsrec `download_many`, concurrency 1 (in memory)", "cmsrec `download_many`, concurrency 4",
    "cmsrec `download_many`, concurrency 16", "cmsrec `download_many`, concurrency 16, `dir` (fsync each)",
    "curl per file, shell loop (requests signed beforehand)",
    "LuaSocket + LuaSec, `https.request` loop, pure-Lua signing", "Python `requests.Session` loop, `hmac` signing",
  }
  for i, c in ipairs(cases) do
    local runs = c.runs
    local conns, resumed = {}, {}
    for _, m in ipairs(runs) do conns[#conns + 1] = m.conns; resumed[#resumed + 1] = m.resumed end
    local target = i == 3 and "; target >= 25x" or ""
    row(S, labels[i], c.m, { vs = c == curl and "reference" or (ratio(c.m.rate, curl.m.rate) .. " the rate"),
      notes = ("%.0f recordings/s; %d connections = TLS handshakes (%d resumed)%s"):format(c.m.rate,
        median(conns), median(resumed), target) })
    plot[#plot + 1] = { label = c.name, conc = c.conc, rate = c.m.rate }
  end
  must("rm -rf " .. q(dir))
end

-- ===== 4. signing alone =====

if wanted("sign") then
  io.stderr:write("sign: signatures per second\n")
  local cases = run_cases({
    { name = "cmsrec.sign", cmd = lua_client("sign 100000") },
    { name = "pure Lua", cmd = ("%s bench/clients/luasec.lua sign 2000"):format(LUA) },
    { name = "Python hmac", cmd = ("%s bench/clients/pyclient.py sign 50000"):format(PY) },
  }, 5)
  local S = "4. auth-v2 signing alone (3 signed headers, 80-byte body; CPU time)"
  local labels = { "`cmsrec.sign` (OpenSSL HMAC)", "pure Lua 5.4 (SHA-256 in Lua)", "Python `hmac` + `hashlib`" }
  for i, c in ipairs(cases) do
    row(S, labels[i], c.m, { vs = i == 1 and "reference" or (ratio(c.m.rate, cases[1].m.rate) .. " the rate"),
      notes = ("%.0f signatures/s"):format(c.m.rate) })
  end
end

-- ===== the results =====

local md = table_md()
print(md)
print()
print(("(medians; bench took %d s)"):format(os.time() - T0))
write(OUT .. "/results.md", "Machine: " .. table.concat(header, "; ") .. "\n\n" .. md .. "\n")

if #plot > 0 and sh("command -v gnuplot >/dev/null 2>&1") then
  local data, refs = {}, {}
  for _, p in ipairs(plot) do
    if p.conc and not p.label:find("dir") then
      data[#data + 1] = ("%d %.1f"):format(p.conc, p.rate)
    elseif not p.conc then
      refs[#refs + 1] = ("%.1f title %q dashtype 2 lw 2"):format(p.rate, p.label .. (" (%.0f/s)"):format(p.rate))
    end
  end
  write(OUT .. "/many.dat", table.concat(data, "\n") .. "\n")
  local gp = {
    "set terminal pngcairo noenhanced size 900,560 font 'sans,11'",
    "set output 'bench/throughput.png'",
    ("set title 'download_many against the alternatives: %d recordings of 2 KB, 20 ms server latency'")
      :format(SMALL_N),
    "set xlabel 'concurrency (cmsrec download_many)'", "set ylabel 'recordings per second'",
    "set logscale xy 2", "set xrange [0.8:20]", "set yrange [10:*]", "set key top left", "set grid",
    "set xtics (1, 4, 16)",
    ("plot '%s/many.dat' using 1:2 with linespoints lw 2 pt 7 ps 1.5 title 'cmsrec download_many', \\")
      :format(OUT),
  }
  for i, r in ipairs(refs) do gp[#gp + 1] = "  " .. r .. (i < #refs and ", \\" or "") end
  write(OUT .. "/throughput.gp", table.concat(gp, "\n") .. "\n")
  if sh("gnuplot " .. q(OUT .. "/throughput.gp")) then print("plot: bench/throughput.png") end
end
