/* cms_url: resolving base_url and path (see cms_url.h). */
#include "cms_url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

int cms_url_path_clean(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7F || *s == '?' || *s == '#')
            return 0;
    return 1;
}

static char *join3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *p = malloc(n);

    if (p)
        snprintf(p, n, "%s%s%s", a, b, c);
    return p;
}

void cms_url_free(cms_url *u)
{
    free(u->url);
    free(u->host);
    free(u->path);
    u->url = u->host = u->path = NULL;
}

/* The parts of base_url that matter; NULL when absent. */
typedef struct parts {
    char *scheme, *host, *port, *path, *query, *fragment, *user;
} parts;

static int split(const char *base_url, parts *p)
{
    CURLU *u = curl_url();

    memset(p, 0, sizeof *p);
    if (!u)
        return -1;
    if (curl_url_set(u, CURLUPART_URL, base_url,
                     CURLU_NON_SUPPORT_SCHEME | CURLU_PATH_AS_IS) != CURLUE_OK) {
        curl_url_cleanup(u);
        return -1;
    }
    curl_url_get(u, CURLUPART_SCHEME, &p->scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &p->host, 0);
    curl_url_get(u, CURLUPART_PORT, &p->port, 0); /* none unless written */
    curl_url_get(u, CURLUPART_PATH, &p->path, 0);
    curl_url_get(u, CURLUPART_QUERY, &p->query, 0);
    curl_url_get(u, CURLUPART_FRAGMENT, &p->fragment, 0);
    curl_url_get(u, CURLUPART_USER, &p->user, 0);
    curl_url_cleanup(u);
    return 0;
}

static void parts_free(parts *p)
{
    curl_free(p->scheme);
    curl_free(p->host);
    curl_free(p->port);
    curl_free(p->path);
    curl_free(p->query);
    curl_free(p->fragment);
    curl_free(p->user);
}

static const char *check(const parts *p, int allow_http)
{
    if (!p->scheme || !p->host || !*p->host)
        return "must have a scheme and a host";
    if (strcmp(p->scheme, "https") != 0 && !(strcmp(p->scheme, "http") == 0 && allow_http))
        return strcmp(p->scheme, "http") == 0
                   ? "uses http://, which sends the signature in clear text; "
                     "use https:// or set allow_http = true"
                   : "must start with https://";
    if (p->query || p->fragment || p->user)
        return "must not contain credentials, a query or a fragment";
    /* libcurl connects to a non-ASCII name's IDN form: the Host header and
       the signed host would not name the host reached */
    if (!cms_url_path_clean(p->host))
        return "has a host name that is not ASCII (write an internationalised "
               "name in its xn-- form)";
    if (p->path && !cms_url_path_clean(p->path))
        return "has a path with characters that would be escaped when sent "
               "(spaces, control or non-ASCII characters)";
    return NULL;
}

/* 1 when libcurl, given the URL to send, reads the host and path that are
   signed: %XX in a host is decoded once by split() and would be again. */
static int reads_back(const cms_url *out, const parts *p)
{
    parts q;
    int same;

    if (split(out->url, &q) != 0)
        return 0;
    same = q.host && strcmp(q.host, p->host) == 0 && !q.port == !p->port &&
           (!q.port || strcmp(q.port, p->port) == 0) && q.path &&
           strcmp(q.path, out->path) == 0;
    parts_free(&q);
    return same;
}

const char *cms_url_resolve(const char *base_url, const char *path, int allow_http,
                            cms_url *out)
{
    const char *problem;
    char *scheme_host = NULL;
    parts p;

    memset(out, 0, sizeof *out);
    if (split(base_url, &p) != 0)
        return "is not a valid URL (expected https://host:port)";
    problem = check(&p, allow_http);
    if (!problem) {
        size_t n = p.path ? strlen(p.path) : 0;
        while (n && p.path[n - 1] == '/') /* "https://gw/cms/" + "/rest/..." */
            p.path[--n] = '\0';
        out->path = join3(p.path ? p.path : "", path, "");
        out->host = join3(p.host, p.port ? ":" : "", p.port ? p.port : "");
        scheme_host = out->host ? join3(p.scheme, "://", out->host) : NULL;
        out->url = scheme_host && out->path ? join3(scheme_host, out->path, "") : NULL;
        if (!out->url || !out->host || !out->path) {
            cms_url_free(out);
            problem = "cannot be parsed (out of memory)";
        } else if (!reads_back(out, &p)) {
            cms_url_free(out);
            problem = "has a host that reads differently once written back "
                      "(a %-escape in the host name?)";
        }
    }
    free(scheme_host);
    parts_free(&p);
    return problem;
}

/* The proxy schemes libcurl documents for CURLOPT_PROXY; none means http. */
static int proxy_scheme(const char *scheme)
{
    static const char *const known[] = {"http", "https", "socks4", "socks4a", "socks5",
                                        "socks5h"};
    size_t i;

    for (i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(scheme, known[i]) == 0)
            return 1;
    return 0;
}

const char *cms_url_proxy_problem(const char *proxy)
{
    const char *problem = NULL;
    char *scheme = NULL, *host = NULL;
    CURLU *u;

    if (!*proxy)
        return NULL;
    if (!(u = curl_url()))
        return "cannot be checked (out of memory)";
    /* the flags libcurl's own proxy parser uses */
    if (curl_url_set(u, CURLUPART_URL, proxy, CURLU_NON_SUPPORT_SCHEME | CURLU_GUESS_SCHEME) !=
            CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host)
        problem = "is not a URL libcurl can parse (expected "
                  "[scheme://][user:password@]host[:port], special characters of the "
                  "password percent-encoded)";
    else if (!proxy_scheme(scheme))
        problem = "has a scheme libcurl cannot use for a proxy (http, https, socks4, socks4a, "
                  "socks5 or socks5h)";
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return problem;
}
