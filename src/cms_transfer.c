/* cms_transfer: libcurl POST with safe defaults (see cms_transfer.h). */
#include "cms_transfer.h"
#include "cms_trace.h"
#include "cms_gateway.h" /* cms_token, cms_error_scrub: the trace hides a bearer token */

#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int cms_transfer_global_init(void)
{
    pthread_once(&global_once, global_init);
    return global_rc == CURLE_OK ? 0 : -1;
}

void cms_response_init(cms_response *r)
{
    r->status = 0;
    cms_buf_init(&r->body);
    r->truncated = 0;
    r->sunk = 0;
    r->format = CMS_FMT_UNKNOWN;
    r->bytes = 0;
    r->total = -1;
    r->content_type[0] = '\0';
    r->retry_after = -1;
    r->elapsed = 0;
}

void cms_response_free(cms_response *r)
{
    cms_buf_free(&r->body);
    cms_response_init(r);
}

enum route { ROUTE_UNDECIDED, ROUTE_ANSWER, ROUTE_SINK };

typedef cms_transfer transfer_ctx; /* the state shared by the callbacks */

/* libcurl believes one of two different Content-Length headers, or the first
   number of a list: either may cut the body or wait for bytes that never
   come. Only a single number (or the same one repeated) is a length. */
static int check_length(transfer_ctx *ctx, const char *v, size_t vlen)
{
    size_t i, cap = sizeof ctx->content_length;

    for (i = 0; i < vlen && v[i] >= '0' && v[i] <= '9'; i++)
        ;
    if (vlen && i == vlen && vlen < cap &&
        (!*ctx->content_length || (strlen(ctx->content_length) == vlen &&
                                   memcmp(ctx->content_length, v, vlen) == 0))) {
        memcpy(ctx->content_length, v, vlen);
        ctx->content_length[vlen] = '\0';
        return 0;
    }
    cms_error_set(ctx->err, CMS_E_PROTOCOL, "the answer of %s has %s Content-Length: the "
                  "body's end is unknown", ctx->url,
                  *ctx->content_length ? "two different values of" : "a malformed");
    ctx->failed = 1;
    return -1;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    transfer_ctx *ctx = ud;
    size_t len = size * n, vlen;
    const char *v;

    if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) { /* a new response (1xx, proxy CONNECT) */
        ctx->resp->content_type[0] = '\0';
        ctx->resp->retry_after = -1;
        ctx->encoded = 0;
        ctx->headers_done = 0;
        ctx->content_length[0] = '\0';
        return len;
    }
    if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) { /* the blank line: headers complete */
        ctx->headers_done = 1;
        return len;
    }
    v = memchr(p, ':', len);
    if (!v)
        return len;
    v++;
    while (v < p + len && (*v == ' ' || *v == '\t'))
        v++;
    vlen = (size_t)(p + len - v);
    while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
        vlen--;
    if (strncasecmp(p, "content-type:", 13) == 0) {
        size_t cap = sizeof ctx->resp->content_type - 1;
        if (vlen > cap)
            vlen = cap;
        memcpy(ctx->resp->content_type, v, vlen);
        ctx->resp->content_type[vlen] = '\0';
    } else if (strncasecmp(p, "content-length:", 15) == 0) {
        if (check_length(ctx, v, vlen) != 0)
            return 0;
    } else if (strncasecmp(p, "content-encoding:", 17) == 0) {
        ctx->encoded = vlen && !(vlen == 8 && strncasecmp(v, "identity", 8) == 0);
    } else if (strncasecmp(p, "retry-after:", 12) == 0 && vlen && vlen < 10 &&
               v[0] >= '0' && v[0] <= '9') {
        ctx->resp->retry_after = strtol(v, NULL, 10); /* the HTTP-date form is ignored */
    }
    return len;
}

