/*
 * unit_core: tests of the C core without Lua or a network: the auth-v2
 * vectors of cms-protocol.md, normalisation, request validation and body,
 * format sniffing and classification, libcurl code mapping.
 * Prints TAP ("ok N - name" / "not ok N - name"); exit status 1 on failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../src/cms_classify.h"
#include "../src/cms_gateway.h"
#include "../src/cms_job.h"
#include "../src/cms_request.h"
#include "../src/cms_secret.h"
#include "../src/cms_sign.h"
#include "../src/cms_text.h"
#include "../src/cms_trace.h"
#include "../src/cms_sink.h"
#include "../src/cms_transfer.h"
#include "../src/cms_url.h"
#include "../src/cms_zip.h"

static int count, failed;

static void ok(int cond, const char *name)
{
    count++;
    if (!cond)
        failed++;
    printf("%sok %d - %s\n", cond ? "" : "not ", count, name);
}

static void ok_str(const char *got, const char *want, const char *name)
{
    ok(got && strcmp(got, want) == 0, name);
    if (!(got && strcmp(got, want) == 0))
        printf("#   got:  %s\n#   want: %s\n", got ? got : "(null)", want);
}

#define KV(n, v) {n, sizeof(n) - 1, v, sizeof(v) - 1}

static const char *vec_body = "{\"say\": \"Hello world!\"}";

static void sign_vector(const cms_kv *h, size_t nh, const cms_kv *q, size_t nq,
                        const char *method, const char *body, cms_signature *sig)
{
    cms_sign_input in;
    cms_error err;

    memset(&in, 0, sizeof in);
    in.ak = "globalaktest";
    in.sk = (const unsigned char *)"example-sk-0123456789";
    in.sk_len = strlen("example-sk-0123456789");
    in.method = method;
    in.path = "/rest/cmsapp/v1/ping";
    in.query = q;
    in.nquery = nq;
    in.headers = h;
    in.nheaders = nh;
    in.body = body;
    in.body_len = strlen(body);
    in.timestamp = "2024-10-31T14:06:52Z";
    cms_signature_init(sig);
    cms_error_clear(&err);
    ok(cms_sign(&in, sig, &err) == 0, "cms_sign succeeds on a vector");
}

static void test_vectors(void)
{
    cms_kv v1[] = {KV("Host", "10.22.26.181:28080"),
                   KV("Content-Type", "application/json;charset=UTF-8"),
                   KV("content-length", "23")};
    cms_kv v2[] = {KV("host", "10.22.26.181:28080")};
    cms_kv q3[] = {KV("b", "x y"), KV("a", "1/2")};
    cms_signature sig;

    sign_vector(v1, 3, NULL, 0, "POST", vec_body, &sig);
    ok_str(sig.canonical_request.data,
           "POST\n/rest/cmsapp/v1/ping\ncontent-length;content-type;host\n"
           "content-length:23\ncontent-type:application%2Fjson%3Bcharset%3DUTF-8\n"
           "host:10.22.26.181%3A28080\n%7B%22say%22%3A%20%22Hello%20world%21%22%7D",
           "V1 canonical request");
    ok_str(sig.signing_key,
           "bb0c4d2407684a18485b7018d70a5ebdc2c895ffa7d24ff9465e9dcc2fa7bb0f",
           "V1 signing key");
    ok_str(sig.authorization.data,
           "auth-v2/globalaktest/2024-10-31T14:06:52Z/content-length;content-type;host/"
           "151388d296c25c51b38d6800e04a09201cd481eaf10e247de50d9cb16a08da8a",
           "V1 authorization");
    cms_signature_free(&sig);
    ok(sig.signing_key[0] == '\0', "signing key wiped on free");

    sign_vector(v2, 1, NULL, 0, "POST", vec_body, &sig);
    ok_str(sig.signature,
           "e77feacaa3781f9f4b7b391abc2cf2fb75677908c26de4cfa787c2cfb49c2487",
           "V2 signature (host only)");
    cms_signature_free(&sig);

    sign_vector(v2, 1, q3, 2, "get", "", &sig);
    ok_str(sig.canonical_request.data,
           "GET\n/rest/cmsapp/v1/ping\na=1%2F2&b=x%20y\nhost\nhost:10.22.26.181%3A28080\n",
           "V3 canonical request (query, GET, empty body)");
    ok_str(sig.signature,
           "bf9b5078cf12b5efd40b94a325e2297f2b94adeba6bcdfa9e5cbad643784bed0",
           "V3 signature");
    cms_signature_free(&sig);
}

static void test_sign_rejects(void)
{
    cms_kv dup[] = {KV("host", "a"), KV("Host", "b")};
    cms_sign_input in;
    cms_signature sig;
    cms_error err;

    memset(&in, 0, sizeof in);
    in.ak = "ak";
    in.sk = (const unsigned char *)"sk";
    in.sk_len = 2;
    in.method = "POST";
    in.path = "/p";
    in.headers = dup;
    in.nheaders = 2;
    in.timestamp = "2024-10-31T14:06:52Z";
    cms_signature_init(&sig);
    cms_error_clear(&err);
    ok(cms_sign(&in, &sig, &err) != 0 && err.kind == CMS_E_INVALID &&
           strcmp(err.field, "headers") == 0,
       "a header given twice is rejected");
    in.nheaders = 1;
    in.sk_len = 0;
    ok(cms_sign(&in, &sig, &err) != 0 && strcmp(err.field, "sk") == 0,
       "an empty SK is rejected, naming 'sk'");
    ok(strstr(err.message, "sk") != NULL, "the message names the field");
    cms_signature_free(&sig);
}

static void test_normalize(void)
{
    cms_buf b;

    cms_buf_init(&b);
    cms_normalize(&b, "aZ09-._~ /+\xE4\xB8\xAD\0", 15);
    ok_str(b.data, "aZ09-._~%20%2F%2B%E4%B8%AD%00", "normalize keeps unreserved, %XX the rest");
    cms_buf_free(&b);
}

static int plain_escape(void *ud, const char *s, size_t n, cms_buf *out)
{
    (void)ud;
    return cms_buf_append_char(out, '"') | cms_buf_append(out, s, n) |
           cms_buf_append_char(out, '"');
}

static int validate(const char *field, const char *value, cms_error *err)
{
    cms_request r;

    cms_request_init(&r);
    r.value[CMS_F_CALLID] = "1748587841-77268";
    r.len[CMS_F_CALLID] = 16;
    if (field) {
        int f = cms_request_field_index(field);
        r.value[f] = value;
        r.len[f] = value ? strlen(value) : 0;
    }
    cms_error_clear(err);
    return cms_request_validate(&r, err);
}

static void test_request(void)
{
    cms_request r;
    cms_error err;
    cms_buf body;

    cms_request_init(&r);
    cms_buf_init(&body);
    r.value[CMS_F_CALLID] = "1748587841-77268";
    r.len[CMS_F_CALLID] = 16;
    cms_error_clear(&err);
    ok(cms_request_build(&r, plain_escape, NULL, &body, &err) == 0, "build a request");
    ok_str(body.data,
           "{\"callID\":\"1748587841-77268\",\"workNo\":\"\",\"beginTime\":\"\","
           "\"callerNo\":\"\",\"calleeNo\":\"\"}",
           "body has all five keys in the documented order");
    cms_buf_free(&body);

    r.value[CMS_F_CALLID] = NULL;
    ok(cms_request_validate(&r, &err) != 0 && strcmp(err.field, "callID") == 0,
       "callID is required");
    ok(validate("beginTime", "20250530120000", &err) == 0, "a real beginTime passes");
    ok(validate("beginTime", "20240229235959", &err) == 0, "29 February of a leap year passes");
    ok(validate("beginTime", "20250229120000", &err) != 0 &&
           strcmp(err.field, "beginTime") == 0,
       "29 February of 2025 is rejected");
    ok(validate("beginTime", "20251301120000", &err) != 0, "month 13 is rejected");
    ok(validate("beginTime", "20250530246000", &err) != 0, "hour 24 is rejected");
    ok(validate("beginTime", "2025053012000", &err) != 0, "13 digits are rejected");
    ok(validate("beginTime", "2025-05-30 12:0", &err) != 0, "non-digits are rejected");
    ok(validate("workNo", "caf\xC3\xA9", &err) == 0, "UTF-8 passes");
    ok(validate("workNo", "caf\xE9", &err) != 0 && strcmp(err.field, "workNo") == 0,
       "Latin-1 is rejected as invalid UTF-8");
    ok(validate("workNo", "\xC0\xAF", &err) != 0, "overlong UTF-8 is rejected");
    ok(validate("workNo", "\xED\xA0\x80", &err) != 0, "UTF-16 surrogates are rejected");
    ok(validate("callerNo", "123\r\nX-Evil: 1", &err) != 0 &&
           strcmp(err.field, "callerNo") == 0,
       "CR/LF is rejected");
}

static void test_suggest(void)
{
    ok_str(cms_suggest("callId", cms_request_fields, CMS_F__COUNT), "callID",
           "callId suggests callID");
    ok_str(cms_suggest("begintime", cms_request_fields, CMS_F__COUNT), "beginTime",
           "case-insensitive suggestion");
    ok_str(cms_suggest("caleeNo", cms_request_fields, CMS_F__COUNT), "calleeNo",
           "one letter missing suggests calleeNo");
    ok(cms_suggest("colour", cms_request_fields, CMS_F__COUNT) == NULL,
       "nothing suggested for a far name");
}

static void test_classify(void)
{
    cms_error err;

    ok(cms_sniff((const unsigned char *)"RIFF\x10\0\0\0WAVEfmt ", 16) == CMS_FMT_WAV, "sniff WAV");
    ok(cms_sniff((const unsigned char *)"PK\3\4xxxx", 8) == CMS_FMT_ZIP, "sniff ZIP");
    ok(cms_sniff((const unsigned char *)"\xEF\xBB\xBF  {\"a\"", 9) == CMS_FMT_JSON,
       "sniff JSON after a BOM and spaces");
    ok(cms_sniff((const unsigned char *)"RIFF", 4) == CMS_FMT_UNKNOWN, "short RIFF is unknown");
    ok(cms_sniff((const unsigned char *)"ID3x", 4) == CMS_FMT_UNKNOWN, "sniff unknown");
    /* a bare JSON value labelled JSON is an answer; WAV and ZIP stay recordings */
