/*
 * lua_cmsrec.c: the Lua binding of cmsrec.
 *
 * This file only translates between Lua and the C core in src/: config and
 * request tables in, core structs out; core errors in, Lua error tables out.
 * Conventions (after LuaSocket and Lua-cURLv3):
 *   - misuse (wrong option, wrong argument type, closed client) raises a Lua
 *     error string naming the option;
 *   - everything that can go wrong with a request (bad field, network, server
 *     answer) returns nil, err where err is a table of metatable cmsrec.error;
 *   - lua-cjson (loaded with require) is upvalue 1 of every function; there
 *     is no other module state, and libcurl's global init runs once, guarded.
 * Memory that C owns during a download lives in a scratch userdata whose
 * __gc frees it, so a Lua error raised midway (out of memory) leaks nothing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "src/compat.h"
#include "src/cms_classify.h"
#include "src/cms_error.h"
#include "src/cms_gateway.h"
#include "src/cms_job.h"
#include "src/cms_request.h"
#include "src/cms_secret.h"
#include "src/cms_sign.h"
#include "src/cms_sink.h"
#include "src/cms_text.h"
#include "src/cms_trace.h"
#include "src/cms_transfer.h"
#include "src/cms_url.h"
#include "src/cms_zip.h"

#define CMSREC_VERSION "0.1.0"
#define CMSREC_DEFAULT_PATH "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile"
#define CMSREC_DEFAULT_MAX_SIZE (1LL << 30) /* in-memory downloads: 1 GiB */
#define CMSREC_DEFAULT_RETRIES 2
#define CMSREC_DEFAULT_STALL_S 120 /* no byte for this long: the transfer is stalled */
#define CMSREC_CONTENT_TYPE "application/json;charset=UTF-8"
#define CMSREC_AK_MAX 256          /* bytes: the AK goes into the Authorization header */
#define CMSREC_USER_AGENT_MAX 1024 /* bytes: a header */
#define CMSREC_PATH_MAX 2048       /* bytes of the path sent, base_url's and `path` */
#define CMSREC_TOKEN_ANSWER_MAX (64 * 1024) /* a token answer is a few hundred bytes */
#define CMSREC_HEADER_LINE_MAX 8192 /* "Authorization: Bearer " and a CMS_TOKEN_MAX token fit */
#define CMSREC_HOST_LINE_MAX 1024
#define CLIENT_MT "cmsrec.client"
#define ERROR_MT "cmsrec.error"
#define SCRATCH_MT "cmsrec.scratch"
#define READER_MT "cmsrec.reader"
#define BATCH_MT "cmsrec.batch"
#define CJSON_UPVALUE lua_upvalueindex(1)

/* ===== CLIENT ===== */

enum { SIGN_CONTENT_LENGTH = 1, SIGN_CONTENT_TYPE = 2, SIGN_HOST = 4 };
enum { BUSY_NOT, BUSY_CALL, BUSY_READER }; /* idle; in a call; a reader holds the handle */
enum { AUTH_V2, AUTH_APIG, AUTH_BEARER };   /* the built-in schemes (option auth) */

typedef struct client {
    CURL *curl;
    CURLM *multi;       /* `curl` runs on it: one pool of connections for every call */
    cms_conn_set conns; /* the sockets of that pool (see cms_transfer.h) */
    struct reader *reader; /* the open reader holding `curl`, or NULL */
    char *url;          /* scheme://authority/path, what is requested */
    char *path;         /* the path exactly as sent and signed */
    char *host;         /* the Host header, the authority as written */
    char *ak;
    cms_secret sk;      /* in pages of its own, wiped on close (cms_secret.h) */
    cms_secret key_password; /* sslkey_password, likewise; tc.key_password points here */
    cms_transfer_config tc; /* its strings are owned here */
    long long max_size; /* in-memory downloads */
    int retries;        /* retries of a failed attempt, by default */
    cms_rate rate;      /* max_rate: requests per second, client-wide */
    int signed_headers; /* SIGN_* flags */
    int has_authorization;
    int busy;           /* BUSY_*: callbacks must not close or reuse it */
    int closed;
    /* gateways: other schemes, extra headers, resolve, client:call */
    int auth;           /* AUTH_*, when there is no authorization function */
    char *base_url;     /* client:call paths are resolved against it */
    cms_headers extra;  /* option headers: sent on every request */
    struct curl_slist *resolve; /* option resolve; c->tc.resolve points here */
    char *token_url;    /* bearer: where tokens come from */
    CURL *token_curl;   /* bearer: token requests, apart from transfers in flight */
    cms_token token;    /* bearer: wiped with the SK */
} client;

static void free_str(char **p)
{
    free(*p);
    *p = NULL;
}

static void reader_abandon(lua_State *L, struct reader *r);

static void client_release(lua_State *L, client *c)
{
    if (c->busy == BUSY_READER)
        reader_abandon(L, c->reader); /* the reader keeps its outcome */
    if (c->multi)
        curl_multi_cleanup(c->multi); /* closes the pool: close_socket needs c->conns */
    c->multi = NULL;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    c->curl = NULL;
    if (c->token_curl)
        curl_easy_cleanup(c->token_curl);
    c->token_curl = NULL;
    if (c->tc.share) /* after every handle that used it */
        curl_share_cleanup(c->tc.share);
    c->tc.share = NULL;
    cms_conn_set_free(&c->conns);
    cms_secret_free(&c->sk);
    cms_secret_free(&c->key_password);
    c->tc.key_password = NULL;
    cms_token_wipe(&c->token);
    cms_headers_free(&c->extra);
    curl_slist_free_all(c->resolve);
    c->resolve = c->tc.resolve = NULL;
    free_str(&c->base_url);
    free_str(&c->token_url);
    free_str(&c->url);
    free_str(&c->path);
    free_str(&c->host);
    free_str(&c->ak);
    free_str((char **)&c->tc.cafile);
    free_str((char **)&c->tc.capath);
    free_str((char **)&c->tc.proxy);
    free_str((char **)&c->tc.user_agent);
    free_str((char **)&c->tc.sslcert);
    free_str((char **)&c->tc.sslkey);
    free_str((char **)&c->tc.pinnedpubkey);
    c->closed = 1;
}

static int reader_in_callback(const struct reader *r);

static client *check_client(lua_State *L, int idx)
{
    client *c = luaL_checkudata(L, idx, CLIENT_MT);
    if (c->closed)
        luaL_error(L, "attempt to use a closed cmsrec client");
    if (c->busy == BUSY_CALL || (c->busy == BUSY_READER && reader_in_callback(c->reader)))
        luaL_error(L, "cmsrec client is busy: a callback cannot start another download "
                      "on the client that called it");
    return c;
}

/* Just before a request uses the connection: an open reader ends there. */
static void claim_client(lua_State *L, client *c)
{
    if (c->busy == BUSY_READER)
        reader_abandon(L, c->reader);
}

/* ===== ERRORS ===== */

static void set_str_field(lua_State *L, const char *k, const char *v)
{
    if (v && *v) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, k);
    }
}

static void set_int_field(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

/* A text field of an error as valid UTF-8 without control characters: the
   message quotes server text and paths, and is printed and JSON-encoded. */
static void set_text_field(lua_State *L, const char *k, const char *v)
{
    char clean[sizeof ((cms_error *)0)->message];

    cms_strlcpy(clean, v, sizeof clean);
    cms_text_clean(clean);
    set_str_field(L, k, clean);
}

/* The one way a request failure reaches Lua: returns nil, err. */
static int push_error(lua_State *L, const cms_error *e)
{
    lua_pushnil(L);
    lua_createtable(L, 0, 8);
    set_str_field(L, "kind", cms_error_kind_name(e->kind));
    set_text_field(L, "message", e->message);
    set_text_field(L, "field", e->field);
    set_text_field(L, "result_code", e->result_code);
    set_text_field(L, "result_desc", e->result_desc);
    if (e->status > 0)
        set_int_field(L, "status", e->status);
    if (e->curl_code)
        set_int_field(L, "curl_code", e->curl_code);
    if (e->retry_after >= 0)
        set_int_field(L, "retry_after", e->retry_after);
    lua_pushboolean(L, e->retryable);
    lua_setfield(L, -2, "retryable");
    luaL_getmetatable(L, ERROR_MT);
    lua_setmetatable(L, -2);
    return 2;
}

static int error_tostring(lua_State *L)
{
    const char *kind, *msg;
    int retryable;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "kind");
    lua_getfield(L, 1, "message");
    lua_getfield(L, 1, "retryable");
    kind = lua_tostring(L, -3);
    msg = lua_tostring(L, -2);
    retryable = lua_toboolean(L, -1);
    lua_pushfstring(L, "cmsrec: %s (%s error%s)", msg ? msg : "unknown failure",
                    kind ? kind : "unknown", retryable ? ", retryable" : "");
    return 1;
}

/* ===== OPTION HELPERS ===== */

/*
 * Push t[key] without metamethods. Option tables are read raw so that every
 * value C keeps a pointer to is held by the table itself (a value made by
 * __index would live only on the stack), and check_keys, which walks the
 * table with lua_next, sees exactly what is used.
 */
static int raw_field(lua_State *L, int idx, const char *key)
{
    idx = idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
    lua_pushstring(L, key);
    lua_rawget(L, idx);
    return lua_type(L, -1);
}

static const char *const config_keys[] = {
    "base_url", "ak", "sk", "path", "signed_headers", "cafile", "capath",
    "insecure", "timeout", "connect_timeout", "proxy", "user_agent",
    "authorization", "allow_http", "max_size", "stall_timeout", "reuse", "retries",
    "max_rate", "sslcert", "sslkey", "sslkey_password", "pinnedpubkey", "tls_min",
    "auth", "token_url", "headers", "resolve",
};
#define NCONFIG_KEYS (sizeof config_keys / sizeof config_keys[0])

static const char *const sign_keys[] = {
    "ak", "sk", "method", "path", "query", "headers", "body", "timestamp", "scheme",
};
#define NSIGN_KEYS (sizeof sign_keys / sizeof sign_keys[0])

/* Raise for any key of table `idx` not in `keys`, with a near-miss hint. */
static void check_keys(lua_State *L, int idx, const char *what,
                       const char *const *keys, size_t nkeys)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k, *hint;
        size_t i, len;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: option names must be strings, got a %s key", what,
                       luaL_typename(L, -1));
        k = lua_tolstring(L, -1, &len);
        if (strlen(k) != len) /* "timeout\0x" is not timeout */
            luaL_error(L, "%s: option names must not contain NUL bytes", what);
        for (i = 0; i < nkeys; i++)
            if (strcmp(k, keys[i]) == 0)
                break;
        if (i < nkeys)
            continue;
        hint = cms_suggest(k, keys, nkeys);
        if (hint)
            luaL_error(L, "%s: unknown option '%s' (did you mean '%s'?)", what, k, hint);
        luaL_error(L, "%s: unknown option '%s'", what, k);
    }
}

/* 1 if s[0..n) has a control byte (C0, NUL included, or DEL): it cannot be
   sent in a header or a request line. */
static int has_ctl(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
            return 1;
    return 0;
}

/* Optional string option: NULL when absent; raises on a wrong type. */
static const char *opt_string(lua_State *L, int idx, const char *what,
                              const char *key, size_t *len)
{
    const char *s;
    raw_field(L, idx, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "%s: option '%s' must be a string, got %s", what, key,
                   luaL_typename(L, -1));
    s = lua_tolstring(L, -1, len);
    lua_pop(L, 1); /* still referenced by the table */
    return s;
}

static int opt_boolean(lua_State *L, int idx, const char *what, const char *key)
{
    int v;
    raw_field(L, idx, key);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN)
        luaL_error(L, "%s: option '%s' must be a boolean, got %s", what, key,
                   luaL_typename(L, -1));
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* Seconds as a positive number, returned in milliseconds (0 when absent). */
static long opt_seconds(lua_State *L, int idx, const char *what, const char *key)
{
    lua_Number n;
    raw_field(L, idx, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    n = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
    if (!(n > 0 && n <= 86400.0 * 30))
        luaL_error(L, "%s: option '%s' must be a positive number of seconds "
                      "(at most 30 days)", what, key);
    lua_pop(L, 1);
    return n * 1000 < 1 ? 1 : (long)(n * 1000);
}

/* An integer in [lo, hi], or `dflt` when absent. */
static int opt_count(lua_State *L, int idx, const char *what, const char *key, int lo, int hi,
                     int dflt)
{
    long long v = dflt;
    raw_field(L, idx, key);
    if (!lua_isnil(L, -1) && (!cms_tointeger(L, -1, &v) || v < lo || v > hi))
        luaL_error(L, "%s: option '%s' must be an integer from %d to %d", what, key, lo, hi);
    lua_pop(L, 1);
    return (int)v;
}

/* Size in bytes: a positive integer (0 when absent). */
static long long opt_size(lua_State *L, int idx, const char *what, const char *key)
{
    long long v = 0;
    raw_field(L, idx, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!cms_tointeger(L, -1, &v) || v <= 0)
        luaL_error(L, "%s: option '%s' must be a positive integer (bytes)", what, key);
    lua_pop(L, 1);
    return v;
}

static int opt_function(lua_State *L, int idx, const char *what, const char *key)
{
    raw_field(L, idx, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_isfunction(L, -1))
        luaL_error(L, "%s: option '%s' must be a function", what, key);
    return lua_gettop(L); /* stays on the stack for the whole download */
}

/* A string option that C uses as a C string: a NUL byte would cut it short. */
static const char *opt_cstring(lua_State *L, int idx, const char *what, const char *key)
{
    size_t n = 0;
    const char *s = opt_string(L, idx, what, key, &n);

    if (s && strlen(s) != n)
        luaL_error(L, "%s: option '%s' must not contain NUL bytes", what, key);
    return s;
}

/* Argument `arg`, a path: a string without NUL bytes (or nil when optional). */
static const char *check_path(lua_State *L, int arg, int optional)
{
    size_t n = 0;
    const char *s = optional ? luaL_optlstring(L, arg, NULL, &n) : luaL_checklstring(L, arg, &n);

    if (s && strlen(s) != n)
        luaL_argerror(L, arg, "a path must not contain NUL bytes");
    return s;
}

static char *dup_or_raise(lua_State *L, const char *s, size_t n)
{
    char *p;
    if (!s)
        return NULL;
    p = malloc(n + 1);
    if (!p)
        luaL_error(L, "cmsrec: out of memory");
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static char *dup_opt(lua_State *L, int idx, const char *key)
{
    const char *s = opt_cstring(L, idx, "cmsrec.new", key);
    return dup_or_raise(L, s, s ? strlen(s) : 0);
}

/* A string option sent as a header: no control characters, at most `max` bytes. */
static char *dup_header_opt(lua_State *L, int idx, const char *key, size_t max)
{
    size_t n = 0;
    const char *s = opt_string(L, idx, "cmsrec.new", key, &n);

    if (s && (has_ctl(s, n) || n > max))
        luaL_error(L, "cmsrec.new: option '%s' goes into a request header: it must have no "
                      "control characters and at most %d bytes", key, (int)max);
    return dup_or_raise(L, s, n);
}

/* ===== CONFIG ===== */

/* base_url + path -> c->url, c->path, c->host. */
static void config_url(lua_State *L, int idx, client *c)
{
    const char *base = opt_cstring(L, idx, "cmsrec.new", "base_url");
    const char *path = opt_cstring(L, idx, "cmsrec.new", "path");
    const char *problem;
    cms_url u;

    if (!base)
        luaL_error(L, "cmsrec.new: option 'base_url' is required "
                      "(for example \"https://10.0.0.1:28080\")");
    if (!path)
        path = CMSREC_DEFAULT_PATH;
    if (path[0] != '/' || !cms_url_path_clean(path))
        luaL_error(L, "cmsrec.new: option 'path' must start with '/' and contain no "
                      "spaces, control or non-ASCII characters, '?' or '#'");
    problem = cms_url_resolve(base, path, c->tc.allow_http, &u);
    if (problem)
        luaL_error(L, "cmsrec.new: option 'base_url' %s", problem);
    /* the strings belong to the client now, so its __gc frees them */
    c->url = u.url;
    c->host = u.host;
    c->path = u.path;
    if (strlen(c->path) > CMSREC_PATH_MAX) /* servers refuse such request lines */
        luaL_error(L, "cmsrec.new: options 'base_url' and 'path' make a path of %d bytes "
                      "(at most %d)", (int)strlen(c->path), CMSREC_PATH_MAX);
}

static void config_signed_headers(lua_State *L, int idx, client *c)
{
    static const char *const names[] = {"content-length", "content-type", "host"};
    size_t i, n;

    c->signed_headers = SIGN_CONTENT_LENGTH | SIGN_CONTENT_TYPE | SIGN_HOST;
    raw_field(L, idx, "signed_headers");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (!lua_istable(L, -1) || (n = lua_rawlen(L, -1)) == 0)
        luaL_error(L, "cmsrec.new: option 'signed_headers' must be a non-empty list "
                      "such as {\"content-length\", \"content-type\", \"host\"}");
    c->signed_headers = 0;
    for (i = 1; i <= n; i++) {
        const char *h, *hint;
        size_t hlen = 0;
        int bit = 0, j;
        lua_rawgeti(L, -1, (int)i);
        h = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &hlen) : "";
        for (j = 0; j < 3; j++)
            if (strcmp(h, names[j]) == 0 && strlen(h) == hlen)
                bit = 1 << j;
        if (!bit) {
            hint = cms_suggest(h, names, 3);
            luaL_error(L, "cmsrec.new: option 'signed_headers' entry %d ('%s') must be "
                          "one of content-length, content-type, host%s%s%s",
                       (int)i, h, hint ? " (did you mean '" : "", hint ? hint : "",
                       hint ? "'?)" : "");
        }
        if (c->signed_headers & bit)
            luaL_error(L, "cmsrec.new: option 'signed_headers' lists '%s' twice", h);
        c->signed_headers |= bit;
        lua_pop(L, 1);
    }
    if (!(c->signed_headers & SIGN_HOST))
        luaL_error(L, "cmsrec.new: option 'signed_headers' must include 'host'");
    lua_pop(L, 1);
}

/* ak/sk from the config, else from CMSREC_AK / CMSREC_SK. */
static void config_credentials(lua_State *L, int idx, client *c)
{
    size_t ak_len = 0, sk_len = 0;
    const char *ak = opt_string(L, idx, "cmsrec.new", "ak", &ak_len);
    const char *sk = opt_string(L, idx, "cmsrec.new", "sk", &sk_len);

    if (!ak && (ak = getenv("CMSREC_AK")) != NULL)
        ak_len = strlen(ak);
    if (!sk && (sk = getenv("CMSREC_SK")) != NULL)
        sk_len = strlen(sk);
    if (c->has_authorization)
        return; /* the user signs: AK/SK are not needed */
    if (!ak || !ak_len)
        luaL_error(L, "cmsrec.new: option 'ak' is required (or set CMSREC_AK)");
    if (!sk || !sk_len)
        luaL_error(L, "cmsrec.new: option 'sk' is required (or set CMSREC_SK)");
    if (has_ctl(ak, ak_len) || memchr(ak, '/', ak_len) || ak_len > CMSREC_AK_MAX)
        luaL_error(L, "cmsrec.new: option 'ak' goes into the Authorization header: it must "
                      "have no '/' or control characters and at most %d bytes", CMSREC_AK_MAX);
    c->ak = dup_or_raise(L, ak, ak_len);
    if (cms_secret_set(&c->sk, sk, sk_len) != 0)
        luaL_error(L, "cmsrec.new: cannot map memory for the SK: %s", strerror(errno));
}

/* A file option: a readable file, or raise naming the option (a typo in a
   path is a configuration error, found at new rather than at the first call). */
static char *config_file(lua_State *L, int idx, const char *key)
{
    char *path = dup_opt(L, idx, key);
    struct stat st;
    const char *why = NULL;

    if (path && (access(path, R_OK) != 0 || stat(path, &st) != 0))
        why = strerror(errno);
    else if (path && S_ISDIR(st.st_mode))
        why = "it is a directory";
    if (why) {
        lua_pushfstring(L, "cmsrec.new: option '%s': cannot read '%s': %s", key, path, why);
        free(path);
        lua_error(L);
    }
    return path;
}

/* "sha256//<44 base64 characters>" entries, ';' between them, or a file. */
static int pin_hashes_valid(const char *s)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n;

    for (;;) {
        if (strncmp(s, "sha256//", 8) != 0)
            return 0;
        s += 8;
        n = strspn(s, b64);
        if (n != 43 || s[n] != '=')
            return 0;
        s += n + 1;
        if (*s == '\0')
            return 1;
        if (*s++ != ';')
            return 0;
    }
}

