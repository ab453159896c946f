/* cms_job: one download's life, and the retry and rate policies (see cms_job.h). */
#include "cms_job.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cms_classify.h"

/* ===== the answer ===== */

int cms_classify_answer(const cms_response *r, cms_json_fn json, void *ud, cms_error *err)
{
    cms_format fmt = cms_sniff((const unsigned char *)r->body.data, r->body.len);
    cms_json_fields f;
    int decoded;

    memset(&f, 0, sizeof f);
    decoded = fmt == CMS_FMT_JSON && !r->truncated && json &&
              json(ud, r->body.data, r->body.len, &f) == 0;
    if (r->status / 100 != 2) {
        char excerpt[160];
        const char *detail = decoded && *f.desc ? f.desc
                             : decoded && *f.message ? f.message : NULL;
        if (!detail) {
            cms_excerpt(r->body.data, r->body.len, excerpt, sizeof excerpt);
            detail = excerpt;
        }
        cms_classify_status(r->status, detail, r->retry_after, err);
        cms_strlcpy(err->result_code, f.code, sizeof err->result_code);
        cms_strlcpy(err->result_desc, f.desc, sizeof err->result_desc);
    } else if (r->body.len == 0) {
        cms_error_set(err, CMS_E_PROTOCOL, "the CMS answered HTTP %ld with an empty body",
                      r->status);
    } else if (fmt == CMS_FMT_TEXT) {
        char excerpt[160];
        cms_excerpt(r->body.data, r->body.len, excerpt, sizeof excerpt);
        cms_error_set(err, CMS_E_PROTOCOL, "the CMS answered HTTP %ld with text, not a "
                      "recording: %s", r->status, *excerpt ? excerpt : "(blank)");
    } else if (decoded) {
        cms_classify_result(r->status, *f.code ? f.code : NULL, *f.desc ? f.desc : NULL, err);
    } else if (r->truncated) {
        cms_error_set(err, CMS_E_PROTOCOL, "the CMS answered HTTP %ld with JSON over %d KiB, "
                      "too large for a CMS result: not decoded", r->status,
                      CMS_ERROR_BODY_MAX / 1024);
    } else {
        char excerpt[160];
        cms_excerpt(r->body.data, r->body.len, excerpt, sizeof excerpt);
        cms_error_set(err, CMS_E_PROTOCOL, "the CMS answered HTTP %ld with JSON that is not "
                      "a JSON object (%zu bytes): %s", r->status, r->body.len, excerpt);
    }
    err->status = r->status;
    err->retry_after = r->retry_after; /* flow control may say when, even at HTTP 200 */
    return -1;
}

/* ===== retries and rate ===== */

long cms_retry_delay(const cms_retry_policy *p, const cms_error *e, int attempts,
                     int visible, double rnd)
{
    double backoff;
    int i;

    if (!e->retryable || visible || attempts > p->retries)
        return -1;
    if (e->retry_after >= 0) /* the server said when: trust it, within reason */
        return e->retry_after * 1000L < p->retry_after_max_ms ? e->retry_after * 1000L
                                                              : p->retry_after_max_ms;
    backoff = (double)p->base_ms;
    for (i = 1; i < attempts && backoff < p->max_ms; i++)
        backoff *= 2;
    if (backoff > p->max_ms)
        backoff = (double)p->max_ms;
    return (long)(backoff / 2 + rnd * backoff / 2);
}

double cms_now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

double cms_rate_wait(const cms_rate *r, double now)
{
    return r->per_s > 0 && r->next > now ? r->next - now : 0;
}

void cms_rate_take(cms_rate *r, double now)
{
    if (r->per_s > 0)
        r->next = (r->next > now ? r->next : now) + 1 / r->per_s;
}

/* ===== the job ===== */

void cms_job_init(cms_job *j)
{
    memset(j, 0, sizeof *j);
    j->reported = -1;
    cms_error_clear(&j->err);
    cms_response_init(&j->resp);
    cms_mem_sink_init(&j->mem);
    j->file.fd = -1;
    cms_zip_list_init(&j->zip);
}

