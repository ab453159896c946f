/* cms_buf: growable byte buffer (see cms_buf.h). */
#include "cms_buf.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

void cms_buf_init(cms_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void cms_buf_free(cms_buf *b)
{
    free(b->data);
    cms_buf_init(b);
}

void cms_buf_free_secret(cms_buf *b)
{
    if (b->data)
        OPENSSL_cleanse(b->data, b->cap);
    cms_buf_free(b);
}

int cms_buf_reserve(cms_buf *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (extra > (size_t)-1 - b->len - 1)
        return -1;
    need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    /* double to keep appends amortised O(1), but never less than asked:
       a first reserve of a known length allocates exactly that */
    cap = b->cap > (size_t)-1 / 2 ? need : b->cap * 2;
    if (cap < need)
        cap = need < 64 ? 64 : need;
    p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int cms_buf_append(cms_buf *b, const void *p, size_t n)
{
    if (cms_buf_reserve(b, n) != 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int cms_buf_append_str(cms_buf *b, const char *s)
{
    return cms_buf_append(b, s, strlen(s));
}

int cms_buf_append_char(cms_buf *b, char c)
{
    return cms_buf_append(b, &c, 1);
}

char *cms_buf_steal(cms_buf *b, size_t *len)
{
    char *p = b->data;

    if (len)
        *len = b->len;
    cms_buf_init(b);
    return p;
}