static void config_pin(lua_State *L, int idx, client *c)
{
    const char *pin = opt_cstring(L, idx, "cmsrec.new", "pinnedpubkey");

    if (pin && strncmp(pin, "sha256//", 8) == 0) {
        if (!pin_hashes_valid(pin))
            luaL_error(L, "cmsrec.new: option 'pinnedpubkey' must be \"sha256//<base64 of "
                          "the SHA-256 of the public key>\" (44 characters), several joined "
                          "with ';', or the path of a PEM or DER public key file");
        c->tc.pinnedpubkey = dup_or_raise(L, pin, strlen(pin));
    } else if (pin) {
        c->tc.pinnedpubkey = config_file(L, idx, "pinnedpubkey");
    }
}

/* sslcert, sslkey, sslkey_password, pinnedpubkey, tls_min. */
static void config_tls(lua_State *L, int idx, client *c)
{
    size_t n = 0;
    const char *v = opt_cstring(L, idx, "cmsrec.new", "tls_min");
    const char *password = opt_string(L, idx, "cmsrec.new", "sslkey_password", &n);

    if (v && strcmp(v, "1.2") != 0 && strcmp(v, "1.3") != 0)
        luaL_error(L, "cmsrec.new: option 'tls_min' must be \"1.2\" (the default) or "
                      "\"1.3\"");
    c->tc.tls_min = v && strcmp(v, "1.3") == 0 ? (long)CURL_SSLVERSION_TLSv1_3
                                               : (long)CURL_SSLVERSION_TLSv1_2;
    c->tc.sslcert = config_file(L, idx, "sslcert");
    c->tc.sslkey = config_file(L, idx, "sslkey");
    if (c->tc.sslkey && !c->tc.sslcert)
        luaL_error(L, "cmsrec.new: option 'sslkey' needs 'sslcert' (the certificate of "
                      "that key)");
    config_pin(L, idx, c);
    if (!password)
        return;
    if (!c->tc.sslcert)
        luaL_error(L, "cmsrec.new: option 'sslkey_password' needs 'sslcert' (and 'sslkey')");
    if (strlen(password) != n)
        luaL_error(L, "cmsrec.new: option 'sslkey_password' must not contain NUL bytes");
    if (cms_secret_set(&c->key_password, password, n) != 0)
        luaL_error(L, "cmsrec.new: cannot map memory for 'sslkey_password': %s",
                   strerror(errno));
    c->tc.key_password = (const char *)c->key_password.data;
}

/* stall_timeout: seconds, default CMSREC_DEFAULT_STALL_S; false turns it off. */
static long config_stall_timeout(lua_State *L, int idx)
{
    int t = raw_field(L, idx, "stall_timeout");
    int off = t == LUA_TBOOLEAN && !lua_toboolean(L, -1);

    lua_pop(L, 1);
    if (off)
        return 0;
    if (t == LUA_TNIL)
        return CMSREC_DEFAULT_STALL_S;
    return (opt_seconds(L, idx, "cmsrec.new", "stall_timeout") + 999) / 1000;
}

/* ===== CONFIG: gateways (auth, token_url, headers, resolve) ===== */

/* auth = "auth-v2" | "apig" | "bearer", never with an authorization function. */
static void config_auth(lua_State *L, int idx, client *c)
{
    static const char *const names[] = {"auth-v2", "apig", "bearer"};
    const char *a = opt_cstring(L, idx, "cmsrec.new", "auth"), *hint;
    int i;

    c->auth = AUTH_V2;
    if (!a)
        return;
    if (c->has_authorization)
        luaL_error(L, "cmsrec.new: options 'auth' and 'authorization' do not go together: "
                      "the authorization function signs every request itself");
    for (i = 0; i < 3; i++)
        if (strcmp(a, names[i]) == 0)
            c->auth = i;
    if (strcmp(a, names[c->auth]) != 0) {
        hint = cms_suggest(a, names, 3);
        luaL_error(L, "cmsrec.new: option 'auth' must be \"auth-v2\", \"apig\" or \"bearer\"%s%s%s",
                   hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "");
    }
}

/* Options that belong to one scheme only. */
static void config_auth_options(lua_State *L, int idx, client *c)
{
    raw_field(L, idx, "signed_headers");
    if (!lua_isnil(L, -1) && c->auth != AUTH_V2)
        luaL_error(L, "cmsrec.new: option 'signed_headers' applies to auth = \"auth-v2\" only");
    lua_pop(L, 1);
    raw_field(L, idx, "token_url");
    if (!lua_isnil(L, -1) && c->auth != AUTH_BEARER)
        luaL_error(L, "cmsrec.new: option 'token_url' needs auth = \"bearer\"");
    lua_pop(L, 1);
}

/* token_url (bearer): https, or the base URL's host on port 443. */
static void config_token_url(lua_State *L, int idx, client *c)
{
    const char *t = opt_cstring(L, idx, "cmsrec.new", "token_url"), *problem;
    cms_url u;

    if (c->auth != AUTH_BEARER)
        return;
    if (!t) {
        if (!(c->token_url = cms_token_url_default(c->base_url)))
            luaL_error(L, "cmsrec.new: out of memory");
        return;
    }
    problem = cms_url_resolve(t, "", c->tc.allow_http, &u);
    if (problem)
        luaL_error(L, "cmsrec.new: option 'token_url' %s", problem);
    c->token_url = u.url; /* the client's now; the rest goes */
    u.url = NULL;
    cms_url_free(&u);
}

/* A header name for a message: as given when it is a token, else cleaned and cut. */
static const char *shown_name(lua_State *L, const char *name, size_t n)
{
    char clean[CMS_HEADER_NAME_MAX + 1];

    cms_strlcpy(clean, name, n < sizeof clean ? n + 1 : sizeof clean);
    cms_text_clean(clean);
    lua_pushstring(L, clean);
    return lua_tostring(L, -1);
}

/* headers = {name = value}: fixed extra headers, checked (values never shown). */
static void config_headers(lua_State *L, int idx, client *c)
{
    raw_field(L, idx, "headers");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "cmsrec.new: option 'headers' must be a table of name = value");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        size_t nl = 0, vl = 0;
        const char *n, *v, *problem;
        if (lua_type(L, -2) != LUA_TSTRING ||
            (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
            luaL_error(L, "cmsrec.new: option 'headers' must map header names to strings");
        n = lua_tolstring(L, -2, &nl);
        lua_pushvalue(L, -1); /* a number: converted on this copy, not in the table */
        v = lua_tolstring(L, -1, &vl);
        problem = cms_header_problem(n, nl, v, vl);
        if (!problem && cms_headers_find(&c->extra, n, nl) >= 0)
            problem = "it is given twice (names are case-insensitive)";
        if (!problem && c->auth == AUTH_BEARER && !c->has_authorization && nl == 9 &&
            strncasecmp(n, "x-app-key", 9) == 0)
            problem = "auth = \"bearer\" sends it (the AK)";
        if (!problem && c->extra.n == CMS_HEADERS_MAX)
            problem = "there are too many (at most 24)";
        if (problem)
            luaL_error(L, "cmsrec.new: option 'headers': header '%s': %s", shown_name(L, n, nl),
                       problem);
        if (cms_headers_add(&c->extra, n, nl, v, vl) != 0)
            luaL_error(L, "cmsrec.new: out of memory");
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
}

/* resolve = {"name:port:address", ...}: libcurl's resolve list, for every handle. */
static void config_resolve(lua_State *L, int idx, client *c)
{
    size_t i, n;

    raw_field(L, idx, "resolve");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (!lua_istable(L, -1) || (n = lua_rawlen(L, -1)) == 0)
        luaL_error(L, "cmsrec.new: option 'resolve' must be a non-empty list such as "
                      "{\"cms.example.test:28443:10.22.26.181\"}");
    for (i = 1; i <= n; i++) {
        struct curl_slist *l;
        const char *e, *problem;
        size_t len = 0;
        lua_rawgeti(L, -1, (int)i);
        e = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        problem = !e || strlen(e) != len ? "must be a string" : cms_resolve_problem(e);
        if (problem)
            luaL_error(L, "cmsrec.new: option 'resolve' entry %d ('%s') %s", (int)i,
                       e ? shown_name(L, e, len) : luaL_typename(L, -1), problem);
        if (!(l = curl_slist_append(c->resolve, e)))
            luaL_error(L, "cmsrec.new: out of memory");
        c->resolve = l;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    c->tc.resolve = c->resolve;
}

/* Everything issue 12 added, after base_url (the token URL derives from it). */
static void config_gateways(lua_State *L, int idx, client *c)
{
    const char *base = opt_cstring(L, idx, "cmsrec.new", "base_url");

    c->base_url = dup_or_raise(L, base, strlen(base)); /* checked by config_url */
    config_auth(L, idx, c);
    config_auth_options(L, idx, c);
    config_token_url(L, idx, c);
    if (c->auth == AUTH_BEARER)
        c->tc.hide = &c->token; /* the CMSREC_DEBUG trace never shows it */
    config_headers(L, idx, c);
    config_resolve(L, idx, c);
}

/* A proxy URL libcurl cannot use is refused here, not at each download; the
   message never quotes it (a password). */
static void config_proxy(lua_State *L, int idx, client *c)
{
    const char *problem;

    c->tc.proxy = dup_opt(L, idx, "proxy");
    problem = c->tc.proxy ? cms_url_proxy_problem(c->tc.proxy) : NULL;
    if (problem)
        luaL_error(L, "cmsrec.new: option 'proxy' %s", problem);
}

/* CMSREC_DEBUG, read once per client: set and not "0". */
static int config_debug(void)
{
    const char *v = getenv("CMSREC_DEBUG");

    return v && *v && strcmp(v, "0") != 0;
}

static int l_new(lua_State *L)
{
    client *c;

    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argcheck(L, lua_gettop(L) == 1, 2, "found too many arguments");
    check_keys(L, 1, "cmsrec.new", config_keys, NCONFIG_KEYS);

    /* The userdata exists (with its __gc) before anything is allocated. */
    c = lua_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->closed = 1;
    luaL_getmetatable(L, CLIENT_MT);
    lua_setmetatable(L, -2);

    lua_createtable(L, 0, 1); /* uservalue: holds the authorization function */
    raw_field(L, 1, "authorization");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        luaL_error(L, "cmsrec.new: option 'authorization' must be a function "
                      "(method, path, headers, body) -> string");
    c->has_authorization = lua_isfunction(L, -1);
    lua_setfield(L, -2, "authorization");
    lua_setuservalue(L, -2);

    c->tc.allow_http = opt_boolean(L, 1, "cmsrec.new", "allow_http");
    c->tc.insecure = opt_boolean(L, 1, "cmsrec.new", "insecure");
    raw_field(L, 1, "reuse"); /* default true: only an explicit false turns it off */
    c->tc.no_reuse = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1);
    opt_boolean(L, 1, "cmsrec.new", "reuse"); /* raises for a non-boolean */
    c->tc.timeout_ms = opt_seconds(L, 1, "cmsrec.new", "timeout");
    c->tc.connect_timeout_ms = opt_seconds(L, 1, "cmsrec.new", "connect_timeout");
    c->tc.stall_timeout_s = config_stall_timeout(L, 1);
    c->max_size = opt_size(L, 1, "cmsrec.new", "max_size");
    c->retries = opt_count(L, 1, "cmsrec.new", "retries", 0, 10, CMSREC_DEFAULT_RETRIES);
    raw_field(L, 1, "max_rate");
    if (!lua_isnil(L, -1) && !(lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) > 0 &&
                               lua_tonumber(L, -1) <= 1e6))
        luaL_error(L, "cmsrec.new: option 'max_rate' must be a positive number "
                      "(requests per second)");
    c->rate.per_s = lua_isnil(L, -1) ? 0 : (double)lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!c->max_size)
        c->max_size = CMSREC_DEFAULT_MAX_SIZE;
    if (!c->tc.connect_timeout_ms)
        c->tc.connect_timeout_ms = 10000;
    config_url(L, 1, c);
    config_gateways(L, 1, c);
    config_signed_headers(L, 1, c);
    c->tc.cafile = dup_opt(L, 1, "cafile");
    c->tc.capath = dup_opt(L, 1, "capath");
    config_proxy(L, 1, c);
    c->tc.user_agent = dup_header_opt(L, 1, "user_agent", CMSREC_USER_AGENT_MAX);
    if (!c->tc.user_agent)
        c->tc.user_agent = dup_or_raise(L, "cmsrec/" CMSREC_VERSION,
                                        strlen("cmsrec/" CMSREC_VERSION));
    config_tls(L, 1, c);
    c->tc.debug = config_debug();
    config_credentials(L, 1, c); /* last: no later check can leave an SK copy behind */

    c->tc.conns = &c->conns;
    if (cms_transfer_global_init() != 0 || !(c->curl = curl_easy_init()) ||
        !(c->multi = curl_multi_init()) || !(c->tc.share = curl_share_init()) ||
        curl_share_setopt(c->tc.share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) ||
        curl_share_setopt(c->tc.share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) ||
        (c->auth == AUTH_BEARER && !c->has_authorization && !(c->token_curl = curl_easy_init())))
        luaL_error(L, "cmsrec.new: libcurl could not be initialised");
    c->closed = 0;
    if (c->tc.insecure) /* loud on purpose: this must never go unnoticed */
        fprintf(stderr, "cmsrec: WARNING: TLS certificate verification is disabled "
                        "(insecure = true) for %s\n", c->url);
    return 1;
}

