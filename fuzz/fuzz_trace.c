/*
 * fuzz_trace: the redacted CMSREC_DEBUG trace (cms_trace_event,
 * cms_trace_redact_auth, cms_trace_request, cms_trace_outcome), which prints
 * what a server and libcurl say on the user's terminal or log.
 *
 * Input: byte 0 the libcurl event type (modulo 8: text, header in, header
 * out, data in, data out, SSL data in, SSL data out, end), byte 1 the size
 * of cms_trace_redact_auth's buffer (1 to 256), then the event's bytes.
 *
 * Checked: every line written is "cmsrec[1a2b] D text" with printable UTF-8
 * text; nothing is written for answer bodies and TLS records; and no
 * credential survives: the signature or token of an Authorization header,
 * the value of a cookie or token header, the password of a URL in
 * libcurl's notes. A credential is only looked for when it is 8 printable
 * bytes or more and occurs once in the input, so finding it in the output
 * cannot be a coincidence.
 */
#define _GNU_SOURCE /* open_memstream, memmem, strncasecmp */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../src/cms_text.h"
#include "../src/cms_trace.h"

/* A broken invariant: say which, then abort so libFuzzer keeps the input. */
#define CHECK(c) ((c) ? (void)0 : check_failed(#c, __LINE__))
#define ID 0x1a2b
#define MIN_SECRET 8

static void check_failed(const char *what, int line)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
    abort();
}

static int once(const char *hay, size_t n, const char *s, size_t k)
{
    const char *at = memmem(hay, n, s, k);

    return at && !memmem(at + 1, n - (size_t)(at + 1 - hay), s, k);
}

static int printable_ascii(const char *s, size_t k)
{
    size_t i;

    for (i = 0; i < k; i++)
        if (s[i] <= ' ' || s[i] >= 0x7F || s[i] == '?')
            return 0;
    return 1;
}

/* The first MIN_SECRET bytes of secret s (k bytes) of the input must not be
   in the output, when they cannot be there by chance. */
static void hidden(const char *in, size_t n, const char *s, size_t k, const char *out,
                   size_t len)
{
    if (k < MIN_SECRET || !printable_ascii(s, MIN_SECRET) || !once(in, n, s, MIN_SECRET))
        return;
    if (memmem(out, len, s, MIN_SECRET))
        fprintf(stderr, "secret '%.*s' shown in:\n%.*s", (int)k, s, (int)len, out);
    CHECK(!memmem(out, len, s, MIN_SECRET));
}

/* Every line "cmsrec[1a2b] D text\n", D one of `dirs`, text printable. */
static size_t check_lines(const char *out, size_t len, const char *dirs)
{
    static const char prefix[] = "cmsrec[1a2b] ";
    const char *p = out, *end = out + len;
    size_t lines = 0;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        CHECK(nl != NULL);
        CHECK((size_t)(nl - p) >= sizeof prefix + 1);
        CHECK(memcmp(p, prefix, sizeof prefix - 1) == 0);
        CHECK(strchr(dirs, p[sizeof prefix - 1]) && p[sizeof prefix] == ' ');
        CHECK(cms_text_printable(p, (size_t)(nl - p)));
        lines++;
        p = nl + 1;
    }
    return lines;
}

/* The credential in a header line sent, as the trace must hide it. */
static void header_secrets(const char *in, size_t n, const char *line, size_t k,
                           const char *out, size_t len)
{
    const char *colon = memchr(line, ':', k), *v, *end = line + k, *s;
    size_t name_len;

    if (!colon)
        return;
    name_len = (size_t)(colon - line);
    for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++)
        ;
    if ((name_len == 13 && !strncasecmp(line, "authorization", 13)) ||
        (name_len == 19 && !strncasecmp(line, "proxy-authorization", 19))) {
        if (end - v >= 8 && !memcmp(v, "auth-v2/", 8)) {
            for (s = end; s > v && s[-1] != '/'; s--)
                ;
        } else if ((s = memmem(v, (size_t)(end - v), "Signature=", 10)) != NULL) {
            s += 10;
        } else {
            s = memchr(v, ' ', (size_t)(end - v));
            s = s ? s + 1 : v;
        }
        hidden(in, n, s, (size_t)(end - s), out, len);
    } else if (name_len < 64 && !memchr(line, ' ', name_len)) {
        char name[64];
        size_t i;
        for (i = 0; i < name_len; i++)
            name[i] = (char)(line[i] >= 'A' && line[i] <= 'Z' ? line[i] + 32 : line[i]);
        name[name_len] = '\0';
        if (strstr(name, "cookie") || strstr(name, "token") || strstr(name, "secret") ||
            strstr(name, "password") || strstr(name, "session"))
            hidden(in, n, v, (size_t)(end - v), out, len);
    }
}

