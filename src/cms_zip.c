/* cms_zip: libzip reading and safe extraction (see cms_zip.h). */
#define _XOPEN_SOURCE 700 /* nftw */
#include "cms_zip.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zip.h>

#define COPY_BLOCK (64 * 1024)

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

int cms_zip_name_safe(const char *name)
{
    const char *p = name;

    if (!*name || name[0] == '/' || strchr(name, '\\') ||
        (name[0] && name[1] == ':'))
        return 0;
    while (*p) { /* every component: not empty (except a final '/'), not . or .. */
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        if (!end)
            break;
        p = end + 1;
    }
    return 1;
}

static int zip_fail(cms_error *err, const char *what, zip_error_t *ze)
{
    return cms_error_set(err, CMS_E_PROTOCOL, "the ZIP archive is unusable: %s%s%s", what,
                         ze ? ": " : "", ze ? zip_error_strerror(ze) : "");
}

static zip_t *open_archive(const cms_zip_source *src, cms_error *err)
{
    zip_error_t ze;
    zip_source_t *zs;
    zip_t *za;

    zip_error_init(&ze);
    if (src->data)
        zs = zip_source_buffer_create(src->data, src->len, 0, &ze);
    else
        zs = zip_source_file_create(src->path, 0, -1, &ze);
    if (!zs) {
        if (!src->data && zip_error_code_system(&ze) != 0)
            cms_error_set(err, CMS_E_IO, "cannot open '%s': %s", src->path,
                          zip_error_strerror(&ze));
        else
            zip_fail(err, "cannot read it", &ze);
        zip_error_fini(&ze);
        return NULL;
    }
    za = zip_open_from_source(zs, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
    if (!za) {
        int code = zip_error_code_zip(&ze);
        zip_source_free(zs);
        if (!src->data && (code == ZIP_ER_NOENT || code == ZIP_ER_OPEN || code == ZIP_ER_READ))
            cms_error_set(err, CMS_E_IO, "cannot read '%.200s': %s", src->path,
                          zip_error_strerror(&ze));
        else
            zip_fail(err, "not a valid archive", &ze);
    }
    zip_error_fini(&ze);
    return za;
}

static int is_symlink(zip_t *za, zip_uint64_t i)
{
    zip_uint8_t opsys;
    zip_uint32_t attr;

    if (zip_file_get_external_attributes(za, i, 0, &opsys, &attr) != 0)
        return 0;
    return opsys == ZIP_OPSYS_UNIX && ((attr >> 16) & S_IFMT) == S_IFLNK;
}

/* Check every member; fill `out` with the names and sizes of the files. */
static int list_members(zip_t *za, long long max_total, cms_zip_list *out, cms_error *err)
{
    zip_int64_t count = zip_get_num_entries(za, 0), i;
    long long total = 0;

    out->items = calloc(count > 0 ? (size_t)count : 1, sizeof *out->items);
    if (!out->items)
        return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    for (i = 0; i < count; i++) {
        zip_stat_t st;
        size_t j;
        if (zip_stat_index(za, (zip_uint64_t)i, 0, &st) != 0 || !(st.valid & ZIP_STAT_NAME) ||
            !(st.valid & ZIP_STAT_SIZE))
            return zip_fail(err, "a member cannot be read", zip_get_error(za));
        if (!cms_zip_name_safe(st.name))
            return cms_error_set(err, CMS_E_PROTOCOL,
                                 "the ZIP member '%.200s' would escape the target directory",
                                 st.name);
        if (is_symlink(za, (zip_uint64_t)i))
            return cms_error_set(err, CMS_E_PROTOCOL,
                                 "the ZIP member '%.200s' is a symbolic link", st.name);
        if (st.name[strlen(st.name) - 1] == '/')
            continue; /* a directory entry */
        for (j = 0; j < out->n; j++)
            if (strcmp(out->items[j].name, st.name) == 0)
                return cms_error_set(err, CMS_E_PROTOCOL,
                                     "the ZIP member '%.200s' appears twice", st.name);
        total += (long long)st.size;
        if (max_total > 0 && total > max_total)
            return cms_error_set(err, CMS_E_TOO_LARGE,
                                 "the ZIP members add up to more than %lld bytes", max_total);
        out->items[out->n].name = strdup(st.name);
        out->items[out->n].size = (long long)st.size;
        out->items[out->n].index = (unsigned long long)i;
        if (!out->items[out->n++].name)
            return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    }
    return 0;
}

/* Copy member `e` to `fd` (or into `*data`), checking the declared size. */
static int copy_member(zip_t *za, const cms_zip_entry *e, int fd, char **data,
                       cms_error *err)
{
    char buf[COPY_BLOCK];
    zip_file_t *zf = zip_fopen_index(za, e->index, 0);
    long long got = 0;
    zip_int64_t n;

    if (!zf)
        return zip_fail(err, "a member cannot be opened", zip_get_error(za));
    if (data && !(*data = malloc(e->size > 0 ? (size_t)e->size : 1))) {
        zip_fclose(zf);
        return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    }
    while ((n = zip_fread(zf, buf, sizeof buf)) > 0) {
        if (got + n > e->size)
            break;
        if (data)
            memcpy(*data + got, buf, (size_t)n);
        else if (write(fd, buf, (size_t)n) != n) {
            zip_fclose(zf);
            return cms_error_set(err, CMS_E_IO, "writing '%.200s' failed: %s", e->name,
                                 strerror(errno));
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

int cms_zip_read(const cms_zip_source *src, long long max_total, cms_zip_list *out,
                 cms_error *err)
{
    zip_t *za = open_archive(src, err);
    size_t i;
    int rc = -1;

    if (!za)
        return -1;
    if (list_members(za, max_total, out, err) == 0) {
        for (i = 0; i < out->n; i++)
            if (copy_member(za, &out->items[i], -1, &out->items[i].data, err) != 0)
                break;
        rc = i == out->n ? 0 : -1;
    }
    zip_discard(za);
    if (rc != 0)
        cms_zip_list_free(out);
    return rc;
}

/* mkdir -p for the directories of relative `name` under `root`. */
static int make_parents(const char *root, const char *name, cms_error *err)
{
    char path[4096];
    const char *p = name;

    while ((p = strchr(p, '/')) != NULL) {
        if ((size_t)snprintf(path, sizeof path, "%s/%.*s", root, (int)(p - name), name) >=
            sizeof path)
            return cms_error_set(err, CMS_E_IO, "the path of '%.200s' is too long", name);
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
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

static int extract_to(zip_t *za, cms_zip_list *l, const char *stage, cms_error *err)
{
    char path[4096];
    size_t i;

    for (i = 0; i < l->n; i++) {
        int fd, rc;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", stage, l->items[i].name) >=
            sizeof path)
            return cms_error_set(err, CMS_E_IO, "the path of '%.200s' is too long",
                                 l->items[i].name);
        if (make_parents(stage, l->items[i].name, err) != 0)
            return -1;
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
        if (fd < 0)
            return cms_error_set(err, CMS_E_IO, "creating '%s' failed: %s", path,
                                 strerror(errno));
        rc = copy_member(za, &l->items[i], fd, NULL, err);
        if (rc == 0 && fsync(fd) != 0)
            rc = cms_error_set(err, CMS_E_IO, "syncing '%s' failed: %s", path, strerror(errno));
        close(fd);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* Everything is checked and staged: rename the members into `dir`. */
static int move_into_place(cms_zip_list *l, const char *stage, const char *dir,
                           cms_error *err)
{
    char from[4096], to[4096];
    size_t i;

    for (i = 0; i < l->n; i++) {
        if ((size_t)snprintf(from, sizeof from, "%s/%s", stage, l->items[i].name) >=
                sizeof from ||
            (size_t)snprintf(to, sizeof to, "%s/%s", dir, l->items[i].name) >= sizeof to ||
            make_parents(dir, l->items[i].name, err) != 0)
            return cms_error_set(err, CMS_E_IO, "cannot place '%.200s' in '%.200s'",
                                 l->items[i].name, dir);
        if (rename(from, to) != 0)
            return cms_error_set(err, CMS_E_IO, "moving '%.200s' into '%.200s' failed: %s",
                                 l->items[i].name, dir, strerror(errno));
        if (!(l->items[i].path = strdup(to)))
            return cms_error_set(err, CMS_E_NOMEM, "out of memory");
    }
    return 0;
}

int cms_zip_extract(const cms_zip_source *src, const char *dir, long long max_total,
                    cms_zip_list *out, cms_error *err)
{
    char stage[4096];
    zip_t *za;
    int rc = -1;

    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return cms_error_set(err, CMS_E_IO, "creating '%.200s' failed: %s", dir,
                             strerror(errno));
    if ((size_t)snprintf(stage, sizeof stage, "%s/.cmsrec-unzip-XXXXXX", dir) >= sizeof stage)
        return cms_error_set(err, CMS_E_IO, "the directory name is too long");
    za = open_archive(src, err);
    if (!za)
        return -1;
    if (list_members(za, max_total, out, err) == 0) {
        if (!mkdtemp(stage))
            cms_error_set(err, CMS_E_IO, "creating a directory in '%.200s' failed: %s", dir,
                          strerror(errno));
        else {
            rc = extract_to(za, out, stage, err);
            if (rc == 0)
                rc = move_into_place(out, stage, dir, err);
            remove_tree(stage);
        }
    }
    zip_discard(za);
    if (rc != 0)
        cms_zip_list_free(out);
    return rc;
}
