-- The malformed-input corpus of spec/corpus_spec.lua: a generator and its oracle.
--
-- Case n (1 <= n <= G.TOTAL) is made from a PRNG seeded with n alone, so any
-- case can be made again by itself (CORPUS_CASE=n). The PRNG is MINSTD on
-- numbers below 2^53: the same values in Lua 5.1 to 5.4 and LuaJIT, whether
-- numbers are doubles or integers. Each case says what cmsrec must do with it:
--   raise    a Lua error whose message names one of `names` (when given);
--   invalid  nil, err with err.kind == "invalid" and err.field one of `fields`;
--   a result only for input that is valid, and then what the mock answers
--   (`answer`: the callID decides, see mock_answer) or what the call computes.
-- The oracle re-states the documented rules (README, cms_request.h) in Lua; it
-- never calls cmsrec. Kept to what Lua 5.1 to 5.4 and LuaJIT have in common.
local G = {}

local unpack = table.unpack or unpack

G.TOTAL = tonumber(os.getenv("CORPUS_CASES") or "") or 11000
G.FIELDS = { "callID", "workNo", "beginTime", "callerNo", "calleeNo" }
G.FIELD_MAX = 256        -- bytes of a request value (cms_request.h)
G.AK_MAX = 256           -- bytes of the AK (it goes into a header)
G.USER_AGENT_MAX = 1024  -- bytes of user_agent (a header)
G.PATH_MAX = 2048        -- bytes of the path sent (base_url's path + path)
G.NIL = {}               -- a value that is not set at all
local NIL = G.NIL
local FIELD_INDEX = {}
for i, f in ipairs(G.FIELDS) do FIELD_INDEX[f] = i end

-- ===== PRNG =====

local function new_rng(seed)
  local x = (seed * 7919 + 104729) % 2147483646 + 1
  local r = {}
  local function step()
    x = (x * 48271) % 2147483647
    return x
  end
  for _ = 1, 4 do step() end
  function r.int(n) return step() % n + 1 end              -- 1..n
  function r.chance(p) return step() % 1000000 < p * 1000000 end
  function r.pick(t) return t[step() % #t + 1] end
  return r
end
G.new_rng = new_rng

-- ===== what Lua and the module make of values =====

local HAS_INT = math.type ~= nil

-- The string the module sends for an integer value ("%lld"), nil if `v` is not one.
local function int_string(v)
  if type(v) ~= "number" then return nil end
  if HAS_INT then
    local i = math.tointeger(v)
    return i and string.format("%d", i) or nil
  end
  if v ~= v or v < -2 ^ 53 or v > 2 ^ 53 or v ~= math.floor(v) then return nil end
  if v == 0 then return "0" end
  return string.format("%.0f", v)
end
G.int_string = int_string

-- luaL_checkinteger's verdict on a value (cmsrec.classify's status).
local function checkinteger_ok(v)
  if type(v) == "string" then v = tonumber(v) end
  if type(v) ~= "number" then return false end
  if HAS_INT then return math.tointeger(v) ~= nil end
  return true -- 5.1, LuaJIT: any number converts
end

-- A C string of `s`: what "%s" prints.
local function cstr(s)
  local z = s:find("\0", 1, true)
  return z and s:sub(1, z - 1) or s
end
G.cstr = cstr

-- Length of the valid UTF-8 character at byte i, and its code point; nil if none.
local function utf8_char(s, i)
  local c = s:byte(i)
  if c < 128 then return 1, c end
  local need, cp, min
  if c >= 194 and c <= 223 then need, cp, min = 1, c - 192, 128
  elseif c >= 224 and c <= 239 then need, cp, min = 2, c - 224, 2048
  elseif c >= 240 and c <= 244 then need, cp, min = 3, c - 240, 65536
  else return nil end
  if #s - i < need then return nil end
  for k = 1, need do
    local b = s:byte(i + k)
    if b < 128 or b > 191 then return nil end
    cp = cp * 64 + (b - 128)
  end
  if cp < min or cp > 1114111 or (cp >= 55296 and cp <= 57343) then return nil end
  return need + 1, cp
end

local function is_control(cp) return cp < 32 or (cp >= 127 and cp <= 159) end

-- Valid UTF-8 without C0, DEL or C1 control characters.
local function printable(s)
  local i = 1
  while i <= #s do
    local n, cp = utf8_char(s, i)
    if not n or is_control(cp) then return false end
    i = i + n
  end
  return true
end
G.printable = printable

-- No byte below 0x20 and no DEL: what may go into an HTTP header or line.
local function no_ctl_bytes(s)
  return not s:find("[%c]") -- %c: the C0 controls and DEL in the C locale
end

-- cms_text_clean: invalid bytes and control characters become '?'.
local function text_clean(s)
  local out, i = {}, 1
  while i <= #s do
    local n, cp = utf8_char(s, i)
    if not n then
      out[#out + 1] = "?"
      i = i + 1
    elseif is_control(cp) then
      out[#out + 1] = "?"
      i = i + n
    else
      out[#out + 1] = s:sub(i, i + n - 1)
      i = i + n
    end
  end
  return table.concat(out)
end

-- err.field as the module reports a name: a C string cut to 31 bytes on a
-- UTF-8 boundary, then cleaned; nil when that leaves nothing.
function G.reported_field(name)
  local s = cstr(name)
  if #s > 31 then
    local n = 31
    while n > 0 and s:byte(n + 1) >= 128 and s:byte(n + 1) <= 191 do n = n - 1 end
    s = s:sub(1, n)
  end
  s = text_clean(s)
  return s ~= "" and s or nil
end

local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
local function datetime14(s)
  if #s ~= 14 or not s:find("^%d+$") then return false end
  local y, mo, d = tonumber(s:sub(1, 4)), tonumber(s:sub(5, 6)), tonumber(s:sub(7, 8))
  if y < 1970 or mo < 1 or mo > 12 or d < 1 then return false end
  local leap = (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
  if d > MDAYS[mo] + ((mo == 2 and leap) and 1 or 0) then return false end
  return tonumber(s:sub(9, 10)) <= 23 and tonumber(s:sub(11, 12)) <= 59 and
    tonumber(s:sub(13, 14)) <= 59
end

-- ===== describing values (case labels) =====

local function quote(s)
  local shown = s
  if #s > 48 then shown = s:sub(1, 24) end
  shown = shown:gsub("[^ -~]", function(c) return ("\\%d"):format(c:byte()) end)
  shown = shown:gsub('"', '\\"')
  if #s > 48 then return ('"%s"... (%d bytes)'):format(shown, #s) end
  return '"' .. shown .. '"'
end

local LABELS = setmetatable({}, { __mode = "k" }) -- tables, functions, ... -> label

function G.describe(v)
  if rawequal(v, NIL) then return "(absent)" end
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" then
    local s
    if v ~= v then s = "nan"
    elseif v == 1 / 0 then s = "inf"
    elseif v == -1 / 0 then s = "-inf"
    else s = string.format("%.17g", v) end
    return HAS_INT and (s .. " (" .. math.type(v) .. ")") or s
  end
  if t == "boolean" or t == "nil" then return tostring(v) end
  return LABELS[v] or t
end
local describe = G.describe

local function label(v, text)
  LABELS[v] = text
  return v
end

-- ===== shared values =====

local MB = ("x"):rep(1024 * 1024)
local MB_UTF8 = ("\226\130\172"):rep(349526) -- valid 3-byte characters, about 1 MB
local THROW = function() error("corpus: a metamethod that throws") end

local function throwing_mt()
  return { __index = THROW, __newindex = THROW, __pairs = THROW, __ipairs = THROW,
           __len = THROW, __tostring = THROW, __eq = THROW, __lt = THROW, __le = THROW,
           __concat = THROW, __call = THROW, __unm = THROW, __metatable = "locked" }
end

local function junk_mt()
  return {
    __index = function() return "1748587841-77268" end,
    __newindex = function() end,
    __len = function() return 2 ^ 53 end,
    __pairs = function() return function() return nil end end,
    __tostring = function() return {} end, -- tostring() then raises
    __eq = function() return true end,
  }
end

local function deep_table(depth, key)
  local root = {}
  local cur = root
  for _ = 1, depth do
    local t = {}
    cur[key] = t
    cur = t
  end
  return root
end

G.shared = nil
local function shared()
  if G.shared then return G.shared end
  local s = {}
  s.deep_list = label(deep_table(10000, 1), "a list nested 10000 deep")
  s.deep_map = label(deep_table(10000, "callID"), "a map nested 10000 deep (callID = {callID = ...})")
  s.cyclic = {}
  s.cyclic.callID, s.cyclic[1], s.cyclic.self = s.cyclic, s.cyclic, s.cyclic
  label(s.cyclic, "a cyclic table")
  s.throwing = label(setmetatable({}, throwing_mt()), "an empty table whose metamethods throw")
  s.junk = label(setmetatable({}, junk_mt()), "an empty table whose metamethods return junk")
  s.callable = label(setmetatable({}, { __call = function() return 1 end }), "a callable table")
  s.co = label(coroutine.create(function() end), "a coroutine")
  s.ud = label(io.stdout, "a userdata (io.stdout)")
  s.fn = label(function() end, "a function that returns nothing")
  s.cfn = label(os.time, "a C function that raises here (os.time)")
  G.shared = s
  return s
end

-- Values of every type but string and number.
local function others()
  local s = shared()
  return {
    true, false, label({}, "{}"), label({ 1, 2, 3 }, "{1, 2, 3}"),
    label({ a = 1 }, "{a = 1}"), s.deep_list, s.deep_map, s.cyclic, s.throwing, s.junk,
    s.callable, s.co, s.ud, s.fn, s.cfn,
  }
end

local NUMBERS = { 0, -1, 1, 7, 2 ^ 31, -2 ^ 31, 2 ^ 32, 2 ^ 53, 2 ^ 63, -2 ^ 63, 1 / 0, -1 / 0,
                  0 / 0, 0.5, -0.5, 1e308, 5e-324, 1.0, -0.0, 20250530120000, 1748587841 }
if math.maxinteger then
  NUMBERS[#NUMBERS + 1] = math.maxinteger
  NUMBERS[#NUMBERS + 1] = math.mininteger
end

-- Strings chosen for what they are: empty, huge, NUL, CR/LF, bad UTF-8 and so on.
local STRINGS = {
  "", "x", "1748587841-77268", "callID", MB, MB_UTF8, "a\0b", "\0", "callID\0",
  "a\r\nX-Injected: 1", "\r\n", "\n", "\r", "a\tb", "\t", "\27[2J", "\127", " ", " x ",
  "\255\254", "\192\128", "\193\191", "\224\128\128", "\240\128\128\128", "\237\160\128",
  "\237\191\191", "\244\144\128\128", "\248\136\128\128\128", "\226\130", "\128", "\191",
  "\194\128", "\194\133", "\194\155", "\194\159", "\194\160", "\226\130\172",
  "\228\184\173\230\150\135", "\240\159\152\128", "\239\187\191", "\226\128\168",
  "%00", "%0d%0a", '"}', "\\", "\\u0000", "<script>", "a/b", "../../etc/passwd",
  "20250530120000", "20250230120000", "2025053012000", "19691231235959", "20240229000000",
  "20230229000000", "99991231235959", "00000000000000", "20250530126000", "2025-05-30",
  ("9"):rep(255), ("9"):rep(256), ("9"):rep(257), ("\226\130\172"):rep(85) .. "x",
  ("\226\130\172"):rep(86), ("x"):rep(255) .. "\194\128", ("x"):rep(300),
  "__index", "nil", "true", "0x10", "1e2", " 200 ",
}

-- A random string: lengths around the limits, characters of every class.
local CLASSES = {
  function(r) return string.char(r.int(95) + 31) end,              -- printable ASCII
  function(r) return string.char(r.int(10) + 47) end,              -- digits
  function(r) return string.char(r.int(10) + 47) end,
  function(r) return string.char(r.int(26) + 96) end,              -- letters
  function(r) return string.char(r.int(32) - 1) end,               -- C0, NUL included
  function(r) return r.pick({ "\r\n", "\n", "\r", "\0", "\127", "\t" }) end,
  function(r) return "\194" .. string.char(r.int(32) + 127) end,   -- C1 (U+0080-U+009F)
  function(r) return "\195" .. string.char(r.int(64) + 127) end,   -- 2-byte, printable
  function(r) return "\228" .. string.char(r.int(64) + 127, r.int(64) + 127) end,
  function(r) return "\240\159" .. string.char(r.int(64) + 127, r.int(64) + 127) end,
  function(r) return string.char(r.int(128) + 127) end,            -- a lone high byte
  function(r) return "\237" .. string.char(r.int(32) + 159, r.int(64) + 127) end, -- surrogate
  function(r) return "\192" .. string.char(r.int(64) + 127) end,   -- overlong
  function(r) return "\224" .. string.char(r.int(32) + 127, r.int(64) + 127) end, -- overlong
}
local LENGTHS = { 0, 1, 2, 3, 5, 8, 13, 20, 31, 32, 33, 64, 200, 255, 256, 257, 300, 1000 }

local function random_string(r, plain)
  local n = r.chance(0.5) and r.int(24) or r.pick(LENGTHS)
  local parts, len = {}, 0
  while len < n do
    local c = plain and CLASSES[r.int(4)](r) or CLASSES[r.int(#CLASSES)](r)
    parts[#parts + 1] = c
    len = len + #c
  end
  return table.concat(parts)
end

-- Any value: another type, a number, a listed string or a random one.
local function any_value(r)
  local k = r.int(10)
  if k == 1 then return NIL end
  if k <= 3 then return r.pick(others()) end
  if k <= 5 then return r.pick(NUMBERS) end
  if k <= 8 then return r.pick(STRINGS) end
  return random_string(r)
end
G.any_value = any_value

-- Keys that are not the names asked for: near misses, NUL, huge, other types.
local function odd_key(r, names)
  local s = shared()
  local k = r.int(12)
  if k == 1 then return 1 end
  if k == 2 then return 2.5 end
  if k == 3 then return true end
  if k == 4 then return s.ud end
  if k == 5 then return s.fn end
  if k == 6 then return label({}, "a table key") end
  if k == 7 then return r.pick(names) .. "\0" end
  if k == 8 then return r.pick(names):upper() end
  if k == 9 then return r.pick(names) .. " " end
  if k == 10 then return MB end
  if k == 11 then return r.pick(STRINGS) end
  return random_string(r)
end

-- ===== requests =====

-- The mock's answer to a callID that passed validation (its docstring): only
-- plain names are generated; a name the mock treats specially is renamed.
local MAGIC = {
  notfound = true, flow = true, param = true, ["ok-json"] = true, badjson = true,
  emptybody = true, ["auth-401"] = true, ["auth-403"] = true, numcode = true, bom = true,
  wsjson = true, html = true, jsonarray = true, blank = true, gbkdesc = true, c1desc = true,
  badtext = true, bigerror = true, ["flow-retry"] = true, gzipjson = true, bigheader = true,
  http09 = true, ["zip-dirs"] = true,
}
local MAGIC_KINDS = {
  "wav", "chunked", "zip", "unknown", "drop", "stall", "slowheaders", "slowjson", "slow503",
  "zipbig", "gzipwav", "extra", "retry", "delay", "http", "slowwav", "zipbad",
}
local function magic(id)
  if MAGIC[id] then return true end
  for _, k in ipairs(MAGIC_KINDS) do
    if id:sub(1, #k + 1) == k .. "-" then return true end
  end
  return false
end

function G.mock_answer(id)
  if id:find("^%d+%-%d+$") then return "wav" end  -- 160044 bytes of WAV
  if id:find("^[%./ ]*odd") then return "odd" end  -- 1000 bytes of WAV
  assert(not magic(id), "the corpus generated a callID the mock treats specially")
  return "api"                                      -- resultCode "1"
end

-- The verdict on a request: {ok = true, wire = {5 strings}} or {fields = {...}}
-- (the field an invalid request is reported under: any of them when the
-- module's table walk decides which comes first).
function G.judge_request(req)
  if type(req) ~= "table" then return { notable = true } end
  local bad, vals = {}, {}
  local k, v = next(req)
  while k ~= nil do
    if type(k) ~= "string" or k:find("\0", 1, true) then
      bad[#bad + 1] = "request"
    elseif not FIELD_INDEX[k] then
      bad[#bad + 1] = G.reported_field(k) or "request"
    else
      local s = type(v) == "string" and v or int_string(v)
      if s then vals[k] = s else bad[#bad + 1] = k end
    end
    k, v = next(req, k)
  end
  if #bad > 0 then return { fields = bad } end
  if not vals.callID or vals.callID == "" then return { fields = { "callID" } } end
  for _, f in ipairs(G.FIELDS) do
    local s = vals[f]
    if s and (#s > G.FIELD_MAX or not printable(s)) then return { fields = { f } } end
  end
  if vals.beginTime and vals.beginTime ~= "" and not datetime14(vals.beginTime) then
    return { fields = { "beginTime" } }
  end
  local wire = {}
  for i, f in ipairs(G.FIELDS) do wire[i] = vals[f] or "" end
  return { ok = true, wire = wire, answer = G.mock_answer(wire[1]) }
end

-- The key of a body in the mock's /_mock/strict list: the five values.
function G.body_key(wire) return table.concat(wire, "\31") end

local WAV_IDS = { "1748587841-77268", "1-2", "20250530-1", 1748587841 .. "-" .. 77268 }
local GOOD_TIMES = { "", "20250530120000", 20250530120000, "20240229235959", "19700101000000",
                     "99991231235959", 20240229000000 }

-- A value `field` accepts (the case stays valid).
local function valid_value(r, field)
  if field == "callID" then
    local k = r.int(6)
    if k <= 2 then return r.pick(WAV_IDS) end
    if k == 3 then return r.pick({ -1, 0, 2 ^ 31, 1748587841, 2 ^ 53, 7.0 }) end
  elseif field == "beginTime" then
    return r.pick(GOOD_TIMES)
  elseif r.chance(0.2) then
    return r.pick({ 0, -1, 1001, 2 ^ 31, "" })
  end
  for _ = 1, 20 do
    local s = random_string(r, r.chance(0.7))
    if #s <= G.FIELD_MAX and printable(s) and (s ~= "" or field ~= "callID")
        and (field ~= "callID" or not magic(s)) then
      return s
    end
  end
  return "x"
end

local function set(t, k, v)
  if not rawequal(v, NIL) then t[k] = v end
end

-- t[k] = v, or no t[k] at all for NIL (false stays false).
local function assign(t, k, v)
  if rawequal(v, NIL) then t[k] = nil else t[k] = v end
end

-- A request: a valid one, or one with 1 to 3 things wrong. Returns req, label.
function G.request(r, want_valid)
  if not want_valid and r.chance(0.04) then
    local v = any_value(r)
    if rawequal(v, NIL) then v = nil end
    return v, "request " .. describe(v == nil and NIL or v)
  end
  local req, parts = {}, {}
  for _, f in ipairs(G.FIELDS) do
    if f == "callID" or r.chance(0.4) then set(req, f, valid_value(r, f)) end
  end
  if not want_valid then
    for _ = 1, r.pick({ 1, 1, 1, 2, 3 }) do
      local k = r.int(10)
      if k <= 6 then
        local f = r.pick(G.FIELDS)
        local v = any_value(r)
        assign(req, f, v)
        parts[#parts + 1] = f .. " = " .. describe(v)
      elseif k <= 8 then
        local key, v = odd_key(r, G.FIELDS), any_value(r)
        if rawequal(v, NIL) then v = "x" end
        req[key] = v
        parts[#parts + 1] = "[" .. describe(key) .. "] = " .. describe(v)
      elseif k == 9 then
        req.self = req
        parts[#parts + 1] = "self = (the request itself)"
      else
        req[#req + 1] = "1748587841-77268"
        parts[#parts + 1] = "an array item"
      end
    end
  end
  if r.chance(0.05) then
    setmetatable(req, r.chance(0.5) and throwing_mt() or junk_mt())
    parts[#parts + 1] = "a metatable"
  end
  local shown = {}
  for _, f in ipairs(G.FIELDS) do
    local v = rawget(req, f)
    if v ~= nil then shown[#shown + 1] = f .. "=" .. describe(v) end
  end
  return req, "{" .. table.concat(shown, ", ") .. "}" ..
    (#parts > 0 and " with " .. table.concat(parts, "; ") or "")
end

-- ===== options and their rules =====

-- Rules return true when the value is accepted.
local function rule_string_nonul(v) return rawequal(v, NIL) or (type(v) == "string" and not v:find("\0", 1, true)) end
local function rule_boolean(v) return rawequal(v, NIL) or type(v) == "boolean" end
local function rule_function(v) return rawequal(v, NIL) or type(v) == "function" end
local function rule_size(v) -- a positive integer (bytes)
  if rawequal(v, NIL) then return true end
  local s = int_string(v)
  return s ~= nil and v > 0
end
local function rule_count(lo, hi)
  return function(v)
    if rawequal(v, NIL) then return true end
    return int_string(v) ~= nil and v >= lo and v <= hi
  end
end
local function rule_seconds(v)
  return rawequal(v, NIL) or (type(v) == "number" and v > 0 and v <= 86400 * 30)
end

-- Callbacks with a behaviour. Each returns the function and its behaviour.
local function progress_fn(r)
  local b = r.pick({ "go", "go", "true", "junk", "false", "raise", "false-late", "raise-late" })
  local f
  if b == "go" then f = function() end
  elseif b == "true" then f = function() return true end
  elseif b == "false" then f = function() return false end
  elseif b == "raise" then f = function() error("corpus: on_progress raises") end
  elseif b == "false-late" then f = function(received) return received == 0 end
  elseif b == "raise-late" then
    f = function(received) if received > 0 then error("corpus: on_progress raises") end end
  else f = function() return 0, "junk" end end
  local said = { go = "goes on", ["true"] = "returns true", ["false"] = "returns false",
                 raise = "raises", junk = "returns junk", ["false-late"] = "returns false once bytes came",
                 ["raise-late"] = "raises once bytes came" }
  return label(f, "on_progress that " .. said[b]), b
end

local function sink_fn(r)
  local b = r.pick({ "ok", "ok", "ok", "nothing", "false", "raise", "raise-table" })
  local parts = {}
  local f
  if b == "ok" then
    f = function(chunk) if chunk then parts[#parts + 1] = chunk end return 1 end
  elseif b == "nothing" then f = function() end
  elseif b == "false" then f = function() return false, "corpus: the sink says no" end
  elseif b == "raise" then f = function() error("corpus: the sink raises") end
  else f = function() error({}) end end
  return label(f, "a sink that " .. (b == "ok" and "keeps the chunks" or "gives " .. b)), b, parts
end

-- ===== targets =====
-- Each returns a case: {args, nargs, label, expect, sent, bodies, ...}. A case
-- that must raise lists every reason it has (`names`): the module raises for
-- the first it meets, and the message must name one of them.

local function raise(names) return { how = "raise", names = names } end
local function invalid(fields) return { how = "invalid", fields = fields } end

-- A key that is none of `names`.
local function unknown_key(r, names)
  local known = {}
  for _, k in ipairs(names) do known[k] = true end
  for _ = 1, 10 do
    local k = odd_key(r, names)
    if not (type(k) == "string" and known[k]) then return k end
  end
  return "zz"
end

-- What the message of an unknown key says.
local function key_reason(k)
  if type(k) ~= "string" then return "option names" end
  if k:find("\0", 1, true) then return "NUL" end
  return k
end

-- What a function of others() does when it is called.
local function fn_behaviour(v)
  local s = shared()
  if v == s.fn then return "nothing" end
  if v == s.cfn then return "raise" end
  return nil
end

-- What a download of a valid request gives: "ok" (the recording) or an error
-- kind. max_size, the sink and on_progress can change it. The second result
-- is true when the request may or may not reach the mock: on_progress that
-- cancels at its first call, which may come before the request is sent.
G.SIZE = { wav = 160044, odd = 1000 }
local function download_outcomes(answer, max_size, sink_b, progress_b)
  local out = {}
  if answer == "api" then out.api = true
  elseif answer == "http404" then out.http = true
  elseif max_size and max_size < G.SIZE[answer] then out.too_large = true
  elseif sink_b and sink_b ~= "ok" then out.io = true
  else out.ok = true end
  if progress_b == "false" or progress_b == "raise" then
    out.cancelled = true
    return out, true
  end
  if (progress_b == "false-late" or progress_b == "raise-late") and out.ok then
    -- the last report, with the full size, comes before the recording is kept
    return { cancelled = true }, false
  end
  return out, false
end

local DL_RULES = {
  max_size = rule_size, on_progress = rule_function, sink = rule_function,
  unzip = rule_boolean, retries = rule_count(0, 10),
}
local DL_SPECIALS = {
  max_size = function(r) return r.pick({ 1, 999, 1000, 1001, 160043, 160044, 2 ^ 31, 2 ^ 53, 10 ^ 9 }) end,
  on_progress = function(r, beh) local f, b = progress_fn(r) beh.progress = b return f end,
  sink = function(r, beh)
    local f, b, parts = sink_fn(r)
    beh.sink, beh.parts = b, parts
    return f
  end,
  unzip = function(r) return r.pick({ true, false }) end,
  retries = function(r) return r.pick({ 0, 1, 2, 10 }) end,
}

-- opts of download, download_file and reader: opts, its label, the reasons it
-- raises, the behaviour of its callbacks.
local function gen_opts(r, keys, want_valid)
  local beh, parts, reasons = {}, {}, {}
  if not want_valid and r.chance(0.06) then
    local v = any_value(r)
    if rawequal(v, NIL) then return nil, "no opts", reasons, beh end
    if type(v) ~= "table" then return v, "opts " .. describe(v), { "table expected" }, beh end
    return v, "opts " .. describe(v), next(v) == nil and {} or { "option" }, beh
  end
  if r.chance(0.3) then return nil, "no opts", reasons, beh end
  local opts = {}
  for _, k in ipairs(keys) do
    if r.chance(0.35) then
      local v
      if want_valid or r.chance(0.5) then v = DL_SPECIALS[k](r, beh) else v = any_value(r) end
      if not rawequal(v, NIL) then
        opts[k] = v
        parts[#parts + 1] = k .. "=" .. describe(v)
        if not DL_RULES[k](v) then
          reasons[#reasons + 1] = k
        elseif fn_behaviour(v) then
          local b = fn_behaviour(v)
          if k == "sink" then beh.sink = b else beh.progress = b == "raise" and "raise" or "go" end
        end
      end
    end
  end
  if not want_valid and r.chance(0.12) then
    local key = unknown_key(r, keys)
    opts[key] = "x"
    parts[#parts + 1] = "[" .. describe(key) .. "]=\"x\""
    reasons[#reasons + 1] = key_reason(key)
  end
  if r.chance(0.04) then
    setmetatable(opts, r.chance(0.5) and throwing_mt() or junk_mt())
    parts[#parts + 1] = "a metatable"
  end
  return opts, "opts {" .. table.concat(parts, ", ") .. "}", reasons, beh
end

-- A valid request's expectation as a download (download, download_file, reader).
local function dl_expect(case, verdict, opts, beh)
  if not verdict.ok then
    case.expect = invalid(verdict.fields)
    return
  end
  local max_size = type(opts) == "table" and rawget(opts, "max_size") or nil
  local outcomes, maybe = download_outcomes(verdict.answer, max_size, beh.sink, beh.progress)
  case.expect = { how = "answer", answer = verdict.answer, outcomes = outcomes }
  if maybe then
    case.maybe_bodies = { G.body_key(verdict.wire) }
  else
    case.sent, case.bodies = 1, { G.body_key(verdict.wire) }
  end
end

local function gen_download(r)
  local want_valid = r.chance(0.25)
  local req, req_label = G.request(r, want_valid)
  local verdict = G.judge_request(req)
  local opts, opts_label, reasons, beh = gen_opts(r, { "max_size", "on_progress", "sink", "retries" }, want_valid)
  local case = { args = { req, opts }, nargs = opts == nil and 1 or 2,
                 label = req_label .. ", " .. opts_label, beh = beh }
  if verdict.notable then reasons[#reasons + 1] = "table expected" end
  if not want_valid and r.chance(0.01) then
    case.args[3], case.nargs = "extra", 3
    case.label = case.label .. ", an extra argument"
    reasons[#reasons + 1] = "too many arguments"
  end
  if #reasons > 0 then case.expect = raise(reasons) else dl_expect(case, verdict, opts, beh) end
  return case
end

-- download_file's destinations: the path, its label, its kind.
local function file_dest(r, ctx, n, want_valid)
  local k = r.int(want_valid and 12 or 14)
  if k <= 4 then return ctx.dir, "the directory", "dir" end
  if k <= 6 then return ctx.dir .. "/f-" .. n .. ".wav", "a file in it", "file" end
  if k == 7 then return ctx.dir .. "/a\r\nb-" .. n, "a file named with CR LF", "file" end
  if k == 8 then return ctx.dir .. "/\255\254-" .. n, "a file named in bad UTF-8", "file" end
  if k == 9 then return "/nonexistent-cmsrec-corpus/x", "a file in a missing directory", "io" end
  if k == 10 then return "", "an empty path", "io" end
  if k == 11 then return ctx.dir .. "/" .. ("a"):rep(300), "a name of 300 bytes", "io" end
  if k == 12 then return ctx.dir .. "/" .. MB, "a path of 1 MB", "io" end
  if k == 13 then return ctx.dir .. "/a\0b", "a path with a NUL byte", "nul" end
  local v = r.pick(others())
  return v, "the path " .. describe(v), "type"
end

local function gen_download_file(r, ctx, n)
  local want_valid = r.chance(0.3)
  local req, req_label = G.request(r, want_valid)
  local verdict = G.judge_request(req)
  local opts, opts_label, reasons, beh =
    gen_opts(r, { "max_size", "on_progress", "sink", "unzip", "retries" }, want_valid)
  local sink = type(opts) == "table" and type(rawget(opts, "sink")) == "function"
  local dest, dest_label, dest_kind
  if (sink and (want_valid or r.chance(0.8))) or r.chance(0.05) then
    dest, dest_label, dest_kind = nil, "no path", "none"
  else
    dest, dest_label, dest_kind = file_dest(r, ctx, n, want_valid)
  end
  local unzip = type(opts) == "table" and rawget(opts, "unzip") == true
  if want_valid and unzip and dest == nil then
    rawset(opts, "unzip", nil)
    unzip, opts_label = false, opts_label .. " (unzip dropped: no path)"
  end
  local case = { args = { req, dest, opts }, nargs = opts == nil and 2 or 3, beh = beh,
                 label = req_label .. ", " .. dest_label .. ", " .. opts_label, dest = dest,
                 dest_kind = dest_kind, unzip = unzip }
  if verdict.notable then reasons[#reasons + 1] = "table expected" end
  if dest_kind == "type" then reasons[#reasons + 1] = "string expected" end
  if dest_kind == "nul" then reasons[#reasons + 1] = "NUL" end
  if (dest ~= nil) == sink then reasons[#reasons + 1] = "path or opts.sink" end
  if unzip and dest == nil then reasons[#reasons + 1] = "unzip" end
  if #reasons > 0 then
    case.expect = raise(reasons)
  elseif dest_kind == "io" and verdict.ok then
    case.expect = { how = "answer", outcomes = { io = true } } -- refused before sending
  else
    dl_expect(case, verdict, opts, beh)
  end
  return case
end

local function gen_reader(r)
  local want_valid = r.chance(0.25)
  local req, req_label = G.request(r, want_valid)
  local verdict = G.judge_request(req)
  local opts, opts_label, reasons, beh = gen_opts(r, { "max_size", "on_progress", "retries" }, want_valid)
  local case = { args = { req, opts }, nargs = opts == nil and 1 or 2,
                 label = req_label .. ", " .. opts_label, beh = beh }
  if verdict.notable then reasons[#reasons + 1] = "table expected" end
  if #reasons > 0 then case.expect = raise(reasons) else dl_expect(case, verdict, opts, beh) end
  return case
end

local function gen_prepare(r)
  local want_valid = r.chance(0.35)
  local req, req_label = G.request(r, want_valid)
  local verdict = G.judge_request(req)
  local case = { args = { req }, nargs = 1, label = req_label }
  local reasons = {}
  if verdict.notable then reasons[#reasons + 1] = "table expected" end
  if not want_valid and r.chance(0.02) then
    case.args[2], case.nargs = r.pick(others()), 2
    case.label = case.label .. ", an extra argument"
    reasons[#reasons + 1] = "too many arguments"
  end
  if #reasons > 0 then case.expect = raise(reasons)
  elseif not verdict.ok then case.expect = invalid(verdict.fields)
  else case.expect = { how = "prepared", wire = verdict.wire } end
  return case
end

-- client:download_many(list, opts)
local MANY_RULES = {
  concurrency = rule_count(1, 64), unzip = rule_boolean, retries = rule_count(0, 10),
  max_size = rule_size, on_result = rule_function, on_progress = rule_function,
}
local MANY_KEYS = { "concurrency", "dir", "unzip", "retries", "max_size", "on_result", "on_progress" }

local function many_callback(r, key)
  local b = r.pick({ "go", "go", "go", "false", "raise", "raise-table" })
  local f
  if b == "go" then f = function() end
  elseif b == "false" then f = function() return false end
  elseif b == "raise" then f = function() error("corpus: " .. key .. " raises") end
  else
    b = "raise"
    f = function() error({ corpus = "raised" }) end -- raised again as it is: a table
  end
  return label(f, key .. " that " .. (b == "go" and "goes on" or b == "false" and "returns false" or "raises")), b
end

local function gen_many(r, ctx, n)
  local case = { sent = 0, bodies = {} }
  local reasons, parts = {}, {}
  local list
  local k = r.int(20)
  if k == 1 then
    list = r.pick(others())
    case.label = "the list " .. describe(list)
    if type(list) ~= "table" then reasons[#reasons + 1] = "table expected" end
  elseif k == 2 then
    list = label({ a = { callID = "1-2" }, b = { callID = "x" } },
      "a map {a = {callID = \"1-2\"}, b = {callID = \"x\"}}")
    case.label = "the list " .. describe(list)
  else
    list = {}
    for i = 1, r.int(6) do
      local req, req_label
      if r.chance(0.06) then
        req = r.pick(others())
        req_label = describe(req)
      else
        req, req_label = G.request(r, r.chance(0.35))
        if req == nil then req = false end -- no holes: lua_rawlen would be up to the table
      end
      list[i] = req
      parts[#parts + 1] = req_label
    end
    case.label = "list [" .. table.concat(parts, " | ") .. "]"
  end
  case.args, case.nargs = { list }, 1
  -- opts
  local beh, op = {}, {}
  local opts, dir, dir_kind = nil, nil, "none"
  if r.chance(0.75) then
    opts = {}
    local specials = {
      concurrency = function() return r.pick({ 1, 2, 4, 64, 0, 65, -1, 2.5, 0 / 0, "4" }) end,
      unzip = function() return r.pick({ true, false, true, 1, "yes" }) end,
      retries = function() return r.pick({ 0, 1, 10, 11, -1, 0.5 }) end,
      max_size = function() return r.pick({ 1, 999, 1000, 160044, 2 ^ 40, 0, -5, 0.5 }) end,
    }
    for _, key in ipairs({ "concurrency", "unzip", "retries", "max_size" }) do
      if r.chance(0.3) then
        local v = r.chance(0.7) and specials[key]() or any_value(r)
        if not rawequal(v, NIL) then
          opts[key] = v
          op[#op + 1] = key .. "=" .. describe(v)
          if not MANY_RULES[key](v) then reasons[#reasons + 1] = key end
        end
      end
    end
    for _, key in ipairs({ "on_result", "on_progress" }) do
      if r.chance(0.3) then
        local v, b
        if r.chance(0.8) then v, b = many_callback(r, key) else v = any_value(r) end
        if not rawequal(v, NIL) then
          opts[key] = v
          op[#op + 1] = key .. "=" .. describe(v)
          if not rule_function(v) then reasons[#reasons + 1] = key end
          if fn_behaviour(v) then b = fn_behaviour(v) == "raise" and "raise" or "go" end
          beh[key] = b
        end
      end
    end
    if r.chance(0.4) then
      local d = r.int(8)
      if d <= 3 then dir, dir_kind = ctx.mdir, "dir"
      elseif d <= 5 then dir, dir_kind = ctx.mdir .. "/sub-" .. n, "dir"
      elseif d == 6 then dir, dir_kind = r.pick({ "", "/nonexistent-cmsrec-corpus/x", ctx.mdir .. "/" .. MB }), "bad"
      elseif d == 7 then dir, dir_kind = ctx.mdir .. "/a\0b", "nul"
      else dir, dir_kind = r.pick({ true, label({}, "{}"), shared().fn, shared().co }), "type" end
      opts.dir = dir
      op[#op + 1] = "dir=" .. describe(dir)
    end
    if r.chance(0.08) then
      local key = unknown_key(r, MANY_KEYS)
      opts[key] = 1
      op[#op + 1] = "[" .. describe(key) .. "]=1"
      reasons[#reasons + 1] = key_reason(key)
    end
    case.args[2], case.nargs = opts, 2
    case.label = case.label .. ", opts {" .. table.concat(op, ", ") .. "}"
  end
  if dir_kind == "type" or dir_kind == "bad" then reasons[#reasons + 1] = "dir" end
  if dir_kind == "nul" then reasons[#reasons + 1] = "NUL" end
  local unzip = opts and opts.unzip == true
  if unzip and not dir then reasons[#reasons + 1] = "unzip" end
  if #reasons > 0 then
    case.expect = raise(reasons)
    return case
  end
  -- the entries, as lua_rawlen and lua_rawgeti see the list
  local len = 0
  while rawget(list, len + 1) ~= nil do len = len + 1 end
  local stops = beh.on_result == "false" or beh.on_result == "raise" or
    beh.on_progress == "false" or beh.on_progress == "raise"
  local entries = {}
  for i = 1, len do
    local e = rawget(list, i)
    entries[i] = type(e) == "table" and G.judge_request(e) or { fields = { "request" } }
    if stops and entries[i].ok then
      -- a stop while requests are in flight: how many were sent is up to timing
      list[i] = { callID = "" }
      entries[i] = G.judge_request(list[i])
      case.label = case.label .. (" (request %d emptied: a callback stops the batch)"):format(i)
    end
  end
  local max_size = opts and opts.max_size or nil
  local exp = { how = "many", entries = {}, dir = dir,
                raises = beh.on_progress == "raise" or (beh.on_result == "raise" and len > 0),
                stops = stops }
  for i, e in ipairs(entries) do
    if e.ok then
      exp.entries[i] = { answer = e.answer, outcomes = download_outcomes(e.answer, max_size) }
      case.sent = case.sent + 1
      case.bodies[#case.bodies + 1] = G.body_key(e.wire)
    else
      exp.entries[i] = { fields = e.fields }
    end
  end
  case.expect = exp
  return case
end

-- cmsrec.sign{...}
local SIGN_KEYS = { "ak", "sk", "method", "path", "query", "headers", "body", "timestamp" }

-- read_pairs' verdict on query or headers: nil when accepted.
local function pairs_problem(v)
  if rawequal(v, NIL) then return nil end
  if type(v) ~= "table" then return "a table" end
  local n, k, x = 0, next(v)
  while k ~= nil do
    n = n + 1
    if n > 32 then return "too many" end
    if type(k) ~= "string" or (type(x) ~= "string" and type(x) ~= "number") then return "strings" end
    k, x = next(v, k)
  end
  return nil
end

local function sign_specials(r)
  return {
    ak = function() return r.pick({ "", "a/b", "a\0b", "AK", MB, "a\r\nb", "\255" }) end,
    sk = function() return r.pick({ "", "\0", MB, "s" }) end,
    method = function() return r.pick({ "", "get", "POST", "P\0ST", "GET\r\n", MB }) end,
    path = function() return r.pick({ "", "x", "/", "/a b", "/\0", MB, "/\255" }) end,
    query = function()
      return r.pick({ label({}, "{}"), label({ a = "1/2", b = "x y" }, "{a = \"1/2\", b = \"x y\"}"),
        label({ 1, 2 }, "{1, 2}"), label({ a = {} }, "{a = {}}"), label({ a = 1 }, "{a = 1}") })
    end,
    headers = function()
      local many = {}
      for i = 1, 33 do many["h" .. i] = "v" end
      return r.pick({ label({}, "{}"), label({ Host = "x", host = "y" }, "{Host = \"x\", host = \"y\"}"),
        label({ [""] = "x" }, "{[\"\"] = \"x\"}"), label({ ["a;b"] = "x" }, "{[\"a;b\"] = \"x\"}"),
        label({ ["a:b"] = "x" }, "{[\"a:b\"] = \"x\"}"), label(many, "33 headers"),
        label({ host = 1 }, "{host = 1}"),
        label({ host = "a\r\nb", ["x-e"] = MB }, "{host = \"a\\r\\nb\", x-e = 1 MB}"),
        label({ HOST = "x", ["\255"] = "y" }, "{HOST = \"x\", [\"\\255\"] = \"y\"}") })
    end,
    body = function() return r.pick({ "", "\0", MB, "{}" }) end,
    timestamp = function() return r.pick({ "", "a/b", "now", "2024\r\n", "\0" }) end,
  }
end

local function gen_sign(r)
  local t = { ak = "globalaktest", sk = "example-sk-0123456789", path = "/rest/cmsapp/v1/ping",
              headers = { host = "10.22.26.181:28080" }, body = '{"say": "Hello world!"}',
              timestamp = "2024-10-31T14:06:52Z" }
  local want_valid = r.chance(0.2)
  if not want_valid and r.chance(0.03) then
    local v = any_value(r)
    if rawequal(v, NIL) then v = nil end
    local reasons = { "table expected" }
    if type(v) == "table" then reasons = { next(v) == nil and "ak" or "option" } end
    return { args = { v }, nargs = 1, label = "the argument " .. describe(v == nil and NIL or v),
             expect = raise(reasons) }
  end
  local specials, parts, reasons = sign_specials(r), {}, {}
  for _ = 1, r.pick({ 1, 1, 2, 3 }) do
    local k = r.pick(SIGN_KEYS)
    local v = (want_valid or r.chance(0.6)) and specials[k]() or any_value(r)
    assign(t, k, v)
    parts[#parts + 1] = k .. "=" .. describe(v)
  end
  if not want_valid and r.chance(0.1) then
    local key = unknown_key(r, SIGN_KEYS)
    t[key] = "x"
    parts[#parts + 1] = "[" .. describe(key) .. "]=\"x\""
    reasons[#reasons + 1] = key_reason(key)
  end
  if r.chance(0.04) then
    setmetatable(t, r.chance(0.5) and throwing_mt() or junk_mt())
    parts[#parts + 1] = "a metatable"
  end
  local case = { args = { t }, nargs = 1, label = "{" .. table.concat(parts, ", ") .. "}" }
  if not want_valid and r.chance(0.01) then
    case.args[2], case.nargs = "extra", 2
    case.label = case.label .. ", an extra argument"
    reasons[#reasons + 1] = "too many arguments"
  end
  local function raw(k)
    local v = rawget(t, k)
    if v == nil then return NIL end
    return v
  end
  for _, k in ipairs({ "ak", "method", "path", "timestamp" }) do
    if not rule_string_nonul(raw(k)) then reasons[#reasons + 1] = k end
  end
  for _, k in ipairs({ "sk", "body" }) do
    if not rawequal(raw(k), NIL) and type(raw(k)) ~= "string" then reasons[#reasons + 1] = k end
  end
  for _, k in ipairs({ "query", "headers" }) do
    if pairs_problem(raw(k)) then reasons[#reasons + 1] = k end
  end
  if #reasons > 0 then
    case.expect = raise(reasons)
    return case
  end
  -- the values (cms_sign's check_input)
  local ak, sk, method, path, ts = raw("ak"), raw("sk"), raw("method"), raw("path"), raw("timestamp")
  if rawequal(ak, NIL) or ak == "" or ak:find("/", 1, true) then reasons[#reasons + 1] = "ak" end
  if rawequal(sk, NIL) or sk == "" then reasons[#reasons + 1] = "sk" end
  if method == "" then reasons[#reasons + 1] = "method" end
  if rawequal(path, NIL) or path:sub(1, 1) ~= "/" then reasons[#reasons + 1] = "path" end
  if not rawequal(ts, NIL) and (ts == "" or ts:find("/", 1, true)) then reasons[#reasons + 1] = "timestamp" end
  local names, seen = {}, {}
  local h = raw("headers")
  if not rawequal(h, NIL) then
    local k = next(h)
    while k ~= nil do
      if k == "" or k:find("[;:]") or seen[k:lower()] then reasons[#reasons + 1] = "header" end
      seen[k:lower()] = true
      names[#names + 1] = k:lower()
      k = next(h, k)
    end
  end
  if #names == 0 then reasons[#reasons + 1] = "header" end
  if #reasons > 0 then
    case.expect = raise(reasons)
    return case
  end
  table.sort(names)
  case.expect = { how = "signed", ak = ak, timestamp = not rawequal(ts, NIL) and ts or nil,
                  signed = table.concat(names, ";") }
  return case
end

-- cmsrec.classify(status, headers, body[, eof])
local BODIES = {
  "RIFF\36\0\0\0WAVEfmt ", "PK\3\4rest", "PK\5\6", '{"resultCode":"1","resultDesc":"x"}',
  '{"resultCode":"0"}', '{"resultCode":"0300008"}', "{", "[1]", "  ", "", "ID3xxxxxxxxxx",
  "\239\187\191{\"resultCode\":\"1\"}", "<html>", ('{"a":'):rep(2000), ("["):rep(100000),
  '{"resultCode":1,"resultDesc":"\194\155 31m"}', MB, '{"resultDesc":"' .. MB .. '"}',
}
local function classify_headers(r)
  return r.pick({
    label({ ["Retry-After"] = "7" }, "{Retry-After = \"7\"}"),
    label({ ["content-encoding"] = "gzip" }, "{content-encoding = \"gzip\"}"),
    label({ ["Content-Encoding"] = "identity", ["RETRY-AFTER"] = 99999999999 },
      "{Content-Encoding = \"identity\", RETRY-AFTER = 99999999999}"),
    label({ ["retry-after"] = "-1", [1] = "x", [true] = "y" }, "{retry-after = \"-1\", [1] = \"x\", [true] = \"y\"}"),
    label({ ["retry-after"] = {} }, "{retry-after = {}}"),
    label({ ["retry-after\0x"] = "5" }, "{[\"retry-after\\0x\"] = \"5\"}"),
    label({ ["Retry-After"] = MB }, "{Retry-After = 1 MB}"),
  })
end

local function gen_classify(r)
  local k = r.int(10)
  local status
  if k <= 6 then status = r.pick({ 200, 206, 204, 401, 403, 404, 429, 500, 503, 302, 100 })
  elseif k == 7 then status = r.pick(NUMBERS)
  elseif k == 8 then status = r.pick({ "200", "2e2", "0x10", " 200 ", "abc", "", "200\0" })
  else status = r.pick(others()) end
  local headers
  k = r.int(4)
  if k == 2 then headers = classify_headers(r) elseif k == 3 then headers = r.pick(others()) end
  local body
  k = r.int(10)
  if k <= 6 then body = r.pick(BODIES) elseif k <= 8 then body = random_string(r)
  else body = any_value(r) if rawequal(body, NIL) then body = nil end end
  local eof = r.pick({ true, false, NIL, 0, "yes" })
  if rawequal(eof, NIL) then eof = nil end
  local args, nargs = { status, headers, body, eof }, 4
  local reasons = {}
  if r.chance(0.02) then
    args[5], nargs = "extra", 5
    reasons[#reasons + 1] = "too many arguments"
  end
  local case = { args = args, nargs = nargs,
                 label = ("%s, %s, %s, eof %s%s"):format(describe(status), describe(headers == nil and NIL or headers),
                   describe(body == nil and NIL or body), tostring(eof), nargs == 5 and ", an extra argument" or "") }
  if not checkinteger_ok(status) then reasons[#reasons + 1] = "#1" end
  if headers ~= nil and type(headers) ~= "table" then reasons[#reasons + 1] = "#2" end
  if body ~= nil and type(body) ~= "string" and type(body) ~= "number" then reasons[#reasons + 1] = "#3" end
  if #reasons > 0 then
    case.expect = raise(reasons)
    return case
  end
  local st = type(status) == "string" and tonumber(status) or status
  local encoded = false
  if type(headers) == "table" then
    local hk, hv = next(headers)
    while hk ~= nil do
      if type(hk) == "string" and cstr(hk):lower() == "content-encoding" and
          (type(hv) == "string" or type(hv) == "number") then
        local v = cstr(tostring(hv)):lower()
        encoded = encoded or (v ~= "" and v ~= "identity")
      end
      hk, hv = next(headers, hk)
    end
  end
  case.expect = { how = "classified", status = int_string(st) and tonumber(int_string(st)) or nil,
                  body = body == nil and "" or tostring(body), encoded = encoded }
  return case
end

-- cmsrec.unzip(data_or_path[, dir[, opts]])
local function zip_source(r, ctx)
  local z = ctx.zip
  local k = r.int(9)
  if k <= 2 then return z, "the ZIP of zip-2", "good" end
  if k == 3 then return ctx.zip_path, "the path of that ZIP", "good" end
  if k == 4 then
    local at = r.int(#z - 1)
    return z:sub(1, at), ("the ZIP cut to %d bytes"):format(at), "bad"
  end
  if k == 5 then
    local at, b = r.int(#z), r.pick({ 0, 47, 46, 255, 92, 1 })
    return z:sub(1, at - 1) .. string.char(b) .. z:sub(at + 1), ("the ZIP with byte %d set to %d"):format(at, b), "bad"
  end
  if k == 6 then return z .. MB, "the ZIP and 1 MB after it", "bad" end
  if k == 7 then return "PK\3\4" .. random_string(r), "PK\\3\\4 and junk", "bad" end
  if k == 8 then
    local v = r.pick({ "/nonexistent-cmsrec", "", "a\0b", ctx.dir, "PK\5\6" })
    return v, describe(v), "bad"
  end
  local v = any_value(r)
  if rawequal(v, NIL) then v = nil end
  return v, describe(v == nil and NIL or v), "bad"
end

local function gen_unzip(r, ctx, n)
  local src, src_label, src_kind = zip_source(r, ctx)
  local dir, dir_label, dir_kind = nil, "in memory", "none"
  local k = r.int(10)
  if k <= 4 then dir, dir_label, dir_kind = ctx.udir .. "/u-" .. n, "into a new directory", "new"
  elseif k == 5 then
    dir, dir_label, dir_kind = "/nonexistent-cmsrec-corpus/x", "into a directory in a missing one", "io"
  elseif k == 6 then dir, dir_label, dir_kind = ctx.udir .. "/a\0b", "into a directory with a NUL", "nul"
  elseif k == 7 then dir = r.pick(others()) dir_label, dir_kind = "into " .. describe(dir), "type" end
  local reasons = {}
  local opts, opts_label = nil, "no opts"
  k = r.int(8)
  if k == 1 then opts, opts_label = { max_size = 1 }, "max_size 1"
  elseif k == 2 then opts, opts_label = { max_size = 20003 }, "max_size 20003"
  elseif k == 3 then
    local v = any_value(r)
    if rawequal(v, NIL) then v = "x" end
    opts, opts_label = { max_size = v }, "max_size " .. describe(v)
    if not rule_size(v) then reasons[#reasons + 1] = "max_size" end
  elseif k == 4 then
    opts, opts_label = { dir = "x" }, "an unknown option dir"
    reasons[#reasons + 1] = "dir"
  elseif k == 5 then
    opts = r.pick(others())
    opts_label = "opts " .. describe(opts)
    if type(opts) ~= "table" then reasons[#reasons + 1] = "table expected"
    elseif next(opts) ~= nil then reasons[#reasons + 1] = "option" end
  end
  local args, nargs = { src, dir, opts }, opts ~= nil and 3 or (dir ~= nil and 2 or 1)
  if r.chance(0.02) then
    args[4], nargs = "extra", 4
    reasons[#reasons + 1] = "too many arguments"
  end
  local case = { args = args, nargs = nargs, dir = dir, dir_kind = dir_kind,
                 label = ("%s, %s, %s%s"):format(src_label, dir_label, opts_label,
                   nargs == 4 and ", an extra argument" or "") }
  if type(src) ~= "string" and type(src) ~= "number" then reasons[#reasons + 1] = "#1" end
  if dir_kind == "type" and type(dir) ~= "string" and type(dir) ~= "number" then reasons[#reasons + 1] = "#2" end
  if dir_kind == "nul" then reasons[#reasons + 1] = "NUL" end
  if #reasons > 0 then
    case.expect = raise(reasons)
    return case
  end
  local limit = type(opts) == "table" and rawget(opts, "max_size")
  local limited = limit and rule_size(limit) and limit < 20003 -- the two members' sizes
  case.expect = { how = "unzipped", good = src_kind == "good" and not limited and dir_kind ~= "io",
                  dir = dir, dir_kind = dir_kind }
  return case
end

-- cmsrec.new(config); then, when the configuration is valid and still talks
-- to the mock, one download with the new client.
local function url_values(ctx)
  local u, p = ctx.url, ctx.port
  return {
    { u, true }, { u .. "/", true }, { u .. "/cms", true }, { u .. "//", true },
    { "HTTPS://127.0.0.1:" .. p, true }, { u .. "/a%20b", true }, { u .. "/;", true },
    { u .. "/%0d%0a", true }, { "https://127.1:" .. p, true }, { u .. "/x/../y", true },
    { ctx.http_url, "http" }, { u .. "#", true },
    { "https://" .. ("a"):rep(1100) .. ":" .. p, "base_url" }, -- valid, but its Host is too long to send
    { "127.0.0.1:" .. p, false }, { "https://", false }, { u .. "\r\nX: 1", false }, { u .. "/a b", false },
    { u .. "/\226\130\172", false }, { u .. "/\194\155", false }, { "https://[::1", false },
    { "https://user@127.0.0.1:" .. p, false }, { u .. "?", false }, { u .. "?a=1", false },
    { "https://127.0.0.1:99999", false }, { "ftp://127.0.0.1:" .. p, false }, { " " .. u, false },
    { u .. "\t", false }, { u .. "/\255", false }, { "", false }, { MB, false }, { u .. "/a\0b", false },
    { "https://127.0.0.1:" .. p .. "/" .. ("a"):rep(3000), false }, -- a path too long to send
  }
end

local DEFAULT_PATH = "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile"
local PATHS = {
  { DEFAULT_PATH, true }, { "/cms" .. DEFAULT_PATH, true }, { "/" .. DEFAULT_PATH, true },
  { "/a;b" .. DEFAULT_PATH, true }, { "/%41" .. DEFAULT_PATH, true }, { "/~u" .. DEFAULT_PATH, true },
  { "/x", true }, { "/", true }, { "/rest", true }, { "/" .. ("a"):rep(2000), true },
  { "", false }, { "x", false }, { "rest/x", false }, { "/a b", false }, { "/a?b", false },
  { "/a#b", false }, { "/\r\n", false }, { "/\0", false }, { "/\226\130\172", false }, { "/\127", false },
  { "/" .. MB, false }, { "/" .. ("a"):rep(2100), false },
}

-- An authorization function, and whether what it returns can be sent.
local function auth_fn(r, ctx)
  local cmsrec = ctx.cmsrec
  local b = r.pick({ "good", "good", "good", "nothing", "number", "table", "empty", "crlf", "nul",
    "ctl", "del", "huge", "long", "raise", "raise-table", "yield", "two", "space" })
  local function good(method, path, headers, body)
    return (cmsrec.sign{ ak = ctx.ak, sk = ctx.sk, method = method, path = path, headers = headers, body = body })
  end
  local f
  if b == "good" then f = good
  elseif b == "nothing" then f = function() end
  elseif b == "number" then f = function() return 42 end
  elseif b == "table" then f = function() return {} end
  elseif b == "empty" then f = function() return "" end
  elseif b == "crlf" then f = function(...) return good(...) .. "\r\nX-Injected: 1" end
  elseif b == "nul" then f = function(...) return good(...) .. "\0" end
  elseif b == "ctl" then f = function(...) return "\1" .. good(...) end
  elseif b == "del" then f = function(...) return good(...) .. "\127" end
  elseif b == "huge" then f = function() return MB end
  elseif b == "long" then f = function(...) return good(...) .. (" x"):rep(4200) end -- past 8 KB
  elseif b == "raise" then f = function() error("corpus: authorization raises") end
  elseif b == "raise-table" then f = function() error({}) end
  elseif b == "yield" then f = function() coroutine.yield("x") end
  elseif b == "two" then f = function(...) return good(...), "second" end
  else f = function(...) return good(...) .. " " end end
  label(f, "authorization that " .. b)
  return f, b == "good" or b == "two" or b == "space"
end

local CONFIG_KEYS = { "base_url", "ak", "sk", "path", "signed_headers", "cafile", "capath", "insecure",
  "timeout", "connect_timeout", "proxy", "user_agent", "authorization", "allow_http", "max_size",
  "stall_timeout", "reuse", "retries", "max_rate" }

local SIGNED = {
  { { "content-length", "content-type", "host" }, true }, { { "host" }, true },
  { { "host", "content-type" }, true }, { { "content-length", "host" }, true },
  { { "host", extra = "ignored" }, true },
  { {}, false }, { { "HOST" }, false }, { { "host", "host" }, false }, { { "x" }, false },
  { { 1 }, false }, { { true }, false }, { { "content-type" }, false }, { { host = true }, false },
  { { "host\0" }, false }, { { MB }, false },
}

-- proxy: what libcurl 7.88's URL parser (CURLU_GUESS_SCHEME, as it parses a
-- proxy) and its proxy schemes make of each; "" is no proxy.
local PROXIES = {
  { "", true }, { "x", true }, { "http://127.0.0.1:1", true }, { "u:p@127.0.0.1:1", true },
  { "socks5h://[::1]:1080", true }, { "HTTPS://proxy", true }, { "2025-05-30", true },
  { "socks9://u:p@127.0.0.1:1", false }, { "ftp://h", false }, { "http://h:99999", false },
  { "/nonexistent", false }, { "/tmp", false }, { " x ", false }, { "a\tb", false },
  { "a\r\nX-Injected: 1", false }, { "<script>", false }, { "%00", false }, { "\\", false },
  { "a\0b", false }, { NIL, true },
}
local PROXY_VERDICT = {}
for _, e in ipairs(PROXIES) do
  if type(e[1]) == "string" then PROXY_VERDICT[e[1]] = e[2] end
end

-- One option of the configuration: its value, and what it does to the case.
-- st: {reasons, reach (still talks to the mock), answer (http404), at_download (field)}
local function config_option(r, ctx, k, valid_pick, st)
  local v
  if k == "base_url" then
    local e = valid_pick and r.pick(url_values(ctx)) or { any_value(r), false }
    v = e[1]
    if type(v) == "string" and v:find("://", 1, true) and e[2] == false and v == e[1] and not valid_pick then
      v = "x" -- a random string with a scheme: not generated, the oracle cannot judge it
    end
    if not rawequal(v, NIL) and e[2] == false then st.reasons[#st.reasons + 1] = "base_url"
    elseif e[2] == "http" then st.allow_http = true
    elseif e[2] == "base_url" then st.at_download = "base_url" end
  elseif k == "path" then
    local e = valid_pick and r.pick(PATHS) or { any_value(r), "any" }
    v = e[1]
    if e[2] == false or (e[2] == "any" and not rawequal(v, NIL) and not (type(v) == "string" and v:find("^/[!-~]*$")
        and not v:find("[?#]"))) then
      st.reasons[#st.reasons + 1] = "path"
    end
  elseif k == "signed_headers" then
    local e = valid_pick and r.pick(SIGNED) or { any_value(r), false }
    v = e[1]
    if not rawequal(v, NIL) and not e[2] then st.reasons[#st.reasons + 1] = "signed_headers" end
    if type(v) == "table" and valid_pick then
      local names = {}
      for i, h in ipairs(v) do names[i] = describe(h) end
      label(v, "{" .. table.concat(names, ", ") .. "}")
    end
  elseif k == "ak" or k == "sk" then
    v = valid_pick and r.pick({ "AK", "a/b", "", "a\0b", "a\r\nb", "\1", "\127", MB, ("a"):rep(256),
      ("a"):rep(257), "\226\130\172", NIL, ctx[k] }) or any_value(r)
    if v ~= ctx[k] then st.reach = false end
    st.credentials = true
  elseif k == "proxy" then
    local e = valid_pick and r.pick(PROXIES) or { any_value(r), "any" }
    v = e[1]
    if e[2] == "any" and type(v) == "string" then -- judged by the table, else not generated
      e = PROXY_VERDICT[v] ~= nil and { v, PROXY_VERDICT[v] } or { "x", true }
      v = e[1]
    end
    if not rawequal(v, NIL) and e[2] ~= true then st.reasons[#st.reasons + 1] = "proxy"
    elseif not rawequal(v, NIL) then st.reach = false end
  elseif k == "cafile" or k == "capath" then
    v = valid_pick and r.pick({ "/nonexistent", "", "a\0b", MB, NIL, k == "cafile" and ctx.ca or "/tmp" })
      or any_value(r)
    if not rule_string_nonul(v) then st.reasons[#st.reasons + 1] = k
    elseif not (k == "cafile" and v == ctx.ca) then st.reach = false end
  elseif k == "user_agent" then
    v = valid_pick and r.pick({ "ua", "", "a\r\nX-Evil: 1", "a\0b", "\1", "a\tb", "\127", ("u"):rep(1024),
      ("u"):rep(1025), MB, "\226\130\172", "\194\155" }) or any_value(r)
    if not rawequal(v, NIL) and not (type(v) == "string" and no_ctl_bytes(v) and #v <= G.USER_AGENT_MAX) then
      st.reasons[#st.reasons + 1] = "user_agent"
    end
  elseif k == "authorization" then
    local sendable
    if valid_pick then v, sendable = auth_fn(r, ctx) else v = any_value(r) end
    if not rule_function(v) then st.reasons[#st.reasons + 1] = "authorization"
    elseif not rawequal(v, NIL) and not sendable then st.at_download = "authorization" end
  elseif k == "insecure" or k == "allow_http" or k == "reuse" then
    v = valid_pick and r.pick({ true, false, NIL, 1, "true" }) or any_value(r)
    if k == "insecure" and v == true and not r.chance(0.2) then v = false end -- its warning is loud
    if not rule_boolean(v) then st.reasons[#st.reasons + 1] = k end
  elseif k == "timeout" or k == "connect_timeout" then
    v = valid_pick and r.pick({ 0.5, 1, 2, 5, 1e-9, 0, -1, 86400 * 30, 86400 * 30 + 1, "2", 0 / 0, 1 / 0, NIL })
      or any_value(r)
    if not rule_seconds(v) then st.reasons[#st.reasons + 1] = k
    elseif (rawequal(v, NIL) and k == "timeout") or
        (not rawequal(v, NIL) and (v < 1 or (k == "timeout" and v > 5))) then
      st.reach = false -- no hang: a download only with a small timeout
    end
  elseif k == "stall_timeout" then
    v = valid_pick and r.pick({ false, true, 1, 0.001, 120, 0, -1, "5" }) or any_value(r)
    if not (v == false or rule_seconds(v)) then st.reasons[#st.reasons + 1] = k end
  elseif k == "max_size" then
    v = valid_pick and r.pick({ 1, 999, 1000, 160044, 2 ^ 31, 2 ^ 53, 0, -1, 0.5, 2 ^ 63 }) or any_value(r)
    if not rule_size(v) then st.reasons[#st.reasons + 1] = k end
  elseif k == "retries" then
    v = valid_pick and r.pick({ 0, 1, 10, 11, -1, 1.5, NIL }) or any_value(r)
    if not rule_count(0, 10)(v) then st.reasons[#st.reasons + 1] = k end
  else -- max_rate
    v = valid_pick and r.pick({ 1, 10, 1e6, 1e6 + 1, 0, -1, 1e-6, 0 / 0 }) or any_value(r)
    if not (rawequal(v, NIL) or (type(v) == "number" and v > 0 and v <= 1e6)) then st.reasons[#st.reasons + 1] = k
    elseif not rawequal(v, NIL) and v < 1 then st.reach = false end
  end
  return v
end

-- The path cmsrec sends: base_url's path (trailing slashes dropped) and path.
local function sent_path(cfg)
  local url, path = rawget(cfg, "base_url"), rawget(cfg, "path")
  local base = type(url) == "string" and url:match("^%a+://[^/?#]*(/[^?#]*)") or ""
  base = base:gsub("/+$", "")
  return base .. (type(path) == "string" and path or DEFAULT_PATH)
end

local function gen_new(r, ctx)
  local case = { nargs = 1 }
  if r.chance(0.03) then
    local v = any_value(r)
    if rawequal(v, NIL) then v = nil end
    case.args, case.label = { v }, "the configuration " .. describe(v == nil and NIL or v)
    if type(v) ~= "table" then case.expect = raise({ "table expected" })
    else case.expect = raise({ next(v) == nil and "base_url" or "option" }) end
    return case
  end
  local cfg = { base_url = ctx.url, ak = ctx.ak, sk = ctx.sk, cafile = ctx.ca, timeout = 2, retries = 0 }
  local want_valid = r.chance(0.3)
  local st, parts = { reasons = {}, reach = true }, {}
  local by_key = {} -- an option set twice: what its last value says
  for _ = 1, r.pick({ 1, 1, 1, 2, 2, 3 }) do
    local k = r.pick(CONFIG_KEYS)
    local mine = { reasons = {}, reach = true }
    local v = config_option(r, ctx, k, want_valid or r.chance(0.5), mine)
    by_key[k] = mine
    assign(cfg, k, v)
    parts[#parts + 1] = k .. "=" .. (k == "sk" and type(v) == "string" and ("an SK of %d bytes"):format(#v)
      or describe(v))
  end
  for _, mine in pairs(by_key) do
    for _, reason in ipairs(mine.reasons) do st.reasons[#st.reasons + 1] = reason end
    st.reach = st.reach and mine.reach
    st.allow_http = st.allow_http or mine.allow_http
    st.at_download = st.at_download or mine.at_download
  end
  if st.allow_http and cfg.allow_http == nil then
    cfg.allow_http = true
    parts[#parts + 1] = "allow_http=true"
  end
  if cfg.base_url == nil then st.reasons[#st.reasons + 1] = "base_url" end
  if cfg.allow_http ~= true and type(cfg.base_url) == "string" and cfg.base_url:sub(1, 5) == "http:" then
    st.reasons[#st.reasons + 1] = "base_url"
  end
  -- ak and sk: their types always; their values only without an authorization function
  local has_auth = type(cfg.authorization) == "function"
  for _, k in ipairs({ "ak", "sk" }) do
    local v = cfg[k]
    if v ~= nil and type(v) ~= "string" then
      st.reasons[#st.reasons + 1] = k
    elseif not has_auth then
      if v == nil then v = os.getenv(k == "ak" and "CMSREC_AK" or "CMSREC_SK") end
      if v == nil or v == "" then st.reasons[#st.reasons + 1] = k
      elseif k == "ak" and (v:find("/", 1, true) or not no_ctl_bytes(v) or #v > G.AK_MAX) then
        st.reasons[#st.reasons + 1] = k
      end
    end
  end
  if #st.reasons == 0 and #sent_path(cfg) > G.PATH_MAX then
    st.reasons[#st.reasons + 1] = "path"
  end
  if not want_valid and r.chance(0.12) then
    local key = unknown_key(r, CONFIG_KEYS)
    cfg[key] = "x"
    parts[#parts + 1] = "[" .. describe(key) .. "]=\"x\""
    st.reasons[#st.reasons + 1] = key_reason(key)
  end
  if r.chance(0.04) then
    setmetatable(cfg, r.chance(0.5) and throwing_mt() or junk_mt())
    parts[#parts + 1] = "a metatable"
  end
  case.args, case.label = { cfg }, "{" .. table.concat(parts, ", ") .. "}"
  if not want_valid and r.chance(0.01) then
    case.args[2], case.nargs = "extra", 2
    case.label = case.label .. ", an extra argument"
    st.reasons[#st.reasons + 1] = "too many arguments"
  end
  if #st.reasons > 0 then
    case.expect = raise(st.reasons)
    return case
  end
  case.expect = { how = "client" }
  if not st.reach then return case end
  local req, req_label = G.request(r, true)
  local verdict = G.judge_request(req)
  case.req = req
  case.label = case.label .. "; then download " .. req_label
  if st.at_download then
    case.then_expect = invalid({ st.at_download })
    return case
  end
  local answer = sent_path(cfg):sub(-#DEFAULT_PATH) == DEFAULT_PATH and verdict.answer or "http404"
  case.then_expect = { how = "answer", answer = answer,
                       outcomes = download_outcomes(answer, rawget(cfg, "max_size")) }
  case.sent, case.bodies = 1, { G.body_key(verdict.wire) }
  return case
end

-- ===== the corpus =====

-- Which target case n exercises, from n alone.
local BUCKETS = {
  { 22, "new", gen_new }, { 40, "download", gen_download }, { 50, "download_file", gen_download_file },
  { 60, "prepare", gen_prepare }, { 66, "reader", gen_reader }, { 71, "download_many", gen_many },
  { 81, "sign", gen_sign }, { 90, "classify", gen_classify }, { 100, "unzip", gen_unzip },
}
G.TARGETS = {}
for _, b in ipairs(BUCKETS) do G.TARGETS[#G.TARGETS + 1] = b[2] end

function G.target(n)
  local m = (n * 37) % 100
  for _, b in ipairs(BUCKETS) do
    if m < b[1] then return b[2], b[3] end
  end
end

-- Case n. ctx: what the cases point at (the mock, directories, a ZIP).
function G.case(n, ctx)
  local name, gen = G.target(n)
  local case = gen(new_rng(n), ctx, n)
  case.n, case.target = n, name
  case.sent = case.sent or 0
  case.bodies = case.bodies or {}
  case.maybe_bodies = case.maybe_bodies or {}
  return case
end

G.unpack = unpack
return G
