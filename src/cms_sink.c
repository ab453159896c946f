/* cms_sink: memory and file destinations of a recording (see cms_sink.h). */
#define _GNU_SOURCE /* O_TMPFILE */
#include "cms_sink.h"

#include "cms_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ===== MEMORY ===== */

void cms_prefault(void *p, size_t n)
{
#ifdef MADV_POPULATE_WRITE
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t from = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t to = ((uintptr_t)p + n) & ~(page - 1);

    if (n >= CMS_PREFAULT_MIN && to > from)
        madvise((void *)from, to - from, MADV_POPULATE_WRITE); /* best effort */
#else
    (void)p, (void)n;
#endif
}

void cms_mem_sink_init(cms_mem_sink *m)
{
    cms_buf_init(&m->buf);
}

void cms_mem_sink_free(cms_mem_sink *m)
{
    cms_buf_free(&m->buf);
}

static int mem_begin(void *ud, long long total, cms_format fmt, cms_error *err)
{
    cms_mem_sink *m = ud;

    (void)fmt;
    /* the length is known: allocate once, no doubling while receiving */
    if (total > 0 && (unsigned long long)total < (size_t)-1 / 2) {
        if (cms_buf_reserve(&m->buf, (size_t)total) != 0)
            return cms_error_set(err, CMS_E_NOMEM, "out of memory for a %lld-byte recording",
                                 total);
        cms_prefault(m->buf.data, (size_t)total);
    }
    return 0;
}

static int mem_write(void *ud, const char *p, size_t n, cms_error *err)
{
    cms_mem_sink *m = ud;

    if (cms_buf_append(&m->buf, p, n) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory while receiving the recording");
    return 0;
}

cms_sink cms_mem_sink_callbacks(cms_mem_sink *m)
{
    return (cms_sink){mem_begin, mem_write, m};
}

/* ===== SHA-256 ===== */

int cms_sha256_init(cms_sha256 *h)
{
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
        cms_sha256_free(h);
        return -1;
    }
    return 0;
}

int cms_sha256_update(cms_sha256 *h, const void *p, size_t n)
{
    return EVP_DigestUpdate(h->ctx, p, n) == 1 ? 0 : -1;
}

int cms_sha256_final_hex(cms_sha256 *h, char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0, i;

    if (EVP_DigestFinal_ex(h->ctx, md, &len) != 1 || len != 32)
        return -1;
    for (i = 0; i < len; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
    return 0;
}

void cms_sha256_free(cms_sha256 *h)
{
    EVP_MD_CTX_free(h->ctx);
    h->ctx = NULL;
}

/* ===== SHA-256 IN A THREAD ===== */

/* Below this size a thread costs more than it saves (a bench build may set it). */
#ifndef CMS_BG_HASH_MIN
#define CMS_BG_HASH_MIN (4LL << 20)
#endif
#define CMS_BG_HASH_STEP (1 << 20) /* read back and wake the thread this much at a time */

struct cms_bg_hash {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int fd;
    cms_sha256 *sha;
    unsigned char *buf;
    /* under lock */
    long long written; /* by the writer */
    long long hashed;  /* by the thread, when it waits */
    int waiting, end, stop;
    /* the thread's until joined */
    int error;         /* errno of a failed read back, -1: SHA-256 failed */
};

/* Read back and hash [from, to) of the file, and start its writeback. */
static int bg_hash_range(cms_bg_hash *h, long long from, long long to)
{
    while (from < to) {
        size_t n = to - from < CMS_BG_HASH_STEP ? (size_t)(to - from) : CMS_BG_HASH_STEP;
        ssize_t got = pread(h->fd, h->buf, n, (off_t)from);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            h->error = got < 0 ? errno : EIO;
            return -1;
        }
        if (cms_sha256_update(h->sha, h->buf, (size_t)got) != 0) {
            h->error = -1;
            return -1;
        }
#ifdef SYNC_FILE_RANGE_WRITE
        /* start writing it to disk now: the fsync at the end then waits for
           the last megabytes only (best effort; fsync still decides) */
        sync_file_range(h->fd, (off_t)from, (off_t)got, SYNC_FILE_RANGE_WRITE);
#endif
        from += got;
    }
    return 0;
}

