/* cms_secret: secrets in locked, undumpable, wiped pages (see cms_secret.h). */
#include "cms_secret.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>

void cms_secret_init(cms_secret *s)
{
    s->data = NULL;
    s->len = s->map_len = 0;
    s->flags = 0;
}

/* The mapping for n bytes and their NUL, in whole pages. */
static size_t map_size(size_t n)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t p = page > 0 ? (size_t)page : 4096;

    return (n / p + 1) * p;
}

int cms_secret_set(cms_secret *s, const void *p, size_t n)
{
    size_t len = map_size(n);
    void *m;

    cms_secret_free(s);
    if (len <= n) { /* n so large that the size wrapped */
        errno = ENOMEM;
        return -1;
    }
    m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -1;
#ifdef MADV_DONTDUMP
    if (madvise(m, len, MADV_DONTDUMP) == 0) /* before a byte of the secret is there */
        s->flags |= CMS_SECRET_NODUMP;
#endif
    if (mlock(m, len) == 0)
        s->flags |= CMS_SECRET_LOCKED;
    s->data = m;
    s->map_len = len;
    s->len = n;
    if (n)
        memcpy(s->data, p, n);
    s->data[n] = '\0'; /* a C string too (the mapping is zeroed already) */
    return 0;
}

void cms_secret_free_observed(cms_secret *s, cms_secret_observer before_unmap, void *ud)
{
    if (!s->data)
        return;
    OPENSSL_cleanse(s->data, s->map_len);
    if (before_unmap)
        before_unmap(s->data, s->map_len, ud);
    if (s->flags & CMS_SECRET_LOCKED)
        munlock(s->data, s->map_len);
    munmap(s->data, s->map_len);
    cms_secret_init(s);
}

void cms_secret_free(cms_secret *s)
{
    cms_secret_free_observed(s, NULL, NULL);
}