#define ANSWER(fmt, ct, body) cms_is_answer(fmt, ct, (const unsigned char *)body, strlen(body))
    ok(ANSWER(CMS_FMT_UNKNOWN, "application/json;charset=UTF-8", "\"text\""),
       "JSON-typed string is an answer");
    ok(ANSWER(CMS_FMT_UNKNOWN, "Application/JSON ; q=1", " 1"), "media type case-insensitive");
    ok(ANSWER(CMS_FMT_UNKNOWN, "application/problem+json", "-2"), "+json is an answer");
    ok(ANSWER(CMS_FMT_UNKNOWN, "application/json", "\xEF\xBB\xBF null") &&
       ANSWER(CMS_FMT_UNKNOWN, "application/json", "true") &&
       ANSWER(CMS_FMT_UNKNOWN, "application/json", "fal"),
       "JSON literals (as far as they came) are answers");
    ok(!ANSWER(CMS_FMT_UNKNOWN, "application/octet-stream", "1"), "octet-stream is not");
    ok(!ANSWER(CMS_FMT_UNKNOWN, "application/jsonx", "1"), "jsonx is not JSON");
    ok(!ANSWER(CMS_FMT_UNKNOWN, "", "1"), "no content type: a recording");
    ok(!ANSWER(CMS_FMT_WAV, "application/json", "RIFF"), "a WAV labelled JSON is a recording");
    ok(ANSWER(CMS_FMT_TEXT, "audio/wav", "<html>"), "text is an answer whatever the label");
    ok(!ANSWER(CMS_FMT_UNKNOWN, "application/json;charset=UTF-8", "ID3\x04\0\0\0\0\x01\x02") &&
       !ANSWER(CMS_FMT_UNKNOWN, "application/json", "\xFF\xFB\x90\x64") &&
       !ANSWER(CMS_FMT_UNKNOWN, "application/json", "fLaC\0\0\0\x22") &&
       !ANSWER(CMS_FMT_UNKNOWN, "application/json", "nope"),
       "a body labelled JSON that cannot start a JSON value is a recording");
#undef ANSWER

    cms_error_clear(&err);
    cms_classify_status(401, "bad", -1, &err);
    ok(err.kind == CMS_E_AUTH && !err.retryable && err.status == 401, "401 is auth, not retryable");
    cms_classify_status(403, NULL, -1, &err);
    ok(err.kind == CMS_E_AUTH && !err.retryable, "403 is auth, not retryable");
    cms_classify_status(503, "", 7, &err);
    ok(err.kind == CMS_E_HTTP && err.retryable && err.retry_after == 7, "503 is retryable");
    cms_classify_status(500, "", -1, &err);
    ok(err.kind == CMS_E_HTTP && !err.retryable, "500 is not retryable");
    cms_error_clear(&err);
    cms_classify_result(200, "1", "Record List is empty", &err);
    ok(err.kind == CMS_E_API && !err.retryable && strcmp(err.result_code, "1") == 0,
       "resultCode 1 is api, not retryable");
    cms_error_clear(&err);
    cms_classify_result(200, "0300008", "flow", &err);
    ok(err.kind == CMS_E_API && err.retryable, "flow control is retryable");
    cms_error_clear(&err);
    cms_classify_result(200, "0", "ok", &err);
    ok(err.kind == CMS_E_PROTOCOL, "resultCode 0 without a recording is protocol");
}

static void test_curl_kinds(void)
{
    ok(cms_curl_error_kind(CURLE_OPERATION_TIMEDOUT) == CMS_E_TIMEOUT, "timeout kind");
    ok(cms_curl_error_kind(CURLE_PEER_FAILED_VERIFICATION) == CMS_E_TLS, "tls kind");
    ok(cms_curl_error_kind(CURLE_COULDNT_CONNECT) == CMS_E_NETWORK, "network kind");
    ok(strcmp(cms_error_kind_name(CMS_E_PROTOCOL), "protocol") == 0, "kind names");
}

static void test_names(void)
{
    char out[256];

    cms_safe_filename("1748587841-77268", out, sizeof out);
    ok_str(out, "1748587841-77268", "a plain callID is kept as the file name");
    cms_safe_filename("../etc/passwd", out, sizeof out);
    ok_str(out, "_._etc_passwd", "slashes and a leading dot are replaced");
    cms_safe_filename("", out, sizeof out);
    ok_str(out, "recording", "an empty name becomes 'recording'");
    ok(cms_zip_name_safe("rec_1.wav") && cms_zip_name_safe("day1/rec.wav") &&
           cms_zip_name_safe("day1/"),
       "relative member names are safe");
    ok(!cms_zip_name_safe("../x") && !cms_zip_name_safe("a/../../x") &&
           !cms_zip_name_safe("/etc/x") && !cms_zip_name_safe("a\\b") &&
           !cms_zip_name_safe("C:x") && !cms_zip_name_safe("a//b") &&
           !cms_zip_name_safe("./a") && !cms_zip_name_safe(""),
       "escaping, absolute, backslash, drive and empty-component names are not");
}

