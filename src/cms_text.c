/* cms_text: valid, printable UTF-8 from server text (see cms_text.h). */
#include "cms_text.h"

#include <ctype.h>
#include <string.h>

size_t cms_utf8_char(const char *str, size_t n, unsigned long *cp)
{
    static const unsigned long min_cp[4] = {0, 0x80, 0x800, 0x10000};
    const unsigned char *s = (const unsigned char *)str;
    size_t need, k;
    unsigned long c;

    if (n == 0)
        return 0;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        need = 1, c = s[0] & 0x1F;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        need = 2, c = s[0] & 0x0F;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        need = 3, c = s[0] & 0x07;
    else
        return 0;
    if (n <= need)
        return 0;
    for (k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[k] & 0x3F);
    }
    if (c < min_cp[need] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return need + 1;
}

int cms_is_control(unsigned long cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

int cms_text_printable(const char *s, size_t n)
{
    size_t i = 0, k;
    unsigned long cp;

    while (i < n) {
        k = cms_utf8_char(s + i, n - i, &cp);
        if (k == 0 || cms_is_control(cp))
            return 0;
        i += k;
    }
    return 1;
}

size_t cms_text_clean(char *s)
{
    size_t n = strlen(s), i = 0, o = 0, replaced = 0, k;
    unsigned long cp;

    while (i < n) {
        k = cms_utf8_char(s + i, n - i, &cp);
        if (k == 0 || cms_is_control(cp)) {
            s[o++] = '?';
            i += k ? k : 1; /* a whole control character, or one bad byte */
            replaced++;
            continue;
        }
        memmove(s + o, s + i, k);
        o += k;
        i += k;
    }
    s[o] = '\0';
    return replaced;
}

size_t cms_text_scrub(char *p, size_t n, const char *secret, size_t slen)
{
    size_t i = 0, o = 0;

    if (!secret || slen < CMS_SCRUB_MIN)
        return n;
    while (i < n) {
        if (n - i >= slen && memcmp(p + i, secret, slen) == 0) {
            memcpy(p + o, "***", 3); /* o + 3 <= i + slen: never past what was read */
            o += 3;
            i += slen;
        } else {
            p[o++] = p[i++];
        }
    }
    if (o < n)
        p[o] = '\0';
    return o;
}

int cms_text_scrub_tail(char *s, const char *secret, size_t slen)
{
    size_t n = strlen(s), k = slen - 1 < n ? slen - 1 : n;

    if (!secret || slen <= CMS_SCRUB_MIN)
        return 0;
    for (; k >= CMS_SCRUB_MIN; k--) /* the longest cut piece first */
        if (memcmp(s + n - k, secret, k) == 0) {
            memcpy(s + n - k, "***", 4); /* k >= 8 > 4: fits, terminated */
            return 1;
        }
    return 0;
}

/* Append p[0..n) to out, keeping room for the NUL. */
static void emit(char *out, size_t cap, size_t *o, const char *p, size_t n)
{
    if (*o + 1 >= cap)
        return;
    if (n > cap - 1 - *o)
        n = cap - 1 - *o;
    memcpy(out + *o, p, n);
    *o += n;
}

static int blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* 1 if in[k] ends "user:pw" scanned back from its '@' when no scheme comes
   before: a blank, '/', an earlier '@', or a quote that opens a quoted text
   (a quote within the password does not). */
static int before_userinfo(const char *in, size_t k)
{
    char c = in[k];

    if (c == '\'' || c == '"')
        return k == 0 || blank(in[k - 1]) || in[k - 1] == '=';
    return blank(c) || c == '/' || c == '@';
}

/* The quote that opens a quoted text just before `s` (at the start, or
   after a blank or '='), or 0. */
static char opening_quote(const char *in, size_t s)
{
    char c = s > 0 ? in[s - 1] : 0;

    if (c != '\'' && c != '"')
        return 0;
    return s == 1 || blank(in[s - 2]) || in[s - 2] == '=' ? c : 0;
}

/* Where the text quoted by `q` that goes on at `i` ends: the `q` followed
   by the end, a blank or punctuation, else the end of the line. */
static size_t closing_quote(const char *in, size_t n, size_t i, char q)
{
    for (; i < n && in[i] != '\r' && in[i] != '\n'; i++)
        if (in[i] == q && (i + 1 == n || blank(in[i + 1]) || strchr(",.;:)]", in[i + 1])))
            break;
    return i;
}

/* Where the userinfo of the "scheme://" ending at `a` ends (its last '@'
   before a blank, so a raw '@' or quote in the password is covered; in a
   quoted URL, before the closing quote, so a blank is too), or `a` when
   there is none. */
static size_t authority_userinfo(const char *in, size_t n, size_t a, int cut)
{
    size_t e = a, at = a, i, s = a - 3;
    char q;

    while (s > 0 && (isalnum((unsigned char)in[s - 1]) || strchr("+.-", in[s - 1])))
        s--; /* the scheme's start */
    if ((q = opening_quote(in, s)) != 0)
        e = closing_quote(in, n, a, q);
    else /* a tab does not end it: a password given with one may be quoted raw */
        while (e < n && (in[e] == '\t' || !blank(in[e])))
            e++;
    for (i = a; i < e; i++)
        if (in[i] == '@')
            at = i;
    /* cut before its '@': "scheme://user:pw" with no quote or path after */
    if (at == a && cut && e == n && memchr(in + a, ':', e - a) &&
        !memchr(in + a, '\'', e - a) && !memchr(in + a, '"', e - a) &&
        !memchr(in + a, '/', e - a))
        at = n;
    return at;
}

/* `k`, or the start of the quoted text (opened at or after `from`, not
   closed before the '@' at `i`) that k lies in. */
static size_t quoted_from(const char *in, size_t from, size_t k, size_t i)
{
    size_t j;

    for (j = k - 1; j > from; j--) /* in[j - 1] a quote, j > from >= 0 */
        if (opening_quote(in, j) && !memchr(in + j, in[j - 1], i - j))
            return j;
    return k;
}

size_t cms_redact_userinfo(const char *in, size_t n, int cut, char *out, size_t cap)
{
    static const char mark[] = "<redacted>";
    size_t i = 0, from = 0, o = 0, k, end;

    if (!cap)
        return 0;
    while (i < n) {
        if (i + 3 <= n && memcmp(in + i, "://", 3) == 0) {
            end = authority_userinfo(in, n, i + 3, cut);
            if (end == i + 3) {
                i += 3;
                continue;
            }
            emit(out, cap, &o, in + from, i + 3 - from);
            emit(out, cap, &o, mark, sizeof mark - 1);
            from = i = end;
        } else if (in[i] == '@') { /* "user:pw@host" without a scheme */
            for (k = i; k > from && !before_userinfo(in, k - 1); k--)
                ;
            if (k > from && blank(in[k - 1])) /* quoted, a blank is in the password */
                k = quoted_from(in, from, k, i);
            emit(out, cap, &o, in + from, k - from);
            if (k < i)
                emit(out, cap, &o, mark, sizeof mark - 1);
            from = i;
        }
        i++;
    }
    emit(out, cap, &o, in + from, n - from);
    out[o] = '\0';
    return o;
}
