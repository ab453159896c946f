-- SHA-256, HMAC-SHA256 and auth-v2 signing in pure Lua: what a user of
-- LuaSocket + LuaSec writes without cmsrec. Bench-only (the module signs with
-- OpenSSL). The arithmetic needs Lua 5.3+ integers and bitwise operators; it is
-- compiled from a string so that this file still parses as Lua 5.1.
local M = {}

local core = [==[
local spack, sunpack, srep, schar = string.pack, string.unpack, string.rep, string.char
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
local M32 = 0xffffffff

local function digest(msg)
  local len = #msg
  msg = msg .. "\128" .. srep("\0", (55 - len) % 64) .. spack(">I8", len * 8)
  local h0, h1, h2, h3 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
  local h4, h5, h6, h7 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  local w = {}
  for i = 1, #msg, 64 do
    for j = 1, 16 do w[j] = sunpack(">I4", msg, i + 4 * (j - 1)) end
    for j = 17, 64 do
      local x, y = w[j - 15], w[j - 2]
      local s0 = ((x >> 7) | (x << 25)) ~ ((x >> 18) | (x << 14)) ~ (x >> 3)
      local s1 = ((y >> 17) | (y << 15)) ~ ((y >> 19) | (y << 13)) ~ (y >> 10)
      w[j] = (w[j - 16] + (s0 & M32) + w[j - 7] + (s1 & M32)) & M32
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for j = 1, 64 do
      local S1 = ((e >> 6) | (e << 26)) ~ ((e >> 11) | (e << 21)) ~ ((e >> 25) | (e << 7))
      local t1 = h + (S1 & M32) + ((e & f) ~ (~e & g)) + K[j] + w[j]
      local S0 = ((a >> 2) | (a << 30)) ~ ((a >> 13) | (a << 19)) ~ ((a >> 22) | (a << 10))
      local t2 = (S0 & M32) + ((a & b) ~ (a & c) ~ (b & c))
      h, g, f, e, d, c, b, a = g, f, e, (d + t1) & M32, c, b, a, (t1 + t2) & M32
    end
    h0, h1, h2, h3 = (h0 + a) & M32, (h1 + b) & M32, (h2 + c) & M32, (h3 + d) & M32
    h4, h5, h6, h7 = (h4 + e) & M32, (h5 + f) & M32, (h6 + g) & M32, (h7 + h) & M32
  end
  return spack(">I4I4I4I4I4I4I4I4", h0, h1, h2, h3, h4, h5, h6, h7)
end

local function xor_key(key, byte)
  local t = {}
  for i = 1, 64 do t[i] = schar(key:byte(i) ~ byte) end
  return table.concat(t)
end

local function hmac(key, msg)
  if #key > 64 then key = digest(key) end
  key = key .. srep("\0", 64 - #key)
  return digest(xor_key(key, 0x5c) .. digest(xor_key(key, 0x36) .. msg))
end

return digest, hmac
]==]

local compile = loadstring or load
local chunk = _VERSION >= "Lua 5.3" and compile(core, "=sha256-core")
if not chunk then error("bench/clients/sha256.lua needs Lua 5.3 or later", 2) end
M.digest, M.hmac = chunk()

function M.hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- auth-v2 (shared/reference/cms-protocol.md): percent-encode all but A-Z a-z 0-9 - . _ ~
local function normalize(s)
  return (s:gsub("[^A-Za-z0-9%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- headers: { [lowercase name] = value }; returns the Authorization value.
function M.authv2(ak, sk, method, path, headers, body, timestamp)
  local names, canon = {}, {}
  for name, value in pairs(headers) do
    names[#names + 1] = name
    canon[#canon + 1] = normalize(name) .. ":" .. normalize((value:gsub("^%s+", ""):gsub("%s+$", "")))
  end
  table.sort(names)
  table.sort(canon)
  local signed = table.concat(names, ";")
  local request = table.concat({ method, path, signed, table.concat(canon, "\n"), normalize(body) }, "\n")
  local prefix = "auth-v2/" .. ak .. "/" .. timestamp .. "/" .. signed
  local key = M.hex(M.hmac(sk, prefix))
  return prefix .. "/" .. M.hex(M.hmac(key, request))
end

-- The V1 vector of cms-protocol.md: a wrong signer is not benchmarked.
function M.selftest()
  local auth = M.authv2("globalaktest", "example-sk-0123456789", "POST", "/rest/cmsapp/v1/ping",
    { host = "10.22.26.181:28080", ["content-type"] = "application/json;charset=UTF-8",
      ["content-length"] = "23" }, '{"say": "Hello world!"}', "2024-10-31T14:06:52Z")
  assert(auth == "auth-v2/globalaktest/2024-10-31T14:06:52Z/content-length;content-type;host/"
    .. "151388d296c25c51b38d6800e04a09201cd481eaf10e247de50d9cb16a08da8a", "pure-Lua auth-v2: " .. auth)
  assert(M.hex(M.digest("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  assert(M.hex(M.digest(("a"):rep(1000))) ==
    "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
end

return M
