/* cms_zip: libzip reading and safe extraction (see cms_zip.h). */
#define _GNU_SOURCE /* nftw, renameat2 */
#include "cms_zip.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zip.h>

#include "cms_buf.h"
#include "cms_fs.h"
#include "cms_text.h"

#define COPY_BLOCK (64 * 1024)
#define PROGRESS_INTERVAL_MS 200
#define PATH_CAP 4096

void cms_zip_list_init(cms_zip_list *l)
{
    l->items = NULL;
    l->n = 0;
}

void cms_zip_list_free(cms_zip_list *l)
{
    size_t i;

    for (i = 0; i < l->n; i++) {
        free(l->items[i].name);
        free(l->items[i].data);
        free(l->items[i].path);
    }
    free(l->items);
    cms_zip_list_init(l);
}

int cms_zip_progress_due(cms_zip_progress *p)
{
    struct timespec now;
    long ms;

    clock_gettime(CLOCK_MONOTONIC, &now);
    ms = (now.tv_sec - p->last.tv_sec) * 1000L + (now.tv_nsec - p->last.tv_nsec) / 1000000L;
    if (ms < PROGRESS_INTERVAL_MS)
        return 0;
    p->last = now;
    return 1;
}

int cms_zip_name_safe(const char *name)
{
    const char *p = name;

    if (!*name || name[0] == '/' || strchr(name, '\\') || name[1] == ':' ||
        strlen(name) > 1024)
        return 0;
    if (!cms_text_printable(name, strlen(name))) /* no C0/C1 controls, valid UTF-8 */
        return 0;
    for (p = name; *p;) { /* every component: not empty (but a final '/'), not . or .. */
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 0 || n > 255 || (n == 1 && p[0] == '.') ||
            (n == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        if (!end)
            break;
        p = end + 1;
    }
    return 1;
}

/* ===== OPENING ===== */

static int zip_fail(cms_error *err, const char *what, zip_error_t *ze)
{
    return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP archive is unusable: %s%s%s", what,
                         ze ? ": " : "", ze ? zip_error_strerror(ze) : "");
}

static zip_source_t *make_source(const cms_zip_source *src, zip_error_t *ze)
{
    FILE *fp;
    int fd;

    if (src->data)
        return zip_source_buffer_create(src->data, src->len, 0, ze);
    if (src->path)
        return zip_source_file_create(src->path, 0, -1, ze);
    /* an open file, read through a duplicate that libzip closes */
    fd = dup(src->fd);
    fp = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!fp) {
        if (fd >= 0)
            close(fd);
        zip_error_set(ze, ZIP_ER_OPEN, errno);
        return NULL;
    }
    zip_source_t *zs = zip_source_filep_create(fp, 0, -1, ze);
    if (!zs)
        fclose(fp);
    return zs;
}

static zip_t *open_archive(const cms_zip_source *src, cms_error *err)
{
    zip_error_t ze;
    zip_source_t *zs;
    zip_t *za = NULL;
    int code;

    zip_error_init(&ze);
    zs = make_source(src, &ze);
    if (zs) {
        za = zip_open_from_source(zs, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
        if (!za)
            zip_source_free(zs);
    }
    code = zip_error_code_zip(&ze);
    if (!za && src->path && (code == ZIP_ER_NOENT || code == ZIP_ER_OPEN || code == ZIP_ER_READ))
        cms_error_set(err, CMS_E_IO, "cannot read '%.200s': %s", src->path,
                      zip_error_strerror(&ze));
    else if (!za)
        zip_fail(err, "not a valid archive", &ze);
    zip_error_fini(&ze);
    return za;
}

/* ===== CHECKING THE MEMBERS ===== */

static int is_symlink(zip_t *za, zip_uint64_t i)
{
    zip_uint8_t opsys;
    zip_uint32_t attr;

    if (zip_file_get_external_attributes(za, i, 0, &opsys, &attr) != 0)
        return 0;
    return opsys == ZIP_OPSYS_UNIX && ((attr >> 16) & S_IFMT) == S_IFLNK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const cms_zip_entry *)a)->name, ((const cms_zip_entry *)b)->name);
}