/* Progress as the transfer reports it; remembers what was reported last. */
static int job_progress(void *ud, long long received, long long total, cms_error *err)
{
    cms_job *j = ud;

    j->reported = received;
    return j->progress(j->progress_ud, received, total, err);
}

/* A device, FIFO or descriptor written into as bytes come: what it got is
   the caller's, as with a sink (no retry after the first byte). */
static int direct_begin(void *ud, long long total, cms_format fmt, cms_error *err)
{
    cms_job *j = ud;

    return j->sink.begin ? j->sink.begin(j->sink.ud, total, fmt, err) : 0;
}

static int direct_write(void *ud, const char *p, size_t n, cms_error *err)
{
    cms_job *j = ud;

    j->visible += (long long)n;
    return j->sink.write(j->sink.ud, p, n, err);
}

/* The caller's sink, with the digest of what it got. */
static int sink_write(void *ud, const char *p, size_t n, cms_error *err)
{
    cms_job *j = ud;

    if (cms_sha256_update(&j->sha, p, n) != 0)
        return cms_error_set(err, CMS_E_NOMEM, "SHA-256 failed in OpenSSL");
    j->visible += (long long)n;
    return j->sink.write(j->sink.ud, p, n, err);
}

/* unzip = true: a directory, made if missing (its parent must exist), as
   cmsrec.unzip does; one made here is removed again if the job fails. */
