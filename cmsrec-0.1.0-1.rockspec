-- Installs the cmsrec module and the cmsrec command for Lua 5.1-5.4 and LuaJIT.
--
--   luarocks --lua-version=5.4 make --deps-mode=none cmsrec-0.1.0-1.rockspec \
--       CURL_INCDIR=/usr/include/$(dpkg-architecture -qDEB_HOST_MULTIARCH)
--
-- CURL_DIR, CURL_INCDIR, CURL_LIBDIR, OPENSSL_DIR, ..., LIBZIP_DIR, ... say
-- where the C libraries are; a missing header stops the build with a message
-- naming the header and these variables (LuaRocks' external_dependencies).
--
-- The build type is "command", not "builtin", for one reason: the command is
-- installed twice, as `cmsrec` and as `cmsrec-<Lua version>` (cmsrec-5.1,
-- cmsrec-5.4; LuaJIT is 5.1 to LuaRocks), and only a command can give a file
-- a name that depends on the Lua being installed for. All Lua versions share
-- a tree's bin/ directory: installing for 5.1 and then 5.4 into one tree
-- leaves `cmsrec` running 5.4 (the last install wins, as for every rock) and
-- `cmsrec-5.1` running 5.1. LuaRocks wraps both (they are Lua scripts) in a
-- shell script that runs the interpreter they were installed for.
package = "cmsrec"
version = "0.1.0-1"
source = {
   url = "git+https://example.invalid/cmsrec.git",
   tag = "v0.1.0",
}
description = {
   summary = "Download call recordings from a Huawei CC-CMS, signed with auth-v2",
   detailed = [[
cmsrec is a C module on libcurl and OpenSSL that calls the CC-CMS
downloadRecordFile interface: it validates the request, signs it with the
auth-v2 AK/SK scheme, and returns the recording bytes or a structured error.
The rock also installs the cmsrec command (and cmsrec-5.x, named after the
Lua it runs on).
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.1",
   "lua-cjson",
}
external_dependencies = {
   CURL = { header = "curl/curl.h", library = "curl" },
   OPENSSL = { header = "openssl/hmac.h", library = "crypto" },
   LIBZIP = { header = "zip.h", library = "zip" },
}
build = {
   type = "command",
   -- What the builtin type would run, in one compiler call: LuaRocks' CC,
   -- CFLAGS and LIBFLAG (override them on the command line), the Lua headers
   -- LuaRocks found (LuaJIT's with the LuaJIT set-up), and an rpath to the
   -- library directories, as builtin adds on Linux.
   build_command = [[$(CC) -std=gnu99 $(CFLAGS) -I"$(LUA_INCDIR)" ]] ..
      [[-I"$(CURL_INCDIR)" -I"$(OPENSSL_INCDIR)" -I"$(LIBZIP_INCDIR)" ]] ..
      [[lua_cmsrec.c src/cms_buf.c src/cms_error.c src/cms_sign.c src/cms_request.c ]] ..
      [[src/cms_classify.c src/cms_transfer.c src/cms_sink.c src/cms_zip.c src/cms_url.c ]] ..
      [[src/cms_text.c src/cms_fs.c src/cms_job.c src/cms_secret.c src/cms_trace.c ]] ..
      [[src/cms_gateway.c -o cmsrec.so $(LIBFLAG) ]] ..
      [[-L"$(CURL_LIBDIR)" -L"$(OPENSSL_LIBDIR)" -L"$(LIBZIP_LIBDIR)" ]] ..
      [[-Wl,-rpath,"$(CURL_LIBDIR)" -Wl,-rpath,"$(OPENSSL_LIBDIR)" -Wl,-rpath,"$(LIBZIP_LIBDIR)" ]] ..
      [[-lcurl -lcrypto -lzip]],
   -- The versioned command: the suffix is the version of the interpreter the
   -- rock is installed for, as that interpreter reports it.
   install_command = [[v=$("$(LUA)" -e 'io.write((_VERSION:gsub("^Lua ", "")))') && ]] ..
      [[cp bin/cmsrec "$(BINDIR)/cmsrec-$v"]],
   install = {
      lib = { cmsrec = "cmsrec.so" },
      bin = { cmsrec = "bin/cmsrec" },
   },
}
