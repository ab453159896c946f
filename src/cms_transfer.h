/*
 * cms_transfer: one HTTPS POST on a libcurl easy handle.
 *
 * The handle belongs to the caller (the client userdata) so connections are
 * kept alive between downloads. Every call resets the handle and sets every
 * option again: no state leaks from one request into the next.
 *
 * Safety defaults: TLS verification on, TLS 1.2 at least, redirects never
 * followed (the Authorization header must not reach another host), https
 * only unless allow_http, error bodies bounded to CMS_ERROR_BODY_MAX bytes,
 * bodies asked for unencoded but decoded when encoded anyway, and a
 * kept-alive connection with unrequested bytes waiting on it never reused.
 *
 * Routing: the start of a 2xx body is held back until cms_sniff_ready() (12
 * bytes, or up to CMS_SNIFF_MAX when it starts with blanks) and sniffed. A
 * recording goes to the caller's sink (memory, file, Lua function); a JSON
 * result (errors come with HTTP 200), text, or any non-2xx body stays in
 * resp->body, bounded, so an error never reaches the sink. max_size is
 * enforced here, for every sink.
 */
#ifndef CMS_TRANSFER_H
#define CMS_TRANSFER_H

#include <curl/curl.h>
#include <time.h>

#include "cms_buf.h"
#include "cms_classify.h"
#include "cms_error.h"

#define CMS_ERROR_BODY_MAX (64 * 1024)

/*
 * The sockets of one client's connections, opened and closed through
 * libcurl's socket callbacks. Before a transfer every one of them is idle,
 * so one with bytes waiting holds an answer nobody asked for (a broken
 * gateway), which libcurl would take as the answer to the next request: it
 * is shut down, and libcurl opens a new connection. Tracking the sockets
 * (rather than asking libcurl for the last one) covers every pool a client
 * uses, its easy handle's and its multi handle's.
 */
typedef struct cms_conn_set {
    curl_socket_t *fds;
    size_t n, cap;
} cms_conn_set;

void cms_conn_set_init(cms_conn_set *s);
/* Shut down every socket of `s` that has bytes waiting: call it only while
   none of them carries a transfer. */
void cms_conn_set_drop_unclean(const cms_conn_set *s);
/* Frees the list; the sockets are libcurl's (closed by its cleanup). */
void cms_conn_set_free(cms_conn_set *s);

struct cms_token; /* cms_gateway.h */

typedef struct cms_transfer_config {
    const char *cafile;
    const char *capath;
    const char *proxy;
    const char *user_agent;
    int insecure;
    int allow_http;
    int no_reuse;             /* a new connection for every request */
    long timeout_ms;          /* whole transfer, 0 = none */
    long connect_timeout_ms;  /* 0 = libcurl's default */
    long stall_timeout_s;     /* give up when no byte came for this long, 0 = never */
    cms_conn_set *conns;      /* the client's sockets, may be NULL (then only the
                                 easy handle's last connection is checked) */
    int busy_conns;           /* other transfers run on them: no idle check */
    CURLSH *share;            /* TLS sessions and DNS shared by the client's handles, may be NULL */
    /* TLS (see README: sslcert, sslkey, pinnedpubkey, tls_min); NULL: not used */
    const char *sslcert;      /* the client certificate (PEM) */
    const char *sslkey;       /* its private key (PEM); NULL: in sslcert */
    const char *key_password; /* of an encrypted sslkey: the caller's wiped memory */
    const char *pinnedpubkey; /* "sha256//<base64>;..." or a PEM/DER public key file */
    long tls_min;             /* CURL_SSLVERSION_TLSv1_x; 0: TLS 1.2 */
    int debug;                /* CMSREC_DEBUG: a redacted trace on stderr (cms_trace.h) */
    /* gateways */
    struct curl_slist *resolve; /* CURLOPT_RESOLVE entries "name:port:address", may be NULL */
    const struct cms_token *hide; /* a bearer token the trace never shows (read at each
                                     event: it may change), may be NULL */
} cms_transfer_config;

/* Where a recording goes. begin() (may be NULL) is called once, before the first write(). */
typedef struct cms_sink {
    /* total: Content-Length or -1; fmt: what the first bytes say. */
    int (*begin)(void *ud, long long total, cms_format fmt, cms_error *err);
    int (*write)(void *ud, const char *p, size_t n, cms_error *err);
    void *ud;
} cms_sink;

/* Progress of the recording: received is 0 while waiting for the answer and
   while an error answer arrives, total -1 when unknown. Called every
   CMS_PROGRESS_INTERVAL_MS whatever comes, so a caller can always cancel:
   return 0 to go on, non-zero to cancel (err set by the callee, else
   "cancelled"). */