static void on_first_byte(transfer_ctx *ctx)
{
    curl_off_t cl = -1;

    ctx->started = 1;
    curl_easy_getinfo(ctx->h, CURLINFO_RESPONSE_CODE, &ctx->resp->status);
    if (!ctx->encoded &&
        curl_easy_getinfo(ctx->h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK && cl >= 0)
        ctx->length = (long long)cl;
    if (ctx->resp->status / 100 != 2 || ctx->io->answer_max > 0)
        ctx->route = ROUTE_ANSWER;
    else
        ctx->resp->total = ctx->length;
}

/*
 * The whole body came: bytes that OpenSSL already decrypted past its end are
 * an answer nobody asked for (a broken gateway), and poll() cannot see them
 * (cms_conn_set checks the socket only). libcurl would read them as the next
 * request's answer: the connection is shut down, and the next one is new.
 */
static void drop_if_tls_excess(transfer_ctx *ctx)
{
    struct curl_tlssessioninfo *tls = NULL;

    if (ctx->sock == CURL_SOCKET_BAD ||
        curl_easy_getinfo(ctx->h, CURLINFO_TLS_SSL_PTR, &tls) != CURLE_OK || !tls ||
        tls->backend != CURLSSLBACKEND_OPENSSL || !tls->internals)
        return;
    if (SSL_pending((SSL *)tls->internals) > 0)
        shutdown(ctx->sock, SHUT_RDWR);
}

/* max_size for every sink: from Content-Length before reading, else as bytes come. */
static int within_limit(transfer_ctx *ctx, size_t more)
{
    long long max = ctx->io->max_size;
    cms_response *r = ctx->resp;

    if (max <= 0 || (r->total <= max && r->bytes + (long long)more <= max))
        return 0;
    return cms_error_set(ctx->err, CMS_E_TOO_LARGE,
                         "the recording is larger than max_size (%lld bytes)%s", max,
                         r->total > max ? ": the server announced more" : "");
}

/* Sniff what was held back: a recording starts the sink, JSON stays here. */
static int decide_route(transfer_ctx *ctx)
{
    cms_response *r = ctx->resp;
    cms_buf *held = &r->body;

    r->format = cms_sniff((const unsigned char *)held->data, held->len);
    if (cms_is_answer(r->format, r->content_type) || ctx->io->answer_max > 0) {
        ctx->route = ROUTE_ANSWER;
        return 0;
    }
    ctx->route = ROUTE_SINK;
    r->sunk = 1;
    if (within_limit(ctx, held->len) != 0 ||
        (ctx->io->sink.begin &&
         ctx->io->sink.begin(ctx->io->sink.ud, r->total, r->format, ctx->err) != 0) ||
        ctx->io->sink.write(ctx->io->sink.ud, held->data, held->len, ctx->err) != 0)
        return -1;
    r->bytes = (long long)held->len;
    cms_buf_free(held);
    return 0;
}

/* How much of an answer is kept: error bodies are small, a call's answer is its result. */
static size_t answer_limit(const transfer_ctx *ctx)
{
    if (ctx->io->answer_max > 0 && ctx->resp->status / 100 == 2)
        return (size_t)ctx->io->answer_max;
    return CMS_ERROR_BODY_MAX;
}

static int keep_answer(transfer_ctx *ctx, const char *p, size_t len)
{
    cms_buf *body = &ctx->resp->body;
    size_t max = answer_limit(ctx);

    if (body->len + len > max) {
        /* keep what fits, then stop reading: answers are bounded */
        cms_buf_append(body, p, max - body->len);
        ctx->resp->truncated = 1;
        ctx->limit_hit = 1;
        return -1;
    }
    if (cms_buf_append(body, p, len) != 0) {
        cms_error_set(ctx->err, CMS_E_NOMEM, "out of memory while receiving the response");
        ctx->failed = 1;
        return -1;
    }
    return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    transfer_ctx *ctx = ud;
    size_t len = size * n;

    if (!ctx->started)
        on_first_byte(ctx);
    ctx->seen += (long long)len;
    if (ctx->length >= 0 && ctx->seen >= ctx->length)
        drop_if_tls_excess(ctx);
    if (ctx->route == ROUTE_UNDECIDED) {
        cms_buf *held = &ctx->resp->body;
        size_t want = CMS_SNIFF_MAX - held->len;
        size_t take = len < want ? len : want;
        if (keep_answer(ctx, p, take) != 0)
            return 0;
        p += take;
        len -= take;
        if (!cms_sniff_ready((const unsigned char *)held->data, held->len))
            return size * n;
        if (decide_route(ctx) != 0) {
            ctx->failed = 1;
            return 0;
        }
    }
    if (len == 0)
        return size * n;
    if (ctx->route == ROUTE_ANSWER)
        return keep_answer(ctx, p, len) == 0 ? size * n : 0;
    if (within_limit(ctx, len) != 0 ||
        ctx->io->sink.write(ctx->io->sink.ud, p, len, ctx->err) != 0) {
        ctx->failed = 1;
        return 0;
    }
    ctx->resp->bytes += (long long)len;
    return size * n;
}

static long ms_since(const struct timespec *t)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t->tv_sec) * 1000L + (now.tv_nsec - t->tv_nsec) / 1000000L;
}