/* One member: its name is safe, it is no link, its size adds up within max_total. */
static int check_member(zip_t *za, zip_int64_t i, zip_stat_t *st, long long max_total,
                        long long *total, cms_error *err)
{
    if (zip_stat_index(za, (zip_uint64_t)i, 0, st) != 0 || !(st->valid & ZIP_STAT_NAME) ||
        !(st->valid & ZIP_STAT_SIZE))
        return zip_fail(err, "a member cannot be read", zip_get_error(za));
    if (!cms_zip_name_safe(st->name)) {
        char shown[201];
        cms_strlcpy(shown, st->name, sizeof shown);
        cms_text_clean(shown); /* no escapes in messages */
        return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP member '%s' has an unsafe name: "
                             "it would escape the target directory, or holds control "
                             "characters", shown);
    }
    if (is_symlink(za, (zip_uint64_t)i))
        return cms_error_set(err, CMS_E_PROTOCOL,
                             "the ZIP member '%.200s' is a symbolic link", st->name);
    if (st->size > (zip_uint64_t)(INT64_MAX - *total))
        return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP member '%.200s' declares an "
                             "impossible size", st->name);
    *total += (long long)st->size;
    if (max_total > 0 && *total > max_total)
        return cms_error_set(err, CMS_E_TOO_LARGE,
                             "the ZIP members add up to more than %lld bytes", max_total);
    return 0;
}

/* No two members with the same name, no file that is also a directory of another. */
static int check_names(const cms_zip_list *l, cms_error *err)
{
    size_t i;

    for (i = 0; i + 1 < l->n; i++) {
        const char *a = l->items[i].name;
        size_t n = strlen(a);
        size_t j;
        if (strcmp(a, l->items[i + 1].name) == 0)
            return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP member '%.200s' appears twice", a);
        /* sorted: "a/..." comes after "a" and before anything greater than "a/" */
        for (j = i + 1; j < l->n && strncmp(l->items[j].name, a, n) == 0; j++)
            if (l->items[j].name[n] == '/')
                return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP member '%.200s' is both a "
                                     "file and a directory", a);
    }
    return 0;
}

/* A directory entry "a/" while a file "a" exists: both a file and a directory. */
static int check_directories(zip_t *za, zip_int64_t count, const cms_zip_list *files,
                             cms_error *err)
{
    zip_int64_t i;

    for (i = 0; i < count; i++) {
        const char *name = zip_get_name(za, (zip_uint64_t)i, 0);
        size_t n = name ? strlen(name) : 0;
        cms_zip_entry key;
        char *file;
        int clash;
        if (n < 2 || name[n - 1] != '/')
            continue;
        if (!(file = strndup(name, n - 1)))
            return cms_error_set(err, CMS_E_NOMEM, "out of memory");
        key.name = file;
        clash = bsearch(&key, files->items, files->n, sizeof *files->items, by_name) != NULL;
        free(file);
        if (clash)
            return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP member '%.*s' is both a file "
                                 "and a directory", (int)(n - 1 > 200 ? 200 : n - 1), name);
    }
    return 0;
}

/* Fill `out` with the file members, sorted by name, every rule checked. */
static int list_members(zip_t *za, long long max_total, cms_zip_list *out, cms_error *err)
{
    zip_int64_t count = zip_get_num_entries(za, 0), i;
    long long total = 0;

    if (count > CMS_ZIP_MAX_MEMBERS)
        return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP archive has too many members "
                             "(%lld, at most %d)", (long long)count, CMS_ZIP_MAX_MEMBERS);
    out->items = calloc(count > 0 ? (size_t)count : 1, sizeof *out->items);
    if (!out->items)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    for (i = 0; i < count; i++) {
        zip_stat_t st;
        cms_zip_entry *e = &out->items[out->n];
        if (check_member(za, i, &st, max_total, &total, err) != 0)
            return -1;
        if (st.name[strlen(st.name) - 1] == '/')
            continue; /* a directory entry: directories come from the file names */
        e->name = strdup(st.name);
        e->size = (long long)st.size;
        e->index = (unsigned long long)i;
        if (!e->name)
            return cms_error_set(err, CMS_E_NOMEM, "out of memory");
        out->n++;
    }
    if (out->n == 0)
        return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP archive holds no files");
    qsort(out->items, out->n, sizeof *out->items, by_name);
    if (check_names(out, err) != 0)
        return -1;
    return check_directories(za, count, out, err);
}