static int l_close(lua_State *L)
{
    client *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (c->busy == BUSY_READER && !reader_in_callback(c->reader))
        reader_abandon(L, c->reader);
    if (c->busy)
        luaL_error(L, "cmsrec client is busy: a callback cannot close the client "
                      "that called it");
    if (!c->closed) {
        client_release(L, c);
        lua_newtable(L); /* drop the authorization function */
        lua_setuservalue(L, 1);
    }
    return 0;
}

static int l_gc(lua_State *L)
{
    client *c = luaL_checkudata(L, 1, CLIENT_MT);
    client_release(L, c); /* safe to run twice */
    return 0;
}

static int l_tostring(lua_State *L)
{
    client *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (c->closed)
        lua_pushfstring(L, "cmsrec.client (closed): %p", (void *)c);
    else
        lua_pushfstring(L, "cmsrec.client (%s, ak %s): %p", c->url,
                        c->ak ? c->ak : "none", (void *)c);
    return 1;
}

/* ===== DOWNLOAD ===== */

/* C memory of one download, freed by __gc even if a Lua error unwinds. */
typedef struct scratch {
    int client_idx;     /* where the client is on the stack when signing; 0: 1 */
    cms_buf body;
    cms_signature sig;
    struct curl_slist *headers;
    cms_job job;
    /* gateways */
    cms_url target;     /* client:call: the URL and path requested (else the client's) */
    char sdk_date[CMS_SDK_DATE_SIZE]; /* apig: this attempt's X-Sdk-Date */
    unsigned token_gen; /* bearer: the token this attempt used */
    int token_cached;   /* ... was fetched before it (a 401 may mean revoked) */
    int token_retried;  /* the one retry with a new token was made */
    cms_buf token_body; /* bearer: a token request and its answer (secrets: wiped) */
    cms_response token_resp;
    struct curl_slist *token_headers;
} scratch;

/* curl_slist_free_all, the lines wiped first: one may hold a token. */
static void free_headers_wiped(struct curl_slist **list)
{
    struct curl_slist *l;

    for (l = *list; l; l = l->next)
        OPENSSL_cleanse(l->data, strlen(l->data));
    curl_slist_free_all(*list);
    *list = NULL;
}

/* Forget a token request and its answer. */
static void scratch_untoken(scratch *s)
{
    cms_buf_free_secret(&s->token_body);
    cms_buf_free_secret(&s->token_resp.body);
    cms_response_free(&s->token_resp);
    free_headers_wiped(&s->token_headers);
}

/* Forget the signed request of an attempt: the next one is signed afresh. */
static void scratch_unsign(scratch *s)
{
    s->job.hide[0] = s->job.hide[1] = NULL; /* hide[0] pointed into sig */
    s->job.hide_len[0] = s->job.hide_len[1] = 0;
    cms_buf_free(&s->body);
    cms_signature_free(&s->sig);
    free_headers_wiped(&s->headers);
    scratch_untoken(s);
}

static int scratch_gc(lua_State *L)
{
    scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
    scratch_unsign(s);
    cms_job_free(&s->job); /* removes a temporary file left by a failure */
    cms_url_free(&s->target);
    return 0;
}

static scratch *new_scratch(lua_State *L)
{
    scratch *s = lua_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    cms_buf_init(&s->body);
    cms_signature_init(&s->sig);
    cms_job_init(&s->job);
    cms_buf_init(&s->token_body);
    cms_response_init(&s->token_resp);
    luaL_getmetatable(L, SCRATCH_MT);
    lua_setmetatable(L, -2);
    return s;
}

/* The path signed and sent, and the URL requested: a call's, else the download's. */
static const char *req_path(const client *c, const scratch *s)
{
    return s->target.path ? s->target.path : c->path;
}

static const char *req_url(const client *c, const scratch *s)
{
    return s->target.url ? s->target.url : c->url;
}

/* Run scratch_gc now rather than at the next collection. */
static void scratch_release(lua_State *L, int idx)
{
    lua_pushcfunction(L, scratch_gc);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 0);
}

/* Escaper for cms_request_build: lua-cjson encodes the string. */
typedef struct escape_ctx {
    lua_State *L;
    int cjson;
} escape_ctx;

static int json_escape(void *ud, const char *s, size_t n, cms_buf *out)
{
    escape_ctx *e = ud;
    lua_State *L = e->L;
    size_t len;
    const char *enc;
    int rc;

    lua_getfield(L, e->cjson, "encode");
    lua_pushlstring(L, s, n);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    enc = lua_tolstring(L, -1, &len);
    rc = enc ? cms_buf_append(out, enc, len) : -1;
    lua_pop(L, 1);
    return rc;
}

/* Read the request table into `r`; integers are formatted into `num`. */
static int read_request(lua_State *L, int idx, cms_request *r,
                        char num[CMS_F__COUNT][32], cms_error *err)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k, *hint;
        int f;
        if (lua_type(L, -2) != LUA_TSTRING) {
            cms_error_field(err, "request", "request keys must be field names, got a %s key",
                            luaL_typename(L, -2));
            lua_pop(L, 2);
            return -1;
        }
        k = lua_tostring(L, -2);
        if (strlen(k) != lua_rawlen(L, -2)) { /* "callID\0x" is not callID */
            cms_error_field(err, "request", "request field names must not contain NUL bytes");
            lua_pop(L, 2);
            return -1;
        }
        f = cms_request_field_index(k);
        if (f < 0) {
            hint = cms_suggest(k, cms_request_fields, CMS_F__COUNT);
            cms_error_field(err, *k ? k : "request", "unknown request field '%.64s'%s%s%s", k,
                            hint ? " (did you mean " : "", hint ? hint : "",
                            hint ? "?)" : "");
            lua_pop(L, 2);
            return -1;
        }
        long long v;
        if (lua_type(L, -1) == LUA_TSTRING) {
            r->value[f] = lua_tolstring(L, -1, &r->len[f]);
        } else if (cms_tointeger(L, -1, &v)) { /* 1001 and 1001.0 (lua-cjson's) alike */
            snprintf(num[f], sizeof num[f], "%lld", v);
            r->value[f] = num[f];
            r->len[f] = strlen(num[f]);
        } else {
            cms_error_field(err, k, "'%s' must be a string or an integer, got %s", k,
                            lua_type(L, -1) == LUA_TNUMBER ? "a non-integer number"
                                                           : luaL_typename(L, -1));
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1); /* the string stays referenced by the request table */
    }
    return 0;
}

/* The user's authorization function: (method, path, headers, body) -> string. */
static int call_authorization(lua_State *L, int cl, client *c, scratch *s,
                              const char *clen, const char **auth, cms_error *err)
{
    lua_getuservalue(L, cl);
    lua_getfield(L, -1, "authorization");
    lua_remove(L, -2);
    lua_pushliteral(L, "POST");
    lua_pushstring(L, req_path(c, s));
    lua_createtable(L, 0, 3);
    lua_pushstring(L, c->host);
    lua_setfield(L, -2, "host");
    lua_pushliteral(L, CMSREC_CONTENT_TYPE);
    lua_setfield(L, -2, "content-type");
    lua_pushstring(L, clen);
    lua_setfield(L, -2, "content-length");
    lua_pushlstring(L, s->body.data, s->body.len);
    if (lua_pcall(L, 4, 1, 0) != 0) {
        cms_error_field(err, "authorization", "the authorization function failed: %s",
                        lua_isstring(L, -1) ? lua_tostring(L, -1) : "(non-string error)");
        lua_pop(L, 1);
        return -1;
    }
    *auth = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (!*auth || !**auth || has_ctl(*auth, lua_rawlen(L, -1))) {
        lua_pop(L, 1);
        return cms_error_field(err, "authorization",
                               "the authorization function must return a non-empty "
                               "string without control characters");
    }
    return 0; /* the string stays on the stack until the download returns */
}

/* What both schemes sign: the request of `s` with the headers `h`. */
static void sign_input(cms_sign_input *in, const client *c, const scratch *s,
                       const cms_kv *h, size_t n)
{
    memset(in, 0, sizeof *in);
    in->ak = c->ak;
    in->sk = c->sk.data;
    in->sk_len = c->sk.len;
    in->method = "POST";
    in->path = req_path(c, s);
    in->headers = h;
    in->nheaders = n;
    in->body = s->body.data;
    in->body_len = s->body.len;
}

static int sign_request(client *c, scratch *s, const char *clen, cms_error *err)
{
    cms_kv h[3];
    size_t n = 0;
    char ts[CMS_TIMESTAMP_SIZE];
    cms_sign_input in;

#define ADD(flag, nm, val) \
    if (c->signed_headers & (flag)) { \
        h[n].name = nm; h[n].name_len = strlen(nm); \
        h[n].value = val; h[n].value_len = strlen(val); n++; }
    ADD(SIGN_CONTENT_LENGTH, "content-length", clen);
    ADD(SIGN_CONTENT_TYPE, "content-type", CMSREC_CONTENT_TYPE);
    ADD(SIGN_HOST, "host", c->host);
#undef ADD
    if (cms_timestamp_now(ts) != 0)
        return cms_error_set(err, CMS_E_INVALID, "the system clock cannot be read");
    sign_input(&in, c, s, h, n);
    in.timestamp = ts;
    return cms_sign(&in, &s->sig, err);
}

/* "Name: value" (`sep` ':'), or "Name;" (`sep` ';': libcurl then sends the
   header with an empty value, where "Name:" would remove it). The line is
   built on the heap and wiped: it may carry a token. `option`: what the
   value comes from, named when it is too long. */
static int add_line(struct curl_slist **list, const char *name, const char *value, char sep,
                    const char *option, cms_error *err)
{
    const char *mid = sep == ';' ? ";" : ": ";
    size_t nn = strlen(name), mn = strlen(mid), vn = sep == ';' ? 0 : strlen(value);
    size_t n = nn + mn + vn + 1;
    struct curl_slist *l;
    char *line;

    /* a Host that long is no DNS name: refused before any lookup */
    if (n > (strcmp(name, "Host") == 0 ? CMSREC_HOST_LINE_MAX : CMSREC_HEADER_LINE_MAX))
        return cms_error_field(err, option, "the %s header is too long (from '%s')", name,
                               option);
    if (!(line = malloc(n)))
        return cms_error_set(err, CMS_E_NOMEM, "out of memory building headers");
    memcpy(line, name, nn);
    memcpy(line + nn, mid, mn);
    memcpy(line + nn + mn, value, vn);
    line[n - 1] = '\0';
    l = curl_slist_append(*list, line);
    OPENSSL_cleanse(line, n);
    free(line);
    if (!l)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory building headers");
    *list = l;
    return 0;
}

/* "Name: value"; an empty value removes a header libcurl would add (Expect). */
static int add_header(struct curl_slist **list, const char *name, const char *value,
                      const char *option, cms_error *err)
{
    return add_line(list, name, value, ':', option, err);
}

/* What a scheme sends besides Authorization, then the extra headers. */
static int add_gateway_headers(scratch *s, client *c, cms_error *err)
{
    size_t i;

    if (!c->has_authorization && c->auth == AUTH_APIG &&
        add_header(&s->headers, "X-Sdk-Date", s->sdk_date, "", err) != 0)
        return -1;
    if (!c->has_authorization && c->auth == AUTH_BEARER &&
        add_header(&s->headers, "X-APP-Key", c->ak, "ak", err) != 0)
        return -1;
    for (i = 0; i < c->extra.n; i++) /* an empty value is sent empty: apig signs it */
        if (add_line(&s->headers, c->extra.kv[i].name, c->extra.kv[i].value,
                     c->extra.kv[i].value_len ? ':' : ';', "headers", err) != 0)
            return -1;
    return 0;
}

static int build_headers(scratch *s, client *c, const char *auth, cms_error *err)
{
    const char *auth_from = c->has_authorization ? "authorization"
                            : c->auth == AUTH_BEARER ? "token_url" : "ak";

    return add_header(&s->headers, "Host", c->host, "base_url", err) ||
           add_header(&s->headers, "Content-Type", CMSREC_CONTENT_TYPE, "", err) ||
           add_header(&s->headers, "Authorization", auth, auth_from, err) ||
           /* no "Expect: 100-continue" round trip for a small JSON body */
           add_header(&s->headers, "Expect", "", "", err) ||
           add_gateway_headers(s, c, err) ? -1 : 0;
}

