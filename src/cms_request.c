/* cms_request: request validation and body assembly (see cms_request.h). */
#include "cms_request.h"
#include "cms_text.h"

#include <string.h>
#include <strings.h>

const char *const cms_request_fields[CMS_F__COUNT] = {
    "callID", "workNo", "beginTime", "callerNo", "calleeNo",
};

void cms_request_init(cms_request *r)
{
    memset(r, 0, sizeof *r);
}

int cms_request_field_index(const char *name)
{
    int i;

    for (i = 0; i < CMS_F__COUNT; i++)
        if (strcmp(name, cms_request_fields[i]) == 0)
            return i;
    return -1;
}

int cms_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        size_t need, k;
        unsigned long cp;

        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= need)
            return 0;
        for (k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

static int digits(const char *s, int n)
{
    int v = 0, i;

    for (i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

int cms_datetime14_valid(const char *s, size_t n)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int year, month, day, leap, i;

    if (n != 14)
        return 0;
    for (i = 0; i < 14; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    year = digits(s, 4);
    month = digits(s + 4, 2);
    day = digits(s + 6, 2);
    if (year < 1970 || month < 1 || month > 12 || day < 1)
        return 0;
    leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > mdays[month - 1] + (month == 2 && leap))
        return 0;
    return digits(s + 8, 2) <= 23 && digits(s + 10, 2) <= 59 &&
           digits(s + 12, 2) <= 59;
}

/* Valid UTF-8 without control characters: C0, DEL and C1 (U+0080-U+009F; a
   U+009B is the terminal's CSI), as cms_text defines them. */
static int check_value(const char *name, const char *v, size_t n, cms_error *err)
{
    size_t i, k;
    unsigned long cp = 0;

    if (n > CMS_FIELD_MAX_BYTES)
        return cms_error_field(err, name, "'%s' is too long (%zu bytes, at most %d)",
                               name, n, CMS_FIELD_MAX_BYTES);
    if (!cms_utf8_valid(v, n))
        return cms_error_field(err, name, "'%s' is not valid UTF-8", name);
    for (i = 0; i < n; i += k) {
        k = cms_utf8_char(v + i, n - i, &cp);
        if (k == 0 || cms_is_control(cp)) /* k: never 0 after cms_utf8_valid */
            return cms_error_field(err, name,
                                   "'%s' contains a control character (U+%04lX at byte %zu)",
                                   name, cp, i + 1);
    }
    return 0;
}

int cms_request_validate(const cms_request *r, cms_error *err)
{
    int i;

    if (!r->value[CMS_F_CALLID])
        return cms_error_field(err, "callID", "'callID' is required");
    if (r->len[CMS_F_CALLID] == 0)
        return cms_error_field(err, "callID", "'callID' must not be empty");
    for (i = 0; i < CMS_F__COUNT; i++) {
        if (r->value[i] &&
            check_value(cms_request_fields[i], r->value[i], r->len[i], err) != 0)
            return -1;
    }
    if (r->value[CMS_F_BEGINTIME] && r->len[CMS_F_BEGINTIME] > 0 &&
        !cms_datetime14_valid(r->value[CMS_F_BEGINTIME], r->len[CMS_F_BEGINTIME]))
        return cms_error_field(err, "beginTime",
                               "'beginTime' must be a real date-time as yyyyMMddHHmmss "
                               "(14 digits), got '%.*s'",
                               (int)r->len[CMS_F_BEGINTIME], r->value[CMS_F_BEGINTIME]);
    return 0;
}

int cms_request_build(const cms_request *r, cms_json_escape_fn escape, void *ud,
                      cms_buf *body, cms_error *err)
{
    int i;

    if (cms_request_validate(r, err) != 0)
        return -1;
    if (cms_buf_append_char(body, '{') != 0)
        goto nomem;
    for (i = 0; i < CMS_F__COUNT; i++) {
        const char *v = r->value[i] ? r->value[i] : "";
        if ((i && cms_buf_append_char(body, ',') != 0) ||
            escape(ud, cms_request_fields[i], strlen(cms_request_fields[i]), body) != 0 ||
            cms_buf_append_char(body, ':') != 0 ||
            escape(ud, v, r->value[i] ? r->len[i] : 0, body) != 0)
            goto nomem;
    }
    if (cms_buf_append_char(body, '}') == 0)
        return 0;
nomem:
    return cms_error_set(err, CMS_E_NOMEM, "out of memory while building the request body");
}

/* Edit distance counting a swap of neighbours as one edit (optimal string
   alignment), capped: long names are never "near misses". */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i, j;
    size_t d[33][33];

    if (la > 32 || lb > 32)
        return (size_t)-1;
    for (i = 0; i <= la; i++)
        d[i][0] = i;
    for (j = 0; j <= lb; j++)
        d[0][j] = j;
    for (i = 1; i <= la; i++) {
        for (j = 1; j <= lb; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

const char *cms_suggest(const char *name, const char *const *candidates, size_t n)
{
    const char *best = NULL;
    size_t best_d = 3, i;

    for (i = 0; i < n; i++) {
        size_t d;
        if (strcasecmp(name, candidates[i]) == 0)
            return candidates[i];
        d = edit_distance(name, candidates[i]);
        if (d < best_d && (d <= 1 || d * 3 <= strlen(candidates[i]))) {
            best = candidates[i];
            best_d = d;
        }
    }
    return best;
}
