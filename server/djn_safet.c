/* djn_safet.c: a strict, bounded JSON reader and the safetensors header (djn_safet.h).
 *
 * JSON reader, in steps:
 *   1. a recursive-descent parser over [p, end) with an explicit depth bound; every
 *      read checks the end first, so truncated input is an error, never a read past it;
 *   2. an array's or object's children are collected in a counted temporary vector and
 *      copied into the arena once their number is known (djn_value_t wants them
 *      contiguous); the total number of values is bounded (S_MAX_VALUES);
 *   3. strings are decoded (escapes, \uXXXX with surrogate pairs) into NUL-terminated
 *      UTF-8; raw control characters, invalid UTF-8 and a NUL from \u0000 are refused,
 *      so a name is always a C string that means what it shows;
 *   4. numbers: an integer that fits int64 is an INT, anything else (fraction, exponent,
 *      too large) a FLOAT; leading zeros are refused as RFC 8259 says;
 *   5. an object with a repeated key is refused (sorted keys, adjacent compared).
 * Rejected alternatives: a streaming tokenizer (less code to check per tensor, but the
 * header is small and a tree lets the checks below read like the format's definition);
 * a third-party JSON library (one more dependency for a 100-line need).
 *
 * safetensors checks: see djn_safet.h. Overlap is found by sorting spans by begin. */
#include "djn_safet.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "djn_mem.h"
#include "djn_vec.h"

#define S_MAX_JSON_DEPTH (DJN_MAX_DEPTH + 8)
#define S_MAX_VALUES (1u << 22)

typedef struct {
    const char *p, *start, *end;
    djn_arena_t *a;
    uint32_t values;
    char *err;
    size_t errlen;
    bool oom;
} s_json_t;

static void s_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool s_fail(s_json_t *j, const char *what) {
    if (j->err && j->err[0] == 0)
        s_err(j->err, j->errlen, "invalid JSON at byte %zu: %s", (size_t)(j->p - j->start), what);
    return false;
}

