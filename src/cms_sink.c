/* cms_sink: memory and file destinations of a recording (see cms_sink.h). */
#define _GNU_SOURCE /* O_TMPFILE, linkat */
#include "cms_sink.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ===== MEMORY ===== */

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
    if (total > 0 && (unsigned long long)total < (size_t)-1 / 2 &&
        cms_buf_reserve(&m->buf, (size_t)total) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory for a %lld-byte recording",
                             total);
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

/* Split `path` into directory and name; a directory path gives name NULL. */
static int split_destination(cms_file_sink *f, const char *path, const char *call_id,
                             cms_error *err)
{
    struct stat st;
    char safe[256];
    const char *slash;

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
    slash = strrchr(path, '/');
    f->path = strdup(path);
    f->dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path))
                   : strdup(".");
    return f->path && f->dir ? 0 : cms_error_set(err, CMS_E_NOMEM, "out of memory");
}

/* The process umask, read without changing it (umask(2) would race threads). */
static mode_t current_umask(void)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[128];
    unsigned int m;
    mode_t mask = 022;

    if (!fp)
        return mask;
    while (fgets(line, sizeof line, fp))
        if (sscanf(line, "Umask: %o", &m) == 1) {
            mask = (mode_t)m;
            break;
        }
    fclose(fp);
    return mask;
}

/*
 * The temporary file. Where the file system supports it, an unnamed
 * O_TMPFILE file: if the process is killed, nothing is left behind. Else a
 * hidden ".cmsrec-XXXXXX" beside the destination, removed on failure.
 */
static int open_temp(cms_file_sink *f, cms_error *err)
{
#if defined(O_TMPFILE) && !defined(CMS_NO_O_TMPFILE) /* the asan build tests the fallback */
    /* the umask applies; read-write because unzip reads the download back */
    f->fd = open(f->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0666);
    if (f->fd >= 0)
        return 0;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
        return io_error(err, "creating a file in", f->dir, errno);
#endif
    f->tmp = str_printf("%s/%s", f->dir, ".cmsrec-XXXXXX");
    if (!f->tmp)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    f->fd = mkstemp(f->tmp);
    if (f->fd < 0) {
        int e = errno;
        free(f->tmp);
        f->tmp = NULL;
        return io_error(err, "creating a file in", f->dir, e);
    }
    /* mkstemp makes 0600; the result should look like any file the user writes */
    fchmod(f->fd, 0666 & ~current_umask());
    return 0;
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
    return open_temp(f, err);
}

static int file_begin(void *ud, long long total, cms_format fmt, cms_error *err)
{
    cms_file_sink *f = ud;

    (void)total, (void)err;
    f->format = fmt;
    return 0;
}

static int file_write(void *ud, const char *p, size_t n, cms_error *err)
{
    cms_file_sink *f = ud;

    if (cms_sha256_update(&f->sha, p, n) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "SHA-256 failed in OpenSSL");
    while (n > 0) {
        ssize_t w = write(f->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return io_error(err, "writing in", f->dir, w < 0 ? errno : EIO);
        p += w;
        n -= (size_t)w;
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

/* Give an unnamed temporary file a hidden name, so that it can be renamed. */
static int name_temp(cms_file_sink *f, cms_error *err)
{
    char proc[64];
    int tries;

    snprintf(proc, sizeof proc, "/proc/self/fd/%d", f->fd);
    for (tries = 0; tries < 16; tries++) {
        unsigned long long r;
        char name[32];
        if (getrandom(&r, sizeof r, 0) != sizeof r)
            r = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 20) ^ tries;
        snprintf(name, sizeof name, ".cmsrec-%012llx", r & 0xFFFFFFFFFFFFULL);
        f->tmp = str_printf("%s/%s", f->dir, name);
        if (!f->tmp)
            return cms_error_set(err, CMS_E_NOMEM, "out of memory");
        if (linkat(AT_FDCWD, proc, AT_FDCWD, f->tmp, AT_SYMLINK_FOLLOW) == 0)
            return 0;
        free(f->tmp);
        f->tmp = NULL;
        if (errno != EEXIST)
            return io_error(err, "naming the download in", f->dir, errno);
    }
    return io_error(err, "naming the download in", f->dir, EEXIST);
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

int cms_file_sink_commit(cms_file_sink *f, cms_error *err)
{
    if (final_path(f, err) != 0)
        return -1;
    if (cms_sha256_final_hex(&f->sha, f->sha256) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "SHA-256 failed in OpenSSL");
    if (fsync(f->fd) != 0)
        return io_error(err, "syncing the download in", f->dir, errno);
    if (!f->tmp && name_temp(f, err) != 0)
        return -1;
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