/* libcurl calls this often, also while waiting for the answer and during
   stalls: report at a sensible rate, so that a callback can cancel any time
   (and a Lua signal hook, Ctrl-C in the CLI, gets a chance to run). */
static int on_xferinfo(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    transfer_ctx *ctx = ud;

    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    if (ms_since(&ctx->last_progress) < CMS_PROGRESS_INTERVAL_MS)
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &ctx->last_progress);
    /* also while an error answer arrives (received stays 0): cancel works throughout */
    if (ctx->io->progress(ctx->io->progress_ud, ctx->resp->bytes,
                          ctx->route == ROUTE_ANSWER ? -1 : ctx->resp->total, ctx->err) != 0) {
        if (ctx->err->kind == CMS_OK)
            cms_error_set(ctx->err, CMS_E_CANCELLED, "the download was cancelled");
        ctx->failed = 1;
        return 1;
    }
    return 0;
}

cms_error_kind cms_curl_error_kind(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return CMS_E_TIMEOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_USE_SSL_FAILED:
        return CMS_E_TLS;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_TOO_MANY_REDIRECTS:
        return CMS_E_PROTOCOL;
    case CURLE_OUT_OF_MEMORY:
        return CMS_E_NOMEM;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return CMS_E_INVALID;
    default:
        return CMS_E_NETWORK;
    }
}

int cms_tls_alert(CURLcode rc, const char *errbuf)
{
    return (rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR) && errbuf &&
           strstr(errbuf, "SSL routines:") && strstr(errbuf, " alert ");
}

static int is_retryable_network(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_OPERATION_TIMEDOUT:
        return 1;
    default:
        return 0;
    }
}

void cms_conn_set_init(cms_conn_set *s)
{
    s->fds = NULL;
    s->n = s->cap = 0;
}

void cms_conn_set_free(cms_conn_set *s)
{
    free(s->fds);
    cms_conn_set_init(s);
}

static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    cms_conn_set *s = ud;
    curl_socket_t fd;

    if (purpose != CURLSOCKTYPE_IPCXN)
        return CURL_SOCKET_BAD;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 8;
        curl_socket_t *fds = realloc(s->fds, cap * sizeof *fds);
        if (!fds)
            return CURL_SOCKET_BAD;
        s->fds = fds;
        s->cap = cap;
    }
    /* close-on-exec: a CLI child or a forked nginx worker must not inherit it */
    fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd != CURL_SOCKET_BAD)
        s->fds[s->n++] = fd;
    return fd;
}

static int close_socket(void *ud, curl_socket_t fd)
{
    cms_conn_set *s = ud;
    size_t i;

    for (i = 0; i < s->n; i++)
        if (s->fds[i] == fd) {
            s->fds[i] = s->fds[--s->n];
            break;
        }
    return close(fd);
}

