/* test_client_rec.c: the fragment recorder (csrc/client/djn_rec.c).
 *
 * Named test_client_* so that the Makefile links the client sources. Covers:
 *   - slots: assigned in order of first use, reused, mapped back to handles by binds;
 *   - the fingerprint: XXH3-128 of the nodes' skeleton (djn_sym.h), which depends on
 *     ops, dtypes, ranks and wiring but not on handle values, sizes or int scalars;
 *   - djn_rec_abort: the recorder is exactly as before the node (binds, slots, node
 *     bytes, SRG), so the next sealed fragment is byte-identical to one recorded without
 *     the aborted node;
 *   - DJN_REC_FULL at the node bound (not for DYNAMIC nodes), device switching;
 *   - frees (nothing to send for a handle the server never heard of), uploads, HAVE
 *     items and djn_rec_drop_upload;
 *   - sealing: the djn_graph_req_t encodes (djn_graph_req_encode) into a GRAPH that
 *     djn_msg_decode accepts with the same nodes, byte for byte what the typed node
 *     encoder writes; lifecycles (persistent iff an output is not freed) in djn_rec_srg;
 *   - fault injection: allocation N fails for every N over a whole recording; the call
 *     that met the failure reports it, and the recorder then holds exactly what a
 *     recorder that never saw the failed calls holds (compared byte for byte), stays
 *     usable, and counted memory returns to its start. */
#include "djn_test.h"

#include <xxhash.h>

#include "djn_codec.h"
#include "djn_proto.h"
#include "djn_rec.h"
#include "djn_sym.h"

#define ERRLEN 256

/* ------------------------------------------------------------------ helpers */

/* A contiguous float32 [n] reference. */
static djn_tref_t tref_vec(uint64_t handle, int64_t n) {
    djn_tref_t t;
    memset(&t, 0, sizeof t);
    t.handle = handle;
    t.dtype = DJN_DTYPE_F32;
    t.ndim = 1;
    t.sizes[0] = n;
    t.strides[0] = 1;
    return t;
}

/* A node the way the capturing layer records one:
 *   op(in[0], ..., in[nin-1], scalar or str) -> [out[0], ..., out[nout-1]]
 * with float32 [size] tensors; outputs are written. */
typedef struct {
    const char *op;
    const uint64_t *in;
    uint32_t nin;
    const uint64_t *out;
    uint32_t nout;
    int64_t scalar;
    const char *str; /* encoded instead of scalar when set */
    int64_t size;
    uint32_t flags;
    djn_op_class_t cls;
    djn_phase_t phase;
} node_spec_t;

static djn_status_t rec_node(djn_rec_t *r, const node_spec_t *n, djn_rec_state_t *state) {
    djn_rec_state_t ignored;
    djn_status_t st = djn_rec_begin(r, n->op, "", n->nin + 1);
    if (st != DJN_OK)
        return st;
    for (uint32_t i = 0; i < n->nin; i++) {
        djn_tref_t t = tref_vec(n->in[i], n->size ? n->size : 4);
        djn_rec_tensor(r, &t, false);
    }
    if (n->str)
        djn_enc_cstr(djn_rec_buf(r), n->str);
    else
        djn_enc_int(djn_rec_buf(r), n->scalar);
    djn_rec_outs(r, n->nout);
    for (uint32_t i = 0; i < n->nout; i++) {
        djn_tref_t t = tref_vec(n->out[i], n->size ? n->size : 4);
        djn_rec_tensor(r, &t, true);
    }
    return djn_rec_end(r, n->flags, n->cls, n->phase, state ? state : &ignored);
}

/* op(a, b, scalar) -> [c], float32 [4]. */
static djn_status_t rec_binop(djn_rec_t *r, const char *op, uint64_t a, uint64_t b, uint64_t c,
                              int64_t scalar) {
    uint64_t in[2] = {a, b}, out[1] = {c};
    node_spec_t n = {op, in, 2, out, 1, scalar, NULL, 4, 0, DJN_CLASS_COMPUTE, DJN_PHASE_NONE};
    return rec_node(r, &n, NULL);
}

/* Seal and encode the fragment as a GRAPH (sid 1, seq 1) into b. */
static djn_status_t seal_bytes(djn_rec_t *r, const djn_fetch_t *fetch, djn_buf_t *b,
                               djn_graph_req_t *g_out) {
    djn_graph_req_t g;
    djn_status_t st = djn_rec_seal(r, fetch, &g);
    if (st != DJN_OK)
        return st;
    djn_msg_hdr_t h = {DJN_MSG_GRAPH, 1, 1};
    djn_buf_reset(b);
    djn_graph_req_encode(b, &h, &g);
    if (g_out)
        *g_out = g;
    return b->failed ? DJN_ERR_NOMEM : DJN_OK;
}

