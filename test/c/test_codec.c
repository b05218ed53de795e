/* test_codec.c: unit tests for the msgpack codec (csrc/common/djn_codec.c).
 *
 * What is covered, in the order of main():
 *   1. Encoding round trips: every djn_enc_* value through djn_decode_value and back
 *      through djn_enc_value, at every msgpack width boundary.
 *   2. djn_msg_decode on well-formed HELLO, HEARTBEAT, STATS, CLOSE, GRAPH, FETCH,
 *      GRAPH_CACHED and HAVE messages, checking every typed field (nodes keep slot
 *      numbers in their tensor references; "binds" is handed over as the slot table).
 *   3. Malformed input: each must fail with a status, *out NULL, an error message and
 *      no counted memory held: empty, every truncation, trailing bytes, hostile
 *      lengths, depth, extension payloads, limits, and every protocol-level field error.
 *   4. Fuzzing with a fixed-seed PRNG: random buffers, random protocol-shaped trees,
 *      single- and multi-byte mutations of a valid GRAPH. Any result is fine; crashes,
 *      sanitizer reports and leaks are not.
 *   5. djn_tref_extent against a brute-force enumeration, plus its edge cases.
 *   6. Fault injection (djn_mem_fail_after) over decoding and encoding.
 *   7. The arena.
 * Each test runs in its own child process (djn_test.h), so a sanitizer abort fails that
 * one test rather than the run. Everything is deterministic. */
#include "djn_test.h"

#include <float.h>
#include <math.h>

#include "djn_codec.h"
#include "djn_mem.h"
#include "djn_proto.h"
#include "djn_status.h"

#define ERRLEN 256

/* ------------------------------------------------------------------ helpers */

static djn_tref_t tref_make(uint64_t handle, int64_t offset, uint8_t dtype, uint8_t ndim,
                            const int64_t *sizes, const int64_t *strides) {
    djn_tref_t t;
    memset(&t, 0, sizeof t);
    t.handle = handle;
    t.offset = offset;
    t.dtype = dtype;
    t.ndim = ndim;
    for (unsigned d = 0; d < ndim; d++) {
        t.sizes[d] = sizes[d];
        t.strides[d] = strides[d];
    }
    return t;
}

/* A contiguous float32 [2, 3] reference to `handle`. */
static djn_tref_t tref_2x3(uint64_t handle) {
    static const int64_t sz[2] = {2, 3}, st[2] = {3, 1};
    return tref_make(handle, 0, DJN_DTYPE_F32, 2, sz, st);
}

static void enc_tref_2x3(djn_buf_t *b, uint64_t handle) {
    djn_tref_t t = tref_2x3(handle);
    djn_enc_tref(b, &t);
}

static void enc_pair(djn_buf_t *b, uint64_t x, uint64_t y) {
    djn_enc_array(b, 2);
    djn_enc_uint(b, x);
    djn_enc_uint(b, y);
}

/* Node header: [op, overload, then the caller encodes [args], [outs], flags. */
static void enc_node_start(djn_buf_t *b, const char *op, const char *overload) {
    djn_enc_array(b, 5);
    djn_enc_cstr(b, op);
    djn_enc_cstr(b, overload);
}

#define G_SID 0x1122334455667788ull
#define G_SEQ 99u
#define G_NFRAMES 2u

/* The canonical well-formed GRAPH used by the truncation, mutation and fault tests.
 * Tensor references in nodes carry slots that "binds" maps to handles (so a fragment's
 * bytes do not depend on handle values); the decoder keeps the slots and hands "binds"
 * over as g->binds. Below, tN is the slot bound to handle N (t10 = 0, t11 = 1, t12 = 2):
 *   binds [10, 11, 12], dev 1, seed 1234, allocs [[10,4096],[11,24],[12,24]],
 *   uploads [[10,1],[11,2]],
 *   nodes: aten::add.out(t10, t11, alpha 1.5) -> [t12]            flags 0
 *          aten::nonzero(t12) -> [13 (handle hint)]               flags DYNAMIC
 *          aten::cat([t10, t11(transposed, negative stride)], 0) -> [nil] flags 0
 *   frees [10, 11], fetch [[12, 0, 24], [13, 8, 16]]. */
static void build_graph(djn_buf_t *b) {
    djn_enc_header(b, DJN_MSG_GRAPH, G_SID, G_SEQ);
    djn_enc_map(b, 8);
    djn_enc_cstr(b, "binds"); /* slot -> handle */
    djn_enc_array(b, 3);
    djn_enc_uint(b, 10);
    djn_enc_uint(b, 11);
    djn_enc_uint(b, 12);
    djn_enc_cstr(b, "dev");
    djn_enc_uint(b, 1);
    djn_enc_cstr(b, "seed");
    djn_enc_int(b, 1234);
    djn_enc_cstr(b, "allocs");
    djn_enc_array(b, 3);
    enc_pair(b, 10, 4096);
    enc_pair(b, 11, 24);
    enc_pair(b, 12, 24);
    djn_enc_cstr(b, "uploads");
    djn_enc_array(b, 2);
    enc_pair(b, 10, 1);
    enc_pair(b, 11, 2);
    djn_enc_cstr(b, "nodes");
    djn_enc_array(b, 3);
    enc_node_start(b, "aten::add", "out");
    djn_enc_array(b, 3);
    enc_tref_2x3(b, 0);
    enc_tref_2x3(b, 1);
    djn_enc_float(b, 1.5);
    djn_enc_array(b, 1);
    enc_tref_2x3(b, 2);
    djn_enc_uint(b, 0);
    enc_node_start(b, "aten::nonzero", "");
    djn_enc_array(b, 1);
    enc_tref_2x3(b, 2);
    djn_enc_array(b, 1);
    djn_enc_uint(b, 13);
    djn_enc_uint(b, DJN_NODE_DYNAMIC);
    enc_node_start(b, "aten::cat", "");
    djn_enc_array(b, 2);
    djn_enc_array(b, 2);
    enc_tref_2x3(b, 0);
    {
        static const int64_t sz[2] = {3, 2}, st[2] = {-1, 3};
        djn_tref_t t = tref_make(1, 2, DJN_DTYPE_F32, 2, sz, st);
        djn_enc_tref(b, &t);
    }
    djn_enc_int(b, 0);
    djn_enc_array(b, 1);
    djn_enc_nil(b);
    djn_enc_uint(b, 0);
    djn_enc_cstr(b, "frees");
    djn_enc_array(b, 2);
    djn_enc_uint(b, 10);
    djn_enc_uint(b, 11);
    djn_enc_cstr(b, "fetch");
    djn_enc_array(b, 2);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 12);
    djn_enc_uint(b, 0);
    djn_enc_uint(b, 24);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 13);
    djn_enc_uint(b, 8);
    djn_enc_uint(b, 16);
}

static bool tref_eq(const djn_tref_t *a, const djn_tref_t *b) {
    if (a->handle != b->handle || a->offset != b->offset || a->dtype != b->dtype ||
        a->ndim != b->ndim)
        return false;
    for (unsigned d = 0; d < a->ndim; d++)
        if (a->sizes[d] != b->sizes[d] || a->strides[d] != b->strides[d])
            return false;
    return true;
}

static bool is_2x3(const djn_value_t *v, uint64_t handle) {
    djn_tref_t want = tref_2x3(handle);
    return v && v->kind == DJN_V_TENSOR && tref_eq(v->u.t, &want);
}

/* Decode a single value; the caller destroys the arena. */
static djn_status_t dec_value(const djn_buf_t *b, djn_arena_t *a, djn_value_t **v, char *err) {
    err[0] = '\0';
    return djn_decode_value(b->data, b->len, a, v, err, ERRLEN);
}

/* Decode buf as a message and check the failure contract. Returns NULL when it holds,
 * otherwise what went wrong. want < 0: any non-OK status. sub NULL: any message. */
static const char *s_reject(const void *buf, size_t len, uint32_t nframes, int want,
                            const char *sub, char *err) {
    int64_t mem0 = djn_mem_in_use();
    djn_msg_t *m = (djn_msg_t *)(uintptr_t)1; /* must be overwritten with NULL */
    memset(err, 0, ERRLEN);
    djn_status_t st = djn_msg_decode(buf, len, nframes, &m, NULL, err, ERRLEN);
    if (st == DJN_OK) {
        djn_msg_free(&m);
        return "decoded OK, expected a failure";
    }
    if (m != NULL)
        return "*out not NULL after a failure";
    if (want >= 0 && (int)st != want) {
        static char msg[64];
        snprintf(msg, sizeof msg, "status %d, expected %d", (int)st, want);
        return msg;
    }
    if (err[0] == '\0')
        return "empty error message";
    if (memchr(err, '\0', ERRLEN) == NULL)
        return "error message not NUL-terminated";
    if (sub && !strstr(err, sub))
        return "error message lacks the expected words";
    if (djn_mem_in_use() != mem0)
        return "counted memory held after a failure";
    return NULL;
}

#define EXPECT_REJECT(buf, len, nframes, want, sub)                                                \
    do {                                                                                           \
        char r_err[ERRLEN];                                                                        \
        const char *r_sub = (sub);                                                                 \
        const char *r_why = s_reject((buf), (len), (nframes), (want), r_sub, r_err);               \
        if (r_why) {                                                                               \
            char r_m[700];                                                                         \
            snprintf(r_m, sizeof r_m, "reject: %s; err \"%s\", wanted \"%s\"", r_why, r_err,       \
                     r_sub ? r_sub : "(any)");                                                     \
            djn_t_fail(__FILE__, __LINE__, r_m);                                                   \
        }                                                                                          \
    } while (0)

#define EXPECT_REJECT_BUF(b, nframes, want, sub)                                                   \
    EXPECT_REJECT((b)->data, (b)->len, (nframes), (want), (sub))

/* djn_decode_value must fail with `want` and an error containing `sub`. */
#define EXPECT_VALUE_REJECT(ptr, len, want, sub)                                                   \
    do {                                                                                           \
        djn_arena_t *v_a = djn_arena_new();                                                        \
        djn_value_t *v_v = (djn_value_t *)(uintptr_t)1;                                            \
        char v_err[ERRLEN] = "";                                                                   \
        djn_status_t v_st = djn_decode_value((ptr), (len), v_a, &v_v, v_err, ERRLEN);              \
        CHECK_EQ_INT(v_st, (want));                                                                \
        CHECK(v_v == NULL);                                                                        \
        CHECK_HAS(v_err, (sub));                                                                   \
        djn_arena_destroy(&v_a);                                                                   \
    } while (0)

/* Decode a message that must be accepted. */
static djn_msg_t *decode_ok(const djn_buf_t *b, uint32_t nframes) {
    djn_msg_t *m = NULL;
    char err[ERRLEN] = "";
    djn_status_t st = djn_msg_decode(b->data, b->len, nframes, &m, NULL, err, ERRLEN);
    if (st != DJN_OK)
        printf("unexpected decode failure: %s: %s\n", djn_status_str(st), err);
    return m;
}

/* ------------------------------------------------------------------ 1. round trips */

static void test_roundtrip_ints(void) {
    /* clang-format off */
    static const int64_t vals[] = {
        0,          1,          127,        128,         255,           256,
        65535,      65536,      4294967295, 4294967296,  INT64_MAX,     -1,
        -31,        -32,        -33,        -127,        -128,          -129,
        -32767,     -32768,     -32769,     INT32_MIN,   (int64_t)INT32_MIN - 1,
        INT64_MIN + 1, INT64_MIN,
    };
    /* clang-format on */
    static const uint64_t uvals[] = {
        0,
        1,
        255,
        65535,
        4294967295u,
        (uint64_t)INT64_MAX,
        (uint64_t)1 << 63,
        ((uint64_t)1 << 63) + 12345,
        UINT64_MAX - 1,
        UINT64_MAX,
    };
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        djn_buf_reset(&b);
        djn_enc_int(&b, vals[i]);
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_INT);
        if (v)
            CHECK_EQ_INT(v->u.i, vals[i]);
        djn_arena_destroy(&a);
    }
    for (size_t i = 0; i < sizeof uvals / sizeof uvals[0]; i++) {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        djn_buf_reset(&b);
        djn_enc_uint(&b, uvals[i]);
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_INT);
        if (v)
            CHECK((uint64_t)v->u.i == uvals[i]); /* above 2^63: bitwise */
        djn_arena_destroy(&a);
    }
    /* Smallest encodings: a client and server must agree byte for byte. */
    djn_buf_reset(&b);
    djn_enc_int(&b, 5);
    CHECK_EQ_INT(b.len, 1);
    djn_buf_reset(&b);
    djn_enc_int(&b, -32);
    CHECK_EQ_INT(b.len, 1);
    djn_buf_reset(&b);
    djn_enc_uint(&b, UINT64_MAX);
    CHECK_EQ_INT(b.len, 9);
    CHECK_EQ_INT(b.data[0], 0xcf);
    djn_buf_release(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
}

static void test_roundtrip_floats(void) {
    const double vals[] = {0.0,     -0.0,    1.5,          -2.25,    1e300,     -1e-300,
                           DBL_MIN, DBL_MAX, DBL_TRUE_MIN, INFINITY, -INFINITY, 3.141592653589793};
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        djn_buf_reset(&b);
        djn_enc_float(&b, vals[i]);
        CHECK_EQ_INT(b.len, 9); /* always float64: no silent precision loss */
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_FLOAT);
        if (v)
            CHECK(memcmp(&v->u.f, &vals[i], sizeof(double)) == 0);
        djn_arena_destroy(&a);
    }
    {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        djn_buf_reset(&b);
        djn_enc_float(&b, NAN);
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_FLOAT && isnan(v->u.f));
        djn_arena_destroy(&a);
    }
    /* float32 from another encoder (Python msgpack with use_single_float). */
    {
        static const uint8_t f32[] = {0xca, 0x3f, 0xc0, 0x00, 0x00}; /* 1.5f */
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_decode_value(f32, sizeof f32, a, &v, err, ERRLEN), DJN_OK);
        CHECK(v && v->kind == DJN_V_FLOAT && v->u.f == 1.5);
        djn_arena_destroy(&a);
    }
    djn_buf_release(&b);
}

static void test_roundtrip_nil_bool(void) {
    djn_buf_t b = {0};
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    djn_enc_nil(&b);
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    CHECK(v && v->kind == DJN_V_NONE);
    djn_buf_reset(&b);
    djn_enc_bool(&b, true);
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    CHECK(v && v->kind == DJN_V_BOOL && v->u.b == true);
    djn_buf_reset(&b);
    djn_enc_bool(&b, false);
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    CHECK(v && v->kind == DJN_V_BOOL && v->u.b == false);
    djn_arena_destroy(&a);
    CHECK(a == NULL);
    djn_buf_release(&b);
}

static void test_roundtrip_str_bin(void) {
    /* Lengths across fixstr/str8/str16/str32 and bin8/bin16/bin32 (zero-length strings
     * have their own test, test_empty_string_first). */
    static const size_t lens[] = {1, 31, 32, 255, 256, 65535, 65536, 70000};
    size_t maxlen = 70000;
    char *src = malloc(maxlen);
    CHECK(src != NULL);
    if (!src)
        return;
    for (size_t i = 0; i < maxlen; i++)
        src[i] = (char)(i * 7 + 3); /* includes NUL bytes */
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (int bin = 0; bin < 2; bin++) {
            djn_arena_t *a = djn_arena_new();
            djn_value_t *v = NULL;
            char err[ERRLEN];
            djn_buf_reset(&b);
            if (bin)
                djn_enc_bin(&b, src, lens[i]);
            else
                djn_enc_str(&b, src, lens[i]);
            CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
            CHECK(v && v->kind == (bin ? DJN_V_BIN : DJN_V_STR));
            if (v) {
                CHECK_EQ_INT(v->len, lens[i]);
                CHECK(memcmp(v->u.s, src, lens[i]) == 0);
                CHECK(v->u.s[lens[i]] == '\0'); /* arena copies are NUL-terminated */
            }
            djn_arena_destroy(&a);
        }
    }
    /* djn_enc_cstr and an embedded NUL. */
    {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        djn_buf_reset(&b);
        djn_enc_cstr(&b, "aten::add");
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_STR && v->len == 9);
        if (v)
            CHECK_STR(v->u.s, "aten::add");
        djn_buf_reset(&b);
        djn_enc_str(&b, "a\0b", 3);
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_STR && v->len == 3 && memcmp(v->u.s, "a\0b", 3) == 0);
        djn_arena_destroy(&a);
    }
    djn_buf_release(&b);
    free(src);
}

