/* test_codec.c: unit tests for the msgpack codec (csrc/common/djn_codec.c) and the message
 * layer on top of it (csrc/common/djn_msgs.c).
 *
 * Every well-formed message below is built the way the client and the server build it:
 * fill a typed struct of djn_proto.h and call its encoder. Hand-written msgpack appears
 * only where a test sends something deliberately malformed, and even there the usual
 * shape is "encode a valid message with the typed encoder, then corrupt it" (msg_edit,
 * node_edit: decode the valid bytes into a value tree and re-encode it with one entry
 * replaced, removed or added).
 *
 * What is covered, in the order of main():
 *   1. Value round trips: every djn_enc_* value through djn_decode_value and back
 *      through djn_enc_value, at every msgpack width boundary.
 *   2. Message round trips: every encoder/decoder pair of djn_msgs.c (HELLO, GRAPH,
 *      GRAPH_CACHED, FETCH, HAVE, the empty messages; the HELLO, GRAPH, HAVE, STATS and
 *      ERROR replies; dyn tensors), compared field by field, plus djn_nodes_clone and
 *      djn_value_clone.
 *   3. djn_msg_decode on well-formed messages, checking every typed field (nodes keep
 *      slot numbers in their tensor references; "binds" is handed over as the slot table).
 *   4. Malformed input: each must fail with a status, *out NULL, an exact error text and
 *      no counted memory held: empty, every truncation, trailing bytes, hostile lengths,
 *      depth, extension payloads, limits, negative strides and every field error.
 *   5. Fuzzing with a fixed-seed PRNG: random buffers, random protocol-shaped trees,
 *      single- and multi-byte mutations of a valid GRAPH. Any result is fine; crashes,
 *      sanitizer reports, leaks and accepted nonsense are not.
 *   6. djn_tref_extent against a brute-force enumeration, plus its edge cases.
 *   7. Fault injection (djn_mem_fail_after) over decoding, encoding and cloning.
 *   8. The arena and the memory counter.
 * Each test runs in its own child process (djn_test.h), so a sanitizer abort fails that
 * one test rather than the run. Everything is deterministic. */
#include "djn_test.h"

#include <float.h>
#include <math.h>

#include "djn_codec.h"
#include "djn_mem.h"
#include "djn_proto.h"
#include "djn_stats.h"
#include "djn_status.h"

#define ERRLEN 256

/* ------------------------------------------------------------------ helpers: values */

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

/* A contiguous float32 [2, 3] reference to `handle` (a slot, inside nodes). */
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

/* djn_value_t constructors, for the typed structs the encoders take. */
static djn_value_t v_nil(void) {
    djn_value_t v;
    memset(&v, 0, sizeof v);
    v.kind = DJN_V_NONE;
    return v;
}
static djn_value_t v_bool(bool x) {
    djn_value_t v = v_nil();
    v.kind = DJN_V_BOOL;
    v.u.b = x;
    return v;
}
static djn_value_t v_int(int64_t i) {
    djn_value_t v = v_nil();
    v.kind = DJN_V_INT;
    v.u.i = i;
    return v;
}
static djn_value_t v_float(double f) {
    djn_value_t v = v_nil();
    v.kind = DJN_V_FLOAT;
    v.u.f = f;
    return v;
}
static djn_value_t v_complex(double re, double im) {
    djn_value_t v = v_nil();
    v.kind = DJN_V_COMPLEX;
    v.u.c[0] = re;
    v.u.c[1] = im;
    return v;
}
static djn_value_t v_strn(const char *s, uint32_t n) {
    djn_value_t v = v_nil();
    v.kind = DJN_V_STR;
    v.len = n;
    v.u.s = s;
    return v;
}
static djn_value_t v_str(const char *s) {
    return v_strn(s, (uint32_t)strlen(s));
}
static djn_value_t v_bin(const void *p, uint32_t n) {
    djn_value_t v = v_strn(p, n);
    v.kind = DJN_V_BIN;
    return v;
}
static djn_value_t v_tensor(djn_tref_t *t) {
    djn_value_t v = v_nil();
    v.kind = DJN_V_TENSOR;
    v.u.t = t;
    return v;
}
static djn_value_t v_list(djn_value_t *items, uint32_t n) {
    djn_value_t v = v_nil();
    v.kind = DJN_V_LIST;
    v.len = n;
    v.u.items = items;
    return v;
}
/* kv holds 2 * npairs values: key, value, key, value... */
static djn_value_t v_map(djn_value_t *kv, uint32_t npairs) {
    djn_value_t v = v_list(kv, npairs);
    v.kind = DJN_V_MAP;
    return v;
}

static djn_node_t node_make(const char *op, const char *overload, djn_value_t *args, uint32_t nargs,
                            djn_value_t *outs, uint32_t nouts, uint32_t flags) {
    djn_node_t n;
    memset(&n, 0, sizeof n);
    n.op = op;
    n.overload = overload;
    n.args = args;
    n.nargs = nargs;
    n.outs = outs;
    n.nouts = nouts;
    n.flags = flags;
    return n;
}

static djn_msg_hdr_t hdr_make(uint8_t type, uint64_t sid, uint64_t seq) {
    djn_msg_hdr_t h;
    memset(&h, 0, sizeof h);
    h.type = type;
    h.sid = sid;
    h.seq = seq;
    return h;
}

/* An empty request struct: no binds, no nodes, no seed. */
static djn_graph_req_t graph_empty(void) {
    djn_graph_req_t g;
    memset(&g, 0, sizeof g);
    g.seed = -1;
    return g;
}

/* ------------------------------------------------------------------ helpers: comparison */

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

/* Deep equality; floats and complex numbers compare bitwise. */
static bool value_eq(const djn_value_t *a, const djn_value_t *b) {
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case DJN_V_NONE:
        return true;
    case DJN_V_BOOL:
        return a->u.b == b->u.b;
    case DJN_V_INT:
        return a->u.i == b->u.i;
    case DJN_V_FLOAT:
        return memcmp(&a->u.f, &b->u.f, sizeof(double)) == 0;
    case DJN_V_COMPLEX:
        return memcmp(a->u.c, b->u.c, sizeof a->u.c) == 0;
    case DJN_V_STR:
    case DJN_V_BIN:
        return a->len == b->len && (!a->len || memcmp(a->u.s, b->u.s, a->len) == 0);
    case DJN_V_TENSOR:
        return tref_eq(a->u.t, b->u.t);
    case DJN_V_LIST:
    case DJN_V_MAP: {
        if (a->len != b->len)
            return false;
        uint32_t n = a->kind == DJN_V_MAP ? 2 * a->len : a->len;
        for (uint32_t i = 0; i < n; i++)
            if (!value_eq(&a->u.items[i], &b->u.items[i]))
                return false;
        return true;
    }
    default:
        return false;
    }
}

static bool node_eq(const djn_node_t *a, const djn_node_t *b) {
    if (strcmp(a->op, b->op) || strcmp(a->overload, b->overload) || a->nargs != b->nargs ||
        a->nouts != b->nouts || a->flags != b->flags)
        return false;
    for (uint32_t i = 0; i < a->nargs; i++)
        if (!value_eq(&a->args[i], &b->args[i]))
            return false;
    for (uint32_t i = 0; i < a->nouts; i++)
        if (!value_eq(&a->outs[i], &b->outs[i]))
            return false;
    return true;
}

/* Every field a GRAPH carries, except nslots (the decoder's output) and the nodes when
 * `nodes` is false (GRAPH_CACHED). Prints the first difference. */
static bool graph_eq(const djn_graph_req_t *a, const djn_graph_req_t *b, bool nodes) {
    const char *why = NULL;
    if (a->device != b->device)
        why = "device";
    else if (a->seed != b->seed)
        why = "seed";
    else if (a->fp[0] != b->fp[0] || a->fp[1] != b->fp[1])
        why = "fp";
    else if (a->nbinds != b->nbinds ||
             (a->nbinds && memcmp(a->binds, b->binds, a->nbinds * sizeof(uint64_t))))
        why = "binds";
    else if (a->nallocs != b->nallocs)
        why = "nallocs";
    else if (a->nuploads != b->nuploads)
        why = "nuploads";
    else if (a->nfrees != b->nfrees ||
             (a->nfrees && memcmp(a->frees, b->frees, a->nfrees * sizeof(uint64_t))))
        why = "frees";
    else if (a->nfetches != b->nfetches)
        why = "nfetches";
    else if (nodes && a->nnodes != b->nnodes)
        why = "nnodes";
    for (uint32_t i = 0; !why && i < a->nallocs; i++)
        if (a->allocs[i].handle != b->allocs[i].handle ||
            a->allocs[i].nbytes != b->allocs[i].nbytes)
            why = "allocs";
    for (uint32_t i = 0; !why && i < a->nuploads; i++)
        if (a->uploads[i].handle != b->uploads[i].handle ||
            a->uploads[i].frame != b->uploads[i].frame ||
            a->uploads[i].text != b->uploads[i].text ||
            a->uploads[i].chunk != b->uploads[i].chunk ||
            (a->uploads[i].chunk && (a->uploads[i].offset != b->uploads[i].offset ||
                                     a->uploads[i].total != b->uploads[i].total)))
            why = "uploads";
    for (uint32_t i = 0; !why && i < a->nfetches; i++)
        if (a->fetches[i].handle != b->fetches[i].handle ||
            a->fetches[i].offset != b->fetches[i].offset ||
            a->fetches[i].nbytes != b->fetches[i].nbytes)
            why = "fetches";
    for (uint32_t i = 0; !why && nodes && i < a->nnodes; i++)
        if (!node_eq(&a->nodes[i], &b->nodes[i]))
            why = "nodes";
    if (why)
        printf("graph_eq: %s differ\n", why);
    return why == NULL;
}

/* ------------------------------------------------------------------ helpers: decoding */

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

/* Decode a reply that must be accepted. */
static djn_reply_t *reply_ok(const djn_buf_t *b) {
    djn_reply_t *r = NULL;
    char err[ERRLEN] = "";
    djn_status_t st = djn_reply_decode(b->data, b->len, &r, err, ERRLEN);
    if (st != DJN_OK)
        printf("unexpected reply decode failure: %s: %s\n", djn_status_str(st), err);
    return r;
}

/* ------------------------------------------------------------------ helpers: corruption */

/* Writes one deliberately chosen (often malformed) piece of msgpack. */
typedef void (*enc_field_fn)(djn_buf_t *b);

static bool s_key_is(const djn_value_t *k, const char *key) {
    return k->kind == DJN_V_STR && k->len == strlen(key) && memcmp(k->u.s, key, k->len) == 0;
}

/* Append v re-encoded with one entry changed: in a map the value under `key`, in a list
 * the item at `index`. fn writes the new entry; fn NULL removes it; an absent key (or
 * index == len) appends it. */
static void enc_edited(djn_buf_t *out, const djn_value_t *v, const char *key, uint32_t index,
                       enc_field_fn fn) {
    if (v->kind == DJN_V_MAP) {
        uint32_t at = UINT32_MAX;
        for (uint32_t i = 0; i < v->len; i++)
            if (s_key_is(&v->u.items[2 * i], key))
                at = i;
        djn_enc_map(out, v->len - (at != UINT32_MAX && !fn) + (at == UINT32_MAX && fn));
        for (uint32_t i = 0; i < v->len; i++) {
            if (i == at && !fn)
                continue;
            djn_enc_value(out, &v->u.items[2 * i]);
            if (i == at)
                fn(out);
            else
                djn_enc_value(out, &v->u.items[2 * i + 1]);
        }
        if (at == UINT32_MAX && fn) {
            djn_enc_cstr(out, key);
            fn(out);
        }
        return;
    }
    CHECK(v->kind == DJN_V_LIST);
    bool append = index >= v->len;
    djn_enc_array(out, v->len - (!append && !fn) + (append && fn));
    for (uint32_t i = 0; i < v->len; i++) {
        if (i != index)
            djn_enc_value(out, &v->u.items[i]);
        else if (fn)
            fn(out);
    }
    if (append && fn)
        fn(out);
}

/* Replace *b by the message it holds with one header field (in_body false) or body field
 * (in_body true) changed as enc_edited does. */
static void msg_edit(djn_buf_t *b, bool in_body, const char *key, enc_field_fn fn) {
    djn_arena_t *a = djn_arena_new();
    djn_value_t *root = NULL;
    char err[ERRLEN];
    djn_buf_t out = {0};
    CHECK_EQ_INT(dec_value(b, a, &root, err), DJN_OK);
    if (root && !in_body) {
        enc_edited(&out, root, key, 0, fn);
    } else if (root) {
        CHECK(root->kind == DJN_V_MAP);
        djn_enc_map(&out, root->len);
        for (uint32_t i = 0; i < root->len; i++) {
            djn_enc_value(&out, &root->u.items[2 * i]);
            if (s_key_is(&root->u.items[2 * i], "body"))
                enc_edited(&out, &root->u.items[2 * i + 1], key, 0, fn);
            else
                djn_enc_value(&out, &root->u.items[2 * i + 1]);
        }
    }
    djn_arena_destroy(&a);
    CHECK(!out.failed);
    djn_buf_release(b);
    *b = out;
}
static void body_edit(djn_buf_t *b, const char *key, enc_field_fn fn) {
    msg_edit(b, true, key, fn);
}
static void hdr_edit(djn_buf_t *b, const char *key, enc_field_fn fn) {
    msg_edit(b, false, key, fn);
}

/* A valid node [aten::add, "", [], [], 0] written by djn_node_encode, appended to b with
 * element `index` replaced (fn), removed (fn NULL) or appended (index 5). */
static void node_edit(djn_buf_t *b, uint32_t index, enc_field_fn fn) {
    djn_node_t n = node_make("aten::add", "", NULL, 0, NULL, 0, 0);
    djn_buf_t nb = {0};
    djn_node_encode(&nb, &n);
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(dec_value(&nb, a, &v, err), DJN_OK);
    if (v)
        enc_edited(b, v, NULL, index, fn);
    djn_arena_destroy(&a);
    djn_buf_release(&nb);
}

/* The header of a message up to the body's value: what djn_empty_encode writes, less its
 * empty body map. The caller appends a body (the fuzzer's random ones). */
static void enc_header_prefix(djn_buf_t *b, uint8_t type, uint64_t sid, uint64_t seq) {
    djn_msg_hdr_t h = hdr_make(type, sid, seq);
    djn_empty_encode(b, &h);
    CHECK(b->len > 0 && b->data[b->len - 1] == 0x80); /* fixmap 0 */
    b->len--;
}

/* ------------------------------------------------------------------ the canonical GRAPH */

#define G_SID 0x1122334455667788ull
#define G_SEQ 99u
#define G_NFRAMES 2u
#define FP_HI 0x0123456789abcdefull
#define FP_LO 0xfedcba9876543210ull /* above 2^63: travels as uint64, compared bitwise */