static bool buf_eq(const djn_buf_t *a, const djn_buf_t *b) {
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* The nodes of a sealed fragment, decoded from their bytes (for slot checks). */
static djn_msg_t *decode_sealed(const djn_buf_t *b, uint32_t nframes) {
    djn_msg_t *m = NULL;
    char err[ERRLEN] = "";
    djn_status_t st = djn_msg_decode(b->data, b->len, nframes, &m, NULL, err, ERRLEN);
    if (st != DJN_OK)
        printf("sealed fragment refused: %s: %s\n", djn_status_str(st), err);
    return m;
}

static bool arg_slot(const djn_value_t *v, uint64_t slot) {
    return v->kind == DJN_V_TENSOR && v->u.t->handle == slot;
}

static uint8_t *bytes_of(uint64_t n, uint8_t fill) {
    uint8_t *p = djn_malloc(n);
    if (p)
        memset(p, fill, n);
    return p;
}

/* ------------------------------------------------------------------ slots */

static void test_slots_first_use(void) {
    djn_rec_t *r = djn_rec_new(64);
    CHECK(r != NULL);
    if (!r)
        return;
    CHECK(djn_rec_empty(r));
    CHECK_EQ_INT(djn_rec_nnodes(r), 0);
    CHECK_EQ_INT(rec_binop(r, "aten::add", 100, 200, 300, 1), DJN_OK);
    CHECK_EQ_INT(rec_binop(r, "aten::mul", 300, 100, 400, 2), DJN_OK);
    CHECK_EQ_INT(rec_binop(r, "aten::sub", 400, 400, 100, 3), DJN_OK); /* all reused */
    CHECK(!djn_rec_empty(r));
    CHECK_EQ_INT(djn_rec_nnodes(r), 3);
    CHECK(djn_rec_names(r, 100) && djn_rec_names(r, 400));
    CHECK(!djn_rec_names(r, 999));
    djn_buf_t b = {0};
    djn_graph_req_t g;
    CHECK_EQ_INT(seal_bytes(r, NULL, &b, &g), DJN_OK);
    CHECK_EQ_INT(g.nbinds, 4);
    if (g.nbinds == 4)
        CHECK(g.binds[0] == 100 && g.binds[1] == 200 && g.binds[2] == 300 && g.binds[3] == 400);
    CHECK_EQ_INT(g.nnodes, 3);
    djn_msg_t *m = decode_sealed(&b, 0);
    CHECK(m != NULL);
    if (m && m->u.graph.nnodes == 3) {
        const djn_node_t *n = m->u.graph.nodes;
        CHECK(arg_slot(&n[0].args[0], 0) && arg_slot(&n[0].args[1], 1));
        CHECK(arg_slot(&n[0].outs[0], 2));
        CHECK(arg_slot(&n[1].args[0], 2) && arg_slot(&n[1].args[1], 0));
        CHECK(arg_slot(&n[1].outs[0], 3));
        CHECK(arg_slot(&n[2].args[0], 3) && arg_slot(&n[2].args[1], 3));
        CHECK(arg_slot(&n[2].outs[0], 0));
        CHECK(n[2].args[2].kind == DJN_V_INT && n[2].args[2].u.i == 3);
        CHECK_EQ_INT(m->u.graph.nslots, 4);
        CHECK_EQ_INT(m->u.graph.nbinds, 4);
        if (m->u.graph.nbinds == 4) /* binds[slot] is the handle */
            CHECK(m->u.graph.binds[n[1].outs[0].u.t->handle] == 400);
    }
    djn_msg_free(&m);
    /* Reset: the next fragment numbers slots from 0 again. */
    djn_rec_reset(r);
    CHECK(djn_rec_empty(r));
    CHECK(!djn_rec_names(r, 100));
    CHECK_EQ_INT(rec_binop(r, "aten::add", 400, 100, 500, 1), DJN_OK);
    CHECK_EQ_INT(seal_bytes(r, NULL, &b, &g), DJN_OK);
    CHECK(g.nbinds == 3 && g.binds[0] == 400 && g.binds[1] == 100 && g.binds[2] == 500);
    djn_buf_release(&b);
    djn_rec_destroy(&r);
    CHECK(r == NULL);
    djn_rec_destroy(&r);
    djn_rec_destroy(NULL);
}

/* Handles written by the node being recorded, for the fetch cache. */
static void test_written(void) {
    djn_rec_t *r = djn_rec_new(64);
    CHECK_EQ_INT(rec_binop(r, "aten::add", 1, 2, 3, 0), DJN_OK);
    CHECK_EQ_INT(djn_rec_begin(r, "aten::add_", "", 2), DJN_OK);
    djn_tref_t a = tref_vec(1, 4), b = tref_vec(5, 4), c = tref_vec(6, 4);
    djn_rec_tensor(r, &a, true); /* in place: an argument that is written */
    djn_rec_tensor(r, &b, false);
    djn_rec_outs(r, 1);
    djn_rec_tensor(r, &c, true);
    uint32_t n = 99;
    const uint64_t *w = djn_rec_written(r, &n);
    CHECK_EQ_INT(n, 2);
    if (n == 2)
        CHECK(w[0] == 1 && w[1] == 6);
    djn_rec_state_t state;
    CHECK_EQ_INT(djn_rec_end(r, 0, DJN_CLASS_COMPUTE, DJN_PHASE_NONE, &state), DJN_OK);
    CHECK_EQ_INT(state, DJN_REC_OK);
    djn_rec_destroy(&r);
}

/* ------------------------------------------------------------------ fingerprint */

/* The program a = op1(x, y, s1); b = op2(a, x, s2) over handles h[0..3], with a shape. */
static void rec_program(djn_rec_t *r, const uint64_t h[4], int64_t size, int64_t s2,
                        const char *op2, bool swap) {
    uint64_t in1[2] = {h[0], h[1]}, out1[1] = {h[2]};
    uint64_t in2[2] = {swap ? h[0] : h[2], swap ? h[2] : h[0]}, out2[1] = {h[3]};
    node_spec_t n1 = {"aten::add", in1, 2, out1, 1, 1, NULL, size, 0, 0, 0};
    node_spec_t n2 = {op2, in2, 2, out2, 1, s2, NULL, size, 0, 0, 0};
    CHECK_EQ_INT(rec_node(r, &n1, NULL), DJN_OK);
    CHECK_EQ_INT(rec_node(r, &n2, NULL), DJN_OK);
}

typedef struct {
    uint64_t fp[2];
    djn_buf_t nodes; /* the sealed nodes_raw */
} fp_t;

static fp_t fp_of(const uint64_t h[4], int64_t size, int64_t s2, const char *op2, bool swap) {
    fp_t f;
    memset(&f, 0, sizeof f);
    djn_rec_t *r = djn_rec_new(64);
    rec_program(r, h, size, s2, op2, swap);
    djn_graph_req_t g;
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    f.fp[0] = g.fp[0];
    f.fp[1] = g.fp[1];
    djn_buf_raw(&f.nodes, g.nodes_raw, g.nodes_raw_len);
    /* The fingerprint is that of the skeleton of exactly the node bytes that are sent
     * (djn_sym.h), and the recorder keeps their integers. */
    djn_buf_t skel = {0};
    djn_vec_t ints = DJN_VEC(int64_t);
    uint64_t x[2] = {0, 0};
    CHECK(djn_sym_scan(g.nodes_raw, g.nodes_raw_len, g.nnodes, &skel, &ints, x) == DJN_OK);
    CHECK(g.fp[0] == x[0] && g.fp[1] == x[1]);
    uint32_t nints = 0;
    const int64_t *kept = djn_rec_ints(r, &nints);
    CHECK(kept && nints == ints.len && !memcmp(kept, ints.data, nints * sizeof(int64_t)));
    djn_buf_release(&skel);
    djn_vec_release(&ints);
    uint64_t sfp[2] = {0, 0};
    djn_rec_srg(r, NULL, 0, sfp);
    CHECK(sfp[0] == g.fp[0] && sfp[1] == g.fp[1]);
    djn_rec_destroy(&r);
    return f;
}

static bool fp_eq(const fp_t *a, const fp_t *b) {
    return a->fp[0] == b->fp[0] && a->fp[1] == b->fp[1];
}

static void test_fingerprint(void) {
    static const uint64_t h1[4] = {10, 11, 12, 13}, h2[4] = {7000, 3, 99, 1ull << 40};
    static const uint64_t alias[4] = {10, 10, 12, 13}; /* x and y are one tensor */
    fp_t base = fp_of(h1, 4, 2, "aten::mul", false);
    fp_t other_handles = fp_of(h2, 4, 2, "aten::mul", false);
    fp_t other_shape = fp_of(h1, 5, 2, "aten::mul", false);
    fp_t other_scalar = fp_of(h1, 4, 3, "aten::mul", false);
    fp_t other_op = fp_of(h1, 4, 2, "aten::div", false);
    fp_t other_wiring = fp_of(h1, 4, 2, "aten::mul", true);
    fp_t aliased = fp_of(alias, 4, 2, "aten::mul", false);
    CHECK(base.fp[0] || base.fp[1]);
    /* Same program, other handles: same bytes, same fingerprint. */
    CHECK(fp_eq(&base, &other_handles));
    CHECK(buf_eq(&base.nodes, &other_handles.nodes));
    /* Sizes and int scalars are bindings, not structure: same fingerprint, other bytes. */
    CHECK(fp_eq(&base, &other_shape));
    CHECK(fp_eq(&base, &other_scalar));
    CHECK(!buf_eq(&base.nodes, &other_shape.nodes));
    CHECK(!fp_eq(&base, &other_op));
    CHECK(!fp_eq(&base, &other_wiring));
    CHECK(!fp_eq(&base, &aliased));
    fp_t *all[7] = {&base,     &other_handles, &other_shape, &other_scalar,
                    &other_op, &other_wiring,  &aliased};
    for (int i = 0; i < 7; i++)
        djn_buf_release(&all[i]->nodes);
    /* A fragment without nodes has no fingerprint. */
    djn_rec_t *r = djn_rec_new(64);
    CHECK_EQ_INT(djn_rec_alloc(r, 5, 64), DJN_OK);
    djn_graph_req_t g;
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK(g.fp[0] == 0 && g.fp[1] == 0 && g.nnodes == 0);
    /* After a reset the fingerprint starts over: the same nodes give the same fp. */
    djn_rec_reset(r);
    rec_program(r, h1, 4, 2, "aten::mul", false);
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    fp_t again = fp_of(h2, 4, 2, "aten::mul", false);
    CHECK(g.fp[0] == again.fp[0] && g.fp[1] == again.fp[1]);
    djn_buf_release(&again.nodes);
    djn_rec_destroy(&r);
}

/* ------------------------------------------------------------------ abort */

/* Everything observable about a recorder, for before/after comparisons. */
typedef struct {
    bool empty;
    uint32_t nnodes, nuploads, nsrg;
    uint64_t upload_bytes;
    djn_buf_t graph; /* the sealed fragment, encoded */
    djn_srg_node_t srg[64];
} snap_t;

static void snap_take(djn_rec_t *r, snap_t *s) {
    memset(s, 0, sizeof *s);
    s->empty = djn_rec_empty(r);
    s->nnodes = djn_rec_nnodes(r);
    s->nuploads = djn_rec_nuploads(r);
    s->upload_bytes = djn_rec_upload_bytes(r);
    CHECK_EQ_INT(seal_bytes(r, NULL, &s->graph, NULL), DJN_OK);
    s->nsrg = djn_rec_srg(r, s->srg, 64, NULL);
}

/* Equal fragments; the SRG compared op by op (the strings are the caller's statics). */
static bool snap_eq(const snap_t *a, const snap_t *b) {
    if (a->empty != b->empty || a->nnodes != b->nnodes || a->nuploads != b->nuploads ||
        a->upload_bytes != b->upload_bytes || a->nsrg != b->nsrg || !buf_eq(&a->graph, &b->graph))
        return false;
    for (uint32_t i = 0; i < a->nsrg && i < 64; i++)
        if (a->srg[i].op != b->srg[i].op || a->srg[i].overload != b->srg[i].overload ||
            a->srg[i].cls != b->srg[i].cls || a->srg[i].phase != b->srg[i].phase ||
            a->srg[i].persistent != b->srg[i].persistent)
            return false;
    return true;
}

static void snap_release(snap_t *s) {
    djn_buf_release(&s->graph);
}

/* Begin a node over new and known handles, write part of it, abort. */
static void rec_aborted_node(djn_rec_t *r, size_t pad) {
    CHECK_EQ_INT(djn_rec_begin(r, "aten::cat", "", 3), DJN_OK);
    djn_tref_t a = tref_vec(1, 4), n1 = tref_vec(50, 4), n2 = tref_vec(51, 4);
    djn_rec_tensor(r, &n1, false);
    djn_rec_tensor(r, &a, false);
    djn_rec_tensor(r, &n2, true);
    if (pad) { /* grow the node buffer past its capacity before the abort */
        char *s = malloc(pad + 1);
        memset(s, 'p', pad);
        s[pad] = '\0';
        djn_enc_cstr(djn_rec_buf(r), s);
        free(s);
    }
    CHECK(djn_rec_names(r, 50));
    djn_rec_abort(r);
    CHECK(!djn_rec_names(r, 50) && !djn_rec_names(r, 51));
    CHECK(djn_rec_names(r, 1));
}

static void test_abort_restores(void) {
    for (size_t pad = 0; pad <= 20000; pad += 20000) {
        djn_rec_t *a = djn_rec_new(64), *b = djn_rec_new(64);
        djn_rec_t *both[2] = {a, b};
        for (int k = 0; k < 2; k++) {
            djn_rec_t *r = both[k];
            CHECK_EQ_INT(djn_rec_alloc(r, 1, 16), DJN_OK);
            CHECK_EQ_INT(djn_rec_alloc(r, 2, 16), DJN_OK);
            CHECK_EQ_INT(rec_binop(r, "aten::add", 1, 2, 3, 1), DJN_OK);
        }
        snap_t before, after;
        snap_take(a, &before);
        rec_aborted_node(a, pad);
        snap_take(a, &after);
        CHECK(snap_eq(&before, &after)); /* exactly as before */
        snap_release(&before);
        snap_release(&after);
        /* A second abort, and an abort outside a node, change nothing either. */
        djn_rec_abort(a);
        for (int k = 0; k < 2; k++)
            CHECK_EQ_INT(rec_binop(both[k], "aten::mul", 3, 1, 4, 2), DJN_OK);
        snap_t sa, sb;
        snap_take(a, &sa);
        snap_take(b, &sb);
        CHECK(snap_eq(&sa, &sb)); /* byte-identical to the recording without the abort */
        CHECK_EQ_INT(sa.nsrg, 2);
        snap_release(&sa);
        snap_release(&sb);
        djn_rec_destroy(&a);
        djn_rec_destroy(&b);
    }
}

/* ------------------------------------------------------------------ bounds and devices */

static void test_full(void) {
    djn_rec_t *r = djn_rec_new(3);
    uint64_t in[1] = {1}, out[1] = {2};
    node_spec_t n = {"aten::neg", in, 1, out, 1, 0, NULL, 4, 0, 0, 0};
    node_spec_t dyn = n;
    dyn.op = "aten::nonzero";
    dyn.flags = DJN_NODE_DYNAMIC;
    djn_rec_state_t st = (djn_rec_state_t)99;
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_OK);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_OK);
    CHECK_EQ_INT(rec_node(r, &dyn, &st), DJN_OK); /* 3rd node, but DYNAMIC */
    CHECK_EQ_INT(st, DJN_REC_OK);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_FULL);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK); /* the owner may still record: FULL again */
    CHECK_EQ_INT(st, DJN_REC_FULL);
    CHECK_EQ_INT(rec_node(r, &dyn, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_OK);
    CHECK_EQ_INT(djn_rec_nnodes(r), 6);
    djn_rec_reset(r);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_OK);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_FULL); /* exactly at max_nodes */
    /* A bound of 0 means 1. */
    djn_rec_set_max_nodes(r, 0);
    djn_rec_reset(r);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_FULL);
    djn_rec_set_max_nodes(r, 10);
    djn_rec_reset(r);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_OK);
    djn_rec_destroy(&r);
    r = djn_rec_new(0);
    CHECK_EQ_INT(rec_node(r, &n, &st), DJN_OK);
    CHECK_EQ_INT(st, DJN_REC_FULL);
    djn_rec_destroy(&r);
}