static void s_ws(s_json_t *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int s_hex(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool s_u4(s_json_t *j, uint32_t *out) {
    if (j->end - j->p < 4)
        return s_fail(j, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = s_hex(j->p[i]);
        if (h < 0)
            return s_fail(j, "bad \\u escape");
        v = v * 16 + (uint32_t)h;
    }
    j->p += 4;
    *out = v;
    return true;
}

static size_t s_utf8_put(uint8_t *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of one valid UTF-8 sequence at p (shortest form, no surrogates), 0 if invalid. */
static size_t s_utf8_len(const uint8_t *p, const uint8_t *end) {
    uint8_t c = p[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0)
        n = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0)
        n = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0)
        n = 4, cp = c & 0x07;
    else
        return 0;
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* A string at j->p (just after the opening quote) into the arena. */
static bool s_string(s_json_t *j, djn_value_t *v) {
    /* the decoded form is never longer than the raw one: size the buffer by a scan */
    const char *q = j->p;
    while (q < j->end && *q != '"') {
        if (*q == '\\' && q + 1 < j->end)
            q++;
        q++;
    }
    if (q >= j->end)
        return s_fail(j, "unterminated string");
    size_t cap = (size_t)(q - j->p) + 1;
    uint8_t *o = djn_arena_alloc(j->a, cap);
    if (!o) {
        j->oom = true;
        return s_fail(j, "out of memory");
    }
    size_t n = 0;
    while (j->p < j->end && *j->p != '"') {
        uint8_t c = (uint8_t)*j->p;
        if (c < 0x20)
            return s_fail(j, "control character in a string");
        if (c != '\\') {
            size_t l = s_utf8_len((const uint8_t *)j->p, (const uint8_t *)j->end);
            if (!l)
                return s_fail(j, "invalid UTF-8 in a string");
            memcpy(o + n, j->p, l);
            n += l;
            j->p += l;
            continue;
        }
        if (++j->p >= j->end)
            return s_fail(j, "truncated escape");
        char e = *j->p++;
        uint32_t cp;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            o[n++] = (uint8_t)e;
            break;
        case 'b':
            o[n++] = '\b';
            break;
        case 'f':
            o[n++] = '\f';
            break;
        case 'n':
            o[n++] = '\n';
            break;
        case 'r':
            o[n++] = '\r';
            break;
        case 't':
            o[n++] = '\t';
            break;
        case 'u':
            if (!s_u4(j, &cp))
                return false;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
                uint32_t lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return s_fail(j, "lone high surrogate");
                j->p += 2;
                if (!s_u4(j, &lo))
                    return false;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return s_fail(j, "bad low surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return s_fail(j, "lone low surrogate");
            }
            if (cp == 0)
                return s_fail(j, "NUL in a string");
            n += s_utf8_put(o + n, cp); /* <= 6 raw bytes become <= 4 */
            break;
        default:
            return s_fail(j, "unknown escape");
        }
    }
    if (j->p >= j->end)
        return s_fail(j, "unterminated string");
    j->p++; /* closing quote */
    o[n] = 0;
    v->kind = DJN_V_STR;
    v->len = (uint32_t)n;
    v->u.s = (const char *)o;
    return true;
}

static bool s_number(s_json_t *j, djn_value_t *v) {
    const char *s = j->p;
    bool neg = false, frac = false;
    if (j->p < j->end && *j->p == '-')
        neg = true, j->p++;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9')
        return s_fail(j, "bad number");
    if (*j->p == '0' && j->p + 1 < j->end && j->p[1] >= '0' && j->p[1] <= '9')
        return s_fail(j, "leading zero");
    uint64_t mag = 0;
    bool big = false;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        uint64_t d = (uint64_t)(*j->p++ - '0');
        if (mag > (UINT64_MAX - d) / 10)
            big = true;
        else
            mag = mag * 10 + d;
    }
    if (j->p < j->end && *j->p == '.') {
        frac = true;
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return s_fail(j, "bad fraction");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        frac = true;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
            j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return s_fail(j, "bad exponent");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    if (!frac && !big && mag <= (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX)) {
        v->kind = DJN_V_INT;
        v->u.i = neg ? (int64_t)(0 - mag) : (int64_t)mag;
        return true;
    }
    char buf[64];
    size_t l = (size_t)(j->p - s);
    if (l >= sizeof buf)
        l = sizeof buf - 1;
    memcpy(buf, s, l);
    buf[l] = 0;
    v->kind = DJN_V_FLOAT;
    v->u.f = strtod(buf, NULL);
    return true;
}

static bool s_lit(s_json_t *j, const char *lit) {
    size_t l = strlen(lit);
    if ((size_t)(j->end - j->p) < l || memcmp(j->p, lit, l) != 0)
        return s_fail(j, "unexpected character");
    j->p += l;
    return true;
}

static int s_keycmp(const void *a, const void *b) {
    const djn_value_t *x = *(djn_value_t *const *)a, *y = *(djn_value_t *const *)b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->u.s, y->u.s, x->len);
}

static bool s_value(s_json_t *j, djn_value_t *v, int depth);

