/*
 * cms_request: the downloadRecordFile request, validated and serialised.
 *
 * Validation happens before any I/O: callID is required, every value must be
 * valid UTF-8 without control characters (C0, DEL, C1), beginTime must be a real
 * yyyyMMddHHmmss date-time. The body is compact JSON with all five keys in
 * the order of the interface document, "" for the ones not given.
 *
 * JSON string escaping is not written here: the caller passes an escaper
 * (the binding uses lua-cjson's encoder).
 */
#ifndef CMS_REQUEST_H
#define CMS_REQUEST_H

#include <stddef.h>

#include "cms_buf.h"
#include "cms_error.h"

enum {
    CMS_F_CALLID,
    CMS_F_WORKNO,
    CMS_F_BEGINTIME,
    CMS_F_CALLERNO,
    CMS_F_CALLEENO,
    CMS_F__COUNT
};

#define CMS_FIELD_MAX_BYTES 256

/* The field names, in the documented body order. */
extern const char *const cms_request_fields[CMS_F__COUNT];

typedef struct cms_request {
    const char *value[CMS_F__COUNT]; /* NULL when absent */
    size_t len[CMS_F__COUNT];
} cms_request;

/* Appends `s` as a quoted JSON string literal. Returns 0 or -1. */
typedef int (*cms_json_escape_fn)(void *ud, const char *s, size_t n, cms_buf *out);

void cms_request_init(cms_request *r);
/* Index of a field name, or -1. */
int cms_request_field_index(const char *name);
int cms_request_validate(const cms_request *r, cms_error *err);
/* Validate, then write the JSON body into `body`. */
int cms_request_build(const cms_request *r, cms_json_escape_fn escape, void *ud,
                      cms_buf *body, cms_error *err);

/* 1 if s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int cms_utf8_valid(const char *s, size_t n);
/* 1 if s is exactly 14 digits forming a real date-time. */
int cms_datetime14_valid(const char *s, size_t n);

/* The candidate closest to `name` (case-insensitive match or edit distance
   <= 2), for "did you mean" hints; NULL if none is close. */
const char *cms_suggest(const char *name, const char *const *candidates, size_t n);

#endif