static void test_roundtrip_nested(void) {
    /* [1, [2, [3, "x"]], {"k": [nil, true], 7: -7}, {}, []] */
    djn_buf_t b = {0};
    djn_enc_array(&b, 5);
    djn_enc_int(&b, 1);
    djn_enc_array(&b, 2);
    djn_enc_int(&b, 2);
    djn_enc_array(&b, 2);
    djn_enc_int(&b, 3);
    djn_enc_cstr(&b, "x");
    djn_enc_map(&b, 2);
    djn_enc_cstr(&b, "k");
    djn_enc_array(&b, 2);
    djn_enc_nil(&b);
    djn_enc_bool(&b, true);
    djn_enc_int(&b, 7);
    djn_enc_int(&b, -7);
    djn_enc_map(&b, 0);
    djn_enc_array(&b, 0);
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    if (!v) {
        djn_arena_destroy(&a);
        djn_buf_release(&b);
        return;
    }
    CHECK(v->kind == DJN_V_LIST && v->len == 5);
    const djn_value_t *it = v->u.items;
    CHECK(it[0].kind == DJN_V_INT && it[0].u.i == 1);
    CHECK(it[1].kind == DJN_V_LIST && it[1].len == 2);
    CHECK(it[1].u.items[0].u.i == 2);
    const djn_value_t *in = &it[1].u.items[1];
    CHECK(in->kind == DJN_V_LIST && in->len == 2 && in->u.items[0].u.i == 3);
    CHECK(in->u.items[1].kind == DJN_V_STR && in->u.items[1].len == 1);
    const djn_value_t *map = &it[2];
    CHECK(map->kind == DJN_V_MAP && map->len == 2);
    const djn_value_t *k = djn_value_get(map, "k");
    CHECK(k && k->kind == DJN_V_LIST && k->len == 2);
    if (k) {
        CHECK(k->u.items[0].kind == DJN_V_NONE);
        CHECK(k->u.items[1].kind == DJN_V_BOOL && k->u.items[1].u.b);
    }
    CHECK(map->u.items[2].kind == DJN_V_INT && map->u.items[2].u.i == 7); /* int key */
    CHECK(map->u.items[3].kind == DJN_V_INT && map->u.items[3].u.i == -7);
    CHECK(djn_value_get(map, "missing") == NULL);
    CHECK(djn_value_get(map, "") == NULL);
    CHECK(djn_value_get(map, "kk") == NULL); /* prefix is not a match */
    CHECK(djn_value_get(v, "k") == NULL);    /* not a map */
    CHECK(djn_value_get(NULL, "k") == NULL);
    CHECK(it[3].kind == DJN_V_MAP && it[3].len == 0);
    CHECK(djn_value_get(&it[3], "k") == NULL);
    CHECK(it[4].kind == DJN_V_LIST && it[4].len == 0);
    djn_arena_destroy(&a);

    /* Widths: array16/map16 and array32 (via a hand-written header). */
    djn_buf_reset(&b);
    djn_enc_array(&b, 1000);
    for (int i = 0; i < 1000; i++)
        djn_enc_int(&b, i);
    a = djn_arena_new();
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    CHECK(v && v->kind == DJN_V_LIST && v->len == 1000 && v->u.items[999].u.i == 999);
    djn_arena_destroy(&a);
    djn_buf_reset(&b);
    djn_enc_map(&b, 20);
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        djn_enc_cstr(&b, key);
        djn_enc_int(&b, i * 10);
    }
    a = djn_arena_new();
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    const djn_value_t *k19 = djn_value_get(v, "k19");
    CHECK(k19 && k19->kind == DJN_V_INT && k19->u.i == 190);
    djn_arena_destroy(&a);
    {
        static const uint8_t a32[] = {0xdd, 0, 0, 0, 2, 0x01, 0xc0};
        static const uint8_t m32[] = {0xdf, 0, 0, 0, 1, 0xa1, 'z', 0x05};
        EXPECT_VALUE_REJECT(a32, sizeof a32 - 1, DJN_ERR_PROTO, "exceeds the message");
        a = djn_arena_new();
        CHECK_EQ_INT(djn_decode_value(a32, sizeof a32, a, &v, err, ERRLEN), DJN_OK);
        CHECK(v && v->kind == DJN_V_LIST && v->len == 2 && v->u.items[1].kind == DJN_V_NONE);
        CHECK_EQ_INT(djn_decode_value(m32, sizeof m32, a, &v, err, ERRLEN), DJN_OK);
        const djn_value_t *z = djn_value_get(v, "z");
        CHECK(z && z->u.i == 5);
        djn_arena_destroy(&a);
    }
    djn_buf_release(&b);
}

static void test_roundtrip_tref(void) {
    djn_buf_t b = {0};
    for (unsigned nd = 0; nd <= DJN_MAX_DIMS; nd++) {
        int64_t sz[DJN_MAX_DIMS], st[DJN_MAX_DIMS];
        for (unsigned d = 0; d < nd; d++) {
            sz[d] = (int64_t)d + 1;
            st[d] = (d % 2 ? -1 : 1) * ((int64_t)1 << (2 * d)); /* negative strides too */
        }
        st[0] = nd ? INT64_MIN : 0;
        if (nd > 1)
            sz[1] = INT64_MAX; /* the codec carries values; extent checks are separate */
        djn_tref_t t =
            tref_make(nd == 3 ? UINT64_MAX : 0x0102030405060708ull + nd,
                      nd == 4 ? -5 : (int64_t)nd * 1000, (uint8_t)(nd % 12), (uint8_t)nd, sz, st);
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        djn_buf_reset(&b);
        djn_enc_tref(&b, &t);
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_TENSOR);
        if (v && v->kind == DJN_V_TENSOR) {
            CHECK(tref_eq(v->u.t, &t));
            CHECK_EQ_INT(v->u.t->ndim, nd);
            for (unsigned d = nd; d < DJN_MAX_DIMS; d++) /* unused dims are zero */
                CHECK(v->u.t->sizes[d] == 0 && v->u.t->strides[d] == 0);
        }
        djn_arena_destroy(&a);
    }
    /* Bytes on the wire are the documented little-endian layout. */
    {
        static const int64_t sz[1] = {0x0a0b}, st[1] = {-2};
        djn_tref_t t = tref_make(0x1122334455667788ull, 3, DJN_DTYPE_BF16, 1, sz, st);
        djn_buf_reset(&b);
        djn_enc_tref(&b, &t);
        /* ext8: c7 len type, then 18 + 16 bytes */
        CHECK_EQ_INT(b.len, 3 + 34);
        CHECK_EQ_INT(b.data[0], 0xc7);
        CHECK_EQ_INT(b.data[1], 34);
        CHECK_EQ_INT(b.data[2], DJN_EXT_TENSOR);
        CHECK_EQ_INT(b.data[3], 0x88); /* handle LE */
        CHECK_EQ_INT(b.data[10], 0x11);
        CHECK_EQ_INT(b.data[11], 3); /* offset LE */
        CHECK_EQ_INT(b.data[19], DJN_DTYPE_BF16);
        CHECK_EQ_INT(b.data[20], 1);
        CHECK_EQ_INT(b.data[21], 0x0b);
        CHECK_EQ_INT(b.data[22], 0x0a);
        CHECK_EQ_INT(b.data[29], 0xfe); /* stride -2 LE */
        CHECK_EQ_INT(b.data[36], 0xff);
    }
    djn_buf_release(&b);
}

static void test_roundtrip_complex(void) {
    const double pairs[][2] = {{1.5, -2.25}, {0.0, -0.0}, {INFINITY, -1e-310}, {DBL_MAX, 7}};
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        djn_buf_reset(&b);
        djn_enc_complex(&b, pairs[i][0], pairs[i][1]);
        CHECK_EQ_INT(b.len, 18); /* fixext16 */
        CHECK_EQ_INT(b.data[0], 0xd8);
        CHECK_EQ_INT(b.data[1], DJN_EXT_COMPLEX);
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_COMPLEX);
        if (v) {
            CHECK(memcmp(&v->u.c[0], &pairs[i][0], 8) == 0);
            CHECK(memcmp(&v->u.c[1], &pairs[i][1], 8) == 0);
        }
        djn_arena_destroy(&a);
    }
    djn_buf_release(&b);
}

/* Decoding then djn_enc_value reproduces the bytes of anything our encoder wrote. */
static void test_enc_value_echo(void) {
    djn_buf_t b = {0}, e = {0};
    djn_enc_array(&b, 12);
    djn_enc_nil(&b);
    djn_enc_bool(&b, true);
    djn_enc_int(&b, -70000);
    djn_enc_uint(&b, 300);
    djn_enc_float(&b, -0.5);
    djn_enc_complex(&b, 1, 2);
    djn_enc_cstr(&b, "hello");
    djn_enc_bin(&b, "\x00\x01\x02", 3);
    enc_tref_2x3(&b, 77);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "n");
    djn_enc_array(&b, 1);
    djn_enc_array(&b, 0);
    djn_enc_array(&b, 0);
    djn_enc_map(&b, 0);
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    if (v) {
        djn_enc_value(&e, v);
        CHECK(!e.failed);
        CHECK_EQ_INT(e.len, b.len);
        CHECK(e.len == b.len && memcmp(e.data, b.data, b.len) == 0);
    }
    /* An unsigned above 2^63 comes back as the same 64 bits (djn_value_t has no
     * signedness, so it is re-encoded as a negative int; decoding gives the same i). */
    djn_buf_reset(&b);
    djn_buf_reset(&e);
    djn_enc_uint(&b, UINT64_MAX - 5);
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    if (v) {
        djn_enc_value(&e, v);
        djn_value_t *w = NULL;
        CHECK_EQ_INT(dec_value(&e, a, &w, err), DJN_OK);
        CHECK(w && w->kind == DJN_V_INT && (uint64_t)w->u.i == UINT64_MAX - 5);
    }
    djn_arena_destroy(&a);
    djn_buf_release(&b);
    djn_buf_release(&e);
}

static void test_enc_error_reply(void) {
    djn_buf_t b = {0};
    djn_enc_error(&b, 5, 6, DJN_ERR_HANDLE, "handle 9 is not yours");
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    const djn_value_t *body = djn_value_get(v, "body");
    CHECK(djn_value_get(v, "type") && djn_value_get(v, "type")->u.i == DJN_MSG_ERROR);
    CHECK(djn_value_get(v, "sid") && djn_value_get(v, "sid")->u.i == 5);
    CHECK(djn_value_get(v, "seq") && djn_value_get(v, "seq")->u.i == 6);
    CHECK(djn_value_get(body, "code") && djn_value_get(body, "code")->u.i == DJN_ERR_HANDLE);
    CHECK(djn_value_get(body, "msg") && djn_value_get(body, "msg")->kind == DJN_V_STR);
    if (djn_value_get(body, "msg"))
        CHECK_STR(djn_value_get(body, "msg")->u.s, "handle 9 is not yours");
    /* NULL text: the status words. */
    djn_buf_reset(&b);
    djn_enc_error(&b, 5, 7, DJN_ERR_LIMIT, NULL);
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    body = djn_value_get(v, "body");
    if (djn_value_get(body, "msg"))
        CHECK_STR(djn_value_get(body, "msg")->u.s, djn_status_str(DJN_ERR_LIMIT));
    else
        CHECK(!"error reply without msg");
    djn_arena_destroy(&a);
    /* An error reply is not a request. */
    djn_buf_reset(&b);
    djn_enc_error(&b, 5, 7, DJN_ERR_OP, "x");
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "unknown message type 65");
    djn_buf_release(&b);
}

static void test_buf_growth(void) {
    djn_buf_t b = {0};
    for (int i = 0; i < 10000; i++)
        djn_buf_raw(&b, "abcdefg", 7);
    CHECK(!b.failed);
    CHECK_EQ_INT(b.len, 70000);
    CHECK(b.cap >= b.len);
    CHECK(memcmp(b.data + 69993, "abcdefg", 7) == 0);
    size_t cap = b.cap;
    djn_buf_reset(&b);
    CHECK_EQ_INT(b.len, 0);
    CHECK_EQ_INT(b.cap, cap);
    CHECK_EQ_INT(djn_mem_in_use(), (int64_t)cap); /* the counter sees the buffer */
    djn_buf_release(&b);
    CHECK(b.data == NULL && b.cap == 0);
    djn_buf_release(&b); /* twice is harmless */
}

/* ------------------------------------------------------------------ 2. messages */

static void test_msg_hello(void) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_HELLO, 0, 1);
    djn_enc_map(&b, 2);
    djn_enc_cstr(&b, "version");
    djn_enc_uint(&b, DJN_PROTO_VERSION);
    djn_enc_cstr(&b, "client");
    djn_enc_cstr(&b, "djinn-python 0.1 pid 1234");
    uint64_t seq = 0;
    djn_msg_t *m = NULL;
    char err[ERRLEN] = "";
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 0, &m, &seq, err, ERRLEN), DJN_OK);
    CHECK_EQ_INT(seq, 1);
    CHECK(m != NULL);
    if (m) {
        CHECK_EQ_INT(m->type, DJN_MSG_HELLO);
        CHECK_EQ_INT(m->sid, 0);
        CHECK_EQ_INT(m->seq, 1);
        CHECK_EQ_INT(m->u.hello.version, DJN_PROTO_VERSION);
        CHECK_STR(m->u.hello.client, "djinn-python 0.1 pid 1234");
        CHECK(m->body && m->body->kind == DJN_V_MAP && m->body->len == 2);
        CHECK(m->arena != NULL);
    }
    djn_msg_free(&m);
    CHECK(m == NULL);
    djn_msg_free(&m);   /* NULL message: no-op */
    djn_msg_free(NULL); /* NULL pointer: no-op */

    /* Without client, and with a non-string client: "" */
    for (int variant = 0; variant < 2; variant++) {
        djn_buf_reset(&b);
        djn_enc_header(&b, DJN_MSG_HELLO, 0, 2);
        djn_enc_map(&b, variant ? 2 : 1);
        djn_enc_cstr(&b, "version");
        djn_enc_uint(&b, 7);
        if (variant) {
            djn_enc_cstr(&b, "client");
            djn_enc_int(&b, 12);
        }
        m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->u.hello.version, 7); /* the version check is the server's */
            CHECK_STR(m->u.hello.client, "");
        }
        djn_msg_free(&m);
    }
    /* Missing or mistyped version. */
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_HELLO, 0, 3);
    djn_enc_map(&b, 0);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "HELLO needs an integer 'version'");
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_HELLO, 0, 3);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "version");
    djn_enc_cstr(&b, "1");
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "HELLO needs an integer 'version'");
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_HELLO, 0, 3);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "version");
    djn_enc_float(&b, 1.0);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "HELLO needs an integer 'version'");
    djn_buf_release(&b);
}

/* A version that does not fit in 32 bits must not turn into a valid one. */
static void test_msg_hello_version_wide(void) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_HELLO, 0, 1);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "version");
    djn_enc_uint(&b, ((uint64_t)1 << 32) + DJN_PROTO_VERSION);
    djn_msg_t *m = NULL;
    char err[ERRLEN] = "";
    djn_status_t st = djn_msg_decode(b.data, b.len, 0, &m, NULL, err, ERRLEN);
    CHECK(st != DJN_OK || (m && m->u.hello.version != DJN_PROTO_VERSION));
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_msg_bodyless_types(void) {
    /* HAVE is here too: the codec keeps its body for the server to check. */
    static const uint8_t types[] = {DJN_MSG_HEARTBEAT, DJN_MSG_STATS, DJN_MSG_CLOSE,
                                    DJN_MSG_HAVE};
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof types; i++) {
        djn_buf_reset(&b);
        djn_enc_header(&b, types[i], UINT64_MAX, 1000 + i);
        djn_enc_map(&b, 1);
        djn_enc_cstr(&b, "extra"); /* unknown body keys are ignored */
        djn_enc_array(&b, 0);
        djn_msg_t *m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->type, types[i]);
            CHECK(m->sid == UINT64_MAX);
            CHECK_EQ_INT(m->seq, 1000 + i);
            CHECK(m->body && m->body->kind == DJN_V_MAP && m->body->len == 1);
            CHECK(djn_value_get(m->body, "extra") != NULL);
        }
        djn_msg_free(&m);
    }
    /* Field order in the header does not matter; extra header keys are ignored. */
    djn_buf_reset(&b);
    djn_enc_map(&b, 5);
    djn_enc_cstr(&b, "body");
    djn_enc_map(&b, 0);
    djn_enc_cstr(&b, "zzz");
    djn_enc_nil(&b);
    djn_enc_cstr(&b, "seq");
    djn_enc_uint(&b, 3);
    djn_enc_cstr(&b, "sid");
    djn_enc_uint(&b, 4);
    djn_enc_cstr(&b, "type");
    djn_enc_uint(&b, DJN_MSG_HEARTBEAT);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m && m->type == DJN_MSG_HEARTBEAT && m->sid == 4 && m->seq == 3);
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_msg_graph(void) {
    djn_buf_t b = {0};
    build_graph(&b);
    CHECK(!b.failed);
    uint64_t seq = 0;
    djn_msg_t *m = NULL;
    char err[ERRLEN] = "";
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, G_NFRAMES, &m, &seq, err, ERRLEN), DJN_OK);
    CHECK_EQ_INT(seq, G_SEQ);
    CHECK(m != NULL);
    if (!m) {
        printf("err: %s\n", err);
        djn_buf_release(&b);
        return;
    }
    CHECK_EQ_INT(m->type, DJN_MSG_GRAPH);
    CHECK(m->sid == G_SID);
    CHECK_EQ_INT(m->seq, G_SEQ);
    const djn_graph_req_t *g = &m->u.graph;
    CHECK_EQ_INT(g->device, 1);
    CHECK_EQ_INT(g->seed, 1234);
    /* The slot table: binds [10, 11, 12]; the nodes name slots 0..2. No "fp": 0, 0. */
    CHECK_EQ_INT(g->nbinds, 3);
    CHECK_EQ_INT(g->nslots, 3);
    CHECK(g->binds != NULL);
    if (g->binds && g->nbinds == 3)
        CHECK(g->binds[0] == 10 && g->binds[1] == 11 && g->binds[2] == 12);
    CHECK(g->fp[0] == 0 && g->fp[1] == 0);

    CHECK_EQ_INT(g->nallocs, 3);
    if (g->nallocs == 3) {
        CHECK(g->allocs[0].handle == 10 && g->allocs[0].nbytes == 4096);
        CHECK(g->allocs[1].handle == 11 && g->allocs[1].nbytes == 24);
        CHECK(g->allocs[2].handle == 12 && g->allocs[2].nbytes == 24);
    }
    CHECK_EQ_INT(g->nuploads, 2);
    if (g->nuploads == 2) {
        CHECK(g->uploads[0].handle == 10 && g->uploads[0].frame == 1);
        CHECK(g->uploads[1].handle == 11 && g->uploads[1].frame == 2);
        CHECK(!g->uploads[0].text && !g->uploads[1].text); /* [handle, frame]: not Text */
    }
    CHECK_EQ_INT(g->nnodes, 3);
    if (g->nnodes == 3) {
        const djn_node_t *n = &g->nodes[0];
        CHECK_STR(n->op, "aten::add");
        CHECK_STR(n->overload, "out");
        CHECK_EQ_INT(n->nargs, 3);
        CHECK_EQ_INT(n->nouts, 1);
        CHECK_EQ_INT(n->flags, 0);
        /* References keep their slots (not translated through binds). */
        CHECK(is_2x3(&n->args[0], 0));
        CHECK(is_2x3(&n->args[1], 1));
        CHECK(n->args[2].kind == DJN_V_FLOAT && n->args[2].u.f == 1.5);
        CHECK(is_2x3(&n->outs[0], 2));

        n = &g->nodes[1];
        CHECK_STR(n->op, "aten::nonzero");
        CHECK_STR(n->overload, "");
        CHECK_EQ_INT(n->nargs, 1);
        CHECK(is_2x3(&n->args[0], 2));
        CHECK_EQ_INT(n->nouts, 1);
        CHECK(n->outs[0].kind == DJN_V_INT && n->outs[0].u.i == 13);
        CHECK_EQ_INT(n->flags, DJN_NODE_DYNAMIC);

        n = &g->nodes[2];
        CHECK_STR(n->op, "aten::cat");
        CHECK_EQ_INT(n->nargs, 2);
        CHECK(n->args[0].kind == DJN_V_LIST && n->args[0].len == 2);
        if (n->args[0].kind == DJN_V_LIST && n->args[0].len == 2) {
            CHECK(is_2x3(&n->args[0].u.items[0], 0));
            const djn_value_t *t = &n->args[0].u.items[1];
            CHECK(t->kind == DJN_V_TENSOR);
            if (t->kind == DJN_V_TENSOR) {
                CHECK(t->u.t->handle == 1 && t->u.t->offset == 2 && t->u.t->ndim == 2);
                CHECK(t->u.t->sizes[0] == 3 && t->u.t->strides[0] == -1);
                CHECK(t->u.t->sizes[1] == 2 && t->u.t->strides[1] == 3);
            }
        }
        CHECK(n->args[1].kind == DJN_V_INT && n->args[1].u.i == 0);
        CHECK(n->nouts == 1 && n->outs[0].kind == DJN_V_NONE);
    }
    CHECK_EQ_INT(g->nfrees, 2);
    if (g->nfrees == 2)
        CHECK(g->frees[0] == 10 && g->frees[1] == 11);
    CHECK_EQ_INT(g->nfetches, 2);
    if (g->nfetches == 2) {
        CHECK(g->fetches[0].handle == 12 && g->fetches[0].offset == 0 &&
              g->fetches[0].nbytes == 24);
        CHECK(g->fetches[1].handle == 13 && g->fetches[1].offset == 8 &&
              g->fetches[1].nbytes == 16);
    }
    /* The raw body is there too. */
    CHECK(m->body && djn_value_get(m->body, "nodes") != NULL);
    djn_msg_free(&m);

    /* More frames than uploads is fine; exactly DJN_MAX_FRAMES too. */
    m = decode_ok(&b, DJN_MAX_FRAMES);
    CHECK(m != NULL);
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_msg_graph_defaults(void) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(&b, 0);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m) {
        const djn_graph_req_t *g = &m->u.graph;
        CHECK_EQ_INT(g->device, 0);
        CHECK_EQ_INT(g->seed, -1); /* absent: no reseed */
        CHECK(g->nallocs == 0 && g->nuploads == 0 && g->nnodes == 0 && g->nfrees == 0 &&
              g->nfetches == 0);
        CHECK(g->nbinds == 0 && g->nslots == 0); /* no binds, no slots */
        CHECK(g->fp[0] == 0 && g->fp[1] == 0);   /* no "fp": 0, 0 */
    }
    djn_msg_free(&m);

    /* "seed": nil is the same as no seed (the client sends nil when it has none). */
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "seed");
    djn_enc_nil(&b);
    m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m)
        CHECK_EQ_INT(m->u.graph.seed, -1);
    djn_msg_free(&m);

    /* Empty arrays, dev at its limit, seed 0, a node with no args/outs, names at limits. */
    char name[DJN_MAX_NAME + 1];
    memset(name, 'x', DJN_MAX_NAME);
    name[DJN_MAX_NAME] = '\0';
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(&b, 7);
    djn_enc_cstr(&b, "dev");
    djn_enc_uint(&b, 1024);
    djn_enc_cstr(&b, "seed");
    djn_enc_int(&b, 0);
    djn_enc_cstr(&b, "allocs");
    djn_enc_array(&b, 0);
    djn_enc_cstr(&b, "uploads");
    djn_enc_array(&b, 0);
    djn_enc_cstr(&b, "nodes");
    djn_enc_array(&b, 1);
    enc_node_start(&b, name, name);
    djn_enc_array(&b, 0);
    djn_enc_array(&b, 0);
    djn_enc_uint(&b, 0xffffffffu);
    djn_enc_cstr(&b, "frees");
    djn_enc_array(&b, 0);
    djn_enc_cstr(&b, "fetch");
    djn_enc_array(&b, 0);
    m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m) {
        const djn_graph_req_t *g = &m->u.graph;
        CHECK_EQ_INT(g->device, 1024);
        CHECK_EQ_INT(g->seed, 0);
        CHECK_EQ_INT(g->nnodes, 1);
        if (g->nnodes == 1) {
            CHECK_EQ_INT(strlen(g->nodes[0].op), DJN_MAX_NAME);
            CHECK_EQ_INT(strlen(g->nodes[0].overload), DJN_MAX_NAME);
            CHECK(g->nodes[0].nargs == 0 && g->nodes[0].nouts == 0);
            CHECK(g->nodes[0].flags == 0xffffffffu);
        }
        CHECK(g->nallocs == 0 && g->nuploads == 0 && g->nfrees == 0 && g->nfetches == 0);
    }
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_msg_fetch(void) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_FETCH, 3, 4);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "fetch");
    djn_enc_array(&b, 1);
    djn_enc_array(&b, 3);
    djn_enc_uint(&b, UINT64_MAX); /* handles are opaque 64-bit */
    djn_enc_uint(&b, 8);
    djn_enc_uint(&b, (uint64_t)1 << 40);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m) {
        CHECK_EQ_INT(m->type, DJN_MSG_FETCH);
        CHECK(m->sid == 3 && m->seq == 4);
        CHECK_EQ_INT(m->u.graph.nfetches, 1);
        if (m->u.graph.nfetches == 1) {
            CHECK(m->u.graph.fetches[0].handle == UINT64_MAX);
            CHECK(m->u.graph.fetches[0].offset == 8);
            CHECK(m->u.graph.fetches[0].nbytes == (uint64_t)1 << 40);
        }
        CHECK(m->u.graph.nnodes == 0 && m->u.graph.seed == -1);
    }
    djn_msg_free(&m);
    djn_buf_release(&b);
}

