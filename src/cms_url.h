/*
 * cms_url: base_url + path -> what is requested, sent and signed.
 *
 * libcurl's URL API does the parsing. The Host header and the signed host
 * are the authority exactly as written (ip:port, [v6]:port, no port when
 * none was written); the signed path is the path exactly as sent, so a path
 * with anything libcurl would escape on the wire is refused.
 */
#ifndef CMS_URL_H
#define CMS_URL_H

typedef struct cms_url {
    char *url;  /* scheme://authority/prefix/path */
    char *host; /* the authority as written */
    char *path; /* base_url's path prefix (without trailing '/') + path */
} cms_url;

/* Fill `out` (all three malloc'd) and return NULL, or return what is wrong
   with base_url ("must start with https://", ...) and leave `out` empty. */
const char *cms_url_resolve(const char *base_url, const char *path, int allow_http,
                            cms_url *out);
void cms_url_free(cms_url *u);

/* NULL if libcurl can use `proxy` as CURLOPT_PROXY ("" is no proxy), else
   what is wrong with it. It is parsed as libcurl parses it; the text never
   quotes it (it may hold a password). */
const char *cms_url_proxy_problem(const char *proxy);

/* 1 if `path` is sent exactly as written: printable ASCII, no space, '?' or '#'. */
int cms_url_path_clean(const char *path);

#endif
