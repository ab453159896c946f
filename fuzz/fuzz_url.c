/*
 * fuzz_url: base_url + path -> URL, Host header and signed path
 * (cms_url_resolve, cms_url_path_clean).
 *
 * Input: one control byte (bit 0: allow_http; bit 1: the path is the fuzz
 * text after the first 0xFF, else the module's default path), then base_url,
 * then optionally 0xFF and a path. A NUL ends each string, as in C.
 *
 * What is checked is the property the signature rests on: libcurl, parsing
 * the URL the module sends as it does (CURLOPT_PATH_AS_IS), finds exactly
 * the host and path the module signed, with no credentials, query or
 * fragment; and a refused base_url gets a sentence and leaves nothing set.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "../src/cms_url.h"

/* A broken invariant: say which, then abort so libFuzzer keeps the input. */
#define CHECK(c) ((c) ? (void)0 : check_failed(#c, __LINE__))

static void check_failed(const char *what, int line)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, line, what);
    abort();
}
#define DEFAULT_PATH "/rest/cmsapp/v1/openapi/hisindex/downloadRecordFile"

static char *part(CURLU *u, CURLUPart what)
{
    char *s = NULL;

    return curl_url_get(u, what, &s, 0) == CURLUE_OK ? s : NULL;
}

/* Parse what is sent as libcurl will, and compare with what is signed. */
static void check_sent(const cms_url *out, int allow_http)
{
    CURLU *u = curl_url();
    char *scheme, *host, *port, *path, *query, *frag, *user, *pass;
    size_t hn;

    CHECK(u != NULL);
    CHECK(curl_url_set(u, CURLUPART_URL, out->url, CURLU_PATH_AS_IS) == CURLUE_OK);
    scheme = part(u, CURLUPART_SCHEME);
    host = part(u, CURLUPART_HOST);
    port = part(u, CURLUPART_PORT);
    path = part(u, CURLUPART_PATH);
    query = part(u, CURLUPART_QUERY);
    frag = part(u, CURLUPART_FRAGMENT);
    user = part(u, CURLUPART_USER);
    pass = part(u, CURLUPART_PASSWORD);
    CHECK(scheme && (strcmp(scheme, "https") == 0 || (allow_http && !strcmp(scheme, "http"))));
    CHECK(!query && !frag && !user && !pass);
    CHECK(path && strcmp(path, out->path) == 0);
    /* the Host header: the host as parsed, then ":port" when one was written */
    CHECK(host != NULL);
    hn = strlen(host);
    CHECK(strncmp(out->host, host, hn) == 0);
    CHECK(port ? out->host[hn] == ':' && strcmp(out->host + hn + 1, port) == 0
               : out->host[hn] == '\0');
    CHECK(cms_url_path_clean(out->path) && cms_url_path_clean(out->host));
    curl_free(scheme), curl_free(host), curl_free(port), curl_free(path);
    curl_free(query), curl_free(frag), curl_free(user), curl_free(pass);
    curl_url_cleanup(u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data + 1, *end = (const char *)data + size, *sep;
    char *base, *fuzz_path = NULL;
    const char *path = DEFAULT_PATH, *problem;
    int allow_http;
    cms_url out;

    if (size < 1)
        return 0;
    allow_http = data[0] & 1;
    sep = memchr(p, 0xFF, (size_t)(end - p));
    base = strndup(p, sep ? (size_t)(sep - p) : (size_t)(end - p));
    CHECK(base != NULL);
    if (sep && (data[0] & 2)) {
        fuzz_path = strndup(sep + 1, (size_t)(end - sep - 1));
        CHECK(fuzz_path != NULL);
        /* the binding's precondition for opts.path */
        if (fuzz_path[0] == '/' && cms_url_path_clean(fuzz_path))
            path = fuzz_path;
    }
    problem = cms_url_resolve(base, path, allow_http, &out);
    if (problem) {
        CHECK(*problem && !out.url && !out.host && !out.path);
    } else {
        size_t pn = strlen(path), on = strlen(out.path);
        CHECK(out.url && out.host && out.path && *out.host);
        CHECK(on >= pn && strcmp(out.path + on - pn, path) == 0); /* prefix + path */
        check_sent(&out, allow_http);
        cms_url_free(&out);
        CHECK(!out.url && !out.host && !out.path);
        cms_url_free(&out); /* safe twice */
    }
    free(base);
    free(fuzz_path);
    return 0;
}