/* A socket with bytes (or EOF) waiting while idle is shut down, so libcurl
   sees the connection dead and opens a new one; the descriptor stays
   libcurl's to close. */
static void drop_if_unclean(curl_socket_t sock)
{
    struct pollfd p;

    p.fd = sock;
    p.events = POLLIN;
    p.revents = 0;
    if (poll(&p, 1, 0) > 0)
        shutdown(sock, SHUT_RDWR);
}

void cms_conn_set_drop_unclean(const cms_conn_set *s)
{
    size_t i;

    for (i = 0; i < s->n; i++)
        drop_if_unclean(s->fds[i]);
}

/* The tracked socket whose local port is `port` (our end of a connection). */
static curl_socket_t socket_by_port(const cms_conn_set *s, int port)
{
    struct sockaddr_storage a;
    socklen_t len;
    size_t i;

    for (i = 0; i < s->n; i++) {
        len = sizeof a;
        if (getsockname(s->fds[i], (struct sockaddr *)&a, &len) != 0)
            continue;
        if ((a.ss_family == AF_INET && ntohs(((struct sockaddr_in *)&a)->sin_port) == port) ||
            (a.ss_family == AF_INET6 && ntohs(((struct sockaddr_in6 *)&a)->sin6_port) == port))
            return s->fds[i];
    }
    return CURL_SOCKET_BAD;
}

/*
 * Just before the request goes out on a connection: one reused from the pool
 * must have nothing waiting (see cms_conn_set). This catches what the check
 * before a transfer cannot while other transfers run side by side (a batch).
 * A stray answer: the socket is shut down, the request is not sent, and the
 * caller starts it again on a new connection.
 */
static int on_prereq(void *ud, char *primary_ip, char *local_ip, int primary_port,
                     int local_port)
{
    transfer_ctx *ctx = ud;
    const cms_transfer_config *cfg = ctx->cfg;
    long fresh = 0;
    curl_socket_t sock;
    struct pollfd p;

    (void)primary_ip, (void)local_ip, (void)primary_port;
    sock = ctx->sock = socket_by_port(cfg->conns, local_port);
    if (curl_easy_getinfo(ctx->h, CURLINFO_NUM_CONNECTS, &fresh) != CURLE_OK || fresh > 0)
        return CURL_PREREQFUNC_OK; /* a new connection: TLS may still have records to read */
    if (sock == CURL_SOCKET_BAD)
        return CURL_PREREQFUNC_OK;
    p.fd = sock;
    p.events = POLLIN;
    p.revents = 0;
    if (poll(&p, 1, 0) <= 0)
        return CURL_PREREQFUNC_OK;
    shutdown(sock, SHUT_RDWR);
    ctx->stray = 1;
    return CURL_PREREQFUNC_ABORT;
}

/* An idle kept-alive connection must have nothing to read (see cms_conn_set). */
static void drop_unclean_connections(CURL *h, const cms_transfer_config *cfg)
{
    curl_socket_t sock = CURL_SOCKET_BAD;

    if (cfg->conns) {
        if (!cfg->busy_conns)
            cms_conn_set_drop_unclean(cfg->conns);
        return;
    }
    if (curl_easy_getinfo(h, CURLINFO_ACTIVESOCKET, &sock) == CURLE_OK &&
        sock != CURL_SOCKET_BAD)
        drop_if_unclean(sock);
}

/* `p` with the hidden bearer token (cfg->hide) replaced by "<redacted>", into
   `out`: 1; 0 when it is not there (show `p` as it is); -1 out of memory
   (show nothing). A gateway may quote the token in an answer. */
static int hide_token(const cms_transfer_config *cfg, const char *p, size_t n, cms_buf *out)
{
    const cms_token *t = cfg ? cfg->hide : NULL;
    size_t i, from = 0;
    int found = 0;

    if (!t || !t->value || t->len == 0)
        return 0;
    for (i = 0; i + t->len <= n; i++) {
        if (memcmp(p + i, t->value, t->len) != 0)
            continue;
        if (cms_buf_append(out, p + from, i - from) || cms_buf_append_str(out, "<redacted>"))
            return -1;
        found = 1;
        from = i + t->len;
        i = from - 1;
    }
    if (found && cms_buf_append(out, p + from, n - from) != 0)
        return -1;
    return found;
}

