/*
 * cms_buf: a growable byte buffer, the one allocation pattern of the C core.
 *
 * Modelled on lua-cjson's strbuf: init, reserve, append, free. Appends never
 * fail silently: they return -1 when memory runs out, so callers can report
 * it. The buffer is always NUL-terminated past `len` for convenience, which
 * is not counted in `len`.
 */
#ifndef CMS_BUF_H
#define CMS_BUF_H

#include <stddef.h>

typedef struct cms_buf {
    char *data;
    size_t len;
    size_t cap;
} cms_buf;

void cms_buf_init(cms_buf *b);
void cms_buf_free(cms_buf *b);
/* Like cms_buf_free, but overwrites the bytes first (for secrets). */
void cms_buf_free_secret(cms_buf *b);
/* Make room for `extra` more bytes (plus the terminator). */
int cms_buf_reserve(cms_buf *b, size_t extra);
int cms_buf_append(cms_buf *b, const void *p, size_t n);
int cms_buf_append_str(cms_buf *b, const char *s);
int cms_buf_append_char(cms_buf *b, char c);
/* Hand the bytes to the caller (who frees them); the buffer becomes empty. */
char *cms_buf_steal(cms_buf *b, size_t *len);

#endif
