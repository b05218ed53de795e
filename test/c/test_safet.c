/* test_safet.c: the strict JSON reader and the safetensors header (server/djn_safet.c).
 *
 *   1. JSON: values of every kind, escapes and surrogate pairs, numbers at int64 bounds;
 *      malformed text of every kind refused with the offset named; depth and repeated
 *      keys; every truncation of a valid document refused.
 *   2. safetensors: a valid header parsed field by field; hostile headers (bad length,
 *      unknown dtype, span mismatch, overflowing shapes, spans past the file, overlaps,
 *      bad metadata, control characters in names) refused with an exact reason.
 *   3. Random mutations of a valid header: any result, no crash, no leak.
 *   4. Fault injection: every allocation failure is a status, never a crash or a leak. */
#include "djn_test.h"

#include "djn_codec.h"
#include "djn_safet.h"

static djn_status_t s_json(const char *text, djn_value_t **v, djn_arena_t *a, char *err) {
    return djn_json_parse(text, strlen(text), a, v, err, 256);
}

static void test_json_values(void) {
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v;
    char err[256];
    CHECK_EQ_INT(s_json(" {\"a\": [1, -2, 3.5, true, false, null, \"x\\u00e9\\ud83d\\ude00\\n\"],"
                        " \"b\": {}, \"c\": [] , \"d\": -9223372036854775808} ",
                        &v, a, err),
                 DJN_OK);
    CHECK_EQ_INT(v->kind, DJN_V_MAP);
    CHECK_EQ_INT(v->len, 4);
    const djn_value_t *arr = djn_value_get(v, "a");
    CHECK(arr && arr->kind == DJN_V_LIST && arr->len == 7);
    CHECK_EQ_INT(arr->u.items[0].u.i, 1);
    CHECK_EQ_INT(arr->u.items[1].u.i, -2);
    CHECK_EQ_INT(arr->u.items[2].kind, DJN_V_FLOAT);
    CHECK(arr->u.items[2].u.f == 3.5);
    CHECK(arr->u.items[3].kind == DJN_V_BOOL && arr->u.items[3].u.b);
    CHECK(arr->u.items[5].kind == DJN_V_NONE);
    CHECK_STR(arr->u.items[6].u.s, "x\xc3\xa9\xf0\x9f\x98\x80\n");
    CHECK_EQ_INT(djn_value_get(v, "b")->kind, DJN_V_MAP);
    CHECK_EQ_INT(djn_value_get(v, "c")->len, 0);
    CHECK_EQ_INT(djn_value_get(v, "d")->u.i, INT64_MIN);
    CHECK_EQ_INT(s_json("18446744073709551616", &v, a, err), DJN_OK); /* too big: a float */
    CHECK_EQ_INT(v->kind, DJN_V_FLOAT);
    djn_arena_destroy(&a);
}

static void test_json_rejects(void) {
    static const struct {
        const char *text, *why;
    } cases[] = {
        {"", "invalid JSON at byte 0: truncated"},
        {"{", "invalid JSON at byte 1: expected a string key"},
        {"{\"a\" 1}", "invalid JSON at byte 5: expected ':'"},
        {"{\"a\":1,}", "invalid JSON at byte 7: expected a string key"},
        {"[1 2]", "invalid JSON at byte 3: expected ',' or ']'"},
        {"01", "invalid JSON at byte 0: leading zero"},
        {"1.", "invalid JSON at byte 2: bad fraction"},
        {"1e", "invalid JSON at byte 2: bad exponent"},
        {"tru", "invalid JSON at byte 0: unexpected character"},
        {"\"abc", "invalid JSON at byte 1: unterminated string"},
        {"\"a\\qb\"", "invalid JSON at byte 4: unknown escape"},
        {"\"\\u12zz\"", "invalid JSON at byte 3: bad \\u escape"},
        {"\"\\u12\"", "invalid JSON at byte 3: truncated \\u escape"},
        {"\"\\ud800\"", "invalid JSON at byte 7: lone high surrogate"},
        {"\"\\udc00\"", "invalid JSON at byte 7: lone low surrogate"},
        {"\"\\u0000\"", "invalid JSON at byte 7: NUL in a string"},
        {"\"a\tb\"", "invalid JSON at byte 2: control character in a string"},
        {"\"\xc3\x28\"", "invalid JSON at byte 1: invalid UTF-8 in a string"},
        {"\"\xed\xa0\x80\"", "invalid JSON at byte 1: invalid UTF-8 in a string"},
        {"{\"a\":1,\"b\":2,\"a\":3}", "invalid JSON at byte 19: repeated key in an object"},
        {"1 2", "invalid JSON at byte 2: trailing characters after the value"},
        {"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
         "invalid JSON at byte 17: nested too deeply"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = (djn_value_t *)1;
        char err[256] = "";
        CHECK_EQ_INT(s_json(cases[i].text, &v, a, err), DJN_ERR_PROTO);
        CHECK(v == NULL);
        CHECK_STR(err, cases[i].why);
        djn_arena_destroy(&a);
    }
}

/* A header and a file size that fits it: tensors w (F32 [2,3]) and b (BF16 [3]). */
static const char *S_GOOD = "{\"__metadata__\":{\"format\":\"pt\"},"
                            "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                            "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[24,30]}}";

