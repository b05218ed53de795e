/* djn_rec.c: the fragment recorder (see djn_rec.h).
 *
 * A node is encoded straight into `nodes` as it is captured:
 *   1. begin writes [op, overload, [ and remembers where the node started, how many
 *      slots and SRG outputs existed, so abort can put everything back;
 *   2. the caller encodes the arguments (scalars directly, tensors through
 *      djn_rec_tensor, which maps each handle to a slot, appending to binds on first use);
 *   3. outs, then the outputs the same way; end writes the flags, folds the node's bytes
 *      into the fingerprint and counts it.
 * Sealing (before a send) marks each node persistent if one of its outputs is still
 * held by the client (its handle is not among the frees), else ephemeral, and keeps that
 * SRG for djinn.srg.snapshot(). It also scans the encoded nodes once (djn_sym_scan): the
 * fingerprint is that of their skeleton (structure without integers) and the integers
 * are kept for the client's template patches; allocs and frees are sorted by handle, so
 * that the same step recorded again lines up with its template handle by handle.
 *
 * Invariants: binds[slots[h] - 1] == h for every slotted handle; a handle is in `allocs`
 * from djn_rec_alloc until the fragment is reset or its upload is dropped after a HAVE;
 * `nodes` holds exactly nnodes complete nodes outside begin..end. */
#include "djn_rec.h"

#include <stdlib.h>
#include <xxhash.h>

#include "djn_map.h"
#include "djn_mem.h"
#include "djn_sym.h"
#include "djn_vec.h"

typedef struct {
    uint64_t handle;
    uint8_t *bytes;
    uint64_t n;
    bool text;
    uint64_t hi, lo; /* XXH3-128 of the bytes */
} s_upload_t;

typedef struct {
    const char *op, *ovl;
    uint8_t cls, phase, persistent;
    uint32_t out_begin, out_end; /* range in srg_outs of the node's written handles */
} s_srg_t;

struct djn_rec {
    uint32_t max_nodes;
    int dev;
    int64_t seed; /* >= 0: reseed the session's generator first */

    djn_buf_t nodes;
    uint32_t nnodes;

    djn_map_t slots;  /* handle -> slot + 1 */
    djn_vec_t binds;  /* uint64_t handle by slot */
    djn_map_t allocs; /* handle -> nbytes: declared in this fragment */
    djn_vec_t frees;  /* uint64_t */
    djn_vec_t ups;    /* s_upload_t */
    uint64_t up_bytes;
    djn_vec_t srg, srg_outs; /* s_srg_t, uint64_t */

    /* the node being recorded */
    bool in_node, failed;
    size_t node_start;
    size_t binds_start, outs_start;

    /* the last sealed fragment */
    djn_vec_t last_srg;
    uint64_t last_fp[2];
    djn_vec_t sealed_allocs; /* djn_alloc_t, for the GRAPH */
    djn_vec_t sealed_ups;    /* djn_upload_t */
    djn_vec_t ints;          /* int64_t: the integers of its nodes (djn_sym.h) */
    bool ints_ok;            /* false: the scan failed, fp is the bytes' hash */
    djn_buf_t skel;          /* scratch for the scan */
};

djn_rec_t *djn_rec_new(uint32_t max_nodes) {
    djn_rec_t *r = djn_calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->max_nodes = max_nodes ? max_nodes : 1;
    r->seed = -1;
    r->binds = DJN_VEC(uint64_t);
    r->frees = DJN_VEC(uint64_t);
    r->ups = DJN_VEC(s_upload_t);
    r->srg = DJN_VEC(s_srg_t);
    r->srg_outs = DJN_VEC(uint64_t);
    r->last_srg = DJN_VEC(s_srg_t);
    r->sealed_allocs = DJN_VEC(djn_alloc_t);
    r->sealed_ups = DJN_VEC(djn_upload_t);
    r->ints = DJN_VEC(int64_t);
    return r;
}

void djn_rec_set_max_nodes(djn_rec_t *r, uint32_t max_nodes) {
    r->max_nodes = max_nodes ? max_nodes : 1;
}

static void s_free_uploads(djn_rec_t *r) {
    for (size_t i = 0; i < r->ups.len; i++) {
        s_upload_t *u = &DJN_VEC_AT(&r->ups, s_upload_t, i);
        djn_free(u->bytes, u->n);
    }
    r->ups.len = 0;
    r->up_bytes = 0;
}