/* CMSREC_DEBUG: every libcurl event through the redacting trace. */
static int on_debug(CURL *h, curl_infotype type, char *data, size_t size, void *ud)
{
    cms_buf b;
    int hidden;

    cms_buf_init(&b);
    hidden = hide_token(ud, data, size, &b);
    if (hidden >= 0)
        cms_trace_event(stderr, cms_trace_id(h), type, hidden ? b.data : data,
                        hidden ? b.len : size);
    cms_buf_free(&b);
    return 0;
}

/* The outcome in the trace, the hidden token out of the answer and the message. */
static void trace_outcome(const cms_transfer *t, int ret)
{
    cms_response r = *t->resp;
    cms_error e = *t->err;
    cms_buf b;
    int hidden;

    cms_buf_init(&b);
    hidden = hide_token(t->cfg, r.body.data, r.body.len, &b);
    if (hidden > 0)
        r.body = b;
    if (t->cfg->hide && t->cfg->hide->value)
        cms_error_scrub(&e, t->cfg->hide->value, t->cfg->hide->len);
    if (hidden >= 0)
        cms_trace_outcome(stderr, cms_trace_id(t->h), &r, ret, &e);
    cms_buf_free(&b);
}

/* Client certificate, pinned key, lowest TLS version; the trace. */
static CURLcode set_tls_options(CURL *h, const cms_transfer_config *cfg)
{
    CURLcode rc = CURLE_OK;

#define SET(opt, val) \
    do { if (rc == CURLE_OK) rc = curl_easy_setopt(h, opt, val); } while (0)
    SET(CURLOPT_SSLVERSION, cfg->tls_min ? cfg->tls_min : (long)CURL_SSLVERSION_TLSv1_2);
    if (cfg->sslcert)
        SET(CURLOPT_SSLCERT, cfg->sslcert);
    if (cfg->sslkey)
        SET(CURLOPT_SSLKEY, cfg->sslkey);
    /* always a password with a certificate: without one, OpenSSL would ask
       for an encrypted key's on the terminal (and wait) */
    if (cfg->sslcert)
        SET(CURLOPT_KEYPASSWD, cfg->key_password ? cfg->key_password : "");
    if (cfg->pinnedpubkey)
        SET(CURLOPT_PINNEDPUBLICKEY, cfg->pinnedpubkey);
    if (cfg->debug) {
        SET(CURLOPT_DEBUGFUNCTION, on_debug);
        SET(CURLOPT_DEBUGDATA, (void *)cfg); /* the token to hide */
        SET(CURLOPT_VERBOSE, 1L);
    }
#undef SET
    return rc;
}