static void test_mem_sink(void)
{
    cms_mem_sink m;
    cms_sink s;
    cms_error err;

    cms_mem_sink_init(&m);
    s = cms_mem_sink_callbacks(&m);
    cms_error_clear(&err);
    ok(s.begin(s.ud, 1000, CMS_FMT_WAV, &err) == 0 && m.buf.cap == 1001,
       "a known length is allocated once, exactly");
    ok(s.write(s.ud, "RIFF", 4, &err) == 0 && m.buf.cap == 1001 && m.buf.len == 4,
       "writes within the length do not reallocate");
    cms_mem_sink_free(&m);
}

static void resolve(const char *base, int allow_http, const char *url, const char *host,
                    const char *path, const char *name)
{
    cms_url u;
    const char *problem = cms_url_resolve(base, "/rest/x", allow_http, &u);

    ok(problem == NULL && strcmp(u.url, url) == 0 && strcmp(u.host, host) == 0 &&
           strcmp(u.path, path) == 0,
       name);
    if (!problem)
        cms_url_free(&u);
}

static void test_url(void)
{
    cms_url u;

    resolve("https://10.22.26.181:28080", 0, "https://10.22.26.181:28080/rest/x",
            "10.22.26.181:28080", "/rest/x", "Host is ip:port as written");
    resolve("https://cms.example", 0, "https://cms.example/rest/x", "cms.example", "/rest/x",
            "no port written, none in Host");
    resolve("https://[::1]:8443/gw/", 0, "https://[::1]:8443/gw/rest/x", "[::1]:8443",
            "/gw/rest/x", "IPv6 in brackets, a path prefix kept");
    resolve("http://127.0.0.1:1", 1, "http://127.0.0.1:1/rest/x", "127.0.0.1:1", "/rest/x",
            "http with allow_http");
    ok(cms_url_resolve("http://127.0.0.1:1", "/p", 0, &u) != NULL && !u.url,
       "http refused without allow_http");
    ok(cms_url_resolve("https://h/a?b=c", "/p", 0, &u) != NULL, "a query is refused");
    ok(cms_url_resolve("https://user:pw@h", "/p", 0, &u) != NULL, "credentials are refused");
    ok(cms_url_resolve("https://h/caf\xC3\xA9", "/p", 0, &u) != NULL,
       "a non-ASCII path prefix is refused (it would be escaped on the wire)");
    /* found by fuzz/fuzz_url: a host that is not ASCII went into the Host
       header and the signature as raw bytes (libcurl connects to its IDN form) */
    ok(cms_url_resolve("https://h\xC3\xA9.example:8443", "/p", 0, &u) != NULL && !u.host,
       "a non-ASCII host name is refused (the Host header would not be what is sent)");
    ok(cms_url_resolve("https:///10.226.\xB1/gw", "/p", 0, &u) != NULL && !u.host,
       "a host with a byte that is not UTF-8 is refused");
    /* found by fuzz/fuzz_url: libcurl decodes %XX in a host name, so the URL
       sent named "%41" as the Host header and libcurl connected to "A" */
    ok(cms_url_resolve("https://%2541.example", "/p", 0, &u) != NULL && !u.host,
       "a percent-encoded host name is refused (Host would differ from the host reached)");
    ok(cms_url_resolve("https://0%31:8443", "/p", 0, &u) != NULL && !u.host,
       "a host that libcurl reads as another once decoded is refused (01 is 0.0.0.1)");
    resolve("https://%41.example", 0, "https://A.example/rest/x", "A.example", "/rest/x",
            "a host escaped once is sent, and signed, as decoded");
    ok(cms_url_path_clean("/rest/cmsapp/v1") && !cms_url_path_clean("/a b") &&
           !cms_url_path_clean("/a?b") && !cms_url_path_clean("/\xC3\xA9"),
       "path cleanliness");
    ok(!cms_url_proxy_problem("") && !cms_url_proxy_problem("proxy:3128") &&
           !cms_url_proxy_problem("bob:pw@proxy:3128") &&
           !cms_url_proxy_problem("HTTPS://proxy") &&
           !cms_url_proxy_problem("socks5h://[::1]:1080") &&
           !cms_url_proxy_problem("socks4a://u:p%40ss@10.0.0.1"),
       "proxy: what libcurl takes (none, no scheme, its schemes, userinfo)");
    ok(cms_url_proxy_problem("socks9://bob:pw@proxy:1") &&
           cms_url_proxy_problem("ftp://proxy") && cms_url_proxy_problem("http://u:pw@h:99999") &&
           cms_url_proxy_problem("http://") && cms_url_proxy_problem("http://a b:1") &&
           !strstr(cms_url_proxy_problem("socks9://bob:pw@proxy:1"), "pw"),
       "proxy: a scheme libcurl refuses or a URL it cannot parse, never quoted");
}

static void test_excerpt(void)
{
    char out[16];

    cms_excerpt("\r\n  <html>\x1b[2J", 14, out, sizeof out);
    ok_str(out, "<html>?[2J", "excerpt skips blanks, masks control characters");
    cms_excerpt("first\nsecond", 12, out, sizeof out);
    ok_str(out, "first", "excerpt keeps the first line");
    cms_excerpt("abcdefghijklm\xE4\xB8\xAD", 16, out, sizeof out);
    ok_str(out, "abcdefghijklm", "a cut never leaves half a UTF-8 sequence");
    cms_excerpt("\xFF\xFE\x00\x01", 4, out, sizeof out);
    ok_str(out, "(binary)", "binary is not shown");
    cms_excerpt("bad \xC2\x9B" "31m", 9, out, sizeof out);
    ok_str(out, "bad ?31m", "excerpt masks C1 controls (U+009B is the terminal's CSI)");
    cms_excerpt("\xB4\xED" " GBK text", 11, out, sizeof out);
    ok_str(out, "?? GBK text", "excerpt shows text with a few bytes not UTF-8");
    /* found by fuzz/fuzz_trace: a byte not UTF-8 among the last four made
       the excerpt drop them all, as if the text had been cut there */
    cms_excerpt("abcdef\xFF@cd", 10, out, sizeof out);
    ok_str(out, "abcdef?@cd", "excerpt keeps the end of a text it did not cut");
    cms_excerpt("abcdefghijklm\xE4\xB8", 15, out, sizeof out);
    ok_str(out, "abcdefghijklm", "excerpt drops a character cut short at the end");
}

/* Found by fuzz/fuzz_classify: an answer with no body at all (HTTP 304, a
   503 without one) leaves the body buffer NULL; the excerpt of it offset
   that NULL pointer (undefined behaviour, clang's UBSan stops there). */
static void test_empty_answer(void)
{
    cms_response r;
    cms_error e;
    char out[16] = "x";

    cms_excerpt(NULL, 0, out, sizeof out);
    ok_str(out, "", "the excerpt of no body at all is empty");
    cms_response_init(&r);
    r.status = 503;
    cms_error_clear(&e);
    ok(cms_classify_answer(&r, NULL, NULL, &e) == -1 && e.kind == CMS_E_HTTP && e.retryable,
       "a 503 without a body is a retryable http error");
    ok_str(e.message, "the CMS answered HTTP 503", "its message has no excerpt");
}

static void test_text(void)
{
    char buf[64];
    unsigned long cp = 0;

    ok(cms_utf8_char("\xC2\x9B", 2, &cp) == 2 && cp == 0x9B, "utf8_char decodes U+009B");
    ok(cms_utf8_char("\xC0\xAF", 2, &cp) == 0 && cms_utf8_char("\xED\xA0\x80", 3, &cp) == 0 &&
           cms_utf8_char("\xE4\xB8", 2, &cp) == 0,
       "utf8_char refuses overlong forms, surrogates and cut sequences");
    ok(cms_text_printable("r\xC3\xA9" "c_1.wav", 10) && !cms_text_printable("a\xC2\x9B" "b", 4) &&
           !cms_text_printable("a\x1B", 2) && !cms_text_printable("\xB4\xED", 2),
       "printable: UTF-8 yes; C1, ESC and GBK bytes no");
    snprintf(buf, sizeof buf, "%s", "a\xC2\x9B" "31m\x1B[2J\xB4\xED\x7F\xE4\xB8\xAD");
    ok(cms_text_clean(buf) == 5, "clean counts what it replaced");
    ok_str(buf, "a?31m?[2J???\xE4\xB8\xAD", "clean: C1, ESC, DEL and bad bytes as '?'");
    ok(!cms_zip_name_safe("a\xC2\x9B" "31mb") && !cms_zip_name_safe("\xB4\xED.wav") &&
           cms_zip_name_safe("r\xC3\xA9" "c.wav"),
       "ZIP names: no C1 controls, valid UTF-8");
}