/* 1 if the scheme:// at p is quoted (as libcurl quotes URLs in its notes):
   a quote before the scheme, at the start or after a blank or '='. */
static int quoted(const char *in, const char *p)
{
    const char *s = p;

    while (s > in && (isalnum((unsigned char)s[-1]) || strchr("+.-", s[-1])))
        s--;
    return s > in && (s[-1] == '\'' || s[-1] == '"') &&
           (s - 1 == in || strchr(" \t\r\n=", s[-2]));
}

/* The password of each scheme://user:password@host in a note: up to a
   blank, or in a quoted URL (where blanks are the password's), a quote. */
static void url_secrets(const char *in, size_t n, const char *out, size_t len)
{
    const char *p = in, *end = in + n, *auth_end, *at, *colon, *stop;

    while ((p = memmem(p, (size_t)(end - p), "://", 3)) != NULL) {
        stop = quoted(in, p) ? "/'\"\r\n" : "/ \t'\"\r\n";
        p += 3;
        for (auth_end = p; auth_end < end && !strchr(stop, *auth_end) && *auth_end; auth_end++)
            ;
        at = memchr(p, '@', (size_t)(auth_end - p));
        if (!at || memchr(at + 1, '@', (size_t)(auth_end - at - 1)))
            continue; /* none, or a raw '@' in the password: not a URL */
        colon = memchr(p, ':', (size_t)(at - p));
        if (colon)
            hidden(in, n, colon + 1, (size_t)(at - colon - 1), out, len);
    }
}

static void check_event(int type, const char *in, size_t n)
{
    char *out = NULL;
    size_t len = 0, lines;
    FILE *f = open_memstream(&out, &len);

    CHECK(f != NULL);
    cms_trace_event(f, ID, (curl_infotype)type, in, n);
    CHECK(fclose(f) == 0);
    lines = check_lines(out, len, type == CURLINFO_HEADER_IN ? "<" : type == CURLINFO_TEXT
                                                                   ? "*" : ">");
    if (type == CURLINFO_HEADER_OUT || type == CURLINFO_HEADER_IN) {
        const char *p = in, *end = in + n;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t k = (size_t)((nl ? nl : end) - p);
            if (k && p[k - 1] == '\r')
                k--;
            if (type == CURLINFO_HEADER_OUT)
                header_secrets(in, n, p, k, out, len);
            p = nl ? nl + 1 : end;
        }
    } else if (type == CURLINFO_TEXT) {
        CHECK(lines <= 1);
        url_secrets(in, n, out, len);
    } else {
        CHECK(lines == (type == CURLINFO_DATA_OUT)); /* bodies in, TLS: never shown */
    }
    free(out);
}

static void check_redact_auth(const char *in, size_t n, size_t cap)
{
    char *out = malloc(cap); /* exactly cap bytes: ASan sees any overrun */
    size_t len;

    CHECK(out != NULL);
    cms_trace_redact_auth(in, n, out, cap);
    len = strnlen(out, cap);
    CHECK(len < cap && cms_text_printable(out, len));
    /* whole, or cut to the buffer (on a character: up to 3 bytes short) */
    CHECK(len + 4 >= cap || (len >= 10 && strcmp(out + len - 10, "<redacted>") == 0));
    free(out);
}

static void check_request_outcome(const char *in, size_t n, int flags)
{
    char *out = NULL, *url = strndup(in, n);
    size_t len = 0;
    cms_response r;
    cms_error e;
    FILE *f = open_memstream(&out, &len);

    CHECK(f != NULL && url != NULL);
    cms_trace_request(f, ID, url);
    cms_response_init(&r);
    r.status = flags & 1 ? 200 : 0;
    r.sunk = flags & 2;
    r.truncated = flags & 4;
    r.body.data = n ? (char *)in : NULL;
    r.body.len = n;
    cms_error_clear(&e);
    cms_error_set(&e, CMS_E_PROTOCOL, "%s", url); /* cut to the message's size */
    cms_trace_outcome(f, ID, &r, flags & 8 ? -1 : 0, &e);
    CHECK(fclose(f) == 0);
    CHECK(check_lines(out, len, "<>*") >= 1);
    free(out);
    free(url);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data + 2;
    size_t n;

    if (size < 2)
        return 0;
    n = size - 2;
    check_event(data[0] % 8, in, n);
    check_redact_auth(in, n, (size_t)data[1] + 1);
    check_request_outcome(in, n, data[0] >> 3);
    return 0;
}