static CURLcode set_options(CURL *h, const cms_transfer_config *cfg, const char *url,
                            struct curl_slist *headers, const char *body,
                            size_t body_len, transfer_ctx *ctx)
{
    const char *protocols = cfg->allow_http ? "http,https" : "https";
    CURLcode rc = CURLE_OK;

#define SET(opt, val) \
    do { if (rc == CURLE_OK) rc = curl_easy_setopt(h, opt, val); } while (0)
    SET(CURLOPT_ERRORBUFFER, ctx->errbuf);
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PATH_AS_IS, 1L); /* the signed path is the path sent */
    SET(CURLOPT_NOSIGNAL, 1L);   /* safe in threads and nginx workers */
    if (cfg->share) /* a new connection resumes a TLS session of an earlier one */
        SET(CURLOPT_SHARE, cfg->share);
    if (cfg->conns) {
        SET(CURLOPT_OPENSOCKETFUNCTION, open_socket);
        SET(CURLOPT_OPENSOCKETDATA, cfg->conns);
        SET(CURLOPT_CLOSESOCKETFUNCTION, close_socket);
        SET(CURLOPT_CLOSESOCKETDATA, cfg->conns);
#if LIBCURL_VERSION_NUM >= 0x075000
        SET(CURLOPT_PREREQFUNCTION, on_prereq);
        SET(CURLOPT_PREREQDATA, ctx);
#endif
    }
    if (cfg->resolve) /* connect to the IP; SNI, certificate and Host keep the name */
        SET(CURLOPT_RESOLVE, cfg->resolve);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    if (cfg->no_reuse) {
        SET(CURLOPT_FRESH_CONNECT, 1L);
        SET(CURLOPT_FORBID_REUSE, 1L);
    }
    /* ask for the bytes as they are, but decode a body a gateway encoded anyway,
       so a gzipped JSON error is seen as JSON and never saved as a recording */
    SET(CURLOPT_ACCEPT_ENCODING, "identity");
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, protocols);
    SET(CURLOPT_REDIR_PROTOCOLS_STR, protocols);
#else
    SET(CURLOPT_PROTOCOLS, cfg->allow_http ? (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)
                                           : (long)CURLPROTO_HTTPS);
    (void)protocols;
#endif
    SET(CURLOPT_SSL_VERIFYPEER, cfg->insecure ? 0L : 1L);
    SET(CURLOPT_SSL_VERIFYHOST, cfg->insecure ? 0L : 2L);
    if (cfg->cafile)
        SET(CURLOPT_CAINFO, cfg->cafile);
    if (cfg->capath)
        SET(CURLOPT_CAPATH, cfg->capath);
    if (rc == CURLE_OK)
        rc = set_tls_options(h, cfg);
    if (cfg->proxy)
        SET(CURLOPT_PROXY, cfg->proxy);
    if (cfg->user_agent)
        SET(CURLOPT_USERAGENT, cfg->user_agent);
    if (cfg->timeout_ms > 0)
        SET(CURLOPT_TIMEOUT_MS, cfg->timeout_ms);
    if (cfg->connect_timeout_ms > 0)
        SET(CURLOPT_CONNECTTIMEOUT_MS, cfg->connect_timeout_ms);
    if (cfg->stall_timeout_s > 0) { /* under 1 byte/s for that long: stalled */
        SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
        SET(CURLOPT_LOW_SPEED_TIME, cfg->stall_timeout_s);
    }
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_POSTFIELDS, body);
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, ctx);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, ctx);
    if (ctx->io->progress) {
        SET(CURLOPT_NOPROGRESS, 0L);
        SET(CURLOPT_XFERINFOFUNCTION, on_xferinfo);
        SET(CURLOPT_XFERINFODATA, ctx);
    }
#undef SET
    return rc;
}

/* libcurl 7.x says "out of memory" when an answer passes its limits (a
   header line over 100 KB): when memory is plainly there, it was that. */
static int memory_available(void)
{
    void *p = malloc(1 << 20);

    free(p);
    return p != NULL;
}

/*
 * libcurl says CURLE_SSL_CONNECT_ERROR also when the connection failed under
 * the handshake (reset, closed: the peer went away, nothing was verified or
 * refused). Only its message tells: these are its socket-level wordings.
 */
static int handshake_cut(const char *errbuf)
{
    static const char *const cut[] = {"SSL_ERROR_SYSCALL", "Recv failure", "Send failure",
                                      "unexpected eof", "Connection reset"};
    size_t i;

    for (i = 0; i < sizeof cut / sizeof cut[0]; i++)
        if (strstr(errbuf, cut[i]))
            return 1;
    return 0;
}

/*
 * Some libcurl codes mean one thing before a connection exists and another
 * once a server answered: "unsupported protocol" is a bad URL, or an answer
 * without a status line (HTTP/0.9); "out of memory" may be an oversized
 * answer. A server's nonsense is kind protocol.
 */