/* ===== READING ===== */

/* Where copy_member puts a member's bytes: a file, or memory. */
typedef struct member_out {
    int fd;                 /* -1 for memory */
    cms_buf mem;
    cms_zip_progress *progress;
    long long *done;        /* bytes extracted so far, all members */
    long long total;        /* what they declare, all members */
} member_out;

static int put_bytes(member_out *o, const cms_zip_entry *e, const char *p, size_t n,
                     cms_error *err)
{
    int e_no;

    if (o->fd < 0) {
        /* grows with what really comes: a declared size proves nothing */
        if (cms_buf_append(&o->mem, p, n) != 0)
            return cms_error_set(err, CMS_E_NOMEM, "out of memory for '%.200s'", e->name);
    } else if ((e_no = cms_write_all(o->fd, p, n)) != 0) {
        return cms_error_set(err, CMS_E_IO, "writing '%.200s' failed: %s%s", e->name,
                             strerror(e_no), e_no == ENOSPC ? " (disk full)" : "");
    }
    *o->done += (long long)n;
    if (o->progress && o->progress->fn && cms_zip_progress_due(o->progress) &&
        o->progress->fn(o->progress->ud, *o->done, o->total, err) != 0) {
        if (err->kind == CMS_OK)
            cms_error_set(err, CMS_E_CANCELLED, "unpacking was cancelled");
        return -1;
    }
    return 0;
}

/* Copy member `e` to `o`, checking its size against the declared one. */
static int copy_member(zip_t *za, const cms_zip_entry *e, member_out *o, cms_error *err)
{
    char buf[COPY_BLOCK];
    zip_file_t *zf = zip_fopen_index(za, e->index, 0);
    long long got = 0;
    zip_int64_t n;

    if (!zf)
        return zip_fail(err, "a member cannot be opened", zip_get_error(za));
    while ((n = zip_fread(zf, buf, sizeof buf)) > 0) {
        if (got + n > e->size)
            break;
        if (put_bytes(o, e, buf, (size_t)n, err) != 0) {
            zip_fclose(zf);
            return -1;
        }
        got += n;
    }
    if (n < 0 || got != e->size) {
        char what[300];
        snprintf(what, sizeof what, "member '%.200s' is corrupt (%s)", e->name,
                 n < 0 ? "bad data or CRC" : "size differs from the declared size");
        zip_fail(err, what, n < 0 ? zip_file_get_error(zf) : NULL);
        zip_fclose(zf);
        return -1;
    }
    zip_fclose(zf);
    return 0;
}

static long long declared_total(const cms_zip_list *l)
{
    long long t = 0;
    size_t i;

    for (i = 0; i < l->n; i++)
        t += l->items[i].size; /* bounded by max_total in list_members */
    return t;
}

int cms_zip_read(const cms_zip_source *src, long long max_total, cms_zip_list *out,
                 cms_error *err)
{
    zip_t *za = open_archive(src, err);
    size_t i;
    int rc = -1;

    if (!za)
        return -1;
    if (list_members(za, max_total, out, err) == 0) {
        long long done = 0;
        member_out o = {-1, {NULL, 0, 0}, NULL, &done, declared_total(out)};
        for (i = 0; i < out->n; i++) {
            cms_buf_init(&o.mem);
            if (copy_member(za, &out->items[i], &o, err) != 0) {
                cms_buf_free(&o.mem);
                break;
            }
            if (!o.mem.data && cms_buf_reserve(&o.mem, 0) != 0) { /* an empty member */
                cms_error_set(err, CMS_E_NOMEM, "out of memory");
                break;
            }
            out->items[i].data = cms_buf_steal(&o.mem, NULL);
        }
        rc = i == out->n ? 0 : -1;
    }
    zip_discard(za);
    if (rc != 0)
        cms_zip_list_free(out);
    return rc;
}

/* ===== EXTRACTING ===== */

/* The created directories and placed files of one extraction, for rollback. */
typedef struct placed {
    char **paths;
    int *is_dir;
    size_t n, cap;
} placed;