/* The canonical well-formed GRAPH used by the message, truncation, mutation and fault
 * tests. Tensor references in nodes carry slots that "binds" maps to handles (so a
 * fragment's bytes do not depend on handle values); the decoder keeps the slots and hands
 * "binds" over as g->binds. Below, tN is the slot bound to handle N (t10 = 0, t11 = 1,
 * t12 = 2):
 *   binds [10, 11, 12], dev 1, seed 1234, fp [FP_HI, FP_LO],
 *   allocs [[10,4096],[11,24],[12,24]], uploads [[10,1],[11,2]],
 *   nodes: aten::add.out(t10, t11, alpha 1.5) -> [t12]                flags 0
 *          aten::nonzero(t12) -> [13 (handle hint)]                   flags DYNAMIC
 *          aten::cat([t10, t11 transposed: [3, 2] strides [1, 3]], 0) -> [nil] flags 0
 *   frees [10, 11], fetch [[12, 0, 24], [13, 8, 16]].
 * No negative stride: PyTorch has none and the decoder refuses them (see
 * test_reject_negative_strides). */
typedef struct {
    djn_tref_t t[5];
    djn_value_t add_args[3], add_outs[1], nz_args[1], nz_outs[1];
    djn_value_t cat_list[2], cat_args[2], cat_outs[1];
    djn_node_t nodes[3];
    uint64_t binds[3], frees[2];
    djn_alloc_t allocs[3];
    djn_upload_t uploads[2];
    djn_fetch_t fetches[2];
    djn_graph_req_t g;
} canon_t;

/* Fill c (which must not move afterwards: the request points into it). */
static void canon_init(canon_t *c) {
    static const int64_t tsz[2] = {3, 2}, tst[2] = {1, 3};
    memset(c, 0, sizeof *c);
    c->t[0] = tref_2x3(0);
    c->t[1] = tref_2x3(1);
    c->t[2] = tref_2x3(2);
    c->t[3] = tref_2x3(2);
    c->add_args[0] = v_tensor(&c->t[0]);
    c->add_args[1] = v_tensor(&c->t[1]);
    c->add_args[2] = v_float(1.5);
    c->add_outs[0] = v_tensor(&c->t[2]);
    c->nz_args[0] = v_tensor(&c->t[3]);
    c->nz_outs[0] = v_int(13);
    c->t[4] = tref_make(1, 0, DJN_DTYPE_F32, 2, tsz, tst);
    c->cat_list[0] = v_tensor(&c->t[0]);
    c->cat_list[1] = v_tensor(&c->t[4]);
    c->cat_args[0] = v_list(c->cat_list, 2);
    c->cat_args[1] = v_int(0);
    c->cat_outs[0] = v_nil();
    c->nodes[0] = node_make("aten::add", "out", c->add_args, 3, c->add_outs, 1, 0);
    c->nodes[1] = node_make("aten::nonzero", "", c->nz_args, 1, c->nz_outs, 1, DJN_NODE_DYNAMIC);
    c->nodes[2] = node_make("aten::cat", "", c->cat_args, 2, c->cat_outs, 1, 0);
    c->binds[0] = 10;
    c->binds[1] = 11;
    c->binds[2] = 12;
    c->allocs[0] = (djn_alloc_t){10, 4096};
    c->allocs[1] = (djn_alloc_t){11, 24};
    c->allocs[2] = (djn_alloc_t){12, 24};
    c->uploads[0] = (djn_upload_t){10, 1, false, false, 0, 0};
    c->uploads[1] = (djn_upload_t){11, 2, false, false, 0, 0};
    c->frees[0] = 10;
    c->frees[1] = 11;
    c->fetches[0] = (djn_fetch_t){12, 0, 24};
    c->fetches[1] = (djn_fetch_t){13, 8, 16};
    djn_graph_req_t *g = &c->g;
    *g = graph_empty();
    g->device = 1;
    g->seed = 1234;
    g->fp[0] = FP_HI;
    g->fp[1] = FP_LO;
    g->nbinds = 3;
    g->binds = c->binds;
    g->nallocs = 3;
    g->allocs = c->allocs;
    g->nuploads = 2;
    g->uploads = c->uploads;
    g->nnodes = 3;
    g->nodes = c->nodes;
    g->nfrees = 2;
    g->frees = c->frees;
    g->nfetches = 2;
    g->fetches = c->fetches;
}

static void build_graph_as(djn_buf_t *b, uint8_t type) {
    static canon_t c;
    canon_init(&c);
    djn_msg_hdr_t h = hdr_make(type, G_SID, G_SEQ);
    djn_graph_req_encode(b, &h, &c.g);
}
static void build_graph(djn_buf_t *b) {
    build_graph_as(b, DJN_MSG_GRAPH);
}

/* The base of most field rejections: a GRAPH (or FETCH, GRAPH_CACHED) with binds
 * [100, 101, 102] and every other field empty. */
static const uint64_t s_binds_100[3] = {100, 101, 102};
static djn_graph_req_t graph_base(void) {
    djn_graph_req_t g = graph_empty();
    g.nbinds = 3;
    g.binds = s_binds_100;
    return g;
}
static void encode_graph(djn_buf_t *b, uint8_t type, const djn_graph_req_t *g) {
    djn_buf_reset(b);
    djn_msg_hdr_t h = hdr_make(type, 1, 2);
    djn_graph_req_encode(b, &h, g);
}

/* graph_base encoded as `type`, then its body field `key` replaced by fn's bytes. */
static void graph_with(djn_buf_t *b, uint8_t type, const char *key, enc_field_fn fn) {
    djn_graph_req_t g = graph_base();
    encode_graph(b, type, &g);
    body_edit(b, key, fn);
}

/* A GRAPH whose only node is n, with binds [100, 101, 102]. */
static void graph_with_node(djn_buf_t *b, const djn_node_t *n) {
    djn_graph_req_t g = graph_base();
    g.nnodes = 1;
    g.nodes = n;
    encode_graph(b, DJN_MSG_GRAPH, &g);
}

/* ------------------------------------------------------------------ 1. value round trips */

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

/* The value layer carries any 64-bit field values, negative strides included: refusing
 * malformed references is the message layer's job (test_reject_negative_strides). */
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

/* ------------------------------------------------------------------ 2. message round trips */

static void test_rt_hello_req(void) {
    djn_buf_t b = {0};
    djn_hello_req_t r = {DJN_PROTO_VERSION, "djinn-python 0.1 pid 1234"};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_HELLO, 0, 1);
    djn_hello_req_encode(&b, &h, &r);
    CHECK(!b.failed);
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
        CHECK(m->arena != NULL);
    }
    djn_msg_free(&m);
    CHECK(m == NULL);
    /* A NULL client travels as ""; any 32-bit version decodes (the check is the server's). */
    static const uint32_t versions[] = {0, 7, UINT32_MAX};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        djn_hello_req_t r2 = {versions[i], NULL};
        djn_msg_hdr_t h2 = hdr_make(DJN_MSG_HELLO, UINT64_MAX, 1ull << 40);
        djn_buf_reset(&b);
        djn_hello_req_encode(&b, &h2, &r2);
        m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            CHECK(m->sid == UINT64_MAX && m->seq == 1ull << 40);
            CHECK(m->u.hello.version == versions[i]);
            CHECK_STR(m->u.hello.client, "");
        }
        djn_msg_free(&m);
    }
    djn_buf_release(&b);
}

/* GRAPH and FETCH carry every field, nodes included; GRAPH_CACHED all but the nodes. */
static void test_rt_graph_types(void) {
    static const uint8_t types[3] = {DJN_MSG_GRAPH, DJN_MSG_FETCH, DJN_MSG_GRAPH_CACHED};
    canon_t c;
    canon_init(&c);
    djn_buf_t b = {0};
    for (int t = 0; t < 3; t++) {
        bool nodes = types[t] != DJN_MSG_GRAPH_CACHED;
        djn_msg_hdr_t h = hdr_make(types[t], G_SID, G_SEQ + (uint64_t)t);
        djn_buf_reset(&b);
        djn_graph_req_encode(&b, &h, &c.g);
        CHECK(!b.failed);
        djn_msg_t *m = decode_ok(&b, G_NFRAMES);
        CHECK(m != NULL);
        if (!m)
            continue;
        CHECK_EQ_INT(m->type, types[t]);
        CHECK(m->sid == G_SID);
        CHECK_EQ_INT(m->seq, G_SEQ + (uint64_t)t);
        CHECK(graph_eq(&c.g, &m->u.graph, nodes));
        CHECK_EQ_INT(m->u.graph.nnodes, nodes ? 3 : 0); /* GRAPH_CACHED drops c.g's nodes */
        CHECK_EQ_INT(m->u.graph.nslots, nodes ? 3 : 0);
        djn_msg_free(&m);
    }
    /* Edge values of the scalar fields. */
    static const struct {
        uint32_t dev;
        int64_t seed;
        uint64_t hi, lo;
    } edges[] = {{0, -1, 0, 0}, {63, 0, 1, 0}, {DJN_MAX_DEVICES - 1, INT64_MAX, UINT64_MAX, 1}};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        djn_graph_req_t g = c.g;
        g.device = edges[i].dev;
        g.seed = edges[i].seed;
        g.fp[0] = edges[i].hi;
        g.fp[1] = edges[i].lo;
        djn_msg_hdr_t h = hdr_make(DJN_MSG_GRAPH, 1, 2);
        djn_buf_reset(&b);
        djn_graph_req_encode(&b, &h, &g);
        djn_msg_t *m = decode_ok(&b, G_NFRAMES);
        CHECK(m && graph_eq(&g, &m->u.graph, true));
        djn_msg_free(&m);
    }
    /* The semantic fields round-trip; absent, they decode as 0. */
    for (uint8_t q = 0; q <= DJN_QOS_MAX; q++) {
        djn_graph_req_t g = c.g;
        g.qos = q;
        g.phase = (uint8_t)(DJN_PHASE_MAX - q);
        g.life_kept = q * 7u;
        g.life_transient = DJN_MAX_NODES - q * 7u;
        djn_msg_hdr_t h = hdr_make(DJN_MSG_GRAPH, 1, 2);
        djn_buf_reset(&b);
        djn_graph_req_encode(&b, &h, &g);
        djn_msg_t *m = decode_ok(&b, G_NFRAMES);
        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->u.graph.qos, q);
            CHECK_EQ_INT(m->u.graph.phase, DJN_PHASE_MAX - q);
            CHECK_EQ_INT(m->u.graph.life_kept, q * 7u);
            CHECK_EQ_INT(m->u.graph.life_transient, DJN_MAX_NODES - q * 7u);
        }
        djn_msg_free(&m);
    }
    /* An empty request: every count 0, seed -1. */
    djn_graph_req_t e = graph_empty();
    djn_msg_hdr_t h = hdr_make(DJN_MSG_GRAPH, 1, 2);
    djn_buf_reset(&b);
    djn_graph_req_encode(&b, &h, &e);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m && graph_eq(&e, &m->u.graph, true));
    if (m)
        CHECK(m->u.graph.nslots == 0 && m->u.graph.nnodes == 0 && m->u.graph.seed == -1 &&
              m->u.graph.qos == 0 && m->u.graph.phase == 0 && m->u.graph.life_kept == 0);
    djn_msg_free(&m);
    djn_buf_release(&b);
}

/* Chunks of an upload (PROTOCOL.md 7.7): [handle, frame, text, offset, total] round-trips
 * next to the older forms, text true or false, offsets up to 2^64 - 1; the decoder takes
 * no other length and wants a bool third and integers fourth and fifth. */
static void test_rt_upload_chunks(void) {
    djn_upload_t ups[4] = {{10, 1, false, false, 0, 0},
                           {11, 2, false, true, 0, 1 << 20},
                           {12, 3, true, true, (1 << 20) - 1, 3ull << 20},
                           {13, 1, false, true, UINT64_MAX - 1, UINT64_MAX}};
    djn_graph_req_t g = graph_empty();
    g.nuploads = 4;
    g.uploads = ups;
    djn_buf_t b = {0};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_GRAPH, 1, 2);
    djn_graph_req_encode(&b, &h, &g);
    djn_msg_t *m = decode_ok(&b, 3);
    CHECK(m && graph_eq(&g, &m->u.graph, true));
    if (m)
        CHECK(m->u.graph.uploads[2].text && m->u.graph.uploads[2].chunk &&
              m->u.graph.uploads[2].offset == (1 << 20) - 1);
    djn_msg_free(&m);
    /* refused: four elements, a text that is not a bool, an offset that is not an
     * integer, six elements */
    for (int k = 0; k < 4; k++) {
        djn_buf_reset(&b);
        djn_enc_map(&b, 4);
        djn_enc_cstr(&b, "type");
        djn_enc_uint(&b, DJN_MSG_GRAPH);
        djn_enc_cstr(&b, "sid");
        djn_enc_uint(&b, 1);
        djn_enc_cstr(&b, "seq");
        djn_enc_uint(&b, 2);
        djn_enc_cstr(&b, "body");
        djn_enc_map(&b, 1);
        djn_enc_cstr(&b, "uploads");
        djn_enc_array(&b, 1);
        djn_enc_array(&b, k == 0 ? 4 : k == 3 ? 6 : 5);
        djn_enc_uint(&b, 10);
        djn_enc_uint(&b, 1);
        if (k == 1)
            djn_enc_uint(&b, 1); /* text not a bool */
        else
            djn_enc_bool(&b, true);
        if (k == 2)
            djn_enc_float(&b, 1.5); /* offset not an integer */
        else
            djn_enc_uint(&b, 0);
        if (k != 0)
            djn_enc_uint(&b, 16);
        if (k == 3)
            djn_enc_uint(&b, 0);
        djn_msg_t *bm = NULL;
        uint64_t seq = 0;
        char err[256] = "";
        CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 1, &bm, &seq, err, sizeof err), DJN_ERR_PROTO);
        CHECK(strstr(err, "[handle, frame, text, offset, total]") != NULL);
        CHECK(bm == NULL);
    }
    djn_buf_release(&b);
}

/* The recorder's paths write the same bytes as djn_node_encode: nodes in three steps
 * (begin, args, outs, outs values, end) and a GRAPH from pre-encoded nodes_raw. */
static void test_rt_node_encoders(void) {
    canon_t c;
    canon_init(&c);
    djn_buf_t whole = {0}, steps = {0}, raw = {0}, a = {0}, b = {0};
    for (uint32_t i = 0; i < c.g.nnodes; i++) {
        const djn_node_t *n = &c.g.nodes[i];
        djn_node_encode(&whole, n);
        djn_node_enc_begin(&steps, n->op, n->overload, n->nargs);
        for (uint32_t j = 0; j < n->nargs; j++)
            djn_enc_value(&steps, &n->args[j]);
        djn_node_enc_outs(&steps, n->nouts);
        for (uint32_t j = 0; j < n->nouts; j++)
            djn_enc_value(&steps, &n->outs[j]);
        djn_node_enc_end(&steps, n->flags);
    }
    CHECK(!whole.failed && !steps.failed);
    CHECK_EQ_INT(whole.len, steps.len);
    CHECK(whole.len == steps.len && memcmp(whole.data, steps.data, whole.len) == 0);
    /* One node decodes as the 5-array [op, overload, [args], [outs], flags]. */
    djn_buf_reset(&raw);
    djn_node_encode(&raw, &c.nodes[0]);
    djn_arena_t *ar = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(dec_value(&raw, ar, &v, err), DJN_OK);
    CHECK(v && v->kind == DJN_V_LIST && v->len == 5);
    if (v && v->kind == DJN_V_LIST && v->len == 5) {
        CHECK(v->u.items[0].kind == DJN_V_STR && !strcmp(v->u.items[0].u.s, "aten::add"));
        CHECK(v->u.items[1].kind == DJN_V_STR && !strcmp(v->u.items[1].u.s, "out"));
        CHECK(v->u.items[2].kind == DJN_V_LIST && v->u.items[2].len == 3);
        CHECK(v->u.items[3].kind == DJN_V_LIST && v->u.items[3].len == 1);
        CHECK(v->u.items[4].kind == DJN_V_INT && v->u.items[4].u.i == 0);
    }
    djn_arena_destroy(&ar);
    /* nodes_raw replaces nodes byte for byte. */
    djn_msg_hdr_t h = hdr_make(DJN_MSG_GRAPH, G_SID, G_SEQ);
    djn_graph_req_encode(&a, &h, &c.g);
    djn_graph_req_t g = c.g;
    g.nodes = NULL;
    g.nodes_raw = whole.data;
    g.nodes_raw_len = whole.len;
    djn_graph_req_encode(&b, &h, &g);
    CHECK_EQ_INT(a.len, b.len);
    CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    djn_buf_release(&whole);
    djn_buf_release(&steps);
    djn_buf_release(&raw);
    djn_buf_release(&a);
    djn_buf_release(&b);
}

