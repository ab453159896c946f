/*
 * fuzz_request: the request validator and the JSON body builder
 * (cms_request_validate, cms_request_build), plus the UTF-8 and date-time
 * checks they rest on, each against an independent reference, and the
 * "did you mean" hint for an unknown key (the first field taken as a key).
 *
 * Input: one control byte, then the five fields in the documented order
 * (callID, workNo, beginTime, callerNo, calleeNo) separated by 0xFF, a byte
 * no UTF-8 text holds. Fields past the last separator are absent; a field
 * that is exactly 0xFE is absent too. Fields may hold NULs (Lua strings do).
 * The control byte's low nibble makes the escaper fail at that call (0:
 * never), as lua-cjson's encoder may when memory runs out.
 *
 * The escaper is a small strict one (the module's is lua-cjson's, which
 * needs Lua). The body it helps build is read back by a checker that knows
 * exactly what that escaper writes: the five keys in order, each value equal
 * to the field's bytes, valid UTF-8, no raw control characters.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/cms_request.h"
#include "../src/cms_text.h"

/* A broken invariant: say which, then abort so libFuzzer keeps the input. */
#define CHECK(c) ((c) ? (void)0 : check_failed(#c, __LINE__))

static void check_failed(const char *what, int line)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
    abort();
}

typedef struct escaper {
    int calls;
    int fail_at; /* 0: never */
} escaper;

static int strict_escape(void *ud, const char *s, size_t n, cms_buf *out)
{
    static const char hex[] = "0123456789abcdef";
    escaper *e = ud;
    size_t i;
    int rc;

    if (++e->calls == e->fail_at)
        return -1;
    CHECK(cms_utf8_valid(s, n)); /* the builder escapes validated text only */
    rc = cms_buf_append_char(out, '"');
    for (i = 0; i < n && rc == 0; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            rc = cms_buf_append_char(out, '\\') | cms_buf_append_char(out, (char)c);
        } else if (c < 0x20 || c == 0x7F) {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            rc = cms_buf_append(out, u, sizeof u);
        } else {
            rc = cms_buf_append_char(out, (char)c);
        }
    }
    return rc | cms_buf_append_char(out, '"');
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Read the string literal at b[*pos] (as strict_escape writes them) and
   check it decodes to want[0..n). */
static void expect_string(const char *b, size_t len, size_t *pos, const char *want, size_t n)
{
    size_t i = *pos, got = 0;

    CHECK(i < len && b[i] == '"');
    for (i++; i < len && b[i] != '"'; i++) {
        unsigned char c = (unsigned char)b[i];
        CHECK(c >= 0x20 && c != 0x7F); /* no raw control characters */
        if (c == '\\') {
            CHECK(i + 1 < len);
            if (b[i + 1] == 'u') {
                CHECK(i + 5 < len && b[i + 2] == '0' && b[i + 3] == '0');
                CHECK(hexval(b[i + 4]) >= 0 && hexval(b[i + 5]) >= 0);
                c = (unsigned char)(hexval(b[i + 4]) * 16 + hexval(b[i + 5]));
                i += 5;
            } else {
                CHECK(b[i + 1] == '"' || b[i + 1] == '\\');
                c = (unsigned char)b[++i];
            }
        }
        CHECK(got < n && (unsigned char)want[got] == c);
        got++;
    }
    CHECK(i < len && got == n);
    *pos = i + 1;
}

static void check_body(const cms_request *r, const cms_buf *body)
{
    size_t pos = 1;
    int i;

    CHECK(body->len > 0 && body->data[0] == '{' && body->data[body->len] == '\0');
    CHECK(memchr(body->data, '\0', body->len) == NULL);
    CHECK(cms_utf8_valid(body->data, body->len));
    for (i = 0; i < CMS_F__COUNT; i++) {
        const char *k = cms_request_fields[i];
        if (i) {
            CHECK(pos < body->len && body->data[pos] == ',');
            pos++;
        }
        expect_string(body->data, body->len, &pos, k, strlen(k));
        CHECK(pos < body->len && body->data[pos] == ':');
        pos++;
        expect_string(body->data, body->len, &pos, r->value[i] ? r->value[i] : "",
                      r->value[i] ? r->len[i] : 0);
    }
    CHECK(pos + 1 == body->len && body->data[pos] == '}');
}