/* Decode a JSON body with cjson; leaves a table on the stack or returns 0. */
static int decode_json(lua_State *L, int cjson, const cms_buf *b)
{
    size_t bom = b->len >= 3 && memcmp(b->data, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;

    lua_getfield(L, cjson, "decode");
    lua_pushlstring(L, b->data + bom, b->len - bom); /* cms_sniff allows a BOM */
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

/* A string or number field of the table on top, copied into `out` (or NULL). */
static const char *json_text(lua_State *L, const char *key, char *out, size_t cap)
{
    lua_Number n;
    int t;
    lua_getfield(L, -1, key);
    t = lua_type(L, -1);
    n = t == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
    if (t == LUA_TNUMBER && n > -1e15 && n < 1e15 && n == (lua_Number)(long long)n)
        snprintf(out, cap, "%lld", (long long)n); /* cjson decodes 1 as 1.0 */
    else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        cms_strlcpy(out, lua_tostring(L, -1), cap);
        cms_text_clean(out); /* server text ends up on terminals and in JSON */
    }
    lua_pop(L, 1);
    return t == LUA_TSTRING || t == LUA_TNUMBER ? out : NULL;
}

/* cms_json_fn for the job: what a JSON answer says, decoded by lua-cjson
   (the cjson upvalue of the running C function). */
static int json_fields(void *ud, const char *body, size_t len, cms_json_fields *f)
{
    lua_State *L = ud;
    cms_buf b;

    b.data = (char *)body;
    b.len = len;
    b.cap = len;
    if (!decode_json(L, CJSON_UPVALUE, &b))
        return -1;
    json_text(L, "resultCode", f->code, sizeof f->code);
    json_text(L, "resultDesc", f->desc, sizeof f->desc);
    if (!json_text(L, "message", f->message, sizeof f->message)) /* Spring, gateways */
        json_text(L, "error", f->message, sizeof f->message);
    lua_pop(L, 1);
    return 0;
}

/* ===== GATEWAYS: SDK-HMAC-SHA256 and bearer tokens ===== */

/* apig: content-type, host, x-sdk-date and every extra header, signed. */
static int sign_apig(client *c, scratch *s, cms_error *err)
{
    cms_kv h[CMS_SIGN_MAX_PAIRS];
    size_t n = 0, i;
    cms_sign_input in;

    h[n].name = "content-type";
    h[n].value = CMSREC_CONTENT_TYPE;
    h[n].name_len = strlen(h[n].name);
    h[n++].value_len = strlen(CMSREC_CONTENT_TYPE);
    h[n].name = "host";
    h[n].value = c->host;
    h[n].name_len = 4;
    h[n++].value_len = strlen(c->host);
    for (i = 0; i < c->extra.n; i++)
        h[n++] = c->extra.kv[i];
    if (cms_sdk_date_now(s->sdk_date) != 0)
        return cms_error_set(err, CMS_E_INVALID, "the system clock cannot be read");
    sign_input(&in, c, s, h, n);
    in.timestamp = s->sdk_date;
    return cms_sign_apig(&in, &s->sig, err);
}

/* An SK that JSON needs no escape for (printable ASCII, no '"' or '\'). */
static int sk_plain(const client *c)
{
    size_t i;

    for (i = 0; i < c->sk.len; i++)
        if (c->sk.data[i] < 0x20 || c->sk.data[i] > 0x7E || c->sk.data[i] == '"' ||
            c->sk.data[i] == '\\')
            return 0;
    return 1;
}

/* {"app_key":AK,"app_secret":SK}, each encoded by lua-cjson, except an SK that
   needs no escaping: written as it is, so that it never becomes a Lua string
   (an SK from the environment then stays out of Lua's heap). */
static int token_body(lua_State *L, client *c, cms_buf *b, cms_error *err)
{
    escape_ctx esc;
    int rc;

    esc.L = L;
    esc.cjson = CJSON_UPVALUE;
    rc = cms_buf_append_str(b, "{\"app_key\":") ||
         json_escape(&esc, c->ak, strlen(c->ak), b) ||
         cms_buf_append_str(b, ",\"app_secret\":");
    if (rc == 0 && sk_plain(c))
        rc = cms_buf_append_char(b, '"') || cms_buf_append(b, c->sk.data, c->sk.len) ||
             cms_buf_append_char(b, '"');
    else if (rc == 0)
        rc = json_escape(&esc, (const char *)c->sk.data, c->sk.len, b);
    if (rc == 0)
        rc = cms_buf_append_char(b, '}');
    return rc ? cms_error_set(err, CMS_E_NOMEM, "out of memory building the token request") : 0;
}

/* A 2xx answer whose AccessToken (`n` bytes) cannot go in a header: kind
   auth like an answer without one, the endpoint to blame, never the token. */
static void token_unusable(const client *c, long status, size_t n, cms_error *err)
{
    cms_error_set(err, CMS_E_AUTH, "the token endpoint %s answered HTTP %ld with an "
                  "AccessToken that cannot be sent (%zu bytes; a token is 1 to %d visible "
                  "ASCII characters)", c->token_url, status, n, CMS_TOKEN_MAX);
    cms_strlcpy(err->field, "token_url", sizeof err->field);
    err->status = status;
}

/* A 2xx answer with a usable AccessToken: kept until shortly before expiresIn
   (a missing, non-numeric or non-positive one: for this request only).
   Anything else says why not, from an answer without the SK (or a bad token). */
static int token_accept(lua_State *L, client *c, scratch *s, cms_error *err)
{
    cms_response *r = &s->token_resp;
    const char *tok = NULL;
    size_t n = 0;
    int decoded, kept = 0;

    decoded = r->status / 100 == 2 && !r->truncated &&
              cms_sniff((const unsigned char *)r->body.data, r->body.len) == CMS_FMT_JSON &&
              decode_json(L, CJSON_UPVALUE, &r->body);
    if (decoded) {
        lua_getfield(L, -1, "AccessToken");
        lua_getfield(L, -2, "expiresIn"); /* seconds, a number or a numeric string */
        tok = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &n) : NULL;
        if (tok && !cms_token_value_ok(tok, n))
            token_unusable(c, r->status, n, err);
        else if (tok) {
            kept = cms_token_store(&c->token, tok, n,
                                   cms_token_expiry(cms_now(), (double)lua_tonumber(L, -1))) == 0;
            if (!kept)
                cms_error_set(err, CMS_E_NOMEM, "out of memory keeping the token");
        }
    }
    if (!kept && err->kind == CMS_OK) { /* quoted whole, before any of it is cut */
        r->body.len = cms_text_scrub(r->body.data, r->body.len, (const char *)c->sk.data,
                                     c->sk.len);
        cms_token_refused(r, c->token_url, json_fields, L, err);
    }
    if (!kept && tok)
        cms_error_scrub(err, tok, n); /* a token refused for its characters: still a token */
    cms_error_scrub(err, (const char *)c->sk.data, c->sk.len);
    if (decoded)
        lua_pop(L, 3); /* the answer, AccessToken, expiresIn */
    return kept ? 0 : -1;
}

/* CMSREC_DEBUG: how the token request ended, its answer never shown. */
static void trace_token(const client *c, const scratch *s, int rc, const cms_error *err)
{
    static const char hidden[] = "(the token endpoint's answer: not shown)";
    cms_response r = s->token_resp;

    r.body.data = (char *)hidden;
    r.body.len = r.status > 0 ? sizeof hidden - 1 : 0;
    r.truncated = 0;
    cms_trace_outcome(stderr, cms_trace_id(c->token_curl), &r, rc, err);
}

/* POST the AK/SK to token_url on the client's token handle (its TLS settings,
   timeouts and resolve list); a new token replaces the old one. */
static int token_fetch(lua_State *L, client *c, scratch *s, cms_error *err)
{
    cms_transfer_config tc = c->tc;
    cms_transfer_io io;
    int rc;

    tc.conns = NULL; /* a connection of its own: the client's may carry transfers */
    tc.busy_conns = 0;
    tc.debug = 0; /* its body holds the SK, its answer the token: see trace_token */
    memset(&io, 0, sizeof io);
    io.answer_max = CMSREC_TOKEN_ANSWER_MAX;
    scratch_untoken(s);
    if (c->tc.debug)
        cms_trace_request(stderr, cms_trace_id(c->token_curl), c->token_url);
    rc = token_body(L, c, &s->token_body, err) ||
         add_header(&s->token_headers, "Content-Type", CMSREC_CONTENT_TYPE, "", err) ||
         add_header(&s->token_headers, "Accept", "application/json", "", err) ||
         add_header(&s->token_headers, "Expect", "", "", err) ||
         cms_transfer_post(c->token_curl, &tc, c->token_url, s->token_headers,
                           s->token_body.data, s->token_body.len, &io, &s->token_resp, err) ||
         token_accept(L, c, s, err) ? -1 : 0;
    if (c->tc.debug)
        trace_token(c, s, rc, err);
    scratch_untoken(s);
    return rc;
}

/* bearer: "Bearer <token>", the cached one or a new one. A failed token
   request counts as an attempt of the request (so retries end). */
static int sign_bearer(lua_State *L, client *c, scratch *s, cms_error *err)
{
    s->token_cached = cms_token_usable(&c->token, cms_now());
    if (!s->token_cached && token_fetch(L, c, s, err) != 0) {
        s->job.attempts++;
        return -1;
    }
    s->token_gen = c->token.gen;
    if (cms_buf_append_str(&s->sig.authorization, "Bearer ") != 0 ||
        cms_buf_append(&s->sig.authorization, c->token.value, c->token.len) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory building headers");
    return 0;
}

/* A 401 to a request made with a token fetched before it: the token was
   revoked. It is dropped (unless another request replaced it already) and
   the request tried again at once, once. 1 when it is to be tried again. */
static int bearer_retry(client *c, scratch *s, const cms_error *e)
{
    if (c->has_authorization || c->auth != AUTH_BEARER || e->kind != CMS_E_AUTH ||
        e->status != 401 || !s->token_cached || s->token_retried)
        return 0;
    s->token_retried = 1;
    if (c->token.gen == s->token_gen)
        cms_token_wipe(&c->token);
    return 1;
}

/* Neither the SK nor a token (the client's, the one job `j` sent) in an
   error, whatever the server quoted: the last guard, after the answer was
   scrubbed whole (cms_job_scrub_answer). */
static void scrub_secrets(const client *c, const cms_job *j, cms_error *e)
{
    cms_error_scrub(e, (const char *)c->sk.data, c->sk.len);
    cms_error_scrub(e, c->token.value, c->token.len);
    if (j)
        cms_error_scrub(e, j->hide[0], j->hide_len[0]);
}

/* client:prepare's headers: what the scheme sends besides Authorization, the extras. */
static void set_gateway_fields(lua_State *L, const client *c, const scratch *s)
{
    size_t i;

    if (!c->has_authorization && c->auth == AUTH_APIG)
        set_str_field(L, "X-Sdk-Date", s->sdk_date);
    if (!c->has_authorization && c->auth == AUTH_BEARER)
        set_str_field(L, "X-APP-Key", c->ak);
    for (i = 0; i < c->extra.n; i++)
        set_str_field(L, c->extra.kv[i].name, c->extra.kv[i].value);
}

/* What one download does with the recording; indices are stack slots or 0. */
typedef struct dl_plan {
    int req;            /* the request table */
    const char *path;   /* download_file: the destination */
    int sink;           /* opts.sink */
    int on_progress;    /* opts.on_progress */
    int unzip;
    int true_first;     /* download with a sink: true, info */
    int retries;        /* opts.retries, -1: the client's */
    long long max_size; /* 0 = none */
    int call_body;      /* client:call: its JSON body (a string); no request table */
} dl_plan;

typedef struct dl_ctx {
    lua_State *L;
    const dl_plan *plan;
    scratch *s;
} dl_ctx;

/* sink(chunk) under lua_pcall: making the chunk string may raise (out of
   memory), and no Lua error may unwind through libcurl's frames. */
static int call_sink(lua_State *L)
{
    const char *p = lua_touserdata(L, 2);
    size_t n = (size_t)lua_tointeger(L, 3);

    lua_settop(L, 1);
    lua_pushlstring(L, p, n);
    lua_call(L, 1, 2);
    return 2;
}

/* opts.sink(chunk): as in LTN12, anything but a true value aborts (kind io). */
static int lua_sink_write(void *ud, const char *p, size_t n, cms_error *err)
{
    dl_ctx *d = ud;
    lua_State *L = d->L;
    int failed;

    lua_pushcfunction(L, call_sink);
    lua_pushvalue(L, d->plan->sink);
    lua_pushlightuserdata(L, (void *)p);
    lua_pushinteger(L, (lua_Integer)n);
    if (lua_pcall(L, 3, 2, 0) != 0) {
        cms_error_set(err, CMS_E_IO, "the sink raised an error: %s",
                      lua_isstring(L, -1) ? lua_tostring(L, -1) : "(not a string)");
        lua_pop(L, 1);
        return -1;
    }
    failed = !lua_toboolean(L, -2);
    if (failed)
        cms_error_set(err, CMS_E_IO, "the sink failed: %s",
                      lua_isstring(L, -1) ? lua_tostring(L, -1)
                      : lua_isnil(L, -2) ? "it returned nothing (a sink returns 1 to go on)"
                                         : "it returned false");
    lua_pop(L, 2);
    return failed ? -1 : 0;
}

/* opts.on_progress(received, total|nil): false cancels. */
static int lua_progress(void *ud, long long received, long long total, cms_error *err)
{
    dl_ctx *d = ud;
    lua_State *L = d->L;
    int cancel;

    lua_pushvalue(L, d->plan->on_progress);
    lua_pushinteger(L, (lua_Integer)received);
    if (total >= 0)
        lua_pushinteger(L, (lua_Integer)total);
    else
        lua_pushnil(L);
    if (lua_pcall(L, 2, 1, 0) != 0) {
        cms_error_set(err, CMS_E_CANCELLED, "on_progress raised an error: %s",
                      lua_isstring(L, -1) ? lua_tostring(L, -1) : "(not a string)");
        lua_pop(L, 1);
        return 1;
    }
    cancel = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1);
    return cancel;
}

static int sign_apig(client *c, scratch *s, cms_error *err);
static int sign_bearer(lua_State *L, client *c, scratch *s, cms_error *err);

/* Sign s->body by the client's scheme. The Authorization value is left in
   *auth (on the stack, or in s->sig), the body's length in clen. */
static int sign_prepared(lua_State *L, client *c, scratch *s, char clen[32], const char **auth,
                         cms_error *err)
{
    int rc;

    snprintf(clen, 32, "%zu", s->body.len);
    if (c->has_authorization)
        return call_authorization(L, s->client_idx ? s->client_idx : 1, c, s, clen, auth, err);
    rc = c->auth == AUTH_APIG     ? sign_apig(c, s, err)
         : c->auth == AUTH_BEARER ? sign_bearer(L, c, s, err)
                                  : sign_request(c, s, clen, err);
    *auth = s->sig.authorization.data;
    return rc;
}

/* Validate, build the body, sign. The Authorization value is left in *auth
   (on the stack, or in s->sig), the body's length in clen. */
static int sign_new_request(lua_State *L, client *c, scratch *s, int req_idx,
                            const char **call_id, char clen[32], const char **auth,
                            cms_error *err)
{
    cms_request req;
    char num[CMS_F__COUNT][32];
    escape_ctx esc;

    esc.L = L;
    esc.cjson = CJSON_UPVALUE;
    cms_request_init(&req);
    if (read_request(L, req_idx, &req, num, err) != 0 ||
        cms_request_build(&req, json_escape, &esc, &s->body, err) != 0)
        return -1;
    /* a copy on the stack: callbacks below may change the request table */
    lua_pushlstring(L, req.value[CMS_F_CALLID], req.len[CMS_F_CALLID]);
    *call_id = lua_tostring(L, -1);
    return sign_prepared(L, c, s, clen, auth, err);
}

/* What this attempt's answer may quote back, scrubbed before it is read: the
   bearer token it sends (its own copy: the client's may be replaced by then)
   and the SK. */
static void hide_secrets(const client *c, scratch *s)
{
    const cms_buf *a = &s->sig.authorization;
    int bearer = a->data && a->len > 7 && memcmp(a->data, "Bearer ", 7) == 0;

    s->job.hide[0] = bearer ? a->data + 7 : NULL;
    s->job.hide_len[0] = bearer ? a->len - 7 : 0;
    s->job.hide[1] = (const char *)c->sk.data;
    s->job.hide_len[1] = c->sk.len;
}

/* Validate, build the body, sign: everything before the network. */
static int prepare_request(lua_State *L, client *c, scratch *s, int req_idx,
                           const char **call_id, cms_error *err)
{
    char clen[32];
    const char *auth;

    if (sign_new_request(L, c, s, req_idx, call_id, clen, &auth, err) != 0 ||
        build_headers(s, c, auth, err) != 0)
        return -1;
    hide_secrets(c, s);
    return 0;
}

