/* fuzz_decode.c: libFuzzer target for the message layer (csrc/common/djn_msgs.c).
 *
 * Every input is tried as a request (djn_msg_decode, with 0 and 3 data frames) and as a
 * reply (djn_reply_decode and every typed parser). A request that decodes is encoded
 * again with the typed encoder and must decode to the same message: the encoder and the
 * decoder agree on every layout the fuzzer can reach. Nothing may crash, leak or read
 * out of bounds (ASan, UBSan, LeakSanitizer). Seeds: fuzz/corpus/decode. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "djn_codec.h"
#include "djn_mem.h"

static void s_roundtrip(const djn_msg_t *m, uint32_t nframes) {
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {m->type, m->sid, m->seq};
    switch (m->type) {
    case DJN_MSG_HELLO: djn_hello_req_encode(&b, &h, &m->u.hello); break;
    case DJN_MSG_GRAPH:
    case DJN_MSG_FETCH:
    case DJN_MSG_GRAPH_CACHED: djn_graph_req_encode(&b, &h, &m->u.graph); break;
    case DJN_MSG_HAVE: djn_have_req_encode(&b, &h, &m->u.have); break;
    case DJN_MSG_LOAD_MODEL: djn_load_req_encode(&b, &h, &m->u.load); break;
    default: djn_empty_encode(&b, &h); break;
    }
    if (b.failed) {
        djn_buf_release(&b);
        return;
    }
    djn_msg_t *again = NULL;
    char err[256];
    if (djn_msg_decode(b.data, b.len, nframes, &again, NULL, err, sizeof err) != DJN_OK)
        abort(); /* the encoder wrote something its own decoder refuses */
    if (again->type != m->type || again->sid != m->sid || again->seq != m->seq)
        abort();
    if (m->type == DJN_MSG_GRAPH || m->type == DJN_MSG_FETCH) {
        const djn_graph_req_t *a = &m->u.graph, *z = &again->u.graph;
        if (a->nnodes != z->nnodes || a->nbinds != z->nbinds || a->nallocs != z->nallocs ||
            a->nfetches != z->nfetches || a->nfrees != z->nfrees || a->nslots != z->nslots ||
            a->fp[0] != z->fp[0] || a->fp[1] != z->fp[1] || a->seed != z->seed)
            abort();
        for (uint32_t i = 0; i < a->nnodes; i++)
            if (strcmp(a->nodes[i].op, z->nodes[i].op) || a->nodes[i].nargs != z->nodes[i].nargs)
                abort();
    }
    if (m->type == DJN_MSG_LOAD_MODEL) {
        const djn_load_req_t *a = &m->u.load, *z = &again->u.load;
        if (a->device != z->device || strcmp(a->name, z->name) || a->nbinds != z->nbinds)
            abort();
        for (uint32_t i = 0; i < a->nbinds; i++)
            if (strcmp(a->binds[i].name, z->binds[i].name) ||
                a->binds[i].handle != z->binds[i].handle)
                abort();
    }
    djn_msg_free(&again);
    djn_buf_release(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint32_t frames[] = {0, 3};
    for (int k = 0; k < 2; k++) {
        djn_msg_t *m = NULL;
        char err[256];
        uint64_t seq = 0;
        if (djn_msg_decode(data, size, frames[k], &m, &seq, err, sizeof err) == DJN_OK) {
            s_roundtrip(m, frames[k]);
            djn_msg_free(&m);
        }
    }
    djn_reply_t *r = NULL;
    char err[256];
    if (djn_reply_decode(data, size, &r, err, sizeof err) == DJN_OK) {
        djn_hello_rep_t h;
        djn_graph_rep_t g;
        djn_have_rep_t v;
        djn_stats_rep_t *st = djn_malloc(sizeof(*st));
        djn_hello_rep_parse(r, &h, err, sizeof err);
        if (djn_graph_rep_parse(r, &g, err, sizeof err) == DJN_OK && g.dyn) {
            djn_dyn_tensor_t d;
            djn_dyn_tensor_decode(g.dyn, &d);
            if (g.dyn->kind == DJN_V_LIST)
                for (uint32_t i = 0; i < g.dyn->len; i++)
                    djn_dyn_tensor_decode(&g.dyn->u.items[i], &d);
        }
        djn_have_rep_parse(r, &v, err, sizeof err);
        djn_load_rep_t lr;
        djn_load_rep_parse(r, &lr, err, sizeof err);
        if (st)
            djn_stats_rep_parse(r, st, err, sizeof err);
        djn_free(st, sizeof(*st));
        djn_reply_free(&r);
    }
    return 0;
}