static void test_retry_policy(void)
{
    cms_retry_policy p = {2, 500, 30000, 60000};
    cms_error e;
    long d;
    int i, in_range = 1;

    cms_error_clear(&e);
    cms_error_set(&e, CMS_E_NETWORK, "dropped");
    e.retryable = 1;
    d = cms_retry_delay(&p, &e, 1, 0, 0.0);
    ok(d == 250, "first backoff: half fixed (250 ms of 500) with no jitter");
    ok(cms_retry_delay(&p, &e, 1, 0, 0.999) == 499, "first backoff: under 500 ms at most jitter");
    ok(cms_retry_delay(&p, &e, 2, 0, 0.0) == 500, "the second backoff doubles");
    ok(cms_retry_delay(&p, &e, 3, 0, 0.0) == -1, "retries used up: no third retry");
    ok(cms_retry_delay(&p, &e, 1, 1, 0.0) == -1, "never after bytes reached the caller's sink");
    p.retries = 10;
    ok(cms_retry_delay(&p, &e, 10, 0, 0.999) <= 30000 &&
       cms_retry_delay(&p, &e, 10, 0, 0.0) == 15000, "the backoff is capped");
    for (i = 0; i < 100; i++) {
        d = cms_retry_delay(&p, &e, 3, 0, i / 100.0);
        in_range = in_range && d >= 1000 && d < 2000;
    }
    ok(in_range, "jitter stays within [backoff/2, backoff)");
    e.retry_after = 7;
    ok(cms_retry_delay(&p, &e, 1, 0, 0.5) == 7000, "Retry-After is honoured as given");
    e.retry_after = 3600;
    ok(cms_retry_delay(&p, &e, 1, 0, 0.5) == 60000, "a long Retry-After is capped");
    e.retryable = 0;
    ok(cms_retry_delay(&p, &e, 1, 0, 0.5) == -1, "not retryable: never again");
}

static void test_rate(void)
{
    cms_rate r = {4, 0};
    cms_rate none = {0, 0};

    ok(cms_rate_wait(&r, 100.0) == 0, "the first request starts at once");
    cms_rate_take(&r, 100.0);
    ok(cms_rate_wait(&r, 100.0) > 0.249 && cms_rate_wait(&r, 100.0) < 0.251,
       "4 per second: the next one 250 ms later");
    cms_rate_take(&r, 100.25);
    cms_rate_take(&r, 100.25); /* a caller that did not wait is still counted */
    ok(cms_rate_wait(&r, 100.25) > 0.499, "requests taken early push the next ones back");
    ok(cms_rate_wait(&r, 200.0) == 0, "after a pause: at once again");
    cms_rate_take(&none, 1.0);
    ok(cms_rate_wait(&none, 1.0) == 0, "no max_rate: never waits");
}

/* The VmFlags of the mapping that starts at `start`, from /proc/self/smaps
   ("" when not found: no /proc). */
static void vm_flags(const void *start, char *out, size_t cap)
{
    char line[512], want[32];
    FILE *f = fopen("/proc/self/smaps", "r");
    int in = 0;

    *out = '\0';
    if (!f)
        return;
    snprintf(want, sizeof want, "%lx-", (unsigned long)(uintptr_t)start);
    while (fgets(line, sizeof line, f)) {
        if (strchr(line, '-') && strncmp(line, want, strlen(want)) == 0)
            in = 1;
        else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(out, cap, "%s", line + 8);
            break;
        }
    }
    fclose(f);
}

static int has_flag(const char *flags, const char *flag)
{
    char copy[512], *word, *save = NULL;

    snprintf(copy, sizeof copy, "%s", flags);
    for (word = strtok_r(copy, " \n", &save); word; word = strtok_r(NULL, " \n", &save))
        if (strcmp(word, flag) == 0)
            return 1;
    return 0;
}

typedef struct wipe_seen {
    int called;
    size_t len;
    size_t nonzero;
} wipe_seen;

static void see_wipe(const unsigned char *map, size_t len, void *ud)
{
    wipe_seen *w = ud;
    size_t i;

    w->called = 1;
    w->len = len;
    for (i = 0; i < len; i++)
        w->nonzero += map[i] != 0;
}

static void test_secret(void)
{
    static const char sk[] = "mock-sk-0123456789abcdef";
    cms_secret s;
    wipe_seen seen = {0, 0, 0};
    char flags[512];
    char *big;

    cms_secret_init(&s);
    cms_secret_free(&s); /* empty: nothing to do */
    ok(s.data == NULL, "an empty secret frees to nothing");
    ok(cms_secret_set(&s, sk, strlen(sk)) == 0, "a secret is stored");
    ok(s.len == strlen(sk) && memcmp(s.data, sk, s.len) == 0 && s.data[s.len] == '\0',
       "its bytes, then a NUL");
    ok(((uintptr_t)s.data % (uintptr_t)sysconf(_SC_PAGESIZE)) == 0 &&
       s.map_len % (size_t)sysconf(_SC_PAGESIZE) == 0, "in whole pages of its own");
    vm_flags(s.data, flags, sizeof flags);
    if (!*flags) {
        printf("# no /proc/self/smaps: MADV_DONTDUMP and mlock not checked\n");
    } else {
#ifdef MADV_DONTDUMP
        ok((s.flags & CMS_SECRET_NODUMP) && has_flag(flags, "dd"),
           "the kernel keeps it out of core dumps (VmFlags dd)");
#endif
#ifdef __SANITIZE_ADDRESS__
        printf("# AddressSanitizer makes mlock a no-op: locking not checked\n");
#else
        ok(!(s.flags & CMS_SECRET_LOCKED) || has_flag(flags, "lo"),
           "locked in memory when mlock succeeded (VmFlags lo)");
        if (!(s.flags & CMS_SECRET_LOCKED))
            printf("# mlock refused (RLIMIT_MEMLOCK): not locked\n");
#endif
    }
    cms_secret_free_observed(&s, see_wipe, &seen);
    ok(seen.called && seen.len >= sizeof sk && seen.nonzero == 0,
       "free wipes every byte of the mapping before unmapping it");
    ok(s.data == NULL && s.len == 0 && s.map_len == 0, "and leaves the secret empty");

    /* replacing a secret frees the old mapping first; several pages work too */
    big = malloc(10000);
    memset(big, 'k', 10000);
    ok(cms_secret_set(&s, "short", 5) == 0 && cms_secret_set(&s, big, 10000) == 0 &&
       s.len == 10000 && s.map_len > 10000 && s.data[9999] == 'k' && s.data[10000] == 0,
       "a secret is replaced, over several pages");
    memset(&seen, 0, sizeof seen);
    cms_secret_free_observed(&s, see_wipe, &seen);
    ok(seen.called && seen.nonzero == 0, "a multi-page secret is wiped whole");
    free(big);
    ok(cms_secret_set(&s, "", 0) == 0 && s.len == 0 && s.data && s.data[0] == 0,
       "an empty value is a valid (empty) C string");
    cms_secret_free(&s);
}