static cms_error_kind answer_error_kind(CURL *h, CURLcode rc, const char *errbuf)
{
    char *ip = NULL;
    int connected = curl_easy_getinfo(h, CURLINFO_PRIMARY_IP, &ip) == CURLE_OK && ip && *ip;

    if (rc == CURLE_SSL_CONNECT_ERROR && handshake_cut(errbuf))
        return CMS_E_NETWORK;
    if (connected && rc == CURLE_UNSUPPORTED_PROTOCOL)
        return CMS_E_PROTOCOL;
    if (connected && rc == CURLE_OUT_OF_MEMORY && memory_available())
        return CMS_E_PROTOCOL;
    return cms_curl_error_kind(rc);
}

/* What a TLS failure most likely means, in the options' words. */
static const char *tls_hint(const char *what)
{
    static const char *const hints[][2] = {
        {"local issuer", "is cafile the CA that signed the CMS certificate?"},
        {"self-signed", "is cafile the CA that signed the CMS certificate?"},
        {"self signed", "is cafile the CA that signed the CMS certificate?"},
        {"has expired", "the CMS certificate has expired, or this machine's clock is wrong"},
        {"not yet valid", "the CMS certificate is not valid yet, or this machine's clock is wrong"},
        {"target host name", "the CMS certificate does not name the host of base_url"},
        {"subject name matches", "the CMS certificate does not name the host of base_url"},
        {"certificate required", "the CMS asks for a client certificate: set sslcert"},
        {"alert unknown ca", "the CMS does not trust the client certificate (sslcert)"},
        {"alert bad certificate", "the CMS refused the client certificate (sslcert)"},
        {"protocol version", "no TLS version in common: tls_min may be above what the CMS speaks"},
        {"unsupported protocol", "no TLS version in common: tls_min may be above what the CMS speaks"},
        {"pinned", "the CMS public key is not one of pinnedpubkey"},
        {"client certificate", "check sslcert, sslkey and sslkey_password"},
        {"private key", "check sslcert, sslkey and sslkey_password"},
    };
    size_t i;

    for (i = 0; i < sizeof hints / sizeof hints[0]; i++)
        if (strstr(what, hints[i][0]))
            return hints[i][1];
    return NULL;
}

static int transport_error(CURL *h, CURLcode rc, const char *errbuf, const char *url,
                           cms_error *err)
{
    cms_error_kind kind = cms_tls_alert(rc, errbuf) ? CMS_E_TLS
                                                    : answer_error_kind(h, rc, errbuf);
    const char *what = *errbuf ? errbuf : curl_easy_strerror(rc);
    const char *hint = kind == CMS_E_TLS ? tls_hint(what) : NULL;
    int n = (int)strlen(what);

    while (n > 0 && what[n - 1] == ' ') /* some libcurl messages end in a space */
        n--;

    if (kind == CMS_E_PROTOCOL && rc == CURLE_UNSUPPORTED_PROTOCOL)
        cms_error_set(err, kind, "the server at %s did not answer HTTP (no status line): %.*s",
                      url, n, what);
    else if (kind == CMS_E_PROTOCOL && rc == CURLE_OUT_OF_MEMORY)
        cms_error_set(err, kind, "the answer of %s went past libcurl's limits (a header "
                      "line over 100 KB?)", url);
    else if (kind == CMS_E_INVALID)
        cms_error_field(err, "base_url", "the URL cannot be used: %.*s", n, what);
    else
        cms_error_set(err, kind, "%s %s failed: %.*s%s%s%s",
                      kind == CMS_E_TLS ? "the TLS connection to" : "the request to",
                      url, n, what, hint ? " (" : "", hint ? hint : "", hint ? ")" : "");
    err->curl_code = (int)rc;
    /* a handshake cut under TLS is kind network (answer_error_kind): retried */
    err->retryable = kind != CMS_E_TLS &&
                     (is_retryable_network(rc) || rc == CURLE_SSL_CONNECT_ERROR);
    return -1;
}

