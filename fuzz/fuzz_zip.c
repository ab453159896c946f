/*
 * fuzz_zip: the ZIP reader, the member-name rules and the extractor
 * (cms_zip_read over an in-memory archive, cms_zip_name_safe,
 * cms_zip_extract into a scratch directory).
 *
 * Input: the archive's bytes. The same bytes are read into memory and
 * extracted into ROOT/a/b/out (a directory that does not exist before each
 * run), and the two must agree: both succeed with the same members and
 * bytes, or both fail with the same kind. After a success, ROOT holds
 * exactly the members' files under a/b/out and nothing else, each a regular
 * file with the bytes read; after a failure, nothing at all under a/b. When
 * the input's length is 3 modulo 4, the progress callback cancels the
 * extraction at its first call, which must leave nothing either.
 *
 * ROOT is made once per process under /dev/shm (fsync is free there) or
 * $TMPDIR, emptied after every run, removed at exit, also after a finding.
 */
#define _GNU_SOURCE /* nftw */
#include <dirent.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sanitizer/common_interface_defs.h>

#include "../src/cms_zip.h"

/* A broken invariant: say which, then abort so libFuzzer keeps the input. */
#define CHECK(c) ((c) ? (void)0 : check_failed(#c, __LINE__))

static void remove_root(void);

static void check_failed(const char *what, int line)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
    remove_root();
    abort();
}
#define MAX_TOTAL (1LL << 20)

static char root[256], dest[300];

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

static void remove_root(void)
{
    remove_tree(root);
}

static void make_root(void)
{
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    char ab[300];

    snprintf(root, sizeof root, "%s/cmsrec-fuzz-zip-XXXXXX", tmp ? tmp : "/tmp");
    CHECK(mkdtemp(root) != NULL);
    atexit(remove_root);
    __sanitizer_set_death_callback(remove_root); /* ASan or UBSan stops the run */
    snprintf(ab, sizeof ab, "%s/a", root);
    CHECK(mkdir(ab, 0700) == 0);
    snprintf(ab, sizeof ab, "%s/a/b", root);
    CHECK(mkdir(ab, 0700) == 0);
    snprintf(dest, sizeof dest, "%s/a/b/out", root);
}

/* The names in directory `path`, besides . and .. (at most 2 wanted). */
static int entries(const char *path, const char *only)
{
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;

    CHECK(d != NULL);
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        CHECK(only && strcmp(e->d_name, only) == 0);
        n++;
    }
    closedir(d);
    return n;
}

/* Every file under out/ is a member, every directory a parent of one;
   files counted in walk_files. */
static const cms_zip_list *walk_list;
static size_t walk_files;

static int check_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    size_t i, n = strlen(dest);

    (void)ftw;
    CHECK(strncmp(path, dest, n) == 0 && (path[n] == '\0' || path[n] == '/'));
    if (flag == FTW_D && path[n] == '\0')
        return 0;
    if (flag == FTW_D) { /* a parent of a member: no staging directory left */
        size_t len = strlen(path + n + 1);
        for (i = 0; i < walk_list->n; i++)
            if (strncmp(walk_list->items[i].name, path + n + 1, len) == 0 &&
                walk_list->items[i].name[len] == '/')
                return 0;
        CHECK(!"a directory that no member needs");
    }
    CHECK(flag == FTW_F && S_ISREG(st->st_mode)); /* no links, devices, FIFOs */
    for (i = 0; i < walk_list->n; i++)
        if (strcmp(path + n + 1, walk_list->items[i].name) == 0)
            break;
    CHECK(i < walk_list->n && st->st_size == walk_list->items[i].size);
    walk_files++;
    return 0;
}

static void check_name_rules(const char *name)
{
    const char *p;

    if (!cms_zip_name_safe(name))
        return;
    CHECK(name[0] != '/' && !strchr(name, '\\') && strlen(name) <= 1024);
    for (p = name; *p;) { /* no component is empty, "." or ".." */
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        CHECK(n > 0 && !(n == 1 && p[0] == '.') && !(n == 2 && p[0] == '.' && p[1] == '.'));
        if (!end)
            break;
        p = end + 1;
    }
}

