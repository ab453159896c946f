/* cms_trace: the redacted CMSREC_DEBUG trace (see cms_trace.h). */
#include "cms_trace.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "cms_classify.h"
#include "cms_text.h"

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

/* A header whose value is a credential (a token, a session): the name's
   whole length is searched, whatever it is. */
static int sensitive(const char *name, size_t n)
{
    static const char *const words[] = {"cookie", "token", "secret", "password", "passwd",
                                        "api-key", "apikey", "session", "authorization"};
    size_t i, j, len;

    for (i = 0; i < sizeof words / sizeof words[0]; i++) {
        len = strlen(words[i]);
        for (j = 0; j + len <= n; j++)
            if (strncasecmp(name + j, words[i], len) == 0)
                return 1;
    }
    return 0;
}

/* A request line ("POST /path HTTP/1.1", "CONNECT host:443 HTTP/1.1") or a
   status line ("HTTP/1.1 200 OK"): shown as it is. */
static int start_line(const char *p, size_t n)
{
    size_t i = 0, sp;

    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0)
        return 1;
    while (i < n && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    if (i == 0 || i == n || p[i] != ' ')
        return 0;
    for (sp = ++i; sp < n && p[sp] != ' ' && p[sp] != '\t'; sp++)
        ;
    return sp > i && sp + 6 <= n && memcmp(p + sp, " HTTP/", 6) == 0 &&
           !memchr(p + sp + 1, ' ', n - sp - 1) && !memchr(p + sp + 1, '\t', n - sp - 1);
}

/* A header's name: before the colon, less the blanks before it (RFC 9112
   forbids them, a lenient peer reads past them); 0 when it is no name. */
static size_t header_name(const char *p, size_t n)
{
    const char *colon = memchr(p, ':', n);
    size_t len = colon ? (size_t)(colon - p) : 0;

    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    if (!len || memchr(p, ' ', len) || memchr(p, '\t', len))
        return 0;
    return len;
}

/* One header line (or the request or status line), redacted. Lines that are
   neither a start line nor "name: value" (a folded continuation of any
   header, included) are never shown: each comes in its own libcurl event,
   so which header they continue is unknown here, and obs-fold is obsolete
   (RFC 9112 5.2). */
static void header_line(FILE *out, unsigned id, char dir, const char *p, size_t n)
{
    const char *v;
    size_t name_len, vlen;
    int folded;
    char name[LINE_MAX_SHOWN / 2], text[LINE_MAX_SHOWN], line[sizeof name + sizeof text + 2];

    while (n && (p[n - 1] == '\r' || p[n - 1] == '\n'))
        n--;
    if (!n)
        return;
    folded = p[0] == ' ' || p[0] == '\t';
    name_len = folded ? 0 : header_name(p, n);
    if (!name_len) {
        if (!folded && start_line(p, n))
            shown(p, n, text, sizeof text);
        else
            snprintf(text, sizeof text, "<redacted> (%s)",
                     folded ? "a folded header line" : "not a header line");
        put(out, id, dir, text);
        return;
    }
    shown(p, name_len, name, sizeof name);
    for (v = (const char *)memchr(p, ':', n) + 1; v < p + n && (*v == ' ' || *v == '\t'); v++)
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

/* Text with every URL's userinfo redacted (cms_redact_userinfo) before it is
   cut: libcurl's notes quote proxy URLs as given, and a password can run
   past any cut. `cut`: the text itself may have been cut by libcurl. */
static void shown_redacted(const char *p, size_t n, int cut, char *out, size_t cap)
{
    char red[BODY_MAX_SHOWN];
    size_t len;

    while (n && (p[n - 1] == '\r' || p[n - 1] == '\n'))
        n--;
    len = cms_redact_userinfo(p, n, cut, red, sizeof red);
    shown(red, len, out, cap);
}

void cms_trace_event(FILE *out, unsigned id, curl_infotype type, const char *data,
                     size_t size)
{
    char text[BODY_MAX_SHOWN], line[BODY_MAX_SHOWN + 48];

    switch (type) {
    case CURLINFO_TEXT:
        shown_redacted(data, size, 1, text, LINE_MAX_SHOWN);
        if (*text)
            put(out, id, '*', text);
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
        shown_redacted(err->message, strlen(err->message), 0, text, sizeof text);
        snprintf(line, sizeof line, "failed (%s error): %s", cms_error_kind_name(err->kind),
                 text);
        put(out, id, '*', line);
    }
}
