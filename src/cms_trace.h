/*
 * cms_trace: the CMSREC_DEBUG trace, for support teams: what was sent and
 * what came back, one line per item, on a stream (stderr).
 *
 *   cmsrec[1a2b] > POST https://10.0.0.1:28080/rest/...   request line, headers, body
 *   cmsrec[1a2b] * Connected to 10.0.0.1 ...              libcurl's own notes (TLS too)
 *   cmsrec[1a2b] < HTTP/1.1 200                           status line, headers
 *   cmsrec[1a2b] < body: a recording (wav), 160044 bytes, not shown
 *
 * The number tells the transfers of a batch apart. Redacted: the signature
 * of Authorization (its scheme and AK stay), the values of cookies and of
 * any header whose name says token, secret or password. Never written: the
 * SK (C code never formats it), a recording's bytes, TLS records. Answers
 * that are not a recording are shown as a bounded excerpt. Every piece of
 * text is made printable (cms_excerpt) and cut: a server's bytes cannot
 * drive the terminal.
 */
#ifndef CMS_TRACE_H
#define CMS_TRACE_H

#include <stdio.h>

#include <curl/curl.h>

#include "cms_transfer.h"

/* One libcurl debug event (CURLOPT_DEBUGFUNCTION), written redacted. */
void cms_trace_event(FILE *out, unsigned id, curl_infotype type, const char *data,
                     size_t size);
/* The request about to be sent: method and URL. */
void cms_trace_request(FILE *out, unsigned id, const char *url);
/* How the transfer ended: the answer body in brief, or the error (rc != 0). */
void cms_trace_outcome(FILE *out, unsigned id, const cms_response *r, int rc,
                       const cms_error *err);
/* An Authorization value with its signature replaced by "<redacted>":
   auth-v2/AK/time/headers/<redacted>; "Scheme ...Signature=<redacted>";
   any other scheme keeps only its first word. */
void cms_trace_redact_auth(const char *v, size_t n, char *out, size_t cap);
/* A number naming a transfer in the trace (from its handle). */
unsigned cms_trace_id(const void *handle);

#endif