static void test_use_device(void) {
    djn_rec_t *r = djn_rec_new(64);
    CHECK_EQ_INT(djn_rec_device(r), 0);
    CHECK_EQ_INT(djn_rec_use_device(r, 2), DJN_REC_OK); /* empty: switches */
    CHECK_EQ_INT(djn_rec_device(r), 2);
    CHECK_EQ_INT(rec_binop(r, "aten::add", 1, 2, 3, 0), DJN_OK);
    CHECK_EQ_INT(djn_rec_use_device(r, 3), DJN_REC_OTHER_DEVICE);
    CHECK_EQ_INT(djn_rec_device(r), 2);
    CHECK_EQ_INT(djn_rec_use_device(r, 2), DJN_REC_OK); /* its own device: fine */
    djn_graph_req_t g;
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK_EQ_INT(g.device, 2);
    djn_rec_reset(r);
    CHECK_EQ_INT(djn_rec_device(r), 2); /* a reset keeps the device */
    CHECK_EQ_INT(djn_rec_use_device(r, 3), DJN_REC_OK);
    CHECK_EQ_INT(djn_rec_device(r), 3);
    /* Anything pending pins the device: an alloc, a free, an upload, a seed. */
    for (int what = 0; what < 4; what++) {
        djn_rec_reset(r);
        CHECK_EQ_INT(djn_rec_use_device(r, 0), DJN_REC_OK);
        bool oom = false;
        switch (what) {
        case 0:
            CHECK_EQ_INT(djn_rec_alloc(r, 5, 8), DJN_OK);
            break;
        case 1:
            CHECK(djn_rec_free(r, 5, &oom));
            break;
        case 2:
            CHECK_EQ_INT(djn_rec_upload(r, 5, bytes_of(8, 1), 8, false, 0, 0), DJN_OK);
            break;
        default:
            djn_rec_set_seed(r, 0);
            break;
        }
        CHECK(!oom);
        CHECK(!djn_rec_empty(r));
        CHECK_EQ_INT(djn_rec_use_device(r, 1), DJN_REC_OTHER_DEVICE);
        CHECK_EQ_INT(djn_rec_device(r), 0);
    }
    djn_rec_destroy(&r);
}