static int remember(placed *pl, const char *path, int is_dir)
{
    if (pl->n == pl->cap) {
        size_t cap = pl->cap ? pl->cap * 2 : 16;
        char **p = realloc(pl->paths, cap * sizeof *p);
        int *d = p ? realloc(pl->is_dir, cap * sizeof *d) : NULL;
        if (p)
            pl->paths = p;
        if (!d)
            return -1;
        pl->is_dir = d;
        pl->cap = cap;
    }
    if (!(pl->paths[pl->n] = strdup(path)))
        return -1;
    pl->is_dir[pl->n++] = is_dir;
    return 0;
}

/* Undo (newest first) when `undo`, then free the record. */
static void forget(placed *pl, int undo)
{
    while (pl->n > 0) {
        pl->n--;
        if (undo)
            (pl->is_dir[pl->n] ? rmdir : unlink)(pl->paths[pl->n]);
        free(pl->paths[pl->n]);
    }
    free(pl->paths);
    free(pl->is_dir);
}

static int join(char *out, const char *a, const char *b, size_t bn, cms_error *err)
{
    if ((size_t)snprintf(out, PATH_CAP, "%s/%.*s", a, (int)bn, b) >= PATH_CAP)
        return cms_error_set(err, CMS_E_IO, "the path of '%.200s' is too long", b);
    return 0;
}

/*
 * Before anything moves: under `dir`, every parent of every member is missing
 * or a real directory (a symbolic link there would lead outside), and no
 * member exists yet (unzip never replaces files).
 */
static int check_destination(const cms_zip_list *l, const char *dir, cms_error *err)
{
    char path[PATH_CAP];
    struct stat st;
    size_t i;

    for (i = 0; i < l->n; i++) {
        const char *name = l->items[i].name, *p = name;
        while ((p = strchr(p, '/')) != NULL) {
            if (join(path, dir, name, (size_t)(p - name), err) != 0)
                return -1;
            if (lstat(path, &st) == 0 && !S_ISDIR(st.st_mode))
                return cms_error_set(err, CMS_E_IO, "cannot unzip '%.200s': '%.200s' is %s",
                                     name, path, S_ISLNK(st.st_mode) ? "a symbolic link"
                                                                     : "not a directory");
            p++;
        }
        if (join(path, dir, name, strlen(name), err) != 0)
            return -1;
        if (lstat(path, &st) == 0)
            return cms_error_set(err, CMS_E_IO, "cannot unzip '%.200s': '%.200s' already "
                                 "exists (unzip never replaces files)", name, path);
    }
    return 0;
}