static void *bg_hash_main(void *ud)
{
    cms_bg_hash *h = ud;
    long long done = h->hashed, to;
    int end, stop;

    for (;;) {
        pthread_mutex_lock(&h->lock);
        h->hashed = done;
        while (!h->end && !h->stop && h->written - done < CMS_BG_HASH_STEP) {
            h->waiting = 1;
            pthread_cond_wait(&h->wake, &h->lock);
        }
        h->waiting = 0;
        to = h->written;
        end = h->end;
        stop = h->stop;
        pthread_mutex_unlock(&h->lock);
        if (stop || bg_hash_range(h, done, to) != 0 || end)
            return NULL;
        done = to;
    }
}

/* The thread blocks every signal, so that they reach the caller's thread
   (the interpreter's SIGINT handler, nginx's signals). */
static int start_thread(pthread_t *t, cms_bg_hash *h)
{
    sigset_t all, old;
    int rc;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(t, NULL, bg_hash_main, h);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Hash the file from `from` on in a thread (`sha` holds the bytes before);
   NULL when a thread cannot be had: hashing goes on inline. */
static cms_bg_hash *bg_hash_start(int fd, cms_sha256 *sha, long long from)
{
    cms_bg_hash *h = calloc(1, sizeof *h);

    if (!h || !(h->buf = malloc(CMS_BG_HASH_STEP)))
        goto fail;
    h->fd = fd;
    h->sha = sha;
    h->written = h->hashed = from;
    if (pthread_mutex_init(&h->lock, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&h->wake, NULL) != 0) {
        pthread_mutex_destroy(&h->lock);
        goto fail;
    }
    if (start_thread(&h->thread, h) == 0)
        return h;
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->lock);
fail:
    if (h)
        free(h->buf);
    free(h);
    return NULL;
}

/* `n` more bytes are in the file; the thread wakes once a step is waiting. */
static void bg_hash_written(cms_bg_hash *h, size_t n)
{
    pthread_mutex_lock(&h->lock);
    h->written += (long long)n;
    if (h->waiting && h->written - h->hashed >= CMS_BG_HASH_STEP)
        pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
}

/* Nothing more comes: the thread hashes the rest (stop: gives up) and ends. */
static void bg_hash_end(cms_bg_hash *h, int stop)
{
    pthread_mutex_lock(&h->lock);
    h->end = 1;
    h->stop |= stop;
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
}

/* Wait for the thread and free it; its error (0: the hash is complete). */
static int bg_hash_join(cms_bg_hash *h)
{
    int error;

    pthread_join(h->thread, NULL);
    error = h->error;
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->lock);
    free(h->buf);
    free(h);
    return error;
}

/* ===== FILE ===== */

void cms_safe_filename(const char *name, char *out, size_t cap)
{
    size_t i = 0;

    for (; *name && i + 1 < cap && i < 200; name++) {
        char c = *name;
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                 (c >= '0' && c <= '9') || c == '-' || c == '_' || (c == '.' && i > 0);
        out[i++] = ok ? c : '_';
    }
    if (i == 0 && cap > 10)
        i = (size_t)snprintf(out, cap, "recording");
    out[i] = '\0';
}

static char *str_printf(const char *fmt, const char *a, const char *b)
{
    size_t n = strlen(fmt) + strlen(a) + strlen(b) + 1;
    char *p = malloc(n);

    if (p)
        snprintf(p, n, fmt, a, b);
    return p;
}