/* ------------------------------------------------------------------ storage */

static void test_free(void) {
    djn_rec_t *r = djn_rec_new(64);
    bool oom = true;
    /* Declared here, never named nor uploaded: the server never hears of it. */
    CHECK_EQ_INT(djn_rec_alloc(r, 1, 16), DJN_OK);
    CHECK(!djn_rec_free(r, 1, &oom));
    CHECK(!oom);
    CHECK(djn_rec_empty(r)); /* the declaration went with it */
    /* Declared and named; declared and uploaded; declared earlier (another fragment). */
    CHECK_EQ_INT(djn_rec_alloc(r, 2, 16), DJN_OK);
    CHECK_EQ_INT(djn_rec_alloc(r, 3, 16), DJN_OK);
    CHECK_EQ_INT(djn_rec_alloc(r, 5, 16), DJN_OK);
    CHECK_EQ_INT(rec_binop(r, "aten::add", 2, 2, 6, 0), DJN_OK);
    CHECK_EQ_INT(djn_rec_upload(r, 3, bytes_of(16, 3), 16, false, 0, 0), DJN_OK);
    CHECK(djn_rec_free(r, 2, &oom) && !oom);
    CHECK(djn_rec_free(r, 3, &oom) && !oom);
    CHECK(djn_rec_free(r, 4, &oom) && !oom);
    CHECK(djn_rec_free(r, 6, &oom) && !oom); /* a node's output */
    /* Named only by an aborted node: not named after all. */
    CHECK_EQ_INT(djn_rec_begin(r, "aten::neg", "", 1), DJN_OK);
    djn_tref_t t = tref_vec(5, 4);
    djn_rec_tensor(r, &t, false);
    djn_rec_abort(r);
    CHECK(!djn_rec_free(r, 5, &oom) && !oom);
    djn_graph_req_t g;
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK_EQ_INT(g.nfrees, 4);
    if (g.nfrees == 4)
        CHECK(g.frees[0] == 2 && g.frees[1] == 3 && g.frees[2] == 4 && g.frees[3] == 6);
    CHECK_EQ_INT(g.nallocs, 2); /* 2 and 3; 1 and 5 left with their frees */
    bool has2 = false, has3 = false;
    for (uint32_t i = 0; i < g.nallocs; i++) {
        has2 |= g.allocs[i].handle == 2 && g.allocs[i].nbytes == 16;
        has3 |= g.allocs[i].handle == 3 && g.allocs[i].nbytes == 16;
    }
    CHECK(has2 && has3);
    djn_rec_destroy(&r);
}