static void test_rt_have_req(void) {
    static const djn_have_item_t items[3] = {
        {1, FP_HI, FP_LO, 4096},
        {((uint64_t)1 << 62) - 1, 0, UINT64_MAX, 0},
        {77, 5, 6, (uint64_t)1 << 40},
    };
    for (uint32_t n = 0; n <= 3; n += 3) {
        djn_have_req_t r = {DJN_MAX_DEVICES - 1, n, items};
        djn_msg_hdr_t h = hdr_make(DJN_MSG_HAVE, 5, 6 + n);
        djn_buf_t b = {0};
        djn_have_req_encode(&b, &h, &r);
        djn_msg_t *m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->type, DJN_MSG_HAVE);
            CHECK(m->sid == 5 && m->seq == 6 + n);
            CHECK_EQ_INT(m->u.have.device, DJN_MAX_DEVICES - 1);
            CHECK_EQ_INT(m->u.have.nitems, n);
            for (uint32_t i = 0; i < n && i < m->u.have.nitems; i++) {
                const djn_have_item_t *it = &m->u.have.items[i];
                CHECK(it->handle == items[i].handle && it->hi == items[i].hi &&
                      it->lo == items[i].lo && it->nbytes == items[i].nbytes);
            }
        }
        djn_msg_free(&m);
        djn_buf_release(&b);
    }
}

/* HEARTBEAT, STATS and CLOSE: header only. An empty REPLY is a reply, not a request. */
static void test_rt_empty(void) {
    static const uint8_t types[] = {DJN_MSG_HEARTBEAT, DJN_MSG_STATS, DJN_MSG_CLOSE};
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof types; i++) {
        djn_msg_hdr_t h = hdr_make(types[i], UINT64_MAX, 1000 + i);
        djn_buf_reset(&b);
        djn_empty_encode(&b, &h);
        djn_msg_t *m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->type, types[i]);
            CHECK(m->sid == UINT64_MAX);
            CHECK_EQ_INT(m->seq, 1000 + i);
        }
        djn_msg_free(&m);
    }
    djn_msg_hdr_t h = hdr_make(DJN_MSG_REPLY, 3, 4);
    djn_buf_reset(&b);
    djn_empty_encode(&b, &h);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "unknown message type 64");
    djn_reply_t *r = reply_ok(&b);
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_INT(r->type, DJN_MSG_REPLY);
        CHECK(r->sid == 3 && r->seq == 4);
        CHECK(r->body && r->body->kind == DJN_V_MAP && r->body->len == 0);
        CHECK_EQ_INT(r->error.node, -1);
    }
    djn_reply_free(&r);
    CHECK(r == NULL);
    djn_reply_free(&r);
    djn_reply_free(NULL);
    /* A request is not a reply. */
    h = hdr_make(DJN_MSG_HEARTBEAT, 3, 4);
    djn_buf_reset(&b);
    djn_empty_encode(&b, &h);
    char err[ERRLEN] = "";
    r = (djn_reply_t *)(uintptr_t)1;
    CHECK_EQ_INT(djn_reply_decode(b.data, b.len, &r, err, ERRLEN), DJN_ERR_PROTO);
    CHECK(r == NULL);
    CHECK_STR(err, "a reply must be {type: 64|65, sid, seq, body: map}");
    djn_buf_release(&b);
}

static void f_devices_int(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_int(b, 1);
}

static void test_rt_hello_rep(void) {
    static const char *const devs[2] = {"cpu", "cuda:0"};
    djn_hello_rep_t r = {42, DJN_PROTO_VERSION, "djinn-server 0.3", 30000, 10000, 2, devs};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_REPLY, 42, 1);
    djn_buf_t b = {0};
    djn_hello_rep_encode(&b, &h, &r);
    djn_reply_t *rep = reply_ok(&b);
    CHECK(rep != NULL);
    if (rep) {
        CHECK_EQ_INT(rep->type, DJN_MSG_REPLY);
        CHECK(rep->sid == 42 && rep->seq == 1);
        djn_hello_rep_t out;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_hello_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
        CHECK(out.sid == 42);
        CHECK_EQ_INT(out.version, DJN_PROTO_VERSION);
        CHECK_STR(out.server, "djinn-server 0.3");
        CHECK(out.lease_ms == 30000 && out.heartbeat_ms == 10000);
        CHECK_EQ_INT(out.ndevices, 2);
        if (out.ndevices == 2) {
            CHECK_STR(out.devices[0], "cpu");
            CHECK_STR(out.devices[1], "cuda:0");
        }
    }
    djn_reply_free(&rep);
    /* No devices and no server name. */
    djn_hello_rep_t r0 = {UINT64_MAX, 0, NULL, 0, 0, 0, NULL};
    djn_buf_reset(&b);
    djn_hello_rep_encode(&b, &h, &r0);
    rep = reply_ok(&b);
    if (rep) {
        djn_hello_rep_t out;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_hello_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
        CHECK(out.sid == UINT64_MAX && out.version == 0 && out.ndevices == 0);
        CHECK_STR(out.server, "");
    }
    djn_reply_free(&rep);
    /* sid 0 is no session; device names must be strings. */
    r0.sid = 0;
    djn_buf_reset(&b);
    djn_hello_rep_encode(&b, &h, &r0);
    rep = reply_ok(&b);
    if (rep) {
        djn_hello_rep_t out;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_hello_rep_parse(rep, &out, err, ERRLEN), DJN_ERR_PROTO);
        CHECK_STR(err, "malformed reply: HELLO needs 'sid' and 'devices'");
    }
    djn_reply_free(&rep);
    djn_buf_reset(&b);
    djn_hello_rep_encode(&b, &h, &r);
    body_edit(&b, "devices", f_devices_int);
    rep = reply_ok(&b);
    if (rep) {
        djn_hello_rep_t out;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_hello_rep_parse(rep, &out, err, ERRLEN), DJN_ERR_PROTO);
        CHECK_STR(err, "malformed reply: HELLO 'devices' must hold names");
    }
    djn_reply_free(&rep);
    djn_buf_release(&b);
}

/* GRAPH reply: fetched count and the dyn tree, given as a value or pre-encoded. */
static void test_rt_graph_rep(void) {
    djn_tref_t t = tref_2x3(djn_handle_server_base(7) + 5);
    djn_dyn_tensor_t dt = {t, 24};
    djn_buf_t dyn = {0}, b = {0}, b2 = {0};
    djn_enc_array(&dyn, 2);
    djn_dyn_tensor_encode(&dyn, &dt);
    djn_enc_int(&dyn, -3);
    djn_graph_rep_t r = {3, NULL, dyn.data, dyn.len};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_REPLY, 7, 8);
    djn_graph_rep_encode(&b, &h, &r);
    djn_reply_t *rep = reply_ok(&b);
    CHECK(rep != NULL);
    if (rep) {
        djn_graph_rep_t out;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_graph_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
        CHECK_EQ_INT(out.fetched, 3);
        CHECK(out.dyn && out.dyn->kind == DJN_V_LIST && out.dyn->len == 2);
        if (out.dyn && out.dyn->kind == DJN_V_LIST && out.dyn->len == 2) {
            djn_dyn_tensor_t got;
            CHECK(djn_dyn_tensor_decode(&out.dyn->u.items[0], &got));
            CHECK(tref_eq(&got.ref, &t) && got.nbytes == 24);
            CHECK(out.dyn->u.items[1].kind == DJN_V_INT && out.dyn->u.items[1].u.i == -3);
            /* The same reply from the value instead of the raw bytes. */
            djn_graph_rep_t r2 = {3, out.dyn, NULL, 0};
            djn_graph_rep_encode(&b2, &h, &r2);
            CHECK(b.len == b2.len && memcmp(b.data, b2.data, b.len) == 0);
        }
    }
    djn_reply_free(&rep);
    /* No dyn: dyn NULL. */
    djn_graph_rep_t r0 = {0, NULL, NULL, 0};
    djn_buf_reset(&b);
    djn_graph_rep_encode(&b, &h, &r0);
    rep = reply_ok(&b);
    if (rep) {
        djn_graph_rep_t out;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_graph_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
        CHECK(out.fetched == 0 && out.dyn == NULL);
    }
    djn_reply_free(&rep);
    /* More fetched frames than a message may have. */
    djn_graph_rep_t rbig = {DJN_MAX_FRAMES + 1, NULL, NULL, 0};
    djn_buf_reset(&b);
    djn_graph_rep_encode(&b, &h, &rbig);
    rep = reply_ok(&b);
    if (rep) {
        djn_graph_rep_t out;
        char err[ERRLEN] = "";
        CHECK_EQ_INT(djn_graph_rep_parse(rep, &out, err, ERRLEN), DJN_ERR_PROTO);
        CHECK_STR(err, "malformed reply: GRAPH needs 'fetched'");
    }
    djn_reply_free(&rep);
    djn_buf_release(&dyn);
    djn_buf_release(&b);
    djn_buf_release(&b2);
}

static void f_missing_str(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_cstr(b, "0");
}

static void test_rt_have_rep(void) {
    static const uint32_t missing[3] = {0, 2, UINT32_MAX};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_REPLY, 1, 2);
    djn_buf_t b = {0};
    for (uint32_t n = 0; n <= 3; n += 3) {
        djn_have_rep_t r = {n, missing};
        djn_buf_reset(&b);
        djn_have_rep_encode(&b, &h, &r);
        djn_reply_t *rep = reply_ok(&b);
        CHECK(rep != NULL);
        if (rep) {
            djn_have_rep_t out;
            char err[ERRLEN] = "";
            CHECK_EQ_INT(djn_have_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
            CHECK_EQ_INT(out.nmissing, n);
            for (uint32_t i = 0; i < n && i < out.nmissing; i++)
                CHECK(out.missing[i] == missing[i]);
        }
        djn_reply_free(&rep);
    }
    /* Without 'missing', and with a non-index in it. */
    for (int v = 0; v < 2; v++) {
        djn_have_rep_t r = {3, missing};
        djn_buf_reset(&b);
        djn_have_rep_encode(&b, &h, &r);
        body_edit(&b, "missing", v ? f_missing_str : NULL);
        djn_reply_t *rep = reply_ok(&b);
        if (rep) {
            djn_have_rep_t out;
            char err[ERRLEN] = "";
            CHECK_EQ_INT(djn_have_rep_parse(rep, &out, err, ERRLEN), DJN_ERR_PROTO);
            CHECK_STR(err, v ? "malformed reply: HAVE 'missing' must hold item indexes"
                             : "malformed reply: HAVE needs 'missing'");
        }
        djn_reply_free(&rep);
    }
    djn_buf_release(&b);
}

/* Fill every row of one scope of the stats table with a value derived from its index. */
static void stats_fill(djn_stats_scope_t scope, void *base, uint64_t salt) {
    uint32_t n;
    const djn_stats_field_t *f = djn_stats_fields(&n);
    for (uint32_t i = 0; i < n; i++) {
        if (f[i].scope != scope)
            continue;
        uint8_t *p = (uint8_t *)base + f[i].offset;
        if (f[i].is_float) {
            double d = 0.1 + (double)i + (double)salt / 1000.0; /* not a float32 */
            memcpy(p, &d, sizeof d);
        } else {
            uint64_t u = salt * 1000003ull + i * 7919ull + 1;
            if (i % 5 == 0)
                u |= (uint64_t)1 << 63; /* counters above 2^63 survive too */
            memcpy(p, &u, sizeof u);
        }
    }
}

/* Bitwise equality of every row of one scope; returns the number that differ. */
static int stats_diff(djn_stats_scope_t scope, const void *a, const void *b) {
    uint32_t n;
    int bad = 0;
    const djn_stats_field_t *f = djn_stats_fields(&n);
    for (uint32_t i = 0; i < n; i++) {
        if (f[i].scope != scope)
            continue;
        if (memcmp((const uint8_t *)a + f[i].offset, (const uint8_t *)b + f[i].offset, 8)) {
            printf("stats field %s differs\n", f[i].name);
            bad++;
        }
    }
    return bad;
}

static void f_devices_nameless(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_map(b, 0);
}
static void f_devices_65(djn_buf_t *b) {
    djn_enc_array(b, DJN_MAX_DEVICES + 1);
    for (int i = 0; i < DJN_MAX_DEVICES + 1; i++) {
        djn_enc_map(b, 1);
        djn_enc_cstr(b, "name");
        djn_enc_cstr(b, "cpu");
    }
}