static int io_error(cms_error *err, const char *what, const char *path, int e)
{
    cms_error_set(err, CMS_E_IO, "%s '%s' failed: %s%s", what, path, strerror(e),
                  e == ENOSPC ? " (disk full)" : "");
    return -1;
}

static const char *type_name(mode_t m)
{
    return S_ISDIR(m) ? "a directory" : S_ISLNK(m) ? "a symbolic link" :
           S_ISBLK(m) ? "a block device" : S_ISCHR(m) ? "a character device" :
           S_ISFIFO(m) ? "a FIFO" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

/* Only a regular file (or nothing) is ever replaced at `path`. */
static int check_replaceable(const char *path, cms_error *err)
{
    struct stat st;

    if (lstat(path, &st) != 0 || S_ISREG(st.st_mode))
        return 0;
    return cms_error_set(err, CMS_E_IO, "'%s' is %s: cmsrec replaces only regular files",
                         path, type_name(st.st_mode));
}

/* N for "/dev/fd/N" and "/proc/self/fd/N", else -1. */
static int fd_name(const char *p)
{
    const char *q = strncmp(p, "/dev/fd/", 8) == 0 ? p + 8
                  : strncmp(p, "/proc/self/fd/", 14) == 0 ? p + 14 : NULL;
    long n = 0;

    if (!q || !*q)
        return -1;
    for (; *q >= '0' && *q <= '9' && n < 1000000; q++)
        n = n * 10 + (*q - '0');
    return *q ? -1 : (int)n;
}

/*
 * The open descriptor `path` stands for: /dev/fd/N, /proc/self/fd/N, or a
 * link leading to one (/dev/stdout, /dev/stderr), followed as text so that
 * it works without /proc. -1 for any other path.
 */
static int fd_alias(const char *path)
{
    char cur[PATH_MAX], next[PATH_MAX];
    int hops;

    if (strlen(path) >= sizeof cur)
        return -1;
    strcpy(cur, path);
    for (hops = 0; hops < 40; hops++) {
        int n = fd_name(cur);
        ssize_t len;
        char *slash;
        if (n >= 0)
            return n;
        len = readlink(cur, next, sizeof next - 1);
        if (len < 0)
            return -1;
        next[len] = '\0';
        slash = strrchr(cur, '/');
        if (next[0] == '/' || !slash)
            slash = cur - 1; /* absolute, or relative to the current directory */
        if ((size_t)(slash + 1 - cur) + (size_t)len >= sizeof cur)
            return -1;
        strcpy(slash + 1, next);
    }
    return -1;
}

/* Write into descriptor `n` itself (a dup): its offset and O_APPEND hold, so
   "script >> log" appends, and nothing is reopened or replaced. */
static int open_alias(cms_file_sink *f, int n, cms_error *err)
{
    int flags = fcntl(n, F_GETFL);

    if (flags < 0 || (flags & O_ACCMODE) == O_RDONLY)
        return cms_error_set(err, CMS_E_IO, "'%s' is descriptor %d, which is %s", f->path, n,
                             flags < 0 ? "not open" : "open for reading only");
    f->fd = fcntl(n, F_DUPFD_CLOEXEC, 0);
    f->direct = 1;
    return f->fd >= 0 ? 0 : io_error(err, "opening", f->path, errno);
}

static int set_dir_of(cms_file_sink *f, const char *path)
{
    const char *slash = strrchr(path, '/');

    f->dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    return f->dir ? 0 : -1;
}

/*
 * A named destination. A regular file (or nothing) there: a temporary file
 * beside it, renamed over it at the end. A symbolic link is followed: to a
 * regular file, that file is replaced; to nothing, refused. A character
 * device or FIFO (/dev/null, a named pipe) is written into as the bytes
 * come, like curl does, and so is an open descriptor named as a path
 * (/dev/stdout, /dev/fd/3): they are never replaced.
 */
static int named_destination(cms_file_sink *f, const char *path, cms_error *err)
{
    struct stat st, lst;
    int linked = lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode);
    int alias = fd_alias(path);

    if (alias >= 0) {
        if (!(f->path = strdup(path)) || set_dir_of(f, path) != 0)
            return cms_error_set(err, CMS_E_NOMEM, "out of memory");
        return open_alias(f, alias, err);
    }
    if (stat(path, &st) != 0) {
        if (errno != ENOENT)
            return io_error(err, "checking", path, errno);
        if (linked)
            return cms_error_set(err, CMS_E_IO, "'%s' is a symbolic link to a missing "
                                 "file: not followed, not replaced", path);
        f->path = strdup(path);
    } else if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) {
        f->direct = 1;
        f->path = strdup(path);
    } else if (!S_ISREG(st.st_mode)) {
        return cms_error_set(err, CMS_E_IO, "'%s' is %s: cmsrec writes only to files, "
                             "character devices and FIFOs", path, type_name(st.st_mode));
    } else {
        f->path = linked ? realpath(path, NULL) : strdup(path);
        if (!f->path && linked)
            return io_error(err, "following the link", path, errno);
    }
    if (!f->path || set_dir_of(f, f->path) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    return 0;
}