static void test_uploads(void) {
    djn_rec_t *r = djn_rec_new(64);
    CHECK_EQ_INT(djn_rec_alloc(r, 1, 64), DJN_OK);
    CHECK_EQ_INT(djn_rec_alloc(r, 2, 32), DJN_OK);
    CHECK_EQ_INT(djn_rec_upload(r, 1, bytes_of(64, 0xa1), 64, true, 11, 12), DJN_OK);
    CHECK_EQ_INT(djn_rec_upload(r, 2, bytes_of(32, 0xa2), 32, false, 0, 0), DJN_OK);
    CHECK_EQ_INT(djn_rec_upload(r, 3, bytes_of(16, 0xa3), 16, true, 31, 32), DJN_OK);
    CHECK_EQ_INT(djn_rec_nuploads(r), 3);
    CHECK_EQ_INT(djn_rec_upload_bytes(r), 112);
    /* The text items, for a HAVE offer; the count is the total whatever the cap. */
    CHECK_EQ_INT(djn_rec_text_items(r, NULL, 0), 2);
    djn_have_item_t items[3];
    memset(items, 0x5a, sizeof items);
    CHECK_EQ_INT(djn_rec_text_items(r, items, 1), 2);
    CHECK(items[0].handle == 1 && items[0].hi == 11 && items[0].lo == 12 && items[0].nbytes == 64);
    CHECK(items[1].handle == 0x5a5a5a5a5a5a5a5aull); /* past the cap: untouched */
    CHECK_EQ_INT(djn_rec_text_items(r, items, 3), 2);
    CHECK(items[1].handle == 3 && items[1].hi == 31 && items[1].lo == 32 && items[1].nbytes == 16);
    /* The server held 1's content: its upload and its declaration go. */
    djn_rec_drop_upload(r, 1);
    djn_rec_drop_upload(r, 77); /* not staged: no-op */
    CHECK_EQ_INT(djn_rec_nuploads(r), 2);
    CHECK_EQ_INT(djn_rec_upload_bytes(r), 48);
    CHECK_EQ_INT(djn_rec_text_items(r, items, 3), 1);
    CHECK(items[0].handle == 3);
    djn_graph_req_t g;
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK_EQ_INT(g.nallocs, 1);
    if (g.nallocs == 1)
        CHECK(g.allocs[0].handle == 2 && g.allocs[0].nbytes == 32);
    CHECK_EQ_INT(g.nuploads, 2);
    if (g.nuploads == 2) {
        CHECK(g.uploads[0].handle == 2 && g.uploads[0].frame == 1 && !g.uploads[0].text);
        CHECK(g.uploads[1].handle == 3 && g.uploads[1].frame == 2 && g.uploads[1].text);
    }
    /* The bytes are handed over one by one, in frame order. */
    uint64_t n = 0;
    uint8_t *p = djn_rec_take_upload(r, 0, &n);
    CHECK(p && n == 32 && p[0] == 0xa2 && p[31] == 0xa2);
    djn_free(p, n);
    p = djn_rec_take_upload(r, 0, &n); /* taken already */
    CHECK(p == NULL && n == 0);
    /* Upload 1 (3's bytes) is not taken: reset frees it. */
    djn_rec_reset(r);
    CHECK_EQ_INT(djn_rec_nuploads(r), 0);
    CHECK_EQ_INT(djn_rec_upload_bytes(r), 0);
    CHECK(djn_rec_empty(r));
    /* Staged bytes left at destroy are freed too. */
    CHECK_EQ_INT(djn_rec_upload(r, 9, bytes_of(100, 1), 100, true, 1, 2), DJN_OK);
    djn_rec_destroy(&r);
}

static void test_seed(void) {
    djn_rec_t *r = djn_rec_new(64);
    djn_graph_req_t g;
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK_EQ_INT(g.seed, -1);
    djn_rec_set_seed(r, 0);
    CHECK(!djn_rec_empty(r));
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK_EQ_INT(g.seed, 0);
    djn_rec_reset(r);
    CHECK(djn_rec_empty(r));
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK_EQ_INT(g.seed, -1);
    djn_rec_destroy(&r);
}

/* ------------------------------------------------------------------ sealing */

/* The sealed fragment is a GRAPH the decoder accepts, with the nodes the typed node
 * encoder would write for the same calls, byte for byte. */
