/* cms_trace: the redacted CMSREC_DEBUG trace (see cms_trace.h). */
#include "cms_trace.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "cms_classify.h"

#define LINE_MAX_SHOWN 240   /* a header or a note, as shown */
#define BODY_MAX_SHOWN 1024  /* the request body, an answer's excerpt */

unsigned cms_trace_id(const void *handle)
{
    return (unsigned)(((uintptr_t)handle >> 4) & 0xffffu);
}

static void put(FILE *out, unsigned id, char dir, const char *text)
{
    fprintf(out, "cmsrec[%04x] %c %s\n", id, dir, text);
}

/* `n` bytes as printable text of at most cap - 1 bytes, up to the first line end. */
static void shown(const char *p, size_t n, char *out, size_t cap)
{
    cms_excerpt(p, n, out, cap);
}

void cms_trace_redact_auth(const char *v, size_t n, char *out, size_t cap)
{
    static const char sig[] = "Signature=";
    const char *end = v + n, *cut = NULL, *p;
    char kept[LINE_MAX_SHOWN], whole[LINE_MAX_SHOWN + sizeof "<redacted>"];

    if (n >= 8 && memcmp(v, "auth-v2/", 8) == 0) { /* auth-v2/AK/time/headers/sig */
        for (p = v; p < end; p++)
            if (*p == '/')
                cut = p + 1;
    } else {
        for (p = v; p + sizeof sig - 1 <= end && !cut; p++)
            if (memcmp(p, sig, sizeof sig - 1) == 0)
                cut = p + sizeof sig - 1;
        if (!cut)
            for (p = v; p < end && !cut; p++)
                if (*p == ' ') /* "Bearer <token>": the scheme only */
                    cut = p + 1;
    }
    shown(v, cut ? (size_t)(cut - v) : 0, kept, sizeof kept);
    snprintf(whole, sizeof whole, "%s<redacted>", kept); /* kept ends with '/', ' ' or '=' */
    cms_strlcpy(out, whole, cap); /* a cut on a whole UTF-8 character */
}

/* A header whose value is a credential (a token, a session). */
static int sensitive(const char *name, size_t n)
{
    static const char *const words[] = {"cookie", "token", "secret", "password", "passwd",
                                        "api-key", "apikey", "session"};
    char low[64];
    size_t i;

    if (n >= sizeof low)
        n = sizeof low - 1;
    for (i = 0; i < n; i++)
        low[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
    low[n] = '\0';
    for (i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strstr(low, words[i]))
            return 1;
    return 0;
}

/* One header line (or the request or status line), redacted. */
static void header_line(FILE *out, unsigned id, char dir, const char *p, size_t n)
{
    const char *colon = memchr(p, ':', n), *v;
    size_t name_len, vlen;
    char name[64], text[LINE_MAX_SHOWN], line[sizeof name + sizeof text + 2];

    while (n && (p[n - 1] == '\r' || p[n - 1] == '\n'))
        n--;
    if (!n)
        return;
    name_len = colon ? (size_t)(colon - p) : 0;
    if (!colon || name_len >= sizeof name || memchr(p, ' ', name_len)) {
        shown(p, n, text, sizeof text); /* a request or status line */
        put(out, id, dir, text);
        return;
    }
    shown(p, name_len, name, sizeof name);
    for (v = colon + 1; v < p + n && (*v == ' ' || *v == '\t'); v++)
        ;
    vlen = (size_t)(p + n - v);
    if ((name_len == 13 && strncasecmp(p, "authorization", 13) == 0) ||
        (name_len == 19 && strncasecmp(p, "proxy-authorization", 19) == 0))
        cms_trace_redact_auth(v, vlen, text, sizeof text);
    else if (sensitive(p, name_len))
        snprintf(text, sizeof text, "<redacted>");
    else
        shown(v, vlen, text, sizeof text);
    snprintf(line, sizeof line, "%s: %s", name, text);
    put(out, id, dir, line);
}

/* Each line of a block of header lines (libcurl gives a request's at once). */
static void header_block(FILE *out, unsigned id, char dir, const char *p, size_t n)
{
    const char *end = p + n, *nl;

    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        nl = nl ? nl + 1 : end;
        header_line(out, id, dir, p, (size_t)(nl - p));
        p = nl;
    }
}