void djn_rec_destroy(djn_rec_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_rec_t *r = *self_p;
    s_free_uploads(r);
    djn_buf_release(&r->nodes);
    djn_buf_release(&r->skel);
    djn_vec_release(&r->ints);
    djn_map_release(&r->slots);
    djn_map_release(&r->allocs);
    djn_vec_release(&r->binds);
    djn_vec_release(&r->frees);
    djn_vec_release(&r->ups);
    djn_vec_release(&r->srg);
    djn_vec_release(&r->srg_outs);
    djn_vec_release(&r->last_srg);
    djn_vec_release(&r->sealed_allocs);
    djn_vec_release(&r->sealed_ups);
    djn_free(r, sizeof(*r));
    *self_p = NULL;
}

bool djn_rec_empty(const djn_rec_t *r) {
    return !r->nnodes && !r->allocs.len && !r->frees.len && !r->ups.len && r->seed < 0;
}
uint32_t djn_rec_nnodes(const djn_rec_t *r) {
    return r->nnodes;
}
int djn_rec_device(const djn_rec_t *r) {
    return r->dev;
}

djn_rec_state_t djn_rec_use_device(djn_rec_t *r, int device) {
    if (device == r->dev)
        return DJN_REC_OK;
    if (!djn_rec_empty(r))
        return DJN_REC_OTHER_DEVICE;
    r->dev = device;
    return DJN_REC_OK;
}

/* ------------------------------------------------------------------ one node */

djn_status_t djn_rec_begin(djn_rec_t *r, const char *op, const char *overload, uint32_t nargs) {
    r->in_node = true;
    r->failed = false;
    r->node_start = r->nodes.len;
    r->binds_start = r->binds.len;
    r->outs_start = r->srg_outs.len;
    s_srg_t s = {op, overload, 0, 0, 0, (uint32_t)r->srg_outs.len, (uint32_t)r->srg_outs.len};
    if (!djn_vec_push(&r->srg, &s)) {
        r->in_node = false;
        return DJN_ERR_NOMEM;
    }
    djn_node_enc_begin(&r->nodes, op, overload, nargs);
    return DJN_OK;
}

djn_buf_t *djn_rec_buf(djn_rec_t *r) {
    return &r->nodes;
}

static uint64_t s_slot(djn_rec_t *r, uint64_t handle) {
    uint64_t s;
    if (djn_map_get(&r->slots, handle, &s))
        return s - 1;
    s = r->binds.len;
    if (!djn_vec_push(&r->binds, &handle) || !djn_map_put(&r->slots, handle, s + 1)) {
        r->failed = true;
        return 0;
    }
    return s;
}

void djn_rec_tensor(djn_rec_t *r, const djn_tref_t *t, bool written) {
    djn_tref_t ref = *t;
    ref.handle = s_slot(r, t->handle);
    djn_enc_tref(&r->nodes, &ref);
    if (written && !djn_vec_push(&r->srg_outs, &t->handle))
        r->failed = true;
}

void djn_rec_outs(djn_rec_t *r, uint32_t nouts) {
    djn_node_enc_outs(&r->nodes, nouts);
}

const uint64_t *djn_rec_written(const djn_rec_t *r, uint32_t *n) {
    *n = (uint32_t)(r->srg_outs.len - r->outs_start);
    return (const uint64_t *)r->srg_outs.data + r->outs_start;
}

void djn_rec_abort(djn_rec_t *r) {
    if (!r->in_node)
        return;
    for (size_t i = r->binds_start; i < r->binds.len; i++)
        djn_map_del(&r->slots, DJN_VEC_AT(&r->binds, uint64_t, i), NULL);
    r->binds.len = r->binds_start;
    r->srg_outs.len = r->outs_start;
    r->srg.len--;
    r->nodes.len = r->node_start;
    r->nodes.failed = false;
    r->in_node = false;
    r->failed = false;
}

djn_status_t djn_rec_end(djn_rec_t *r, uint32_t flags, djn_op_class_t cls, djn_phase_t phase,
                         djn_rec_state_t *state) {
    *state = DJN_REC_OK;
    djn_node_enc_end(&r->nodes, flags);
    if (r->nodes.failed || r->failed) {
        djn_rec_abort(r);
        return DJN_ERR_NOMEM;
    }
    s_srg_t *s = &DJN_VEC_AT(&r->srg, s_srg_t, r->srg.len - 1);
    s->cls = (uint8_t)cls;
    s->phase = (uint8_t)phase;
    s->out_end = (uint32_t)r->srg_outs.len;
    r->nnodes++;
    r->in_node = false;
    if (!(flags & DJN_NODE_DYNAMIC) && r->nnodes >= r->max_nodes)
        *state = DJN_REC_FULL;
    return DJN_OK;
}

/* ------------------------------------------------------------------ storage */