/* client:call: the JSON body at `body_idx`, signed and with its headers. */
static int prepare_call(lua_State *L, client *c, scratch *s, int body_idx, cms_error *err)
{
    size_t n;
    const char *b = lua_tolstring(L, body_idx, &n);
    const char *auth;
    char clen[32];

    if (cms_buf_append(&s->body, b, n) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    if (sign_prepared(L, c, s, clen, &auth, err) != 0 || build_headers(s, c, auth, err) != 0)
        return -1;
    hide_secrets(c, s);
    return 0;
}

/* The job of one download, as the plan says. */
static void job_configure(cms_job *j, const dl_plan *p, dl_ctx *d)
{
    j->dest = p->path ? CMS_DEST_FILE : p->sink ? CMS_DEST_SINK : CMS_DEST_MEMORY;
    j->path = p->path;
    j->unzip = p->unzip;
    j->max_size = p->max_size;
    if (p->sink) {
        j->sink.write = lua_sink_write;
        j->sink.ud = d;
    }
    if (p->on_progress) {
        j->progress = lua_progress;
        j->progress_ud = d;
    }
    j->json = json_fields;
    j->json_ud = d->L;
}

/* A fraction in [0, 1) for the backoff's jitter. */
static double jitter(void)
{
    double t = cms_now() * 1e6;

    return (t - 1000.0 * (double)(long long)(t / 1000.0)) / 1000.0;
}

/* Wait `seconds` (a backoff, or for max_rate), reporting progress (received
   0) every CMS_PROGRESS_INTERVAL_MS so that the caller can cancel. */
static int job_wait(cms_job *j, double seconds)
{
    double end = cms_now() + seconds, left;
    struct timespec ts;

    while ((left = end - cms_now()) > 0) {
        if (left > CMS_PROGRESS_INTERVAL_MS / 1000.0)
            left = CMS_PROGRESS_INTERVAL_MS / 1000.0;
        ts.tv_sec = (time_t)left;
        ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
        nanosleep(&ts, NULL);
        if (j->progress && j->progress(j->progress_ud, 0, -1, &j->err) != 0) {
            if (j->err.kind == CMS_OK)
                cms_error_set(&j->err, CMS_E_CANCELLED, "the download was cancelled");
            return -1;
        }
    }
    return 0;
}

/* One attempt: signed afresh (a new timestamp), paced by max_rate. */
static int attempt(lua_State *L, client *c, dl_ctx *d)
{
    scratch *s = d->s;
    cms_job *j = &s->job;
    const char *call_id;

    scratch_unsign(s);
    if (d->plan->call_body) {
        if (prepare_call(L, c, s, d->plan->call_body, &j->err) != 0)
            return -1;
    } else {
        if (prepare_request(L, c, s, d->plan->req, &call_id, &j->err) != 0)
            return -1;
        j->call_id = call_id; /* on the stack until the download returns */
    }
    if (c->rate.per_s > 0 && job_wait(j, cms_rate_wait(&c->rate, cms_now())) != 0)
        return -1;
    cms_rate_take(&c->rate, cms_now());
    if (cms_job_start(j, c->curl, &c->tc, req_url(c, s), s->headers, s->body.data,
                      s->body.len) != 0)
        return -1;
    return cms_job_finish(j, cms_transfer_run(&j->t, c->multi));
}

/* The retry policy of a call: opts.retries (-1: the client's), the backoff's defaults. */
static cms_retry_policy retry_policy(const client *c, int retries)
{
    cms_retry_policy p;

    p.retries = retries >= 0 ? retries : c->retries;
    p.base_ms = CMS_RETRY_BASE_MS;
    p.max_ms = CMS_RETRY_MAX_MS;
    p.retry_after_max_ms = CMS_RETRY_AFTER_MAX_MS;
    return p;
}

/* Attempts until one succeeds or the retry policy says no more. */
static int run_attempts(lua_State *L, client *c, dl_ctx *d)
{
    cms_job *j = &d->s->job;
    cms_retry_policy policy = retry_policy(c, d->plan->retries);
    long delay;

    for (;;) {
        if (attempt(L, c, d) == 0)
            return 0;
        delay = bearer_retry(c, d->s, &j->err) ? 0
                : cms_retry_delay(&policy, &j->err, j->attempts, j->visible > 0, jitter());
        if (delay < 0)
            return -1;
        cms_job_reset(j);
        if (job_wait(j, delay / 1000.0) != 0)
            return -1;
    }
}

static void push_info(lua_State *L, const cms_response *r)
{
    lua_createtable(L, 0, 8);
    set_int_field(L, "status", r->status);
    set_int_field(L, "bytes", (lua_Integer)r->bytes);
    set_text_field(L, "content_type", r->content_type);
    set_str_field(L, "format", cms_format_name(r->format));
    lua_pushnumber(L, r->elapsed);
    lua_setfield(L, -2, "elapsed");
}

static void push_zip_list(lua_State *L, const cms_zip_list *l, int with_data)
{
    size_t i;

    lua_createtable(L, (int)l->n, 0);
    for (i = 0; i < l->n; i++) {
        lua_createtable(L, 0, 3);
        set_str_field(L, "name", l->items[i].name);
        set_int_field(L, "size", (lua_Integer)l->items[i].size);
        if (with_data)
            lua_pushlstring(L, l->items[i].data, (size_t)l->items[i].size);
        else
            lua_pushstring(L, l->items[i].path);
        lua_setfield(L, -2, with_data ? "data" : "path");
        lua_rawseti(L, -2, (int)i + 1);
    }
}

static const char *const download_opts[] = {"max_size", "on_progress", "sink", "retries"};
static const char *const file_opts[] = {"max_size", "on_progress", "sink", "unzip", "retries"};

/* Read the opts table at `idx` (may be none or nil) into `p`. */
static void read_opts(lua_State *L, int idx, const char *what, const char *const *keys,
                      size_t nkeys, dl_plan *p)
{
    p->retries = -1;
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    check_keys(L, idx, what, keys, nkeys);
    /* check_keys refused what `keys` does not list: the rest reads as absent */
    p->max_size = opt_size(L, idx, what, "max_size");
    p->on_progress = opt_function(L, idx, what, "on_progress");
    p->sink = opt_function(L, idx, what, "sink");
    p->unzip = opt_boolean(L, idx, what, "unzip");
    p->retries = opt_count(L, idx, what, "retries", 0, 10, -1);
}

/*
 * The LTN12 end of a sink, once per download: sink(nil) after the last chunk
 * (ltn12.sink.file closes its file then), sink(nil, message) after a failure.
 * Returns the download's outcome, a failure if the final call fails.
 */
static int end_sink(lua_State *L, int sink, int rc, cms_error *err)
{
    int n = 1;

    lua_pushvalue(L, sink);
    lua_pushnil(L);
    if (rc != 0) {
        lua_pushstring(L, err->message);
        n++;
    }
    if (lua_pcall(L, n, 2, 0) != 0) {
        if (rc == 0)
            cms_error_set(err, CMS_E_IO, "the sink failed at the end: %s",
                          lua_isstring(L, -1) ? lua_tostring(L, -1) : "(not a string)");
        lua_pop(L, 1);
        return -1;
    }
    if (rc == 0 && !lua_toboolean(L, -2)) {
        cms_error_set(err, CMS_E_IO, "the sink failed at the end: %s",
                      lua_isstring(L, -1) ? lua_tostring(L, -1)
                                          : "it returned nothing (a sink returns 1)");
        rc = -1;
    }
    lua_pop(L, 2);
    return rc;
}

/* The info table of a finished job (files too when it unpacked). */
static void push_job_info(lua_State *L, const cms_job *j)
{
    push_info(L, &j->resp);
    set_int_field(L, "attempts", j->attempts);
    if (*j->sha256)
        set_str_field(L, "sha256", j->sha256);
    if (j->dest == CMS_DEST_FILE && j->file.path)
        set_str_field(L, "path", j->file.path);
    if (!j->unzip)
        return;
    if (j->zip.n || j->resp.format == CMS_FMT_ZIP)
        push_zip_list(L, &j->zip, 0);
    else { /* not a bundle: the one file, listed the same way */
        const char *slash = strrchr(j->file.path, '/');
        lua_createtable(L, 1, 0);
        lua_createtable(L, 0, 3);
        set_str_field(L, "name", slash ? slash + 1 : j->file.path);
        set_int_field(L, "size", (lua_Integer)j->resp.bytes);
        set_str_field(L, "path", j->file.path);
        lua_rawseti(L, -2, 1);
    }
    lua_setfield(L, -2, "files");
    set_str_field(L, "path", j->path);
}

/* The error of a failed job: nil, err with err.attempts. */
static int push_job_error(lua_State *L, cms_job *j)
{
    push_error(L, &j->err);
    set_int_field(L, "attempts", j->attempts);
    return 2;
}

/* lua_pushlstring of a recording, under lua_pcall: it raises when memory
   runs out, and the allocator must be put back before anything unwinds. */
typedef struct prefault_alloc {
    lua_Alloc f;
    void *ud;
    size_t size;
} prefault_alloc;

static void *prefault_alloc_fn(void *ud, void *ptr, size_t osize, size_t nsize)
{
    prefault_alloc *a = ud;
    void *p = a->f(a->ud, ptr, osize, nsize);

    if (p && !ptr && nsize >= a->size) /* the string's block, before the copy */
        cms_prefault(p, nsize);
    return p;
}

static int push_lstring(lua_State *L)
{
    lua_pushlstring(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
    return 1;
}

/* A large recording as a Lua string. The copy would fault the new string in
   a page at a time; faulted in beforehand it costs less (BENCHMARKS.md). Lua
   has no hook between allocating a string and filling it: its allocator is
   wrapped for this one push. */
static void push_recording(lua_State *L, const cms_buf *b)
{
    prefault_alloc a;
    int rc;

    if (b->len < CMS_PREFAULT_MIN) {
        lua_pushlstring(L, b->data ? b->data : "", b->len);
        return;
    }
    a.f = lua_getallocf(L, &a.ud);
    a.size = b->len;
    lua_pushcfunction(L, push_lstring);
    lua_pushlightuserdata(L, b->data);
    lua_pushinteger(L, (lua_Integer)b->len);
    lua_setallocf(L, prefault_alloc_fn, &a);
    rc = lua_pcall(L, 2, 1, 0);
    lua_setallocf(L, a.f, a.ud);
    if (rc != 0)
        lua_error(L);
}

/* Run the download described by `p`; the scratch is at `sidx`. */
static int run_download(lua_State *L, client *c, dl_plan *p, int sidx)
{
    scratch *s = lua_touserdata(L, sidx);
    cms_job *j = &s->job;
    dl_ctx d;
    int base, rc;

    d.L = L;
    d.plan = p;
    d.s = s;
    job_configure(j, p, &d);
    claim_client(L, c);
    c->busy = BUSY_CALL; /* Lua callbacks run inside: authorization, sink, on_progress */
    rc = run_attempts(L, c, &d);
    if (p->sink)
        rc = end_sink(L, p->sink, rc, &j->err);
    c->busy = BUSY_NOT;
    cms_job_end(j, rc != 0);
    if (rc != 0) {
        scrub_secrets(c, j, &j->err);
        rc = push_job_error(L, j);
        scratch_release(L, sidx);
        return rc;
    }
    base = lua_gettop(L);
    if (p->true_first)
        lua_pushboolean(L, 1);
    else if (!p->path && !p->sink)
        push_recording(L, &j->mem.buf);
    push_job_info(L, j);
    scratch_release(L, sidx);
    return lua_gettop(L) - base;
}

/* What download and download_file share: the client, req at 2, at most `nargs`. */
static client *begin_download(lua_State *L, int nargs, dl_plan *p)
{
    client *c = check_client(L, 1);

    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_argcheck(L, lua_gettop(L) <= nargs, nargs + 1, "found too many arguments");
    lua_settop(L, nargs);
    memset(p, 0, sizeof *p);
    p->req = 2;
    return c;
}

/* client:download(req[, opts]) -> data, info | true, info (opts.sink) | nil, err */
static int l_download(lua_State *L)
{
    dl_plan p;
    client *c = begin_download(L, 3, &p);

    read_opts(L, 3, "client:download", download_opts,
              sizeof download_opts / sizeof download_opts[0], &p);
    p.true_first = p.sink != 0;
    if (!p.max_size && !p.sink)
        p.max_size = c->max_size; /* a limit of memory: a sink is the caller's business */
    new_scratch(L);
    return run_download(L, c, &p, lua_gettop(L));
}

/* client:download_file(req, path[, opts]) -> info | nil, err */
static int l_download_file(lua_State *L)
{
    dl_plan p;
    client *c = begin_download(L, 4, &p);

    p.path = check_path(L, 3, 1);
    read_opts(L, 4, "client:download_file", file_opts, sizeof file_opts / sizeof file_opts[0],
              &p);
    if (!p.path == !p.sink)
        luaL_error(L, "client:download_file: give a path or opts.sink, %s",
                   p.path ? "not both" : "one of them is required");
    if (p.unzip && !p.path)
        luaL_error(L, "client:download_file: opts.unzip needs a directory path");
    new_scratch(L);
    return run_download(L, c, &p, lua_gettop(L));
}

static const char *const unzip_opts[] = {"max_size"};

/* cmsrec.unzip(data_or_path[, dir[, opts]]) -> members | nil, err */
static int l_unzip(lua_State *L)
{
    size_t len;
    const char *src_str = luaL_checklstring(L, 1, &len);
    const char *dir = check_path(L, 2, 1);
    long long max_total = CMS_JOB_UNZIP_MAX;
    cms_zip_source src;
    cms_error err;
    scratch *s;
    int rc;

    luaL_argcheck(L, lua_gettop(L) <= 3, 4, "found too many arguments");
    lua_settop(L, 3);
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        check_keys(L, 3, "cmsrec.unzip", unzip_opts, 1);
        if (opt_size(L, 3, "cmsrec.unzip", "max_size"))
            max_total = opt_size(L, 3, "cmsrec.unzip", "max_size");
    }
    s = new_scratch(L); /* 4 */
    /* archive bytes start with a ZIP signature; a path holds no NUL and is short */
    src.data = (len >= 4 && (memcmp(src_str, "PK\3\4", 4) == 0 ||
                             memcmp(src_str, "PK\5\6", 4) == 0)) ||
                       strlen(src_str) != len || len > 4096 ? src_str : NULL;
    src.len = src.data ? len : 0;
    src.path = src.data ? NULL : src_str;
    src.fd = -1;
    cms_error_clear(&err);
    rc = dir ? cms_zip_extract(&src, dir, max_total, NULL, &s->job.zip, &err)
             : cms_zip_read(&src, max_total, &s->job.zip, &err);
    if (rc != 0) {
        scratch_release(L, 4);
        return push_error(L, &err);
    }
    push_zip_list(L, &s->job.zip, dir == NULL);
    scratch_release(L, 4);
    return 1;
}

/* cmsrec.download(config, req[, opts]): new, download, close. */
static int l_download_once(lua_State *L)
{
    int rc;

    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_argcheck(L, lua_gettop(L) <= 3, 4, "found too many arguments");
    lua_settop(L, 3);
    lua_pushvalue(L, lua_upvalueindex(2)); /* new */
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);                      /* 4: client */
    lua_pushvalue(L, lua_upvalueindex(3)); /* download */
    lua_pushvalue(L, 4);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    rc = lua_pcall(L, 3, 2, 0);             /* 5, 6: data/nil, info/err */
    lua_pushcfunction(L, l_close);
    lua_pushvalue(L, 4);
    lua_call(L, 1, 0);
    if (rc != 0)
        lua_error(L); /* after closing: the error message is on top again */
    return 2;
}


/* ===== CALL: any CMS interface, a signed JSON POST with a JSON answer ===== */

static const char *const call_opts[] = {"retries", "max_size", "raw"};

/* The path, relative to base_url's prefix as the download path is. */
static int call_target(client *c, scratch *s, const char *path, cms_error *err)
{
    const char *problem;

    if (path[0] != '/' || !cms_url_path_clean(path))
        return cms_error_field(err, "path", "the path must start with '/' and contain no "
                               "spaces, control or non-ASCII characters, '?' or '#'");
    problem = cms_url_resolve(c->base_url, path, c->tc.allow_http, &s->target);
    if (problem)
        return cms_error_field(err, "path", "the URL cannot be made: base_url %s", problem);
    return 0;
}

/* cjson.encode(t) under lua_pcall: a value JSON cannot hold raises. */
static int encode_body(lua_State *L)
{
    lua_getfield(L, lua_upvalueindex(1), "encode");
    lua_insert(L, 1);
    lua_call(L, 1, 1);
    return 1;
}

/* The body at `idx` (a table, or a JSON text sent as it is) as a JSON object
   text, pushed; -1 with err set when it is not one. */
static int call_body(lua_State *L, int idx, cms_error *err)
{
    size_t n;
    const char *text;
    cms_buf b;

    if (lua_istable(L, idx)) {
        lua_pushvalue(L, CJSON_UPVALUE);
        lua_pushcclosure(L, encode_body, 1);
        lua_pushvalue(L, idx);
        if (lua_pcall(L, 1, 1, 0) != 0) {
            cms_error_field(err, "body", "the body cannot be encoded as JSON: %s",
                            lua_isstring(L, -1) ? lua_tostring(L, -1) : "(not a string)");
            lua_pop(L, 1);
            return -1;
        }
    } else {
        lua_pushvalue(L, idx);
    }
    text = lua_tolstring(L, -1, &n);
    b.data = (char *)text;
    b.len = b.cap = n;
    if (cms_sniff((const unsigned char *)text, n) != CMS_FMT_JSON ||
        !decode_json(L, CJSON_UPVALUE, &b)) {
        lua_pop(L, 1);
        return cms_error_field(err, "body", "the body must be a JSON object (a table with "
                               "string keys, or its JSON text)");
    }
    lua_pop(L, 1); /* the decoded copy: only the text is sent */
    return 0;
}

/* The answer of a successful call: its decoded object (or its text, raw),
   pushed; anything but a JSON object is kind protocol. */