/* STATS goes through the descriptor table: every row, a float row and several devices. */
static void test_rt_stats_rep(void) {
    static djn_stats_rep_t r, out; /* ~15 KB each */
    uint32_t nrows, nfloat = 0;
    const djn_stats_field_t *f = djn_stats_fields(&nrows);
    for (uint32_t i = 0; i < nrows; i++)
        nfloat += f[i].is_float;
    CHECK(nfloat >= 1); /* data_fragmentation */
    djn_msg_hdr_t h = hdr_make(DJN_MSG_REPLY, 9, 10);
    djn_buf_t b = {0};
    for (int has_server = 1; has_server >= 0; has_server--) {
        memset(&r, 0, sizeof r);
        r.has_server = has_server;
        stats_fill(DJN_STATS_SCOPE_SERVER, &r.server, 1);
        stats_fill(DJN_STATS_SCOPE_SESSION, &r.session, 2);
        r.ndevices = 3;
        static const char *const names[3] = {"cpu", "cuda:0", "cuda:1"};
        for (uint32_t d = 0; d < 3; d++) {
            snprintf(r.devices[d].name, sizeof r.devices[d].name, "%s", names[d]);
            stats_fill(DJN_STATS_SCOPE_DEVICE, &r.devices[d], 10 + d);
        }
        djn_buf_reset(&b);
        djn_stats_rep_encode(&b, &h, &r);
        CHECK(!b.failed);
        djn_reply_t *rep = reply_ok(&b);
        CHECK(rep != NULL);
        if (!rep)
            continue;
        char err[ERRLEN] = "";
        memset(&out, 0xa5, sizeof out);
        CHECK_EQ_INT(djn_stats_rep_parse(rep, &out, err, ERRLEN), DJN_OK);
        CHECK_EQ_INT(out.has_server, has_server);
        if (has_server) {
            CHECK_EQ_INT(stats_diff(DJN_STATS_SCOPE_SERVER, &r.server, &out.server), 0);
        } else { /* not on the wire: zero */
            djn_stats_server_t zero;
            memset(&zero, 0, sizeof zero);
            CHECK_EQ_INT(stats_diff(DJN_STATS_SCOPE_SERVER, &zero, &out.server), 0);
        }
        CHECK_EQ_INT(stats_diff(DJN_STATS_SCOPE_SESSION, &r.session, &out.session), 0);
        CHECK_EQ_INT(out.ndevices, 3);
        for (uint32_t d = 0; d < 3 && d < out.ndevices; d++) {
            CHECK_STR(out.devices[d].name, r.devices[d].name);
            CHECK_EQ_INT(stats_diff(DJN_STATS_SCOPE_DEVICE, &r.devices[d], &out.devices[d]), 0);
        }
        /* The float row by name, so a table that lost its F64 column fails here. */
        CHECK(out.devices[1].data_fragmentation == r.devices[1].data_fragmentation);
        CHECK(out.devices[1].data_fragmentation != floor(out.devices[1].data_fragmentation));
        CHECK(out.devices[2].data_used == r.devices[2].data_used);
        CHECK(out.session.session_peak_bytes == r.session.session_peak_bytes);
        djn_reply_free(&rep);
    }
    /* Malformed device lists. */
    static const struct {
        enc_field_fn fn;
        const char *err;
    } bad[] = {
        {NULL, "malformed reply: STATS needs 'devices'"},
        {f_devices_65, "malformed reply: STATS needs 'devices'"},
        {f_devices_nameless, "malformed reply: STATS devices must be maps with a 'name'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        djn_buf_reset(&b);
        djn_stats_rep_encode(&b, &h, &r);
        body_edit(&b, "devices", bad[i].fn);
        djn_reply_t *rep = reply_ok(&b);
        if (rep) {
            char err[ERRLEN] = "";
            CHECK_EQ_INT(djn_stats_rep_parse(rep, &out, err, ERRLEN), DJN_ERR_PROTO);
            CHECK_STR(err, bad[i].err);
        }
        djn_reply_free(&rep);
    }
    djn_buf_release(&b);
}

static void test_rt_error_rep(void) {
    djn_buf_t b = {0};
    static const struct {
        djn_error_rep_t in;
        djn_status_t code;
        const char *msg, *op;
        int64_t node;
    } cases[] = {
        {{DJN_ERR_ARGS, "argument 2 must be a tensor", 4, "aten::add.out"},
         DJN_ERR_ARGS,
         "argument 2 must be a tensor",
         "aten::add.out",
         4},
        {{DJN_ERR_HANDLE, "handle 9 is not yours", -1, NULL},
         DJN_ERR_HANDLE,
         "handle 9 is not yours",
         "",
         -1},
        {{DJN_ERR_OP, "first node", 0, NULL}, DJN_ERR_OP, "first node", "", 0},
        {{DJN_ERR_LIMIT, NULL, -1, NULL}, DJN_ERR_LIMIT, NULL, "", -1}, /* NULL: the words */
        {{DJN_OK, "no code", -1, NULL}, DJN_ERR_OP, "no code", "", -1}, /* never OK */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        djn_msg_hdr_t h = hdr_make(DJN_MSG_ERROR, 5, 6 + i);
        djn_buf_reset(&b);
        djn_error_rep_encode(&b, &h, &cases[i].in);
        djn_reply_t *rep = reply_ok(&b);
        CHECK(rep != NULL);
        if (!rep)
            continue;
        CHECK_EQ_INT(rep->type, DJN_MSG_ERROR);
        CHECK(rep->sid == 5 && rep->seq == 6 + i);
        CHECK_EQ_INT(rep->error.code, cases[i].code);
        CHECK_STR(rep->error.msg, cases[i].msg ? cases[i].msg : djn_status_str(cases[i].code));
        CHECK_EQ_INT(rep->error.node, cases[i].node);
        CHECK_STR(rep->error.op, cases[i].op);
        djn_reply_free(&rep);
    }
    /* An error reply is not a request. */
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "unknown message type 65");
    djn_buf_release(&b);
}

static void f_nbytes_str(djn_buf_t *b) {
    djn_enc_cstr(b, "24");
}

/* djn_dyn_tensor_decode of the bytes in b (a dyn tensor map, maybe edited). */
static bool dyn_decode_buf(const djn_buf_t *b, djn_dyn_tensor_t *out) {
    djn_arena_t *a = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    bool ok = dec_value(b, a, &v, err) == DJN_OK && djn_dyn_tensor_decode(v, out);
    djn_arena_destroy(&a);
    return ok;
}

static void test_rt_dyn_tensor(void) {
    static const int64_t sz[2] = {2, 3}, st[2] = {3, 1};
    djn_dyn_tensor_t in = {tref_make(djn_handle_server_base(3) + 1, 2, DJN_DTYPE_F32, 2, sz, st),
                           32}; /* elements 2..7: bytes [8, 32) */
    djn_buf_t b = {0};
    djn_dyn_tensor_encode(&b, &in);
    djn_dyn_tensor_t out;
    memset(&out, 0, sizeof out);
    CHECK(dyn_decode_buf(&b, &out));
    CHECK(tref_eq(&out.ref, &in.ref));
    CHECK(out.nbytes == 32);
    /* The documented shape: {"ref": ext tensor, "nbytes": uint}. */
    {
        djn_arena_t *a = djn_arena_new();
        djn_value_t *v = NULL;
        char err[ERRLEN];
        CHECK_EQ_INT(dec_value(&b, a, &v, err), DJN_OK);
        CHECK(v && v->kind == DJN_V_MAP && v->len == 2);
        const djn_value_t *ref = djn_value_get(v, "ref"), *nb = djn_value_get(v, "nbytes");
        CHECK(ref && ref->kind == DJN_V_TENSOR && nb && nb->kind == DJN_V_INT && nb->u.i == 32);
        djn_arena_destroy(&a);
    }
    /* Refused: a reference that reaches past nbytes, a negative stride, a malformed
     * reference, a missing or mistyped nbytes, something that is not a map. */
    djn_dyn_tensor_t bad = in;
    bad.nbytes = 31;
    djn_buf_reset(&b);
    djn_dyn_tensor_encode(&b, &bad);
    CHECK(!dyn_decode_buf(&b, &out));
    bad = in;
    bad.ref.strides[1] = -1;
    bad.ref.offset = 5;
    bad.nbytes = 4096;
    djn_buf_reset(&b);
    djn_dyn_tensor_encode(&b, &bad);
    CHECK(!dyn_decode_buf(&b, &out));
    bad = in;
    bad.ref.dtype = 99;
    djn_buf_reset(&b);
    djn_dyn_tensor_encode(&b, &bad);
    CHECK(!dyn_decode_buf(&b, &out));
    for (int v = 0; v < 3; v++) {
        djn_buf_reset(&b);
        djn_dyn_tensor_encode(&b, &in);
        /* enc_edited on the dyn tensor's own keys */
        djn_arena_t *a = djn_arena_new();
        djn_value_t *root = NULL;
        char err[ERRLEN];
        CHECK_EQ_INT(dec_value(&b, a, &root, err), DJN_OK);
        djn_buf_t e = {0};
        if (root)
            enc_edited(&e, root, v == 2 ? "ref" : "nbytes", 0, v == 1 ? f_nbytes_str : NULL);
        CHECK(!dyn_decode_buf(&e, &out));
        djn_buf_release(&e);
        djn_arena_destroy(&a);
    }
    djn_buf_reset(&b);
    djn_enc_tref(&b, &in.ref); /* the pre-v3 shape had the ref at top level */
    CHECK(!dyn_decode_buf(&b, &out));
    /* An empty tensor at nbytes 0 is fine. */
    djn_dyn_tensor_t empty = in;
    empty.ref.sizes[0] = 0;
    empty.ref.offset = 0;
    empty.nbytes = 0;
    djn_buf_reset(&b);
    djn_dyn_tensor_encode(&b, &empty);
    CHECK(dyn_decode_buf(&b, &out));
    CHECK(out.nbytes == 0 && out.ref.sizes[0] == 0);
    djn_buf_release(&b);
}

/* The plan cache keeps nodes through djn_nodes_clone: the clone owns everything. */
static void test_nodes_clone(void) {
    canon_t c;
    canon_init(&c);
    djn_buf_t b = {0};
    build_graph(&b);
    djn_msg_t *m = decode_ok(&b, G_NFRAMES);
    djn_buf_release(&b);
    CHECK(m != NULL);
    if (!m)
        return;
    djn_arena_t *a = djn_arena_new();
    djn_node_t *cl = djn_nodes_clone(a, m->u.graph.nodes, m->u.graph.nnodes);
    CHECK(cl != NULL);
    if (cl)
        for (uint32_t i = 0; i < 3; i++) {
            CHECK(cl[i].op != m->u.graph.nodes[i].op);     /* copied, not shared */
            CHECK(cl[i].args != m->u.graph.nodes[i].args); /* the same */
        }
    djn_msg_free(&m); /* the source arena is gone: ASan would see any shared byte */
    if (cl)
        for (uint32_t i = 0; i < 3; i++)
            CHECK(node_eq(&cl[i], &c.nodes[i]));
    CHECK(djn_nodes_clone(a, NULL, 0) != NULL); /* zero nodes: a valid empty array */
    djn_arena_destroy(&a);
}

/* A tree with every kind of value: {"s": "hello", "b": bin, "l": [...], "m": {}}. */
typedef struct {
    djn_tref_t t;
    djn_value_t inner[8], kv[8], top[2];
} tree_t;

static void tree_init(tree_t *x) {
    static const int64_t sz[1] = {4}, st[1] = {1};
    x->t = tref_make(3, 1, DJN_DTYPE_I64, 1, sz, st);
    x->inner[0] = v_int(INT64_MIN);
    x->inner[1] = v_float(-0.5);
    x->inner[2] = v_complex(1, -2);
    x->inner[3] = v_tensor(&x->t);
    x->inner[4] = v_nil();
    x->inner[5] = v_bool(true);
    x->inner[6] = v_list(NULL, 0);
    x->inner[7] = v_strn("a\0b", 3);
    x->kv[0] = v_str("s");
    x->kv[1] = v_str("hello");
    x->kv[2] = v_str("b");
    x->kv[3] = v_bin("\x00\x01\x02", 3);
    x->kv[4] = v_str("l");
    x->kv[5] = v_list(x->inner, 8);
    x->kv[6] = v_int(7); /* a non-string key */
    x->kv[7] = v_map(NULL, 0);
    x->top[0] = v_map(x->kv, 4);
    x->top[1] = v_str("second");
}

static void test_value_clone(void) {
    tree_t x;
    tree_init(&x);
    djn_buf_t b = {0};
    djn_enc_array(&b, 2);
    djn_enc_value(&b, &x.top[0]);
    djn_enc_value(&b, &x.top[1]);
    djn_arena_t *src = djn_arena_new(), *dst = djn_arena_new();
    djn_value_t *v = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(dec_value(&b, src, &v, err), DJN_OK);
    djn_buf_release(&b);
    djn_value_t *cl = v ? djn_value_clone(dst, v->u.items, 2) : NULL;
    CHECK(cl != NULL);
    djn_arena_destroy(&src);
    if (cl) {
        CHECK(value_eq(&cl[0], &x.top[0]));
        CHECK(value_eq(&cl[1], &x.top[1]));
        const djn_value_t *s = djn_value_get(&cl[0], "s");
        CHECK(s && s->u.s[s->len] == '\0'); /* strings stay NUL-terminated */
        const djn_value_t *l = djn_value_get(&cl[0], "l");
        CHECK(l && l->kind == DJN_V_LIST && l->u.items[3].u.t->offset == 1);
    }
    CHECK(djn_value_clone(dst, NULL, 0) != NULL);
    djn_arena_destroy(&dst);
}

/* Clones under allocation failure: NULL or a complete copy, never a leak. */
static void test_clone_fault_injection(void) {
    canon_t c;
    canon_init(&c);
    tree_t x;
    tree_init(&x);
    int64_t mem0 = djn_mem_in_use();
    int nulls = 0, oks = 0;
    for (int64_t n = 0; n < 64; n++) {
        djn_arena_t *a = djn_arena_new();
        djn_mem_fail_after(n);
        djn_node_t *cn = djn_nodes_clone(a, c.nodes, 3);
        djn_mem_fail_after(-1);
        if (cn) {
            oks++;
            for (uint32_t i = 0; i < 3; i++)
                CHECK(node_eq(&cn[i], &c.nodes[i]));
        } else {
            nulls++;
        }
        djn_arena_destroy(&a);
        a = djn_arena_new();
        djn_mem_fail_after(n);
        djn_value_t *cv = djn_value_clone(a, x.top, 2);
        djn_mem_fail_after(-1);
        if (cv)
            CHECK(value_eq(&cv[0], &x.top[0]) && value_eq(&cv[1], &x.top[1]));
        else
            nulls++;
        djn_arena_destroy(&a);
        CHECK_EQ_INT(djn_mem_in_use(), mem0);
    }
    CHECK(nulls >= 2); /* the first chunk of each arena */
    CHECK(oks > 0);
}

/* ------------------------------------------------------------------ 3. messages */

static void f_int12(djn_buf_t *b) {
    djn_enc_int(b, 12);
}
static void f_str1(djn_buf_t *b) {
    djn_enc_cstr(b, "1");
}
static void f_float1(djn_buf_t *b) {
    djn_enc_float(b, 1.0);
}
static void f_nil(djn_buf_t *b) {
    djn_enc_nil(b);
}
static void f_arr_empty(djn_buf_t *b) {
    djn_enc_array(b, 0);
}
static void f_version_wide(djn_buf_t *b) {
    djn_enc_uint(b, ((uint64_t)1 << 32) + DJN_PROTO_VERSION);
}

static void hello_encode(djn_buf_t *b, uint32_t version, const char *client) {
    djn_hello_req_t r = {version, client};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_HELLO, 0, 3);
    djn_buf_reset(b);
    djn_hello_req_encode(b, &h, &r);
}

static void test_msg_hello(void) {
    djn_buf_t b = {0};
    djn_msg_t *m = NULL;
    djn_msg_free(&m);   /* NULL message: no-op */
    djn_msg_free(NULL); /* NULL pointer: no-op */
    /* Another encoder may leave the client out or send a non-string: "". */
    static const enc_field_fn clients[2] = {NULL, f_int12};
    for (int v = 0; v < 2; v++) {
        hello_encode(&b, 7, "c");
        body_edit(&b, "client", clients[v]);
        m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->u.hello.version, 7);
            CHECK_STR(m->u.hello.client, "");
        }
        djn_msg_free(&m);
    }
    /* Missing or mistyped version. */
    static const enc_field_fn versions[3] = {NULL, f_str1, f_float1};
    for (int v = 0; v < 3; v++) {
        hello_encode(&b, DJN_PROTO_VERSION, "c");
        body_edit(&b, "version", versions[v]);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "HELLO needs an integer 'version'");
    }
    djn_buf_release(&b);
}

/* A version that does not fit in 32 bits must not turn into a valid one. */
static void test_msg_hello_version_wide(void) {
    djn_buf_t b = {0};
    hello_encode(&b, DJN_PROTO_VERSION, "c");
    body_edit(&b, "version", f_version_wide);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "HELLO needs an integer 'version'");
    djn_buf_release(&b);
}