static void check_read(const cms_zip_list *l)
{
    long long total = 0;
    size_t i;

    CHECK(l->n > 0);
    for (i = 0; i < l->n; i++) {
        const char *name = l->items[i].name;
        size_t len = strlen(name);
        CHECK(cms_zip_name_safe(name) && name[len - 1] != '/');
        CHECK(l->items[i].data != NULL && l->items[i].size >= 0);
        total += l->items[i].size;
        if (i > 0) /* sorted, unique, and no file is a directory of another */
            CHECK(strcmp(l->items[i - 1].name, name) < 0);
        if (i + 1 < l->n)
            CHECK(!(strncmp(l->items[i + 1].name, name, len) == 0 &&
                    l->items[i + 1].name[len] == '/'));
    }
    CHECK(total <= MAX_TOTAL);
}

static void check_extracted(const cms_zip_list *got, const cms_zip_list *want)
{
    size_t i, n = strlen(dest);

    CHECK(got->n == want->n);
    for (i = 0; i < got->n; i++) {
        FILE *f;
        char *buf;
        size_t size = (size_t)want->items[i].size;
        CHECK(strcmp(got->items[i].name, want->items[i].name) == 0);
        CHECK(got->items[i].path && strncmp(got->items[i].path, dest, n) == 0);
        CHECK(strcmp(got->items[i].path + n + 1, got->items[i].name) == 0);
        CHECK((f = fopen(got->items[i].path, "rb")) != NULL);
        CHECK((buf = malloc(size + 1)) != NULL);
        CHECK(fread(buf, 1, size + 1, f) == size);
        CHECK(memcmp(buf, want->items[i].data, size) == 0);
        free(buf);
        fclose(f);
    }
    walk_list = want;
    walk_files = 0;
    CHECK(nftw(dest, check_entry, 16, FTW_PHYS) == 0);
    CHECK(walk_files == want->n);
}

static long long total_size(const cms_zip_list *l)
{
    long long t = 0;
    size_t i;

    for (i = 0; i < l->n; i++)
        t += l->items[i].size;
    return t;
}

static int cancel(void *ud, long long done, long long total, cms_error *err)
{
    (void)ud, (void)err;
    CHECK(done > 0 && done <= total);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cms_zip_source src = {(const char *)data, size, NULL, -1};
    cms_zip_progress progress = {cancel, NULL, {0, 0}};
    int cancelling = size % 4 == 3;
    cms_zip_list read, got;
    cms_error rerr, xerr;
    char name[1100], ab[300];
    int rrc, xrc;

    if (!root[0])
        make_root();
    snprintf(name, sizeof name, "%.*s", (int)(size < 1099 ? size : 1099), (const char *)data);
    check_name_rules(name);

    cms_zip_list_init(&read);
    cms_error_clear(&rerr);
    rrc = cms_zip_read(&src, MAX_TOTAL, &read, &rerr);
    if (rrc == 0)
        check_read(&read);
    else
        CHECK(read.n == 0 && !read.items && rerr.kind != CMS_OK &&
              memchr(rerr.message, '\0', sizeof rerr.message));

    cms_zip_list_init(&got);
    cms_error_clear(&xerr);
    xrc = cms_zip_extract(&src, dest, MAX_TOTAL, cancelling ? &progress : NULL, &got, &xerr);
    if (xrc == 0) {
        CHECK(rrc == 0 && (!cancelling || total_size(&read) == 0)); /* no byte, no call */
        check_extracted(&got, &read);
    } else {
        CHECK(got.n == 0 && !got.items);
        if (rrc == 0) /* only our cancel makes the extraction fail */
            CHECK(cancelling && xerr.kind == CMS_E_CANCELLED);
        else if (xerr.kind != rerr.kind && !(cancelling && xerr.kind == CMS_E_CANCELLED))
            fprintf(stderr, "read: %s\nextract: %s\n", rerr.message, xerr.message);
        /* a cancel at the first block may come before a fault further on */
        CHECK(rrc == 0 || xerr.kind == rerr.kind ||
              (cancelling && xerr.kind == CMS_E_CANCELLED));
    }
    /* nothing outside out/, and nothing at all after a failure */
    snprintf(ab, sizeof ab, "%s/a/b", root);
    CHECK(entries(root, "a") == 1);
    snprintf(ab, sizeof ab, "%s/a", root);
    CHECK(entries(ab, "b") == 1);
    snprintf(ab, sizeof ab, "%s/a/b", root);
    CHECK(entries(ab, "out") == (xrc == 0));

    remove_tree(dest);
    cms_zip_list_free(&got);
    cms_zip_list_free(&read);
    return 0;
}
