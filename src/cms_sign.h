/*
 * cms_sign: the CMS "auth-v2" AK/SK signature (the "C2" authentication).
 *
 *   Authorization = auth-v2/{AK}/{timestamp}/{SignedHeaders}/{signature}
 *   SigningKey    = hex(HMAC-SHA256(SK, "auth-v2/{AK}/{timestamp}/{SignedHeaders}"))
 *   signature     = hex(HMAC-SHA256(SigningKey as 64 ASCII bytes, CanonicalRequest))
 *
 * The canonical request is the method, the path as sent, the sorted
 * normalized query (only when there is one), SignedHeaders, the sorted
 * canonical headers, then "\n" and the normalized body. See
 * shared/reference/cms-protocol.md; test/unit_sign.c checks its vectors.
 * No Lua here: the binding and the C tests both call cms_sign().
 */
#ifndef CMS_SIGN_H
#define CMS_SIGN_H

#include <stddef.h>

#include "cms_buf.h"
#include "cms_error.h"

/* A name/value pair of explicit lengths (values may hold any byte). */
typedef struct cms_kv {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} cms_kv;

#define CMS_SIGN_MAX_PAIRS 32
#define CMS_TIMESTAMP_SIZE 32

typedef struct cms_sign_input {
    const char *ak;
    const unsigned char *sk;
    size_t sk_len;
    const char *method;          /* uppercased when signed */
    const char *path;            /* exactly as sent */
    const cms_kv *query;         /* may be NULL when nquery == 0 */
    size_t nquery;
    const cms_kv *headers;       /* every header given here is signed */
    size_t nheaders;
    const char *body;            /* may be NULL when body_len == 0 */
    size_t body_len;
    const char *timestamp;       /* yyyy-MM-ddTHH:mm:ssZ */
} cms_sign_input;

typedef struct cms_signature {
    cms_buf canonical_request;
    cms_buf signed_headers;
    cms_buf authorization;       /* wiped by cms_signature_free (may hold a token) */
    cms_buf string_to_sign;      /* SDK-HMAC-SHA256 only */
    char signing_key[65];        /* derived from the SK: wiped by cms_signature_free */
    char signature[65];
} cms_signature;

void cms_signature_init(cms_signature *s);
void cms_signature_free(cms_signature *s);

/* Fill `out` (initialised by the caller). Returns 0, or -1 with `err` set. */
int cms_sign(const cms_sign_input *in, cms_signature *out, cms_error *err);

/* Append normalize(s): unreserved bytes kept, everything else %XX uppercase. */
int cms_normalize(cms_buf *out, const char *s, size_t n);

/* Current UTC time as yyyy-MM-ddTHH:mm:ssZ. Returns 0 or -1. */
int cms_timestamp_now(char out[CMS_TIMESTAMP_SIZE]);

/*
 * ---- SDK-HMAC-SHA256: the API gateway's scheme (cms-protocol.md, vector V4) ----
 *
 *   Authorization = SDK-HMAC-SHA256 Access={AK}, SignedHeaders={names}, Signature={hex}
 *   StringToSign  = "SDK-HMAC-SHA256\n" X-Sdk-Date "\n" hex(SHA-256(CanonicalRequest))
 *   Signature     = hex(HMAC-SHA256(SK, StringToSign))
 *
 * The canonical request is the method, the path with each segment
 * percent-encoded and always ending in '/', the sorted query (an empty line
 * when none), "name:value\n" per signed header sorted by name, then an
 * empty line, the signed names, and the hex SHA-256 of the body. Header
 * values are trimmed, not encoded. x-sdk-date is signed from `timestamp`.
 */
#define CMS_SDK_DATE_SIZE 17 /* yyyyMMddTHHmmssZ */

/* X-Sdk-Date from `ts`, given as yyyyMMddTHHmmssZ or yyyy-MM-ddTHH:mm:ssZ
   (a real date-time either way). Returns 0, or -1 when it is neither. */
int cms_sdk_date(const char *ts, char out[CMS_SDK_DATE_SIZE]);
/* The current UTC time as X-Sdk-Date. Returns 0 or -1. */
int cms_sdk_date_now(char out[CMS_SDK_DATE_SIZE]);

/* Sign every header of in->headers (host among them) plus x-sdk-date, which
   must not be given: it comes from in->timestamp (either form above). Fills
   `out` as cms_sign does (signing_key stays "", string_to_sign is set). */
int cms_sign_apig(const cms_sign_input *in, cms_signature *out, cms_error *err);

#endif