/* Decoders accept keys in any order and ignore unknown ones. */
static void test_msg_key_order_and_extras(void) {
    static const uint8_t types[] = {DJN_MSG_HEARTBEAT, DJN_MSG_STATS, DJN_MSG_CLOSE};
    djn_buf_t b = {0};
    for (size_t i = 0; i < sizeof types; i++) {
        djn_msg_hdr_t h = hdr_make(types[i], UINT64_MAX, 1000 + i);
        djn_buf_reset(&b);
        djn_empty_encode(&b, &h);
        body_edit(&b, "extra", f_arr_empty); /* an unknown body key */
        hdr_edit(&b, "zzz", f_nil);          /* an unknown header key */
        djn_msg_t *m = decode_ok(&b, 0);
        CHECK(m && m->type == types[i] && m->sid == UINT64_MAX && m->seq == 1000 + i);
        djn_msg_free(&m);
    }
    /* The canonical GRAPH with its header and body keys in reverse order. */
    djn_buf_reset(&b);
    build_graph(&b);
    djn_arena_t *a = djn_arena_new();
    djn_value_t *root = NULL;
    char err[ERRLEN];
    CHECK_EQ_INT(dec_value(&b, a, &root, err), DJN_OK);
    djn_buf_t rev = {0};
    if (root) {
        djn_enc_map(&rev, root->len);
        for (uint32_t i = root->len; i-- > 0;) {
            const djn_value_t *k = &root->u.items[2 * i], *v = &root->u.items[2 * i + 1];
            djn_enc_value(&rev, k);
            if (!s_key_is(k, "body")) {
                djn_enc_value(&rev, v);
                continue;
            }
            djn_enc_map(&rev, v->len);
            for (uint32_t j = v->len; j-- > 0;) {
                djn_enc_value(&rev, &v->u.items[2 * j]);
                djn_enc_value(&rev, &v->u.items[2 * j + 1]);
            }
        }
    }
    djn_arena_destroy(&a);
    CHECK(rev.len == b.len && memcmp(rev.data, b.data, b.len) != 0);
    canon_t c;
    canon_init(&c);
    djn_msg_t *m = decode_ok(&rev, G_NFRAMES);
    CHECK(m && m->type == DJN_MSG_GRAPH && graph_eq(&c.g, &m->u.graph, true));
    djn_msg_free(&m);
    djn_buf_release(&rev);
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
    /* The slot table: binds [10, 11, 12]; the nodes name slots 0..2. */
    CHECK_EQ_INT(g->nbinds, 3);
    CHECK_EQ_INT(g->nslots, 3);
    CHECK(g->binds != NULL);
    if (g->binds && g->nbinds == 3)
        CHECK(g->binds[0] == 10 && g->binds[1] == 11 && g->binds[2] == 12);
    CHECK(g->fp[0] == FP_HI && g->fp[1] == FP_LO);

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
            if (t->kind == DJN_V_TENSOR) { /* transposed view of slot 1 */
                CHECK(t->u.t->handle == 1 && t->u.t->offset == 0 && t->u.t->ndim == 2);
                CHECK(t->u.t->sizes[0] == 3 && t->u.t->strides[0] == 1);
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
    djn_msg_free(&m);

    /* More frames than uploads is fine; exactly DJN_MAX_FRAMES too. */
    m = decode_ok(&b, DJN_MAX_FRAMES);
    CHECK(m != NULL);
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_msg_graph_defaults(void) {
    /* An empty body (another encoder may leave every field out): all at their defaults. */
    djn_buf_t b = {0};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_GRAPH, 1, 2);
    djn_empty_encode(&b, &h);
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

    /* seed -1 travels as nil: no reseed. */
    djn_graph_req_t g = graph_empty();
    encode_graph(&b, DJN_MSG_GRAPH, &g);
    m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m)
        CHECK_EQ_INT(m->u.graph.seed, -1);
    djn_msg_free(&m);

    /* dev at its limit, seed 0, a node with no args/outs, names at their limits. */
    char name[DJN_MAX_NAME + 1];
    memset(name, 'x', DJN_MAX_NAME);
    name[DJN_MAX_NAME] = '\0';
    djn_node_t n = node_make(name, name, NULL, 0, NULL, 0, 0xffffffffu);
    g = graph_empty();
    g.device = DJN_MAX_DEVICES - 1;
    g.seed = 0;
    g.nnodes = 1;
    g.nodes = &n;
    encode_graph(&b, DJN_MSG_GRAPH, &g);
    m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m) {
        const djn_graph_req_t *d = &m->u.graph;
        CHECK_EQ_INT(d->device, DJN_MAX_DEVICES - 1);
        CHECK_EQ_INT(d->seed, 0);
        CHECK_EQ_INT(d->nnodes, 1);
        if (d->nnodes == 1) {
            CHECK_EQ_INT(strlen(d->nodes[0].op), DJN_MAX_NAME);
            CHECK_EQ_INT(strlen(d->nodes[0].overload), DJN_MAX_NAME);
            CHECK(d->nodes[0].nargs == 0 && d->nodes[0].nouts == 0);
            CHECK(d->nodes[0].flags == 0xffffffffu);
        }
        CHECK(d->nallocs == 0 && d->nuploads == 0 && d->nfrees == 0 && d->nfetches == 0);
    }
    djn_msg_free(&m);
    djn_buf_release(&b);
}

static void test_msg_fetch(void) {
    djn_fetch_t f = {UINT64_MAX, 8, (uint64_t)1 << 40}; /* handles are opaque 64-bit */
    djn_graph_req_t g = graph_empty();
    g.nfetches = 1;
    g.fetches = &f;
    djn_buf_t b = {0};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_FETCH, 3, 4);
    djn_graph_req_encode(&b, &h, &g);
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

static void f_fp_scalar(djn_buf_t *b) {
    djn_enc_uint(b, FP_HI);
}
static void f_fp_one(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_uint(b, FP_HI);
}
static void f_fp_three(djn_buf_t *b) {
    djn_enc_array(b, 3);
    djn_enc_uint(b, FP_HI);
    djn_enc_uint(b, FP_LO);
    djn_enc_uint(b, 1);
}
static void f_fp_str(djn_buf_t *b) {
    djn_enc_array(b, 2);
    djn_enc_uint(b, FP_HI);
    djn_enc_cstr(b, "lo");
}
static void f_fp_float(djn_buf_t *b) {
    djn_enc_array(b, 2);
    djn_enc_float(b, 1.0);
    djn_enc_uint(b, FP_LO);
}

/* "fp": [hi, lo] (the fragment's fingerprint) lands in g->fp; [0, 0] is 0, 0. */
static void test_msg_graph_fp(void) {
    djn_tref_t in = tref_2x3(1), out = tref_2x3(0);
    djn_value_t args[1] = {v_tensor(&in)}, outs[1] = {v_tensor(&out)};
    djn_node_t n = node_make("aten::relu", "", args, 1, outs, 1, 0);
    static const uint64_t binds[2] = {40, 41};
    djn_graph_req_t g = graph_empty();
    g.nbinds = 2;
    g.binds = binds;
    g.fp[0] = FP_HI;
    g.fp[1] = FP_LO;
    g.nnodes = 1;
    g.nodes = &n;
    djn_buf_t b = {0};
    encode_graph(&b, DJN_MSG_GRAPH, &g);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m) {
        const djn_graph_req_t *d = &m->u.graph;
        CHECK(d->fp[0] == FP_HI);
        CHECK(d->fp[1] == FP_LO);
        CHECK_EQ_INT(d->nbinds, 2);
        CHECK_EQ_INT(d->nslots, 2);
        CHECK(d->nnodes == 1);
        if (d->nnodes == 1) {
            CHECK(is_2x3(&d->nodes[0].args[0], 1));
            CHECK(is_2x3(&d->nodes[0].outs[0], 0));
        }
    }
    djn_msg_free(&m);

    /* [0, 0] and small values, in GRAPH and FETCH. */
    for (int v = 0; v < 2; v++) {
        djn_graph_req_t s = graph_empty();
        s.fp[0] = v ? 7 : 0;
        s.fp[1] = v ? 9 : 0;
        encode_graph(&b, v ? DJN_MSG_FETCH : DJN_MSG_GRAPH, &s);
        m = decode_ok(&b, 0);
        CHECK(m != NULL);
        if (m) {
            CHECK_EQ_INT(m->u.graph.fp[0], v ? 7 : 0);
            CHECK_EQ_INT(m->u.graph.fp[1], v ? 9 : 0);
        }
        djn_msg_free(&m);
    }

    /* A malformed "fp" never turns into a fingerprint: it is refused (a cached fragment
     * must not run under a key the client did not mean). */
    static const enc_field_fn bad[] = {f_fp_scalar, f_fp_one,   f_fp_three,
                                       f_fp_str,    f_fp_float, f_nil};
    for (size_t v = 0; v < sizeof bad / sizeof bad[0]; v++) {
        for (int t = 0; t < 3; t++) {
            static const uint8_t types[3] = {DJN_MSG_GRAPH, DJN_MSG_FETCH, DJN_MSG_GRAPH_CACHED};
            encode_graph(&b, types[t], &g);
            body_edit(&b, "fp", bad[v]);
            EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'fp' must be [hi, lo]");
        }
    }
    djn_buf_release(&b);
}

/* GRAPH_CACHED: a GRAPH without its nodes (the server holds them under "fp"), as the
 * client sends it: dev, seed nil, binds, fp, allocs, uploads, frees, fetch. */
static const uint64_t s_cached_binds[4] = {20, 21, 22, (uint64_t)1 << 62}; /* a server handle */
static const djn_alloc_t s_cached_allocs[2] = {{21, 24}, {22, 24}};
static const djn_upload_t s_cached_uploads[2] = {{21, 1, true, false, 0, 0},
                                                 {22, 2, false, false, 0, 0}};
static const uint64_t s_cached_frees[1] = {20};
static const djn_fetch_t s_cached_fetch[1] = {{22, 4, 20}};

static djn_graph_req_t graph_cached(void) {
    djn_graph_req_t g = graph_empty();
    g.device = 2;
    g.nbinds = 4;
    g.binds = s_cached_binds;
    g.fp[0] = FP_HI;
    g.fp[1] = FP_LO;
    g.nallocs = 2;
    g.allocs = s_cached_allocs;
    g.nuploads = 2;
    g.uploads = s_cached_uploads;
    g.nfrees = 1;
    g.frees = s_cached_frees;
    g.nfetches = 1;
    g.fetches = s_cached_fetch;
    return g;
}

static void test_msg_graph_cached(void) {
    canon_t c;
    canon_init(&c);
    djn_graph_req_t gc = graph_cached();
    gc.nnodes = 3; /* ignored: GRAPH_CACHED never carries nodes */
    gc.nodes = c.nodes;
    djn_buf_t b = {0};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_GRAPH_CACHED, G_SID, G_SEQ + 1);
    djn_graph_req_encode(&b, &h, &gc);
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
    djn_msg_free(&m);

    /* GRAPH_CACHED goes through GRAPH's checks: frames, binds, client handles. */
    EXPECT_REJECT_BUF(&b, 1, DJN_ERR_PROTO, "GRAPH: upload names frame 2 but the message has 1");
    static const uint64_t zero_bind[2] = {3, 0};
    djn_graph_req_t bad = graph_empty();
    bad.nbinds = 2;
    bad.binds = zero_bind;
    encode_graph(&b, DJN_MSG_GRAPH_CACHED, &bad);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'binds' must hold non-zero handles");
    static const djn_alloc_t zero_alloc[1] = {{0, 8}};
    bad = graph_empty();
    bad.nallocs = 1;
    bad.allocs = zero_alloc;
    encode_graph(&b, DJN_MSG_GRAPH_CACHED, &bad);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: client handles must be in [1, 2^62)");

    /* An empty GRAPH_CACHED body: every field at its default. */
    djn_buf_reset(&b);
    h = hdr_make(DJN_MSG_GRAPH_CACHED, 1, 2);
    djn_empty_encode(&b, &h);
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

/* HAVE: decoded into m->u.have, every item checked. */
static const djn_have_item_t s_have_items[2] = {{30, FP_HI, FP_LO, 4096},
                                                {31, FP_HI + 1, FP_LO + 1, 4096}};

static void have_encode(djn_buf_t *b, uint32_t dev, const djn_have_item_t *items, uint32_t n) {
    djn_have_req_t r = {dev, n, items};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_HAVE, 5, 6);
    djn_buf_reset(b);
    djn_have_req_encode(b, &h, &r);
}

static void test_msg_have(void) {
    djn_buf_t b = {0};
    have_encode(&b, 0, s_have_items, 2);
    uint64_t seq = 0;
    djn_msg_t *m = NULL;
    char err[ERRLEN] = "";
    CHECK_EQ_INT(djn_msg_decode(b.data, b.len, 0, &m, &seq, err, ERRLEN), DJN_OK);
    CHECK_EQ_INT(seq, 6);
    CHECK(m != NULL);
    if (m) {
        CHECK_EQ_INT(m->type, DJN_MSG_HAVE);
        CHECK(m->sid == 5 && m->seq == 6);
        CHECK_EQ_INT(m->u.have.device, 0);
        CHECK_EQ_INT(m->u.have.nitems, 2);
        for (uint32_t i = 0; i < 2 && i < m->u.have.nitems; i++) {
            const djn_have_item_t *it = &m->u.have.items[i];
            CHECK(it->handle == 30 + i);
            CHECK(it->hi == FP_HI + i && it->lo == FP_LO + i);
            CHECK(it->nbytes == 4096);
        }
    }
    djn_msg_free(&m);
    /* The edges of the client handle range are fine. */
    static const djn_have_item_t edges[2] = {{1, 0, 0, 0}, {((uint64_t)1 << 62) - 1, 1, 2, 3}};
    have_encode(&b, 0, edges, 2);
    m = decode_ok(&b, 0);
    CHECK(m && m->u.have.nitems == 2 && m->u.have.items[0].handle == 1 &&
          m->u.have.items[1].handle == ((uint64_t)1 << 62) - 1);
    djn_msg_free(&m);
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
        djn_value_t lists[4], arg;
        lists[extra - 1] = v_list(NULL, 0);
        for (int i = extra - 2; i >= 0; i--)
            lists[i] = v_list(&lists[i + 1], 1);
        arg = lists[0];
        djn_node_t n = node_make("aten::x", "", &arg, 1, NULL, 0, 0);
        graph_with_node(&b, &n);
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

static void f_args_ext17(djn_buf_t *b) {
    djn_enc_array(b, 1);
    raw_ext(b, DJN_EXT_TENSOR, 18 + 16 * 17, 17); /* rank 17: one above the limit */
}
static void f_nodes_ext17(djn_buf_t *b) {
    djn_enc_array(b, 1);
    node_edit(b, 2, f_args_ext17);
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

    /* Inside a message, as a node argument: a valid node whose args are replaced. */
    djn_graph_req_t g = graph_base();
    encode_graph(&b, DJN_MSG_GRAPH, &g);
    body_edit(&b, "nodes", f_nodes_ext17);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "malformed tensor reference");
    djn_buf_release(&b);
}