/* An array or object: children into a temporary vector, then into the arena. */
static bool s_compound(s_json_t *j, djn_value_t *v, int depth, bool object) {
    char close = object ? '}' : ']';
    djn_vec_t kids = DJN_VEC(djn_value_t);
    bool ok = true;
    j->p++;
    s_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
    } else {
        for (;;) {
            djn_value_t k = {0}, x = {0};
            s_ws(j);
            if (object) {
                if (j->p >= j->end || *j->p != '"') {
                    ok = s_fail(j, "expected a string key");
                    break;
                }
                j->p++;
                if (!(ok = s_string(j, &k)))
                    break;
                s_ws(j);
                if (j->p >= j->end || *j->p != ':') {
                    ok = s_fail(j, "expected ':'");
                    break;
                }
                j->p++;
            }
            if (!(ok = s_value(j, &x, depth + 1)))
                break;
            if ((object && !djn_vec_push(&kids, &k)) || !djn_vec_push(&kids, &x)) {
                j->oom = true;
                ok = s_fail(j, "out of memory");
                break;
            }
            s_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == close) {
                j->p++;
                break;
            }
            ok = s_fail(j, object ? "expected ',' or '}'" : "expected ',' or ']'");
            break;
        }
    }
    if (ok && kids.len > DJN_MAX_ITEMS * (object ? 2u : 1u))
        ok = s_fail(j, "too many items in one array or object");
    djn_value_t *items = NULL;
    if (ok && kids.len) {
        items = djn_arena_alloc(j->a, kids.len * sizeof(djn_value_t));
        if (!items) {
            j->oom = true;
            ok = s_fail(j, "out of memory");
        } else {
            memcpy(items, kids.data, kids.len * sizeof(djn_value_t));
        }
    }
    if (ok && object && kids.len > 2) { /* repeated keys are refused */
        size_t n = kids.len / 2;
        const djn_value_t **keys = djn_malloc(n * sizeof(*keys));
        if (!keys) {
            j->oom = true;
            ok = s_fail(j, "out of memory");
        } else {
            for (size_t i = 0; i < n; i++)
                keys[i] = &items[2 * i];
            qsort(keys, n, sizeof(*keys), s_keycmp);
            for (size_t i = 1; ok && i < n; i++)
                if (s_keycmp(&keys[i - 1], &keys[i]) == 0)
                    ok = s_fail(j, "repeated key in an object");
            djn_free(keys, n * sizeof(*keys));
        }
    }
    if (ok) {
        v->kind = object ? DJN_V_MAP : DJN_V_LIST;
        v->len = (uint32_t)(object ? kids.len / 2 : kids.len);
        v->u.items = items;
    }
    djn_vec_release(&kids);
    return ok;
}

static bool s_value(s_json_t *j, djn_value_t *v, int depth) {
    if (depth > S_MAX_JSON_DEPTH)
        return s_fail(j, "nested too deeply");
    if (++j->values > S_MAX_VALUES)
        return s_fail(j, "too many values");
    s_ws(j);
    if (j->p >= j->end)
        return s_fail(j, "truncated");
    switch (*j->p) {
    case '{':
        return s_compound(j, v, depth, true);
    case '[':
        return s_compound(j, v, depth, false);
    case '"':
        j->p++;
        return s_string(j, v);
    case 't':
        v->kind = DJN_V_BOOL;
        v->u.b = true;
        return s_lit(j, "true");
    case 'f':
        v->kind = DJN_V_BOOL;
        v->u.b = false;
        return s_lit(j, "false");
    case 'n':
        v->kind = DJN_V_NONE;
        return s_lit(j, "null");
    default:
        return s_number(j, v);
    }
}

djn_status_t djn_json_parse(const char *text, size_t len, djn_arena_t *a, djn_value_t **out,
                            char *err, size_t errlen) {
    if (err && errlen)
        err[0] = 0;
    *out = NULL;
    s_json_t j = {text, text, text + len, a, 0, err, errlen, false};
    djn_value_t *v = djn_arena_alloc(a, sizeof(*v));
    if (!v) {
        s_err(err, errlen, "out of memory parsing JSON");
        return DJN_ERR_NOMEM;
    }
    if (!s_value(&j, v, 0))
        return j.oom ? DJN_ERR_NOMEM : DJN_ERR_PROTO;
    s_ws(&j);
    if (j.p != j.end) {
        s_fail(&j, "trailing characters after the value");
        return DJN_ERR_PROTO;
    }
    *out = v;
    return DJN_OK;
}

/* ------------------------------------------------------------------ safetensors */

