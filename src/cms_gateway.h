/*
 * cms_gateway: what deployments behind an API gateway need besides the
 * auth-v2 signer (cms-protocol.md, "Other authentication seen in the
 * field"):
 *   - fixed extra headers, checked before they are ever sent;
 *   - libcurl resolve entries ("name:port:address"), checked likewise, so a
 *     client reaches an IP while SNI, the certificate check and Host carry
 *     the name (a CloudWAF answers 418 to a connection without that SNI);
 *   - the bearer token of tokenByAkSk: kept in C memory, aged, wiped;
 *   - the token endpoint's refusals as errors, and secrets scrubbed from
 *     server text quoted in messages.
 * No Lua here: the binding decodes JSON and calls these.
 */
#ifndef CMS_GATEWAY_H
#define CMS_GATEWAY_H

#include <stddef.h>

#include "cms_error.h"
#include "cms_job.h"
#include "cms_secret.h"
#include "cms_sign.h"

#define CMS_HEADERS_MAX 24       /* extra headers: apig signs them with 3 more */
#define CMS_HEADER_NAME_MAX 64
#define CMS_HEADER_VALUE_MAX 800 /* one header line stays under 1 KiB */
#define CMS_TOKEN_PATH "/apigovernance/api/oauth/tokenByAkSk"
#define CMS_TOKEN_MAX 4096       /* longest AccessToken accepted */

/* What is wrong with an extra header, as a phrase ("its name ..."), or NULL.
   Names are HTTP tokens and none of the headers the module sets itself
   (Authorization, Host, Content-Type, Content-Length, X-Sdk-Date, in any
   case); values have no control characters (CR, LF, TAB, DEL, ...). */
const char *cms_header_problem(const char *name, size_t nlen, const char *value, size_t vlen);

/* Extra headers, copied (owned here). */
typedef struct cms_headers {
    cms_kv *kv;
    size_t n;
} cms_headers;

void cms_headers_init(cms_headers *h);
/* Append a copy; 0, or -1 out of memory. */
int cms_headers_add(cms_headers *h, const char *name, size_t nlen, const char *value,
                    size_t vlen);
/* The index of `name` (any case), or -1. */
int cms_headers_find(const cms_headers *h, const char *name, size_t nlen);
void cms_headers_free(cms_headers *h);

/* What is wrong with a libcurl resolve entry "name:port:address[,address]"
   (an IPv6 address in brackets), as a phrase, or NULL. */
const char *cms_resolve_problem(const char *entry);

/* https://<base_url's host>:443/apigovernance/api/oauth/tokenByAkSk, malloc'd;
   NULL when base_url has no host (or out of memory). */
char *cms_token_url_default(const char *base_url);

/*
 * The bearer token, in pages of its own like the SK (cms_secret: no core
 * dumps, no swap, wiped before unmapped). `value`/`len` view those bytes.
 * `gen` counts the tokens stored, so a request can tell whether the token
 * it used is still the current one. `expires` is on the cms_now() clock, 0
 * when the endpoint gave no lifetime (used until a request is refused, 401).
 */
typedef struct cms_token {
    cms_secret secret;
    const char *value;
    size_t len;
    double expires;
    unsigned gen;
} cms_token;

void cms_token_init(cms_token *t);
/* Keep a copy of `v` (the old one wiped); 0, or -1 out of memory. */
int cms_token_store(cms_token *t, const char *v, size_t n, double expires);
/* Wipe and unmap the token (cms_secret_free); `gen` stays. Safe twice. */
void cms_token_wipe(cms_token *t);
/* 1 when a token is held and not about to expire at `now`. */
int cms_token_usable(const cms_token *t, double now);
/* When a token given `expires_in` seconds at `now` stops being used: that
   long minus a margin, 60 s or a tenth of it, whichever is less. 0 (no
   expiry known) when expires_in is not positive. */
double cms_token_expiry(double now, double expires_in);
/* 1 when `v` can be a token: 1..CMS_TOKEN_MAX visible ASCII bytes. */
int cms_token_value_ok(const char *v, size_t n);

/*
 * The token endpoint's answer `r` as an error: 401/403 and a 2xx answer
 * without a usable AccessToken are kind auth, other statuses kind http
 * (429, 502, 503, 504 retryable). `json` extracts resultDesc or message to
 * quote. Always returns -1.
 */
int cms_token_refused(const cms_response *r, const char *url, cms_json_fn json, void *ud,
                      cms_error *err);

/* Every occurrence of `secret` (n >= 8 bytes; shorter ones are left) in the
   text fields of `e` becomes "***". */
void cms_error_scrub(cms_error *e, const char *secret, size_t n);

#endif