#define FP_HI 0x0123456789abcdefull
#define FP_LO 0xfedcba9876543210ull /* above 2^63: travels as uint64, compared bitwise */

/* "fp": [hi, lo] (the fragment's fingerprint) lands in g->fp; absent or [0, 0] is 0, 0. */
static void test_msg_graph_fp(void) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(&b, 3);
    djn_enc_cstr(&b, "binds");
    djn_enc_array(&b, 2);
    djn_enc_uint(&b, 40);
    djn_enc_uint(&b, 41);
    djn_enc_cstr(&b, "fp");
    djn_enc_array(&b, 2);
    djn_enc_uint(&b, FP_HI);
    djn_enc_uint(&b, FP_LO);
    djn_enc_cstr(&b, "nodes");
    djn_enc_array(&b, 1);
    enc_node_start(&b, "aten::relu", "");
    djn_enc_array(&b, 1);
    enc_tref_2x3(&b, 1);
    djn_enc_array(&b, 1);
    enc_tref_2x3(&b, 0);
    djn_enc_uint(&b, 0);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m) {
        const djn_graph_req_t *g = &m->u.graph;
        CHECK(g->fp[0] == FP_HI);
        CHECK(g->fp[1] == FP_LO);
        CHECK_EQ_INT(g->nbinds, 2);
        CHECK_EQ_INT(g->nslots, 2);
        CHECK(g->nnodes == 1);
        if (g->nnodes == 1) {
            CHECK(is_2x3(&g->nodes[0].args[0], 1));
            CHECK(is_2x3(&g->nodes[0].outs[0], 0));
        }
    }
    djn_msg_free(&m);

    /* [0, 0] and small values, through both encodings of an integer. */
    for (int v = 0; v < 2; v++) {
        djn_buf_reset(&b);
        djn_enc_header(&b, v ? DJN_MSG_FETCH : DJN_MSG_GRAPH, 1, 2);
        djn_enc_map(&b, 1);
        djn_enc_cstr(&b, "fp");
        djn_enc_array(&b, 2);
        djn_enc_int(&b, v ? 7 : 0);
        djn_enc_uint(&b, v ? 9 : 0);
        m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->u.graph.fp[0], v ? 7 : 0);
            CHECK_EQ_INT(m->u.graph.fp[1], v ? 9 : 0);
        }
        djn_msg_free(&m);
    }

    /* A malformed "fp" must never turn into a fingerprint: it is either refused or
     * left at 0, 0 (today's codec ignores it; the server then misses its plan cache). */
    for (int v = 0; v < 6; v++) {
        djn_buf_reset(&b);
        djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
        djn_enc_map(&b, 1);
        djn_enc_cstr(&b, "fp");
        switch (v) {
        case 0: djn_enc_uint(&b, FP_HI); break;
        case 1:
            djn_enc_array(&b, 1);
            djn_enc_uint(&b, FP_HI);
            break;
        case 2:
            djn_enc_array(&b, 3);
            djn_enc_uint(&b, FP_HI);
            djn_enc_uint(&b, FP_LO);
            djn_enc_uint(&b, 1);
            break;
        case 3:
            djn_enc_array(&b, 2);
            djn_enc_uint(&b, FP_HI);
            djn_enc_cstr(&b, "lo");
            break;
        case 4:
            djn_enc_array(&b, 2);
            djn_enc_float(&b, 1.0);
            djn_enc_uint(&b, FP_LO);
            break;
        default: djn_enc_nil(&b); break;
        }
        m = NULL;
        char err[ERRLEN] = "";
        djn_status_t st = djn_msg_decode(b.data, b.len, 0, &m, NULL, err, ERRLEN);
        if (st == DJN_OK) {
            CHECK(m != NULL);
            if (m)
                CHECK(m->u.graph.fp[0] == 0 && m->u.graph.fp[1] == 0);
        } else {
            CHECK_EQ_INT(st, DJN_ERR_PROTO);
            CHECK(m == NULL);
            CHECK_HAS(err, "GRAPH:");
        }
        djn_msg_free(&m);
    }
    djn_buf_release(&b);
}

/* GRAPH_CACHED: a GRAPH without its nodes (the server holds them under "fp"), as the
 * client sends it: dev, seed nil, binds, fp, allocs, uploads, frees, fetch. */
static void build_graph_cached(djn_buf_t *b) {
    djn_enc_header(b, DJN_MSG_GRAPH_CACHED, G_SID, G_SEQ + 1);
    djn_enc_map(b, 8);
    djn_enc_cstr(b, "dev");
    djn_enc_uint(b, 2);
    djn_enc_cstr(b, "seed");
    djn_enc_nil(b);
    djn_enc_cstr(b, "binds");
    djn_enc_array(b, 4);
    djn_enc_uint(b, 20);
    djn_enc_uint(b, 21);
    djn_enc_uint(b, 22);
    djn_enc_uint(b, (uint64_t)1 << 62); /* a server-issued handle may be bound too */
    djn_enc_cstr(b, "fp");
    djn_enc_array(b, 2);
    djn_enc_uint(b, FP_HI);
    djn_enc_uint(b, FP_LO);
    djn_enc_cstr(b, "allocs");
    djn_enc_array(b, 2);
    enc_pair(b, 21, 24);
    enc_pair(b, 22, 24);
    djn_enc_cstr(b, "uploads");
    djn_enc_array(b, 2);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 21);
    djn_enc_uint(b, 1);
    djn_enc_bool(b, true);
    enc_pair(b, 22, 2);
    djn_enc_cstr(b, "frees");
    djn_enc_array(b, 1);
    djn_enc_uint(b, 20);
    djn_enc_cstr(b, "fetch");
    djn_enc_array(b, 1);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 22);
    djn_enc_uint(b, 4);
    djn_enc_uint(b, 20);
}

static void test_msg_graph_cached(void) {
    djn_buf_t b = {0};
    build_graph_cached(&b);
    CHECK(!b.failed);
    uint64_t seq = 0;
    djn_msg_t *m = NULL;
    char err[ERRLEN] = "";
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 2, &m, &seq, err, ERRLEN), DJN_OK);
    CHECK_EQ_INT(seq, G_SEQ + 1);
    CHECK(m != NULL);
    if (!m) {
        printf("err: %s\n", err);
        djn_buf_release(&b);
        return;
    }
    CHECK_EQ_INT(m->type, DJN_MSG_GRAPH_CACHED);
    CHECK(m->sid == G_SID);
    CHECK_EQ_INT(m->seq, G_SEQ + 1);
    const djn_graph_req_t *g = &m->u.graph;
    CHECK_EQ_INT(g->device, 2);
    CHECK_EQ_INT(g->seed, -1); /* nil: no reseed */
    CHECK_EQ_INT(g->nbinds, 4);
    if (g->binds && g->nbinds == 4)
        CHECK(g->binds[0] == 20 && g->binds[1] == 21 && g->binds[2] == 22 &&
              g->binds[3] == (uint64_t)1 << 62);
    CHECK(g->fp[0] == FP_HI && g->fp[1] == FP_LO);
    CHECK_EQ_INT(g->nnodes, 0); /* the nodes are the server's */
    CHECK_EQ_INT(g->nslots, 0); /* no node names a slot here */
    CHECK_EQ_INT(g->nallocs, 2);
    if (g->nallocs == 2) {
        CHECK(g->allocs[0].handle == 21 && g->allocs[0].nbytes == 24);
        CHECK(g->allocs[1].handle == 22 && g->allocs[1].nbytes == 24);
    }
    CHECK_EQ_INT(g->nuploads, 2);
    if (g->nuploads == 2) {
        CHECK(g->uploads[0].handle == 21 && g->uploads[0].frame == 1 && g->uploads[0].text);
        CHECK(g->uploads[1].handle == 22 && g->uploads[1].frame == 2 && !g->uploads[1].text);
    }
    CHECK_EQ_INT(g->nfrees, 1);
    if (g->nfrees == 1)
        CHECK(g->frees[0] == 20);
    CHECK_EQ_INT(g->nfetches, 1);
    if (g->nfetches == 1)
        CHECK(g->fetches[0].handle == 22 && g->fetches[0].offset == 4 &&
              g->fetches[0].nbytes == 20);
    CHECK(m->body && djn_value_get(m->body, "nodes") == NULL);
    djn_msg_free(&m);

    /* GRAPH_CACHED goes through GRAPH's checks: frames, binds, client handles. */
    EXPECT_REJECT_BUF(&b, 1, DJN_ERR_PROTO, "GRAPH: upload names frame 2 but the message has 1");
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_GRAPH_CACHED, 1, 2);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "binds");
    djn_enc_array(&b, 2);
    djn_enc_uint(&b, 3);
    djn_enc_uint(&b, 0);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'binds' must hold non-zero handles");
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_GRAPH_CACHED, 1, 2);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "allocs");
    djn_enc_array(&b, 1);
    enc_pair(&b, 0, 8);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: client handles must be in [1, 2^62)");

    /* An empty GRAPH_CACHED body: every field at its default. */
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_GRAPH_CACHED, 1, 2);
    djn_enc_map(&b, 0);
    m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m) {
        CHECK_EQ_INT(m->type, DJN_MSG_GRAPH_CACHED);
        const djn_graph_req_t *d = &m->u.graph;
        CHECK(d->nbinds == 0 && d->nslots == 0 && d->fp[0] == 0 && d->fp[1] == 0);
        CHECK(d->seed == -1 && d->device == 0 && d->nnodes == 0 && d->nallocs == 0 &&
              d->nuploads == 0 && d->nfrees == 0 && d->nfetches == 0);
    }
    djn_msg_free(&m);
    djn_buf_release(&b);
}

/* HAVE: accepted by the codec with its raw body; the server walks the body itself. */
static void test_msg_have(void) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_HAVE, 5, 6);
    djn_enc_map(&b, 2);
    djn_enc_cstr(&b, "dev");
    djn_enc_uint(&b, 0);
    djn_enc_cstr(&b, "items");
    djn_enc_array(&b, 2);
    for (int i = 0; i < 2; i++) {
        djn_enc_array(&b, 4);
        djn_enc_uint(&b, 30 + (uint64_t)i);
        djn_enc_uint(&b, FP_HI + (uint64_t)i);
        djn_enc_uint(&b, FP_LO + (uint64_t)i);
        djn_enc_uint(&b, 4096);
    }
    uint64_t seq = 0;
    djn_msg_t *m = NULL;
    char err[ERRLEN] = "";
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 0, &m, &seq, err, ERRLEN), DJN_OK);
    CHECK_EQ_INT(seq, 6);
    CHECK(m != NULL);
    if (m) {
        CHECK_EQ_INT(m->type, DJN_MSG_HAVE);
        CHECK(m->sid == 5 && m->seq == 6);
        CHECK(m->body && m->body->kind == DJN_V_MAP && m->body->len == 2);
        const djn_value_t *dev = djn_value_get(m->body, "dev");
        CHECK(dev && dev->kind == DJN_V_INT && dev->u.i == 0);
        const djn_value_t *items = djn_value_get(m->body, "items");
        CHECK(items && items->kind == DJN_V_LIST && items->len == 2);
        if (items && items->kind == DJN_V_LIST && items->len == 2) {
            for (uint32_t i = 0; i < 2; i++) {
                const djn_value_t *e = &items->u.items[i];
                CHECK(e->kind == DJN_V_LIST && e->len == 4);
                if (e->kind == DJN_V_LIST && e->len == 4) {
                    CHECK((uint64_t)e->u.items[0].u.i == 30 + i);
                    CHECK((uint64_t)e->u.items[1].u.i == FP_HI + i);
                    CHECK((uint64_t)e->u.items[2].u.i == FP_LO + i);
                    CHECK(e->u.items[3].u.i == 4096);
                }
            }
        }
    }
    djn_msg_free(&m);

    /* The codec does not check HAVE's body fields (the server answers a bad one)... */
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_HAVE, 5, 7);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "items");
    djn_enc_cstr(&b, "not an array");
    m = decode_ok(&b, 0);
    CHECK(m && m->type == DJN_MSG_HAVE && djn_value_get(m->body, "items") != NULL);
    djn_msg_free(&m);
    /* ...but the body must still be a map. */
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_HAVE, 5, 8);
    djn_enc_array(&b, 0);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "header 'body' must be a map");
    djn_buf_release(&b);
}

/* ------------------------------------------------------------------ 3. malformed */

static void test_reject_empty(void) {
    static const uint8_t one[1] = {0};
    EXPECT_REJECT(one, 0, 0, DJN_ERR_PROTO, "empty header frame");
    EXPECT_VALUE_REJECT(one, 0, DJN_ERR_PROTO, "empty header frame");
    /* Not a map at all. */
    EXPECT_REJECT(one, 1, 0, DJN_ERR_PROTO, "header must be a map");
    static const uint8_t nil[1] = {0xc0}, arr[1] = {0x90}, str[2] = {0xa1, 'x'};
    EXPECT_REJECT(nil, 1, 0, DJN_ERR_PROTO, "header must be a map");
    EXPECT_REJECT(arr, 1, 0, DJN_ERR_PROTO, "header must be a map");
    EXPECT_REJECT(str, 2, 0, DJN_ERR_PROTO, "header must be a map");
    static const uint8_t emptymap[1] = {0x80};
    EXPECT_REJECT(emptymap, 1, 0, DJN_ERR_PROTO, "header must be a map");
}

