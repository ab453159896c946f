/*
 * cms_zip: reading and safely extracting the ZIP bundles the CMS sends when a
 * call has several recordings (libzip does the parsing).
 *
 * Checked for every member before anything is written: no absolute names,
 * no "..", no backslashes, drive letters or control characters, no symlinks,
 * no duplicate names, no name that is both a file and a directory, at most
 * CMS_ZIP_MAX_MEMBERS, and the declared sizes adding up within max_total.
 * Then the destination: no parent that is a symbolic link or a file, no
 * member that exists already (extraction never replaces files). Members are
 * extracted into a hidden staging directory inside `dir`, each checked
 * against its declared size (and CRC, by libzip), and only when all are good
 * moved into place, all or none, each directory level opened with O_NOFOLLOW
 * so that a symbolic link put there meanwhile leads nowhere. A corrupt or unsafe archive is kind
 * protocol, a destination problem kind io; either way nothing is left behind.
 */
#ifndef CMS_ZIP_H
#define CMS_ZIP_H

#include <stddef.h>
#include <time.h>

#include "cms_error.h"

typedef struct cms_zip_entry {
    char *name;      /* as stored in the archive */
    long long size;
    char *data;      /* cms_zip_read only */
    char *path;      /* cms_zip_extract only: where it was written */
    unsigned long long index; /* in the archive */
} cms_zip_entry;

typedef struct cms_zip_list {
    cms_zip_entry *items;
    size_t n;
} cms_zip_list;

#define CMS_ZIP_MAX_MEMBERS 100000

/* The archive: `data`/`len` when data is set, else the file `path` when set,
   else the open file descriptor `fd` (read through a duplicate). */
typedef struct cms_zip_source {
    const char *data;
    size_t len;
    const char *path;
    int fd;
} cms_zip_source;

void cms_zip_list_init(cms_zip_list *l);
void cms_zip_list_free(cms_zip_list *l);

/* Every file member into memory (directories are skipped). */
int cms_zip_read(const cms_zip_source *src, long long max_total, cms_zip_list *out,
                 cms_error *err);
/* Called while members are written, at most every 200 ms: `done` of `total`
   bytes. Non-zero cancels (err set by the callee, else kind cancelled) and
   everything written so far is removed. */
typedef struct cms_zip_progress {
    int (*fn)(void *ud, long long done, long long total, cms_error *err);
    void *ud;
    struct timespec last; /* zero: the first call comes after the first block */
} cms_zip_progress;

/* 1 when the interval since the last report has passed (and it restarts). */
int cms_zip_progress_due(cms_zip_progress *p);

/* Every file member under `dir` (created if missing); `progress` may be NULL. */
int cms_zip_extract(const cms_zip_source *src, const char *dir, long long max_total,
                    cms_zip_progress *progress, cms_zip_list *out, cms_error *err);

/* 1 if `name` is a safe relative member name ("a/b.wav"; "a/" for a directory). */
int cms_zip_name_safe(const char *name);

#endif