static void test_seal_roundtrip(void) {
    djn_rec_t *r = djn_rec_new(64);
    CHECK_EQ_INT(djn_rec_use_device(r, 1), DJN_REC_OK);
    djn_rec_set_seed(r, 42);
    CHECK_EQ_INT(djn_rec_alloc(r, 10, 16), DJN_OK);
    CHECK_EQ_INT(djn_rec_alloc(r, 11, 16), DJN_OK);
    CHECK_EQ_INT(djn_rec_upload(r, 10, bytes_of(16, 1), 16, true, 5, 6), DJN_OK);
    CHECK_EQ_INT(djn_rec_upload(r, 11, bytes_of(16, 2), 16, false, 0, 0), DJN_OK);
    /* add.out(t10, t11, alpha 1.5) -> [t12] */
    CHECK_EQ_INT(djn_rec_begin(r, "aten::add", "out", 3), DJN_OK);
    djn_tref_t t10 = tref_vec(10, 4), t11 = tref_vec(11, 4), t12 = tref_vec(12, 4);
    djn_rec_tensor(r, &t10, false);
    djn_rec_tensor(r, &t11, false);
    djn_enc_float(djn_rec_buf(r), 1.5);
    djn_rec_outs(r, 1);
    djn_rec_tensor(r, &t12, true);
    djn_rec_state_t state;
    CHECK_EQ_INT(djn_rec_end(r, 0, DJN_CLASS_COMPUTE, DJN_PHASE_PREFILL, &state), DJN_OK);
    /* cat([t12, t10], 0) -> [t13] */
    CHECK_EQ_INT(djn_rec_begin(r, "aten::cat", "", 2), DJN_OK);
    djn_enc_array(djn_rec_buf(r), 2);
    djn_rec_tensor(r, &t12, false);
    djn_rec_tensor(r, &t10, false);
    djn_enc_int(djn_rec_buf(r), 0);
    djn_rec_outs(r, 1);
    djn_tref_t t13 = tref_vec(13, 8);
    djn_rec_tensor(r, &t13, true);
    CHECK_EQ_INT(djn_rec_end(r, 0, DJN_CLASS_MEMORY, DJN_PHASE_PREFILL, &state), DJN_OK);
    /* nonzero(t13) -> [nil], DYNAMIC */
    CHECK_EQ_INT(djn_rec_begin(r, "aten::nonzero", "", 1), DJN_OK);
    djn_rec_tensor(r, &t13, false);
    djn_rec_outs(r, 1);
    djn_enc_nil(djn_rec_buf(r));
    CHECK_EQ_INT(djn_rec_end(r, DJN_NODE_DYNAMIC, DJN_CLASS_COMPUTE, DJN_PHASE_DECODE, &state),
                 DJN_OK);
    bool oom;
    CHECK(djn_rec_free(r, 11, &oom));
    djn_fetch_t fetch = {12, 4, 8};
    djn_buf_t b = {0};
    djn_graph_req_t g;
    CHECK_EQ_INT(seal_bytes(r, &fetch, &b, &g), DJN_OK);
    CHECK(!b.failed);

    /* The same nodes through the typed encoder, with slots 0..3 for handles 10..13. */
    djn_tref_t s0 = tref_vec(0, 4), s1 = tref_vec(1, 4), s2 = tref_vec(2, 4), s3 = tref_vec(3, 8);
    djn_value_t add_args[3] = {{.kind = DJN_V_TENSOR, .u.t = &s0},
                               {.kind = DJN_V_TENSOR, .u.t = &s1},
                               {.kind = DJN_V_FLOAT, .u.f = 1.5}};
    djn_value_t add_outs[1] = {{.kind = DJN_V_TENSOR, .u.t = &s2}};
    djn_value_t cat_list[2] = {{.kind = DJN_V_TENSOR, .u.t = &s2},
                               {.kind = DJN_V_TENSOR, .u.t = &s0}};
    djn_value_t cat_args[2] = {{.kind = DJN_V_LIST, .len = 2, .u.items = cat_list},
                               {.kind = DJN_V_INT, .u.i = 0}};
    djn_value_t cat_outs[1] = {{.kind = DJN_V_TENSOR, .u.t = &s3}};
    djn_value_t nz_args[1] = {{.kind = DJN_V_TENSOR, .u.t = &s3}};
    djn_value_t nz_outs[1] = {{.kind = DJN_V_NONE}};
    djn_node_t want[3] = {
        {"aten::add", "out", 3, 1, add_args, add_outs, 0},
        {"aten::cat", "", 2, 1, cat_args, cat_outs, 0},
        {"aten::nonzero", "", 1, 1, nz_args, nz_outs, DJN_NODE_DYNAMIC},
    };
    djn_buf_t typed = {0};
    for (int i = 0; i < 3; i++)
        djn_node_encode(&typed, &want[i]);
    CHECK_EQ_INT(g.nodes_raw_len, typed.len);
    CHECK(g.nodes_raw_len == typed.len && memcmp(g.nodes_raw, typed.data, typed.len) == 0);
    djn_buf_release(&typed);

    djn_msg_t *m = decode_sealed(&b, 2);
    CHECK(m != NULL);
    if (m) {
        const djn_graph_req_t *d = &m->u.graph;
        CHECK_EQ_INT(d->device, 1);
        CHECK_EQ_INT(d->seed, 42);
        CHECK_EQ_INT(d->nbinds, 4);
        CHECK_EQ_INT(d->nslots, 4);
        for (uint32_t i = 0; i < 4 && i < d->nbinds; i++)
            CHECK(d->binds[i] == 10 + i);
        CHECK(d->fp[0] == g.fp[0] && d->fp[1] == g.fp[1] && (g.fp[0] || g.fp[1]));
        CHECK_EQ_INT(d->nallocs, 2);
        CHECK_EQ_INT(d->nuploads, 2);
        if (d->nuploads == 2) {
            CHECK(d->uploads[0].handle == 10 && d->uploads[0].frame == 1 && d->uploads[0].text);
            CHECK(d->uploads[1].handle == 11 && d->uploads[1].frame == 2 && !d->uploads[1].text);
        }
        CHECK(d->nfrees == 1 && d->frees[0] == 11);
        CHECK(d->nfetches == 1 && d->fetches[0].handle == 12 && d->fetches[0].offset == 4 &&
              d->fetches[0].nbytes == 8);
        CHECK_EQ_INT(d->nnodes, 3);
        if (d->nnodes == 3) {
            CHECK_STR(d->nodes[0].op, "aten::add");
            CHECK_STR(d->nodes[0].overload, "out");
            CHECK(d->nodes[0].args[2].kind == DJN_V_FLOAT && d->nodes[0].args[2].u.f == 1.5);
            CHECK(d->nodes[1].args[0].kind == DJN_V_LIST && d->nodes[1].args[0].len == 2);
            CHECK(arg_slot(&d->nodes[1].outs[0], 3) && d->nodes[1].outs[0].u.t->sizes[0] == 8);
            CHECK_EQ_INT(d->nodes[2].flags, DJN_NODE_DYNAMIC);
            CHECK(d->nodes[2].outs[0].kind == DJN_V_NONE);
        }
    }
    djn_msg_free(&m);
    /* As GRAPH_CACHED: everything but the nodes. */
    djn_msg_hdr_t h = {DJN_MSG_GRAPH_CACHED, 1, 2};
    djn_buf_reset(&b);
    djn_graph_req_encode(&b, &h, &g);
    m = decode_sealed(&b, 2);
    CHECK(m && m->u.graph.nnodes == 0 && m->u.graph.nbinds == 4 && m->u.graph.fp[0] == g.fp[0]);
    djn_msg_free(&m);
    djn_buf_release(&b);
    djn_rec_destroy(&r);
}