/* A zero-length frame from ZeroMQ may come with a NULL data pointer. */
static void test_reject_empty_null(void) {
    EXPECT_REJECT(NULL, 0, 0, DJN_ERR_PROTO, "empty header frame");
}

static void test_reject_truncations(void) {
    djn_buf_t b = {0};
    build_graph(&b);
    int saw_truncated = 0, saw_exceeds = 0;
    for (size_t n = 0; n < b.len; n++) {
        /* A private copy of exactly n bytes, so ASan sees any read past the end. */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, b.data, n);
        char err[ERRLEN];
        const char *why = s_reject(p, n, G_NFRAMES, DJN_ERR_PROTO, NULL, err);
        if (why)
            printf("prefix of %zu bytes: %s (%s)\n", n, why, err);
        CHECK(why == NULL);
        if (strstr(err, "truncated msgpack at byte "))
            saw_truncated++;
        else if (strstr(err, "exceeds the message"))
            saw_exceeds++;
        else if (n != 0) {
            printf("prefix of %zu bytes: unexpected error \"%s\"\n", n, err);
            CHECK(!"truncation reported as something else");
        }
        free(p);
    }
    CHECK(saw_truncated > 0);
    CHECK(saw_exceeds > 0);
    /* "truncated msgpack at byte N" names an offset inside the bytes it was given. */
    for (size_t n = 1; n < b.len; n++) {
        char err[ERRLEN];
        (void)s_reject(b.data, n, G_NFRAMES, DJN_ERR_PROTO, NULL, err);
        const char *at = strstr(err, "truncated msgpack at byte ");
        if (at) {
            unsigned long long off = strtoull(at + strlen("truncated msgpack at byte "), NULL, 10);
            if (off > n) {
                printf("prefix of %zu bytes: \"%s\"\n", n, err);
                CHECK(off <= n);
                break;
            }
        }
    }
    /* The whole message still decodes (the loop did not touch it). */
    djn_msg_t *m = decode_ok(&b, G_NFRAMES);
    CHECK(m != NULL);
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_reject_trailing(void) {
    djn_buf_t b = {0};
    build_graph(&b);
    djn_buf_raw(&b, "\xc0", 1);
    EXPECT_REJECT_BUF(&b, G_NFRAMES, DJN_ERR_PROTO, "1 trailing bytes after the msgpack header");
    djn_buf_raw(&b, "\x00\x00", 2);
    EXPECT_REJECT_BUF(&b, G_NFRAMES, DJN_ERR_PROTO, "3 trailing bytes");
    /* Two complete values back to back. */
    djn_buf_reset(&b);
    djn_enc_int(&b, 1);
    djn_enc_int(&b, 2);
    EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_PROTO, "1 trailing bytes");
    djn_buf_release(&b);
}

static void test_reject_hostile_lengths(void) {
    /* array32 claiming 0xFFFFFFFF elements in a 10-byte buffer */
    static const uint8_t arr[10] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0};
    EXPECT_VALUE_REJECT(arr, sizeof arr, DJN_ERR_PROTO, "container of 4294967295 items");
    EXPECT_REJECT(arr, sizeof arr, 0, DJN_ERR_PROTO, "exceeds the message");
    static const uint8_t map[10] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0};
    EXPECT_VALUE_REJECT(map, sizeof map, DJN_ERR_PROTO, "exceeds the message");
    static const uint8_t a16[5] = {0xdc, 0xff, 0xff, 0xc0, 0xc0};
    EXPECT_VALUE_REJECT(a16, sizeof a16, DJN_ERR_PROTO, "container of 65535 items");
    static const uint8_t m16[5] = {0xde, 0x00, 0x03, 0xc0, 0xc0};
    EXPECT_VALUE_REJECT(m16, sizeof m16, DJN_ERR_PROTO, "container of 6 items");
    static const uint8_t fixarr[3] = {0x9f, 0xc0, 0xc0};
    EXPECT_VALUE_REJECT(fixarr, sizeof fixarr, DJN_ERR_PROTO, "container of 15 items");
    /* str/bin/ext lengths past the end */
    static const uint8_t s32[10] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b', 'c', 'd', 'e'};
    EXPECT_VALUE_REJECT(s32, sizeof s32, DJN_ERR_PROTO, "truncated msgpack at byte 5");
    static const uint8_t b32[10] = {0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5};
    EXPECT_VALUE_REJECT(b32, sizeof b32, DJN_ERR_PROTO, "truncated msgpack at byte 5");
    static const uint8_t b16[4] = {0xc5, 0x01, 0x00, 1};
    EXPECT_VALUE_REJECT(b16, sizeof b16, DJN_ERR_PROTO, "truncated msgpack at byte 3");
    static const uint8_t s8[3] = {0xd9, 0x05, 'a'};
    EXPECT_VALUE_REJECT(s8, sizeof s8, DJN_ERR_PROTO, "truncated msgpack at byte 2");
    static const uint8_t fixs[3] = {0xbf, 'a', 'b'};
    EXPECT_VALUE_REJECT(fixs, sizeof fixs, DJN_ERR_PROTO, "truncated msgpack at byte 1");
    static const uint8_t e32[10] = {0xc9, 0xff, 0xff, 0xff, 0xff, DJN_EXT_TENSOR, 0, 0, 0, 0};
    EXPECT_VALUE_REJECT(e32, sizeof e32, DJN_ERR_PROTO, "truncated msgpack at byte 6");
    static const uint8_t e16[6] = {0xc8, 0x01, 0x00, DJN_EXT_COMPLEX, 0, 0};
    EXPECT_VALUE_REJECT(e16, sizeof e16, DJN_ERR_PROTO, "truncated msgpack");
    /* Length prefixes themselves cut short. */
    static const uint8_t cut[][2] = {{0xdd, 0xff}, {0xdf, 0x00}, {0xdc, 0x01}, {0xde, 0x00},
                                     {0xdb, 0x00}, {0xda, 0x00}, {0xc6, 0x00}, {0xc5, 0x00},
                                     {0xc9, 0x00}, {0xc8, 0x00}, {0xcf, 0x00}, {0xcb, 0x00}};
    for (size_t i = 0; i < sizeof cut / sizeof cut[0]; i++)
        EXPECT_VALUE_REJECT(cut[i], 2, DJN_ERR_PROTO, "truncated msgpack");
    static const uint8_t c1[1] = {0xd4}, c2[1] = {0xc7}, c3[1] = {0xd9};
    EXPECT_VALUE_REJECT(c1, 1, DJN_ERR_PROTO, "truncated msgpack at byte 1");
    EXPECT_VALUE_REJECT(c2, 1, DJN_ERR_PROTO, "truncated msgpack at byte 1");
    EXPECT_VALUE_REJECT(c3, 1, DJN_ERR_PROTO, "truncated msgpack at byte 1");
    /* The never-used byte 0xc1. */
    static const uint8_t inv[3] = {0x92, 0x01, 0xc1};
    EXPECT_VALUE_REJECT(inv, sizeof inv, DJN_ERR_PROTO, "invalid msgpack byte 0xc1 at 2");
}

/* DJN_MAX_ITEMS bounds any one container; a map's pairs count twice. */
static void test_reject_item_limit(void) {
    djn_buf_t b = {0};
    djn_enc_array(&b, DJN_MAX_ITEMS);
    for (uint32_t i = 0; i < DJN_MAX_ITEMS; i++)
        djn_enc_nil(&b);
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    CHECK(v && v->kind == DJN_V_LIST && v->len == DJN_MAX_ITEMS);
    djn_arena_destroy(&a);
    djn_buf_reset(&b);
    djn_enc_array(&b, DJN_MAX_ITEMS + 1);
    for (uint32_t i = 0; i < DJN_MAX_ITEMS + 1; i++)
        djn_enc_nil(&b);
    EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_PROTO, "container of 65537 items");
    djn_buf_release(&b);
}

/* DJN_MAX_OBJECTS: 65 arrays of 65535 nils is 4,259,841 objects. */
static void test_reject_object_limit(void) {
    djn_buf_t b = {0};
    djn_enc_array(&b, 65);
    uint8_t *nils = malloc(65535);
    memset(nils, 0xc0, 65535);
    for (int i = 0; i < 65; i++) {
        djn_enc_array(&b, 65535);
        djn_buf_raw(&b, nils, 65535);
    }
    free(nils);
    CHECK(!b.failed);
    EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_PROTO, "more than 4194304 msgpack objects");
    djn_buf_release(&b);
}

static void enc_nested(djn_buf_t *b, int levels) {
    for (int i = 0; i < levels - 1; i++)
        djn_enc_array(b, 1);
    djn_enc_array(b, 0);
}

static void test_reject_depth(void) {
    djn_buf_t b = {0};
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    enc_nested(&b, DJN_MAX_DEPTH);
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    djn_arena_destroy(&a);
    djn_buf_reset(&b);
    enc_nested(&b, DJN_MAX_DEPTH + 1);
    EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_PROTO, "msgpack nesting deeper than 8");
    /* Maps count as levels too. */
    djn_buf_reset(&b);
    for (int i = 0; i < DJN_MAX_DEPTH + 1; i++) {
        djn_enc_map(&b, 1);
        djn_enc_int(&b, i);
    }
    djn_enc_nil(&b);
    EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_PROTO, "nesting deeper");
    djn_buf_reset(&b); /* 8 levels of maps are fine */
    for (int i = 0; i < DJN_MAX_DEPTH; i++) {
        djn_enc_map(&b, 1);
        djn_enc_int(&b, i);
    }
    djn_enc_nil(&b);
    a = djn_arena_new();
    CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
    djn_arena_destroy(&a);
    /* Deep garbage: 100,000 nested arrays must not recurse 100,000 deep. */
    djn_buf_reset(&b);
    enc_nested(&b, 100000);
    EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_PROTO, "nesting deeper");

    /* Inside a message: header(0) > body(1) > nodes(2) > node(3) > args(4), so args may
     * hold three more levels of lists and not four. */
    for (int extra = 3; extra <= 4; extra++) {
        djn_buf_reset(&b);
        djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
        djn_enc_map(&b, 1);
        djn_enc_cstr(&b, "nodes");
        djn_enc_array(&b, 1);
        enc_node_start(&b, "aten::x", "");
        djn_enc_array(&b, 1);
        enc_nested(&b, extra);
        djn_enc_array(&b, 0);
        djn_enc_uint(&b, 0);
        if (extra == 3) {
            djn_msg_t *m = decode_ok(&b, 0);
            CHECK(m != NULL);
            djn_msg_free(&m);
        } else {
            EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "msgpack nesting deeper than 8");
        }
    }
    djn_buf_release(&b);
}

/* Raw ext: ext8 header with `n` payload bytes of `fill`, with byte 17 set to ndim. */
static void raw_ext(djn_buf_t *b, int8_t type, size_t n, int ndim_byte) {
    uint8_t hdr[4];
    if (n <= 255) {
        hdr[0] = 0xc7;
        hdr[1] = (uint8_t)n;
        hdr[2] = (uint8_t)type;
        djn_buf_raw(b, hdr, 3);
    } else {
        hdr[0] = 0xc8;
        hdr[1] = (uint8_t)(n >> 8);
        hdr[2] = (uint8_t)n;
        hdr[3] = (uint8_t)type;
        djn_buf_raw(b, hdr, 4);
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)(i == 16 ? DJN_DTYPE_F32 : i == 17 && ndim_byte >= 0 ? ndim_byte : 0);
        djn_buf_raw(b, &c, 1);
    }
}

static void test_reject_ext(void) {
    djn_buf_t b = {0};
    /* Unknown extension types. */
    static const uint8_t fx3[3] = {0xd4, 0x03, 0x00};
    EXPECT_VALUE_REJECT(fx3, sizeof fx3, DJN_ERR_PROTO, "unknown msgpack extension type 3");
    static const uint8_t fx0[3] = {0xd4, 0x00, 0x00};
    EXPECT_VALUE_REJECT(fx0, sizeof fx0, DJN_ERR_PROTO, "unknown msgpack extension type 0");
    static const uint8_t ts[6] = {0xd6, 0xff, 0, 0, 0, 0}; /* msgpack timestamp32 */
    EXPECT_VALUE_REJECT(ts, sizeof ts, DJN_ERR_PROTO, "unknown msgpack extension type -1");
    static const uint8_t e8[4] = {0xc7, 0x01, 0x7f, 0x00};
    EXPECT_VALUE_REJECT(e8, sizeof e8, DJN_ERR_PROTO, "unknown msgpack extension type 127");

    /* Tensor references of the wrong length for their ndim. */
    raw_ext(&b, DJN_EXT_TENSOR, 18, 0); /* ndim 0, 18 bytes: fine */
    {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_TENSOR && v->u.t->ndim == 0 && v->u.t->dtype == DJN_DTYPE_F32);
        djn_arena_destroy(&a);
    }
    static const struct {
        size_t n;
        int ndim;
    } bad[] = {
        {17, -1},
        {0, -1},
        {18, 1},
        {18 + 16 * 2 - 1, 2},
        {18 + 16 * 2 + 1, 2},
        {18 + 16 * 2, 3},
        {18 + 16 * 17, 17},
        {18 + 16 * 16, 17},
        {18 + 16 * 255, 255},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        djn_buf_reset(&b);
        raw_ext(&b, DJN_EXT_TENSOR, bad[i].n, bad[i].ndim);
        EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_PROTO, "malformed tensor reference at byte");
    }
    /* fixext16 with the tensor type: 16 < 18 bytes. */
    uint8_t fx16[18] = {0xd8, DJN_EXT_TENSOR};
    EXPECT_VALUE_REJECT(fx16, sizeof fx16, DJN_ERR_PROTO, "malformed tensor reference");
    /* ndim 16 with the right length is the largest accepted. */
    djn_buf_reset(&b);
    raw_ext(&b, DJN_EXT_TENSOR, 18 + 16 * 16, 16);
    {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_TENSOR && v->u.t->ndim == 16);
        djn_arena_destroy(&a);
    }
    /* Complex numbers of the wrong length. */
    static const uint8_t cx8[10] = {0xd7, DJN_EXT_COMPLEX};
    EXPECT_VALUE_REJECT(cx8, sizeof cx8, DJN_ERR_PROTO, "malformed complex number");
    djn_buf_reset(&b);
    raw_ext(&b, DJN_EXT_COMPLEX, 17, -1);
    EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_PROTO, "malformed complex number");
    djn_buf_reset(&b);
    raw_ext(&b, DJN_EXT_COMPLEX, 16, -1); /* ext8 form of the right length is fine */
    {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_COMPLEX);
        djn_arena_destroy(&a);
    }

    /* Inside a message, as a node argument. */
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "nodes");
    djn_enc_array(&b, 1);
    enc_node_start(&b, "aten::x", "");
    djn_enc_array(&b, 1);
    raw_ext(&b, DJN_EXT_TENSOR, 18 + 16 * 17, 17);
    djn_enc_array(&b, 0);
    djn_enc_uint(&b, 0);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "malformed tensor reference");
    djn_buf_release(&b);
}

/* A header of exactly DJN_MAX_HEADER_BYTES is accepted; one byte more is DJN_ERR_LIMIT,
 * refused before anything is read or allocated. */
static void test_reject_header_limit(void) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_HEARTBEAT, 1, 77);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "pad");
    size_t payload = DJN_MAX_HEADER_BYTES - b.len - 5; /* bin32 header */
    uint8_t *pad = calloc(1, payload);
    djn_enc_bin(&b, pad, payload);
    free(pad);
    CHECK_EQ_INT(b.len, DJN_MAX_HEADER_BYTES);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m) {
        const djn_value_t *p = djn_value_get(m->body, "pad");
        CHECK(p && p->kind == DJN_V_BIN && p->len == payload);
    }
    djn_msg_free(&m);
    djn_buf_raw(&b, "\xc0", 1);
    uint64_t seq = 0;
    char err[ERRLEN] = "";
    m = (djn_msg_t *)(uintptr_t)1;
    int64_t mem0 = djn_mem_in_use();
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 0, &m, &seq, err, ERRLEN), DJN_ERR_LIMIT);
    CHECK(m == NULL);
    CHECK_HAS(err, "header of 16777217 bytes exceeds the limit of 16777216");
    CHECK_EQ_INT(seq, 0); /* nothing was read */
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_LIMIT, "exceeds the limit");
    EXPECT_VALUE_REJECT(b.data, b.len, DJN_ERR_LIMIT, "exceeds the limit");
    djn_buf_release(&b);
    /* The length alone decides: the bytes are never touched. */
    static const uint8_t tiny[1] = {0x80};
    EXPECT_VALUE_REJECT(tiny, (size_t)DJN_MAX_HEADER_BYTES + 1, DJN_ERR_LIMIT, "exceeds the limit");
    EXPECT_VALUE_REJECT(tiny, SIZE_MAX, DJN_ERR_LIMIT, "exceeds the limit");
}

static void test_reject_frames_limit(void) {
    djn_buf_t b = {0};
    build_graph(&b);
    EXPECT_REJECT_BUF(&b, DJN_MAX_FRAMES + 1, DJN_ERR_LIMIT, "frames, the limit is 4096");
    EXPECT_REJECT_BUF(&b, UINT32_MAX, DJN_ERR_LIMIT, "message has 4294967295 frames");
    djn_msg_t *m = decode_ok(&b, DJN_MAX_FRAMES);
    CHECK(m != NULL);
    djn_msg_free(&m);
    djn_buf_release(&b);
}

/* GRAPH with binds [100, 101, 102] and one more body field `key` encoded by `fn`. */
typedef void (*enc_field_fn)(djn_buf_t *b);

static void graph_with(djn_buf_t *b, uint8_t type, const char *key, enc_field_fn fn) {
    djn_buf_reset(b);
    djn_enc_header(b, type, 1, 2);
    djn_enc_map(b, 2);
    djn_enc_cstr(b, "binds");
    djn_enc_array(b, 3);
    djn_enc_uint(b, 100);
    djn_enc_uint(b, 101);
    djn_enc_uint(b, 102);
    djn_enc_cstr(b, key);
    fn(b);
}

