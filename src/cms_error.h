/*
 * cms_error: the one error value of the C core.
 *
 * Every failure the core can report is a kind from CMS_ERROR_KINDS plus a
 * sentence in `message` and, where they apply, the request field, the HTTP
 * status, the libcurl code and the CMS result code/description. The list
 * below drives the enum, the kind names exported to Lua (cmsrec.kinds) and
 * the default `retryable` flag, so adding a kind is one line.
 *
 * Messages never contain secrets: callers format them from field names,
 * status codes and server text only.
 */
#ifndef CMS_ERROR_H
#define CMS_ERROR_H

#include <stddef.h>

/*        NAME       name        retryable by default */
#define CMS_ERROR_KINDS(X)                                                   \
    X(INVALID,  "invalid",  0) /* bad request or argument, caught before I/O */ \
    X(API,      "api",      0) /* the CMS answered a JSON resultCode != "0" */  \
    X(AUTH,     "auth",     0) /* HTTP 401/403: never retry (IP locks)      */  \
    X(HTTP,     "http",     0) /* other non-2xx status                       */  \
    X(NETWORK,  "network",  1) /* connect, send, receive failures            */  \
    X(TIMEOUT,  "timeout",  1) /* connect or transfer timeout                */  \
    X(TLS,      "tls",      0) /* certificate or handshake failure           */  \
    X(PROTOCOL, "protocol", 0) /* an answer that makes no sense              */  \
    X(IO,       "io",       0) /* writing the file or the sink failed        */  \
    X(CANCELLED, "cancelled", 0) /* on_progress returned false               */  \
    X(TOO_LARGE, "too_large", 0) /* the body exceeds max_size                */  \
    X(NOMEM,    "nomem",    0) /* out of memory                              */

typedef enum cms_error_kind {
    CMS_OK = 0,
#define CMS_X_ENUM(NAME, name, retry) CMS_E_##NAME,
    CMS_ERROR_KINDS(CMS_X_ENUM)
#undef CMS_X_ENUM
    CMS_E__COUNT
} cms_error_kind;

typedef struct cms_error {
    cms_error_kind kind;
    int retryable;
    char message[512];
    char field[32];        /* request/config field at fault, or "" */
    long status;           /* HTTP status, 0 if none */
    int curl_code;         /* CURLcode, 0 if none */
    char result_code[32];  /* CMS resultCode, "" if none */
    char result_desc[256]; /* CMS resultDesc, "" if none */
    long retry_after;      /* seconds from Retry-After, -1 if none */
} cms_error;

void cms_error_clear(cms_error *e);
/* Set kind, default retryable flag and a printf-style message. Returns -1. */
int cms_error_set(cms_error *e, cms_error_kind kind, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Same, naming the field at fault. */
int cms_error_field(cms_error *e, const char *field, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
const char *cms_error_kind_name(cms_error_kind kind);
int cms_error_kind_retryable(cms_error_kind kind);

/* Copy `src` into `dst` (size `cap`), always terminated, cut on a UTF-8 boundary. */
void cms_strlcpy(char *dst, const char *src, size_t cap);

#endif