djn_status_t djn_rec_alloc(djn_rec_t *r, uint64_t handle, uint64_t nbytes) {
    return djn_map_put(&r->allocs, handle, nbytes) ? DJN_OK : DJN_ERR_NOMEM;
}

bool djn_rec_names(const djn_rec_t *r, uint64_t handle) {
    return djn_map_get(&r->slots, handle, NULL);
}

bool djn_rec_free(djn_rec_t *r, uint64_t handle, bool *oom) {
    *oom = false;
    if (djn_map_get(&r->allocs, handle, NULL) && !djn_rec_names(r, handle)) {
        bool uploaded = false;
        for (size_t i = 0; i < r->ups.len; i++)
            uploaded |= DJN_VEC_AT(&r->ups, s_upload_t, i).handle == handle;
        if (!uploaded) { /* the server never heard of it */
            djn_map_del(&r->allocs, handle, NULL);
            return false;
        }
    }
    if (!djn_vec_push(&r->frees, &handle))
        *oom = true;
    return true;
}

djn_status_t djn_rec_upload(djn_rec_t *r, uint64_t handle, uint8_t *bytes, uint64_t n, bool text,
                            uint64_t hi, uint64_t lo) {
    s_upload_t u = {handle, bytes, n, text, hi, lo};
    if (!djn_vec_push(&r->ups, &u)) {
        djn_free(bytes, n);
        return DJN_ERR_NOMEM;
    }
    r->up_bytes += n;
    return DJN_OK;
}

uint32_t djn_rec_nuploads(const djn_rec_t *r) {
    return (uint32_t)r->ups.len;
}
uint64_t djn_rec_upload_bytes(const djn_rec_t *r) {
    return r->up_bytes;
}

uint32_t djn_rec_text_items(const djn_rec_t *r, djn_have_item_t *items, uint32_t cap) {
    uint32_t k = 0;
    for (size_t i = 0; i < r->ups.len; i++) {
        const s_upload_t *u = &DJN_VEC_AT(&r->ups, s_upload_t, i);
        if (!u->text)
            continue;
        if (k < cap)
            items[k] = (djn_have_item_t){u->handle, u->hi, u->lo, u->n};
        k++;
    }
    return k;
}

void djn_rec_drop_upload(djn_rec_t *r, uint64_t handle) {
    size_t keep = 0;
    for (size_t i = 0; i < r->ups.len; i++) {
        s_upload_t u = DJN_VEC_AT(&r->ups, s_upload_t, i);
        if (u.handle == handle) {
            r->up_bytes -= u.n;
            djn_free(u.bytes, u.n);
            djn_map_del(&r->allocs, handle, NULL); /* the server bound it already */
            continue;
        }
        DJN_VEC_AT(&r->ups, s_upload_t, keep++) = u;
    }
    r->ups.len = keep;
}

void djn_rec_set_seed(djn_rec_t *r, int64_t seed) {
    r->seed = seed;
}

/* ------------------------------------------------------------------ sending */

static int s_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}
static int s_cmp_alloc(const void *a, const void *b) {
    return s_cmp_u64(&((const djn_alloc_t *)a)->handle, &((const djn_alloc_t *)b)->handle);
}

const int64_t *djn_rec_ints(const djn_rec_t *r, uint32_t *n) {
    *n = (uint32_t)r->ints.len;
    return r->ints_ok ? r->ints.data : NULL;
}