static djn_status_t s_parse(const char *h, uint64_t data_bytes, djn_safet_tensor_t **t, uint32_t *n,
                            djn_arena_t *a, char *err) {
    uint64_t hl = strlen(h);
    return djn_safet_parse(h, hl, 8 + hl + data_bytes, a, t, n, err, 256);
}

static void test_safet_good(void) {
    djn_arena_t *a = djn_arena_new();
    djn_safet_tensor_t *t;
    uint32_t n;
    char err[256] = "";
    CHECK_EQ_INT(s_parse(S_GOOD, 30, &t, &n, a, err), DJN_OK);
    CHECK_EQ_INT(n, 2);
    uint64_t d0 = 8 + strlen(S_GOOD);
    CHECK_STR(t[0].name, "w");
    CHECK_EQ_INT(t[0].dtype, DJN_DTYPE_F32);
    CHECK_EQ_INT(t[0].ndim, 2);
    CHECK_EQ_INT(t[0].shape[1], 3);
    CHECK_EQ_INT(t[0].begin, d0);
    CHECK_EQ_INT(t[0].end, d0 + 24);
    CHECK_STR(t[1].name, "b");
    CHECK_EQ_INT(t[1].dtype, DJN_DTYPE_BF16);
    CHECK_EQ_INT(t[1].begin, d0 + 24);
    /* a scalar and an empty tensor at a boundary */
    CHECK_EQ_INT(s_parse("{\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
                         "\"e\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[8,8]}}",
                         8, &t, &n, a, err),
                 DJN_OK);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(t[0].ndim, 0);
    djn_arena_destroy(&a);
}