static int call_result(lua_State *L, cms_job *j, int raw)
{
    cms_buf *b = &j->resp.body;
    char excerpt[160];

    if (cms_sniff((const unsigned char *)b->data, b->len) == CMS_FMT_JSON &&
        decode_json(L, CJSON_UPVALUE, b)) {
        if (raw) {
            lua_pop(L, 1);
            lua_pushlstring(L, b->data, b->len);
        }
        return 0;
    }
    cms_job_scrub_answer(j); /* an error now: quoted, the answer must not show a secret */
    cms_excerpt(b->data, b->len, excerpt, sizeof excerpt);
    cms_error_set(&j->err, CMS_E_PROTOCOL, "the CMS answered HTTP %ld with something that is "
                  "not a JSON object (%zu bytes): %s", j->resp.status, b->len, excerpt);
    j->err.status = j->resp.status;
    return -1;
}

static void push_call_info(lua_State *L, const cms_job *j)
{
    lua_createtable(L, 0, 5);
    set_int_field(L, "status", j->resp.status);
    set_int_field(L, "bytes", (lua_Integer)j->resp.body.len);
    set_text_field(L, "content_type", j->resp.content_type);
    lua_pushnumber(L, j->resp.elapsed);
    lua_setfield(L, -2, "elapsed");
    set_int_field(L, "attempts", j->attempts);
}

/* Run the call planned in `p`; the scratch is at 5, the body text at 6. */
static int run_call(lua_State *L, client *c, dl_plan *p, int raw)
{
    scratch *s = lua_touserdata(L, 5);
    cms_job *j = &s->job;
    dl_ctx d;
    int rc;

    d.L = L;
    d.plan = p;
    d.s = s;
    job_configure(j, p, &d);
    j->dest = CMS_DEST_ANSWER;
    j->call_id = "";
    claim_client(L, c);
    c->busy = BUSY_CALL; /* an authorization function runs inside */
    rc = run_attempts(L, c, &d);
    c->busy = BUSY_NOT;
    cms_job_end(j, rc != 0);
    if (rc == 0 && call_result(L, j, raw) == 0) {
        push_call_info(L, j);
        scratch_release(L, 5);
        return 2;
    }
    scrub_secrets(c, j, &j->err);
    rc = push_job_error(L, j);
    scratch_release(L, 5);
    return rc;
}

/* client:call(path, body[, opts]) -> answer, info | nil, err */
static int l_call(lua_State *L)
{
    client *c = check_client(L, 1);
    const char *path = check_path(L, 2, 0);
    dl_plan p;
    scratch *s;
    int raw = 0;

    luaL_argcheck(L, lua_istable(L, 3) || lua_type(L, 3) == LUA_TSTRING, 3,
                  "a table, or a JSON text, expected");
    luaL_argcheck(L, lua_gettop(L) <= 4, 5, "found too many arguments");
    lua_settop(L, 4);
    memset(&p, 0, sizeof p);
    p.retries = -1;
    if (!lua_isnil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        check_keys(L, 4, "client:call", call_opts, sizeof call_opts / sizeof call_opts[0]);
        p.retries = opt_count(L, 4, "client:call", "retries", 0, 10, -1);
        p.max_size = opt_size(L, 4, "client:call", "max_size");
        raw = opt_boolean(L, 4, "client:call", "raw");
    }
    s = new_scratch(L); /* 5 */
    if (call_target(c, s, path, &s->job.err) != 0 || call_body(L, 3, &s->job.err) != 0) {
        lua_settop(L, 5);
        push_job_error(L, &s->job);
        scratch_release(L, 5);
        return 2;
    }
    p.call_body = 6; /* the JSON text, kept for every attempt */
    return run_call(L, c, &p, raw);
}


/* ===== READER: the recording pulled chunk by chunk ===== */

enum { READ_RUNNING, READ_DONE, READ_FAILED, READ_CLOSED };

/*
 * A download the caller drives: each call runs libcurl (on the client's
 * multi handle) until some bytes of the recording arrived, and returns them.
 * The reader holds the client's easy handle until it ends or is closed; the
 * client, the scratch and on_progress are in its uservalue.
 */
typedef struct reader {
    client *c;
    scratch *s;
    cms_retry_policy policy;
    dl_plan plan;
    dl_ctx d;
    cms_error *err;     /* &s->job.err */
    cms_buf queue;      /* what arrived and was not returned yet */
    int state;          /* READ_* */
    int raise;          /* client:chunks(): failures raise the error table */
    int reading;        /* inside a call: on_progress must not read again */
} reader;

static int reader_write(void *ud, const char *p, size_t n, cms_error *err)
{
    reader *r = ud;

    if (cms_buf_append(&r->queue, p, n) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory while receiving the recording");
    return 0;
}

/* Give the easy handle back to the client; safe to run twice. */
static void reader_detach(reader *r, int state)
{
    if (r->state == READ_RUNNING && !r->c->closed) {
        curl_multi_remove_handle(r->c->multi, r->c->curl); /* aborts an unfinished transfer */
        curl_easy_setopt(r->c->curl, CURLOPT_ERRORBUFFER, NULL); /* it is in r->t */
        r->c->busy = BUSY_NOT;
        r->c->reader = NULL;
    }
    if (r->state == READ_RUNNING || state == READ_CLOSED)
        r->state = state;
}

static int reader_in_callback(const reader *r)
{
    return r->reading;
}

static void reader_complete(lua_State *L, reader *r, CURLcode code);

/* The transfer ended in libcurl but the reader was not called since. */
static int reader_finished(lua_State *L, reader *r)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(r->c->multi, &left)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == r->c->curl) {
            reader_complete(L, r, msg->data.result);
            return 1;
        }
    return 0;
}

/* The client is asked for another request, or closed, while this reader is
   open: the reader ends there. What arrived stays readable; a recording that
   had arrived completely ends well, anything else with kind cancelled. */
static void reader_abandon(lua_State *L, reader *r)
{
    r->s->job.progress = NULL; /* its on_progress belongs to a call that is over */
    if (reader_finished(L, r))
        return;
    cms_error_set(r->err, CMS_E_CANCELLED, "the reader was ended: its client was asked "
                  "for another request before the recording was read to the end");
    reader_detach(r, READ_FAILED);
}

/* close() or the GC before the end: the next read says so, never "the end". */
static void reader_stop(reader *r)
{
    if (r->state == READ_RUNNING) {
        cms_error_set(r->err, CMS_E_CANCELLED, "the reader was closed before the end of "
                      "the recording");
        reader_detach(r, READ_FAILED);
    }
    cms_buf_free(&r->queue);
}

static int reader_close(lua_State *L)
{
    reader *r = luaL_checkudata(L, 1, READER_MT);

    if (r->reading)
        luaL_error(L, "cmsrec reader: on_progress cannot close the reader that called it");
    reader_stop(r);
    return 0;
}

static int reader_gc(lua_State *L)
{
    reader_stop(luaL_checkudata(L, 1, READER_MT));
    return 0;
}

/* libcurl ended the transfer: the outcome, and what an error answer says. */
static void reader_complete(lua_State *L, reader *r, CURLcode code)
{
    r->s->job.json_ud = L; /* this call's thread */
    reader_detach(r, cms_job_finish(&r->s->job, code) == 0 ? READ_DONE : READ_FAILED);
}

static int reader_begin(lua_State *L, reader *r, int req_idx);

/* A failed attempt that gave the caller nothing yet is tried again, as on
   every path: the reader's call waits (on_progress runs), signs afresh and
   starts again. 1 when it did. The client and the request are at 4 and 5. */
static int reader_retry(lua_State *L, reader *r)
{
    cms_job *j = &r->s->job;
    long delay = bearer_retry(r->c, r->s, r->err) ? 0
                 : cms_retry_delay(&r->policy, r->err, j->attempts, j->visible > 0, jitter());

    if (delay < 0 || job_wait(j, delay / 1000.0) != 0)
        return 0;
    cms_job_reset(j);
    if (reader_begin(L, r, 5) != 0) {
        r->state = READ_FAILED;
        return 0;
    }
    r->state = READ_RUNNING;
    r->c->busy = BUSY_READER;
    r->c->reader = r;
    return 1;
}

/* Run libcurl until bytes are queued or the transfer ended. */
static void reader_pump(lua_State *L, reader *r)
{
    CURLM *m = r->c->multi;
    int running = 1, left;
    CURLMsg *msg;
    CURLMcode mc = CURLM_OK;

    while (r->queue.len == 0 && mc == CURLM_OK) {
        mc = curl_multi_perform(m, &running);
        if (r->queue.len || mc != CURLM_OK)
            break;
        while ((msg = curl_multi_info_read(m, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == r->c->curl) {
                reader_complete(L, r, msg->data.result);
                if (r->state != READ_FAILED || !reader_retry(L, r))
                    return;
                running = 1; /* started again: pump on */
                break;
            }
        if (!running) { /* cannot happen: a finished transfer leaves a message */
            cms_error_set(r->err, CMS_E_NETWORK, "libcurl ended the transfer without a result");
            reader_detach(r, READ_FAILED);
            return;
        }
        mc = curl_multi_poll(m, NULL, 0, CMS_PROGRESS_INTERVAL_MS, NULL);
    }
    if (mc != CURLM_OK) {
        cms_error_set(r->err, mc == CURLM_OUT_OF_MEMORY ? CMS_E_NOMEM : CMS_E_NETWORK,
                      "libcurl failed: %s", curl_multi_strerror(mc));
        reader_detach(r, READ_FAILED);
    }
}

/* reader() / reader:read() -> chunk | nil (the end) | nil, err */
static int reader_read(lua_State *L)
{
    reader *r = luaL_checkudata(L, 1, READER_MT);

    lua_settop(L, 1); /* as a generic-for iterator it also gets (nil, chunk) */
    if (r->reading)
        luaL_error(L, "cmsrec reader: on_progress cannot read the reader that called it");
    if (r->state == READ_RUNNING && r->queue.len == 0) {
        lua_getuservalue(L, 1);              /* 2 */
        lua_getfield(L, 2, "on_progress");  /* 3: where lua_progress finds it */
        lua_getfield(L, 2, "client");       /* 4, 5: to sign a retry */
        lua_getfield(L, 2, "req");
        r->s->client_idx = 4;
        r->plan.on_progress = 3;
        r->d.L = L;                          /* this call's thread: a coroutine may differ */
        r->reading = 1;
        reader_pump(L, r);
        r->reading = 0;
        lua_settop(L, 1);
    }
    if (r->queue.len) {
        lua_pushlstring(L, r->queue.data, r->queue.len);
        r->queue.len = 0;
        return 1;
    }
    if (r->state != READ_FAILED) {
        lua_pushnil(L);
        return 1;
    }
    scrub_secrets(r->c, &r->s->job, r->err);
    push_error(L, r->err);
    set_int_field(L, "attempts", r->s->job.attempts);
    if (r->raise)
        lua_error(L);
    return 2;
}

/* reader:info() -> info once the answer started (format, bytes so far), else nil */
static int reader_info(lua_State *L)
{
    reader *r = luaL_checkudata(L, 1, READER_MT);

    if (!r->s || (!r->s->job.resp.sunk && r->state != READ_DONE)) {
        lua_pushnil(L);
        return 1;
    }
    push_info(L, &r->s->job.resp);
    set_int_field(L, "attempts", r->s->job.attempts);
    if (r->state == READ_DONE)
        set_str_field(L, "sha256", r->s->job.sha256);
    return 1;
}

static const char *const reader_opts[] = {"max_size", "on_progress", "retries"};

/* Sign and start an attempt (the request at req_idx), paced by max_rate. */
static int reader_begin(lua_State *L, reader *r, int req_idx)
{
    client *c = r->c;
    scratch *s = r->s;
    cms_job *j = &s->job;
    const char *call_id;

    scratch_unsign(s);
    if (prepare_request(L, c, s, req_idx, &call_id, r->err) != 0)
        return -1;
    j->call_id = call_id;
    j->json_ud = L;
    if (c->rate.per_s > 0 && job_wait(j, cms_rate_wait(&c->rate, cms_now())) != 0)
        return -1;
    cms_rate_take(&c->rate, cms_now());
    if (cms_job_start(j, c->curl, &c->tc, req_url(c, s), s->headers, s->body.data,
                      s->body.len) != 0)
        return -1;
    if (curl_multi_add_handle(c->multi, c->curl) != CURLM_OK)
        return cms_error_set(r->err, CMS_E_NOMEM, "libcurl cannot start the transfer");
    return 0;
}

/* Validate, sign and start: failures here are returned (or raised) at once. */
static int reader_start(lua_State *L, reader *r)
{
    cms_job *j = &r->s->job;

    j->dest = CMS_DEST_SINK; /* the queue: what it got is the caller's */
    j->sink.write = reader_write;
    j->sink.ud = r;
    j->max_size = r->plan.max_size;
    if (r->plan.on_progress) {
        j->progress = lua_progress;
        j->progress_ud = &r->d;
    }
    j->json = json_fields;
    r->policy = retry_policy(r->c, r->plan.retries);
    return reader_begin(L, r, 2);
}

/* client:reader(req[, opts]) and client:chunks(req[, opts]) */
static int open_reader(lua_State *L, const char *what, int raise)
{
    client *c = check_client(L, 1);
    scratch *s;
    reader *r;
    int rc;

    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_argcheck(L, lua_gettop(L) <= 3, 4, "found too many arguments");
    lua_settop(L, 3);
    s = new_scratch(L);                  /* 4: made first, so collected after the reader */
    r = lua_newuserdata(L, sizeof *r);   /* 5 */
    memset(r, 0, sizeof *r);
    cms_buf_init(&r->queue);
    r->state = READ_CLOSED;
    r->c = c;
    r->s = s;
    r->err = &s->job.err;
    r->raise = raise;
    luaL_getmetatable(L, READER_MT);
    lua_setmetatable(L, 5);
    read_opts(L, 3, what, reader_opts, sizeof reader_opts / sizeof reader_opts[0], &r->plan);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "client");
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "req"); /* signed again for a retry */
    lua_pushvalue(L, 4);
    lua_setfield(L, -2, "scratch");
    if (r->plan.on_progress) {
        lua_pushvalue(L, r->plan.on_progress);
        lua_setfield(L, -2, "on_progress");
    }
    lua_setuservalue(L, 5);
    r->plan.req = 2;
    r->d.plan = &r->plan;
    r->d.s = s;
    r->d.L = L;
    claim_client(L, c);
    c->busy = BUSY_CALL; /* the authorization function runs inside */
    rc = reader_start(L, r);
    c->busy = rc == 0 ? BUSY_READER : BUSY_NOT;
    if (rc != 0) {
        scrub_secrets(c, &s->job, r->err);
        push_error(L, r->err);
        if (raise)
            lua_error(L);
        return 2;
    }
    r->state = READ_RUNNING;
    c->reader = r;
    lua_settop(L, 5);
    return 1;
}

/* client:reader(req[, opts]) -> reader | nil, err */
static int l_reader(lua_State *L)
{
    return open_reader(L, "client:reader", 0);
}

/* for chunk in client:chunks(req[, opts]) do ... end: failures raise. The
   reader is also the loop's closing value: in Lua 5.4 a break closes it. */
static int l_chunks(lua_State *L)
{
    open_reader(L, "client:chunks", 1);
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushvalue(L, -3);
    return 4;
}

/* ===== BATCH: client:download_many on the multi interface ===== */

#define BATCH_MAX_CONCURRENCY 64

/* One transfer of the batch, on an easy handle of its own. */
typedef struct slot {
    CURL *h;
    int req;            /* the request's index in reqs, 0: free */
    int running;        /* in the multi handle */
    double wake;        /* waiting to try again until then, 0: not waiting */
    scratch *s;         /* its job and signed request (a userdata of the batch) */
    dl_plan plan;
    dl_ctx d;
} slot;

typedef struct batch {
    client *c;
    cms_transfer_config tc; /* the client's, for transfers side by side */
    slot slots[BATCH_MAX_CONCURRENCY];
    int n;              /* slots */
    int total, next;    /* requests, the next one to start (1-based) */
    int ok, failed, active, stop;
    long long bytes;    /* of the finished recordings */
    cms_error stop_err; /* why the rest is not attempted */
} batch;

/* Stack slots of download_many. */
enum { B_CLIENT = 1, B_REQS, B_OPTS, B_RESULTS, B_BATCH, B_SCRATCH, B_ANCHOR, B_ON_RESULT,
       B_ON_PROGRESS, B_DIR, B__TOP = B_DIR };