/* What cms_trace_event wrote for each of `data`, read back from a temporary file. */
static void trace_of(const char *const *data, size_t n, curl_infotype type, char *out,
                     size_t cap)
{
    FILE *f = tmpfile();
    size_t i, got;

    *out = '\0';
    if (!f)
        return;
    for (i = 0; i < n; i++)
        cms_trace_event(f, 0x1a2b, type, data[i], strlen(data[i]));
    rewind(f);
    got = fread(out, 1, cap - 1, f);
    out[got] = '\0';
    fclose(f);
}

static void test_trace(void)
{
    static const char sig[] =
        "151388d296c25c51b38d6800e04a09201cd481eaf10e247de50d9cb16a08da8a";
    const char *request[] = {
        "POST /rest/cmsapp/v1/ping HTTP/1.1\r\nHost: 10.22.26.181:28080\r\n"
        "Authorization: auth-v2/globalaktest/2024-10-31T14:06:52Z/content-length;"
        "content-type;host/151388d296c25c51b38d6800e04a09201cd481eaf10e247de50d9cb16a08da8a\r\n"
        "Cookie: JSESSIONID=abc123\r\n\r\n"};
    const char *answer[] = {"HTTP/1.1 200 OK\r\n", "Set-Cookie: SESSION=s3cr3t; Path=/\r\n",
                            "X-Subject-Token: MIIT0ken\r\n", "X-Note: a\033[2Jb\r\n",
                            "Content-Length: 5\r\n", "\r\n"};
    const char *body[] = {"{\"callID\":\"1748587841-77268\"}"};
    const char *notes[] = {"Uses proxy env variable https_proxy == 'http://bob:pr0xy-pw@proxy:3128'\n",
                           "Connected to 127.0.0.1 (127.0.0.1) port 28080 (#0)\n"};
    const char *odd_answer[] = {
        "X-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-Token: S1\r\n",
        "Set-Cookie \t: sid=S2\r\n", "X-Auth-Token: part1\r\n", " S3\r\n", "\tS4\r\n",
        "garbage S5\r\n", "X-Authorization-Info: S6\r\n", "HTTP/1.1 200 OK: fine\r\n",
        "X-Note: shown\r\nX Token: S7\r\n"};
    const char *connect[] = {"CONNECT 10.0.0.1:443 HTTP/1.1\r\n"
                             "Proxy-Authorization: Basic Ym9iOnB3\r\n\r\n"};
    const char *proxy_notes[] = {
        "Uses proxy env variable https_proxy == 'bob:S8@proxy:3128'\n",
        "Uses proxy env variable https_proxy == 'http://u:S9xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "xxxxxxxxxx@127.0.0.1:1'\n",
        "Unsupported proxy scheme for 'socks9://u:S10xxxxxxxxxxxxxxxxxxxx\n",
        "Uses proxy env variable http_proxy == 'http://proxy:3128'\n"};
    const char *answer_body = "  {\"resultCode\":\"1\",\"resultDesc\":\"Record List is empty\"}\n";
    const char *sdk = "SDK-HMAC-SHA256 Access=AK1, SignedHeaders=host;x-sdk-date, "
                      "Signature=abcdef0123";
    char out[4096], red[256];
    cms_response r;
    cms_error e;
    FILE *f;
    size_t got, n;

    trace_of(request, 1, CURLINFO_HEADER_OUT, out, sizeof out);
    ok(strstr(out, "cmsrec[1a2b] > POST /rest/cmsapp/v1/ping HTTP/1.1\n") &&
       strstr(out, "cmsrec[1a2b] > Host: 10.22.26.181:28080\n"),
       "trace: the request line and headers, one a line");
    ok(strstr(out, "> Authorization: auth-v2/globalaktest/2024-10-31T14:06:52Z/"
                   "content-length;content-type;host/<redacted>\n") && !strstr(out, sig),
       "trace: Authorization keeps the scheme and the AK, not the signature");
    ok(strstr(out, "> Cookie: <redacted>") && !strstr(out, "abc123"), "trace: cookies redacted");
    trace_of(answer, 6, CURLINFO_HEADER_IN, out, sizeof out);
    ok(strstr(out, "< HTTP/1.1 200 OK\n") && strstr(out, "< Content-Length: 5\n"),
       "trace: the status line and the response headers");
    ok(!strstr(out, "s3cr3t") && !strstr(out, "MIIT0ken") &&
       strstr(out, "< X-Subject-Token: <redacted>"),
       "trace: tokens and session cookies redacted");
    ok(!strchr(out, '\033') && strstr(out, "< X-Note: a?[2Jb\n"), "trace: server text made printable");
    trace_of(body, 1, CURLINFO_DATA_OUT, out, sizeof out);
    ok_str(out, "cmsrec[1a2b] > body (29 bytes): {\"callID\":\"1748587841-77268\"}\n",
           "trace: the request body");
    trace_of(notes, 2, CURLINFO_TEXT, out, sizeof out);
    ok_str(out, "cmsrec[1a2b] * Uses proxy env variable https_proxy == 'http://<redacted>@proxy:3128'\n"
           "cmsrec[1a2b] * Connected to 127.0.0.1 (127.0.0.1) port 28080 (#0)\n",
           "trace: libcurl's notes, a proxy URL's credentials redacted");
    {
        /* found by fuzz/fuzz_trace: a note was cut to its shown length before
           the credentials were redacted, so a URL whose '@' came after the cut
           showed the start of its password */
        char note[400];
        const char *cut[] = {note};
        snprintf(note, sizeof note, "Uses proxy env variable https_proxy == "
                 "'http://%0180d:s3cretpassw0rd-longer-than-the-line@proxy:3128'\n", 7);
        trace_of(cut, 1, CURLINFO_TEXT, out, sizeof out);
        ok(*out && !strstr(out, "s3cret"),
           "trace: a URL cut by the line length shows no part of its password");
        snprintf(note, sizeof note, "%0300d http://bob:pr0xy-pw@proxy:3128 and more\n", 7);
        trace_of(cut, 1, CURLINFO_TEXT, out, sizeof out);
        ok(strlen(out) < 260 && !strstr(out, "pr0xy-pw") && !strstr(out, "http://"),
           "trace: a URL past the line length is not shown at all");
        snprintf(note, sizeof note, "Uses proxy 'http://bob:pr0xy-pw\xFF@p'\n");
        trace_of(cut, 1, CURLINFO_TEXT, out, sizeof out);
        ok(*out && !strstr(out, "pr0xy-pw"), "trace: a password before a byte not UTF-8 is redacted");
    }
    trace_of(body, 1, CURLINFO_DATA_IN, out, sizeof out);
    ok_str(out, "", "trace: answer bodies never as they come");
    trace_of(body, 1, CURLINFO_SSL_DATA_IN, out, sizeof out);
    ok_str(out, "", "trace: TLS records never");

#define REDACT(text, cut, cap) (n = cms_redact_userinfo(text, strlen(text), cut, red, cap))
    trace_of(odd_answer, 9, CURLINFO_HEADER_IN, out, sizeof out);
    ok(!strstr(out, "S1") && !strstr(out, "S2") && !strstr(out, "S3") && !strstr(out, "S4") &&
           !strstr(out, "S5") && !strstr(out, "S6") && !strstr(out, "S7"),
       "trace: no credential header value, whatever its name's length or blanks");
    ok(strstr(out, "< X-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-Token: "
                   "<redacted>\n") && strstr(out, "< Set-Cookie: <redacted>\n") &&
           strstr(out, "< X-Auth-Token: <redacted>\n") &&
           strstr(out, "< <redacted> (a folded header line)\n") &&
           strstr(out, "< <redacted> (not a header line)\n") &&
           strstr(out, "< X-Authorization-Info: <redacted>\n") &&
           strstr(out, "< HTTP/1.1 200 OK: fine\n") && strstr(out, "< X-Note: shown\n"),
       "trace: long names, a blank before the colon, folded and odd lines");
    trace_of(connect, 1, CURLINFO_HEADER_OUT, out, sizeof out);
    ok_str(out, "cmsrec[1a2b] > CONNECT 10.0.0.1:443 HTTP/1.1\n"
                "cmsrec[1a2b] > Proxy-Authorization: Basic <redacted>\n",
           "trace: a CONNECT request line as it is");
    trace_of(proxy_notes, 4, CURLINFO_TEXT, out, sizeof out);
    ok(!strstr(out, "S8") && !strstr(out, "S9") && !strstr(out, "S10") &&
           strstr(out, "* Uses proxy env variable https_proxy == '<redacted>@proxy:3128'\n") &&
           strstr(out, "* Unsupported proxy scheme for 'socks9://<redacted>\n") &&
           strstr(out, "* Uses proxy env variable http_proxy == 'http://proxy:3128'\n"),
       "trace: proxy credentials without a scheme, past the cut, in a cut note; none");

    REDACT("'http://u:p@ss@h' and 'v:p'q@h' x://u:p/q@h", 0, sizeof red);
    ok_str(red, "'http://<redacted>@h' and '<redacted>@h' x://<redacted>@h",
           "redact: a raw '@', quote or '/' in the password, schemeless forms");
    ok(n == strlen(red), "redact: the length written");
    REDACT("see http://u:secret@h", 0, 15);
    ok_str(red, "see http://<re", "redact: a small buffer cuts after the redaction");
    REDACT("'http://proxy:3128' a@", 1, sizeof red);
    ok_str(red, "'http://proxy:3128' <redacted>@", "redact: a URL without userinfo kept");
    REDACT("for 'socks9://u:secr", 0, sizeof red);
    ok_str(red, "for 'socks9://u:secr", "redact: uncut text keeps a URL without '@'");
    /* found by fuzz/fuzz_trace: a blank ended the userinfo, so a password
       with a space or tab in a quoted URL showed up to it (libcurl quotes
       an unusable proxy URL in its error, and that becomes err.message) */
    REDACT("syntax in 'http://user:my secret@proxy:3128' x@", 0, sizeof red);
    ok_str(red, "syntax in 'http://<redacted>@proxy:3128' <redacted>@",
           "redact: a quoted URL's password with a space");
    REDACT("== 'user:a\tb c@proxy:3128'", 0, sizeof red);
    ok_str(red, "== '<redacted>@proxy:3128'", "redact: a quoted schemeless one with blanks");
    REDACT("in \"http://u:p q", 1, sizeof red);
    ok_str(red, "in \"http://<redacted>", "redact: a cut quoted one with a space");
#undef REDACT

    cms_trace_redact_auth(sdk, strlen(sdk), red, sizeof red);
    ok_str(red, "SDK-HMAC-SHA256 Access=AK1, SignedHeaders=host;x-sdk-date, Signature=<redacted>",
           "trace: SDK-HMAC-SHA256 keeps all but the signature");
    cms_trace_redact_auth("Bearer eyJtoken", 15, red, sizeof red);
    ok_str(red, "Bearer <redacted>", "trace: another scheme keeps its first word");
    cms_trace_redact_auth("opaque-token", 12, red, sizeof red);
    ok_str(red, "<redacted>", "trace: a bare value is redacted whole");
    /* found by fuzz/fuzz_trace: a value longer than the buffer was cut
       inside a UTF-8 character (a header line is 240 bytes) */
    cms_trace_redact_auth("auth-v2/\xC3\xA9\xC3\xA9\xC3\xA9/t/h/sig", 22, red, 14);
    ok_str(red, "auth-v2/\xC3\xA9\xC3\xA9", "trace: a value cut to its buffer ends on a whole character");

    cms_response_init(&r);
    r.status = 200;
    r.sunk = 1;
    r.format = CMS_FMT_WAV;
    r.bytes = 160044;
    cms_error_clear(&e);
    f = tmpfile();
    if (f) {
        cms_trace_outcome(f, 0x1a2b, &r, 0, &e);
        r.sunk = 0;
        cms_buf_append(&r.body, answer_body, strlen(answer_body));
        cms_trace_outcome(f, 0x1a2b, &r, 0, &e);
        cms_error_set(&e, CMS_E_NETWORK, "the request failed: Could not resolve proxy: "
                      "'u:S11@nowhere' (http://v:S12@nowhere)");
        cms_trace_outcome(f, 0x1a2b, &r, -1, &e);
        rewind(f);
        got = fread(out, 1, sizeof out - 1, f);
        out[got] = '\0';
        fclose(f);
    }
    ok(strstr(out, "< body: a recording (wav), 160044 bytes, not shown\n") != NULL,
       "trace: a recording only by its format and size");
    ok(strstr(out, "< body (57 bytes): {\"resultCode\":\"1\",\"resultDesc\":\"Record List is empty\"}\n")
       != NULL, "trace: an answer as a one-line excerpt");
    ok(!strstr(out, "S11") && !strstr(out, "S12") &&
           strstr(out, "* failed (network error): the request failed: Could not resolve proxy: "
                       "'<redacted>@nowhere' (http://<redacted>@nowhere)\n"),
       "trace: the failed line with URL credentials redacted");
    cms_response_free(&r);
}

