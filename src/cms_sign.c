/* cms_sign: auth-v2 canonical request and HMAC-SHA256 (see cms_sign.h). */
#include "cms_sign.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cms_request.h" /* cms_datetime14_valid */

#define NOMEM(err) cms_error_set((err), CMS_E_NOMEM, "out of memory while signing")

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

int cms_normalize(cms_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;

    if (cms_buf_reserve(out, n * 3) != 0)
        return -1;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c)) {
            out->data[out->len++] = (char)c;
        } else {
            out->data[out->len++] = '%';
            out->data[out->len++] = hex[c >> 4];
            out->data[out->len++] = hex[c & 15];
        }
    }
    out->data[out->len] = '\0';
    return 0;
}

int cms_timestamp_now(char out[CMS_TIMESTAMP_SIZE])
{
    time_t now = time(NULL);
    struct tm tm;

    if (now == (time_t)-1 || !gmtime_r(&now, &tm))
        return -1;
    return strftime(out, CMS_TIMESTAMP_SIZE, "%Y-%m-%dT%H:%M:%SZ", &tm) ? 0 : -1;
}

void cms_signature_init(cms_signature *s)
{
    cms_buf_init(&s->canonical_request);
    cms_buf_init(&s->signed_headers);
    cms_buf_init(&s->authorization);
    cms_buf_init(&s->string_to_sign);
    s->signing_key[0] = '\0';
    s->signature[0] = '\0';
}