/* Give every handle back; in-flight transfers are aborted. Safe twice. */
static int batch_gc(lua_State *L)
{
    batch *b = luaL_checkudata(L, 1, BATCH_MT);
    int i;

    for (i = 0; i < b->n; i++) {
        slot *sl = &b->slots[i];
        if (sl->running && !b->c->closed)
            curl_multi_remove_handle(b->c->multi, sl->h);
        sl->running = 0;
        if (sl->h)
            curl_easy_cleanup(sl->h);
        sl->h = NULL;
    }
    b->n = 0;
    return 0;
}

/* Call on_result or on_progress (pushed with `nargs` arguments): 0 when it
   returned false, or raised (the error is raised again once the batch has
   stopped and given everything back). */
static int batch_callback(lua_State *L, batch *b, int nargs)
{
    int go_on;

    if (b->stop == 3) { /* a callback raised: no more callbacks */
        lua_pop(L, nargs + 1);
        return 0;
    }
    if (lua_pcall(L, nargs, 1, 0) != 0) {
        lua_setfield(L, B_ANCHOR, "raise");
        b->stop = 3;
        cms_error_set(&b->stop_err, CMS_E_CANCELLED, "not attempted: a callback of the "
                      "batch raised an error");
        return 0;
    }
    go_on = !(lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1));
    lua_pop(L, 1);
    return go_on;
}

/* on_result or on_progress returned false: stop, also after an auth stop
   (which only stops new requests): what is in flight is aborted. */
static void batch_stop_if(batch *b, int go_on)
{
    if (go_on || b->stop >= 2)
        return;
    if (!b->stop)
        cms_error_set(&b->stop_err, CMS_E_CANCELLED, "not attempted: the batch was stopped");
    b->stop = 2;
}

/* results[i] = {data =, info =, err =}; on_result(i, req, info, err). */
static int batch_record(lua_State *L, batch *b, slot *sl, int failed)
{
    cms_job *j = &sl->s->job;
    int i = sl->req, go_on = 1;

    lua_createtable(L, 0, 3);
    if (failed) {
        scrub_secrets(b->c, j, &j->err);
        push_job_error(L, j);
        lua_setfield(L, -3, "err");
        lua_pop(L, 1); /* the nil */
        b->failed++;
        if (j->err.kind == CMS_E_AUTH && !b->stop) { /* the CMS locks an IP that insists */
            b->stop = 1;
            cms_error_set(&b->stop_err, CMS_E_CANCELLED, "not attempted: an earlier request "
                          "of the batch was refused (kind auth), and repeating bad "
                          "credentials gets the caller's IP locked");
        }
    } else {
        if (j->dest == CMS_DEST_MEMORY) {
            push_recording(L, &j->mem.buf);
            lua_setfield(L, -2, "data");
        }
        push_job_info(L, j);
        lua_setfield(L, -2, "info");
        b->ok++;
        b->bytes += j->resp.bytes;
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, B_RESULTS, i);
    if (!lua_isnil(L, B_ON_RESULT)) {
        lua_pushvalue(L, B_ON_RESULT);
        lua_pushinteger(L, i);
        lua_rawgeti(L, B_REQS, i);
        lua_getfield(L, -4, "info");
        lua_getfield(L, -5, "err");
        go_on = batch_callback(L, b, 4);
    }
    lua_pop(L, 1);
    batch_stop_if(b, go_on);
    return 0;
}

/* Free the slot for the next request. */
static void slot_release(slot *sl)
{
    cms_job_end(&sl->s->job, 0);
    cms_job_free(&sl->s->job);
    cms_job_init(&sl->s->job);
    scratch_unsign(sl->s);
    sl->req = 0;
    sl->wake = 0;
}

/* The job of request `i` in this slot, as download_file / download would. */
static void slot_assign(lua_State *L, batch *b, slot *sl, int i)
{
    cms_job *j = &sl->s->job;

    sl->req = i;
    sl->s->token_retried = 0;
    sl->d.L = L;
    sl->d.plan = &sl->plan;
    sl->d.s = sl->s;
    job_configure(j, &sl->plan, &sl->d);
    if (sl->plan.unzip)
        j->dest = CMS_DEST_FILE; /* into dir/<callID>/, named when it starts */
    (void)b;
}

/* Sign and start an attempt of the slot's request (the stack is restored). */
static int slot_start(lua_State *L, batch *b, slot *sl)
{
    scratch *s = sl->s;
    cms_job *j = &s->job;
    const char *call_id;
    int top = lua_gettop(L), rc;

    scratch_unsign(s);
    lua_rawgeti(L, B_REQS, sl->req);
    if (!lua_istable(L, -1)) {
        lua_settop(L, top);
        return cms_error_field(&j->err, "request", "request %d is not a table", sl->req);
    }
    rc = prepare_request(L, b->c, s, lua_gettop(L), &call_id, &j->err);
    if (rc == 0) {
        lua_pushvalue(L, top + 2); /* the callID (prepare_request's first push), kept */
        lua_rawseti(L, B_ANCHOR, (int)(sl - b->slots) + 1);
        j->call_id = call_id;
        if (sl->plan.unzip) { /* each call's recordings in a directory of its own */
            char name[256];
            cms_safe_filename(call_id, name, sizeof name);
            lua_pushfstring(L, "%s/%s", lua_tostring(L, B_DIR), name);
            lua_pushvalue(L, -1);
            lua_rawseti(L, B_ANCHOR, BATCH_MAX_CONCURRENCY + (int)(sl - b->slots) + 1);
            j->path = lua_tostring(L, -1);
        }
        cms_rate_take(&b->c->rate, cms_now());
        rc = cms_job_start(j, sl->h, &b->tc, b->c->url, s->headers, s->body.data, s->body.len);
    }
    if (rc == 0 && curl_multi_add_handle(b->c->multi, sl->h) != CURLM_OK)
        rc = cms_error_set(&j->err, CMS_E_NOMEM, "libcurl cannot start the transfer");
    lua_settop(L, top);
    sl->running = rc == 0;
    b->active += rc == 0;
    return rc;
}

/* An attempt failed: wait and try again, or record the failure. */
static int slot_failed(lua_State *L, batch *b, slot *sl, const cms_retry_policy *policy)
{
    cms_job *j = &sl->s->job;
    long delay = b->stop ? -1 : bearer_retry(b->c, sl->s, &j->err) ? 0
                 : cms_retry_delay(policy, &j->err, j->attempts, 0, jitter());

    if (delay >= 0) { /* the error stays until the next attempt starts */
        sl->wake = cms_now() + delay / 1000.0;
        return 0;
    }
    cms_job_end(j, 1);
    if (batch_record(L, b, sl, 1) != 0)
        return -1;
    slot_release(sl);
    return 0;
}

/* Start what may start now: free slots take the next requests, waiting
   ones whose time came try again; max_rate paces both. Returns how long
   (seconds) until something may start, for the poll's timeout. */
static double batch_fill(lua_State *L, batch *b, const cms_retry_policy *policy)
{
    double now = cms_now(), next = 0.2, w;
    int i;

    for (i = 0; i < b->n; i++) {
        slot *sl = &b->slots[i];
        if (sl->running || b->stop)
            continue;
        if (sl->req && sl->wake > now) {
            if (sl->wake - now < next)
                next = sl->wake - now;
            continue;
        }
        if (!sl->req && b->next > b->total)
            continue;
        if ((w = cms_rate_wait(&b->c->rate, now)) > 0) {
            return w < next ? w : next;
        }
        if (!sl->req)
            slot_assign(L, b, sl, b->next++);
        else
            cms_job_reset(&sl->s->job); /* a retry */
        sl->wake = 0;
        if (slot_start(L, b, sl) != 0)
            slot_failed(L, b, sl, policy);
        now = cms_now();
    }
    return next;
}

/* Every finished transfer: commit or retry or record. */
static void batch_reap(lua_State *L, batch *b, const cms_retry_policy *policy)
{
    CURLMsg *msg;
    int left, i;

    while ((msg = curl_multi_info_read(b->c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        for (i = 0; i < b->n; i++) {
            slot *sl = &b->slots[i];
            CURLcode rc = msg->data.result;
            if (!sl->running || sl->h != msg->easy_handle)
                continue;
            curl_multi_remove_handle(b->c->multi, sl->h);
            sl->running = 0;
            b->active--;
            sl->s->job.json_ud = L;
            if (cms_job_finish(&sl->s->job, rc) != 0)
                slot_failed(L, b, sl, policy);
            else {
                batch_record(L, b, sl, 0);
                slot_release(sl);
            }
            break;
        }
    }
}

/* on_progress{done, total, ok, failed, bytes, active}: false stops the batch. */
static void batch_progress(lua_State *L, batch *b)
{
    long long bytes = b->bytes;
    int i, go_on;

    if (lua_isnil(L, B_ON_PROGRESS))
        return;
    for (i = 0; i < b->n; i++)
        if (b->slots[i].running)
            bytes += b->slots[i].s->job.resp.bytes;
    lua_pushvalue(L, B_ON_PROGRESS);
    lua_createtable(L, 0, 6);
    set_int_field(L, "done", b->ok + b->failed);
    set_int_field(L, "total", b->total);
    set_int_field(L, "ok", b->ok);
    set_int_field(L, "failed", b->failed);
    set_int_field(L, "bytes", (lua_Integer)bytes);
    set_int_field(L, "active", b->active);
    go_on = batch_callback(L, b, 1);
    batch_stop_if(b, go_on);
}

/* Stopped: in-flight transfers are aborted (their files never appear). */
static void batch_abort(lua_State *L, batch *b)
{
    int i;

    for (i = 0; i < b->n; i++) {
        slot *sl = &b->slots[i];
        if (!sl->req)
            continue;
        if (sl->running) {
            curl_multi_remove_handle(b->c->multi, sl->h);
            curl_easy_setopt(sl->h, CURLOPT_ERRORBUFFER, NULL); /* it is in the job */
            sl->running = 0;
            b->active--;
            cms_error_set(&sl->s->job.err, CMS_E_CANCELLED, "the batch was stopped during "
                          "this download: nothing of it was kept");
        } /* else waiting to try again: its last error stands */
        cms_job_end(&sl->s->job, 1);
        cms_job_free(&sl->s->job); /* the temporary file goes */
        batch_record(L, b, sl, 1);
        slot_release(sl);
    }
}

/* Nothing new starts after an auth failure: requests waiting to try again
   end with the error they had. */
static void batch_drop_waiting(lua_State *L, batch *b)
{
    int i;

    for (i = 0; i < b->n; i++) {
        slot *sl = &b->slots[i];
        if (sl->req && !sl->running) {
            cms_job_end(&sl->s->job, 1);
            batch_record(L, b, sl, 1);
            slot_release(sl);
        }
    }
}

static int batch_idle(const batch *b)
{
    int i;

    for (i = 0; i < b->n; i++)
        if (b->slots[i].req)
            return 0;
    return 1;
}

/* A slot is free, a request waits for it, and max_rate lets it start now. */
static int batch_can_start(const batch *b)
{
    int i;

    if (b->stop || b->next > b->total || cms_rate_wait(&b->c->rate, cms_now()) > 0)
        return 0;
    for (i = 0; i < b->n; i++)
        if (!b->slots[i].req)
            return 1;
    return 0;
}

/* Until every request is done, failed, or not to be attempted. */
static void batch_loop(lua_State *L, batch *b, const cms_retry_policy *policy)
{
    CURLM *m = b->c->multi;
    double last = 0, wait;
    int running;

    for (;;) {
        wait = b->stop ? 0.05 : batch_fill(L, b, policy);
        if (b->stop == 1)
            batch_drop_waiting(L, b);
        else if (b->stop)
            batch_abort(L, b);
        if (batch_idle(b) && (b->stop || b->next > b->total))
            break;
        if (curl_multi_perform(m, &running) != CURLM_OK)
            wait = 0.05; /* out of memory: try again, the GC may free some */
        batch_reap(L, b, policy);
        if (cms_now() - last >= CMS_PROGRESS_INTERVAL_MS / 1000.0) {
            batch_progress(L, b);
            last = cms_now();
        }
        if (batch_can_start(b) || (batch_idle(b) && (b->stop || b->next > b->total)))
            continue; /* a slot to fill, or the end: no waiting */
        if (b->active)
            curl_multi_poll(m, NULL, 0, (int)(wait * 1000) + 1, NULL);
        else if (!b->stop && wait > 0) {
            struct timespec ts;
            ts.tv_sec = (time_t)wait;
            ts.tv_nsec = (long)((wait - (double)ts.tv_sec) * 1e9);
            nanosleep(&ts, NULL);
        }
    }
    if (b->stop != 3)
        batch_progress(L, b); /* the final figures */
}

/* Requests never started: not attempted (attempts 0). */
static void batch_rest(lua_State *L, batch *b)
{
    int i;

    for (i = 1; i <= b->total; i++) {
        lua_rawgeti(L, B_RESULTS, i);
        if (lua_isnil(L, -1)) {
            lua_createtable(L, 0, 1);
            push_error(L, &b->stop_err);
            set_int_field(L, "attempts", 0);
            lua_setfield(L, -3, "err");
            lua_pop(L, 1);
            lua_rawseti(L, B_RESULTS, i);
        }
        lua_pop(L, 1);
    }
}

static const char *const many_opts[] = {"concurrency", "dir", "unzip", "retries", "max_size",
                                        "on_result", "on_progress"};

/* opts.dir: a directory, made if missing (its parent must exist). */
static int batch_directory(const char *dir)
{
    struct stat st;

    if (mkdir(dir, 0777) == 0)
        return 0;
    if (errno == EEXIST && stat(dir, &st) == 0) {
        errno = ENOTDIR;
        return S_ISDIR(st.st_mode) ? 0 : -1;
    }
    return -1;
}

/* The batch and its slots, from opts (at B_OPTS). */
static batch *batch_new(lua_State *L, client *c)
{
    int conc = 4, unzip = 0, retries = -1, i;
    long long max_size = 0; /* 0: not given */
    batch *b;

    if (!lua_isnil(L, B_OPTS)) {
        luaL_checktype(L, B_OPTS, LUA_TTABLE);
        check_keys(L, B_OPTS, "client:download_many", many_opts,
                   sizeof many_opts / sizeof many_opts[0]);
        conc = opt_count(L, B_OPTS, "client:download_many", "concurrency", 1,
                         BATCH_MAX_CONCURRENCY, 4);
        unzip = opt_boolean(L, B_OPTS, "client:download_many", "unzip");
        retries = opt_count(L, B_OPTS, "client:download_many", "retries", 0, 10, -1);
        max_size = opt_size(L, B_OPTS, "client:download_many", "max_size");
    }
    b = lua_newuserdata(L, sizeof *b);              /* B_BATCH */
    memset(b, 0, sizeof *b);
    luaL_getmetatable(L, BATCH_MT);
    lua_setmetatable(L, -2);
    lua_createtable(L, conc, 0);                    /* B_SCRATCH */
    lua_createtable(L, 2 * BATCH_MAX_CONCURRENCY, 0); /* B_ANCHOR */
    b->c = c;
    b->tc = c->tc;
    b->tc.busy_conns = 1; /* transfers side by side: checked between batches only */
    b->total = (int)lua_rawlen(L, B_REQS);
    b->next = 1;
    for (i = 0; i < conc; i++) {
        slot *sl = &b->slots[i];
        sl->s = new_scratch(L);
        lua_rawseti(L, B_SCRATCH, i + 1);
        if (!(sl->h = curl_easy_init()))
            luaL_error(L, "client:download_many: libcurl could not be initialised");
        b->n = i + 1;
        sl->plan.unzip = unzip;
        sl->plan.max_size = max_size;
        sl->plan.retries = retries;
    }
    return b;
}

/* The batch under lua_pcall, with download_many's stack (B_* and the policy):
   a Lua error that unwinds it still leaves the client usable. */
static int batch_run(lua_State *L)
{
    batch *b = lua_touserdata(L, B_BATCH);

    batch_loop(L, b, lua_touserdata(L, B__TOP + 1));
    batch_rest(L, b);
    return 0;
}

/* client:download_many(reqs[, opts]) -> results */
static int l_download_many(lua_State *L)
{
    client *c = check_client(L, 1);
    cms_retry_policy policy;
    batch *b;
    const char *dir;
    int i, rc;

    luaL_checktype(L, B_REQS, LUA_TTABLE);
    luaL_argcheck(L, lua_gettop(L) <= 3, 4, "found too many arguments");
    lua_settop(L, B_OPTS);
    lua_newtable(L);                                /* B_RESULTS */
    b = batch_new(L, c);                            /* B_BATCH, B_SCRATCH, B_ANCHOR */
    if (lua_isnil(L, B_OPTS)) {
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushnil(L);
    } else {
        opt_function(L, B_OPTS, "client:download_many", "on_result");
        if (lua_gettop(L) < B_ON_RESULT)
            lua_pushnil(L);
        opt_function(L, B_OPTS, "client:download_many", "on_progress");
        if (lua_gettop(L) < B_ON_PROGRESS)
            lua_pushnil(L);
        raw_field(L, B_OPTS, "dir");
        if (!lua_isnil(L, -1) && !lua_isstring(L, -1))
            luaL_error(L, "client:download_many: option 'dir' must be a directory path");
    }
    dir = lua_isnil(L, B_DIR) ? NULL : check_path(L, B_DIR, 0);
    if (dir && batch_directory(dir) != 0)
        luaL_error(L, "client:download_many: opts.dir: cannot use '%s': %s", dir,
                   strerror(errno));
    if (b->slots[0].plan.unzip && !dir)
        luaL_error(L, "client:download_many: opts.unzip needs opts.dir");
    for (i = 0; i < b->n; i++) { /* as download_file, or download (memory: the client's limit) */
        b->slots[i].plan.path = b->slots[i].plan.unzip ? NULL : dir;
        if (!dir && !b->slots[i].plan.max_size)
            b->slots[i].plan.max_size = c->max_size;
    }
    policy = retry_policy(c, b->slots[0].plan.retries);
    claim_client(L, c);
    cms_conn_set_drop_unclean(&c->conns); /* idle now: nothing may wait on them */
    c->busy = BUSY_CALL;
    lua_pushvalue(L, CJSON_UPVALUE);
    lua_pushcclosure(L, batch_run, 1);
    for (i = 1; i <= B__TOP; i++)
        lua_pushvalue(L, i);
    lua_pushlightuserdata(L, &policy);
    rc = lua_pcall(L, B__TOP + 1, 0, 0);
    c->busy = BUSY_NOT;
    lua_pushcfunction(L, batch_gc); /* every handle given back, whatever happened */
    lua_pushvalue(L, B_BATCH);
    lua_call(L, 1, 0);
    if (rc != 0)
        return lua_error(L); /* out of memory, an error in a __gc: as it came */
    if (b->stop == 3) {
        lua_getfield(L, B_ANCHOR, "raise");
        return lua_error(L);
    }
    lua_pushvalue(L, B_RESULTS);
    set_int_field(L, "ok", b->ok);
    set_int_field(L, "failed", b->failed);
    set_int_field(L, "not_attempted", b->total - b->ok - b->failed);
    return 1;
}

/* ===== PREPARE AND CLASSIFY: for callers that send the request themselves ===== */

/* client:prepare(req) -> {method, url, headers, body} | nil, err */
static int l_prepare(lua_State *L)
{
    client *c = check_client(L, 1);
    const char *call_id, *auth;
    char clen[32];
    cms_error err;
    scratch *s;
    int rc, busy;

    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_argcheck(L, lua_gettop(L) <= 2, 3, "found too many arguments");
    lua_settop(L, 2);
    s = new_scratch(L); /* 3 */
    cms_error_clear(&err);
    busy = c->busy; /* an open reader goes on: prepare does not use the connection */
    c->busy = BUSY_CALL; /* the authorization function runs inside */
    rc = sign_new_request(L, c, s, 2, &call_id, clen, &auth, &err);
    c->busy = busy;
    if (rc != 0) {
        scrub_secrets(c, &s->job, &err);
        scratch_release(L, 3);
        return push_error(L, &err);
    }
    lua_createtable(L, 0, 4);
    set_str_field(L, "method", "POST");
    set_str_field(L, "url", c->url);
    lua_createtable(L, 0, 5);
    set_str_field(L, "Host", c->host);
    set_str_field(L, "Content-Type", CMSREC_CONTENT_TYPE);
    set_str_field(L, "Content-Length", clen);
    set_str_field(L, "Authorization", auth);
    set_str_field(L, "Accept-Encoding", "identity"); /* an encoded body cannot be sniffed */
    set_gateway_fields(L, c, s);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, s->body.data, s->body.len);
    lua_setfield(L, -2, "body");
    scratch_release(L, 3);
    return 1;
}

/* Retry-After and Content-Encoding from a table of headers (any case). */
static void read_answer_headers(lua_State *L, int idx, cms_response *r, int *encoded)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        const char *v = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER
                            ? lua_tostring(L, -1) : NULL; /* in place: the key is a string */
        if (v && strcasecmp(k, "retry-after") == 0 && *v >= '0' && *v <= '9' &&
            strlen(v) < 10)
            r->retry_after = strtol(v, NULL, 10);
        else if (v && strcasecmp(k, "content-encoding") == 0 && *v &&
                 strcasecmp(v, "identity") != 0)
            *encoded = 1;
        lua_pop(L, 1);
    }
}