/* A header of exactly DJN_MAX_HEADER_BYTES is accepted; one byte more is DJN_ERR_LIMIT,
 * refused before anything is read or allocated. */
static size_t s_pad_len;
static void f_pad(djn_buf_t *b) {
    uint8_t *pad = calloc(1, s_pad_len);
    djn_enc_bin(b, pad, s_pad_len);
    free(pad);
}

static void test_reject_header_limit(void) {
    djn_buf_t b = {0};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_HEARTBEAT, 1, 77);
    djn_empty_encode(&b, &h);
    /* body {} becomes {"pad": bin32}: the fixmap byte stays, plus 4 + 5 + payload bytes */
    s_pad_len = DJN_MAX_HEADER_BYTES - b.len - 4 - 5;
    body_edit(&b, "pad", f_pad);
    CHECK_EQ_INT(b.len, DJN_MAX_HEADER_BYTES);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m != NULL);
    if (m)
        CHECK(m->type == DJN_MSG_HEARTBEAT && m->seq == 77);
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

/* Upload variants another encoder could write; our encoder writes [handle, frame] or
 * [handle, frame, true] only. */
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
static void f_upload_notlist(djn_buf_t *b) {
    djn_enc_map(b, 0);
}
static void f_upload_item_notlist(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_uint(b, 10);
}
/* [10, 1, third]: 0 false, 2 the integer 1, 3 the string "1". */
static int s_up_third;
static void f_upload_third(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 10);
    djn_enc_uint(b, 1);
    switch (s_up_third) {
    case 0:
        djn_enc_bool(b, false);
        break;
    case 2:
        djn_enc_uint(b, 1);
        break;
    default:
        djn_enc_cstr(b, "1");
        break;
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

/* graph_base with one upload, encoded as `type`. */
static void graph_upload(djn_buf_t *b, uint8_t type, uint64_t handle, uint32_t frame, bool text) {
    djn_upload_t u = {handle, frame, text, false, 0, 0};
    djn_graph_req_t g = graph_base();
    g.nuploads = 1;
    g.uploads = &u;
    encode_graph(b, type, &g);
}

static void test_reject_uploads(void) {
    djn_buf_t b = {0};
    graph_upload(&b, DJN_MSG_GRAPH, 10, 0, false);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: upload names frame 0 but the message has 2");
    graph_upload(&b, DJN_MSG_GRAPH, 10, 3, false);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "upload names frame 3 but the message has 2");
    graph_upload(&b, DJN_MSG_GRAPH, 10, 2, false);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "upload names frame 2 but the message has 0");
    {
        djn_msg_t *m = decode_ok(&b, 2);
        CHECK(m && m->u.graph.nuploads == 1 && m->u.graph.uploads[0].frame == 2);
        djn_msg_free(&m);
    }
    static const struct {
        enc_field_fn fn;
        const char *sub;
    } wire[] = {
        {f_upload_neg, "GRAPH: upload names frame 18446744073709551615 but the message has 2"},
        {f_upload_wide, "GRAPH: upload names frame 4294967297 but the message has 2"},
        {f_upload_str, "GRAPH: each upload must be [handle, frame], [handle, frame, text] or "
                       "[handle, frame, text, "
                       "offset, total]"},
        {f_upload_arity, "GRAPH: each upload must be [handle, frame], [handle, frame, text] or "
                         "[handle, frame, text, "
                         "offset, total]"},
        {f_upload_arity1, "GRAPH: each upload must be [handle, frame], [handle, frame, text] or "
                          "[handle, frame, text, "
                          "offset, total]"},
        {f_upload_item_notlist, "GRAPH: each upload must be [handle, frame], [handle, frame, text] "
                                "or [handle, frame, text, "
                                "offset, total]"},
        {f_upload_third_str_frame, "GRAPH: each upload must be [handle, frame], [handle, frame, "
                                   "text] or [handle, frame, text, "
                                   "offset, total]"},
        {f_upload_notlist, "GRAPH: 'uploads' must be an array"},
        {f_upload_neg_handle, "GRAPH: client handles must be in [1, 2^62)"},
    };
    for (size_t i = 0; i < sizeof wire / sizeof wire[0]; i++) {
        graph_with(&b, DJN_MSG_GRAPH, "uploads", wire[i].fn);
        EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, wire[i].sub);
    }
    /* FETCH goes through the same checks. */
    graph_upload(&b, DJN_MSG_FETCH, 10, 0, false);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: upload names frame 0 but the message has 2");

    /* text as given, in every message type that carries uploads. */
    for (int text = 0; text < 2; text++) {
        for (int t = 0; t < 3; t++) {
            static const uint8_t types[3] = {DJN_MSG_GRAPH, DJN_MSG_FETCH, DJN_MSG_GRAPH_CACHED};
            graph_upload(&b, types[t], 10, 2, text);
            djn_msg_t *m = decode_ok(&b, 2);
            CHECK(m != NULL);
            if (m) {
                CHECK_EQ_INT(m->u.graph.nuploads, 1);
                if (m->u.graph.nuploads == 1) {
                    CHECK(m->u.graph.uploads[0].handle == 10);
                    CHECK_EQ_INT(m->u.graph.uploads[0].frame, 2);
                    CHECK_EQ_INT(m->u.graph.uploads[0].text, text);
                }
            }
            djn_msg_free(&m);
        }
    }
    /* Mixed: a text upload next to a plain one. */
    {
        static const djn_upload_t ups[2] = {{10, 2, true, false, 0, 0},
                                            {11, 1, false, false, 0, 0}};
        djn_graph_req_t g = graph_base();
        g.nuploads = 2;
        g.uploads = ups;
        encode_graph(&b, DJN_MSG_GRAPH, &g);
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
    /* A third element that is not `true` never means text: [10, 1, false] is a plain
     * upload; an integer or a string there is not text either. */
    for (int third = 0; third < 4; third++) {
        if (third == 1)
            continue;
        s_up_third = third;
        graph_with(&b, DJN_MSG_GRAPH, "uploads", f_upload_third);
        djn_msg_t *m = decode_ok(&b, 2);
        CHECK(m && m->u.graph.nuploads == 1 && m->u.graph.uploads[0].frame == 1 &&
              !m->u.graph.uploads[0].text);
        djn_msg_free(&m);
    }
    /* A text upload still needs a frame in range. */
    graph_upload(&b, DJN_MSG_GRAPH, 10, 3, true);
    EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: upload names frame 3 but the message has 2");

    /* Client handles are in [1, 2^62): 0 and server-issued ones (from 2^62) are refused,
     * with or without the text flag; the edges 1 and 2^62 - 1 are fine. */
    static const uint64_t bad_handles[] = {0, (uint64_t)1 << 62, ((uint64_t)1 << 62) + 1,
                                           (uint64_t)1 << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof bad_handles / sizeof bad_handles[0]; i++) {
        for (int text = 0; text < 2; text++) {
            graph_upload(&b, DJN_MSG_GRAPH, bad_handles[i], 1, text);
            EXPECT_REJECT_BUF(&b, 2, DJN_ERR_PROTO, "GRAPH: client handles must be in [1, 2^62)");
        }
    }
    static const uint64_t good_handles[] = {1, ((uint64_t)1 << 62) - 1};
    for (size_t i = 0; i < sizeof good_handles / sizeof good_handles[0]; i++) {
        graph_upload(&b, DJN_MSG_GRAPH, good_handles[i], 1, true);
        djn_msg_t *m = decode_ok(&b, 1);
        CHECK(m && m->u.graph.nuploads == 1 && m->u.graph.uploads[0].handle == good_handles[i] &&
              m->u.graph.uploads[0].text);
        djn_msg_free(&m);
    }
    djn_buf_release(&b);
}

/* Pieces of malformed nodes: each replaces one element of a valid node (node_edit). */
static void w_int1(djn_buf_t *b) {
    djn_enc_int(b, 1);
}
static void w_bin_op(djn_buf_t *b) {
    djn_enc_bin(b, "aten::add", 9);
}
static void w_map0(djn_buf_t *b) {
    djn_enc_map(b, 0);
}
static void w_tensor(djn_buf_t *b) {
    enc_tref_2x3(b, 1);
}
static void w_str0(djn_buf_t *b) {
    djn_enc_cstr(b, "0");
}
static void w_float0(djn_buf_t *b) {
    djn_enc_float(b, 0);
}
static void w_nul_op(djn_buf_t *b) {
    djn_enc_str(b, "aten::add\0junk", 14);
}
static void w_nul_first(djn_buf_t *b) {
    djn_enc_str(b, "\0aten::add", 10);
}
static void w_nul_overload(djn_buf_t *b) {
    djn_enc_str(b, "out\0", 4);
}

static void n_arity4(djn_buf_t *b) {
    node_edit(b, 4, NULL);
}
static void n_arity6(djn_buf_t *b) {
    node_edit(b, 5, f_nil);
}
static void n_arity0(djn_buf_t *b) {
    djn_enc_array(b, 0);
}
static void n_notlist(djn_buf_t *b) {
    djn_enc_cstr(b, "aten::add");
}
static void n_op_int(djn_buf_t *b) {
    node_edit(b, 0, w_int1);
}
static void n_op_bin(djn_buf_t *b) {
    node_edit(b, 0, w_bin_op);
}
static void n_overload_nil(djn_buf_t *b) {
    node_edit(b, 1, f_nil);
}
static void n_args_map(djn_buf_t *b) {
    node_edit(b, 2, w_map0);
}
static void n_outs_tensor(djn_buf_t *b) {
    node_edit(b, 3, w_tensor);
}
static void n_flags_str(djn_buf_t *b) {
    node_edit(b, 4, w_str0);
}
static void n_flags_float(djn_buf_t *b) {
    node_edit(b, 4, w_float0);
}
static void n_nul_op(djn_buf_t *b) {
    node_edit(b, 0, w_nul_op);
}
static void n_nul_first(djn_buf_t *b) {
    node_edit(b, 0, w_nul_first);
}
static void n_nul_overload(djn_buf_t *b) {
    node_edit(b, 1, w_nul_overload);
}

/* "nodes": [a valid node, the node s_node_fn writes] (errors name node 1). */
static enc_field_fn s_node_fn;
static void f_nodes_one(djn_buf_t *b) {
    djn_node_t ok = node_make("aten::ok", "", NULL, 0, NULL, 0, 0);
    djn_enc_array(b, 2);
    djn_node_encode(b, &ok);
    s_node_fn(b);
}
static void f_nodes_map(djn_buf_t *b) {
    djn_enc_map(b, 0);
}

/* A GRAPH whose nodes are [aten::ok, n]: the typed form of f_nodes_one. */
static void graph_two_nodes(djn_buf_t *b, const djn_node_t *n) {
    djn_node_t nodes[2] = {node_make("aten::ok", "", NULL, 0, NULL, 0, 0), *n};
    djn_graph_req_t g = graph_base();
    g.nnodes = 2;
    g.nodes = nodes;
    encode_graph(b, DJN_MSG_GRAPH, &g);
}

/* Malformed tensor references, each on its own field (none of them is a stride sign:
 * test_reject_negative_strides has those). */
static djn_tref_t bad_tref(int which) {
    static const int64_t one[1] = {4}, negsz[1] = {-1}, st1[1] = {1};
    switch (which) {
    case 0:
        return tref_make(1, 0, 99, 1, one, st1); /* unknown dtype */
    case 1:
        return tref_make(1, 0, DJN_DTYPE_F32, 1, negsz, st1); /* negative size */
    default:
        return tref_make(1, -1, DJN_DTYPE_F32, 1, one, st1); /* negative offset */
    }
}

static void test_reject_nodes(void) {
    djn_buf_t b = {0};
    static const struct {
        enc_field_fn fn;
        const char *sub;
    } cases[] = {
        {n_arity4, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_arity6, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_arity0, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_notlist, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_op_int, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_op_bin, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_overload_nil, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_args_map, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_outs_tensor, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_flags_str, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        {n_flags_float, "GRAPH: node 1 must be [op, overload, [args], [outs], flags]"},
        /* Operator names are C strings on the server: an embedded NUL would make the name
         * the server sees ("aten::add") differ from the bytes the client sent. */
        {n_nul_op, "GRAPH: node 1 has a bad operator name"},
        {n_nul_first, "GRAPH: node 1 has a bad operator name"},
        {n_nul_overload, "GRAPH: node 1 has a bad operator name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_node_fn = cases[i].fn;
        graph_with(&b, DJN_MSG_GRAPH, "nodes", f_nodes_one);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, cases[i].sub);
    }
    /* Names: empty, and one byte over the limit (op or overload). */
    char name[DJN_MAX_NAME + 2];
    memset(name, 'a', DJN_MAX_NAME + 1);
    name[DJN_MAX_NAME + 1] = '\0';
    const djn_node_t names[3] = {node_make("", "", NULL, 0, NULL, 0, 0),
                                 node_make(name, "", NULL, 0, NULL, 0, 0),
                                 node_make("aten::add", name, NULL, 0, NULL, 0, 0)};
    for (int i = 0; i < 3; i++) {
        graph_two_nodes(&b, &names[i]);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: node 1 has a bad operator name");
    }
    /* Malformed references as an argument and inside a list of outputs. */
    for (int which = 0; which < 3; which++) {
        djn_tref_t good = tref_2x3(1), bad = bad_tref(which);
        djn_value_t args[2] = {v_tensor(&good), v_tensor(&bad)};
        djn_node_t n = node_make("aten::add", "", args, 2, NULL, 0, 0);
        graph_two_nodes(&b, &n);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                          "GRAPH: node 1 (aten::add) has a malformed tensor reference or "
                          "unbound slot");
        djn_value_t outs[1] = {v_list(args, 2)};
        n = node_make("aten::split", "", NULL, 0, outs, 1, 0);
        graph_two_nodes(&b, &n);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                          "GRAPH: node 1 (aten::split) has a malformed tensor reference");
    }
    graph_with(&b, DJN_MSG_GRAPH, "nodes", f_nodes_map);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'nodes' must be an array");
    djn_buf_release(&b);
}

/* Negative strides are refused: PyTorch makes none, and ATen would store their
 * magnitude, so a view could read past its storage. */
