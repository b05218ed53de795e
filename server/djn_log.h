/* djn_log.h: djinn-server's log lines, as text for a terminal or one JSON object per line
 * for a log pipeline (--log-format json), filtered by level (--log-level).
 *
 * A line is a message and typed fields (session, op, tenant, ...). Text:
 *     djinn-server: session opened (session=3f2a... tenant=alice)
 * JSON (keys in this order; every string escaped, bytes that are not UTF-8 replaced):
 *     {"ts":"2026-11-29T22:10:52.123Z","level":"info","msg":"session opened",
 *      "session":"3f2a...","tenant":"alice"}
 * Each line reaches stderr in one write(2), so lines of different threads never mix.
 * Levels: error (the server cannot go on, or lost something), warn (a client or the host
 * did something wrong that the server survived), info (start, drain, stop: the default),
 * debug (every session and error reply; --verbose). The fatal-signal line of djn_crash.c
 * stays plain text: a signal handler may not format JSON with stdio. */
#ifndef DJN_LOG_H
#define DJN_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DJN_LOG_ERROR = 0,
    DJN_LOG_WARN = 1,
    DJN_LOG_INFO = 2,
    DJN_LOG_DEBUG = 3
} djn_log_level_t;

typedef enum { DJN_LOG_TEXT = 0, DJN_LOG_JSON = 1 } djn_log_format_t;

/* "error", "warn", "info", "debug" / "text", "json"; false for anything else. */
bool djn_log_parse_level(const char *s, djn_log_level_t *out);
bool djn_log_parse_format(const char *s, djn_log_format_t *out);
void djn_log_configure(djn_log_format_t format, djn_log_level_t level); /* before threads */
bool djn_log_on(djn_log_level_t level);

typedef struct djn_log_kv {
    const char *key;
    const char *str; /* kind 's' */
    uint64_t num;    /* kinds 'u' (decimal number), 'x' (16 hex digits, as a string) */
    char kind;
} djn_log_kv_t;

#define DJN_KV_STR(k, v) ((djn_log_kv_t){(k), (v), 0, 's'})
#define DJN_KV_U64(k, v) ((djn_log_kv_t){(k), NULL, (uint64_t)(v), 'u'})
#define DJN_KV_HEX(k, v) ((djn_log_kv_t){(k), NULL, (uint64_t)(v), 'x'})

/* One line; fields with a NULL string are left out. */
void djn_log_kv(djn_log_level_t level, const char *msg, const djn_log_kv_t *kv, size_t n);

/* djn_log(DJN_LOG_INFO, "session opened", DJN_KV_HEX("session", sid)); the fields are
 * not evaluated when the level is off. */
#define djn_log(level, msg, ...)                                                                   \
    do {                                                                                           \
        if (djn_log_on(level)) {                                                                   \
            const djn_log_kv_t kv_[] = {{NULL, NULL, 0, 0}, ##__VA_ARGS__};                        \
            djn_log_kv((level), (msg), kv_ + 1, sizeof kv_ / sizeof kv_[0] - 1);                   \
        }                                                                                          \
    } while (0)

/* The line as it would be written, for tests; returns its length (without the NUL). A
 * buffer under 128 bytes gets an empty line. */
size_t djn_log_format_line(char *buf, size_t cap, djn_log_format_t format, djn_log_level_t level,
                           const char *msg, const djn_log_kv_t *kv, size_t n, int64_t unix_ms);

#ifdef __cplusplus
}
#endif
#endif
