/*
 * cms_transfer: one HTTPS POST on a libcurl easy handle.
 *
 * The handle belongs to the caller (the client userdata) so connections are
 * kept alive between downloads. Every call resets the handle and sets every
 * option again: no state leaks from one request into the next.
 *
 * Safety defaults: TLS verification on, redirects never followed (the
 * Authorization header must not reach another host), https only unless
 * allow_http, error bodies (non-2xx) bounded to CMS_ERROR_BODY_MAX bytes.
 */
#ifndef CMS_TRANSFER_H
#define CMS_TRANSFER_H

#include <curl/curl.h>

#include "cms_buf.h"
#include "cms_error.h"

#define CMS_ERROR_BODY_MAX (64 * 1024)

typedef struct cms_transfer_config {
    const char *cafile;
    const char *capath;
    const char *proxy;
    const char *user_agent;
    int insecure;
    int allow_http;
    long timeout_ms;          /* whole transfer, 0 = none */
    long connect_timeout_ms;  /* 0 = libcurl's default */
} cms_transfer_config;

typedef struct cms_response {
    long status;
    cms_buf body;
    int truncated;            /* an error body was cut at CMS_ERROR_BODY_MAX */
    char content_type[128];
    long retry_after;         /* seconds, -1 if absent */
    double elapsed;           /* seconds */
} cms_response;

/* curl_global_init, once per process, thread-safe. Returns 0 or -1. */
int cms_transfer_global_init(void);

void cms_response_init(cms_response *r);
void cms_response_free(cms_response *r);

/*
 * POST `body` to `url` with `headers` (which must include Host, Content-Type
 * and Authorization). On transport failure returns -1 with `err` set
 * (network, timeout, tls, protocol); otherwise 0 with `resp` filled, whatever
 * the HTTP status.
 */
int cms_transfer_post(CURL *h, const cms_transfer_config *cfg, const char *url,
                      struct curl_slist *headers, const char *body, size_t body_len,
                      cms_response *resp, cms_error *err);

/* Map a libcurl failure to an error kind (exposed for the unit tests). */
cms_error_kind cms_curl_error_kind(CURLcode rc);

#endif
