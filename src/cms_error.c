/* cms_error: kinds, names and formatting of core errors (see cms_error.h). */
#include "cms_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int retryable;
} kinds[] = {
    {"ok", 0},
#define CMS_X_INFO(NAME, name, retry) {name, retry},
    CMS_ERROR_KINDS(CMS_X_INFO)
#undef CMS_X_INFO
};

void cms_error_clear(cms_error *e)
{
    memset(e, 0, sizeof *e);
    e->retry_after = -1;
}

static void set_kind(cms_error *e, cms_error_kind kind, const char *fmt,
                     va_list ap)
{
    e->kind = kind;
    e->retryable = cms_error_kind_retryable(kind);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
}

int cms_error_set(cms_error *e, cms_error_kind kind, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    set_kind(e, kind, fmt, ap);
    va_end(ap);
    return -1;
}

int cms_error_field(cms_error *e, const char *field, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    set_kind(e, CMS_E_INVALID, fmt, ap);
    va_end(ap);
    cms_strlcpy(e->field, field, sizeof e->field);
    return -1;
}

const char *cms_error_kind_name(cms_error_kind kind)
{
    if ((int)kind < 0 || kind >= CMS_E__COUNT)
        return "unknown";
    return kinds[kind].name;
}

int cms_error_kind_retryable(cms_error_kind kind)
{
    if ((int)kind <= 0 || kind >= CMS_E__COUNT)
        return 0;
    return kinds[kind].retryable;
}

void cms_strlcpy(char *dst, const char *src, size_t cap)
{
    size_t n = strlen(src);

    if (cap == 0)
        return;
    if (n >= cap) {
        n = cap - 1;
        /* do not leave half a UTF-8 sequence at the end */
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}