/* Split `path` into directory and name; a directory path gives name NULL. */
static int split_destination(cms_file_sink *f, const char *path, const char *call_id,
                             cms_error *err)
{
    struct stat st;
    char safe[256];

    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path);
        while (n > 1 && path[n - 1] == '/') /* "dir/" names the same directory */
            n--;
        cms_safe_filename(call_id, safe, sizeof safe);
        f->dir = strndup(path, n);
        f->base = strdup(safe);
        return f->dir && f->base ? 0 : cms_error_set(err, CMS_E_NOMEM, "out of memory");
    }
    if (!*path || path[strlen(path) - 1] == '/')
        return cms_error_set(err, CMS_E_IO, "the directory '%s' does not exist", path);
    return named_destination(f, path, err);
}

/*
 * The temporary file. Where the file system supports it and the file can be
 * named at the end, an unnamed O_TMPFILE file: if the process is killed,
 * nothing is left behind. Else a hidden ".cmsrec-XXXXXXXXXXXX" beside the
 * destination, removed on failure. Either way the umask applies.
 */
static int open_temp(cms_file_sink *f, cms_error *err)
{
#if defined(O_TMPFILE) && !defined(CMS_NO_O_TMPFILE) /* the asan build tests the fallback */
    /* read-write because unzip reads the download back */
    f->fd = open(f->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0666);
    if (f->fd >= 0 && cms_tmpfile_linkable(f->dir))
        return 0;
    if (f->fd < 0 && errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
        return io_error(err, "creating a file in", f->dir, errno);
    if (f->fd >= 0)
        close(f->fd);
#endif
    f->fd = cms_create_unique(f->dir, ".cmsrec-", &f->tmp);
    if (f->fd < 0)
        return io_error(err, "creating a file in", f->dir, errno);
    return 0;
}

/* Write into a device or FIFO: no temporary file, nothing to rename. */
static int open_direct(cms_file_sink *f, cms_error *err)
{
    f->fd = open(f->path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
    return f->fd >= 0 ? 0 : io_error(err, "opening", f->path, errno);
}

int cms_file_sink_open(cms_file_sink *f, const char *path, const char *call_id,
                       cms_error *err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (split_destination(f, path, call_id, err) != 0)
        return -1;
    if (cms_sha256_init(&f->sha) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    if (f->direct)
        return f->fd >= 0 ? 0 : open_direct(f, err);
    return open_temp(f, err);
}

/* The destination path, in directory mode named from the callID and the format. */
static int final_path(cms_file_sink *f, cms_error *err)
{
    char *base;

    if (f->path)
        return 0;
    base = str_printf("%s/%s", f->dir, f->base);
    f->path = base ? str_printf("%s.%s", base, cms_format_ext(f->format)) : NULL;
    free(base);
    return f->path ? 0 : cms_error_set(err, CMS_E_NOMEM, "out of memory");
}

/* The format is known: in directory mode the name is too, and what is there
   now is checked before the first byte is written, not after the last. */
static int file_begin(void *ud, long long total, cms_format fmt, cms_error *err)
{
    cms_file_sink *f = ud;

    (void)total;
    f->format = fmt;
    if (f->direct || (f->unzip && fmt == CMS_FMT_ZIP))
        return 0;
    return final_path(f, err) == 0 ? check_replaceable(f->path, err) : -1;
}

static int file_write(void *ud, const char *p, size_t n, cms_error *err)
{
    cms_file_sink *f = ud;
    int e;

    if (!f->bg && cms_sha256_update(&f->sha, p, n) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "SHA-256 failed in OpenSSL");
    if ((e = cms_write_all(f->fd, p, n)) != 0)
        return io_error(err, "writing in", f->direct ? f->path : f->dir, e);
    f->written += (long long)n;
    if (f->bg)
        bg_hash_written(f->bg, n);
    else if (!f->direct && !f->bg_tried && f->written >= CMS_BG_HASH_MIN) {
        f->bg_tried = 1; /* a file of ours can be read back: the thread takes over */
        f->bg = bg_hash_start(f->fd, &f->sha, f->written);
    }
    return 0;
}

cms_sink cms_file_sink_callbacks(cms_file_sink *f)
{
    return (cms_sink){file_begin, file_write, f};
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd >= 0) {
        fsync(fd); /* make the rename durable; best effort */
        close(fd);
    }
}

int cms_file_sink_digest(cms_file_sink *f, char hex[65], cms_error *err)
{
    int e = 0;

    if (f->bg) {
        bg_hash_end(f->bg, 0);
        e = bg_hash_join(f->bg);
        f->bg = NULL;
    }
    if (e > 0)
        return io_error(err, "reading back the download in", f->dir, e);
    if (e || cms_sha256_final_hex(&f->sha, hex) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "SHA-256 failed in OpenSSL");
    return 0;
}

int cms_file_sink_commit(cms_file_sink *f, cms_error *err)
{
    int synced;

    if (final_path(f, err) != 0)
        return -1;
    if (f->bg) /* the thread hashes what is left while the file is synced */
        bg_hash_end(f->bg, 0);
    synced = f->direct || fsync(f->fd) == 0 ? 0 : errno;
    if (cms_file_sink_digest(f, f->sha256, err) != 0)
        return -1;
    if (f->direct) /* a device or FIFO: the bytes are there already */
        return 0;
    if (synced)
        return io_error(err, "syncing the download in", f->dir, synced);
    if (check_replaceable(f->path, err) != 0) /* it may have changed meanwhile */
        return -1;
    if (!f->tmp && cms_link_unique(f->fd, f->dir, ".cmsrec-", &f->tmp) != 0)
        return io_error(err, "naming the download in", f->dir, errno);
    if (rename(f->tmp, f->path) != 0)
        return io_error(err, "renaming the download to", f->path, errno);
    free(f->tmp);
    f->tmp = NULL;
    fsync_dir(f->dir);
    return 0;
}

int cms_file_sink_fd(const cms_file_sink *f)
{
    return f->fd;
}

void cms_file_sink_close(cms_file_sink *f)
{
    if (f->bg) { /* a failure: the thread stops before its file goes */
        bg_hash_end(f->bg, 1);
        bg_hash_join(f->bg);
        f->bg = NULL;
    }
    if (f->fd >= 0)
        close(f->fd); /* an unnamed temporary file disappears here */
    f->fd = -1;
    if (f->tmp)
        unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    free(f->dir);
    free(f->base);
    f->tmp = f->path = f->dir = f->base = NULL;
    cms_sha256_free(&f->sha);
}
