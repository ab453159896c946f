-- Shared by the specs: loads the module under test and runs the mock CMS.
-- Kept to what Lua 5.1 to 5.4 and LuaJIT have in common, as are the specs.
--
-- CMSREC_CPATH picks the build to test (build/5.4/?.so by default, build/asan/?.so
-- for the AddressSanitizer run). mock.start() runs test/mock_cms.py on
-- loopback with a fresh CA in a temporary directory; mock.stop() ends it.
local cjson = require "cjson"

package.cpath = (os.getenv("CMSREC_CPATH") or "build/5.4/?.so") .. ";" .. package.cpath

local H = {}

H.AK = "mock-ak"
H.SK = "mock-sk-0123456789abcdef"

-- Child processes must not inherit the AddressSanitizer preload of the asan run.
-- (`unset` in the shell, not `env -u`: the command may be a shell builtin such
-- as kill, and /usr/bin/kill is not on a minimal system.)
local CLEAN_ENV = os.getenv("LD_PRELOAD") and "unset LD_PRELOAD; " or ""

-- Run a shell command; true when it succeeded. (os.execute returns the wait status
-- in Lua 5.1 and LuaJIT, 0 for success, and true or nil in Lua 5.2+.)
local function sh(cmd)
  local status = os.execute(CLEAN_ENV .. cmd)
  return status == true or status == 0
end
H.sh = sh

-- `s` quoted for the shell, as one word.
local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
H.q = q

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end
H.read_file = read_file