static void f_upload_frame0(djn_buf_t *b) {
    djn_enc_array(b, 1);
    enc_pair(b, 10, 0);
}
static void f_upload_frame3(djn_buf_t *b) {
    djn_enc_array(b, 1);
    enc_pair(b, 10, 3);
}
static void f_upload_frame2(djn_buf_t *b) {
    djn_enc_array(b, 1);
    enc_pair(b, 10, 2);
}
static void f_upload_neg(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 2);
    djn_enc_uint(b, 10);
    djn_enc_int(b, -1);
}
static void f_upload_wide(djn_buf_t *b) {
    djn_enc_array(b, 1);
    enc_pair(b, 10, ((uint64_t)1 << 32) + 1); /* must not wrap to frame 1 */
}
static void f_upload_str(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 2);
    djn_enc_uint(b, 10);
    djn_enc_cstr(b, "1");
}
static void f_upload_arity(djn_buf_t *b) { /* four elements: too many */
    djn_enc_array(b, 1);
    djn_enc_array(b, 4);
    djn_enc_uint(b, 10);
    djn_enc_uint(b, 1);
    djn_enc_bool(b, true);
    djn_enc_uint(b, 1);
}
static void f_upload_arity1(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 1);
    djn_enc_uint(b, 10);
}
static void f_upload_notlist(djn_buf_t *b) { djn_enc_map(b, 0); }
static void f_upload_item_notlist(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_uint(b, 10);
}
/* [handle, frame, text] with the given handle, frame and third element. */
static uint64_t s_up_handle, s_up_frame;
static int s_up_third; /* 0: false, 1: true, 2: the integer 1, 3: the string "1", -1: none */
static void f_upload_one(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, s_up_third < 0 ? 2 : 3);
    djn_enc_uint(b, s_up_handle);
    djn_enc_uint(b, s_up_frame);
    switch (s_up_third) {
    case 0: djn_enc_bool(b, false); break;
    case 1: djn_enc_bool(b, true); break;
    case 2: djn_enc_uint(b, 1); break;
    case 3: djn_enc_cstr(b, "1"); break;
    default: break;
    }
}
static void f_upload_third_str_frame(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 10);
    djn_enc_cstr(b, "1");
    djn_enc_bool(b, true);
}
static void f_upload_neg_handle(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 2);
    djn_enc_int(b, -1);
    djn_enc_uint(b, 1);
}
static void f_upload_two_text(djn_buf_t *b) {
    djn_enc_array(b, 2);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 10);
    djn_enc_uint(b, 2);
    djn_enc_bool(b, true);
    enc_pair(b, 11, 1);
}

static void test_reject_uploads(void) {
    djn_buf_t b = {0};
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_frame0);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: upload names frame 0 but the message has 2");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_frame3);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "upload names frame 3 but the message has 2");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_frame2);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "upload names frame 2 but the message has 0");
    {
        djn_msg_t *m = decode_ok(&b, 2);
        CHECK(m && m->u.graph.nuploads == 1 && m->u.graph.uploads[0].frame == 2);
        djn_msg_free(&m);
    }
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_neg);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "upload names frame 18446744073709551615");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_wide);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "upload names frame 4294967297");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_str);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO,
                      "GRAPH: each upload must be [handle, frame] or [handle, frame, text]");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_arity);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO,
                      "each upload must be [handle, frame] or [handle, frame, text]");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_arity1);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO,
                      "each upload must be [handle, frame] or [handle, frame, text]");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_item_notlist);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO,
                      "each upload must be [handle, frame] or [handle, frame, text]");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_third_str_frame);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO,
                      "each upload must be [handle, frame] or [handle, frame, text]");
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_notlist);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: 'uploads' must be an array");
    /* FETCH goes through the same checks. */
    graph_with(&b, DJN_MSG_FETCH, "uploads", f_upload_frame0);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "upload names frame 0");

    /* [handle, frame, text]: text as given; [handle, frame]: not text. */
    for (int third = -1; third < 2; third++) {
        for (int t = 0; t < 3; t++) {
            static const uint8_t types[3] = {DJN_MSG_GRAPH, DJN_MSG_FETCH, DJN_MSG_GRAPH_CACHED};
            s_up_handle = 10;
            s_up_frame = 2;
            s_up_third = third;
            graph_with(&b, types[t], "uploads", f_upload_one);
            djn_msg_t *m = decode_ok(&b, 2);
            CHECK(m != NULL);
            if (m) {
                CHECK_EQ_INT(m->u.graph.nuploads, 1);
                if (m->u.graph.nuploads == 1) {
                    CHECK(m->u.graph.uploads[0].handle == 10);
                    CHECK_EQ_INT(m->u.graph.uploads[0].frame, 2);
                    CHECK_EQ_INT(m->u.graph.uploads[0].text, third == 1);
                }
            }
            djn_msg_free(&m);
        }
    }
    /* Mixed: a text upload next to a plain one. */
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_two_text);
    {
        djn_msg_t *m = decode_ok(&b, 2);
        CHECK(m && m->u.graph.nuploads == 2);
        if (m && m->u.graph.nuploads == 2) {
            CHECK(m->u.graph.uploads[0].handle == 10 && m->u.graph.uploads[0].frame == 2 &&
                  m->u.graph.uploads[0].text);
            CHECK(m->u.graph.uploads[1].handle == 11 && m->u.graph.uploads[1].frame == 1 &&
                  !m->u.graph.uploads[1].text);
        }
        djn_msg_free(&m);
    }
    /* A third element that is not a bool must never mean text: refused, or not text. */
    for (int third = 2; third < 4; third++) {
        s_up_handle = 10;
        s_up_frame = 1;
        s_up_third = third;
        graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_one);
        djn_msg_t *m = NULL;
        char err[ERRLEN] = "";
        djn_status_t st = djn_msg_decode(b.data, b.len, 2, &m, NULL, err, ERRLEN);
        if (st == DJN_OK) {
            CHECK(m && m->u.graph.nuploads == 1 && !m->u.graph.uploads[0].text);
        } else {
            CHECK_EQ_INT(st, DJN_ERR_PROTO);
            CHECK(m == NULL);
            CHECK_HAS(err, "each upload must be [handle, frame] or [handle, frame, text]");
        }
        djn_msg_free(&m);
    }
    /* A text upload still needs a frame in range. */
    s_up_handle = 10;
    s_up_frame = 3;
    s_up_third = 1;
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_one);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: upload names frame 3 but the message has 2");

    /* Client handles are in [1, 2^62): 0 and server-issued ones (from 2^62) are refused,
     * with or without the text flag; the edges 1 and 2^62 - 1 are fine. */
    static const uint64_t bad_handles[] = {0, (uint64_t)1 << 62, ((uint64_t)1 << 62) + 1,
                                           (uint64_t)1 << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof bad_handles / sizeof bad_handles[0]; i++) {
        for (int third = -1; third < 2; third++) {
            s_up_handle = bad_handles[i];
            s_up_frame = 1;
            s_up_third = third;
            graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_one);
            EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: client handles must be in [1, 2^62)");
        }
    }
    graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_neg_handle);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: client handles must be in [1, 2^62)");
    static const uint64_t good_handles[] = {1, ((uint64_t)1 << 62) - 1};
    for (size_t i = 0; i < sizeof good_handles / sizeof good_handles[0]; i++) {
        s_up_handle = good_handles[i];
        s_up_frame = 1;
        s_up_third = 1;
        graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_one);
        djn_msg_t *m = decode_ok(&b, 1);
        CHECK(m && m->u.graph.nuploads == 1 && m->u.graph.uploads[0].handle == good_handles[i] &&
              m->u.graph.uploads[0].text);
        djn_msg_free(&m);
    }
    djn_buf_release(&b);
}

/* Node variants: each encodes one whole node. */
static void n_arity4(djn_buf_t *b) {
    djn_enc_array(b, 4);
    djn_enc_cstr(b, "aten::add");
    djn_enc_cstr(b, "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
}
static void n_arity6_ok(djn_buf_t *b) {
    djn_enc_array(b, 6);
    djn_enc_cstr(b, "aten::add");
    djn_enc_cstr(b, "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
    djn_enc_nil(b);
}
static void n_arity0(djn_buf_t *b) { djn_enc_array(b, 0); }
static void n_notlist(djn_buf_t *b) { djn_enc_cstr(b, "aten::add"); }
static void n_op_int(djn_buf_t *b) {
    djn_enc_array(b, 5);
    djn_enc_int(b, 1);
    djn_enc_cstr(b, "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_op_bin(djn_buf_t *b) {
    djn_enc_array(b, 5);
    djn_enc_bin(b, "aten::add", 9);
    djn_enc_cstr(b, "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_overload_nil(djn_buf_t *b) {
    djn_enc_array(b, 5);
    djn_enc_cstr(b, "aten::add");
    djn_enc_nil(b);
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_args_map(djn_buf_t *b) {
    enc_node_start(b, "aten::add", "");
    djn_enc_map(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_outs_tensor(djn_buf_t *b) {
    enc_node_start(b, "aten::add", "");
    djn_enc_array(b, 0);
    enc_tref_2x3(b, 1);
    djn_enc_uint(b, 0);
}
static void n_flags_str(djn_buf_t *b) {
    enc_node_start(b, "aten::add", "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_cstr(b, "0");
}
static void n_flags_float(djn_buf_t *b) {
    enc_node_start(b, "aten::add", "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_float(b, 0);
}
static void n_op_empty(djn_buf_t *b) {
    enc_node_start(b, "", "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_op_long(djn_buf_t *b) {
    char name[DJN_MAX_NAME + 2];
    memset(name, 'a', DJN_MAX_NAME + 1);
    name[DJN_MAX_NAME + 1] = '\0';
    enc_node_start(b, name, "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_overload_long(djn_buf_t *b) {
    char name[DJN_MAX_NAME + 2];
    memset(name, 'a', DJN_MAX_NAME + 1);
    name[DJN_MAX_NAME + 1] = '\0';
    enc_node_start(b, "aten::add", name);
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void enc_bad_tref(djn_buf_t *b, int which) {
    static const int64_t one[1] = {4}, negsz[1] = {-1}, st1[1] = {1}, stneg[1] = {-1};
    djn_tref_t t;
    switch (which) {
    case 0: t = tref_make(1, 0, 99, 1, one, st1); break;               /* unknown dtype */
    case 1: t = tref_make(1, 0, DJN_DTYPE_F32, 1, negsz, st1); break;  /* negative size */
    case 2: t = tref_make(1, -1, DJN_DTYPE_F32, 1, one, st1); break;   /* negative offset */
    default: t = tref_make(1, 0, DJN_DTYPE_F32, 1, one, stneg); break; /* before storage */
    }
    djn_enc_tref(b, &t);
}
static int s_bad_tref_which;
static void n_bad_arg(djn_buf_t *b) {
    enc_node_start(b, "aten::add", "");
    djn_enc_array(b, 2);
    enc_tref_2x3(b, 1);
    enc_bad_tref(b, s_bad_tref_which);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_bad_out_nested(djn_buf_t *b) {
    enc_node_start(b, "aten::split", "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 1);
    djn_enc_array(b, 2);
    enc_tref_2x3(b, 1);
    enc_bad_tref(b, s_bad_tref_which);
    djn_enc_uint(b, 0);
}

static enc_field_fn s_node_fn;
static void f_nodes_one(djn_buf_t *b) {
    djn_enc_array(b, 2);
    enc_node_start(b, "aten::ok", ""); /* node 0 is fine: errors name node 1 */
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
    s_node_fn(b);
}
static void f_nodes_map(djn_buf_t *b) { djn_enc_map(b, 0); }

static void test_reject_nodes(void) {
    djn_buf_t b = {0};
    static const struct {
        enc_field_fn fn;
        const char *sub;
    } cases[] = {
        {n_arity4, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_arity6_ok, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_arity0, "node 1 must be [op, overload, [args], [outs], flags]"},
        {n_notlist, "node 1 must be"},
        {n_op_int, "node 1 must be"},
        {n_op_bin, "node 1 must be"},
        {n_overload_nil, "node 1 must be"},
        {n_args_map, "node 1 must be"},
        {n_outs_tensor, "node 1 must be"},
        {n_flags_str, "node 1 must be"},
        {n_flags_float, "node 1 must be"},
        {n_op_empty, "GRAPH: node 1 has a bad operator name"},
        {n_op_long, "GRAPH: node 1 has a bad operator name"},
        {n_overload_long, "GRAPH: node 1 has a bad operator name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_node_fn = cases[i].fn;
        graph_with(&b, DJN_MSG_GRAPH, "nodes", f_nodes_one);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, cases[i].sub);
    }
    for (int which = 0; which < 4; which++) {
        s_bad_tref_which = which;
        s_node_fn = n_bad_arg;
        graph_with(&b, DJN_MSG_GRAPH, "nodes", f_nodes_one);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                          "GRAPH: node 1 (aten::add) has a malformed tensor reference");
        s_node_fn = n_bad_out_nested;
        graph_with(&b, DJN_MSG_GRAPH, "nodes", f_nodes_one);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                          "GRAPH: node 1 (aten::split) has a malformed tensor reference");
    }
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_nodes_map);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'nodes' must be an array");
    djn_buf_release(&b);
}

static void f_arr_empty(djn_buf_t *b) { djn_enc_array(b, 0); }

/* Slots and binds: a node's tensor slot must index "binds"; binds hold non-zero handles. */
static void n_slot(djn_buf_t *b, uint64_t slot, int nested_out) {
    enc_node_start(b, "aten::mul", "");
    djn_enc_array(b, 1);
    enc_tref_2x3(b, nested_out ? 0 : slot);
    djn_enc_array(b, 1);
    if (nested_out) {
        djn_enc_array(b, 2);
        enc_tref_2x3(b, 1);
        enc_tref_2x3(b, slot);
    } else {
        enc_tref_2x3(b, 0);
    }
    djn_enc_uint(b, 0);
}
static void f_slot2(djn_buf_t *b) {
    djn_enc_array(b, 1);
    n_slot(b, 2, 0);
}
static void f_slot3(djn_buf_t *b) {
    djn_enc_array(b, 1);
    n_slot(b, 3, 0);
}
static void f_slot_huge(djn_buf_t *b) {
    djn_enc_array(b, 1);
    n_slot(b, UINT64_MAX, 0);
}
static void f_slot3_nested(djn_buf_t *b) {
    djn_enc_array(b, 1);
    n_slot(b, 3, 1);
}
static void f_slot2_nested(djn_buf_t *b) {
    djn_enc_array(b, 1);
    n_slot(b, 2, 1);
}
static void f_slot1(djn_buf_t *b) {
    djn_enc_array(b, 1);
    n_slot(b, 1, 0);
}
static void f_slot_two_nodes(djn_buf_t *b) { /* node 0 names slots 0..1, node 1 slot 2 */
    djn_enc_array(b, 2);
    n_slot(b, 1, 0);
    n_slot(b, 2, 0);
}

/* The decoded slot table must be binds [100, 101, 102] (graph_with's). */
static void check_binds_100(const djn_graph_req_t *g) {
    CHECK_EQ_INT(g->nbinds, 3);
    CHECK(g->binds != NULL);
    if (g->binds && g->nbinds == 3)
        CHECK(g->binds[0] == 100 && g->binds[1] == 101 && g->binds[2] == 102);
}

static void test_binds(void) {
    djn_buf_t b = {0};
    /* References keep their slots; binds[slot] is the handle; nslots = highest slot + 1. */
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_slot2);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nnodes == 1);
    if (m && m->u.graph.nnodes == 1) {
        CHECK(is_2x3(&m->u.graph.nodes[0].args[0], 2));
        CHECK(is_2x3(&m->u.graph.nodes[0].outs[0], 0));
        check_binds_100(&m->u.graph);
        if (m->u.graph.nbinds == 3)
            CHECK(m->u.graph.binds[2] == 102 && m->u.graph.binds[0] == 100);
        CHECK_EQ_INT(m->u.graph.nslots, 3);
    }
    djn_msg_free(&m);
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_slot2_nested);
    m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nnodes == 1);
    if (m && m->u.graph.nnodes == 1) {
        CHECK(is_2x3(&m->u.graph.nodes[0].args[0], 0));
        const djn_value_t *o = &m->u.graph.nodes[0].outs[0];
        CHECK(o->kind == DJN_V_LIST && o->len == 2);
        if (o->kind == DJN_V_LIST && o->len == 2) {
            CHECK(is_2x3(&o->u.items[0], 1));
            CHECK(is_2x3(&o->u.items[1], 2));
        }
        check_binds_100(&m->u.graph);
        CHECK_EQ_INT(m->u.graph.nslots, 3); /* slots inside lists count too */
    }
    djn_msg_free(&m);
    /* Fewer slots named than bound: nslots < nbinds. */
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_slot1);
    m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nnodes == 1);
    if (m && m->u.graph.nnodes == 1) {
        CHECK(is_2x3(&m->u.graph.nodes[0].args[0], 1));
        CHECK(is_2x3(&m->u.graph.nodes[0].outs[0], 0));
        check_binds_100(&m->u.graph);
        CHECK_EQ_INT(m->u.graph.nslots, 2);
    }
    djn_msg_free(&m);
    /* nslots is the maximum over all nodes, not the last node's. */
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_slot_two_nodes);
    m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nnodes == 2);
    if (m && m->u.graph.nnodes == 2) {
        CHECK(is_2x3(&m->u.graph.nodes[0].args[0], 1));
        CHECK(is_2x3(&m->u.graph.nodes[1].args[0], 2));
        check_binds_100(&m->u.graph);
        CHECK_EQ_INT(m->u.graph.nslots, 3);
    }
    djn_msg_free(&m);
    /* Binds without nodes (a FETCH, or a GRAPH that only allocates): no slots named. */
    for (int t = 0; t < 2; t++) {
        graph_with(&b, t ? DJN_MSG_FETCH : DJN_MSG_GRAPH, "frees", f_arr_empty);
        m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            check_binds_100(&m->u.graph);
            CHECK_EQ_INT(m->u.graph.nslots, 0);
            CHECK_EQ_INT(m->u.graph.nnodes, 0);
        }
        djn_msg_free(&m);
    }
    /* Binds may name server-issued handles (from 2^62): only 0 is refused. */
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "binds");
    djn_enc_array(&b, 2);
    djn_enc_uint(&b, (uint64_t)1 << 62);
    djn_enc_uint(&b, UINT64_MAX);
    m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nbinds == 2);
    if (m && m->u.graph.nbinds == 2)
        CHECK(m->u.graph.binds[0] == (uint64_t)1 << 62 && m->u.graph.binds[1] == UINT64_MAX);
    djn_msg_free(&m);
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_slot3);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: node 0 (aten::mul) has a malformed tensor");
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_slot_huge);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "node 0 (aten::mul)");
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_slot3_nested);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "node 0 (aten::mul)");
    /* No binds at all: every slot is unbound. */
    djn_buf_reset(&b);
    djn_enc_header(&b, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "nodes");
    f_slot2(&b);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "node 0 (aten::mul)");
    /* Malformed binds. */
    static const char *const subs[] = {
        "GRAPH: 'binds' must be an array", "GRAPH: 'binds' must hold non-zero handles",
        "GRAPH: 'binds' must hold non-zero handles", "GRAPH: 'binds' must hold non-zero handles"};
    for (int v = 0; v < 4; v++) {
        djn_buf_reset(&b);
        djn_enc_header(&b, v == 3 ? DJN_MSG_FETCH : DJN_MSG_GRAPH, 1, 2);
        djn_enc_map(&b, 1);
        djn_enc_cstr(&b, "binds");
        switch (v) {
        case 0: djn_enc_map(&b, 0); break;
        case 1:
            djn_enc_array(&b, 2);
            djn_enc_uint(&b, 4);
            djn_enc_uint(&b, 0);
            break;
        case 2:
            djn_enc_array(&b, 1);
            djn_enc_cstr(&b, "4");
            break;
        default:
            djn_enc_array(&b, 1);
            djn_enc_nil(&b);
            break;
        }
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, subs[v]);
    }
    djn_buf_release(&b);
}