static void test_tls_alert(void)
{
    ok(cms_tls_alert(CURLE_RECV_ERROR, "OpenSSL SSL_read: OpenSSL/3.0.19: error:0A00045C:SSL "
                     "routines::tlsv13 alert certificate required, errno 0"),
       "a TLS alert on read is a TLS failure (OpenSSL 3)");
    ok(cms_tls_alert(CURLE_RECV_ERROR, "OpenSSL SSL_read: error:14094418:SSL "
                     "routines:ssl3_read_bytes:tlsv1 alert unknown ca, errno 0"),
       "a TLS alert on read is a TLS failure (OpenSSL 1.1)");
    ok(!cms_tls_alert(CURLE_RECV_ERROR, "OpenSSL SSL_read: Connection reset by peer, errno 104"),
       "a reset is not");
    ok(!cms_tls_alert(CURLE_COULDNT_CONNECT, "SSL routines:: alert "), "nor another code");
    ok(!cms_tls_alert(CURLE_RECV_ERROR, NULL), "nor no message");
}

/* ===== gateways: SDK-HMAC-SHA256 (V4), extra headers, resolve, the bearer token ===== */

static int sign_apig_vector(const cms_kv *h, size_t nh, const char *path, const char *ts,
                            cms_signature *sig, cms_error *err)
{
    cms_sign_input in;

    memset(&in, 0, sizeof in);
    in.ak = "globalaktest";
    in.sk = (const unsigned char *)"example-sk-0123456789";
    in.sk_len = strlen("example-sk-0123456789");
    in.method = "post";
    in.path = path;
    in.headers = h;
    in.nheaders = nh;
    in.body = vec_body;
    in.body_len = strlen(vec_body);
    in.timestamp = ts;
    cms_signature_init(sig);
    cms_error_clear(err);
    return cms_sign_apig(&in, sig, err);
}