static int unzip_directory(cms_job *j)
{
    struct stat st;
    int e;

    if (mkdir(j->path, 0777) == 0) {
        j->made_dir = 1;
        return 0;
    }
    e = errno;
    if (e == EEXIST && stat(j->path, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    return cms_error_set(&j->err, CMS_E_IO, "cannot unzip into '%.200s': %s", j->path,
                         e == EEXIST ? "not a directory" : strerror(e));
}

/* Open the destination before anything is sent: a bad path costs no request. */
static int open_destination(cms_job *j)
{
    cms_transfer_io *io = &j->io;

    memset(io, 0, sizeof *io);
    io->max_size = j->max_size;
    if (j->progress) {
        io->progress = job_progress;
        io->progress_ud = j;
    }
    switch (j->dest) {
    case CMS_DEST_FILE:
        if (j->unzip && !j->made_dir && unzip_directory(j) != 0)
            return -1;
        if (cms_file_sink_open(&j->file, j->path, j->call_id, &j->err) != 0)
            return -1;
        j->file.unzip = j->unzip;
        io->sink = cms_file_sink_callbacks(&j->file);
        if (j->file.direct) {
            j->sink = io->sink;
            io->sink.begin = direct_begin;
            io->sink.write = direct_write;
            io->sink.ud = j;
        }
        break;
    case CMS_DEST_ANSWER: /* the transfer keeps it in resp.body; no sink is called */
        io->max_size = 0;
        io->answer_max = j->max_size > 0 ? j->max_size : CMS_JOB_ANSWER_MAX;
        cms_mem_sink_init(&j->mem);
        io->sink = cms_mem_sink_callbacks(&j->mem);
        break;
    case CMS_DEST_SINK:
        if (cms_sha256_init(&j->sha) != 0)
            return cms_error_set(&j->err, CMS_E_NOMEM, "out of memory");
        io->sink.begin = NULL;
        io->sink.write = sink_write;
        io->sink.ud = j;
        break;
    default:
        cms_mem_sink_init(&j->mem);
        io->sink = cms_mem_sink_callbacks(&j->mem);
    }
    return 0;
}

int cms_job_start(cms_job *j, CURL *h, const cms_transfer_config *cfg, const char *url,
                  struct curl_slist *headers, const char *body, size_t body_len)
{
    j->attempts++;
    if (open_destination(j) != 0)
        return -1;
    return cms_transfer_start(&j->t, h, cfg, url, headers, body, body_len, &j->io, &j->resp,
                              &j->err);
}

/* While a bundle is unpacked the progress keeps its final figures, and keeps
   being reported, so that the caller can still cancel. */
static int unzip_progress(void *ud, long long done, long long total, cms_error *err)
{
    cms_job *j = ud;

    (void)done, (void)total;
    return j->progress(j->progress_ud, j->resp.bytes, j->resp.total, err);
}

static int unpack(cms_job *j)
{
    cms_file_sink *f = &j->file;
    cms_zip_progress progress;
    cms_zip_source src;

    src.data = NULL;
    src.len = 0;
    src.path = NULL;
    src.fd = cms_file_sink_fd(f);
    if (cms_file_sink_digest(f, j->sha256, &j->err) != 0)
        return -1;
    memset(&progress, 0, sizeof progress);
    progress.fn = j->progress ? unzip_progress : NULL;
    progress.ud = j;
    clock_gettime(CLOCK_MONOTONIC, &progress.last); /* the final report just came */
    /* the archive stays a temporary file: cms_file_sink_close removes it */
    return cms_zip_extract(&src, f->dir, j->max_size ? j->max_size : CMS_JOB_UNZIP_MAX,
                           &progress, &j->zip, &j->err);
}

/* The recording arrived: put it in place (file, unpacked files, digest). */
static int commit(cms_job *j)
{
    /* the final report may still cancel (Ctrl-C lands where it lands): nothing
       has been committed, unpacked or returned yet */
    if (j->progress && j->reported != j->resp.bytes &&
        job_progress(j, j->resp.bytes, j->resp.total, &j->err) != 0) {
        if (j->err.kind == CMS_OK)
            cms_error_set(&j->err, CMS_E_CANCELLED, "the download was cancelled");
        return -1;
    }
    switch (j->dest) {
    case CMS_DEST_SINK:
        return cms_sha256_final_hex(&j->sha, j->sha256) == 0
                   ? 0 : cms_error_set(&j->err, CMS_E_NOMEM, "SHA-256 failed in OpenSSL");
    case CMS_DEST_FILE:
        if (j->unzip && j->resp.format == CMS_FMT_ZIP)
            return unpack(j);
        if (cms_file_sink_commit(&j->file, &j->err) != 0)
            return -1;
        memcpy(j->sha256, j->file.sha256, sizeof j->sha256);
        return 0;
    default:
        return 0;
    }
}

/* ANSWER: a whole 2xx body is the result; the caller decodes it. */
static int answer_outcome(cms_job *j)
{
    cms_response *r = &j->resp;

    if (r->status / 100 != 2)
        return cms_classify_answer(r, j->json, j->json_ud, &j->err);
    if (r->truncated)
        cms_error_set(&j->err, CMS_E_TOO_LARGE, "the answer is larger than max_size "
                      "(%lld bytes)", j->io.answer_max);
    else if (r->body.len == 0)
        cms_error_set(&j->err, CMS_E_PROTOCOL, "the CMS answered HTTP %ld with an empty body",
                      r->status);
    else
        return 0;
    j->err.status = r->status;
    return -1;
}

int cms_job_finish(cms_job *j, CURLcode rc)
{
    int failed = cms_transfer_finish(&j->t, rc) != 0 ||
                 (j->dest == CMS_DEST_ANSWER ? answer_outcome(j) != 0 :
                  (!j->resp.sunk && cms_classify_answer(&j->resp, j->json, j->json_ud,
                                                        &j->err) != 0) ||
                  commit(j) != 0);

    if (failed)
        cms_file_sink_close(&j->file); /* no partial file, an existing one untouched */
    if (j->t.stray)
        j->attempts--; /* not sent: it was no attempt (retried at once, see on_prereq) */
    return failed ? -1 : 0;
}

/* What one attempt holds; a temporary file left by a failure is removed. */
static void free_attempt(cms_job *j)
{
    cms_response_free(&j->resp);
    cms_mem_sink_free(&j->mem);
    cms_file_sink_close(&j->file);
    cms_sha256_free(&j->sha);
    cms_zip_list_free(&j->zip);
}

void cms_job_reset(cms_job *j)
{
    free_attempt(j);
    cms_error_clear(&j->err);
    j->reported = -1;
    j->sha256[0] = '\0';
}

void cms_job_end(cms_job *j, int failed)
{
    if (failed && j->made_dir) {
        cms_file_sink_close(&j->file); /* the temporary archive first */
        rmdir(j->path);
    }
    j->made_dir = 0;
}

void cms_job_free(cms_job *j)
{
    free_attempt(j);
}