void cms_signature_free(cms_signature *s)
{
    cms_buf_free(&s->canonical_request);
    cms_buf_free(&s->signed_headers);
    cms_buf_free_secret(&s->authorization); /* a bearer token travels in it */
    cms_buf_free(&s->string_to_sign);
    OPENSSL_cleanse(s->signing_key, sizeof s->signing_key);
    s->signature[0] = '\0';
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Render each pair with `render`, sort the strings, join them with `sep`. */
typedef int (*render_fn)(cms_buf *out, const cms_kv *kv);

static int join_sorted(cms_buf *out, const cms_kv *kv, size_t n, char sep,
                       render_fn render)
{
    char *items[CMS_SIGN_MAX_PAIRS];
    size_t i, made = 0;
    int rc = -1;

    for (made = 0; made < n; made++) {
        cms_buf one;
        cms_buf_init(&one);
        if (render(&one, &kv[made]) != 0 || !one.data) {
            cms_buf_free(&one);
            goto done;
        }
        items[made] = cms_buf_steal(&one, NULL);
    }
    qsort(items, n, sizeof items[0], cmp_str);
    for (i = 0; i < n; i++) {
        if ((i && cms_buf_append_char(out, sep) != 0) ||
            cms_buf_append_str(out, items[i]) != 0)
            goto done;
    }
    rc = 0;
done:
    for (i = 0; i < made; i++)
        free(items[i]);
    return rc;
}

static int render_query(cms_buf *out, const cms_kv *kv)
{
    if (cms_normalize(out, kv->name, kv->name_len) != 0 ||
        cms_buf_append_char(out, '=') != 0)
        return -1;
    return cms_normalize(out, kv->value, kv->value_len);
}

static int append_case(cms_buf *out, const char *s, size_t n, int upper)
{
    size_t i;

    if (cms_buf_reserve(out, n) != 0)
        return -1;
    for (i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        out->data[out->len++] = (char)(upper ? toupper(c) : tolower(c));
    }
    out->data[out->len] = '\0';
    return 0;
}

static int render_name(cms_buf *out, const cms_kv *kv)
{
    return append_case(out, kv->name, kv->name_len, 0);
}

static int render_header(cms_buf *out, const cms_kv *kv)
{
    const char *v = kv->value;
    size_t n = kv->value_len;
    cms_buf name;
    int rc;

    while (n && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    cms_buf_init(&name);
    rc = append_case(&name, kv->name, kv->name_len, 0);
    if (rc == 0)
        rc = cms_normalize(out, name.data, name.len);
    cms_buf_free(&name);
    if (rc != 0 || cms_buf_append_char(out, ':') != 0)
        return -1;
    return cms_normalize(out, v, n);
}

static int check_input(const cms_sign_input *in, cms_error *err)
{
    size_t i, j;

    if (!in->ak || !*in->ak)
        return cms_error_field(err, "ak", "'ak' is missing or empty");
    if (strchr(in->ak, '/'))
        return cms_error_field(err, "ak", "'ak' must not contain '/'");
    if (!in->sk || in->sk_len == 0)
        return cms_error_field(err, "sk", "'sk' is missing or empty");
    if (!in->method || !*in->method)
        return cms_error_field(err, "method", "'method' is missing or empty");
    if (!in->path)
        return cms_error_field(err, "path", "'path' is missing");
    if (in->path[0] != '/')
        return cms_error_field(err, "path", "'path' must start with '/'");
    if (!in->timestamp || !*in->timestamp || strchr(in->timestamp, '/'))
        return cms_error_field(err, "timestamp",
                               "'timestamp' is missing or contains '/'");
    if (in->nheaders == 0)
        return cms_error_field(err, "headers", "at least one header must be signed");
    if (in->nheaders > CMS_SIGN_MAX_PAIRS || in->nquery > CMS_SIGN_MAX_PAIRS)
        return cms_error_field(err, in->nquery > CMS_SIGN_MAX_PAIRS ? "query" : "headers",
                               "too many entries (at most %d)", CMS_SIGN_MAX_PAIRS);
    for (i = 0; i < in->nheaders; i++) {
        const cms_kv *h = &in->headers[i];
        if (h->name_len == 0 || memchr(h->name, ';', h->name_len) ||
            memchr(h->name, ':', h->name_len))
            return cms_error_field(err, "headers", "header names must be non-empty "
                                   "and contain no ';' or ':'");
        for (j = 0; j < i; j++)
            if (h->name_len == in->headers[j].name_len &&
                strncasecmp(h->name, in->headers[j].name, h->name_len) == 0)
                return cms_error_field(err, "headers", "header '%.*s' given twice",
                                       (int)(h->name_len > 64 ? 64 : h->name_len), h->name);
    }
    return 0;
}

static int hmac_hex(const void *key, size_t key_len, const void *msg,
                    size_t msg_len, char hex_out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0, i;

    if (!HMAC(EVP_sha256(), key, (int)key_len, msg, msg_len, mac, &mac_len) ||
        mac_len != 32)
        return -1;
    for (i = 0; i < mac_len; i++) {
        hex_out[2 * i] = hex[mac[i] >> 4];
        hex_out[2 * i + 1] = hex[mac[i] & 15];
    }
    hex_out[64] = '\0';
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

static int build_canonical(const cms_sign_input *in, cms_buf *cr,
                           const cms_buf *signed_headers)
{
    if (append_case(cr, in->method, strlen(in->method), 1) != 0 ||
        cms_buf_append_char(cr, '\n') != 0 ||
        cms_buf_append_str(cr, in->path) != 0 ||
        cms_buf_append_char(cr, '\n') != 0)
        return -1;
    if (in->nquery &&
        (join_sorted(cr, in->query, in->nquery, '&', render_query) != 0 ||
         cms_buf_append_char(cr, '\n') != 0))
        return -1;
    if (cms_buf_append(cr, signed_headers->data, signed_headers->len) != 0 ||
        cms_buf_append_char(cr, '\n') != 0 ||
        join_sorted(cr, in->headers, in->nheaders, '\n', render_header) != 0 ||
        cms_buf_append_char(cr, '\n') != 0)
        return -1;
    return cms_normalize(cr, in->body ? in->body : "", in->body_len);
}

int cms_sign(const cms_sign_input *in, cms_signature *out, cms_error *err)
{
    cms_buf prefix;
    int rc;

    if (check_input(in, err) != 0)
        return -1;
    if (join_sorted(&out->signed_headers, in->headers, in->nheaders, ';',
                    render_name) != 0 ||
        build_canonical(in, &out->canonical_request, &out->signed_headers) != 0)
        return NOMEM(err);

    cms_buf_init(&prefix);
    rc = cms_buf_append_str(&prefix, "auth-v2/") | cms_buf_append_str(&prefix, in->ak) |
         cms_buf_append_char(&prefix, '/') | cms_buf_append_str(&prefix, in->timestamp) |
         cms_buf_append_char(&prefix, '/') |
         cms_buf_append(&prefix, out->signed_headers.data, out->signed_headers.len);
    if (rc != 0) {
        cms_buf_free(&prefix);
        return NOMEM(err);
    }
    if (hmac_hex(in->sk, in->sk_len, prefix.data, prefix.len, out->signing_key) != 0 ||
        hmac_hex(out->signing_key, 64, out->canonical_request.data,
                 out->canonical_request.len, out->signature) != 0) {
        cms_buf_free(&prefix);
        return cms_error_set(err, CMS_E_PROTOCOL, "HMAC-SHA256 failed in OpenSSL");
    }
    rc = cms_buf_append(&out->authorization, prefix.data, prefix.len) |
         cms_buf_append_char(&out->authorization, '/') |
         cms_buf_append_str(&out->authorization, out->signature);
    cms_buf_free(&prefix);
    return rc != 0 ? NOMEM(err) : 0;
}

/* ===== SDK-HMAC-SHA256 (the API gateway's scheme, see cms_sign.h) ===== */

static int is_digits(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

int cms_sdk_date(const char *ts, char out[CMS_SDK_DATE_SIZE])
{
    char d[15];
    size_t n = ts ? strlen(ts) : 0;

    if (n == 16 && ts[8] == 'T' && ts[15] == 'Z') { /* 20241031T140652Z */
        memcpy(d, ts, 8);
        memcpy(d + 8, ts + 9, 6);
    } else if (n == 20 && ts[4] == '-' && ts[7] == '-' && ts[10] == 'T' && ts[13] == ':' &&
               ts[16] == ':' && ts[19] == 'Z') { /* 2024-10-31T14:06:52Z */
        memcpy(d, ts, 4);
        memcpy(d + 4, ts + 5, 2);
        memcpy(d + 6, ts + 8, 2);
        memcpy(d + 8, ts + 11, 2);
        memcpy(d + 10, ts + 14, 2);
        memcpy(d + 12, ts + 17, 2);
    } else {
        return -1;
    }
    d[14] = '\0';
    if (!is_digits(d, 14) || !cms_datetime14_valid(d, 14))
        return -1;
    snprintf(out, CMS_SDK_DATE_SIZE, "%.8sT%.6sZ", d, d + 8);
    return 0;
}

int cms_sdk_date_now(char out[CMS_SDK_DATE_SIZE])
{
    time_t now = time(NULL);
    struct tm tm;

    if (now == (time_t)-1 || !gmtime_r(&now, &tm))
        return -1;
    return strftime(out, CMS_SDK_DATE_SIZE, "%Y%m%dT%H%M%SZ", &tm) ? 0 : -1;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One path segment as the gateway's SDKs sign it: %XX decoded, then encoded
   again with only the unreserved bytes kept. */
static int append_segment(cms_buf *out, const char *s, size_t n)
{
    cms_buf raw;
    size_t i;
    int rc = 0;

    cms_buf_init(&raw);
    for (i = 0; i < n && rc == 0; i++) {
        if (s[i] == '%' && i + 2 < n && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
            rc = cms_buf_append_char(&raw, (char)(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
            i += 2;
        } else {
            rc = cms_buf_append_char(&raw, s[i]);
        }
    }
    if (rc == 0)
        rc = cms_normalize(out, raw.data ? raw.data : "", raw.len);
    cms_buf_free(&raw);
    return rc;
}

/* The canonical path: each segment encoded, and always a trailing '/'. */
static int apig_path(cms_buf *out, const char *path)
{
    const char *p = path, *slash;

    for (;;) {
        slash = strchr(p, '/');
        if (append_segment(out, p, slash ? (size_t)(slash - p) : strlen(p)) != 0)
            return -1;
        if (!slash)
            break;
        if (cms_buf_append_char(out, '/') != 0)
            return -1;
        p = slash + 1;
    }
    if (out->len == 0 || out->data[out->len - 1] != '/')
        return cms_buf_append_char(out, '/');
    return 0;
}

/* A signed header: its lowercase name, for sorting by name. */
typedef struct apig_header {
    char *name;
    const cms_kv *kv;
} apig_header;

static int cmp_apig_header(const void *a, const void *b)
{
    return strcmp(((const apig_header *)a)->name, ((const apig_header *)b)->name);
}

/* "name:trimmed value\n" for each header, sorted by name. */
static int apig_headers(cms_buf *out, const cms_kv *kv, size_t n)
{
    apig_header items[CMS_SIGN_MAX_PAIRS + 1];
    size_t i, made;
    int rc = -1;

    for (made = 0; made < n; made++) {
        cms_buf name;
        cms_buf_init(&name);
        if (append_case(&name, kv[made].name, kv[made].name_len, 0) != 0) {
            cms_buf_free(&name);
            goto done;
        }
        items[made].name = cms_buf_steal(&name, NULL);
        items[made].kv = &kv[made];
    }
    qsort(items, n, sizeof items[0], cmp_apig_header);
    for (i = 0; i < n; i++) {
        const char *v = items[i].kv->value;
        size_t vn = items[i].kv->value_len;
        while (vn && (*v == ' ' || *v == '\t')) {
            v++;
            vn--;
        }
        while (vn && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
            vn--;
        if (cms_buf_append_str(out, items[i].name) != 0 || cms_buf_append_char(out, ':') != 0 ||
            cms_buf_append(out, v, vn) != 0 || cms_buf_append_char(out, '\n') != 0)
            goto done;
    }
    rc = 0;
done:
    for (i = 0; i < made; i++)
        free(items[i].name);
    return rc;
}

static int sha256_hex(const void *p, size_t n, char hex_out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0, i;

    if (!EVP_Digest(p, n, md, &len, EVP_sha256(), NULL) || len != 32)
        return -1;
    for (i = 0; i < len; i++) {
        hex_out[2 * i] = hex[md[i] >> 4];
        hex_out[2 * i + 1] = hex[md[i] & 15];
    }
    hex_out[64] = '\0';
    return 0;
}

/* The headers to sign: the given ones and x-sdk-date. */
static int apig_input(const cms_sign_input *in, const char *date, cms_kv *all, cms_error *err)
{
    size_t i;
    int host = 0;

    if (in->nheaders + 1 > CMS_SIGN_MAX_PAIRS)
        return cms_error_field(err, "headers", "too many entries (at most %d)",
                               CMS_SIGN_MAX_PAIRS - 1);
    for (i = 0; i < in->nheaders; i++) {
        const cms_kv *h = &in->headers[i];
        if (h->name_len == 10 && strncasecmp(h->name, "x-sdk-date", 10) == 0)
            return cms_error_field(err, "headers", "'x-sdk-date' comes from 'timestamp': "
                                   "give the timestamp instead of the header");
        host |= h->name_len == 4 && strncasecmp(h->name, "host", 4) == 0;
        all[i] = *h;
    }
    if (!host)
        return cms_error_field(err, "headers", "SDK-HMAC-SHA256 signs 'host': give it");
    all[i].name = "x-sdk-date";
    all[i].name_len = 10;
    all[i].value = date;
    all[i].value_len = strlen(date);
    return 0;
}

static int apig_canonical(const cms_sign_input *in, const cms_kv *all, size_t n,
                          cms_signature *out)
{
    cms_buf *cr = &out->canonical_request;
    char body_hash[65];

    if (sha256_hex(in->body ? in->body : "", in->body_len, body_hash) != 0)
        return -1;
    /* || keeps the order: each part is appended after the one before */
    return append_case(cr, in->method, strlen(in->method), 1) || cms_buf_append_char(cr, '\n') ||
           apig_path(cr, in->path) || cms_buf_append_char(cr, '\n') ||
           (in->nquery && join_sorted(cr, in->query, in->nquery, '&', render_query)) ||
           cms_buf_append_char(cr, '\n') || apig_headers(cr, all, n) ||
           cms_buf_append_char(cr, '\n') ||
           cms_buf_append(cr, out->signed_headers.data, out->signed_headers.len) ||
           cms_buf_append_char(cr, '\n') || cms_buf_append_str(cr, body_hash) ? -1 : 0;
}

int cms_sign_apig(const cms_sign_input *in, cms_signature *out, cms_error *err)
{
    cms_kv all[CMS_SIGN_MAX_PAIRS];
    char date[CMS_SDK_DATE_SIZE], cr_hash[65];
    cms_sign_input v = *in;

    if (cms_sdk_date(in->timestamp, date) != 0)
        return cms_error_field(err, "timestamp", "'timestamp' must be yyyyMMddTHHmmssZ or "
                               "yyyy-MM-ddTHH:mm:ssZ, a real UTC date-time");
    v.timestamp = date;
    if (check_input(&v, err) != 0 || apig_input(in, date, all, err) != 0)
        return -1;
    if (join_sorted(&out->signed_headers, all, in->nheaders + 1, ';', render_name) != 0 ||
        apig_canonical(in, all, in->nheaders + 1, out) != 0 ||
        sha256_hex(out->canonical_request.data, out->canonical_request.len, cr_hash) != 0 ||
        cms_buf_append_str(&out->string_to_sign, "SDK-HMAC-SHA256\n") != 0 ||
        cms_buf_append_str(&out->string_to_sign, date) != 0 ||
        cms_buf_append_char(&out->string_to_sign, '\n') != 0 ||
        cms_buf_append_str(&out->string_to_sign, cr_hash) != 0)
        return NOMEM(err);
    if (hmac_hex(in->sk, in->sk_len, out->string_to_sign.data, out->string_to_sign.len,
                 out->signature) != 0)
        return cms_error_set(err, CMS_E_PROTOCOL, "HMAC-SHA256 failed in OpenSSL");
    if (cms_buf_append_str(&out->authorization, "SDK-HMAC-SHA256 Access=") != 0 ||
        cms_buf_append_str(&out->authorization, in->ak) != 0 ||
        cms_buf_append_str(&out->authorization, ", SignedHeaders=") != 0 ||
        cms_buf_append(&out->authorization, out->signed_headers.data,
                       out->signed_headers.len) != 0 ||
        cms_buf_append_str(&out->authorization, ", Signature=") != 0 ||
        cms_buf_append_str(&out->authorization, out->signature) != 0)
        return NOMEM(err);
    return 0;
}
