/*
 * cms_fs: small file-system helpers shared by the file sink and unzip.
 */
#ifndef CMS_FS_H
#define CMS_FS_H

#include <stddef.h>

/* Write all `n` bytes (short writes and EINTR are retried). Returns 0, or the
   errno of the write that failed: a disk that fills up reports ENOSPC, never
   a stale errno from an earlier call. */
int cms_write_all(int fd, const void *p, size_t n);

/* "<dir>/<prefix><12 random hex digits>" into `out`. */
void cms_random_name(char *out, size_t cap, const char *dir, const char *prefix);

/* Create a new file "<dir>/<prefix><random>" with O_EXCL and mode 0666, so
   the umask (or a default ACL) decides its permissions as for any file the
   user writes, without reading the umask from /proc. Returns the descriptor
   and the malloc'ed name in *path, or -1 with errno set. */
int cms_create_unique(const char *dir, const char *prefix, char **path);

/* Give the unnamed O_TMPFILE file `fd` the name "<dir>/<prefix><random>":
   linkat(AT_EMPTY_PATH) where permitted, else through /proc/self/fd.
   Returns 0 and the malloc'ed name in *path, or -1 with errno set. */
int cms_link_unique(int fd, const char *dir, const char *prefix, char **path);

/* 1 if an O_TMPFILE file in `dir` can be given a name later (/proc is
   mounted, or linkat(AT_EMPTY_PATH) is permitted: probed with a scratch
   file). Without either, callers use a named temporary file. */
int cms_tmpfile_linkable(const char *dir);

#endif
