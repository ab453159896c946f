/*
 * fuzz_classify: what the module makes of an answer that is not a recording
 * (cms_sniff, cms_sniff_ready, cms_excerpt, cms_classify_status,
 * cms_classify_result, and cms_classify_answer of src/cms_job.c, which puts
 * them together).
 *
 * Input: 4 header bytes, then up to three fields separated by 0xFF (what
 * the JSON decoder says resultCode, resultDesc and message are), then the
 * body: everything after the last separator read.
 *   byte 0-1  the HTTP status, 0 to 999 (big-endian, modulo 1000)
 *   byte 2    bit 0: the body was truncated; bit 1: the body is not JSON to
 *             the decoder; bits 2-3: Retry-After absent, 0, byte 3, or huge;
 *             bit 4: resultCode absent; bit 5: resultDesc absent
 *   byte 3    the excerpt's buffer size (1 to 256), and a Retry-After value
 *
 * The JSON callback does what the binding's does with lua-cjson's result:
 * fields cut to their buffers on a UTF-8 boundary and cleaned. Every message
 * must then be printable UTF-8 (the binding cleans messages once more, but
 * the core should not need it) and every field within its buffer.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/cms_classify.h"
#include "../src/cms_job.h"
#include "../src/cms_text.h"

/* A broken invariant: say which, then abort so libFuzzer keeps the input. */
#define CHECK(c) ((c) ? (void)0 : check_failed(#c, __LINE__))

static void check_failed(const char *what, int line)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
    abort();
}

typedef struct input {
    const char *field[3]; /* resultCode, resultDesc, message: NUL-terminated copies */
    int not_json;
    const char *body;
    size_t body_len;
    int calls;
} input;

/* The offset of the first byte after a UTF-8 BOM and blanks (as cms_sniff). */
static size_t blank_prefix(const unsigned char *p, size_t n)
{
    size_t i = n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;

    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    return i;
}

static void copy_clean(char *out, size_t cap, const char *s)
{
    cms_strlcpy(out, s, cap);
    cms_text_clean(out);
}

static int fake_json(void *ud, const char *body, size_t len, cms_json_fields *f)
{
    input *in = ud;
    size_t i;

    in->calls++;
    CHECK(body == in->body && len == in->body_len);
    i = blank_prefix((const unsigned char *)body, len);
    CHECK(i < len && body[i] == '{'); /* only what sniffs as a JSON object */
    if (in->not_json)
        return -1;
    copy_clean(f->code, sizeof f->code, in->field[0]);
    copy_clean(f->desc, sizeof f->desc, in->field[1]);
    copy_clean(f->message, sizeof f->message, in->field[2]);
    return 0;
}

static int terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static void check_error(const cms_error *e)
{
    CHECK(e->kind > CMS_OK && e->kind < CMS_E__COUNT);
    CHECK(terminated(e->message, sizeof e->message) && e->message[0] != '\0');
    CHECK(cms_text_printable(e->message, strlen(e->message)));
    CHECK(terminated(e->result_code, sizeof e->result_code));
    CHECK(cms_text_printable(e->result_code, strlen(e->result_code)));
    CHECK(terminated(e->result_desc, sizeof e->result_desc));
    CHECK(cms_text_printable(e->result_desc, strlen(e->result_desc)));
}

/* Once cms_sniff_ready says the first k bytes are enough, more bytes never
   change the format (unless all k were blank: then the cap was reached). */
static void check_sniff(const unsigned char *p, size_t n)
{
    static const size_t probes[] = {CMS_SNIFF_MAX - 1, CMS_SNIFF_MAX, CMS_SNIFF_MAX + 1};
    cms_format whole = cms_sniff(p, n);
    size_t k, i;

    CHECK(whole >= CMS_FMT_UNKNOWN && whole <= CMS_FMT_TEXT);
    CHECK(cms_format_name(whole) != NULL && cms_format_ext(whole) != NULL);
    for (k = 0; k <= n && k <= 64 + 3; k++)
        if (cms_sniff_ready(p, k) && blank_prefix(p, k) < k)
            CHECK(cms_sniff(p, k) == whole);
    for (i = 0; i < 3; i++)
        if (probes[i] <= n && cms_sniff_ready(p, probes[i]) &&
            blank_prefix(p, probes[i]) < probes[i])
            CHECK(cms_sniff(p, probes[i]) == whole);
    CHECK(n < CMS_SNIFF_MAX || cms_sniff_ready(p, n));
}

