/* cms_sign: auth-v2 canonical request and HMAC-SHA256 (see cms_sign.h). */
#include "cms_sign.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

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
    s->signing_key[0] = '\0';
    s->signature[0] = '\0';
}

void cms_signature_free(cms_signature *s)
{
    cms_buf_free(&s->canonical_request);
    cms_buf_free(&s->signed_headers);
    cms_buf_free(&s->authorization);
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
