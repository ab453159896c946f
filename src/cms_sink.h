/*
 * cms_sink: where a recording goes, as cms_sink callbacks for cms_transfer.
 *
 *   memory  a cms_buf, allocated once when Content-Length is known (the
 *           transfer enforces max_size before any sink sees a byte)
 *   file    a temporary file in the destination's directory (unnamed, with
 *           O_TMPFILE, where the file system allows), fsync'ed and renamed
 *           into place by cms_file_sink_commit(); anything else removes it,
 *           so a failed download leaves no partial file and an existing file
 *           untouched. Only a regular file is ever replaced: a character
 *           device or FIFO at the path is written into (like curl), anything
 *           else refused. A directory destination is named <callID>.<ext>
 *           once the format is known, and checked then, before any byte.
 * The file sink keeps a SHA-256 of what it wrote: a large download is hashed
 * by a thread of its own that reads the file back from the page cache and
 * starts its writeback as it goes, so that the transfer only receives and
 * writes, the hash runs on another core, and the fsync at the end waits for
 * the last megabytes only (BENCHMARKS.md has the measurements).
 */
#ifndef CMS_SINK_H
#define CMS_SINK_H

#include <openssl/evp.h>

#include "cms_buf.h"
#include "cms_classify.h"
#include "cms_error.h"
#include "cms_transfer.h"

typedef struct cms_mem_sink {
    cms_buf buf;
} cms_mem_sink;

/* Recordings of this size or more are received into memory faulted in
   beforehand: one madvise(MADV_POPULATE_WRITE) costs less than a page fault
   for every 4 KB as the bytes arrive (Linux 5.14 on; elsewhere nothing). */
#define CMS_PREFAULT_MIN (1 << 20)
void cms_prefault(void *p, size_t n);

void cms_mem_sink_init(cms_mem_sink *m);
void cms_mem_sink_free(cms_mem_sink *m);
cms_sink cms_mem_sink_callbacks(cms_mem_sink *m);

/* SHA-256 of a byte stream; an allocation failure is reported by _init. */
typedef struct cms_sha256 {
    EVP_MD_CTX *ctx;
} cms_sha256;

int cms_sha256_init(cms_sha256 *h);
int cms_sha256_update(cms_sha256 *h, const void *p, size_t n);
int cms_sha256_final_hex(cms_sha256 *h, char hex[65]);
void cms_sha256_free(cms_sha256 *h);

/* Hashes a large download in a thread, reading back what was written. */
typedef struct cms_bg_hash cms_bg_hash;

typedef struct cms_file_sink {
    char *dir;       /* where the file goes */
    char *path;      /* the destination; in directory mode set at commit */
    char *base;      /* directory mode: the safe file name, without extension */
    char *tmp;       /* the temporary file's name, NULL while it is unnamed */
    int fd;
    int direct;      /* a device or FIFO: written into, never replaced */
    int unzip;       /* set by the caller: a ZIP is unpacked, never named */
    cms_format format;
    cms_sha256 sha;  /* the thread's while bg runs */
    cms_bg_hash *bg; /* NULL: hashed inline, as it is written */
    int bg_tried;
    long long written;
    char sha256[65]; /* set by commit */
} cms_file_sink;

/*
 * Prepare a download to `path` (a file, or an existing directory in which the
 * file is named from `call_id`). Creates the temporary file now, so an
 * unwritable destination fails before anything is sent.
 */
int cms_file_sink_open(cms_file_sink *f, const char *path, const char *call_id,
                       cms_error *err);
cms_sink cms_file_sink_callbacks(cms_file_sink *f);
/* fsync, rename into place, fsync the directory; sets f->sha256. */
int cms_file_sink_commit(cms_file_sink *f, cms_error *err);
/* The SHA-256 of everything written, into `hex` (commit does it itself). */
int cms_file_sink_digest(cms_file_sink *f, char hex[65], cms_error *err);
/* The open temporary file (to read the download back, e.g. to unzip it). */
int cms_file_sink_fd(const cms_file_sink *f);
/* Close and remove the temporary file if it is still there; free everything. */
void cms_file_sink_close(cms_file_sink *f);

/* `name` made safe as a file name: [A-Za-z0-9._-], no leading dot, <= 200 bytes. */
void cms_safe_filename(const char *name, char *out, size_t cap);

#endif