int cms_transfer_start(cms_transfer *t, CURL *h, const cms_transfer_config *cfg,
                       const char *url, struct curl_slist *headers, const char *body,
                       size_t body_len, const cms_transfer_io *io, cms_response *resp,
                       cms_error *err)
{
    CURLcode rc;

    memset(t, 0, sizeof *t);
    t->h = h;
    t->io = io;
    t->resp = resp;
    t->err = err;
    t->url = url;
    t->cfg = cfg;
    t->length = -1;
    t->sock = CURL_SOCKET_BAD;
    /* last_progress stays zero: the first report comes as soon as the recording starts */
    drop_unclean_connections(h, cfg);
    curl_easy_reset(h);
    rc = set_options(h, cfg, url, headers, body, body_len, t);
    if (rc == CURLE_OK) {
        if (cfg->debug)
            cms_trace_request(stderr, cms_trace_id(h), url);
        return 0;
    }
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    return transport_error(h, rc, t->errbuf, url, err);
}

static int outcome(cms_transfer *t, CURLcode rc)
{
    cms_response *resp = t->resp;

    curl_easy_setopt(t->h, CURLOPT_ERRORBUFFER, NULL); /* t may not outlive the transfer */
    curl_easy_getinfo(t->h, CURLINFO_TOTAL_TIME, &resp->elapsed);
    if (!t->started)
        curl_easy_getinfo(t->h, CURLINFO_RESPONSE_CODE, &resp->status);
    if (t->failed)
        return -1;
    if (t->stray) { /* nothing was sent: start again, on a new connection */
        cms_error_set(t->err, CMS_E_NETWORK, "an unrequested answer waited on the kept-alive "
                      "connection to %s: it was closed before the request was sent", t->url);
        t->err->retryable = 1;
        t->err->retry_after = 0;
        return -1;
    }
    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && t->limit_hit))
        return transport_error(t->h, rc, t->errbuf, t->url, t->err);
    if (rc == CURLE_OK && !t->headers_done) { /* libcurl takes that for a whole answer */
        cms_error_set(t->err, CMS_E_NETWORK, "the connection to %s closed in the middle of "
                      "the answer's headers", t->url);
        t->err->retryable = 1;
        return -1;
    }
    /* a body shorter than the sniffing window is decided at the end */
    if (t->route == ROUTE_UNDECIDED && resp->status / 100 == 2 && decide_route(t) != 0)
        return -1;
    return 0;
}

int cms_transfer_finish(cms_transfer *t, CURLcode rc)
{
    int ret = outcome(t, rc);

    if (t->cfg->debug)
        trace_outcome(t, ret);
    return ret;
}

CURLcode cms_transfer_run(cms_transfer *t, CURLM *m)
{
    CURLcode rc = CURLE_FAILED_INIT;
    CURLMcode mc;
    CURLMsg *msg;
    int running = 1, left;

    if (curl_multi_add_handle(m, t->h) != CURLM_OK)
        return CURLE_OUT_OF_MEMORY;
    do {
        mc = curl_multi_perform(m, &running);
        if (mc == CURLM_OK && running) /* libcurl's own timers shorten the wait */
            mc = curl_multi_poll(m, NULL, 0, 1000, NULL);
    } while (mc == CURLM_OK && running);
    while ((msg = curl_multi_info_read(m, &left)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == t->h)
            rc = msg->data.result;
    curl_multi_remove_handle(m, t->h);
    if (mc != CURLM_OK)
        rc = mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
    return rc;
}

int cms_transfer_post(CURL *h, const cms_transfer_config *cfg, const char *url,
                      struct curl_slist *headers, const char *body, size_t body_len,
                      const cms_transfer_io *io, cms_response *resp, cms_error *err)
{
    cms_transfer t;

    if (cms_transfer_start(&t, h, cfg, url, headers, body, body_len, io, resp, err) != 0)
        return -1;
    return cms_transfer_finish(&t, curl_easy_perform(h));
}