static void test_apig_vector(void)
{
    cms_kv v4[] = {KV("Host", "10.22.26.181:28080"),
                   KV("Content-Type", "application/json;charset=UTF-8")};
    cms_kv extra[] = {KV("host", "h"), KV("x-a", " 1 "), KV("x-a-b", "2"), KV("X-Sdk-Date", "x")};
    const char *stamps[] = {"20241031T140652Z", "2024-10-31T14:06:52Z"};
    cms_signature sig;
    cms_error err;
    char date[CMS_SDK_DATE_SIZE];
    int i;

    for (i = 0; i < 2; i++) {
        ok(sign_apig_vector(v4, 2, "/rest/cmsapp/v1/ping", stamps[i], &sig, &err) == 0,
           "cms_sign_apig succeeds on V4");
        ok_str(sig.authorization.data,
               "SDK-HMAC-SHA256 Access=globalaktest, SignedHeaders=content-type;host;x-sdk-date, "
               "Signature=c34e6acee3d185e6c72e77d72331e863ad694280734904f68daaeb3046125adb",
               i ? "V4 authorization (timestamp in the auth-v2 form)" : "V4 authorization");
        ok_str(sig.canonical_request.data,
               "POST\n/rest/cmsapp/v1/ping/\n\ncontent-type:application/json;charset=UTF-8\n"
               "host:10.22.26.181:28080\nx-sdk-date:20241031T140652Z\n\n"
               "content-type;host;x-sdk-date\n"
               "9a02a6785649cc14afb95999a3ddbb7bed2370840b9bca6d403c0b8dbf1d40a9",
               "V4 canonical request (path ends in '/', empty query line, values as sent)");
        ok_str(sig.string_to_sign.data,
               "SDK-HMAC-SHA256\n20241031T140652Z\n"
               "5a2899caf872bbfa54f09ca2b35f8f6c60fd803621d00b317ae68e46b5db1bc6",
               "V4 string to sign");
        ok(sig.signing_key[0] == '\0', "V4: no derived signing key");
        cms_signature_free(&sig);
    }
    ok(sign_apig_vector(extra, 3, "/rest/a%41b/c!d", "20241031T140652Z", &sig, &err) == 0,
       "apig signs extra headers");
    ok(strstr(sig.canonical_request.data, "\n/rest/aAb/c%21d/\n") != NULL,
       "apig path: %XX decoded, each segment encoded again");
    ok(strstr(sig.canonical_request.data, "host:h\nx-a:1\nx-a-b:2\nx-sdk-date:") != NULL,
       "apig headers: sorted by name (x-a before x-a-b), values trimmed");
    ok_str(sig.signed_headers.data, "host;x-a;x-a-b;x-sdk-date", "apig signed headers");
    cms_signature_free(&sig);
    ok(sign_apig_vector(extra, 4, "/p", "20241031T140652Z", &sig, &err) != 0 &&
       strstr(err.message, "x-sdk-date") != NULL, "apig: x-sdk-date comes from the timestamp");
    cms_signature_free(&sig);
    ok(sign_apig_vector(extra + 1, 1, "/p", "20241031T140652Z", &sig, &err) != 0 &&
       strstr(err.message, "host") != NULL, "apig: host must be signed");
    cms_signature_free(&sig);
    ok(sign_apig_vector(v4, 2, "/p", "20241331T140652Z", &sig, &err) != 0 &&
       strcmp(err.field, "timestamp") == 0, "apig: a month 13 is refused");
    cms_signature_free(&sig);
    ok(cms_sdk_date("2024-02-29T23:59:59Z", date) == 0 && strcmp(date, "20240229T235959Z") == 0,
       "X-Sdk-Date from the auth-v2 form");
    ok(cms_sdk_date("2024-10-31 14:06:52", date) != 0 && cms_sdk_date("", date) != 0 &&
       cms_sdk_date("20241031T140652", date) != 0, "X-Sdk-Date: other forms refused");
    ok(cms_sdk_date_now(date) == 0 && strlen(date) == 16 && date[8] == 'T' && date[15] == 'Z',
       "X-Sdk-Date now");
}

static void test_gateway_headers(void)
{
    cms_headers h;

    ok(cms_header_problem("X-TenantSpaceID", 15, "abc def", 7) == NULL, "a plain header is fine");
    ok(cms_header_problem("X Tenant", 8, "a", 1) != NULL, "a space in a name is refused");
    ok(cms_header_problem("", 0, "a", 1) != NULL, "an empty name is refused");
    ok(cms_header_problem("hOsT", 4, "a", 1) != NULL, "Host, in any case, is refused");
    ok(cms_header_problem("X-SDK-DATE", 10, "a", 1) != NULL, "X-Sdk-Date is refused");
    ok(cms_header_problem("Content-Length", 14, "1", 1) != NULL, "Content-Length is refused");
    ok(cms_header_problem("X-A", 3, "a\r\nX-B: b", 9) != NULL, "CR LF in a value is refused");
    ok(cms_header_problem("X-A", 3, "a\tb", 3) != NULL, "TAB in a value is refused");
    ok(cms_header_problem("X-A", 3, "caf\xc3\xa9", 5) == NULL, "UTF-8 in a value is fine");
    ok(cms_header_problem("X-Empty", 7, "", 0) == NULL, "an empty value is fine (sent empty)");
    ok(cms_header_problem("transfer-ENCODING", 17, "chunked", 7) != NULL &&
       cms_header_problem("TE", 2, "trailers", 8) != NULL &&
       cms_header_problem("Connection", 10, "close", 5) != NULL &&
       cms_header_problem("Upgrade", 7, "h2c", 3) != NULL &&
       cms_header_problem("Expect", 6, "", 0) != NULL &&
       cms_header_problem("Proxy-Authorization", 19, "Basic x", 7) != NULL,
       "hop-by-hop and framing headers are refused");
    ok(cms_header_problem("TE-X", 4, "1", 1) == NULL, "... by their exact names only");
    cms_headers_init(&h);
    ok(cms_headers_add(&h, "X-A", 3, "1", 1) == 0 && cms_headers_add(&h, "X-B", 3, "2", 1) == 0,
       "headers added");
    ok(cms_headers_find(&h, "x-b", 3) == 1 && cms_headers_find(&h, "x-c", 3) == -1,
       "headers found in any case");
    cms_headers_free(&h);
    ok(h.n == 0 && h.kv == NULL, "headers freed");
}

static void test_gateway_resolve(void)
{
    ok(cms_resolve_problem("cms.example.test:443:10.0.0.1") == NULL, "resolve: IPv4");
    ok(cms_resolve_problem("cms.example.test:28443:[::1],127.0.0.1") == NULL,
       "resolve: IPv6 in brackets, two addresses");
    ok(cms_resolve_problem("cms.example.test:443") != NULL, "resolve: no address");
    ok(cms_resolve_problem(":443:10.0.0.1") != NULL, "resolve: no name");
    ok(cms_resolve_problem("cms:0:10.0.0.1") != NULL, "resolve: port 0");
    ok(cms_resolve_problem("cms:65536:10.0.0.1") != NULL, "resolve: port 65536");
    ok(cms_resolve_problem("cms:x:10.0.0.1") != NULL, "resolve: port not a number");
    ok(cms_resolve_problem("cms:443:10.0.0.300") != NULL, "resolve: a bad IPv4");
    ok(cms_resolve_problem("cms:443:::1") != NULL, "resolve: IPv6 without brackets");
    ok(cms_resolve_problem("cms:443:10.0.0.1,") != NULL, "resolve: an empty address");
    ok(cms_resolve_problem("c ms:443:10.0.0.1") != NULL, "resolve: a space in the name");
}

