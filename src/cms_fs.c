/* cms_fs: file-system helpers (see cms_fs.h). */
#define _GNU_SOURCE
#include "cms_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int cms_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;

    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno;
        if (w == 0)
            return ENOSPC; /* write(2) makes no progress only when nothing fits */
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

void cms_random_name(char *out, size_t cap, const char *dir, const char *prefix)
{
    unsigned long long r;

    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != sizeof r) {
        static unsigned counter; /* only varies the fallback; races are harmless */
        r = ((unsigned long long)time(NULL) << 16) ^ ((unsigned long long)getpid() << 32) ^
            (unsigned long long)clock() ^ ++counter;
    }
    snprintf(out, cap, "%s/%s%012llx", dir, prefix, r & 0xFFFFFFFFFFFFULL);
}

/* Try `attempt` on fresh random names until it does not fail with EEXIST. */
static int with_unique_name(const char *dir, const char *prefix, char **path,
                            int (*attempt)(const char *name, int arg), int arg)
{
    size_t cap = strlen(dir) + strlen(prefix) + 16;
    int tries, rc = -1, e = EEXIST;

    if (!(*path = malloc(cap))) {
        errno = ENOMEM;
        return -1;
    }
    for (tries = 0; tries < 32 && e == EEXIST; tries++) {
        cms_random_name(*path, cap, dir, prefix);
        if ((rc = attempt(*path, arg)) >= 0)
            return rc;
        e = errno;
    }
    free(*path);
    *path = NULL;
    errno = e;
    return -1;
}

static int create_at(const char *name, int unused)
{
    (void)unused;
    return open(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
}

int cms_create_unique(const char *dir, const char *prefix, char **path)
{
    return with_unique_name(dir, prefix, path, create_at, 0);
}

/* linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; /proc/self/fd works for
   anyone but needs /proc. Either will do. */
static int link_at(const char *name, int fd)
{
    char proc[64];
    int e;

    if (linkat(fd, "", AT_FDCWD, name, AT_EMPTY_PATH) == 0)
        return 0;
    if (errno == EEXIST)
        return -1;
    e = errno;
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, name, AT_SYMLINK_FOLLOW) == 0)
        return 0;
    if (errno == ENOENT) /* no /proc: the first failure says more */
        errno = e;
    return -1;
}

int cms_link_unique(int fd, const char *dir, const char *prefix, char **path)
{
    return with_unique_name(dir, prefix, path, link_at, fd);
}

int cms_tmpfile_linkable(const char *dir)
{
    char *name = NULL;
    int fd, ok;

    if (access("/proc/self/fd", X_OK) == 0)
        return 1;
    fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return 0;
    ok = cms_link_unique(fd, dir, ".cmsrec-probe-", &name) == 0;
    if (ok)
        unlink(name);
    free(name);
    close(fd);
    return ok;
}