local function capture(cmd, keep_env)
  local p = assert(io.popen((keep_env and "" or CLEAN_ENV) .. cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end
H.capture = capture

-- The checkout the specs run in, and the interpreter for child processes.
H.ROOT = capture("pwd"):gsub("%s+$", "")
H.LUA = os.getenv("CMSREC_LUA") or "lua5.4"

-- package.cpath with relative entries made absolute, for children run elsewhere.
function H.absolute_cpath()
  local parts = {}
  for p in package.cpath:gmatch("[^;]+") do
    parts[#parts + 1] = p:sub(1, 1) == "/" and p or H.ROOT .. "/" .. p
  end
  return table.concat(parts, ";")
end

-- Run a Lua chunk in a new interpreter that loads the same build of cmsrec
-- (same cpath, same sanitizer preload); `env` is a prefix such as "X=1".
function H.run_lua(code, env)
  local cmd = ("%s %s -e %s 2>&1"):format(env or "", H.LUA,
    q(("package.cpath = %q; %s"):format(package.cpath, code)))
  return capture(cmd, true)
end

-- sha256 of a Lua string, computed by coreutils, independent of the module.
function H.sha256(data)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  local out = capture("sha256sum " .. path)
  os.remove(path)
  return out:match("^(%x+)")
end

-- Temporary directories for file tests.
function H.tmpdir()
  return (capture("mktemp -d /tmp/cmsrec-spec.XXXXXX"):gsub("%s+$", ""))
end

function H.rmrf(path)
  assert(path:match("^/tmp/cmsrec%-"), "refusing to remove " .. path)
  sh("rm -rf '" .. path .. "'")
end

function H.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- Every entry of `dir` (hidden ones too), sorted, as one string "a b c".
function H.ls(dir)
  local names = {}
  for name in capture("ls -A '" .. dir .. "'"):gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return table.concat(names, " ")
end

function H.exists(path)
  return sh("test -e " .. q(path) .. " -o -L " .. q(path))
end

-- True when this process runs under AddressSanitizer (memory figures are meaningless).
function H.under_asan()
  return (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil
end

local mock = {}
H.mock = mock

function mock.start()
  assert(not mock.dir, "mock already running")
  local dir = capture("mktemp -d /tmp/cmsrec-mock.XXXXXX"):gsub("%s+$", "")
  assert(sh(("python3 test/mock_cms.py --state-dir %s --max-lifetime 900 >%s/out.log 2>&1 &")
    :format(dir, dir)), "cannot start the mock CMS")
  for _ = 1, 200 do
    local ready = read_file(dir .. "/ready.json")
    if ready and ready:match("}%s*$") then
      local r = cjson.decode(ready)
      -- lua-cjson decodes numbers as floats: make them integers
      mock.dir, mock.pid = dir, ("%d"):format(r.pid)
      mock.https_port, mock.http_port = ("%d"):format(r.https_port), ("%d"):format(r.http_port)
      mock.ca = dir .. "/ca.pem"
      mock.other_ca = dir .. "/other-ca.pem"
      mock.url = "https://127.0.0.1:" .. mock.https_port
      mock.wrong_name_url = ("https://127.0.0.1:%d"):format(r.wrong_name_port)
      mock.blackhole_url = ("https://127.0.0.1:%d"):format(r.blackhole_port)
      mock.http_url = "http://127.0.0.1:" .. mock.http_port
      mock.waf_port, mock.waf_name = ("%d"):format(r.waf_port), r.waf_name
      return mock
    end
    sh("sleep 0.05")
  end
  error("the mock CMS did not start: " .. (read_file(dir .. "/out.log") or "no log"))
end

function mock.stop()
  if mock.pid then
    -- the shell's own kill: procps' /usr/bin/kill is not on a minimal system;
    -- then wait until it has exited, so nothing outlives its tests
    sh("kill " .. mock.pid .. " 2>/dev/null")
    for _ = 1, 100 do
      if not sh("kill -0 " .. mock.pid .. " 2>/dev/null") then break end
      sh("sleep 0.05")
    end
    sh("rm -rf " .. mock.dir)
  end
  mock.dir, mock.pid = nil, nil
end

function mock.ctl(...)
  local args = table.concat({...}, " ")
  return cjson.decode(capture(("python3 test/mockctl.py %s %s"):format(mock.dir, args)))
end
function mock.stats() return mock.ctl("stats") end
function mock.reset() return mock.ctl("reset") end
function mock.expect(call_id) return mock.ctl("expect", call_id) end
function mock.revoke() return mock.ctl("revoke") end
function mock.set(name, value) return mock.ctl("set", name, value) end

-- A client configuration for the running mock; `extra` overrides keys.
function H.config(extra)
  -- retries = 0: a spec sees what one attempt does (the retry specs set it)
  local c = { base_url = mock.url, ak = H.AK, sk = H.SK, cafile = mock.ca, timeout = 20,
              retries = 0 }
  for k, v in pairs(extra or {}) do
    if v == false then c[k] = nil else c[k] = v end -- false removes a default
  end
  return c
end

-- A new client on the mock.
function H.client(extra)
  return require("cmsrec").new(H.config(extra))
end

-- Run `body` in a fresh interpreter that has `cmsrec`, a `client` on the mock,
-- `kb(field)` (a /proc/self/status figure in KiB: VmRSS, VmHWM = peak RSS) and
-- `rss0` (VmRSS before the body). For memory measurements: nothing else runs there.
function H.run_measured(body)
  return H.run_lua(([[
    local cmsrec = require "cmsrec"
    local function kb(field)
      for line in io.lines("/proc/self/status") do
        local v = line:match("^" .. field .. ":%%s+(%%d+)")
        if v then return tonumber(v) end
      end
    end
    local client = cmsrec.new{ base_url = %q, ak = %q, sk = %q, cafile = %q }
    local rss0 = kb("VmRSS")
  ]]):format(mock.url, H.AK, H.SK, mock.ca) .. body)
end

-- For a describe block: start the mock and a client before its tests, stop both
-- after. `set_client` receives the client (busted's setup/teardown are passed in
-- because they live in the spec files' environment).
function H.with_mock(setup, teardown, set_client)
  local client
  setup(function()
    mock.start()
    client = H.client()
    if set_client then set_client(client) end
  end)
  teardown(function()
    if client then client:close() end
    mock.stop()
  end)
end

-- One download on a client of its own configuration, closed afterwards.
function H.download_with(extra, req, opts)
  local c = H.client(extra)
  local data, info = c:download(req, opts)
  c:close()
  return data, info
end

-- ===== bin/cmsrec and the examples, run as separate processes =====

-- Seconds since boot, to 10 ms: the wall-clock time of a run (os.time has 1 s).
function H.now()
  local f = assert(io.open("/proc/uptime"))
  local t = f:read("*n")
  f:close()
  return t
end

-- Every entry of `dir` (hidden ones too), sorted, as a list.
function H.listing(dir)
  local names = {}
  for name in capture("ls -A " .. q(dir)):gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- The environment of a download from the mock; `extra` adds or overrides (false removes).
function H.mock_env(extra)
  local env = { CMSREC_URL = mock.url, CMSREC_AK = H.AK, CMSREC_SK = H.SK, CMSREC_CAFILE = mock.ca }
  for k, v in pairs(extra or {}) do env[k] = v or nil end
  return env
end

-- Runs `command` (a shell string, run by `env`) with none of the CMSREC_* variables
-- of the spec process and LUA_CPATH on the build under test (absolute, since some
-- runs change directory). The AddressSanitizer preload of the asan run goes to the
-- command only, not to the shell, `script`, `timeout` or coreutils. Options:
--   env        variables to set
--   cd         the working directory
--   stdin      a file for stdin (default /dev/null)
--   stdout     a file for stdout (r.out is then "")
--   tty        run under a pseudo-terminal (script(1)): stdout and stderr both in r.out
--   limit      kill it after that many seconds (exit 124)
--   interrupt  send it SIGINT (Ctrl-C) after that many seconds, then run the shell
--              command `after_interrupt`, if any
-- Returns { code = exit status, out = stdout, err = stderr, elapsed = seconds }.
function H.run(command, o)
  o = o or {}
  local env = { "LUA_CPATH=" .. q(H.absolute_cpath() .. ";;") }
  if os.getenv("LD_PRELOAD") then env[#env + 1] = "LD_PRELOAD=" .. q(os.getenv("LD_PRELOAD")) end
  for k, v in pairs(o.env or {}) do env[#env + 1] = k .. "=" .. q(v) end
  local cmd = ("env -u CMSREC_URL -u CMSREC_AK -u CMSREC_SK -u CMSREC_CAFILE -u CMSREC_CONFIG "
    .. "-u CMSREC_MAX_PAUSE %s%s %s"):format(o.cd and "-C " .. q(o.cd) .. " " or "",
    table.concat(env, " "), command)
  if o.tty then cmd = "script -qfec " .. q(cmd) .. " /dev/null" end
  -- --foreground: a SIGINT reaches the command once, as from a terminal. Without it,
  -- timeout sends it to the command and again to its process group, and the second
  -- one may kill the command (exit 130): lua's handler restores the default at the first.
  if o.limit then cmd = ("timeout --foreground %s %s"):format(o.limit, cmd) end
  local out, err = os.tmpname(), os.tmpname()
  local redirect = ("<%s >%s 2>%s"):format(o.stdin or "/dev/null", o.stdout or out, err)
  local line = ("%s %s; echo $?"):format(cmd, redirect)
  if o.interrupt then
    line = ("%s %s & pid=$!; sleep %s; kill -INT $pid; %s; wait $pid; echo $?")
      :format(cmd, redirect, o.interrupt, o.after_interrupt or ":")
  end
  local t0 = H.now()
  local status = capture(line)
  local r = { code = tonumber(status:match("(%d+)%s*$")), out = read_file(out) or "",
              err = read_file(err) or "", elapsed = H.now() - t0 }
  os.remove(out)
  os.remove(err)
  return r
end

-- Runs bin/cmsrec with `args` (a shell string), as H.run does.
function H.cli(args, o)
  return H.run(("%s %s %s"):format(H.LUA, q(H.ROOT .. "/bin/cmsrec"), args), o)
end

-- Every string value of an error table, and its tostring, must not hold the SK.
-- (Plain assert: busted's assert lives in the spec files' environment.)
function H.assert_no_secret(err)
  assert(not tostring(err):find(H.SK, 1, true), "the SK leaked into tostring(err)")
  for k, v in pairs(err) do
    assert(type(v) ~= "string" or not v:find(H.SK, 1, true), "the SK leaked into err." .. k)
  end
end

return H