static void check_excerpt(const char *p, size_t n, size_t cap)
{
    char *out = malloc(cap); /* exactly cap bytes: ASan sees any overrun */
    size_t len;

    CHECK(out != NULL);
    cms_excerpt(p, n, out, cap);
    len = strnlen(out, cap);
    CHECK(len < cap);
    CHECK(cms_text_printable(out, len) && !memchr(out, '\n', len) && !memchr(out, '\r', len));
    if (p) { /* a short printable line is shown whole, to its last byte */
        size_t skip = blank_prefix((const unsigned char *)p, n);
        if (n - skip < cap && cms_text_printable(p + skip, n - skip))
            CHECK(len == n - skip && memcmp(out, p + skip, len) == 0);
    }
    free(out);
}

static void check_status(long status, const char *detail, long retry_after)
{
    cms_error e;
    int auth = status == 401 || status == 403;

    cms_error_clear(&e);
    CHECK(cms_classify_status(status, detail, retry_after, &e) == -1);
    check_error(&e);
    CHECK(e.kind == (auth ? CMS_E_AUTH : CMS_E_HTTP) && e.status == status);
    CHECK(e.retryable == (status == 429 || status == 502 || status == 503 || status == 504));
    CHECK(e.retry_after == retry_after);
}

static void check_result(long status, const char *code, const char *desc)
{
    cms_error e;

    cms_error_clear(&e);
    CHECK(cms_classify_result(status, code, desc, &e) == -1);
    check_error(&e);
    if (code && strcmp(code, "0") != 0) {
        CHECK(e.kind == CMS_E_API && e.retryable == cms_result_is_flow_control(code));
        CHECK(strncmp(e.result_code, code, strlen(e.result_code)) == 0);
    } else {
        CHECK(e.kind == CMS_E_PROTOCOL && !e.retryable);
    }
}

static void check_answer(long status, input *in, int truncated, long retry_after)
{
    cms_response r;
    cms_error e;
    cms_format fmt = cms_sniff((const unsigned char *)in->body, in->body_len);

    cms_response_init(&r);
    r.status = status;
    /* as cms_buf holds it: NULL when nothing came, else NUL-terminated */
    r.body.data = (char *)in->body;
    r.body.len = in->body_len;
    r.body.cap = in->body ? in->body_len + 1 : 0;
    r.truncated = truncated;
    r.retry_after = retry_after;
    cms_error_clear(&e);
    in->calls = 0;
    CHECK(cms_classify_answer(&r, fake_json, in, &e) == -1);
    check_error(&e);
    CHECK(e.status == status && e.retry_after == retry_after);
    CHECK(in->calls == (fmt == CMS_FMT_JSON && !truncated));
    if (status / 100 != 2)
        CHECK(e.kind == CMS_E_AUTH || e.kind == CMS_E_HTTP);
    else
        CHECK(e.kind == CMS_E_PROTOCOL || e.kind == CMS_E_API);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const long huge = LONG_MAX / 1000;
    const char *p, *end = (const char *)data + size;
    char *fields[3] = {NULL, NULL, NULL}, *body = NULL;
    input in;
    long status, retry_after = -1;
    size_t cap;
    int flags, i;

    if (size < 4)
        return 0;
    status = ((long)data[0] << 8 | data[1]) % 1000;
    flags = data[2];
    cap = (size_t)data[3] + 1;
    switch ((flags >> 2) & 3) {
    case 1: retry_after = 0; break;
    case 2: retry_after = data[3]; break;
    case 3: retry_after = huge; break;
    }
    memset(&in, 0, sizeof in);
    p = (const char *)data + 4;
    for (i = 0; i < 3; i++) {
        const char *sep = memchr(p, 0xFF, (size_t)(end - p));
        size_t n = sep ? (size_t)(sep - p) : 0;
        fields[i] = strndup(sep ? p : "", n); /* a NUL ends the text, as in C */
        CHECK(fields[i] != NULL);
        in.field[i] = fields[i];
        if (sep)
            p = sep + 1;
    }
    in.body_len = (size_t)(end - p);
    if (in.body_len) {
        body = malloc(in.body_len + 1);
        CHECK(body != NULL);
        memcpy(body, p, in.body_len);
        body[in.body_len] = '\0';
    }
    in.body = body;
    in.not_json = flags & 2;

    check_sniff((const unsigned char *)p, in.body_len);
    check_excerpt(body, in.body_len, cap);
    {
        char excerpt[160];
        cms_excerpt(body, in.body_len, excerpt, sizeof excerpt);
        check_status(status, excerpt, retry_after);
    }
    {
        char code[32], desc[256];
        copy_clean(code, sizeof code, fields[0]);
        copy_clean(desc, sizeof desc, fields[1]);
        check_result(status, flags & 16 ? NULL : code, flags & 32 ? NULL : desc);
    }
    check_answer(status, &in, flags & 1, retry_after);

    free(body);
    for (i = 0; i < 3; i++)
        free(fields[i]);
    return 0;
}
