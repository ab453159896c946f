/*
 * cms_job: one download's life, for every path that downloads (a single
 * call, a batch on the multi interface): the destination opened for each
 * attempt, the transfer, the answer classified, the recording committed
 * (file, unpacked bundle, memory, the caller's sink) or discarded; and the
 * policy that decides whether a failed attempt is tried again, and when.
 *
 * The caller (the Lua binding) signs each attempt, runs the transfer on its
 * multi handle and decodes JSON (cms_json_fn): everything that needs Lua.
 *
 *   attempt:  cms_job_start -> libcurl runs it -> cms_job_finish
 *   failed:   cms_retry_delay says when, cms_job_reset, sign again, start
 *   finally:  cms_job_end (a directory made for the job goes if it failed)
 */
#ifndef CMS_JOB_H
#define CMS_JOB_H

#include "cms_error.h"
#include "cms_sink.h"
#include "cms_transfer.h"
#include "cms_zip.h"

/* What a JSON answer says; fields it lacks stay "". */
typedef struct cms_json_fields {
    char code[32];     /* resultCode */
    char desc[256];    /* resultDesc */
    char message[160]; /* message or error: Spring and gateway errors */
} cms_json_fields;

/* Decode `body`: 0 with `out` filled, -1 when it is not a JSON object. */
typedef int (*cms_json_fn)(void *ud, const char *body, size_t len, cms_json_fields *out);

/* An answer that is not a recording, as an error: always returns -1. */
int cms_classify_answer(const cms_response *r, cms_json_fn json, void *ud, cms_error *err);

/* ---- retries ---- */

typedef struct cms_retry_policy {
    int retries;            /* attempts after the first */
    long base_ms;           /* the first backoff; doubled for each further one */
    long max_ms;            /* cap of a backoff */
    long retry_after_max_ms; /* cap of what a Retry-After asks */
} cms_retry_policy;

#define CMS_RETRY_BASE_MS 500
#define CMS_RETRY_MAX_MS 30000
#define CMS_RETRY_AFTER_MAX_MS 60000
#define CMS_JOB_UNZIP_MAX (4LL << 30) /* what a bundle may unpack to, by default */

/*
 * Milliseconds to wait before trying again after `attempts` attempts ended
 * with `e`, or -1: no retry (not retryable, retries used up, or bytes
 * already reached a sink the caller sees). `rnd` in [0, 1) spreads the
 * backoff (half fixed, half random) so that clients do not retry in step.
 */
long cms_retry_delay(const cms_retry_policy *p, const cms_error *e, int attempts,
                     int visible, double rnd);

/* ---- rate ---- */

/* Requests started at most `per_s` per second, evenly spaced; 0 = no limit. */
typedef struct cms_rate {
    double per_s;
    double next; /* when the next request may start (seconds, monotonic) */
} cms_rate;

/* Seconds to wait until a request may start at `now` (0: at once). */
double cms_rate_wait(const cms_rate *r, double now);
/* A request starts at `now`. */
void cms_rate_take(cms_rate *r, double now);

/* Seconds on the monotonic clock. */
double cms_now(void);

/* ---- the job ---- */

/* ANSWER: no recording; the (JSON) answer is the result, in resp.body
   (client:call): a 2xx answer succeeds, up to max_size (default
   CMS_JOB_ANSWER_MAX; more is too_large), anything else fails as usual. */
typedef enum { CMS_DEST_MEMORY, CMS_DEST_FILE, CMS_DEST_SINK, CMS_DEST_ANSWER } cms_dest_kind;

#define CMS_JOB_ANSWER_MAX (16LL << 20)

typedef struct cms_job {
    /* set by the caller before the first attempt */
    cms_dest_kind dest;
    const char *path;          /* FILE: a file, or a directory (named from call_id) */
    const char *call_id;
    int unzip;                 /* FILE: a ZIP answer is unpacked into the directory path */
    cms_sink sink;             /* SINK: the caller's; what it got cannot be taken back */
    long long max_size;        /* 0 = none; with unzip also the unpacked total */
    cms_progress_fn progress;  /* may be NULL */
    void *progress_ud;
    cms_json_fn json;
    void *json_ud;
    /* state */
    int attempts;
    long long visible;         /* bytes the caller's sink got, over all attempts */
    int made_dir;              /* unzip made `path`: removed again if the job fails */
    long long reported;        /* the last `received` given to progress, -1 before */
    cms_error err;
    cms_transfer t;
    cms_transfer_io io;
    cms_response resp;
    cms_mem_sink mem;
    cms_file_sink file;
    cms_sha256 sha;            /* SINK: of what the sink got */
    cms_zip_list zip;          /* unzip: the members written */
    char sha256[65];           /* of the recording, once committed */
} cms_job;

void cms_job_init(cms_job *j);
/* Open the destination (before anything is sent) and set `h` up for an
   attempt; 0, or -1 with j->err set. */
int cms_job_start(cms_job *j, CURL *h, const cms_transfer_config *cfg, const char *url,
                  struct curl_slist *headers, const char *body, size_t body_len);
/* libcurl ended the attempt with `rc`: classify the answer, commit the
   recording; 0, or -1 with j->err set and the attempt discarded. */
int cms_job_finish(cms_job *j, CURLcode rc);
/* Before another attempt: forget the last one (keeps attempts and visible). */
void cms_job_reset(cms_job *j);
/* The job is over; `failed`: remove a directory it made. */
void cms_job_end(cms_job *j, int failed);
/* Free everything; removes a temporary file left by a failure. Safe twice. */
void cms_job_free(cms_job *j);

#endif
