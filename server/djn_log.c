/* djn_log.c: log lines as text or JSON (see djn_log.h).
 *
 * A line is built in a fixed buffer on the caller's stack and written with one write(2):
 * no allocation, no lock, no interleaving. A line longer than the buffer is cut (JSON:
 * the message or field being written is cut, and the object is still closed), so a
 * client's long string can neither grow the server's memory nor break a log pipeline's
 * parser. Strings come from clients (a HELLO's client name, op names): JSON escapes
 * quotes, backslashes and control characters and replaces every byte that is not part of
 * well-formed UTF-8 with U+FFFD. */
#define _GNU_SOURCE
#include "djn_log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S_LINE_MAX 4096

static djn_log_format_t s_format = DJN_LOG_TEXT;
static djn_log_level_t s_level = DJN_LOG_INFO;

static const char *const s_level_names[] = {"error", "warn", "info", "debug"};

bool djn_log_parse_level(const char *s, djn_log_level_t *out) {
    for (int i = 0; s && i < 4; i++)
        if (!strcmp(s, s_level_names[i])) {
            *out = (djn_log_level_t)i;
            return true;
        }
    return false;
}

bool djn_log_parse_format(const char *s, djn_log_format_t *out) {
    if (s && !strcmp(s, "text"))
        *out = DJN_LOG_TEXT;
    else if (s && !strcmp(s, "json"))
        *out = DJN_LOG_JSON;
    else
        return false;
    return true;
}

void djn_log_configure(djn_log_format_t format, djn_log_level_t level) {
    s_format = format;
    s_level = level;
}

bool djn_log_on(djn_log_level_t level) {
    return level <= s_level;
}

/* An output buffer that stops at its end, keeping room for the closing bytes. */
typedef struct {
    char *p;
    size_t len, cap; /* cap excludes the reserve */
} s_out_t;

static void s_raw(s_out_t *o, const char *s, size_t n) {
    if (n > o->cap - o->len)
        n = o->cap - o->len;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void s_str(s_out_t *o, const char *s) {
    s_raw(o, s, strlen(s));
}

/* The length of the well-formed UTF-8 sequence at s (RFC 3629), 0 if there is none. */
static size_t s_utf8_len(const unsigned char *s, size_t left) {
    unsigned char c = s[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (left < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

/* A JSON string; the caller leaves room for its two quotes. */
static void s_json_str(s_out_t *o, const char *s) {
    s_raw(o, "\"", 1);
    o->cap -= 1; /* the closing quote's room */
    const unsigned char *u = (const unsigned char *)s;
    size_t left = strlen(s);
    while (left && o->len < o->cap) {
        unsigned char c = *u;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            if (o->cap - o->len < 2) /* never half an escape */
                break;
            s_raw(o, esc, 2);
            u++, left--;
        } else if (c < 0x20 || c == 0x7F) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            if (o->cap - o->len < 6)
                break;
            s_raw(o, esc, 6);
            u++, left--;
        } else {
            size_t n = s_utf8_len(u, left);
            if (n == 0) { /* not UTF-8: U+FFFD */
                if (o->cap - o->len < 6)
                    break;
                s_raw(o, "\\ufffd", 6);
                u++, left--;
            } else {
                if (o->cap - o->len < n) /* never half a character */
                    break;
                s_raw(o, (const char *)u, n);
                u += n, left -= n;
            }
        }
    }
    o->cap += 1;
    s_raw(o, "\"", 1);
}

/* Text: control characters (a newline in a client's string) and bytes that are not
 * UTF-8 become '?', so that one call is one line of text. */
static void s_text_str(s_out_t *o, const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    size_t left = strlen(s);
    while (left && o->len < o->cap) {
        size_t n = s_utf8_len(u, left);
        if (n == 0 || *u < 0x20 || *u == 0x7F) {
            s_raw(o, "?", 1);
            n = 1;
        } else if (o->cap - o->len < n) {
            break; /* never half a character */
        } else {
            s_raw(o, (const char *)u, n);
        }
        u += n, left -= n;
    }
}

static void s_num(s_out_t *o, char kind, uint64_t v, bool quote) {
    char b[32];
    int n = kind == 'x' ? snprintf(b, sizeof b, "%s%016" PRIx64 "%s", quote ? "\"" : "", v,
                                   quote ? "\"" : "")
                        : snprintf(b, sizeof b, "%" PRIu64, v);
    s_raw(o, b, (size_t)n);
}

size_t djn_log_format_line(char *buf, size_t cap, djn_log_format_t format, djn_log_level_t level,
                           const char *msg, const djn_log_kv_t *kv, size_t n, int64_t unix_ms) {
    if (cap < 128) { /* a line needs its header: too small a buffer gets nothing */
        if (cap)
            buf[0] = 0;
        return 0;
    }
    const size_t reserve = 4; /* JSON: "\"}\n"; text: ")\n" */
    s_out_t o = {buf, 0, cap - 1 - reserve};
    if (format == DJN_LOG_JSON) {
        time_t secs = (time_t)(unix_ms / 1000);
        struct tm tm;
        gmtime_r(&secs, &tm);
        char ts[64];
        snprintf(ts, sizeof ts, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\",\"level\":\"%s\",",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(unix_ms % 1000), s_level_names[level]);
        s_str(&o, ts);
        s_str(&o, "\"msg\":");
        s_json_str(&o, msg);
        for (size_t i = 0; i < n; i++) {
            if (kv[i].kind == 's' && !kv[i].str)
                continue;
            /* a field whose key, quotes and a number do not fit is left out, and all
             * after it: a string value is cut to what fits */
            if (o.cap - o.len < strlen(kv[i].key) + 32)
                break;
            s_str(&o, ",");
            s_json_str(&o, kv[i].key);
            s_str(&o, ":");
            if (kv[i].kind == 's')
                s_json_str(&o, kv[i].str);
            else
                s_num(&o, kv[i].kind, kv[i].num, true);
        }
        o.cap += reserve;
        s_str(&o, "}\n");
    } else {
        s_str(&o, "djinn-server: ");
        s_text_str(&o, msg);
        int shown = 0;
        for (size_t i = 0; i < n; i++) {
            if (kv[i].kind == 's' && !kv[i].str)
                continue;
            s_str(&o, shown++ ? " " : " (");
            s_str(&o, kv[i].key);
            s_str(&o, "=");
            if (kv[i].kind == 's')
                s_text_str(&o, kv[i].str);
            else
                s_num(&o, kv[i].kind, kv[i].num, false);
        }
        o.cap += reserve;
        if (shown)
            s_str(&o, ")");
        s_str(&o, "\n");
    }
    buf[o.len] = 0;
    return o.len;
}

void djn_log_kv(djn_log_level_t level, const char *msg, const djn_log_kv_t *kv, size_t n) {
    if (!djn_log_on(level))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[S_LINE_MAX];
    size_t len = djn_log_format_line(line, sizeof line, s_format, level, msg, kv, n,
                                     (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    ssize_t w = write(2, line, len);
    (void)w; /* nowhere to report a failed log write */
}