/* "scheme://user:password@host" -> "scheme://<redacted>@host", in place: libcurl's
   notes name proxy URLs (from http_proxy and the like) as they were given.
   `cut`: the text was cut, so a URL running to its end may have lost the
   '@' after its password: all of that URL after "://" goes. */
static void redact_userinfo(char *text, size_t cap, int cut)
{
    static const char mark[] = "<redacted>";
    char *p = text, *at, *end;
    size_t rest;

    while ((p = strstr(p, "://")) != NULL) {
        p += 3;
        end = p + strcspn(p, "/ '\"");
        at = memchr(p, '@', (size_t)(end - p));
        if (!at && cut && *end == '\0' && end > p) {
            if ((size_t)(p - text) + sizeof mark <= cap)
                memcpy(p, mark, sizeof mark);
            else
                *p = '\0';
            break;
        }
        if (!at)
            continue;
        if ((size_t)(p - text) + sizeof mark >= cap)
            break;
        rest = strlen(at) + 1;
        if ((size_t)(p - text) + sizeof mark - 1 + rest > cap)
            rest = cap - (size_t)(p - text) - (sizeof mark - 1);
        memmove(p + sizeof mark - 1, at, rest);
        memcpy(p, mark, sizeof mark - 1);
        text[cap - 1] = '\0';
        p += sizeof mark - 1;
    }
}

void cms_trace_event(FILE *out, unsigned id, curl_infotype type, const char *data,
                     size_t size)
{
    char text[BODY_MAX_SHOWN], line[BODY_MAX_SHOWN + 48];

    switch (type) {
    case CURLINFO_TEXT:
        /* redacted, then cut: cut first, a URL could lose the '@' that
           marks its password */
        shown(data, size, text, sizeof text);
        redact_userinfo(text, sizeof text, strlen(text) + 1 >= sizeof text);
        cms_strlcpy(line, text, LINE_MAX_SHOWN);
        if (*line)
            put(out, id, '*', line);
        break;
    case CURLINFO_HEADER_OUT:
    case CURLINFO_HEADER_IN:
        header_block(out, id, type == CURLINFO_HEADER_OUT ? '>' : '<', data, size);
        break;
    case CURLINFO_DATA_OUT: /* the JSON request: call IDs are not secret */
        shown(data, size, text, sizeof text);
        snprintf(line, sizeof line, "body (%zu bytes): %s", size, text);
        put(out, id, '>', line);
        break;
    default: /* answer bodies: see cms_trace_outcome; TLS records: never */
        break;
    }
}

void cms_trace_request(FILE *out, unsigned id, const char *url)
{
    char text[BODY_MAX_SHOWN], line[BODY_MAX_SHOWN + 8];

    shown(url, strlen(url), text, sizeof text);
    snprintf(line, sizeof line, "POST %s", text);
    put(out, id, '>', line);
}

void cms_trace_outcome(FILE *out, unsigned id, const cms_response *r, int rc,
                       const cms_error *err)
{
    char text[BODY_MAX_SHOWN], line[BODY_MAX_SHOWN + 160];

    if (r->sunk) {
        snprintf(line, sizeof line, "body: a recording (%s), %lld bytes%s, not shown",
                 cms_format_name(r->format), r->bytes, rc ? " so far" : "");
        put(out, id, '<', line);
    } else if (r->body.len) {
        shown(r->body.data, r->body.len, text, sizeof text);
        snprintf(line, sizeof line, "body (%zu bytes%s): %s", r->body.len,
                 r->truncated ? ", cut there" : "", text);
        put(out, id, '<', line);
    } else if (r->status > 0) {
        put(out, id, '<', "body: empty");
    }
    if (rc && err) {
        shown(err->message, strlen(err->message), text, sizeof text);
        snprintf(line, sizeof line, "failed (%s error): %s", cms_error_kind_name(err->kind),
                 text);
        put(out, id, '*', line);
    }
}
