/* cms_classify: format sniffing and status/result classification. */
#include "cms_classify.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cms_text.h"

/* Offset of the first byte after a UTF-8 BOM and whitespace. */
static size_t skip_blank(const unsigned char *p, size_t n)
{
    size_t i = n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;

    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    return i;
}

cms_format cms_sniff(const unsigned char *p, size_t n)
{
    size_t i;

    if (n >= 4 && memcmp(p, "PK\3\4", 4) == 0)
        return CMS_FMT_ZIP;
    if (n >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WAVE", 4) == 0)
        return CMS_FMT_WAV;
    /* answers may come after a BOM or whitespace; no recording starts so */
    i = skip_blank(p, n);
    if (i < n && p[i] == '{')
        return CMS_FMT_JSON;
    if (i == n || p[i] == '<' || p[i] == '[')
        return CMS_FMT_TEXT;
    return CMS_FMT_UNKNOWN;
}

int cms_sniff_ready(const unsigned char *p, size_t n)
{
    size_t i = skip_blank(p, n);

    if (n >= CMS_SNIFF_MAX)
        return 1;
    if (i == n)
        return 0; /* only blanks so far: an answer may still follow */
    return n >= CMS_SNIFF_BYTES || p[i] == '{' || p[i] == '<' || p[i] == '[';
}

/* n, or where a UTF-8 character cut short at the end of s[0..n) starts.
   Only that: a byte that is no UTF-8 elsewhere stays (shown as '?'). */
static size_t whole_chars(const char *s, size_t n)
{
    size_t lead = n, need;
    unsigned char c;

    while (lead > 0 && n - lead < 3 && ((unsigned char)s[lead - 1] & 0xC0) == 0x80)
        lead--;
    if (lead == 0)
        return n;
    c = (unsigned char)s[lead - 1]; /* the bytes a character led by c takes */
    need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
    return need > n - (lead - 1) ? lead - 1 : n;
}

void cms_excerpt(const char *p, size_t n, char *out, size_t cap)
{
    size_t start, i, keep, bad;

    if (!p) /* no body came: its buffer was never allocated (NULL + 0 is UB) */
        p = "", n = 0;
    start = skip_blank((const unsigned char *)p, n);
    p += start;
    n -= start;
    for (i = 0; i < n && i + 1 < cap && p[i] != '\r' && p[i] != '\n'; i++)
        out[i] = p[i] ? p[i] : '?';
    /* a cut (ours, or the body's) may leave half a character: drop it */
    keep = whole_chars(out, i);
    out[keep] = '\0';
    bad = cms_text_clean(out); /* C0, DEL, C1 controls and invalid bytes as '?' */
    if (bad * 4 > keep || (keep == 0 && i > 0))
        snprintf(out, cap, "(binary)");
}

/* application/json, text/json or any +json media type, parameters ignored */
static int json_type(const char *ct)
{
    size_t n = strcspn(ct, ";");

    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return (n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
           (n == 9 && strncasecmp(ct, "text/json", 9) == 0) ||
           (n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0);
}

/* 1 if the first byte after blanks can start a JSON value (a literal as far
   as its bytes came): a body labelled JSON that cannot be JSON (an MP3's
   "ID3") is a recording with a wrong label. */
static int json_start(const unsigned char *p, size_t n)
{
    static const char *const literals[] = {"true", "false", "null"};
    size_t i = skip_blank(p, n), k, len;

    if (i == n)
        return 0;
    if (p[i] == '{' || p[i] == '[' || p[i] == '"' || p[i] == '-' || (p[i] >= '0' && p[i] <= '9'))
        return 1;
    for (k = 0; k < sizeof literals / sizeof literals[0]; k++) {
        len = strlen(literals[k]);
        if (n - i < len)
            len = n - i;
        if (memcmp(p + i, literals[k], len) == 0)
            return 1;
    }
    return 0;
}

int cms_is_answer(cms_format fmt, const char *content_type, const unsigned char *p, size_t n)
{
    return fmt == CMS_FMT_JSON || fmt == CMS_FMT_TEXT ||
           (fmt == CMS_FMT_UNKNOWN && content_type && json_type(content_type) &&
            json_start(p, n));
}

const char *cms_format_name(cms_format f)
{
    switch (f) {
    case CMS_FMT_WAV: return "wav";
    case CMS_FMT_ZIP: return "zip";
    case CMS_FMT_JSON: return "json";
    case CMS_FMT_TEXT: return "text";
    default: return "unknown";
    }
}

const char *cms_format_ext(cms_format f)
{
    switch (f) {
    case CMS_FMT_WAV: return "wav";
    case CMS_FMT_ZIP: return "zip";
    default: return "bin";
    }
}

int cms_result_is_flow_control(const char *code)
{
    /* CC-FS flow-control codes; they arrive as HTTP 200 JSON. */
    static const char *const flow[] = {"0300008", "0300009"};
    size_t i;

    for (i = 0; i < sizeof flow / sizeof flow[0]; i++)
        if (strcmp(code, flow[i]) == 0)
            return 1;
    return 0;
}

int cms_classify_status(long status, const char *detail, long retry_after,
                        cms_error *err)
{
    const char *sep = detail && *detail ? ": " : "";

    if (!detail)
        detail = "";
    if (status == 401 || status == 403) {
        cms_error_set(err, CMS_E_AUTH,
                      status == 401
                          ? "the CMS rejected the credentials (HTTP 401)%s%s"
                          : "the CMS refused access (HTTP 403, the client IP may be "
                            "locked after failed signatures)%s%s",
                      sep, detail);
    } else if (status >= 300 && status < 400) {
        cms_error_set(err, CMS_E_HTTP,
                      "the CMS answered with a redirect (HTTP %ld), which is never "
                      "followed so the signature cannot leak%s%s",
                      status, sep, detail);
    } else {
        cms_error_set(err, CMS_E_HTTP, "the CMS answered HTTP %ld%s%s", status, sep,
                      detail);
        err->retryable = status == 429 || status == 502 || status == 503 ||
                         status == 504;
    }
    err->status = status;
    err->retry_after = retry_after;
    return -1;
}

int cms_classify_result(long status, const char *code, const char *desc,
                        cms_error *err)
{
    if (!code) {
        cms_error_set(err, CMS_E_PROTOCOL,
                      "the CMS answered a JSON object without a resultCode");
    } else if (strcmp(code, "0") == 0) {
        cms_error_set(err, CMS_E_PROTOCOL,
                      "the CMS answered resultCode \"0\" (success) but sent no recording");
    } else {
        cms_error_set(err, CMS_E_API, "the CMS answered resultCode \"%s\": %s", code,
                      desc && *desc ? desc : "(no resultDesc)");
        err->retryable = cms_result_is_flow_control(code);
    }
    if (code)
        cms_strlcpy(err->result_code, code, sizeof err->result_code);
    if (desc)
        cms_strlcpy(err->result_desc, desc, sizeof err->result_desc);
    err->status = status;
    return -1;
}