static void test_safet_header_len(void) {
    uint8_t b[8] = {30, 0, 0, 0, 0, 0, 0, 0};
    uint64_t hl = 0;
    char err[256];
    CHECK_EQ_INT(djn_safet_header_len(b, 100, &hl, err, sizeof err), DJN_OK);
    CHECK_EQ_INT(hl, 30);
    CHECK_EQ_INT(djn_safet_header_len(b, 37, &hl, err, sizeof err), DJN_ERR_PROTO);
    CHECK_STR(err, "safetensors header length 30 is out of range (file of 37 bytes, limit "
                   "104857600)");
    CHECK_EQ_INT(djn_safet_header_len(b, 4, &hl, err, sizeof err), DJN_ERR_PROTO);
    CHECK_STR(err, "file of 4 bytes is too short for a safetensors header");
    uint8_t huge[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    CHECK_EQ_INT(djn_safet_header_len(huge, UINT64_MAX, &hl, err, sizeof err), DJN_ERR_PROTO);
}

static void test_safet_hostile(void) {
    static const struct {
        const char *h;
        uint64_t data;
        const char *why;
    } cases[] = {
        {"[]", 0, "safetensors header is not a JSON object"},
        {"{\"w\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "safetensors tensor 'w': unknown or missing dtype"},
        {"{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "safetensors tensor 'w': unknown or missing dtype"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8,
         "safetensors tensor 'w': byte span does not match dtype and shape"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3,
         "safetensors tensor 'w': data_offsets run past the end of the file"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8,
         "safetensors tensor 'w': data_offsets must be [begin, end], begin <= end"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8,
         "safetensors tensor 'w': data_offsets must be [begin, end], begin <= end"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 8,
         "safetensors tensor 'w': shape holds a non-integer or negative"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 8,
         "safetensors tensor 'w': shape holds a non-integer or negative"},
        {"{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 8,
         "safetensors tensor 'w': shape overflows"},
        {"{\"w\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", 8,
         "safetensors tensor 'w': shape overflows"},
        {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"
         "\"data_offsets\":[0,4]}}",
         8, "safetensors tensor 'w': shape must be an array of at most 16 sizes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "safetensors tensor 'b': overlaps another tensor's bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "invalid JSON at byte 107: repeated key in an object"},
        {"{\"__metadata__\":{\"k\":1}}", 0,
         "safetensors tensor '__metadata__': values must be strings"},
        {"{\"__metadata__\":[]}", 0, "safetensors tensor '__metadata__': must be an object"},
        {"{\"a\\u0001\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "safetensors tensor 'a\x01': name has a control character"},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "safetensors tensor '': name is empty or too long"},
        {"{\"w\":[]}", 0, "safetensors tensor 'w': entry must be an object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        djn_arena_t *a = djn_arena_new();
        djn_safet_tensor_t *t = (djn_safet_tensor_t *)1;
        uint32_t n = 7;
        char err[256] = "";
        djn_status_t st = s_parse(cases[i].h, cases[i].data, &t, &n, a, err);
        CHECK(st != DJN_OK);
        CHECK(t == NULL && n == 0);
        CHECK_STR(err, cases[i].why);
        djn_arena_destroy(&a);
    }
    /* a header length the file cannot hold */
    djn_arena_t *a = djn_arena_new();
    djn_safet_tensor_t *t;
    uint32_t n;
    char err[256];
    CHECK_EQ_INT(djn_safet_parse(S_GOOD, strlen(S_GOOD), 10, a, &t, &n, err, sizeof err),
                 DJN_ERR_PROTO);
    djn_arena_destroy(&a);
}

static void test_safet_truncations(void) {
    size_t len = strlen(S_GOOD);
    for (size_t cut = 0; cut < len; cut++) {
        djn_arena_t *a = djn_arena_new();
        djn_safet_tensor_t *t;
        uint32_t n;
        char err[256] = "";
        CHECK(djn_safet_parse(S_GOOD, cut, 8 + cut + 30, a, &t, &n, err, sizeof err) != DJN_OK);
        CHECK(err[0] != 0);
        djn_arena_destroy(&a);
    }
}

static void test_safet_mutations(void) {
    size_t len = strlen(S_GOOD);
    char *buf = djn_malloc(len);
    rng_seed(13);
    for (int round = 0; round < 20000; round++) {
        memcpy(buf, S_GOOD, len);
        int edits = 1 + (int)rng_below(4);
        for (int e = 0; e < edits; e++)
            buf[rng_below(len)] =
                (char)(rng_below(4) ? "{}[]\",:0123456789-.e\\u"[rng_below(23)] : (char)rng());
        djn_arena_t *a = djn_arena_new();
        djn_safet_tensor_t *t;
        uint32_t n;
        char err[256];
        djn_status_t st = djn_safet_parse(buf, len, 8 + len + 30, a, &t, &n, err, sizeof err);
        if (st == DJN_OK) /* whatever was accepted lies inside the file */
            for (uint32_t i = 0; i < n; i++)
                CHECK(t[i].begin <= t[i].end && t[i].end <= 8 + len + 30);
        djn_arena_destroy(&a);
    }
    djn_free(buf, len);
}

static void test_safet_fault_injection(void) {
    for (int k = 0; k < 200; k++) {
        djn_arena_t *a = djn_arena_new();
        if (!a)
            continue;
        djn_mem_fail_after(k);
        djn_safet_tensor_t *t;
        uint32_t n;
        char err[256];
        djn_status_t st = s_parse(S_GOOD, 30, &t, &n, a, err);
        djn_mem_fail_after(-1);
        CHECK(st == DJN_OK || st == DJN_ERR_NOMEM);
        djn_arena_destroy(&a);
    }
}

int main(void) {
    RUN(test_json_values);
    RUN(test_json_rejects);
    RUN(test_safet_good);
    RUN(test_safet_header_len);
    RUN(test_safet_hostile);
    RUN(test_safet_truncations);
    RUN(test_safet_mutations);
    RUN(test_safet_fault_injection);
    return djn_test_report();
}