static void f_dev_str(djn_buf_t *b) { djn_enc_cstr(b, "cuda:0"); }
static void f_dev_big(djn_buf_t *b) { djn_enc_uint(b, 1025); }
static void f_dev_neg(djn_buf_t *b) { djn_enc_int(b, -1); }
static void f_dev_wide(djn_buf_t *b) { djn_enc_uint(b, ((uint64_t)1 << 32) + 1); }
static void f_seed_str(djn_buf_t *b) { djn_enc_cstr(b, "42"); }
static void f_seed_float(djn_buf_t *b) { djn_enc_float(b, 42.0); }
static void f_arr_map(djn_buf_t *b) { djn_enc_map(b, 0); }
static void f_arr_int(djn_buf_t *b) { djn_enc_int(b, 3); }
static void f_alloc_arity(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 1);
    djn_enc_uint(b, 1);
}
static void f_alloc_str(djn_buf_t *b) {
    djn_enc_array(b, 2);
    enc_pair(b, 1, 2);
    djn_enc_array(b, 2);
    djn_enc_uint(b, 1);
    djn_enc_cstr(b, "8");
}
static void f_alloc_h0(djn_buf_t *b) {
    djn_enc_array(b, 1);
    enc_pair(b, 0, 8);
}
static void f_alloc_h62(djn_buf_t *b) {
    djn_enc_array(b, 1);
    enc_pair(b, (uint64_t)1 << 62, 8);
}
static void f_alloc_hmax(djn_buf_t *b) {
    djn_enc_array(b, 1);
    enc_pair(b, UINT64_MAX, 8);
}
static void f_alloc_second_h0(djn_buf_t *b) {
    djn_enc_array(b, 2);
    enc_pair(b, 1, 8);
    enc_pair(b, 0, 8);
}
static void f_alloc_edges(djn_buf_t *b) {
    djn_enc_array(b, 2);
    enc_pair(b, 1, 8);
    enc_pair(b, ((uint64_t)1 << 62) - 1, 16);
}
static void f_frees_str(djn_buf_t *b) {
    djn_enc_array(b, 2);
    djn_enc_uint(b, 1);
    djn_enc_cstr(b, "2");
}
static void f_frees_nil(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_nil(b);
}
static void f_fetch_arity(djn_buf_t *b) {
    djn_enc_array(b, 1);
    enc_pair(b, 1, 2);
}
static void f_fetch_float(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 1);
    djn_enc_float(b, 0);
    djn_enc_uint(b, 8);
}

static void test_reject_graph_fields(void) {
    static const struct {
        const char *key;
        enc_field_fn fn;
        const char *sub;
    } cases[] = {
        {"dev", f_dev_str, "GRAPH: 'dev' must be a small unsigned integer"},
        {"dev", f_dev_big, "GRAPH: 'dev' must be a small unsigned integer"},
        {"dev", f_dev_neg, "GRAPH: 'dev' must be a small unsigned integer"},
        {"dev", f_dev_wide, "GRAPH: 'dev' must be a small unsigned integer"},
        {"seed", f_seed_str, "GRAPH: 'seed' must be an integer"},
        {"seed", f_seed_float, "GRAPH: 'seed' must be an integer"},
        {"allocs", f_arr_map, "GRAPH: 'allocs' must be an array"},
        {"allocs", f_arr_int, "GRAPH: 'allocs' must be an array"},
        {"allocs", f_alloc_arity, "GRAPH: each alloc must be [handle, nbytes]"},
        {"allocs", f_alloc_str, "GRAPH: each alloc must be [handle, nbytes]"},
        {"allocs", f_alloc_h0, "GRAPH: client handles must be in [1, 2^62)"},
        {"allocs", f_alloc_h62, "GRAPH: client handles must be in [1, 2^62)"},
        {"allocs", f_alloc_hmax, "GRAPH: client handles must be in [1, 2^62)"},
        {"allocs", f_alloc_second_h0, "GRAPH: client handles must be in [1, 2^62)"},
        {"frees", f_arr_map, "GRAPH: 'frees' must be an array"},
        {"frees", f_frees_str, "GRAPH: 'frees' must hold handles"},
        {"frees", f_frees_nil, "GRAPH: 'frees' must hold handles"},
        {"fetch", f_arr_int, "GRAPH: 'fetch' must be an array"},
        {"fetch", f_fetch_arity, "GRAPH: each fetch must be [handle, offset, nbytes]"},
        {"fetch", f_fetch_float, "GRAPH: each fetch must be [handle, offset, nbytes]"},
        {"nodes", f_arr_int, "GRAPH: 'nodes' must be an array"},
        {"uploads", f_arr_int, "GRAPH: 'uploads' must be an array"},
    };
    static const uint8_t types[3] = {DJN_MSG_GRAPH, DJN_MSG_FETCH, DJN_MSG_GRAPH_CACHED};
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int t = 0; t < 3; t++) {
            graph_with(&b, types[t], cases[i].key, cases[i].fn);
            EXPECT_REJECT_BUF(&b, 4, DJN_ERR_PROTO, cases[i].sub);
        }
    }
    /* The edges of the client handle range are fine. */
    graph_with(&b, DJN_MSG_GRAPH, "allocs", f_alloc_edges);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nallocs == 2);
    if (m && m->u.graph.nallocs == 2) {
        CHECK(m->u.graph.allocs[0].handle == 1 && m->u.graph.allocs[0].nbytes == 8);
        CHECK(m->u.graph.allocs[1].handle == ((uint64_t)1 << 62) - 1 &&
              m->u.graph.allocs[1].nbytes == 16);
    }
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_reject_header_fields(void) {
    djn_buf_t b = {0};
    uint64_t seq;
    /* Unknown message types, including reserved and reply numbers. */
    /* (4 GRAPH_CACHED and 6 HAVE are valid now: see test_msg_graph_cached/test_msg_have.) */
    static const uint64_t unknown[] = {0,
                                       DJN_MSG_UPLOAD,
                                       DJN_MSG_LOAD_MODEL,
                                       11,
                                       63,
                                       DJN_MSG_REPLY,
                                       DJN_MSG_ERROR,
                                       66,
                                       99,
                                       255,
                                       256 + DJN_MSG_HELLO,
                                       256 + DJN_MSG_GRAPH_CACHED,
                                       256 + DJN_MSG_HAVE,
                                       UINT64_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        djn_buf_reset(&b);
        djn_enc_map(&b, 4);
        djn_enc_cstr(&b, "type");
        djn_enc_uint(&b, unknown[i]);
        djn_enc_cstr(&b, "sid");
        djn_enc_uint(&b, 1);
        djn_enc_cstr(&b, "seq");
        djn_enc_uint(&b, 500 + i);
        djn_enc_cstr(&b, "body");
        djn_enc_map(&b, 1);
        djn_enc_cstr(&b, "version");
        djn_enc_uint(&b, 1);
        char want[64];
        snprintf(want, sizeof want, "unknown message type %llu", (unsigned long long)unknown[i]);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, want);
        /* The header was read far enough to name the request in the error reply. */
        seq = 0;
        djn_msg_t *m = NULL;
        char err[ERRLEN];
        CHECK(djn_msg_decode(b.data, b.len, 0, &m, &seq, err, ERRLEN) == DJN_ERR_PROTO);
        CHECK_EQ_INT(seq, 500 + i);
        CHECK(m == NULL);
        djn_msg_free(&m); /* in case it was accepted after all: no leak on top */
    }
    /* 'type' not an integer. */
    for (int v = 0; v < 5; v++) {
        djn_buf_reset(&b);
        djn_enc_map(&b, 4);
        djn_enc_cstr(&b, "type");
        switch (v) {
        case 0: djn_enc_cstr(&b, "3"); break;
        case 1: djn_enc_float(&b, 3.0); break;
        case 2: djn_enc_nil(&b); break;
        case 3: djn_enc_bool(&b, true); break;
        default:
            djn_enc_array(&b, 1);
            djn_enc_int(&b, 3);
            break;
        }
        djn_enc_cstr(&b, "sid");
        djn_enc_uint(&b, 1);
        djn_enc_cstr(&b, "seq");
        djn_enc_uint(&b, 2);
        djn_enc_cstr(&b, "body");
        djn_enc_map(&b, 0);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                          "header must be a map with integer 'type', 'sid' and 'seq'");
        seq = 0;
        djn_msg_t *m = NULL;
        char err[ERRLEN];
        CHECK(djn_msg_decode(b.data, b.len, 0, &m, &seq, err, ERRLEN) == DJN_ERR_PROTO);
        CHECK_EQ_INT(seq, 2);
    }
    /* Missing sid, missing seq, missing type, sid as string. */
    static const char *const keys[4][4] = {{"type", "seq", "body", "x"},
                                           {"type", "sid", "body", "x"},
                                           {"sid", "seq", "body", "x"},
                                           {"type", "seq", "body", "sid"}};
    for (int k = 0; k < 4; k++) {
        djn_buf_reset(&b);
        djn_enc_map(&b, 4);
        for (int j = 0; j < 4; j++) {
            djn_enc_cstr(&b, keys[k][j]);
            if (!strcmp(keys[k][j], "body"))
                djn_enc_map(&b, 0);
            else if (k == 3 && j == 3)
                djn_enc_cstr(&b, "1");
            else
                djn_enc_uint(&b, DJN_MSG_HEARTBEAT);
        }
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "header must be a map with integer");
    }
    /* Missing body, body not a map. */
    for (int v = 0; v < 4; v++) {
        djn_buf_reset(&b);
        djn_enc_map(&b, v == 0 ? 3 : 4);
        djn_enc_cstr(&b, "type");
        djn_enc_uint(&b, DJN_MSG_HEARTBEAT);
        djn_enc_cstr(&b, "sid");
        djn_enc_uint(&b, 1);
        djn_enc_cstr(&b, "seq");
        djn_enc_uint(&b, 2);
        if (v) {
            djn_enc_cstr(&b, v == 3 ? "Body" : "body");
            if (v == 1)
                djn_enc_array(&b, 0);
            else
                djn_enc_nil(&b);
        }
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "header 'body' must be a map");
    }
    djn_buf_release(&b);
}

/* An empty string as the first string of a frame: msgpack-c hands back a NULL pointer
 * for a zero-length fixstr when no string was read before it. Must be a clean result. */
static void test_empty_string_first(void) {
    static const uint8_t str0[1] = {0xa0}, bin0[2] = {0xc4, 0x00};
    static const uint8_t arr[3] = {0x92, 0xa0, 0xc0};
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN] = "";
    CHECK_EQ_INT(djn_decode_value(str0, sizeof str0, a, &v, err, ERRLEN), DJN_OK);
    CHECK(v && v->kind == DJN_V_STR && v->len == 0 && v->u.s && v->u.s[0] == '\0');
    CHECK_EQ_INT(djn_decode_value(bin0, sizeof bin0, a, &v, err, ERRLEN), DJN_OK);
    CHECK(v && v->kind == DJN_V_BIN && v->len == 0);
    CHECK_EQ_INT(djn_decode_value(arr, sizeof arr, a, &v, err, ERRLEN), DJN_OK);
    CHECK(v && v->kind == DJN_V_LIST && v->len == 2 && v->u.items[0].kind == DJN_V_STR);
    djn_arena_destroy(&a);
    /* A header whose first key is "": a client can send this. */
    djn_buf_t b = {0};
    djn_enc_map(&b, 5);
    djn_enc_cstr(&b, "");
    djn_enc_int(&b, 1);
    djn_enc_cstr(&b, "type");
    djn_enc_uint(&b, DJN_MSG_HEARTBEAT);
    djn_enc_cstr(&b, "sid");
    djn_enc_uint(&b, 1);
    djn_enc_cstr(&b, "seq");
    djn_enc_uint(&b, 2);
    djn_enc_cstr(&b, "body");
    djn_enc_map(&b, 0);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m && m->type == DJN_MSG_HEARTBEAT);
    djn_msg_free(&m);
    djn_buf_release(&b);
}

/* Appending nothing to a fresh (NULL) buffer: a zero-length payload. */
static void test_buf_raw_empty(void) {
    djn_buf_t b = {0};
    djn_buf_raw(&b, "", 0);
    CHECK(!b.failed && b.len == 0);
    djn_enc_nil(&b);
    djn_buf_raw(&b, "", 0);
    CHECK(!b.failed && b.len == 1);
    djn_buf_release(&b);
}

/* Operator names are C strings on the server: an embedded NUL would make the name the
 * server sees ("aten::add") differ from the bytes the client sent. */
static void n_nul_op(djn_buf_t *b) {
    djn_enc_array(b, 5);
    djn_enc_str(b, "aten::add\0junk", 14);
    djn_enc_cstr(b, "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_nul_first(djn_buf_t *b) {
    djn_enc_array(b, 5);
    djn_enc_str(b, "\0aten::add", 10);
    djn_enc_cstr(b, "");
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static void n_nul_overload(djn_buf_t *b) {
    djn_enc_array(b, 5);
    djn_enc_cstr(b, "aten::add");
    djn_enc_str(b, "out\0", 4);
    djn_enc_array(b, 0);
    djn_enc_array(b, 0);
    djn_enc_uint(b, 0);
}
static enc_field_fn s_nul_fn;
static void f_nul_nodes(djn_buf_t *b) {
    djn_enc_array(b, 1);
    s_nul_fn(b);
}

static void test_reject_nul_in_names(void) {
    static const enc_field_fn fns[] = {n_nul_op, n_nul_first, n_nul_overload};
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        s_nul_fn = fns[i];
        graph_with(&b, DJN_MSG_GRAPH, "nodes", f_nul_nodes);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "node 0");
    }
    djn_buf_release(&b);
}

/* Error text handling: NULL err, errlen 0 and a tiny errlen. */
static void test_err_buffers(void) {
    djn_buf_t b = {0};
    djn_enc_header(&b, 99, 1, 2);
    djn_enc_map(&b, 0);
    djn_msg_t *m = (djn_msg_t *)(uintptr_t)1;
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 0, &m, NULL, NULL, 0), DJN_ERR_PROTO);
    CHECK(m == NULL);
    char small[8];
    memset(small, 'X', sizeof small);
    m = (djn_msg_t *)(uintptr_t)1;
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 0, &m, NULL, small, 0), DJN_ERR_PROTO);
    CHECK(small[0] == 'X'); /* errlen 0: not written */
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 0, &m, NULL, small, sizeof small), DJN_ERR_PROTO);
    CHECK_STR(small, "unknown"); /* cut to 7 bytes and terminated */
    static const uint8_t junk[2] = {0xc1, 0x00};
    CHECK_EQ_INT(djn_msg_decode(junk, 2, 0, &m, NULL, NULL, 0), DJN_ERR_PROTO);
    djn_buf_release(&b);
}

/* ------------------------------------------------------------------ 4. fuzzing */

static int s_fuzz_reports;

/* Print the first fuzz finding with the input in hex, so they can be replayed. */
static void fuzz_report(const char *why, const uint8_t *p, size_t n, uint32_t nframes,
                        const char *err) {
    if (s_fuzz_reports++ >= 1)
        return;
    printf("fuzz: %s (nframes %u, err \"%s\"), input of %zu bytes:", why, nframes, err, n);
    for (size_t i = 0; i < n && i < 512; i++)
        printf("%s%02x", i % 32 ? " " : "\n  ", p[i]);
    printf("\n");
}

/* Every tensor reference in v names a slot below nslots (the decoder's own bound). */
static bool fuzz_slots_ok(const djn_value_t *v, uint32_t nslots, int depth) {
    if (depth > DJN_MAX_DEPTH + 1)
        return true;
    if (v->kind == DJN_V_TENSOR)
        return v->u.t->handle < nslots;
    if (v->kind == DJN_V_LIST)
        for (uint32_t i = 0; i < v->len; i++)
            if (!fuzz_slots_ok(&v->u.items[i], nslots, depth + 1))
                return false;
    return true;
}