/* Lifecycles: a node is persistent iff one of its outputs is not freed by the fragment. */
static void test_lifecycles(void) {
    djn_rec_t *r = djn_rec_new(64);
    djn_srg_node_t srg[8];
    uint64_t fp[2] = {1, 1};
    CHECK_EQ_INT(djn_rec_srg(r, srg, 8, fp), 0); /* nothing sealed yet */
    CHECK(fp[0] == 0 && fp[1] == 0);
    static const uint64_t x[1] = {1}, o10[1] = {10}, o11_12[2] = {11, 12}, o13[1] = {13};
    node_spec_t nodes[5] = {
        {"a.out10", x, 1, o10, 1, 0, NULL, 4, 0, DJN_CLASS_COMPUTE, DJN_PHASE_PREFILL},
        {"b.out11_12", x, 1, o11_12, 2, 0, NULL, 4, 0, DJN_CLASS_MEMORY, DJN_PHASE_DECODE},
        {"c.noout", x, 1, NULL, 0, 0, NULL, 4, 0, DJN_CLASS_COMPUTE, DJN_PHASE_NONE},
        {"d.out13", x, 1, o13, 1, 0, NULL, 4, 0, DJN_CLASS_COMPUTE, DJN_PHASE_DECODE},
        {"e.inplace10", NULL, 0, NULL, 0, 0, NULL, 4, 0, DJN_CLASS_MEMORY, DJN_PHASE_NONE},
    };
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(rec_node(r, &nodes[i], NULL), DJN_OK);
    /* e: an in-place op that writes its argument 10 */
    CHECK_EQ_INT(djn_rec_begin(r, nodes[4].op, "", 1), DJN_OK);
    djn_tref_t t10 = tref_vec(10, 4);
    djn_rec_tensor(r, &t10, true);
    djn_rec_outs(r, 0);
    djn_rec_state_t st;
    CHECK_EQ_INT(djn_rec_end(r, 0, nodes[4].cls, nodes[4].phase, &st), DJN_OK);
    bool oom;
    CHECK(djn_rec_free(r, 10, &oom));
    CHECK(djn_rec_free(r, 11, &oom));
    djn_graph_req_t g;
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK_EQ_INT(djn_rec_srg(r, srg, 8, fp), 5);
    static const bool persistent[5] = {false, true, false, true, false};
    for (int i = 0; i < 5; i++) {
        CHECK(srg[i].op == nodes[i].op); /* the capturing layer's own string */
        CHECK_STR(srg[i].overload, "");
        CHECK_EQ_INT(srg[i].cls, nodes[i].cls);
        CHECK_EQ_INT(srg[i].phase, nodes[i].phase);
        CHECK_EQ_INT(srg[i].persistent, persistent[i]);
    }
    CHECK(fp[0] == g.fp[0] && fp[1] == g.fp[1]);
    /* A small cap: the count is still 5, and only cap nodes are written. */
    djn_srg_node_t two[3];
    memset(two, 0, sizeof two);
    CHECK_EQ_INT(djn_rec_srg(r, two, 2, NULL), 5);
    CHECK(two[1].op == nodes[1].op && two[2].op == NULL);
    /* The SRG stays that of the last sealed fragment across a reset and new nodes. */
    djn_rec_reset(r);
    CHECK_EQ_INT(rec_node(r, &nodes[0], NULL), DJN_OK);
    CHECK_EQ_INT(djn_rec_srg(r, srg, 8, NULL), 5);
    CHECK_EQ_INT(djn_rec_seal(r, NULL, &g), DJN_OK);
    CHECK_EQ_INT(djn_rec_srg(r, srg, 8, NULL), 1);
    CHECK(srg[0].persistent); /* 10 is not freed in this fragment */
    djn_rec_destroy(&r);
}

/* ------------------------------------------------------------------ fault injection */

/* The recording the fault test replays: a seed, 40 allocations (the allocation table
 * grows), 35 nodes with 2 new handles each (the slot table and binds grow; node 5 carries
 * a 5000-byte string, so the node buffer grows), text and plain uploads, frees of every
 * kind, a dropped upload. */
enum { OP_SEED, OP_ALLOC, OP_NODE, OP_UPLOAD, OP_FREE, OP_DROP };
typedef struct {
    int kind;
    uint64_t h, n;
    bool text;
} op_t;

#define SCRIPT_MAX 128
static char s_big[5001];

static uint32_t script_build(op_t *ops) {
    uint32_t k = 0;
    ops[k++] = (op_t){OP_SEED, 7, 0, false};
    for (uint64_t h = 1; h <= 40; h++)
        ops[k++] = (op_t){OP_ALLOC, h, 16 * h, false};
    for (uint64_t i = 0; i < 35; i++)
        ops[k++] = (op_t){OP_NODE, i, 0, false};
    ops[k++] = (op_t){OP_UPLOAD, 1, 64, true};
    ops[k++] = (op_t){OP_UPLOAD, 2, 32, false};
    ops[k++] = (op_t){OP_UPLOAD, 300, 16, true};
    ops[k++] = (op_t){OP_FREE, 200, 0, false}; /* node 0's only output: node 0 ephemeral */
    ops[k++] = (op_t){OP_FREE, 3, 0, false};   /* declared and named */
    ops[k++] = (op_t){OP_FREE, 40, 0, false};  /* declared, unnamed: nothing to send */
    ops[k++] = (op_t){OP_FREE, 1, 0, false};   /* uploaded */
    ops[k++] = (op_t){OP_FREE, 999, 0, false}; /* from an earlier fragment */
    ops[k++] = (op_t){OP_DROP, 1, 0, false};
    return k;
}

/* Run one operation; false when it reported an allocation failure. */
static bool script_run(djn_rec_t *r, const op_t *o) {
    switch (o->kind) {
    case OP_SEED:
        djn_rec_set_seed(r, (int64_t)o->h);
        return true;
    case OP_ALLOC:
        return djn_rec_alloc(r, o->h, o->n) == DJN_OK;
    case OP_NODE: {
        uint64_t in[2] = {1 + o->h % 40, 100 + o->h}, out[1] = {200 + o->h};
        node_spec_t n = {"aten::add",
                         in,
                         2,
                         out,
                         1,
                         (int64_t)o->h,
                         o->h == 5 ? s_big : NULL,
                         4,
                         0,
                         DJN_CLASS_COMPUTE,
                         DJN_PHASE_NONE};
        return rec_node(r, &n, NULL) == DJN_OK;
    }
    case OP_UPLOAD: {
        uint8_t *bytes = bytes_of(o->n, (uint8_t)o->h);
        if (!bytes)
            return false; /* the caller's own allocation met the failure */
        return djn_rec_upload(r, o->h, bytes, o->n, o->text, o->h * 3, o->h * 5) == DJN_OK;
    }
    case OP_FREE: {
        bool oom = false;
        djn_rec_free(r, o->h, &oom);
        return !oom;
    }
    default:
        djn_rec_drop_upload(r, o->h);
        return true;
    }
}