static void test_reject_negative_strides(void) {
    uint64_t b0 = 7, e0 = 7;
    /* A flip over exactly its storage: [4096] u8, stride -1, offset 4095 touches bytes
     * 0..4095 of a 4096-byte storage, and is still refused. */
    static const int64_t n4096[1] = {4096}, m1[1] = {-1};
    djn_tref_t t = tref_make(1, 4095, DJN_DTYPE_U8, 1, n4096, m1);
    CHECK(!djn_tref_extent(&t, &b0, &e0));
    /* Any negative stride, in any dim, of any size, even with a zero-size dim. */
    static const int64_t sz2[2] = {2, 3}, mixed[2] = {-3, 1}, mixed2[2] = {3, -1};
    static const int64_t empty[2] = {0, 3}, big[1] = {1}, mmin[1] = {INT64_MIN};
    const djn_tref_t refused[] = {
        tref_make(1, 3, DJN_DTYPE_U8, 2, sz2, mixed),
        tref_make(1, 3, DJN_DTYPE_F32, 2, sz2, mixed2),
        tref_make(1, 100, DJN_DTYPE_F32, 2, empty, mixed),
        tref_make(1, 0, DJN_DTYPE_F32, 1, big, m1), /* size 1: the stride is never used */
        tref_make(1, 0, DJN_DTYPE_F32, 1, big, mmin),
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        b0 = e0 = 7;
        CHECK(!djn_tref_extent(&refused[i], &b0, &e0));
    }
    /* The same flip as a node argument, and as an output inside a list. */
    djn_buf_t b = {0};
    djn_tref_t good = tref_2x3(0);
    djn_value_t args[1] = {v_tensor(&t)}, outs[1] = {v_tensor(&good)};
    t.handle = 1; /* slot 1 of binds [100, 101, 102] */
    djn_node_t n = node_make("aten::flip", "", args, 1, outs, 1, 0);
    graph_with_node(&b, &n);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                      "GRAPH: node 0 (aten::flip) has a malformed tensor reference or unbound "
                      "slot");
    djn_value_t list[2] = {v_tensor(&good), v_tensor(&t)}, louts[1] = {v_list(list, 2)};
    n = node_make("aten::unbind", "", NULL, 0, louts, 1, 0);
    graph_with_node(&b, &n);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                      "GRAPH: node 0 (aten::unbind) has a malformed tensor reference");
    /* With the stride made positive the same node is fine (the refusal is the sign). */
    t.strides[0] = 1;
    t.offset = 0;
    n = node_make("aten::flip", "", args, 1, outs, 1, 0);
    graph_with_node(&b, &n);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nnodes == 1);
    djn_msg_free(&m);
    djn_buf_release(&b);
}

/* Slots and binds: a node's tensor slot must index "binds"; binds hold non-zero handles. */
typedef struct {
    djn_tref_t in, o0, o1;
    djn_value_t args[1], outs[1], list[2];
    djn_node_t node;
} slot_node_t;

/* aten::mul(slot in) -> [slot 0], or -> [[slot 1, slot in]] when nested_out. */
static void slot_node(slot_node_t *s, uint64_t slot, bool nested_out) {
    s->in = tref_2x3(nested_out ? 0 : slot);
    s->o0 = tref_2x3(nested_out ? 1 : 0);
    s->o1 = tref_2x3(slot);
    s->args[0] = v_tensor(&s->in);
    s->list[0] = v_tensor(&s->o0);
    s->list[1] = v_tensor(&s->o1);
    s->outs[0] = nested_out ? v_list(s->list, 2) : v_tensor(&s->o0);
    s->node = node_make("aten::mul", "", s->args, 1, s->outs, 1, 0);
}

/* The decoded slot table must be binds [100, 101, 102] (graph_base's). */
static void check_binds_100(const djn_graph_req_t *g) {
    CHECK_EQ_INT(g->nbinds, 3);
    CHECK(g->binds != NULL);
    if (g->binds && g->nbinds == 3)
        CHECK(g->binds[0] == 100 && g->binds[1] == 101 && g->binds[2] == 102);
}

static void f_binds_str(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_cstr(b, "4");
}
static void f_binds_nil(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_nil(b);
}

static void test_binds(void) {
    djn_buf_t b = {0};
    slot_node_t s, s2;
    /* References keep their slots; binds[slot] is the handle; nslots = highest slot + 1. */
    slot_node(&s, 2, false);
    graph_with_node(&b, &s.node);
    djn_msg_t *m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nnodes == 1);
    if (m && m->u.graph.nnodes == 1) {
        CHECK(is_2x3(&m->u.graph.nodes[0].args[0], 2));
        CHECK(is_2x3(&m->u.graph.nodes[0].outs[0], 0));
        check_binds_100(&m->u.graph);
        CHECK_EQ_INT(m->u.graph.nslots, 3);
    }
    djn_msg_free(&m);
    slot_node(&s, 2, true);
    graph_with_node(&b, &s.node);
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
    slot_node(&s, 1, false);
    graph_with_node(&b, &s.node);
    m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nnodes == 1);
    if (m && m->u.graph.nnodes == 1) {
        CHECK(is_2x3(&m->u.graph.nodes[0].args[0], 1));
        check_binds_100(&m->u.graph);
        CHECK_EQ_INT(m->u.graph.nslots, 2);
    }
    djn_msg_free(&m);
    /* nslots is the maximum over all nodes, not the last node's. */
    slot_node(&s, 2, false);
    slot_node(&s2, 1, false);
    {
        djn_node_t nodes[2] = {s.node, s2.node};
        djn_graph_req_t g = graph_base();
        g.nnodes = 2;
        g.nodes = nodes;
        encode_graph(&b, DJN_MSG_GRAPH, &g);
    }
    m = decode_ok(&b, 0);
    CHECK(m && m->u.graph.nnodes == 2);
    if (m && m->u.graph.nnodes == 2) {
        CHECK(is_2x3(&m->u.graph.nodes[0].args[0], 2));
        CHECK(is_2x3(&m->u.graph.nodes[1].args[0], 1));
        check_binds_100(&m->u.graph);
        CHECK_EQ_INT(m->u.graph.nslots, 3);
    }
    djn_msg_free(&m);
    /* Binds without nodes (a FETCH, or a GRAPH that only allocates): no slots named. */
    for (int t = 0; t < 2; t++) {
        djn_graph_req_t g = graph_base();
        encode_graph(&b, t ? DJN_MSG_FETCH : DJN_MSG_GRAPH, &g);
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
    {
        static const uint64_t server[2] = {(uint64_t)1 << 62, UINT64_MAX};
        djn_graph_req_t g = graph_empty();
        g.nbinds = 2;
        g.binds = server;
        encode_graph(&b, DJN_MSG_GRAPH, &g);
        m = decode_ok(&b, 0);
        CHECK(m && m->u.graph.nbinds == 2);
        if (m && m->u.graph.nbinds == 2)
            CHECK(m->u.graph.binds[0] == (uint64_t)1 << 62 && m->u.graph.binds[1] == UINT64_MAX);
        djn_msg_free(&m);
    }
    /* A slot at or past nbinds is unbound. */
    static const uint64_t unbound[3] = {3, UINT64_MAX, (uint64_t)1 << 32};
    for (int i = 0; i < 3; i++) {
        slot_node(&s, unbound[i], i == 2);
        graph_with_node(&b, &s.node);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                          "GRAPH: node 0 (aten::mul) has a malformed tensor reference or "
                          "unbound slot");
    }
    /* No binds at all: every slot is unbound. */
    slot_node(&s, 0, false);
    {
        djn_graph_req_t g = graph_empty();
        g.nnodes = 1;
        g.nodes = &s.node;
        encode_graph(&b, DJN_MSG_GRAPH, &g);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: node 0 (aten::mul)");
    }
    /* Malformed binds, in GRAPH and FETCH. */
    for (int t = 0; t < 2; t++) {
        uint8_t type = t ? DJN_MSG_FETCH : DJN_MSG_GRAPH;
        graph_with(&b, type, "binds", f_upload_notlist);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'binds' must be an array");
        static const uint64_t zero[2] = {4, 0};
        djn_graph_req_t g = graph_empty();
        g.nbinds = 2;
        g.binds = zero;
        encode_graph(&b, type, &g);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'binds' must hold non-zero handles");
        graph_with(&b, type, "binds", f_binds_str);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'binds' must hold non-zero handles");
        graph_with(&b, type, "binds", f_binds_nil);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "GRAPH: 'binds' must hold non-zero handles");
    }
    djn_buf_release(&b);
}

/* Field values of the wrong type (wire-level: our encoder cannot write them). */
static void f_dev_str(djn_buf_t *b) {
    djn_enc_cstr(b, "cuda:0");
}
static void f_dev_neg(djn_buf_t *b) {
    djn_enc_int(b, -1);
}
static void f_dev_wide(djn_buf_t *b) {
    djn_enc_uint(b, ((uint64_t)1 << 32) + 1);
}
static void f_seed_str(djn_buf_t *b) {
    djn_enc_cstr(b, "42");
}
static void f_seed_float(djn_buf_t *b) {
    djn_enc_float(b, 42.0);
}
static void f_arr_map(djn_buf_t *b) {
    djn_enc_map(b, 0);
}
static void f_arr_int(djn_buf_t *b) {
    djn_enc_int(b, 3);
}
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

/* Field values of the right type but out of range: the typed encoder writes them. */
typedef void (*graph_fix_fn)(djn_graph_req_t *g);
static void x_dev_64(djn_graph_req_t *g) {
    g->device = DJN_MAX_DEVICES;
}
static void x_dev_1025(djn_graph_req_t *g) {
    g->device = 1025;
}
static void x_dev_max(djn_graph_req_t *g) {
    g->device = UINT32_MAX;
}
static djn_alloc_t s_alloc_fix[2];
static void x_alloc(djn_graph_req_t *g, uint64_t h0, uint64_t h1, uint32_t n) {
    s_alloc_fix[0] = (djn_alloc_t){h0, 8};
    s_alloc_fix[1] = (djn_alloc_t){h1, 16};
    g->nallocs = n;
    g->allocs = s_alloc_fix;
}
static void x_alloc_h0(djn_graph_req_t *g) {
    x_alloc(g, 0, 0, 1);
}
static void x_alloc_h62(djn_graph_req_t *g) {
    x_alloc(g, (uint64_t)1 << 62, 0, 1);
}
static void x_alloc_hmax(djn_graph_req_t *g) {
    x_alloc(g, UINT64_MAX, 0, 1);
}
static void x_alloc_second_h0(djn_graph_req_t *g) {
    x_alloc(g, 1, 0, 2);
}

static void test_reject_graph_fields(void) {
    static const struct {
        const char *key;
        enc_field_fn fn;
        const char *sub;
    } wire[] = {
        {"dev", f_dev_str, "GRAPH: 'dev' must be a device index"},
        {"dev", f_dev_neg, "GRAPH: 'dev' must be a device index"},
        {"dev", f_dev_wide, "GRAPH: 'dev' must be a device index"},
        {"seed", f_seed_str, "GRAPH: 'seed' must be an integer"},
        {"seed", f_seed_float, "GRAPH: 'seed' must be an integer"},
        {"allocs", f_arr_map, "GRAPH: 'allocs' must be an array"},
        {"allocs", f_arr_int, "GRAPH: 'allocs' must be an array"},
        {"allocs", f_alloc_arity, "GRAPH: each alloc must be [handle, nbytes]"},
        {"allocs", f_alloc_str, "GRAPH: each alloc must be [handle, nbytes]"},
        {"frees", f_arr_map, "GRAPH: 'frees' must be an array"},
        {"frees", f_frees_str, "GRAPH: 'frees' must hold handles"},
        {"frees", f_frees_nil, "GRAPH: 'frees' must hold handles"},
        {"fetch", f_arr_int, "GRAPH: 'fetch' must be an array"},
        {"fetch", f_fetch_arity, "GRAPH: each fetch must be [handle, offset, nbytes]"},
        {"fetch", f_fetch_float, "GRAPH: each fetch must be [handle, offset, nbytes]"},
        {"nodes", f_arr_int, "GRAPH: 'nodes' must be an array"},
        {"uploads", f_arr_int, "GRAPH: 'uploads' must be an array"},
    };
    static const struct {
        graph_fix_fn fix;
        const char *sub;
    } typed[] = {
        {x_dev_64, "GRAPH: 'dev' must be a device index"},
        {x_dev_1025, "GRAPH: 'dev' must be a device index"},
        {x_dev_max, "GRAPH: 'dev' must be a device index"},
        {x_alloc_h0, "GRAPH: client handles must be in [1, 2^62)"},
        {x_alloc_h62, "GRAPH: client handles must be in [1, 2^62)"},
        {x_alloc_hmax, "GRAPH: client handles must be in [1, 2^62)"},
        {x_alloc_second_h0, "GRAPH: client handles must be in [1, 2^62)"},
    };
    static const uint8_t types[3] = {DJN_MSG_GRAPH, DJN_MSG_FETCH, DJN_MSG_GRAPH_CACHED};
    djn_buf_t b = {0};
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < sizeof wire / sizeof wire[0]; i++) {
            graph_with(&b, types[t], wire[i].key, wire[i].fn);
            EXPECT_REJECT_BUF(&b, 4, DJN_ERR_PROTO, wire[i].sub);
        }
        for (size_t i = 0; i < sizeof typed / sizeof typed[0]; i++) {
            djn_graph_req_t g = graph_base();
            typed[i].fix(&g);
            encode_graph(&b, types[t], &g);
            EXPECT_REJECT_BUF(&b, 4, DJN_ERR_PROTO, typed[i].sub);
        }
    }
    /* The edges of the client handle range are fine. */
    djn_graph_req_t g = graph_base();
    x_alloc(&g, 1, ((uint64_t)1 << 62) - 1, 2);
    encode_graph(&b, DJN_MSG_GRAPH, &g);
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

static void f_items_str(djn_buf_t *b) {
    djn_enc_cstr(b, "not an array");
}
static void f_item_arity(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 3);
    djn_enc_uint(b, 30);
    djn_enc_uint(b, 1);
    djn_enc_uint(b, 2);
}
static void f_item_str(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_array(b, 4);
    djn_enc_uint(b, 30);
    djn_enc_cstr(b, "hi");
    djn_enc_uint(b, 2);
    djn_enc_uint(b, 3);
}
static void f_item_notlist(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_uint(b, 30);
}

static void test_reject_have(void) {
    djn_buf_t b = {0};
    static const struct {
        const char *key;
        enc_field_fn fn;
        const char *sub;
    } wire[] = {
        {"dev", NULL, "HAVE: needs 'dev' (a device index) and 'items' (an array)"},
        {"dev", f_dev_str, "HAVE: needs 'dev' (a device index) and 'items' (an array)"},
        {"dev", f_dev_neg, "HAVE: needs 'dev' (a device index) and 'items' (an array)"},
        {"items", NULL, "HAVE: needs 'dev' (a device index) and 'items' (an array)"},
        {"items", f_items_str, "HAVE: needs 'dev' (a device index) and 'items' (an array)"},
        {"items", f_item_arity, "HAVE: each item must be [handle, hash_hi, hash_lo, nbytes]"},
        {"items", f_item_str, "HAVE: each item must be [handle, hash_hi, hash_lo, nbytes]"},
        {"items", f_item_notlist, "HAVE: each item must be [handle, hash_hi, hash_lo, nbytes]"},
    };
    for (size_t i = 0; i < sizeof wire / sizeof wire[0]; i++) {
        have_encode(&b, 0, s_have_items, 2);
        body_edit(&b, wire[i].key, wire[i].fn);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, wire[i].sub);
    }
    /* A device past DJN_MAX_DEVICES; handles outside the client range, first or second. */
    have_encode(&b, DJN_MAX_DEVICES, s_have_items, 2);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                      "HAVE: needs 'dev' (a device index) and 'items' (an array)");
    static const uint64_t bad_handles[] = {0, (uint64_t)1 << 62, UINT64_MAX};
    for (size_t i = 0; i < sizeof bad_handles / sizeof bad_handles[0]; i++) {
        for (int second = 0; second < 2; second++) {
            djn_have_item_t items[2] = {s_have_items[0], s_have_items[1]};
            items[second].handle = bad_handles[i];
            have_encode(&b, 0, items, 2);
            EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "HAVE: client handles must be in [1, 2^62)");
        }
    }
    /* The body must still be a map. */
    have_encode(&b, 0, s_have_items, 2);
    hdr_edit(&b, "body", f_arr_empty);
    EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO, "header 'body' must be a map");
    djn_buf_release(&b);
}