djn_status_t djn_rec_seal(djn_rec_t *r, const djn_fetch_t *fetch, djn_graph_req_t *out) {
    memset(out, 0, sizeof(*out)); /* qos 0: the owner sets it */
    bool ok = djn_vec_reserve(&r->sealed_allocs, r->allocs.len) &&
              djn_vec_reserve(&r->sealed_ups, r->ups.len) &&
              (!r->nnodes || djn_vec_reserve(&r->last_srg, r->srg.len));
    if (!ok)
        return DJN_ERR_NOMEM;
    uint64_t fp[2] = {0, 0};
    if (r->nnodes) { /* the fingerprint and integers first: OOM leaves the rest as it was */
        r->ints.len = 0;
        djn_status_t st =
            djn_sym_scan(r->nodes.data, r->nodes.len, r->nnodes, &r->skel, &r->ints, fp);
        if (st == DJN_ERR_NOMEM)
            return st;
        r->ints_ok = st == DJN_OK;
        if (!r->ints_ok) { /* cannot be patched: the hash of the bytes themselves */
            XXH128_hash_t h = XXH3_128bits(r->nodes.data, r->nodes.len);
            fp[0] = h.high64;
            fp[1] = h.low64 ? h.low64 : 1;
        }
    }
    bool decode = false, training = false; /* the fragment's phase: decode > prefill > training */
    if (r->nnodes) { /* the SRG, lifecycles from the frees; kept for djinn.srg */
        djn_map_t freed = {0};
        for (size_t i = 0; i < r->frees.len; i++)
            djn_map_put(&freed, DJN_VEC_AT(&r->frees, uint64_t, i), 1); /* OOM: "persistent" */
        r->last_srg.len = 0;
        for (size_t i = 0; i < r->srg.len; i++) {
            s_srg_t s = DJN_VEC_AT(&r->srg, s_srg_t, i);
            bool persistent = false;
            for (uint32_t j = s.out_begin; j < s.out_end; j++)
                persistent |= !djn_map_get(&freed, DJN_VEC_AT(&r->srg_outs, uint64_t, j), NULL);
            s.persistent = persistent;
            djn_vec_push(&r->last_srg, &s); /* reserved above */
            if (persistent)
                out->life_kept++;
            else
                out->life_transient++;
            if (s.phase == DJN_PHASE_DECODE || (s.phase == DJN_PHASE_PREFILL && !decode))
                out->phase = s.phase;
            decode |= s.phase == DJN_PHASE_DECODE;
            training |= strstr(s.op, "_backward") != NULL;
        }
        if (out->phase == DJN_PHASE_NONE && training)
            out->phase = DJN_PHASE_TRAINING;
        djn_map_release(&freed);
        r->last_fp[0] = fp[0];
        r->last_fp[1] = fp[1];
    }
    r->sealed_allocs.len = 0;
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&r->allocs, &it, &k, &v);) {
        djn_alloc_t a = {k, v};
        djn_vec_push(&r->sealed_allocs, &a);
    }
    if (r->sealed_allocs.len > 1)
        qsort(r->sealed_allocs.data, r->sealed_allocs.len, sizeof(djn_alloc_t), s_cmp_alloc);
    if (r->frees.len > 1)
        qsort(r->frees.data, r->frees.len, sizeof(uint64_t), s_cmp_u64);
    r->sealed_ups.len = 0;
    for (size_t i = 0; i < r->ups.len; i++) {
        const s_upload_t *u = &DJN_VEC_AT(&r->ups, s_upload_t, i);
        djn_upload_t d = {u->handle, (uint32_t)i + 1, u->text, false, 0, 0};
        djn_vec_push(&r->sealed_ups, &d);
    }
    out->device = (uint32_t)r->dev;
    out->seed = r->seed;
    out->nbinds = (uint32_t)r->binds.len;
    out->binds = r->binds.data;
    out->fp[0] = r->nnodes ? r->last_fp[0] : 0;
    out->fp[1] = r->nnodes ? r->last_fp[1] : 0;
    out->nallocs = (uint32_t)r->sealed_allocs.len;
    out->allocs = r->sealed_allocs.data;
    out->nuploads = (uint32_t)r->sealed_ups.len;
    out->uploads = r->sealed_ups.data;
    out->nnodes = r->nnodes;
    out->nodes_raw = r->nodes.data;
    out->nodes_raw_len = r->nodes.len;
    out->nfrees = (uint32_t)r->frees.len;
    out->frees = r->frees.data;
    out->nfetches = fetch ? 1 : 0;
    out->fetches = fetch;
    return DJN_OK;
}

uint8_t *djn_rec_take_upload(djn_rec_t *r, uint32_t i, uint64_t *n) {
    s_upload_t *u = &DJN_VEC_AT(&r->ups, s_upload_t, i);
    uint8_t *b = u->bytes;
    *n = u->n;
    u->bytes = NULL;
    u->n = 0;
    return b;
}

void djn_rec_reset(djn_rec_t *r) {
    djn_buf_reset(&r->nodes);
    r->nnodes = 0;
    djn_map_clear(&r->slots);
    r->binds.len = 0;
    djn_map_clear(&r->allocs);
    r->frees.len = 0;
    s_free_uploads(r);
    r->srg.len = 0;
    r->srg_outs.len = 0;
    r->seed = -1;
    r->in_node = false;
}

uint32_t djn_rec_srg(const djn_rec_t *r, djn_srg_node_t *out, uint32_t cap, uint64_t fp[2]) {
    uint32_t n = (uint32_t)r->last_srg.len;
    for (uint32_t i = 0; i < n && i < cap; i++) {
        const s_srg_t *s = &DJN_VEC_AT(&r->last_srg, s_srg_t, i);
        out[i] = (djn_srg_node_t){s->op, s->ovl, (djn_op_class_t)s->cls, (djn_phase_t)s->phase,
                                  s->persistent};
    }
    if (fp) {
        fp[0] = r->last_fp[0];
        fp[1] = r->last_fp[1];
    }
    return n;
}
