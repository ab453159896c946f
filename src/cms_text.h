/*
 * cms_text: server text made safe for terminals, logs and JSON output.
 *
 * Whatever a CMS or a gateway sends (resultDesc, error pages, ZIP member
 * names) ends up in messages printed on a terminal or encoded as JSON. Such
 * text must be valid UTF-8 (a GBK resultDesc is not) and hold no control
 * characters: neither C0 and DEL nor C1 (U+0080-U+009F: U+009B is the
 * terminal's CSI, as dangerous as ESC).
 */
#ifndef CMS_TEXT_H
#define CMS_TEXT_H

#include <stddef.h>

/* Length of the valid UTF-8 character at `p` (`n` bytes left), 0 if invalid;
   its code point in *cp. Overlong forms and surrogates are invalid. */
size_t cms_utf8_char(const char *p, size_t n, unsigned long *cp);

/* 1 for C0 controls, DEL and C1 controls. */
int cms_is_control(unsigned long cp);

/* 1 if `s` (n bytes) is valid UTF-8 without control characters. */
int cms_text_printable(const char *s, size_t n);

/* In place: every invalid byte and every control character becomes '?'.
   The result is never longer; returns how many were replaced. */
size_t cms_text_clean(char *s);

/* Minimum length of a secret that cms_text_scrub looks for: shorter byte
   strings occur in ordinary text by chance. */
#define CMS_SCRUB_MIN 8

/* In place: every occurrence of `secret` (slen >= CMS_SCRUB_MIN bytes, any
   bytes) in `p` (n bytes) becomes "***". Returns the new length (never
   longer); p[new length] is set to '\0' when that byte was inside `p`. */
size_t cms_text_scrub(char *p, size_t n, const char *secret, size_t slen);

/* In place: `s` (a C string) ending with the first 8 or more bytes of
   `secret` (but not all of it) loses them for "***": what is left of a
   secret quoted by a server when its text was cut. Returns 1 if so. */
int cms_text_scrub_tail(char *s, const char *secret, size_t slen);

/* `n` bytes of `in` into `out` (at most cap - 1 bytes, then a NUL) with the
   user information of every URL as "<redacted>": "scheme://user:pw@host" and
   "user:pw@host" (libcurl's notes and errors quote proxy URLs as given). With
   `cut` (the text may have been cut short), a "scheme://" whose authority runs
   to the end without an '@' is redacted too. Returns the length written. */
size_t cms_redact_userinfo(const char *in, size_t n, int cut, char *out, size_t cap);

#endif