/* Decode anything: OK (then free) or a clean failure. Returns 1 if decoded OK. */
static int fuzz_one(const uint8_t *p, size_t n, uint32_t nframes, int *bad) {
    int64_t mem0 = djn_mem_in_use();
    djn_msg_t *m = (djn_msg_t *)(uintptr_t)1;
    char err[ERRLEN];
    err[0] = '\0';
    uint64_t seq = 0;
    djn_status_t st = djn_msg_decode(p, n, nframes, &m, &seq, err, ERRLEN);
    int ok = st == DJN_OK;
    const char *why = NULL;
    if (ok) {
        if (!m)
            why = "OK with a NULL message";
        else if (m->type == DJN_MSG_GRAPH || m->type == DJN_MSG_FETCH ||
                 m->type == DJN_MSG_GRAPH_CACHED) {
            /* Touch everything a server would read. */
            const djn_graph_req_t *g = &m->u.graph;
            if (g->nslots > g->nbinds)
                why = "nslots above nbinds";
            for (uint32_t i = 0; i < g->nbinds; i++)
                if (g->binds[i] == 0)
                    why = "accepted a zero bind";
            for (uint32_t i = 0; i < g->nallocs; i++)
                if (g->allocs[i].handle == 0 || g->allocs[i].handle >= (1ull << 62))
                    why = "accepted an alloc handle outside [1, 2^62)";
            for (uint32_t i = 0; i < g->nuploads; i++)
                if (g->uploads[i].handle == 0 || g->uploads[i].handle >= (1ull << 62))
                    why = "accepted an upload handle outside [1, 2^62)";
            for (uint32_t i = 0; i < g->nuploads; i++)
                if (g->uploads[i].frame < 1 || g->uploads[i].frame > nframes)
                    why = "accepted an upload frame out of range";
            for (uint32_t i = 0; i < g->nnodes; i++) {
                if (!g->nodes[i].op || !g->nodes[i].overload || !g->nodes[i].op[0])
                    why = "accepted a node without an operator name";
                for (uint32_t j = 0; j < g->nodes[i].nargs + g->nodes[i].nouts; j++) {
                    const djn_value_t *v = j < g->nodes[i].nargs
                                               ? &g->nodes[i].args[j]
                                               : &g->nodes[i].outs[j - g->nodes[i].nargs];
                    uint64_t lo, hi;
                    if (v->kind == DJN_V_TENSOR && !djn_tref_extent(v->u.t, &lo, &hi))
                        why = "accepted a malformed tensor reference";
                    if (!fuzz_slots_ok(v, g->nslots, 0))
                        why = "accepted a slot at or above nslots";
                }
            }
        }
        djn_msg_free(&m);
    } else {
        if (m != NULL)
            why = "*out not NULL after a failure";
        else if (err[0] == '\0')
            why = "failure with an empty error message";
        else if (st != DJN_ERR_PROTO && st != DJN_ERR_LIMIT)
            why = "unexpected status";
    }
    if (djn_mem_in_use() != mem0)
        why = "counted memory held after the call";
    if (why) {
        (*bad)++;
        fuzz_report(why, p, n, nframes, err);
    }
    return ok;
}

static void test_fuzz_random_buffers(void) {
    rng_seed(0x5eed0001);
    int bad = 0, ok = 0;
    djn_buf_t prefix = {0};
    build_graph(&prefix);
    for (int i = 0; i < 2000; i++) {
        size_t n = rng_below(i < 1000 ? 64 : 512);
        uint8_t *p = malloc(n ? n : 1);
        for (size_t j = 0; j < n; j++)
            p[j] = (uint8_t)rng();
        /* Every other buffer starts with a valid header prefix, to get past byte 0. */
        if (i % 2 && n) {
            size_t k = rng_below((uint32_t)(n < prefix.len ? n : prefix.len));
            memcpy(p, prefix.data, k);
        }
        ok += fuzz_one(p, n, rng_below(4), &bad);
        free(p);
    }
    CHECK_EQ_INT(bad, 0);
    (void)ok;
    djn_buf_release(&prefix);
}

/* Random protocol-shaped trees: the right keys with random values of random types. */
static void enc_random_value(djn_buf_t *b, int depth) {
    uint32_t k = rng_below(depth > 5 ? 9 : 13);
    switch (k) {
    case 0: djn_enc_nil(b); break;
    case 1: djn_enc_bool(b, rng() & 1); break;
    case 2: djn_enc_int(b, (int64_t)rng_below(8) - 2); break;
    case 3: djn_enc_uint(b, rng()); break;
    case 4: djn_enc_float(b, (double)rng_below(100) / 4); break;
    case 5: {
        static const char *const s[] = {"", "aten::add", "out", "x", "version"};
        djn_enc_cstr(b, s[rng_below(5)]);
        break;
    }
    case 6: djn_enc_complex(b, 1, -1); break;
    case 7: {
        int64_t sz[DJN_MAX_DIMS], st[DJN_MAX_DIMS];
        uint8_t nd = (uint8_t)rng_below(4);
        for (unsigned d = 0; d < nd; d++) {
            sz[d] = (int64_t)rng_below(5) - (rng_below(8) == 0);
            st[d] = (int64_t)rng_below(9) - 4;
        }
        djn_tref_t t = tref_make(rng_below(20), (int64_t)rng_below(10) - 1, (uint8_t)rng_below(17),
                                 nd, sz, st);
        djn_enc_tref(b, &t);
        break;
    }
    case 8: djn_enc_bin(b, "ab", 2); break;
    case 9:
    case 10: {
        uint32_t n = rng_below(5);
        djn_enc_array(b, n);
        for (uint32_t i = 0; i < n; i++)
            enc_random_value(b, depth + 1);
        break;
    }
    case 11: { /* something node-shaped */
        djn_enc_array(b, 5);
        djn_enc_cstr(b, rng_below(6) ? "aten::mul" : "");
        djn_enc_cstr(b, "");
        uint32_t n = rng_below(4);
        djn_enc_array(b, n);
        for (uint32_t i = 0; i < n; i++)
            enc_random_value(b, depth + 2);
        djn_enc_array(b, 1);
        enc_random_value(b, depth + 2);
        djn_enc_uint(b, rng_below(3));
        break;
    }
    default: {
        uint32_t n = rng_below(3);
        djn_enc_map(b, n);
        for (uint32_t i = 0; i < n; i++) {
            djn_enc_cstr(b, rng_below(2) ? "version" : "k");
            enc_random_value(b, depth + 1);
        }
        break;
    }
    }
}

/* Random bodies from `keys` under random header types from `types`; returns how many
 * decoded OK and adds the findings to *bad. */
static int fuzz_trees(uint64_t seed, const char *const *keys, uint32_t nkeys,
                      const uint8_t *types, uint32_t ntypes, int *bad) {
    rng_seed(seed);
    djn_buf_t b = {0};
    int ok = 0;
    for (int i = 0; i < 2000; i++) {
        djn_buf_reset(&b);
        djn_enc_header(&b, types[rng_below(ntypes)], rng(), rng());
        uint32_t n = rng_below(5);
        djn_enc_map(&b, n);
        for (uint32_t j = 0; j < n; j++) {
            djn_enc_cstr(&b, keys[rng_below(nkeys)]);
            if (rng_below(3) == 0) { /* a list of things, the common shape */
                uint32_t m = rng_below(4);
                djn_enc_array(&b, m);
                for (uint32_t q = 0; q < m; q++)
                    enc_random_value(&b, 2);
            } else {
                enc_random_value(&b, 1);
            }
        }
        ok += fuzz_one(b.data, b.len, rng_below(3), bad);
    }
    djn_buf_release(&b);
    return ok;
}

static void test_fuzz_random_trees(void) {
    static const char *const keys[] = {"dev",   "seed",  "allocs",  "uploads", "nodes",
                                       "frees", "fetch", "version", "client",  "binds"};
    static const uint8_t types[] = {DJN_MSG_HELLO, DJN_MSG_GRAPH,     DJN_MSG_FETCH,
                                    DJN_MSG_GRAPH, DJN_MSG_HEARTBEAT, 42};
    int bad = 0;
    int ok = fuzz_trees(0x5eed0002, keys, 10, types, sizeof types, &bad);
    CHECK_EQ_INT(bad, 0);
    CHECK(ok > 0); /* some of them are valid messages */
}

/* The same over the newer fields and types: "fp", text uploads, GRAPH_CACHED, HAVE. */
static void test_fuzz_random_trees_cached(void) {
    static const char *const keys[] = {"fp",    "binds", "uploads", "nodes", "allocs",
                                       "seed",  "fetch", "items",   "dev"};
    static const uint8_t types[] = {DJN_MSG_GRAPH_CACHED, DJN_MSG_GRAPH, DJN_MSG_HAVE,
                                    DJN_MSG_GRAPH_CACHED, DJN_MSG_FETCH, 5};
    int bad = 0;
    int ok = fuzz_trees(0x5eed0004, keys, 9, types, sizeof types, &bad);
    CHECK_EQ_INT(bad, 0);
    CHECK(ok > 0);
}

static void test_fuzz_mutations(void) {
    djn_buf_t b = {0};
    build_graph(&b);
    uint8_t *p = malloc(b.len);
    int bad = 0, ok = 0, total = 0;
    static const uint8_t special[] = {0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0,
                                      0xbf, 0xc0, 0xc1, 0xc2, 0xc4, 0xc7, 0xc9, 0xca,
                                      0xcb, 0xcc, 0xcf, 0xd0, 0xd3, 0xd4, 0xd8, 0xd9,
                                      0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff};
    rng_seed(0x5eed0003);
    /* Every position, every special byte plus a few random ones and bit flips. */
    for (size_t pos = 0; pos < b.len; pos++) {
        for (size_t k = 0; k < sizeof special + 8 + 8; k++) {
            memcpy(p, b.data, b.len);
            if (k < sizeof special)
                p[pos] = special[k];
            else if (k < sizeof special + 8)
                p[pos] = (uint8_t)rng();
            else
                p[pos] ^= (uint8_t)(1u << (k - sizeof special - 8));
            ok += fuzz_one(p, b.len, G_NFRAMES, &bad);
            total++;
        }
    }
    /* Multi-byte mutations and cut lengths. */
    for (int i = 0; i < 5000; i++) {
        memcpy(p, b.data, b.len);
        int nmut = 1 + (int)rng_below(4);
        for (int j = 0; j < nmut; j++)
            p[rng_below((uint32_t)b.len)] = (uint8_t)rng();
        size_t n = rng_below(4) ? b.len : rng_below((uint32_t)b.len + 1);
        ok += fuzz_one(p, n, rng_below(4), &bad);
        total++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(ok > 0 && ok < total);
    free(p);
    djn_buf_release(&b);
}

/* ------------------------------------------------------------------ 5. extents */

static bool extent(const djn_tref_t *t, uint64_t *b, uint64_t *e) {
    *b = *e = 0xdeadbeef;
    return djn_tref_extent(t, b, e);
}

static void test_extent_basic(void) {
    uint64_t b, e;
    /* contiguous float32 [2, 3] */
    {
        static const int64_t sz[2] = {2, 3}, st[2] = {3, 1};
        djn_tref_t t = tref_make(1, 0, DJN_DTYPE_F32, 2, sz, st);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 0);
        CHECK_EQ_INT(e, 24);
        t.offset = 5;
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 20);
        CHECK_EQ_INT(e, 44);
    }
    /* transposed: [3, 2] strides [1, 3] touches the same 6 elements */
    {
        static const int64_t sz[2] = {3, 2}, st[2] = {1, 3};
        djn_tref_t t = tref_make(1, 0, DJN_DTYPE_F64, 2, sz, st);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 0);
        CHECK_EQ_INT(e, 48);
    }
    /* a column slice: [4] stride 3 offset 1 of a [4, 3] */
    {
        static const int64_t sz[1] = {4}, st[1] = {3};
        djn_tref_t t = tref_make(1, 1, DJN_DTYPE_I16, 1, sz, st);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 2);
        CHECK_EQ_INT(e, (1 + 9 + 1) * 2);
    }
    /* negative stride (flip): offset 3, [4] stride -1 -> elements 0..3 */
    {
        static const int64_t sz[1] = {4}, st[1] = {-1};
        djn_tref_t t = tref_make(1, 3, DJN_DTYPE_F32, 1, sz, st);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 0);
        CHECK_EQ_INT(e, 16);
        t.offset = 2; /* would reach element -1 */
        CHECK(!extent(&t, &b, &e));
        t.offset = 10;
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 28);
        CHECK_EQ_INT(e, 44);
    }
    /* mixed signs: [2, 3] strides [-3, 1] offset 3 -> elements 0..5 */
    {
        static const int64_t sz[2] = {2, 3}, st[2] = {-3, 1};
        djn_tref_t t = tref_make(1, 3, DJN_DTYPE_U8, 2, sz, st);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 0);
        CHECK_EQ_INT(e, 6);
    }
    /* zero-size dim: touches nothing, at the offset */
    {
        static const int64_t sz[2] = {0, 5}, st[2] = {5, 1};
        djn_tref_t t = tref_make(1, 7, DJN_DTYPE_F32, 2, sz, st);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 28);
        CHECK_EQ_INT(e, 28);
        static const int64_t sz2[2] = {5, 0}, st2[2] = {100, 1};
        t = tref_make(1, 7, DJN_DTYPE_F32, 2, sz2, st2);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 28);
        CHECK_EQ_INT(e, 28);
    }
    /* scalar (ndim 0) and broadcast (stride 0) */
    {
        djn_tref_t t = tref_make(1, 7, DJN_DTYPE_F64, 0, NULL, NULL);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 56);
        CHECK_EQ_INT(e, 64);
        static const int64_t sz[2] = {1000, 1000}, st[2] = {0, 0};
        t = tref_make(1, 0, DJN_DTYPE_C128, 2, sz, st);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 0);
        CHECK_EQ_INT(e, 16);
    }
    /* every dtype's item size */
    {
        static const struct {
            uint8_t dt;
            uint64_t isz;
        } ds[] = {
            {DJN_DTYPE_U8, 1},   {DJN_DTYPE_I8, 1},  {DJN_DTYPE_I16, 2},   {DJN_DTYPE_I32, 4},
            {DJN_DTYPE_I64, 8},  {DJN_DTYPE_F16, 2}, {DJN_DTYPE_F32, 4},   {DJN_DTYPE_F64, 8},
            {DJN_DTYPE_C32, 4},  {DJN_DTYPE_C64, 8}, {DJN_DTYPE_C128, 16}, {DJN_DTYPE_BOOL, 1},
            {DJN_DTYPE_BF16, 2},
        };
        static const int64_t sz[1] = {10}, st[1] = {1};
        for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) {
            CHECK_EQ_INT(djn_dtype_size(ds[i].dt), ds[i].isz);
            djn_tref_t t = tref_make(1, 1, ds[i].dt, 1, sz, st);
            CHECK(extent(&t, &b, &e));
            CHECK_EQ_INT(b, ds[i].isz);
            CHECK_EQ_INT(e, 11 * ds[i].isz);
        }
    }
}

static void test_extent_rejects(void) {
    uint64_t b, e;
    static const int64_t sz[1] = {4}, st[1] = {1};
    /* unknown dtypes */
    static const unsigned unk[] = {12, 13, 14, 16, 17, 100, 255};
    for (size_t i = 0; i < sizeof unk / sizeof unk[0]; i++) {
        CHECK_EQ_INT(djn_dtype_size(unk[i]), 0);
        djn_tref_t t = tref_make(1, 0, (uint8_t)unk[i], 1, sz, st);
        CHECK(!extent(&t, &b, &e));
    }
    CHECK_EQ_INT(djn_dtype_size(0x100 + DJN_DTYPE_F32), 0); /* no truncation to a byte */
    djn_tref_t t = tref_make(1, -1, DJN_DTYPE_F32, 1, sz, st);
    CHECK(!extent(&t, &b, &e)); /* negative offset */
    t = tref_make(1, INT64_MIN, DJN_DTYPE_F32, 0, NULL, NULL);
    CHECK(!extent(&t, &b, &e));
    static const int64_t neg[1] = {-1};
    t = tref_make(1, 0, DJN_DTYPE_F32, 1, neg, st);
    CHECK(!extent(&t, &b, &e)); /* negative size */
    t = tref_make(1, 0, DJN_DTYPE_F32, 1, sz, st);
    t.ndim = DJN_MAX_DIMS + 1;
    CHECK(!extent(&t, &b, &e)); /* rank over the limit */
    /* overflow */
    {
        static const int64_t big[2] = {(int64_t)1 << 40, (int64_t)1 << 40},
                             bst[2] = {(int64_t)1 << 40, 1};
        t = tref_make(1, 0, DJN_DTYPE_F32, 2, big, bst);
        CHECK(!extent(&t, &b, &e));
        static const int64_t huge[1] = {INT64_MAX}, one[1] = {1};
        t = tref_make(1, 0, DJN_DTYPE_U8, 1, huge, one);
        CHECK(!extent(&t, &b, &e));
        static const int64_t two[1] = {2}, hst[1] = {INT64_MAX}, lst[1] = {INT64_MIN};
        t = tref_make(1, 0, DJN_DTYPE_U8, 1, two, hst);
        CHECK(!extent(&t, &b, &e));
        t = tref_make(1, 0, DJN_DTYPE_U8, 1, two, lst);
        CHECK(!extent(&t, &b, &e));
        /* elements fit in int64 but bytes do not fit in uint64 */
        t = tref_make(1, (int64_t)1 << 61, DJN_DTYPE_C128, 0, NULL, NULL);
        CHECK(!extent(&t, &b, &e));
        static const int64_t s60[1] = {(int64_t)1 << 60};
        t = tref_make(1, 0, DJN_DTYPE_C128, 1, s60, one);
        CHECK(!extent(&t, &b, &e));
        /* many dims each within bounds whose sum is not */
        int64_t msz[DJN_MAX_DIMS], mst[DJN_MAX_DIMS];
        for (int d = 0; d < DJN_MAX_DIMS; d++) {
            msz[d] = 2;
            mst[d] = (int64_t)1 << 59;
        }
        t = tref_make(1, 0, DJN_DTYPE_U8, DJN_MAX_DIMS, msz, mst);
        CHECK(!extent(&t, &b, &e));
    }
    /* large but valid */
    {
        static const int64_t s[1] = {(int64_t)1 << 40}, one[1] = {1};
        t = tref_make(1, 0, DJN_DTYPE_C128, 1, s, one);
        CHECK(extent(&t, &b, &e));
        CHECK(b == 0 && e == ((uint64_t)1 << 44));
    }
}

/* Offsets and strides near the top of int64: must be refused without signed overflow
 * (undefined behaviour; UBSan aborts). Reachable from a client through a GRAPH node. */
