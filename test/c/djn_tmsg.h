/* djn_tmsg.h: message helpers for the C unit tests. Include after djn_test.h.
 *
 * neg_graph: a decoded GRAPH for tests of the plan cache and what hangs off it:
 * aten::neg(slot 0: float32 [4] at offset off) -> [nil], binds [0x1000], on device dev,
 * with fingerprint (fp_hi, fp_lo), from session sid; graph_roundtrip for any other GRAPH.
 * The caller frees the message (djn_msg_free).
 * decode_expect: b decoded as the server does, with the status wanted and, if why is not
 * NULL, the error text wanted; returns the message (NULL on error).
 * decode_under_fault_injection: an encoded message decoded with every allocation failing
 * in turn: each decode succeeds or says DJN_ERR_NOMEM, and leaks nothing. */
#ifndef DJN_TMSG_H
#define DJN_TMSG_H

#include "djn_codec.h"

/* g encoded as session sid's GRAPH and decoded as the server does. */
static inline djn_msg_t *graph_roundtrip(const djn_graph_req_t *g, uint32_t sid) {
    djn_msg_hdr_t h = {DJN_MSG_GRAPH, sid, 1};
    djn_buf_t b = {0};
    djn_graph_req_encode(&b, &h, g);
    djn_msg_t *m = NULL;
    char err[256];
    djn_status_t st = djn_msg_decode(b.data, b.len, 0, &m, NULL, err, sizeof err);
    djn_buf_release(&b);
    CHECK(st == DJN_OK);
    return m;
}

static inline djn_msg_t *neg_graph(uint64_t fp_hi, uint64_t fp_lo, uint32_t dev, int64_t off,
                                   uint32_t sid) {
    djn_tref_t r;
    memset(&r, 0, sizeof r);
    r.handle = 0; /* slot 0 */
    r.offset = off;
    r.dtype = DJN_DTYPE_F32;
    r.ndim = 1;
    r.sizes[0] = 4;
    r.strides[0] = 1;
    djn_value_t arg, out;
    memset(&arg, 0, sizeof arg);
    memset(&out, 0, sizeof out);
    arg.kind = DJN_V_TENSOR;
    arg.u.t = &r;
    out.kind = DJN_V_NONE;
    djn_node_t n = {"aten::neg", "", 1, 1, &arg, &out, 0};
    static const uint64_t binds[1] = {0x1000};
    djn_graph_req_t g;
    memset(&g, 0, sizeof g);
    g.device = dev;
    g.seed = -1;
    g.nbinds = 1;
    g.binds = binds;
    g.fp[0] = fp_hi;
    g.fp[1] = fp_lo;
    g.nnodes = 1;
    g.nodes = &n;
    return graph_roundtrip(&g, sid);
}

static inline djn_msg_t *decode_expect(const djn_buf_t *b, djn_status_t want, const char *why) {
    djn_msg_t *m = NULL;
    char err[256] = "";
    djn_status_t st = djn_msg_decode(b->data, b->len, 0, &m, NULL, err, sizeof err);
    CHECK_EQ_INT(st, want);
    if (why)
        CHECK_STR(err, why);
    return m;
}

static inline void decode_under_fault_injection(const djn_buf_t *b) {
    for (int k = 0; k < 64; k++) {
        djn_mem_fail_after(k);
        djn_msg_t *m = NULL;
        char err[256];
        djn_status_t st = djn_msg_decode(b->data, b->len, 0, &m, NULL, err, sizeof err);
        djn_mem_fail_after(-1);
        CHECK(st == DJN_OK || st == DJN_ERR_NOMEM);
        CHECK((st == DJN_OK) == (m != NULL));
        djn_msg_free(&m);
    }
}

#endif