static void test_gateway_token(void)
{
    cms_token t;
    char *url;
    unsigned gen;
    cms_error e;

    cms_token_init(&t);
    ok(!cms_token_usable(&t, 1.0), "no token: not usable");
    ok(cms_token_store(&t, "abc", 3, cms_token_expiry(5.0, 0)) == 0 && t.gen == 1,
       "token stored");
    ok(!cms_token_usable(&t, 5.0) && !cms_token_usable(&t, 1e9),
       "a token without a lifetime serves only the request that fetched it");
    gen = t.gen;
    cms_token_wipe(&t);
    ok(!t.value && t.len == 0 && t.gen == gen && !cms_token_usable(&t, 1.0),
       "wiped: gone, its generation kept");
    cms_token_wipe(&t);
    ok(cms_token_expiry(100, 3600) == 100 + 3600 - 60, "3600 s: used until 60 s before");
    ok(cms_token_expiry(100, 30) == 100 + 27, "30 s: used until 10% before");
    ok(cms_token_expiry(100, 0) == 100 && cms_token_expiry(100, -5) == 100 &&
       cms_token_expiry(100, 0.0 / 0.0) == 100, "no lifetime (0, negative, NaN): over at once");
    ok(cms_token_store(&t, "tok", 3, 50) == 0 && cms_token_usable(&t, 49.9) &&
       !cms_token_usable(&t, 50), "expired at its time");
    cms_token_wipe(&t);
    ok(cms_token_value_ok("eyJ.abc-_~", 10) && !cms_token_value_ok("a b", 3) &&
       !cms_token_value_ok("", 0) && !cms_token_value_ok("a\nb", 3), "token characters");
    url = cms_token_url_default("https://10.22.26.181:28443/cms");
    ok_str(url, "https://10.22.26.181:443/apigovernance/api/oauth/tokenByAkSk",
           "default token URL: the base URL's host on 443");
    free(url);
    url = cms_token_url_default("https://[::1]:28443");
    ok_str(url, "https://[::1]:443/apigovernance/api/oauth/tokenByAkSk", "default token URL, IPv6");
    free(url);
    cms_error_clear(&e);
    cms_error_set(&e, CMS_E_AUTH, "token secret-token-123 refused, again secret-token-123.");
    cms_strlcpy(e.result_desc, "secret-token-123", sizeof e.result_desc);
    cms_error_scrub(&e, "secret-token-123", 16);
    ok_str(e.message, "token *** refused, again ***.", "a secret scrubbed from a message");
    ok_str(e.result_desc, "***", "and from result_desc");
    cms_error_scrub(&e, "short", 5);
    ok(strstr(e.message, "token") != NULL, "short strings are left alone");
}

/* A secret quoted by a server, then cut: scrubbed whole first, the cut tail as a last guard. */
static void test_scrub(void)
{
    static const char tok[] = "tok-0123456789abcdefghij";
    char body[] = "{\"d\":\"tok-0123456789abcdefghij x tok-0123456789abcdefghij\"}tail";
    char nul[] = "a\0secret\0bytes\0z";
    char big[5001];
    cms_job j;
    cms_error e;
    size_t n;

    n = cms_text_scrub(body, sizeof body - 1, tok, sizeof tok - 1);
    ok(n == strlen(body) && strcmp(body, "{\"d\":\"*** x ***\"}tail") == 0,
       "text scrub: every occurrence, the rest moved up and terminated");
    n = cms_text_scrub(nul, sizeof nul - 1, "\0secret\0bytes", 13);
    ok(n == 6 && memcmp(nul, "a***\0z", 6) == 0, "text scrub: any bytes, NUL included");
    ok(cms_text_scrub(body, strlen(body), "tok-0123", 7) == strlen(body),
       "text scrub: under 8 bytes, nothing");

    cms_error_clear(&e);
    cms_error_set(&e, CMS_E_AUTH, "refused: token tok-0123456789ab");
    cms_strlcpy(e.result_desc, "token tok-0123456789abcdefghi", sizeof e.result_desc);
    cms_strlcpy(e.result_code, "tok-0123", sizeof e.result_code);
    cms_error_scrub(&e, tok, sizeof tok - 1);
    ok_str(e.message, "refused: token ***", "a cut-off start of the token ending the message");
    ok_str(e.result_desc, "token ***", "... and result_desc (all but its last byte)");
    ok_str(e.result_code, "***", "... and result_code (its first 8 bytes)");
    cms_error_clear(&e);
    cms_error_set(&e, CMS_E_AUTH, "token tok-0123456 and more");
    cms_error_scrub(&e, tok, sizeof tok - 1);
    ok_str(e.message, "token tok-0123456 and more", "a start inside the text is no cut quote");
    cms_error_set(&e, CMS_E_AUTH, "ends with tok-012");
    cms_error_scrub(&e, tok, sizeof tok - 1);
    ok_str(e.message, "ends with tok-012", "under 8 bytes: left");

    memset(big, 'T', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cms_error_clear(&e);
    cms_error_set(&e, CMS_E_AUTH, "quoted: %s", big);
    cms_error_scrub(&e, big, sizeof big - 1);
    ok_str(e.message, "quoted: ***", "a secret longer than CMS_TOKEN_MAX, cut in the message");

    cms_job_init(&j);
    cms_buf_append_str(&j.resp.body, "{\"resultDesc\":\"token tok-0123456789abcdefghij, sk "
                       "sk-secret-0000\"}");
    j.hide[0] = tok;
    j.hide_len[0] = sizeof tok - 1;
    j.hide[1] = "sk-secret-0000";
    j.hide_len[1] = 14;
    cms_job_scrub_answer(&j);
    ok_str(j.resp.body.data, "{\"resultDesc\":\"token ***, sk ***\"}",
           "an error answer loses the token and the SK before it is read");
    cms_job_free(&j);
}

/* apig: the query in the gateway SDKs' order (key, then value, as given), encoded. */
static void test_apig_query(void)
{
    cms_kv h[] = {KV("host", "h")};
    cms_kv q[] = {KV("a-b", "2"), KV("b", "x y"), KV("a", "1"), KV("a", "0"), KV("a~", "/"),
                  KV("\xc3\xa9", "")};
    cms_sign_input in;
    cms_signature sig;
    cms_error err;

    memset(&in, 0, sizeof in);
    in.ak = "a";
    in.sk = (const unsigned char *)"s";
    in.sk_len = 1;
    in.method = "GET";
    in.path = "/p";
    in.headers = h;
    in.nheaders = 1;
    in.query = q;
    in.nquery = sizeof q / sizeof q[0];
    in.body = "";
    in.timestamp = "20241031T140652Z";
    cms_signature_init(&sig);
    cms_error_clear(&err);
    ok(cms_sign_apig(&in, &sig, &err) == 0, "apig signs a query");
    ok(strstr(sig.canonical_request.data, "\n/p/\na=0&a=1&a-b=2&a~=%2F&b=x%20y&%C3%A9=\n") != NULL,
       "apig query: by key then value, before encoding (a=1 before a-b=2)");
    if (!strstr(sig.canonical_request.data, "a=0&a=1&a-b=2"))
        printf("#   got: %s\n", sig.canonical_request.data);
    cms_signature_free(&sig);
}

static void test_token_refused(void)
{
    cms_response r;
    cms_error e;

    cms_response_init(&r);
    r.status = 401;
    cms_buf_append_str(&r.body, "not json");
    cms_error_clear(&e);
    cms_token_refused(&r, "https://gw/t", NULL, NULL, &e);
    ok(e.kind == CMS_E_AUTH && e.status == 401 && strstr(e.message, "https://gw/t") != NULL,
       "token endpoint 401: kind auth, naming the endpoint");
    r.status = 503;
    r.retry_after = 3;
    cms_error_clear(&e);
    cms_token_refused(&r, "https://gw/t", NULL, NULL, &e);
    ok(e.kind == CMS_E_HTTP && e.retryable && e.retry_after == 3, "token endpoint 503: http, retryable");
    r.status = 200;
    cms_error_clear(&e);
    cms_token_refused(&r, "https://gw/t", NULL, NULL, &e);
    ok(e.kind == CMS_E_AUTH && strstr(e.message, "without an AccessToken") != NULL,
       "token endpoint 200 without a token: kind auth");
    cms_response_free(&r);
}

int main(void)
{
    test_vectors();
    test_sign_rejects();
    test_normalize();
    test_request();
    test_suggest();
    test_classify();
    test_curl_kinds();
    test_names();
    test_mem_sink();
    test_url();
    test_excerpt();
    test_empty_answer();
    test_text();
    test_retry_policy();
    test_rate();
    test_secret();
    test_trace();
    test_tls_alert();
    test_apig_vector();
    test_gateway_headers();
    test_gateway_resolve();
    test_gateway_token();
    test_token_refused();
    test_scrub();
    test_apig_query();
    printf("1..%d\n", count);
    return failed ? 1 : 0;
}