static void test_fault_injection(void) {
    memset(s_big, 'b', 5000);
    op_t ops[SCRIPT_MAX];
    uint32_t nops = script_build(ops);
    int64_t mem0 = djn_mem_in_use();
    int failed_kind[OP_DROP + 1] = {0};
    int64_t n = 0;
    int clean_runs = 0;
    for (; n < 400 && clean_runs < 3; n++) {
        djn_rec_t *r = djn_rec_new(1000), *ref = djn_rec_new(1000);
        bool ok[SCRIPT_MAX];
        int failures = 0;
        djn_mem_fail_after(n);
        for (uint32_t i = 0; i < nops; i++) {
            ok[i] = script_run(r, &ops[i]);
            if (!ok[i]) {
                failures++;
                failed_kind[ops[i].kind]++;
            }
        }
        djn_mem_fail_after(-1);
        /* The failure is one-shot: exactly one call meets it while the script still
         * allocates; afterwards none does. */
        CHECK(failures <= 1);
        if (failures == 0)
            clean_runs++;
        else
            CHECK_EQ_INT(clean_runs, 0);
        /* The reference recorder ran only the calls that succeeded. */
        for (uint32_t i = 0; i < nops; i++)
            if (ok[i])
                CHECK(script_run(ref, &ops[i]));
        snap_t a, b;
        snap_take(r, &a);
        snap_take(ref, &b);
        bool same = snap_eq(&a, &b);
        if (!same)
            printf("fail_after(%lld): the recorder differs from the reference\n", (long long)n);
        CHECK(same);
        CHECK(a.nnodes >= 34); /* at most one node was lost */
        snap_release(&a);
        snap_release(&b);
        /* Still usable: the next fragment records and seals the same on both. */
        djn_rec_reset(r);
        djn_rec_reset(ref);
        CHECK_EQ_INT(rec_binop(r, "aten::mul", 1, 2, 3, 4), DJN_OK);
        CHECK_EQ_INT(rec_binop(ref, "aten::mul", 1, 2, 3, 4), DJN_OK);
        snap_take(r, &a);
        snap_take(ref, &b);
        CHECK(snap_eq(&a, &b));
        snap_release(&a);
        snap_release(&b);
        djn_rec_destroy(&r);
        djn_rec_destroy(&ref);
        CHECK_EQ_INT(djn_mem_in_use(), mem0);
    }
    CHECK_EQ_INT(clean_runs, 3);
    CHECK(n > 10); /* the script allocates many times */
    CHECK(failed_kind[OP_ALLOC] > 0);
    CHECK(failed_kind[OP_NODE] >= 3); /* SRG, binds, slot table, node buffer */
    CHECK(failed_kind[OP_UPLOAD] > 0);
    CHECK(failed_kind[OP_FREE] > 0);
}

/* Sealing under allocation failure: DJN_ERR_NOMEM with the recorder unchanged (sealing
 * again gives the reference fragment), or success with the reference fragment. On
 * success the SRG may mark a node persistent that is not: the set of freed handles is
 * built best effort (djn_rec_seal's own comment), so an allocation failure there can only
 * turn "ephemeral" into "persistent", never the reverse, and never touches the bytes. */
static void test_seal_fault_injection(void) {
    memset(s_big, 'b', 5000);
    op_t ops[SCRIPT_MAX];
    uint32_t nops = script_build(ops);
    int nomem = 0, degraded = 0;
    djn_rec_t *ref = djn_rec_new(1000);
    for (uint32_t i = 0; i < nops; i++)
        CHECK(script_run(ref, &ops[i]));
    snap_t want;
    snap_take(ref, &want);
    CHECK(want.nsrg == 35 && !want.srg[0].persistent && want.srg[1].persistent);
    djn_graph_req_t wg;
    CHECK_EQ_INT(djn_rec_seal(ref, NULL, &wg), DJN_OK);
    CHECK_EQ_INT(wg.life_kept + wg.life_transient, 35);
    CHECK(wg.life_transient > 0);
    for (int64_t n = 0; n < 12; n++) {
        djn_rec_t *r = djn_rec_new(1000);
        for (uint32_t i = 0; i < nops; i++)
            CHECK(script_run(r, &ops[i]));
        djn_graph_req_t g;
        djn_mem_fail_after(n);
        djn_status_t st = djn_rec_seal(r, NULL, &g);
        djn_mem_fail_after(-1);
        CHECK(st == DJN_OK || st == DJN_ERR_NOMEM);
        if (st == DJN_OK) {
            /* the lifecycle summary follows the SRG: degraded, kept only grows */
            CHECK_EQ_INT(g.life_kept + g.life_transient, wg.life_kept + wg.life_transient);
            CHECK(g.life_kept >= wg.life_kept);
            g.life_kept = wg.life_kept;
            g.life_transient = wg.life_transient;
            djn_buf_t b = {0};
            djn_msg_hdr_t h = {DJN_MSG_GRAPH, 1, 1};
            djn_graph_req_encode(&b, &h, &g);
            CHECK(buf_eq(&b, &want.graph));
            djn_buf_release(&b);
            djn_srg_node_t srg[64];
            CHECK_EQ_INT(djn_rec_srg(r, srg, 64, NULL), want.nsrg);
            bool flipped = false;
            for (uint32_t i = 0; i < want.nsrg && i < 64; i++) {
                CHECK(srg[i].op == want.srg[i].op);
                CHECK(srg[i].persistent || !want.srg[i].persistent);
                flipped |= srg[i].persistent != want.srg[i].persistent;
            }
            degraded += flipped;
        } else {
            nomem++;
        }
        snap_t got; /* a fresh seal without faults: exactly the reference */
        snap_take(r, &got);
        CHECK(snap_eq(&got, &want));
        snap_release(&got);
        djn_rec_destroy(&r);
    }
    CHECK(nomem >= 2);    /* the sealed allocations and uploads */
    CHECK(degraded <= 2); /* the two arrays of the freed-set's first growth */
    snap_release(&want);
    djn_rec_destroy(&ref);
}

static void test_new_fault_injection(void) {
    int64_t mem0 = djn_mem_in_use();
    djn_mem_fail_after(0);
    djn_rec_t *r = djn_rec_new(8);
    djn_mem_fail_after(-1);
    CHECK(r == NULL);
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
    /* djn_rec_upload takes the bytes also when it fails. */
    r = djn_rec_new(8);
    uint8_t *bytes = bytes_of(1000, 1);
    djn_mem_fail_after(0);
    CHECK_EQ_INT(djn_rec_upload(r, 5, bytes, 1000, false, 0, 0), DJN_ERR_NOMEM);
    djn_mem_fail_after(-1);
    CHECK_EQ_INT(djn_rec_nuploads(r), 0);
    CHECK_EQ_INT(djn_rec_upload_bytes(r), 0);
    djn_rec_destroy(&r);
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
}

int main(void) {
    RUN(test_slots_first_use);
    RUN(test_written);
    RUN(test_fingerprint);
    RUN(test_abort_restores);
    RUN(test_full);
    RUN(test_use_device);
    RUN(test_free);
    RUN(test_uploads);
    RUN(test_seed);
    RUN(test_seal_roundtrip);
    RUN(test_lifecycles);
    RUN(test_fault_injection);
    RUN(test_seal_fault_injection);
    RUN(test_new_fault_injection);
    return djn_test_report();
}