typedef int (*cms_progress_fn)(void *ud, long long received, long long total,
                               cms_error *err);

#define CMS_PROGRESS_INTERVAL_MS 200

typedef struct cms_response {
    long status;
    cms_buf body;             /* an error or JSON answer, never the recording */
    int truncated;            /* that body was cut at CMS_ERROR_BODY_MAX */
    int sunk;                 /* the body went to the sink */
    cms_format format;        /* of the sunk body */
    long long bytes;          /* bytes given to the sink */
    long long total;          /* Content-Length of the recording, -1 if unknown */
    char content_type[128];
    long retry_after;         /* seconds, -1 if absent */
    double elapsed;           /* seconds */
} cms_response;

typedef struct cms_transfer_io {
    cms_sink sink;
    long long max_size;       /* 0 = none; more is kind too_large, whatever the sink */
    cms_progress_fn progress; /* may be NULL */
    void *progress_ud;
    /* > 0: the answer itself is the result (client:call, the token endpoint):
       every body stays in resp->body, never the sink, a 2xx one up to this
       many bytes (then resp->truncated); non-2xx ones as always */
    long long answer_max;
} cms_transfer_io;

/*
 * One transfer in progress, for callers that drive libcurl themselves (a
 * multi handle): cms_transfer_start() sets the easy handle up, the caller
 * runs it, cms_transfer_finish() reads the outcome. cms_transfer_post()
 * is the two around curl_easy_perform(). The struct must not move while
 * the transfer runs (libcurl holds pointers into it).
 */
typedef struct cms_transfer {
    CURL *h;
    const cms_transfer_io *io;
    cms_response *resp;
    cms_error *err;
    const char *url;
    const struct cms_transfer_config *cfg;
    int route;          /* enum route in cms_transfer.c */
    int started;        /* first body byte seen: status known */
    int limit_hit;      /* an oversized answer stopped on purpose */
    int failed;         /* the sink or progress set err and aborted */
    int encoded;        /* Content-Encoding: Content-Length counts encoded bytes */
    int stray;          /* a reused connection held an unrequested answer: not sent */
    int headers_done;   /* the blank line that ends the answer's headers came */
    long long length;   /* Content-Length of the answer (any status), -1 if unknown */
    long long seen;     /* body bytes libcurl handed over */
    curl_socket_t sock; /* this transfer's socket, when known (see on_prereq) */
    char content_length[24]; /* the answer's Content-Length header, as sent */
    struct timespec last_progress;
    char errbuf[CURL_ERROR_SIZE];
} cms_transfer;

/* curl_global_init, once per process, thread-safe. Returns 0 or -1. */
int cms_transfer_global_init(void);

void cms_response_init(cms_response *r);
void cms_response_free(cms_response *r);

/*
 * POST `body` to `url` with `headers` (which must include Host, Content-Type
 * and Authorization). On transport failure, or when the sink or the progress
 * callback fails, returns -1 with `err` set; otherwise 0 with `resp` filled,
 * whatever the HTTP status (resp->sunk tells whether a recording came).
 */
int cms_transfer_post(CURL *h, const cms_transfer_config *cfg, const char *url,
                      struct curl_slist *headers, const char *body, size_t body_len,
                      const cms_transfer_io *io, cms_response *resp, cms_error *err);

/* Set `h` up for the POST (as cms_transfer_post); 0, or -1 with err set. */
int cms_transfer_start(cms_transfer *t, CURL *h, const cms_transfer_config *cfg,
                       const char *url, struct curl_slist *headers, const char *body,
                       size_t body_len, const cms_transfer_io *io, cms_response *resp,
                       cms_error *err);
/* The outcome of a started transfer that libcurl ended with `rc`. */
int cms_transfer_finish(cms_transfer *t, CURLcode rc);
/* Run a started transfer to its end on the multi handle `m` (blocking);
   returns what to give cms_transfer_finish. The connections stay in `m`'s
   pool, for the next transfer. */
CURLcode cms_transfer_run(cms_transfer *t, CURLM *m);

/* Map a libcurl failure to an error kind (exposed for the unit tests). */
cms_error_kind cms_curl_error_kind(CURLcode rc);
/* 1 when a send or receive error is a TLS alert from the server (libcurl's
   message says so): under TLS 1.3 a refused client certificate shows only
   after the handshake, on the first read. */
int cms_tls_alert(CURLcode rc, const char *errbuf);

#endif
