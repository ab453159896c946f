/* cms_text: valid, printable UTF-8 from server text (see cms_text.h). */
#include "cms_text.h"

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