static void test_extent_no_signed_overflow(void) {
    uint64_t b, e;
    static const int64_t two[1] = {2}, one[1] = {1}, s62[1] = {(int64_t)1 << 62};
    djn_tref_t t = tref_make(1, INT64_MAX, DJN_DTYPE_F32, 1, two, one);
    CHECK(!extent(&t, &b, &e));
    t = tref_make(1, (int64_t)1 << 62, DJN_DTYPE_U8, 1, two, s62);
    CHECK(!extent(&t, &b, &e));
    /* The same through the decoder: a node argument with that reference. */
    djn_buf_t buf = {0};
    djn_enc_header(&buf, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(&buf, 2);
    djn_enc_cstr(&buf, "binds");
    djn_enc_array(&buf, 1);
    djn_enc_uint(&buf, 5);
    djn_enc_cstr(&buf, "nodes");
    djn_enc_array(&buf, 1);
    enc_node_start(&buf, "aten::add", "");
    djn_enc_array(&buf, 1);
    t = tref_make(0, INT64_MAX, DJN_DTYPE_F32, 1, two, one);
    djn_enc_tref(&buf, &t);
    djn_enc_array(&buf, 0);
    djn_enc_uint(&buf, 0);
    EXPECT_REJECT_BUF(&buf, 0, DJN_ERR_PROTO, "malformed tensor reference");
    djn_buf_release(&buf);
}

/* A zero-size dim makes the reference empty, but the rest must still be well-formed:
 * a negative size after it is malformed, and offset*itemsize must not wrap. */
static void test_extent_zero_size_validates(void) {
    uint64_t b, e;
    static const int64_t sz[2] = {0, -5}, st[2] = {1, 1};
    djn_tref_t t = tref_make(1, 0, DJN_DTYPE_F32, 2, sz, st);
    CHECK(!extent(&t, &b, &e));
    static const int64_t z[1] = {0}, one[1] = {1};
    t = tref_make(1, INT64_MAX, DJN_DTYPE_C128, 1, z, one);
    bool ok = extent(&t, &b, &e);
    CHECK(!ok || (b == e && b / 16 == (uint64_t)INT64_MAX)); /* refused, or no wrap */
    static const int64_t sz3[3] = {0, 2, 2}, st3[3] = {1, (int64_t)1 << 62, (int64_t)1 << 62};
    t = tref_make(1, 0, DJN_DTYPE_F32, 3, sz3, st3);
    (void)extent(&t, &b, &e); /* either way: no crash */
    /* The answer must not depend on the order of the dims: [0, 3] strides [1, -6] and
     * [3, 0] strides [-6, 1] at offset 4 are the same (empty) view. */
    static const int64_t sa[2] = {0, 3}, ta[2] = {1, -6}, sb[2] = {3, 0}, tb[2] = {-6, 1};
    djn_tref_t ra = tref_make(1, 4, DJN_DTYPE_F32, 2, sa, ta);
    djn_tref_t rb = tref_make(1, 4, DJN_DTYPE_F32, 2, sb, tb);
    uint64_t b2, e2;
    bool oka = extent(&ra, &b, &e), okb = extent(&rb, &b2, &e2);
    CHECK(oka == okb);
    if (oka && okb)
        CHECK(b == b2 && e == e2);
}

/* Random small references against brute-force enumeration of every element. */
static void test_extent_bruteforce(void) {
    rng_seed(0x5eed0004);
    int mismatches = 0;
    for (int iter = 0; iter < 20000; iter++) {
        uint8_t nd = (uint8_t)rng_below(5);
        int64_t sz[DJN_MAX_DIMS], st[DJN_MAX_DIMS];
        for (unsigned d = 0; d < nd; d++) {
            sz[d] = rng_below(10) == 0 ? 0 : 1 + (int64_t)rng_below(4);
            st[d] = (int64_t)rng_below(13) - 6;
        }
        static const uint8_t dts[] = {DJN_DTYPE_U8, DJN_DTYPE_I16, DJN_DTYPE_F32, DJN_DTYPE_F64,
                                      DJN_DTYPE_C128};
        uint8_t dt = dts[rng_below(5)];
        uint64_t isz = djn_dtype_size(dt);
        int64_t off = (int64_t)rng_below(40);
        djn_tref_t t = tref_make(1, off, dt, nd, sz, st);

        bool empty = false;
        for (unsigned d = 0; d < nd; d++)
            empty |= sz[d] == 0;
        int64_t lo = off, hi = off;
        if (!empty) {
            unsigned idx[DJN_MAX_DIMS] = {0};
            for (;;) {
                int64_t at = off;
                for (unsigned d = 0; d < nd; d++)
                    at += (int64_t)idx[d] * st[d];
                lo = at < lo ? at : lo;
                hi = at > hi ? at : hi;
                unsigned d = 0;
                while (d < nd && ++idx[d] == (unsigned)sz[d])
                    idx[d++] = 0;
                if (d == nd)
                    break;
            }
        }
        if (empty) { /* tested for order independence in test_extent_zero_size_validates */
            uint64_t b, e;
            if (extent(&t, &b, &e) && (b != e || b != (uint64_t)off * isz))
                mismatches++;
            continue;
        }
        uint64_t b, e;
        bool ok = extent(&t, &b, &e);
        bool want_ok = lo >= 0;
        if (ok != want_ok) {
            mismatches++;
        } else if (ok && empty) {
            if (b != e || b != (uint64_t)off * isz)
                mismatches++;
        } else if (ok) {
            if (b != (uint64_t)lo * isz || e != (uint64_t)(hi + 1) * isz)
                mismatches++;
        }
        if (mismatches == 1 && ok != want_ok) {
            printf("first mismatch: ndim %u offset %lld ok %d want %d\n", nd, (long long)off, ok,
                   want_ok);
            mismatches++; /* print once */
        }
    }
    CHECK_EQ_INT(mismatches, 0);
}

/* ------------------------------------------------------------------ 6. fault injection */

/* A GRAPH big enough that decoding needs several arena chunks. */
static void build_big_graph(djn_buf_t *b) {
    djn_enc_header(b, DJN_MSG_GRAPH, 1, 2);
    djn_enc_map(b, 6);
    djn_enc_cstr(b, "binds");
    djn_enc_array(b, 300);
    for (int i = 0; i < 300; i++)
        djn_enc_uint(b, 1000 + (uint64_t)i);
    djn_enc_cstr(b, "allocs"); /* client handles are in [1, 2^62) */
    djn_enc_array(b, 300);
    for (int i = 0; i < 300; i++)
        enc_pair(b, 1 + (uint64_t)i, 24);
    djn_enc_cstr(b, "uploads");
    djn_enc_array(b, 1);
    enc_pair(b, 1, 1);
    djn_enc_cstr(b, "nodes");
    djn_enc_array(b, 200);
    for (int i = 0; i < 200; i++) {
        enc_node_start(b, "aten::add", "out");
        djn_enc_array(b, 3);
        enc_tref_2x3(b, (uint64_t)i);
        djn_enc_array(b, 2);
        enc_tref_2x3(b, (uint64_t)i + 1);
        djn_enc_complex(b, 1, 2);
        djn_enc_cstr(b, "a string argument of some length");
        djn_enc_array(b, 1);
        enc_tref_2x3(b, (uint64_t)i + 2);
        djn_enc_uint(b, 0);
    }
    djn_enc_cstr(b, "frees");
    djn_enc_array(b, 100);
    for (int i = 0; i < 100; i++)
        djn_enc_uint(b, (uint64_t)i);
    djn_enc_cstr(b, "blob"); /* one allocation bigger than a chunk */
    uint8_t *z = calloc(1, 40000);
    djn_enc_bin(b, z, 40000);
    free(z);
}

static void test_fault_injection_decode(void) {
    djn_buf_t b = {0};
    build_big_graph(&b);
    int64_t mem0 = djn_mem_in_use();
    int nomem = 0, okruns = 0, bad = 0, tail_ok = 0;
    for (int64_t n = 0; n < 2000 && tail_ok < 20; n++) {
        djn_msg_t *m = (djn_msg_t *)(uintptr_t)1;
        char err[ERRLEN] = "";
        djn_mem_fail_after(n);
        djn_status_t st = djn_msg_decode(b.data, b.len, 1, &m, NULL, err, ERRLEN);
        djn_mem_fail_after(-1);
        if (st == DJN_OK) {
            okruns++;
            tail_ok++;
            if (!m || m->u.graph.nnodes != 200 || m->u.graph.nallocs != 300 ||
                m->u.graph.nfrees != 100 || m->u.graph.nbinds != 300 ||
                m->u.graph.nslots != 202 || strcmp(m->u.graph.nodes[199].op, "aten::add") != 0)
                bad++;
            djn_msg_free(&m);
        } else {
            tail_ok = 0;
            if (st != DJN_ERR_NOMEM) {
                printf("fail_after(%lld): status %d (%s)\n", (long long)n, (int)st, err);
                bad++;
            }
            if (m != NULL)
                bad++;
            nomem++;
        }
        if (djn_mem_in_use() != mem0) {
            printf("fail_after(%lld): %lld bytes held\n", (long long)n,
                   (long long)(djn_mem_in_use() - mem0));
            bad++;
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(nomem >= 3); /* arena, chunks, the big blob */
    CHECK(tail_ok >= 20);
    CHECK(okruns >= 20);

    /* djn_decode_value into a caller's arena: the arena survives a failure. */
    for (int64_t n = 0; n < 200; n++) {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = (djn_value_t *)(uintptr_t)1;
        char err[ERRLEN] = "";
        djn_mem_fail_after(n);
        djn_status_t st = djn_decode_value(b.data, b.len, a, &v, err, ERRLEN);
        djn_mem_fail_after(-1);
        CHECK(st == DJN_OK || st == DJN_ERR_NOMEM);
        CHECK(st == DJN_OK ? v != NULL : v == NULL);
        if (st == DJN_ERR_NOMEM)
            CHECK_HAS(err, "out of memory");
        djn_arena_destroy(&a);
        if (st == DJN_OK && n > 50)
            break;
    }
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
    djn_buf_release(&b);
}

/* The documented failure contract includes "err says what is wrong" for NOMEM too. */
static void test_fault_injection_err_text(void) {
    djn_buf_t b = {0};
    build_graph(&b);
    int silent = 0;
    for (int64_t n = 0; n < 50; n++) {
        djn_msg_t *m = NULL;
        char err[ERRLEN] = "";
        djn_mem_fail_after(n);
        djn_status_t st = djn_msg_decode(b.data, b.len, G_NFRAMES, &m, NULL, err, ERRLEN);
        djn_mem_fail_after(-1);
        if (st == DJN_OK) {
            djn_msg_free(&m);
            break;
        }
        if (err[0] == '\0') {
            if (!silent)
                printf("fail_after(%lld): %s with an empty error message\n", (long long)n,
                       djn_status_str(st));
            silent++;
        }
    }
    CHECK_EQ_INT(silent, 0);
    djn_buf_release(&b);
}

static void test_fault_injection_encode(void) {
    int64_t mem0 = djn_mem_in_use();
    int saw_fail = 0;
    for (int64_t n = 0; n < 30; n++) {
        djn_buf_t b = {0};
        djn_mem_fail_after(n);
        build_big_graph(&b); /* ~100 KB: several reallocs */
        djn_mem_fail_after(-1);
        if (b.failed) {
            saw_fail++;
            size_t len = b.len;
            djn_enc_nil(&b); /* ignored after a failure */
            CHECK_EQ_INT(b.len, len);
            CHECK(b.len <= b.cap);
            djn_buf_reset(&b); /* usable again */
            CHECK(!b.failed);
            djn_enc_int(&b, 5);
            CHECK(!b.failed && b.len == 1);
        } else {
            djn_msg_t *m = decode_ok(&b, 1);
            CHECK(m != NULL);
            djn_msg_free(&m);
        }
        djn_buf_release(&b);
        CHECK_EQ_INT(djn_mem_in_use(), mem0);
    }
    CHECK(saw_fail > 0);
}

/* ------------------------------------------------------------------ 7. arena */

static void test_arena(void) {
    int64_t mem0 = djn_mem_in_use();
    djn_arena_t *a = djn_arena_new();
    CHECK(a != NULL);
    CHECK(djn_mem_in_use() > mem0);
    /* Many small allocations: zeroed, aligned, disjoint. */
    enum { N = 20000 };
    uint8_t **ptrs = malloc(sizeof(uint8_t *) * N);
    size_t *lens = malloc(sizeof(size_t) * N);
    rng_seed(0x5eed0005);
    for (int i = 0; i < N; i++) {
        lens[i] = rng_below(100);
        ptrs[i] = djn_arena_alloc(a, lens[i]);
        CHECK(ptrs[i] != NULL);
        if (!ptrs[i])
            break;
        CHECK(((uintptr_t)ptrs[i] & 7) == 0);
        for (size_t j = 0; j < lens[i]; j++)
            if (ptrs[i][j] != 0) {
                CHECK(!"arena memory not zeroed");
                break;
            }
        memset(ptrs[i], (uint8_t)(i | 1), lens[i]);
    }
    for (int i = 0; i < N; i++)
        for (size_t j = 0; j < lens[i]; j++)
            if (ptrs[i][j] != (uint8_t)(i | 1)) {
                CHECK(!"arena allocations overlap");
                i = N;
                break;
            }
    /* Zero bytes still gives distinct memory. */
    void *z1 = djn_arena_alloc(a, 0), *z2 = djn_arena_alloc(a, 0);
    CHECK(z1 && z2 && z1 != z2);
    /* One huge allocation, larger than a chunk. */
    size_t huge = (size_t)32 << 20;
    uint8_t *h = djn_arena_alloc(a, huge);
    CHECK(h != NULL);
    if (h) {
        CHECK(((uintptr_t)h & 7) == 0);
        CHECK(h[0] == 0 && h[huge / 2] == 0 && h[huge - 1] == 0);
        size_t nz = 0;
        for (size_t i = 0; i < huge; i += 4096)
            nz += h[i] != 0;
        CHECK_EQ_INT(nz, 0);
        memset(h, 0xab, huge);
    }
    CHECK(djn_mem_in_use() >= mem0 + (int64_t)huge);
    /* Small ones after the huge one still work and do not alias it. */
    uint8_t *after = djn_arena_alloc(a, 16);
    CHECK(after && (after + 16 <= h || after >= h + huge));
    CHECK(h[huge - 1] == 0xab);
    /* Exactly a chunk and a chunk plus one. */
    CHECK(djn_arena_alloc(a, 16384) != NULL);
    CHECK(djn_arena_alloc(a, 16385) != NULL);
    free(ptrs);
    free(lens);

    djn_arena_destroy(&a);
    CHECK(a == NULL);
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
    djn_arena_destroy(&a);   /* *self_p NULL */
    djn_arena_destroy(NULL); /* self_p NULL */

    /* A failed allocation leaves the arena usable. */
    a = djn_arena_new();
    djn_mem_fail_after(0);
    CHECK(djn_arena_alloc(a, 10) == NULL);
    CHECK(djn_arena_alloc(a, 10) != NULL); /* only one failure was armed */
    djn_mem_fail_after(0);
    CHECK(djn_arena_alloc(a, 100000) == NULL);
    djn_mem_fail_after(-1);
    CHECK(djn_arena_alloc(a, 100000) != NULL);
    djn_arena_destroy(&a);
    djn_mem_fail_after(0);
    CHECK(djn_arena_new() == NULL);
    djn_mem_fail_after(-1);
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
}

/* Sizes whose rounding or header addition wraps size_t must fail, not return a small
 * block the caller believes is huge. */
static void test_arena_size_overflow(void) {
    djn_arena_t *a = djn_arena_new();
    CHECK(djn_arena_alloc(a, SIZE_MAX) == NULL);
    CHECK(djn_arena_alloc(a, SIZE_MAX - 7) == NULL);
    CHECK(djn_arena_alloc(a, SIZE_MAX - 20) == NULL);
    djn_arena_destroy(&a);
}

static void test_mem_counter(void) {
    int64_t mem0 = djn_mem_in_use();
    char *s = djn_strdup("hello");
    CHECK_EQ_INT(djn_mem_in_use(), mem0 + 6);
    CHECK_STR(s, "hello");
    djn_strfree(s);
    djn_strfree(NULL);
    void *p = djn_calloc(3, 5);
    CHECK(p && ((uint8_t *)p)[14] == 0);
    p = djn_realloc(p, 15, 100);
    CHECK_EQ_INT(djn_mem_in_use(), mem0 + 100);
    djn_free(p, 100);
    djn_free(NULL, 0);
    CHECK(djn_calloc(SIZE_MAX / 2, 4) == NULL);
    /* The Nth allocation fails, once. */
    djn_mem_fail_after(2);
    void *a1 = djn_malloc(1), *a2 = djn_malloc(1), *a3 = djn_malloc(1), *a4 = djn_malloc(1);
    CHECK(a1 && a2 && !a3 && a4);
    djn_free(a1, 1);
    djn_free(a2, 1);
    djn_free(a4, 1);
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
}

int main(void) {
    /* 1. round trips */
    RUN(test_roundtrip_ints);
    RUN(test_roundtrip_floats);
    RUN(test_roundtrip_nil_bool);
    RUN(test_roundtrip_str_bin);
    RUN(test_roundtrip_nested);
    RUN(test_roundtrip_tref);
    RUN(test_roundtrip_complex);
    RUN(test_enc_value_echo);
    RUN(test_enc_error_reply);
    RUN(test_buf_growth);
    /* 2. messages */
    RUN(test_msg_hello);
    RUN(test_msg_hello_version_wide);
    RUN(test_msg_bodyless_types);
    RUN(test_msg_graph);
    RUN(test_msg_graph_defaults);
    RUN(test_msg_fetch);
    RUN(test_msg_graph_fp);
    RUN(test_msg_graph_cached);
    RUN(test_msg_have);
    /* 3. malformed */
    RUN(test_reject_empty);
    RUN(test_reject_empty_null);
    RUN(test_reject_truncations);
    RUN(test_reject_trailing);
    RUN(test_reject_hostile_lengths);
    RUN(test_reject_item_limit);
    RUN(test_reject_object_limit);
    RUN(test_reject_depth);
    RUN(test_reject_ext);
    RUN(test_reject_header_limit);
    RUN(test_reject_frames_limit);
    RUN(test_reject_uploads);
    RUN(test_reject_nodes);
    RUN(test_binds);
    RUN(test_reject_graph_fields);
    RUN(test_reject_header_fields);
    RUN(test_empty_string_first);
    RUN(test_buf_raw_empty);
    RUN(test_reject_nul_in_names);
    RUN(test_err_buffers);
    /* 4. fuzzing */
    RUN(test_fuzz_random_buffers);
    RUN(test_fuzz_random_trees);
    RUN(test_fuzz_random_trees_cached);
    RUN(test_fuzz_mutations);
    /* 5. extents */
    RUN(test_extent_basic);
    RUN(test_extent_rejects);
    RUN(test_extent_no_signed_overflow);
    RUN(test_extent_zero_size_validates);
    RUN(test_extent_bruteforce);
    /* 6. fault injection */
    RUN(test_fault_injection_decode);
    RUN(test_fault_injection_err_text);
    RUN(test_fault_injection_encode);
    /* 7. memory */
    RUN(test_arena);
    RUN(test_arena_size_overflow);
    RUN(test_mem_counter);
    return djn_test_report();
}
