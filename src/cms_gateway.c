/* cms_gateway: extra headers, resolve entries, the bearer token (see cms_gateway.h). */
#include "cms_gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "cms_classify.h"

/* ===== extra headers ===== */

static int is_tchar(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

const char *cms_header_problem(const char *name, size_t nlen, const char *value, size_t vlen)
{
    static const char *const reserved[] = {"authorization", "host", "content-type",
                                           "content-length", "x-sdk-date"};
    size_t i;

    if (nlen == 0 || nlen > CMS_HEADER_NAME_MAX)
        return "its name must have 1 to 64 characters";
    for (i = 0; i < nlen; i++)
        if (!is_tchar((unsigned char)name[i]))
            return "its name must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~)";
    for (i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strlen(reserved[i]) == nlen && strncasecmp(name, reserved[i], nlen) == 0)
            return "cmsrec sets this header itself";
    if (vlen > CMS_HEADER_VALUE_MAX)
        return "its value is longer than 800 bytes";
    for (i = 0; i < vlen; i++)
        if ((unsigned char)value[i] < 0x20 || (unsigned char)value[i] == 0x7F)
            return "its value has a control character (CR, LF, TAB, NUL, ...)";
    return NULL;
}

void cms_headers_init(cms_headers *h)
{
    h->kv = NULL;
    h->n = 0;
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);

    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

int cms_headers_add(cms_headers *h, const char *name, size_t nlen, const char *value,
                    size_t vlen)
{
    cms_kv *kv = realloc(h->kv, (h->n + 1) * sizeof *kv);
    char *n, *v;

    if (!kv)
        return -1;
    h->kv = kv;
    n = dup_n(name, nlen);
    v = dup_n(value, vlen);
    if (!n || !v) {
        free(n);
        free(v);
        return -1;
    }
    kv[h->n].name = n;
    kv[h->n].name_len = nlen;
    kv[h->n].value = v;
    kv[h->n].value_len = vlen;
    h->n++;
    return 0;
}

int cms_headers_find(const cms_headers *h, const char *name, size_t nlen)
{
    size_t i;

    for (i = 0; i < h->n; i++)
        if (h->kv[i].name_len == nlen && strncasecmp(h->kv[i].name, name, nlen) == 0)
            return (int)i;
    return -1;
}

void cms_headers_free(cms_headers *h)
{
    size_t i;

    for (i = 0; i < h->n; i++) {
        free((char *)h->kv[i].name);
        OPENSSL_cleanse((char *)h->kv[i].value, h->kv[i].value_len); /* may be a tenant key */
        free((char *)h->kv[i].value);
    }
    free(h->kv);
    cms_headers_init(h);
}

/* ===== resolve entries ===== */

/* One address: dotted IPv4, or IPv6 in brackets. */
static int address_ok(const char *s, size_t n)
{
    char buf[64];
    unsigned char bin[16];

    if (n >= sizeof buf || n == 0)
        return 0;
    if (s[0] == '[') {
        if (n < 3 || s[n - 1] != ']')
            return 0;
        memcpy(buf, s + 1, n - 2);
        buf[n - 2] = '\0';
        return inet_pton(AF_INET6, buf, bin) == 1;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET, buf, bin) == 1;
}

const char *cms_resolve_problem(const char *entry)
{
    const char *host_end = strchr(entry, ':'), *port_end, *p, *comma;
    long port;
    char *end;

    if (!host_end || host_end == entry)
        return "must be name:port:address (for example cms.example.test:443:10.22.26.181)";
    for (p = entry; p < host_end; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
            return "has a name with characters other than letters, digits, '-' and '.'";
    port = strtol(host_end + 1, &end, 10);
    port_end = end;
    if (port_end == host_end + 1 || *port_end != ':' || port < 1 || port > 65535 ||
        host_end[1] < '0' || host_end[1] > '9')
        return "must have a port from 1 to 65535 after the name (name:port:address)";
    for (p = port_end + 1;; p = comma + 1) {
        comma = strchr(p, ',');
        if (!address_ok(p, comma ? (size_t)(comma - p) : strlen(p)))
            return "must end with IP addresses (IPv4, or IPv6 in brackets), separated by commas";
        if (!comma)
            return NULL;
    }
}

/* ===== the bearer token ===== */

char *cms_token_url_default(const char *base_url)
{
    CURLU *u = curl_url();
    char *host = NULL, *out = NULL;
    size_t n;

    if (u && curl_url_set(u, CURLUPART_URL, base_url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && host && *host) {
        n = strlen("https://") + strlen(host) + strlen(":443" CMS_TOKEN_PATH) + 1;
        out = malloc(n);
        if (out)
            snprintf(out, n, "https://%s:443%s", host, CMS_TOKEN_PATH);
    }
    curl_free(host);
    curl_url_cleanup(u);
    return out;
}

void cms_token_init(cms_token *t)
{
    memset(t, 0, sizeof *t);
    cms_secret_init(&t->secret);
}

void cms_token_wipe(cms_token *t)
{
    cms_secret_free(&t->secret);
    t->value = NULL;
    t->len = 0;
    t->expires = 0;
}

int cms_token_store(cms_token *t, const char *v, size_t n, double expires)
{
    cms_secret next;

    cms_secret_init(&next);
    if (cms_secret_set(&next, v, n) != 0)
        return -1;
    cms_token_wipe(t);
    t->secret = next; /* the mapping moves with the struct */
    t->value = (const char *)t->secret.data;
    t->len = t->secret.len;
    t->expires = expires;
    t->gen++;
    return 0;
}

int cms_token_usable(const cms_token *t, double now)
{
    return t->value && (t->expires == 0 || now < t->expires);
}

double cms_token_expiry(double now, double expires_in)
{
    double margin = expires_in / 10 < 60 ? expires_in / 10 : 60;

    return expires_in > 0 ? now + expires_in - margin : 0;
}

int cms_token_value_ok(const char *v, size_t n)
{
    size_t i;

    if (n == 0 || n > CMS_TOKEN_MAX)
        return 0;
    for (i = 0; i < n; i++)
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7F)
            return 0;
    return 1;
}

int cms_token_refused(const cms_response *r, const char *url, cms_json_fn json, void *ud,
                      cms_error *err)
{
    cms_json_fields f;
    char excerpt[160];
    const char *detail = NULL, *sep;
    int decoded;

    memset(&f, 0, sizeof f);
    decoded = !r->truncated && json && cms_sniff((const unsigned char *)r->body.data,
                                                 r->body.len) == CMS_FMT_JSON &&
              json(ud, r->body.data, r->body.len, &f) == 0;
    if (decoded)
        detail = *f.desc ? f.desc : *f.message ? f.message : NULL;
    if (!detail) {
        cms_excerpt(r->body.data, r->body.len, excerpt, sizeof excerpt);
        detail = excerpt;
    }
    sep = *detail ? ": " : "";
    if (r->status / 100 == 2)
        cms_error_set(err, CMS_E_AUTH, "the token endpoint %s answered HTTP %ld without an "
                      "AccessToken%s%s", url, r->status, sep, detail);
    else if (r->status == 401 || r->status == 403)
        cms_error_set(err, CMS_E_AUTH, "the token endpoint %s refused the AK/SK (HTTP %ld)%s%s",
                      url, r->status, sep, detail);
    else {
        cms_error_set(err, CMS_E_HTTP, "the token endpoint %s answered HTTP %ld%s%s", url,
                      r->status, sep, detail);
        err->retryable = r->status == 429 || r->status == 502 || r->status == 503 ||
                         r->status == 504;
        err->retry_after = r->retry_after;
    }
    err->status = r->status;
    cms_strlcpy(err->result_code, f.code, sizeof err->result_code);
    cms_strlcpy(err->result_desc, f.desc, sizeof err->result_desc);
    return -1;
}

/* ===== secrets in server text ===== */

static void scrub(char *text, const char *secret, size_t n)
{
    char *hit;

    while ((hit = strstr(text, secret)) != NULL) { /* "***" is never longer: n >= 8 */
        memcpy(hit, "***", 3);
        memmove(hit + 3, hit + n, strlen(hit + n) + 1);
    }
}

void cms_error_scrub(cms_error *e, const char *secret, size_t n)
{
    char s[CMS_TOKEN_MAX + 1];

    if (!secret || n < 8 || n > CMS_TOKEN_MAX || memchr(secret, '\0', n))
        return; /* (an SK with NUL bytes cannot appear in C text whole) */
    memcpy(s, secret, n);
    s[n] = '\0';
    scrub(e->message, s, n);
    scrub(e->result_desc, s, n);
    scrub(e->result_code, s, n);
    OPENSSL_cleanse(s, sizeof s);
}