/* Reference: UTF-8 through cms_text's decoder, a separate implementation. */
static int utf8_ref(const char *s, size_t n)
{
    size_t i = 0, k;
    unsigned long cp;

    while (i < n) {
        if ((k = cms_utf8_char(s + i, n - i, &cp)) == 0)
            return 0;
        i += k;
    }
    return 1;
}

/* Reference: 14 digits that timegm() gives back unchanged, from 1970 on. */
static int datetime_ref(const char *s, size_t n)
{
    struct tm tm, back;
    time_t t;
    int v[6], i, w[6] = {4, 2, 2, 2, 2, 2}, at = 0;

    if (n != 14)
        return 0;
    for (i = 0; i < 14; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    for (i = 0; i < 6; i++) {
        int k;
        v[i] = 0;
        for (k = 0; k < w[i]; k++)
            v[i] = v[i] * 10 + (s[at++] - '0');
    }
    if (v[0] < 1970)
        return 0;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = v[0] - 1900, tm.tm_mon = v[1] - 1, tm.tm_mday = v[2];
    tm.tm_hour = v[3], tm.tm_min = v[4], tm.tm_sec = v[5];
    t = timegm(&tm);
    if (!gmtime_r(&t, &back))
        return 0;
    return back.tm_year == v[0] - 1900 && back.tm_mon == v[1] - 1 && back.tm_mday == v[2] &&
           back.tm_hour == v[3] && back.tm_min == v[4] && back.tm_sec == v[5];
}

static int known_field(const char *name)
{
    return cms_request_field_index(name) >= 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    escaper esc = {0, 0};
    cms_request r;
    cms_error err, verr;
    cms_buf body;
    int i, rc, vrc;

    if (size < 1)
        return 0;
    esc.fail_at = data[0] & 15;
    cms_request_init(&r);
    for (i = 0; i < CMS_F__COUNT && p <= end; i++) {
        const char *sep = memchr(p, 0xFF, (size_t)(end - p));
        size_t n = sep ? (size_t)(sep - p) : (size_t)(end - p);
        if (!(n == 1 && (unsigned char)p[0] == 0xFE)) {
            r.value[i] = p;
            r.len[i] = n;
        }
        CHECK(cms_utf8_valid(p, n) == utf8_ref(p, n));
        if (!sep)
            break;
        p = sep + 1;
    }
    if (r.value[CMS_F_BEGINTIME])
        CHECK(cms_datetime14_valid(r.value[CMS_F_BEGINTIME], r.len[CMS_F_BEGINTIME]) ==
              datetime_ref(r.value[CMS_F_BEGINTIME], r.len[CMS_F_BEGINTIME]));

    if (r.value[0]) { /* the first field as an unknown key: a "did you mean" hint */
        char *name = strndup(r.value[0], r.len[0]);
        const char *hint;
        CHECK(name != NULL);
        hint = cms_suggest(name, cms_request_fields, CMS_F__COUNT);
        CHECK(!hint || known_field(hint));
        CHECK(!known_field(name) || (hint && strcmp(hint, name) == 0));
        free(name);
    }
    cms_error_clear(&verr);
    vrc = cms_request_validate(&r, &verr);
    cms_error_clear(&err);
    cms_buf_init(&body);
    rc = cms_request_build(&r, strict_escape, &esc, &body, &err);
    if (rc == 0) {
        CHECK(vrc == 0 && err.kind == CMS_OK);
        check_body(&r, &body);
    } else if (vrc != 0) {
        /* the build refuses what validation refuses, with the same error */
        CHECK(err.kind == CMS_E_INVALID && known_field(err.field));
        CHECK(strcmp(err.message, verr.message) == 0 && esc.calls == 0);
    } else {
        CHECK(err.kind == CMS_E_NOMEM && esc.fail_at > 0 && esc.calls == esc.fail_at);
    }
    CHECK(rc == 0 || memchr(err.message, '\0', sizeof err.message) != NULL);
    CHECK(rc == 0 || cms_utf8_valid(err.message, strlen(err.message)));
    cms_buf_free(&body);
    return 0;
}
