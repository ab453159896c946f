/*
 * cms_classify: what came back, decided by bytes and status, never by the
 * Content-Type (CMS servers send JSON errors with HTTP 200 and arbitrary
 * content types), which only makes an unknown body labelled JSON an answer.
 *
 *   cms_sniff()           first bytes -> WAV, ZIP, JSON result, unknown
 *   cms_classify_status() non-2xx status -> auth / http error, retryable
 *   cms_classify_result() a decoded JSON result -> api / protocol error
 *
 * JSON decoding itself is the caller's (the binding uses lua-cjson); this
 * unit only sees the fields it extracted.
 */
#ifndef CMS_CLASSIFY_H
#define CMS_CLASSIFY_H

#include <stddef.h>

#include "cms_error.h"

typedef enum cms_format {
    CMS_FMT_UNKNOWN, /* binary, but neither WAV nor ZIP: still a recording */
    CMS_FMT_WAV,
    CMS_FMT_ZIP,
    CMS_FMT_JSON,    /* a JSON object: a CMS result, never a recording */
    CMS_FMT_TEXT     /* HTML, XML, a JSON array, only whitespace: never a recording */
} cms_format;

/* Bytes needed to tell every format apart ("RIFF" size "WAVE"). */
#define CMS_SNIFF_BYTES 12
/* Leading whitespace (before a JSON error, say) is skipped up to this many bytes. */
#define CMS_SNIFF_MAX 1024

cms_format cms_sniff(const unsigned char *p, size_t n);
/* 1 when the first `n` bytes are enough for cms_sniff (or n >= CMS_SNIFF_MAX). */
int cms_sniff_ready(const unsigned char *p, size_t n);
const char *cms_format_name(cms_format f);
/* 1 when a body of format `fmt` is an answer, never a recording: a JSON
   object, text, or a body of no known format labelled JSON by `content_type`
   (a bare JSON string or number); WAV and ZIP are recordings whatever the
   label says. */
int cms_is_answer(cms_format fmt, const char *content_type);
/* File name extension for a format, without the dot. */
const char *cms_format_ext(cms_format f);

/* A printable one-line excerpt of an answer for messages: leading blanks
   skipped, control characters (C0, DEL, C1) and bytes that are not UTF-8 as
   '?', cut at a UTF-8 boundary, "(binary)" when it is mostly not text. */
void cms_excerpt(const char *p, size_t n, char *out, size_t cap);

/* 1 if the CMS result code means flow control (worth retrying later). */
int cms_result_is_flow_control(const char *code);

/*
 * Fill `err` for a non-2xx status. `detail` is a short server-provided text
 * (may be NULL or ""), `retry_after` seconds or -1. Returns -1.
 */
int cms_classify_status(long status, const char *detail, long retry_after,
                        cms_error *err);

/*
 * A 2xx body that parsed as a JSON object. `code`/`desc` are the resultCode
 * and resultDesc as strings (NULL when absent or not a string/number).
 * Always an error: resultCode "0" without a recording is a protocol error.
 */
int cms_classify_result(long status, const char *code, const char *desc,
                        cms_error *err);

#endif