/* Whether `body` decodes as a whole JSON object. */
static int json_complete(lua_State *L, const char *body, size_t len)
{
    cms_buf b;

    b.data = (char *)body;
    b.len = len;
    if (!decode_json(L, CJSON_UPVALUE, &b))
        return 0;
    lua_pop(L, 1);
    return 1;
}

/* cmsrec.classify(status, headers, body[, eof]) -> format | nil | nil, err */
static int l_classify(lua_State *L)
{
    lua_Integer status = luaL_checkinteger(L, 1);
    size_t len;
    const char *body = luaL_optlstring(L, 3, "", &len);
    int eof = lua_toboolean(L, 4), encoded = 0;
    cms_format fmt;
    cms_error err;
    scratch *s;

    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    luaL_argcheck(L, lua_gettop(L) <= 4, 5, "found too many arguments");
    lua_settop(L, 4);
    s = new_scratch(L); /* 5 */
    s->job.resp.status = (long)status;
    if (!lua_isnil(L, 2))
        read_answer_headers(L, 2, &s->job.resp, &encoded);
    cms_error_clear(&err);
    if (status / 100 == 2 && encoded) {
        cms_error_set(&err, CMS_E_PROTOCOL, "the answer is encoded (Content-Encoding): "
                      "send Accept-Encoding: identity");
        err.status = (long)status;
    } else if (status / 100 == 2) {
        if (!eof && !cms_sniff_ready((const unsigned char *)body, len)) {
            scratch_release(L, 5);
            lua_pushnil(L); /* more bytes needed */
            return 1;
        }
        fmt = cms_sniff((const unsigned char *)body, len);
        if (len > 0 && !cms_is_answer(fmt, s->job.resp.content_type,
                                      (const unsigned char *)body, len)) {
            scratch_release(L, 5);
            lua_pushstring(L, cms_format_name(fmt));
            return 1;
        }
        if (fmt == CMS_FMT_JSON && !eof && len < CMS_ERROR_BODY_MAX &&
            !json_complete(L, body, len)) {
            scratch_release(L, 5);
            lua_pushnil(L); /* an error for sure, but its kind is in the rest */
            return 1;
        }
    }
    if (err.kind == CMS_OK) {
        cms_response *r = &s->job.resp;
        r->truncated = len > CMS_ERROR_BODY_MAX;
        if (cms_buf_append(&r->body, body, r->truncated ? CMS_ERROR_BODY_MAX : len))
            cms_error_set(&err, CMS_E_NOMEM, "out of memory");
        else
            cms_classify_answer(r, json_fields, L, &err);
    }
    scratch_release(L, 5);
    return push_error(L, &err);
}

/* cmsrec.error(t) -> t: an error table that crossed a Lua state (a thread of
   ngx.run_worker_thread copies tables without metatables) gets tostring back. */
static int l_error(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "kind");
    luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1, "an error table has a string 'kind'");
    lua_settop(L, 1);
    luaL_getmetatable(L, ERROR_MT);
    lua_setmetatable(L, 1);
    return 1;
}

/* ===== SIGN ===== */

/* A table of name -> string/number as cms_kv pairs (strings stay in the table). */
static size_t read_pairs(lua_State *L, int idx, const char *key, cms_kv *kv,
                         int anchor)
{
    size_t n = 0;

    raw_field(L, idx, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "cmsrec.sign: option '%s' must be a table of name = value", key);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (n == CMS_SIGN_MAX_PAIRS)
            luaL_error(L, "cmsrec.sign: option '%s' has too many entries", key);
        if (lua_type(L, -2) != LUA_TSTRING ||
            (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
            luaL_error(L, "cmsrec.sign: option '%s' must map strings to strings", key);
        lua_tostring(L, -1); /* a number becomes a string on the stack only */
        lua_pushvalue(L, -1);
        lua_rawseti(L, anchor, (int)lua_rawlen(L, anchor) + 1); /* keep it alive */
        kv[n].name = lua_tolstring(L, -2, &kv[n].name_len);
        kv[n].value = lua_tolstring(L, -1, &kv[n].value_len);
        n++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return n;
}

/* scheme = "auth-v2" (default) | "apig"; 1 for apig. */
static int sign_scheme(lua_State *L)
{
    const char *scheme = opt_cstring(L, 1, "cmsrec.sign", "scheme");

    if (scheme && strcmp(scheme, "apig") != 0 && strcmp(scheme, "auth-v2") != 0)
        luaL_error(L, "cmsrec.sign: option 'scheme' must be \"auth-v2\" or \"apig\" "
                      "(a bearer token is fetched, not computed)");
    return scheme && strcmp(scheme, "apig") == 0;
}

static int l_sign(lua_State *L)
{
    cms_kv query[CMS_SIGN_MAX_PAIRS], headers[CMS_SIGN_MAX_PAIRS];
    char ts[CMS_TIMESTAMP_SIZE], date[CMS_SDK_DATE_SIZE];
    cms_sign_input in;
    cms_signature *sig;
    cms_error err;
    scratch *s;
    int apig;

    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argcheck(L, lua_gettop(L) == 1, 2, "found too many arguments");
    check_keys(L, 1, "cmsrec.sign", sign_keys, NSIGN_KEYS);
    apig = sign_scheme(L);
    memset(&in, 0, sizeof in);
    in.ak = opt_cstring(L, 1, "cmsrec.sign", "ak");
    in.sk = (const unsigned char *)opt_string(L, 1, "cmsrec.sign", "sk", &in.sk_len);
    in.method = opt_cstring(L, 1, "cmsrec.sign", "method");
    in.path = opt_cstring(L, 1, "cmsrec.sign", "path");
    in.body = opt_string(L, 1, "cmsrec.sign", "body", &in.body_len);
    in.timestamp = opt_cstring(L, 1, "cmsrec.sign", "timestamp");
    lua_newtable(L); /* anchor for number values turned into strings */
    in.nquery = read_pairs(L, 1, "query", query, lua_gettop(L));
    in.query = query;
    in.nheaders = read_pairs(L, 1, "headers", headers, lua_gettop(L));
    in.headers = headers;
    if (!in.method)
        in.method = "POST";
    if (!in.timestamp) {
        if ((apig ? cms_sdk_date_now(ts) : cms_timestamp_now(ts)) != 0)
            luaL_error(L, "cmsrec.sign: the system clock cannot be read");
        in.timestamp = ts;
    }
    s = new_scratch(L);
    sig = &s->sig;
    cms_error_clear(&err);
    if ((apig ? cms_sign_apig(&in, sig, &err) : cms_sign(&in, sig, &err)) != 0)
        luaL_error(L, "cmsrec.sign: %s", err.message);
    if (apig && cms_sdk_date(in.timestamp, date) == 0)
        in.timestamp = date; /* as signed: X-Sdk-Date */
    lua_pushlstring(L, sig->authorization.data, sig->authorization.len);
    lua_createtable(L, 0, 5);
    lua_pushlstring(L, sig->canonical_request.data, sig->canonical_request.len);
    lua_setfield(L, -2, "canonical_request");
    set_str_field(L, "signing_key", sig->signing_key);
    set_str_field(L, "signature", sig->signature);
    set_str_field(L, "signed_headers", sig->signed_headers.data);
    set_str_field(L, "timestamp", in.timestamp);
    set_str_field(L, "string_to_sign", sig->string_to_sign.data);
    cms_signature_free(sig);
    return 2;
}

/* ===== MODULE ===== */

static void new_class(lua_State *L, const char *name, const luaL_Reg *meta,
                      const luaL_Reg *methods)
{
    luaL_newmetatable(L, name);
    lua_pushvalue(L, -2); /* cjson */
    luaL_setfuncs(L, meta, 1);
    if (methods) {
        lua_newtable(L);
        lua_pushvalue(L, -3);
        luaL_setfuncs(L, methods, 1);
        lua_setfield(L, -2, "__index");
    }
    lua_pushliteral(L, "cmsrec");
    lua_setfield(L, -2, "__metatable"); /* getmetatable does not expose internals */
    lua_pop(L, 1);
}

int luaopen_cmsrec(lua_State *L)
{
    static const luaL_Reg client_meta[] = {
        {"__gc", l_gc},
        {"__close", l_close},
        {"__tostring", l_tostring},
        {NULL, NULL},
    };
    static const luaL_Reg client_methods[] = {
        {"download", l_download},
        {"prepare", l_prepare},
        {"download_many", l_download_many},
        {"reader", l_reader},
        {"chunks", l_chunks},
        {"download_file", l_download_file},
        {"call", l_call},
        {"close", l_close},
        {NULL, NULL},
    };
    static const luaL_Reg error_meta[] = {{"__tostring", error_tostring}, {NULL, NULL}};
    static const luaL_Reg scratch_meta[] = {{"__gc", scratch_gc}, {NULL, NULL}};
    static const luaL_Reg batch_meta[] = {{"__gc", batch_gc}, {NULL, NULL}};
    static const luaL_Reg reader_meta[] = {
        {"__gc", reader_gc},
        {"__close", reader_close},
        {"__call", reader_read},
        {NULL, NULL},
    };
    static const luaL_Reg reader_methods[] = {
        {"read", reader_read},
        {"info", reader_info},
        {"close", reader_close},
        {NULL, NULL},
    };
    static const luaL_Reg funcs[] = {
        {"new", l_new},
        {"sign", l_sign},
        {"unzip", l_unzip},
        {"classify", l_classify},
        {"error", l_error},
        {NULL, NULL},
    };
    int i;

    lua_settop(L, 0); /* drop require's arguments: index 1 is cjson below */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, 1, "new");
    lua_call(L, 0, 1); /* a private instance: the application's cjson settings do not apply */
    lua_remove(L, 1);  /* 1: cjson */

    new_class(L, CLIENT_MT, client_meta, client_methods);
    new_class(L, SCRATCH_MT, scratch_meta, NULL);
    new_class(L, BATCH_MT, batch_meta, NULL);
    new_class(L, READER_MT, reader_meta, reader_methods);
    luaL_newmetatable(L, ERROR_MT);
    luaL_setfuncs(L, error_meta, 0);
    lua_pop(L, 1);

    lua_newtable(L); /* 2: module */
    lua_pushvalue(L, 1);
    luaL_setfuncs(L, funcs, 1);
    /* download(config, req) closes over cjson, new and the download method */
    lua_pushvalue(L, 1);
    lua_getfield(L, -2, "new");
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, l_download, 1);
    lua_pushcclosure(L, l_download_once, 3);
    lua_setfield(L, -2, "download");

    lua_newtable(L); /* kinds: the list every err.kind comes from */
    for (i = 1; i < CMS_E__COUNT; i++) {
        lua_pushstring(L, cms_error_kind_name((cms_error_kind)i));
        lua_rawseti(L, -2, i);
    }
    lua_setfield(L, -2, "kinds");
    lua_pushliteral(L, CMSREC_DEFAULT_PATH);
    lua_setfield(L, -2, "DEFAULT_PATH");
    lua_pushliteral(L, CMSREC_VERSION);
    lua_setfield(L, -2, "VERSION");
    lua_pushstring(L, curl_version());
    lua_setfield(L, -2, "CURL_VERSION");
    return 1;
}