static const struct {
    const char *name;
    uint8_t code;
} s_dtypes[] = {
    {"F64", DJN_DTYPE_F64},   {"F32", DJN_DTYPE_F32}, {"F16", DJN_DTYPE_F16},
    {"BF16", DJN_DTYPE_BF16}, {"I64", DJN_DTYPE_I64}, {"I32", DJN_DTYPE_I32},
    {"I16", DJN_DTYPE_I16},   {"I8", DJN_DTYPE_I8},   {"U8", DJN_DTYPE_U8},
    {"BOOL", DJN_DTYPE_BOOL},
};

bool djn_safet_dtype(const char *name, uint8_t *out) {
    for (size_t i = 0; i < sizeof s_dtypes / sizeof s_dtypes[0]; i++)
        if (!strcmp(name, s_dtypes[i].name)) {
            *out = s_dtypes[i].code;
            return true;
        }
    return false;
}

djn_status_t djn_safet_header_len(const uint8_t first8[8], uint64_t file_size, uint64_t *hlen,
                                  char *err, size_t errlen) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | first8[i];
    if (file_size < 8) {
        s_err(err, errlen, "file of %" PRIu64 " bytes is too short for a safetensors header",
              file_size);
        return DJN_ERR_PROTO;
    }
    if (n < 2 || n > DJN_SAFET_MAX_HEADER || n > file_size - 8) {
        s_err(err, errlen,
              "safetensors header length %" PRIu64 " is out of range (file of %" PRIu64
              " bytes, limit %u)",
              n, file_size, DJN_SAFET_MAX_HEADER);
        return DJN_ERR_PROTO;
    }
    *hlen = n;
    return DJN_OK;
}

