/* test_log.c: djinn-server's log lines (server/djn_log.c).
 *
 * Covers: the exact text and JSON forms of a line with string, number and hex fields at a
 * fixed time; fields with a NULL string left out; JSON escaping of quotes, backslashes
 * and control characters; bytes that are not UTF-8 (a stray continuation byte, an
 * overlong form, a surrogate, a truncated sequence) replaced by U+FFFD while well-formed
 * multi-byte characters pass; text lines never span two lines; a line longer than the
 * buffer is cut and still ends with a closed JSON object and a newline, for every buffer
 * size; level and format parsing and the level filter. */
#include "djn_test.h"

#include "djn_log.h"

#define T0 1796076652123LL /* 2026-11-30T22:10:52.123Z */

static void test_text_and_json_forms(void) {
    char b[512];
    djn_log_kv_t kv[] = {DJN_KV_HEX("session", 0x3f2aull), DJN_KV_STR("tenant", "alice"),
                         DJN_KV_STR("op", NULL), DJN_KV_U64("queued", 7)};
    djn_log_format_line(b, sizeof b, DJN_LOG_TEXT, DJN_LOG_INFO, "session opened", kv, 4, T0);
    CHECK_STR(b, "djinn-server: session opened (session=0000000000003f2a tenant=alice queued=7)\n");
    djn_log_format_line(b, sizeof b, DJN_LOG_JSON, DJN_LOG_WARN, "session opened", kv, 4, T0);
    CHECK_STR(b, "{\"ts\":\"2026-11-30T22:10:52.123Z\",\"level\":\"warn\",\"msg\":\"session "
                 "opened\",\"session\":\"0000000000003f2a\",\"tenant\":\"alice\",\"queued\":7}\n");
    djn_log_format_line(b, sizeof b, DJN_LOG_TEXT, DJN_LOG_INFO, "stopped", NULL, 0, T0);
    CHECK_STR(b, "djinn-server: stopped\n");
}

static void test_json_escapes_hostile_strings(void) {
    char b[512];
    djn_log_kv_t kv[] = {DJN_KV_STR("client", "a\"b\\c\nd\x01\x7f")};
    djn_log_format_line(b, sizeof b, DJN_LOG_JSON, DJN_LOG_DEBUG, "m", kv, 1, 0);
    CHECK_HAS(b, "\"client\":\"a\\\"b\\\\c\\u000ad\\u0001\\u007f\"}");
    CHECK_HAS(b, "\"ts\":\"1970-01-01T00:00:00.000Z\"");
    /* not UTF-8: continuation byte alone, overlong '/', a surrogate, a cut sequence */
    djn_log_kv_t bad[] = {DJN_KV_STR("s", "x\x80y\xc0\xafz\xed\xa0\x80w\xe2\x82")};
    djn_log_format_line(b, sizeof b, DJN_LOG_JSON, DJN_LOG_INFO, "m", bad, 1, 0);
    CHECK_HAS(b, "\"s\":\"x\\ufffdy\\ufffd\\ufffdz\\ufffd\\ufffd\\ufffdw\\ufffd\\ufffd\"}");
    djn_log_kv_t good[] = {DJN_KV_STR("s", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80")};
    djn_log_format_line(b, sizeof b, DJN_LOG_JSON, DJN_LOG_INFO, "m", good, 1, 0);
    CHECK_HAS(b, "\"s\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}");
    djn_log_format_line(b, sizeof b, DJN_LOG_TEXT, DJN_LOG_INFO, "m", kv, 1, 0);
    CHECK_STR(b, "djinn-server: m (client=a\"b\\c?d?"
                 "?)\n");
    djn_log_format_line(b, sizeof b, DJN_LOG_TEXT, DJN_LOG_INFO, "m", bad, 1, 0);
    CHECK_STR(b, "djinn-server: m (s=x?y?"
                 "?z?"
                 "??w?"
                 "?)\n");
}

/* A JSON line's quotes are balanced outside escapes, and it ends with "}\n". */
static int s_json_closed(const char *b, size_t len) {
    int in = 0;
    for (size_t i = 0; i < len; i++) {
        if (in && b[i] == '\\') {
            i++;
            continue;
        }
        if (b[i] == '"')
            in = !in;
    }
    return !in && len >= 2 && b[len - 2] == '}' && b[len - 1] == '\n' && strlen(b) == len;
}

static void test_long_lines_are_cut_and_closed(void) {
    static char big[9000];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = i % 7 == 0 ? '"' : (char)('a' + i % 26);
    big[sizeof big - 1] = 0;
    djn_log_kv_t kv[] = {DJN_KV_STR("client", big), DJN_KV_U64("seq", 1), DJN_KV_STR("x", big)};
    static char b[5000];
    CHECK(djn_log_format_line(b, 127, DJN_LOG_JSON, DJN_LOG_INFO, "m", NULL, 0, T0) == 0 && !b[0]);
    for (size_t cap = 128; cap <= sizeof b; cap += cap < 200 ? 1 : 97) {
        size_t len = djn_log_format_line(b, cap, DJN_LOG_JSON, DJN_LOG_INFO, big, kv, 3, T0);
        CHECK(len < cap);
        if (!s_json_closed(b, len)) {
            printf("cap %zu: %.120s...\n", cap, b);
            CHECK(!"a cut JSON line is closed");
            break;
        }
        len = djn_log_format_line(b, cap, DJN_LOG_TEXT, DJN_LOG_INFO, big, kv, 3, T0);
        CHECK(len < cap && b[len - 1] == '\n' && !memchr(b, '\n', len - 1));
    }
}

static void test_levels_and_formats(void) {
    djn_log_level_t l;
    djn_log_format_t f;
    CHECK(djn_log_parse_level("debug", &l) && l == DJN_LOG_DEBUG);
    CHECK(djn_log_parse_level("warn", &l) && l == DJN_LOG_WARN);
    CHECK(!djn_log_parse_level("verbose", &l) && !djn_log_parse_level(NULL, &l));
    CHECK(djn_log_parse_format("json", &f) && f == DJN_LOG_JSON);
    CHECK(!djn_log_parse_format("JSON", &f));
    djn_log_configure(DJN_LOG_TEXT, DJN_LOG_WARN);
    CHECK(djn_log_on(DJN_LOG_ERROR) && djn_log_on(DJN_LOG_WARN));
    CHECK(!djn_log_on(DJN_LOG_INFO) && !djn_log_on(DJN_LOG_DEBUG));
    djn_log_configure(DJN_LOG_TEXT, DJN_LOG_INFO);
}

int main(void) {
    RUN(test_text_and_json_forms);
    RUN(test_json_escapes_hostile_strings);
    RUN(test_long_lines_are_cut_and_closed);
    RUN(test_levels_and_formats);
    return djn_test_report();
}