/* mkdir -p for the parents of relative `name` under our staging directory. */
static int make_parents(const char *root, const char *name, cms_error *err)
{
    char path[PATH_CAP];
    const char *p = name;

    while ((p = strchr(p, '/')) != NULL) {
        if (join(path, root, name, (size_t)(p - name), err) != 0)
            return -1;
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return cms_error_set(err, CMS_E_IO, "creating '%s' failed: %s", path,
                                 strerror(errno));
        p++;
    }
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int extract_to(zip_t *za, cms_zip_list *l, const char *stage,
                      cms_zip_progress *progress, cms_error *err)
{
    char path[PATH_CAP];
    long long done = 0;
    member_out o = {-1, {NULL, 0, 0}, progress, &done, declared_total(l)};
    size_t i;

    for (i = 0; i < l->n; i++) {
        const char *name = l->items[i].name;
        int fd, rc;
        if (join(path, stage, name, strlen(name), err) != 0 ||
            make_parents(stage, name, err) != 0)
            return -1;
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd < 0)
            return cms_error_set(err, CMS_E_IO, "creating '%s' failed: %s", path,
                                 strerror(errno));
        o.fd = fd;
        rc = copy_member(za, &l->items[i], &o, err);
        if (rc == 0 && fsync(fd) != 0)
            rc = cms_error_set(err, CMS_E_IO, "syncing '%s' failed: %s", path, strerror(errno));
        close(fd);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/*
 * Open the parent directory of member `name` under `dir`, creating missing
 * levels. Each level is opened with O_NOFOLLOW relative to the one before,
 * so a symbolic link put there after check_destination still leads nowhere.
 */
static int open_parent(const char *dir, const char *name, placed *pl, cms_error *err)
{
    char path[PATH_CAP], comp[256];
    const char *p = name, *slash;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    while (fd >= 0 && (slash = strchr(p, '/')) != NULL) {
        int next;
        snprintf(comp, sizeof comp, "%.*s", (int)(slash - p), p); /* <= 255: name rules */
        if (mkdirat(fd, comp, 0777) == 0) { /* the umask applies */
            int rc = join(path, dir, name, (size_t)(slash - name), err);
            if (rc == 0 && remember(pl, path, 1) != 0)
                rc = cms_error_set(err, CMS_E_NOMEM, "out of memory");
            if (rc != 0) {
                close(fd);
                return -1;
            }
        } else if (errno != EEXIST) {
            break;
        }
        next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = next;
        p = slash + 1;
    }
    if (fd < 0 || strchr(p, '/')) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return cms_error_set(err, CMS_E_IO, "cannot place '%.200s' in '%.200s': %s", name,
                             dir, strerror(e));
    }
    return fd;
}

/* rename() into directory `dirfd` that fails instead of replacing a file. */
static int rename_noreplace(const char *from, int dirfd, const char *leaf)
{
#ifdef RENAME_NOREPLACE
    if (renameat2(AT_FDCWD, from, dirfd, leaf, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
#endif
    if (linkat(AT_FDCWD, from, dirfd, leaf, 0) != 0) /* link() never replaces either */
        return -1;
    unlink(from);
    return 0;
}

/* Everything is checked and staged: move the members into `dir`, all or none. */
static int move_into_place(cms_zip_list *l, const char *stage, const char *dir,
                           placed *pl, cms_error *err)
{
    char from[PATH_CAP], to[PATH_CAP];
    size_t i;

    for (i = 0; i < l->n; i++) {
        const char *name = l->items[i].name;
        const char *leaf = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
        int parent, rc;
        if (join(from, stage, name, strlen(name), err) != 0 ||
            join(to, dir, name, strlen(name), err) != 0 ||
            (parent = open_parent(dir, name, pl, err)) < 0)
            return -1;
        rc = rename_noreplace(from, parent, leaf);
        close(parent);
        if (rc != 0)
            return cms_error_set(err, CMS_E_IO, "moving '%.200s' into '%.200s' failed: %s",
                                 name, dir, strerror(errno));
        if (remember(pl, to, 0) != 0 || !(l->items[i].path = strdup(to)))
            return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    }
    return 0;
}

static int extract_checked(zip_t *za, cms_zip_list *l, const char *dir, placed *pl,
                           cms_zip_progress *progress, cms_error *err)
{
    char stage[PATH_CAP];
    int rc;

    if (join(stage, dir, ".cmsrec-unzip-XXXXXX", 20, err) != 0)
        return -1;
    if (!mkdtemp(stage))
        return cms_error_set(err, CMS_E_IO, "creating a directory in '%.200s' failed: %s",
                             dir, strerror(errno));
    /* the archive's own faults first (protocol), then the destination's (io) */
    rc = extract_to(za, l, stage, progress, err);
    if (rc == 0)
        rc = check_destination(l, dir, err);
    if (rc == 0)
        rc = move_into_place(l, stage, dir, pl, err);
    remove_tree(stage);
    return rc;
}

/* `dir` exists as a directory afterwards; one we create is removed on failure. */
static int prepare_dir(const char *dir, placed *pl, cms_error *err)
{
    struct stat st;
    int e;

    if (mkdir(dir, 0777) == 0)
        return remember(pl, dir, 1) == 0 ? 0 : cms_error_set(err, CMS_E_NOMEM, "out of memory");
    e = errno;
    if (e == EEXIST && stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    return cms_error_set(err, CMS_E_IO, "cannot unzip into '%.200s': %s", dir,
                         e == EEXIST ? "not a directory" : strerror(e));
}

int cms_zip_extract(const cms_zip_source *src, const char *dir, long long max_total,
                    cms_zip_progress *progress, cms_zip_list *out, cms_error *err)
{
    placed pl = {NULL, NULL, 0, 0};
    zip_t *za;
    int rc = -1;

    za = open_archive(src, err);
    if (!za)
        return -1;
    if (list_members(za, max_total, out, err) == 0 && prepare_dir(dir, &pl, err) == 0)
        rc = extract_checked(za, out, dir, &pl, progress, err);
    zip_discard(za);
    forget(&pl, rc != 0); /* on failure: remove what was placed, newest first */
    if (rc != 0)
        cms_zip_list_free(out);
    return rc;
}