/* The header fields of a valid HELLO, replaced one at a time. */
static uint64_t s_type;
static void f_type(djn_buf_t *b) {
    djn_enc_uint(b, s_type);
}
static void f_type_arr(djn_buf_t *b) {
    djn_enc_array(b, 1);
    djn_enc_int(b, 3);
}
static void f_true(djn_buf_t *b) {
    djn_enc_bool(b, true);
}

static void test_reject_header_fields(void) {
    djn_buf_t b = {0};
    uint64_t seq;
    /* Unknown message types, including reserved and reply numbers and numbers that only
     * match a valid type in their low byte. */
    static const uint64_t unknown[] = {0,
                                       DJN_MSG_UPLOAD,
                                       12,
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
        djn_hello_req_t r = {1, "c"};
        djn_msg_hdr_t h = hdr_make(DJN_MSG_HELLO, 1, 500 + i);
        djn_buf_reset(&b);
        djn_hello_req_encode(&b, &h, &r);
        s_type = unknown[i];
        hdr_edit(&b, "type", f_type);
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
    static const enc_field_fn types[] = {f_str1, f_float1, f_nil, f_true, f_type_arr};
    for (size_t v = 0; v < sizeof types / sizeof types[0]; v++) {
        djn_msg_hdr_t h = hdr_make(DJN_MSG_HEARTBEAT, 1, 2);
        djn_buf_reset(&b);
        djn_empty_encode(&b, &h);
        hdr_edit(&b, "type", types[v]);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                          "header must be a map with integer 'type', 'sid' and 'seq'");
        seq = 0;
        djn_msg_t *m = NULL;
        char err[ERRLEN];
        CHECK(djn_msg_decode(b.data, b.len, 0, &m, &seq, err, ERRLEN) == DJN_ERR_PROTO);
        CHECK_EQ_INT(seq, 2);
    }
    /* Missing sid, missing seq, missing type, sid as a string. */
    static const struct {
        const char *key;
        enc_field_fn fn;
    } missing[] = {{"sid", NULL}, {"seq", NULL}, {"type", NULL}, {"sid", f_str1}};
    for (size_t k = 0; k < sizeof missing / sizeof missing[0]; k++) {
        djn_msg_hdr_t h = hdr_make(DJN_MSG_HEARTBEAT, 1, 2);
        djn_buf_reset(&b);
        djn_empty_encode(&b, &h);
        hdr_edit(&b, missing[k].key, missing[k].fn);
        EXPECT_REJECT_BUF(&b, 0, DJN_ERR_PROTO,
                          "header must be a map with integer 'type', 'sid' and 'seq'");
    }
    /* Missing body, body not a map, a "Body" that is not "body". */
    for (int v = 0; v < 4; v++) {
        djn_msg_hdr_t h = hdr_make(DJN_MSG_HEARTBEAT, 1, 2);
        djn_buf_reset(&b);
        djn_empty_encode(&b, &h);
        static const enc_field_fn bodies[3] = {NULL, f_arr_empty, f_nil};
        hdr_edit(&b, "body", bodies[v == 3 ? 0 : v]);
        if (v == 3)
            hdr_edit(&b, "Body", f_arr_map);
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
    /* A header whose first key is "" (a client can send this): a HEARTBEAT from
     * djn_empty_encode with the pair "": 1 spliced in front of its four. */
    djn_buf_t b = {0}, s = {0};
    djn_msg_hdr_t h = hdr_make(DJN_MSG_HEARTBEAT, 1, 2);
    djn_empty_encode(&b, &h);
    CHECK(b.len > 1 && b.data[0] == 0x84); /* fixmap of 4 */
    djn_enc_map(&s, 5);
    djn_enc_cstr(&s, "");
    djn_enc_int(&s, 1);
    djn_buf_raw(&s, b.data + 1, b.len - 1);
    djn_msg_t *m = decode_ok(&s, 0);
    CHECK(m && m->type == DJN_MSG_HEARTBEAT);
    djn_msg_free(&m);
    djn_buf_release(&b);
    djn_buf_release(&s);
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

/* Error text handling: NULL err, errlen 0 and a tiny errlen. */
static void test_err_buffers(void) {
    djn_buf_t b = {0};
    djn_msg_hdr_t h = hdr_make(99, 1, 2);
    djn_empty_encode(&b, &h);
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

/* ------------------------------------------------------------------ 5. fuzzing */

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
            if (g->device >= DJN_MAX_DEVICES)
                why = "accepted a device out of range";
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
        if (m && m->type == DJN_MSG_HAVE) {
            if (m->u.have.device >= DJN_MAX_DEVICES)
                why = "accepted a HAVE device out of range";
            for (uint32_t i = 0; i < m->u.have.nitems; i++)
                if (!djn_handle_is_client(m->u.have.items[i].handle))
                    why = "accepted a HAVE handle outside [1, 2^62)";
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
    case 0:
        djn_enc_nil(b);
        break;
    case 1:
        djn_enc_bool(b, rng() & 1);
        break;
    case 2:
        djn_enc_int(b, (int64_t)rng_below(8) - 2);
        break;
    case 3:
        djn_enc_uint(b, rng());
        break;
    case 4:
        djn_enc_float(b, (double)rng_below(100) / 4);
        break;
    case 5: {
        static const char *const s[] = {"", "aten::add", "out", "x", "version"};
        djn_enc_cstr(b, s[rng_below(5)]);
        break;
    }
    case 6:
        djn_enc_complex(b, 1, -1);
        break;
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
    case 8:
        djn_enc_bin(b, "ab", 2);
        break;
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
static int fuzz_trees(uint64_t seed, const char *const *keys, uint32_t nkeys, const uint8_t *types,
                      uint32_t ntypes, int *bad) {
    rng_seed(seed);
    djn_buf_t b = {0};
    int ok = 0;
    for (int i = 0; i < 2000; i++) {
        djn_buf_reset(&b);
        enc_header_prefix(&b, types[rng_below(ntypes)], rng(), rng());
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
    static const char *const keys[] = {"fp",   "binds", "uploads", "nodes", "allocs",
                                       "seed", "fetch", "items",   "dev"};
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

/* ------------------------------------------------------------------ 6. extents */

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
    /* a view in the middle of its storage: [2, 2] strides [3, 1] offset 4 of a [3, 3]
     * (negative strides are refused: test_reject_negative_strides) */
    {
        static const int64_t sz[2] = {2, 2}, st[2] = {3, 1};
        djn_tref_t t = tref_make(1, 4, DJN_DTYPE_F32, 2, sz, st);
        CHECK(extent(&t, &b, &e));
        CHECK_EQ_INT(b, 16);
        CHECK_EQ_INT(e, 36);
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
            {DJN_DTYPE_U8, 1},          {DJN_DTYPE_I8, 1},          {DJN_DTYPE_I16, 2},
            {DJN_DTYPE_I32, 4},         {DJN_DTYPE_I64, 8},         {DJN_DTYPE_F16, 2},
            {DJN_DTYPE_F32, 4},         {DJN_DTYPE_F64, 8},         {DJN_DTYPE_C32, 4},
            {DJN_DTYPE_C64, 8},         {DJN_DTYPE_C128, 16},       {DJN_DTYPE_BOOL, 1},
            {DJN_DTYPE_BF16, 2},        {DJN_DTYPE_U16, 2},         {DJN_DTYPE_U32, 4},
            {DJN_DTYPE_U64, 8},         {DJN_DTYPE_F8_E5M2, 1},     {DJN_DTYPE_F8_E4M3FN, 1},
            {DJN_DTYPE_F8_E5M2FNUZ, 1}, {DJN_DTYPE_F8_E4M3FNUZ, 1}, {DJN_DTYPE_F8_E8M0FNU, 1},
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
    static const unsigned unk[] = {12, 13, 14, 16, 17, 21, 30, 45, 100, 255};
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
    t = tref_make(0, INT64_MAX, DJN_DTYPE_F32, 1, two, one);
    djn_value_t arg = v_tensor(&t);
    djn_node_t n = node_make("aten::add", "", &arg, 1, NULL, 0, 0);
    graph_with_node(&buf, &n);
    EXPECT_REJECT_BUF(&buf, 0, DJN_ERR_PROTO,
                      "GRAPH: node 0 (aten::add) has a malformed tensor reference");
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
    /* The answer must not depend on the order of the dims: [0, 3] strides [1, 6] and
     * [3, 0] strides [6, 1] at offset 4 are the same (empty) view, and with a negative
     * stride both are refused. */
    for (int neg = 0; neg < 2; neg++) {
        int64_t st = neg ? -6 : 6;
        int64_t sa[2] = {0, 3}, ta[2] = {1, st}, sb[2] = {3, 0}, tb[2] = {st, 1};
        djn_tref_t ra = tref_make(1, 4, DJN_DTYPE_F32, 2, sa, ta);
        djn_tref_t rb = tref_make(1, 4, DJN_DTYPE_F32, 2, sb, tb);
        uint64_t b2, e2;
        bool oka = extent(&ra, &b, &e), okb = extent(&rb, &b2, &e2);
        CHECK_EQ_INT(oka, !neg);
        CHECK_EQ_INT(okb, !neg);
        if (oka && okb)
            CHECK(b == 16 && e == 16 && b2 == 16 && e2 == 16);
    }
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
        bool negative = false; /* refused whatever else: PyTorch has no negative strides */
        for (unsigned d = 0; d < nd; d++)
            negative |= st[d] < 0;
        if (empty) { /* tested for order independence in test_extent_zero_size_validates */
            uint64_t b, e;
            bool ok = extent(&t, &b, &e);
            if (ok == negative || (ok && (b != e || b != (uint64_t)off * isz)))
                mismatches++;
            continue;
        }
        uint64_t b, e;
        bool ok = extent(&t, &b, &e);
        bool want_ok = !negative;
        CHECK(negative || lo == off); /* without negative strides the view starts at off */
        if (ok != want_ok) {
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

/* ------------------------------------------------------------------ 7. fault injection */

/* A GRAPH big enough that decoding needs several arena chunks: 300 binds and allocs, 200
 * nodes naming slots i, i+1, i+2 (so nslots is 202), 100 frees, and in node 0 a 40 KB
 * binary argument (one allocation bigger than an arena chunk). */
#define BIG_NODES 200
typedef struct {
    uint64_t binds[300], frees[100];
    djn_alloc_t allocs[300];
    djn_upload_t upload;
    djn_tref_t t[BIG_NODES][3];
    djn_value_t args[BIG_NODES][4], pair[BIG_NODES][2], outs[BIG_NODES][1];
    djn_node_t nodes[BIG_NODES];
    djn_graph_req_t g;
} big_t;

static void build_big_graph(djn_buf_t *b) {
    static big_t x; /* plain memory: fault injection aims at the encoder only */
    static uint8_t blob[40000];
    for (int i = 0; i < 300; i++) {
        x.binds[i] = 1000 + (uint64_t)i;
        x.allocs[i] = (djn_alloc_t){1 + (uint64_t)i, 24}; /* client handles: [1, 2^62) */
    }
    for (int i = 0; i < 100; i++)
        x.frees[i] = (uint64_t)i;
    x.upload = (djn_upload_t){1, 1, false, false, 0, 0};
    for (int i = 0; i < BIG_NODES; i++) {
        for (int k = 0; k < 3; k++)
            x.t[i][k] = tref_2x3((uint64_t)i + (uint64_t)k);
        x.pair[i][0] = v_tensor(&x.t[i][1]);
        x.pair[i][1] = v_complex(1, 2);
        x.args[i][0] = v_tensor(&x.t[i][0]);
        x.args[i][1] = v_list(x.pair[i], 2);
        x.args[i][2] = v_str("a string argument of some length");
        x.args[i][3] = v_bin(blob, sizeof blob);
        x.outs[i][0] = v_tensor(&x.t[i][2]);
        x.nodes[i] = node_make("aten::add", "out", x.args[i], i == 0 ? 4 : 3, x.outs[i], 1, 0);
    }
    x.g = graph_empty();
    x.g.nbinds = 300;
    x.g.binds = x.binds;
    x.g.nallocs = 300;
    x.g.allocs = x.allocs;
    x.g.nuploads = 1;
    x.g.uploads = &x.upload;
    x.g.nnodes = BIG_NODES;
    x.g.nodes = x.nodes;
    x.g.nfrees = 100;
    x.g.frees = x.frees;
    djn_msg_hdr_t h = hdr_make(DJN_MSG_GRAPH, 1, 2);
    djn_graph_req_encode(b, &h, &x.g);
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
                m->u.graph.nfrees != 100 || m->u.graph.nbinds != 300 || m->u.graph.nslots != 202 ||
                strcmp(m->u.graph.nodes[199].op, "aten::add") != 0)
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

/* ------------------------------------------------------------------ 8. arena and counter */

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
    /* 1. value round trips */
    RUN(test_roundtrip_ints);
    RUN(test_roundtrip_floats);
    RUN(test_roundtrip_nil_bool);
    RUN(test_roundtrip_str_bin);
    RUN(test_roundtrip_nested);
    RUN(test_roundtrip_tref);
    RUN(test_roundtrip_complex);
    RUN(test_enc_value_echo);
    RUN(test_buf_growth);
    /* 2. message round trips */
    RUN(test_rt_hello_req);
    RUN(test_rt_graph_types);
    RUN(test_rt_upload_chunks);
    RUN(test_rt_node_encoders);
    RUN(test_rt_have_req);
    RUN(test_rt_empty);
    RUN(test_rt_hello_rep);
    RUN(test_rt_graph_rep);
    RUN(test_rt_have_rep);
    RUN(test_rt_stats_rep);
    RUN(test_rt_error_rep);
    RUN(test_rt_dyn_tensor);
    RUN(test_nodes_clone);
    RUN(test_value_clone);
    /* 3. messages */
    RUN(test_msg_hello);
    RUN(test_msg_hello_version_wide);
    RUN(test_msg_key_order_and_extras);
    RUN(test_msg_graph);
    RUN(test_msg_graph_defaults);
    RUN(test_msg_fetch);
    RUN(test_msg_graph_fp);
    RUN(test_msg_graph_cached);
    RUN(test_msg_have);
    /* 4. malformed */
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
    RUN(test_reject_negative_strides);
    RUN(test_binds);
    RUN(test_reject_graph_fields);
    RUN(test_reject_have);
    RUN(test_reject_header_fields);
    RUN(test_empty_string_first);
    RUN(test_buf_raw_empty);
    RUN(test_err_buffers);
    /* 5. fuzzing */
    RUN(test_fuzz_random_buffers);
    RUN(test_fuzz_random_trees);
    RUN(test_fuzz_random_trees_cached);
    RUN(test_fuzz_mutations);
    /* 6. extents */
    RUN(test_extent_basic);
    RUN(test_extent_rejects);
    RUN(test_extent_no_signed_overflow);
    RUN(test_extent_zero_size_validates);
    RUN(test_extent_bruteforce);
    /* 7. fault injection */
    RUN(test_fault_injection_decode);
    RUN(test_fault_injection_err_text);
    RUN(test_fault_injection_encode);
    RUN(test_clone_fault_injection);
    /* 8. arena and counter */
    RUN(test_arena);
    RUN(test_arena_size_overflow);
    RUN(test_mem_counter);
    return djn_test_report();
}