static int s_spancmp(const void *a, const void *b) {
    const djn_safet_tensor_t *x = *(djn_safet_tensor_t *const *)a,
                             *y = *(djn_safet_tensor_t *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

static djn_status_t s_bad_tensor(char *err, size_t errlen, const char *name, const char *what) {
    s_err(err, errlen, "safetensors tensor '%.200s': %s", name, what);
    return DJN_ERR_PROTO;
}

djn_status_t djn_safet_parse(const char *header, uint64_t hlen, uint64_t file_size, djn_arena_t *a,
                             djn_safet_tensor_t **tensors, uint32_t *n, char *err, size_t errlen) {
    *tensors = NULL;
    *n = 0;
    if (hlen > DJN_SAFET_MAX_HEADER || file_size < 8 || hlen > file_size - 8) {
        s_err(err, errlen, "safetensors header length %" PRIu64 " is out of range", hlen);
        return DJN_ERR_PROTO;
    }
    djn_value_t *root;
    djn_status_t st = djn_json_parse(header, (size_t)hlen, a, &root, err, errlen);
    if (st != DJN_OK)
        return st;
    if (root->kind != DJN_V_MAP) {
        s_err(err, errlen, "safetensors header is not a JSON object");
        return DJN_ERR_PROTO;
    }
    uint64_t data0 = 8 + hlen, data_len = file_size - data0;
    djn_safet_tensor_t *ts = djn_arena_alloc(a, (root->len + 1) * sizeof(*ts));
    if (!ts) {
        s_err(err, errlen, "out of memory");
        return DJN_ERR_NOMEM;
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < root->len; i++) {
        const djn_value_t *key = &root->u.items[2 * i], *val = &root->u.items[2 * i + 1];
        const char *name = key->u.s;
        if (!strcmp(name, "__metadata__")) {
            if (val->kind != DJN_V_MAP)
                return s_bad_tensor(err, errlen, name, "must be an object");
            for (uint32_t m = 0; m < val->len; m++)
                if (val->u.items[2 * m + 1].kind != DJN_V_STR)
                    return s_bad_tensor(err, errlen, name, "values must be strings");
            continue;
        }
        if (k >= DJN_SAFET_MAX_TENSORS) {
            s_err(err, errlen, "more than %u tensors in one file", DJN_SAFET_MAX_TENSORS);
            return DJN_ERR_LIMIT;
        }
        if (key->len == 0 || key->len > DJN_SAFET_MAX_NAME)
            return s_bad_tensor(err, errlen, name, "name is empty or too long");
        for (uint32_t c = 0; c < key->len; c++)
            if ((uint8_t)name[c] < 0x20 || name[c] == 0x7f)
                return s_bad_tensor(err, errlen, name, "name has a control character");
        if (val->kind != DJN_V_MAP)
            return s_bad_tensor(err, errlen, name, "entry must be an object");
        const djn_value_t *dt = djn_value_get(val, "dtype"), *sh = djn_value_get(val, "shape"),
                          *off = djn_value_get(val, "data_offsets");
        djn_safet_tensor_t *t = &ts[k];
        memset(t, 0, sizeof(*t));
        t->name = name;
        if (!dt || dt->kind != DJN_V_STR || !djn_safet_dtype(dt->u.s, &t->dtype))
            return s_bad_tensor(err, errlen, name, "unknown or missing dtype");
        if (!sh || sh->kind != DJN_V_LIST || sh->len > DJN_MAX_DIMS)
            return s_bad_tensor(err, errlen, name, "shape must be an array of at most 16 sizes");
        uint64_t numel = 1;
        bool overflow = false;
        for (uint32_t d = 0; d < sh->len; d++) {
            const djn_value_t *x = &sh->u.items[d];
            if (x->kind != DJN_V_INT || x->u.i < 0)
                return s_bad_tensor(err, errlen, name, "shape holds a non-integer or negative");
            t->shape[d] = x->u.i;
            if (x->u.i && numel > UINT64_MAX / (uint64_t)x->u.i)
                overflow = true;
            else
                numel *= (uint64_t)x->u.i;
        }
        t->ndim = (uint8_t)sh->len;
        uint64_t esz = djn_dtype_size(t->dtype);
        if (overflow || (numel && esz > UINT64_MAX / numel))
            return s_bad_tensor(err, errlen, name, "shape overflows");
        if (!off || off->kind != DJN_V_LIST || off->len != 2 || off->u.items[0].kind != DJN_V_INT ||
            off->u.items[1].kind != DJN_V_INT || off->u.items[0].u.i < 0 ||
            off->u.items[1].u.i < off->u.items[0].u.i)
            return s_bad_tensor(err, errlen, name,
                                "data_offsets must be [begin, end], begin <= end");
        uint64_t b = (uint64_t)off->u.items[0].u.i, e = (uint64_t)off->u.items[1].u.i;
        if (e > data_len)
            return s_bad_tensor(err, errlen, name, "data_offsets run past the end of the file");
        if (e - b != numel * esz)
            return s_bad_tensor(err, errlen, name, "byte span does not match dtype and shape");
        t->begin = data0 + b;
        t->end = data0 + e;
        k++;
    }
    if (k > 1) { /* no two tensors may share bytes */
        djn_safet_tensor_t **order = djn_malloc(k * sizeof(*order));
        if (!order) {
            s_err(err, errlen, "out of memory");
            return DJN_ERR_NOMEM;
        }
        for (uint32_t i = 0; i < k; i++)
            order[i] = &ts[i];
        qsort(order, k, sizeof(*order), s_spancmp);
        const char *bad = NULL;
        uint64_t reach = 0; /* the furthest end so far; empty tensors own no bytes */
        for (uint32_t i = 0; i < k && !bad; i++) {
            if (order[i]->begin == order[i]->end)
                continue;
            if (order[i]->begin < reach)
                bad = order[i]->name;
            reach = order[i]->end;
        }
        djn_free(order, k * sizeof(*order));
        if (bad)
            return s_bad_tensor(err, errlen, bad, "overlaps another tensor's bytes");
    }
    *tensors = ts;
    *n = k;
    return DJN_OK;
}
