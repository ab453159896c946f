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
   type = "builtin",
   modules = {
      cmsrec = {
         sources = {
            "lua_cmsrec.c",
            "src/cms_buf.c",
            "src/cms_error.c",
            "src/cms_sign.c",
            "src/cms_request.c",
            "src/cms_classify.c",
            "src/cms_transfer.c",
            "src/cms_sink.c",
            "src/cms_zip.c",
            "src/cms_url.c",
            "src/cms_text.c",
            "src/cms_fs.c",
         },
         libraries = { "curl", "crypto", "zip" },
         incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)", "$(LIBZIP_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(LIBZIP_LIBDIR)" },
      },
   },
   install = {
      bin = { cmsrec = "bin/cmsrec" },
   },
}
