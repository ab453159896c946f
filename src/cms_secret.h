/*
 * cms_secret: a secret (the SK, a key password) in memory of its own.
 *
 * The bytes live in a page-aligned anonymous mapping, never on the malloc
 * heap (where a freed copy lingers and realloc moves data about):
 *   - excluded from core dumps (MADV_DONTDUMP, where the platform has it);
 *   - kept out of swap (mlock), best effort: RLIMIT_MEMLOCK may refuse it;
 *   - wiped with OPENSSL_cleanse, then unmapped, by cms_secret_free.
 * The bytes are followed by a NUL, so a secret is also a C string for
 * libcurl options. `flags` says which protections took effect.
 */
#ifndef CMS_SECRET_H
#define CMS_SECRET_H

#include <stddef.h>

#define CMS_SECRET_LOCKED 1u /* mlock succeeded */
#define CMS_SECRET_NODUMP 2u /* madvise(MADV_DONTDUMP) succeeded */

typedef struct cms_secret {
    unsigned char *data; /* NULL when empty */
    size_t len;          /* the secret's bytes (data[len] is '\0') */
    size_t map_len;      /* the whole mapping, a multiple of the page size */
    unsigned flags;      /* CMS_SECRET_* */
} cms_secret;

/* Called with the whole mapping after the wipe, just before it is unmapped. */
typedef void (*cms_secret_observer)(const unsigned char *map, size_t map_len, void *ud);

void cms_secret_init(cms_secret *s);
/* Copy `n` bytes of `p` into a new mapping (freeing the old one). 0, or -1
   (errno set) when memory cannot be mapped; `s` is then empty. */
int cms_secret_set(cms_secret *s, const void *p, size_t n);
/* Wipe, unlock and unmap; `s` is empty again. Safe on an empty secret. */
void cms_secret_free(cms_secret *s);
/* cms_secret_free, showing the wiped mapping to `before_unmap` (tests prove
   the wipe with it; production code passes NULL through cms_secret_free). */
void cms_secret_free_observed(cms_secret *s, cms_secret_observer before_unmap, void *ud);

#endif
