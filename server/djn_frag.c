/* djn_frag.c: the fragment runtime (see djn_frag.h).
 *
 * A fragment runs in these steps, under its session's lock, in message order. The caller
 * takes the lock before djn_frag_run and releases it once the reply has left: a session's
 * next fragment (on the worker, a lane or nested) can then only run, and answer, after
 * this one's reply is on its way (PROTOCOL.md 7.6: replies in the order sent).
 *   1. declare: each alloc becomes a lazy handle (no memory until first use);
 *   2. uploads: each data frame becomes a storage; Text uploads are hashed by the server
 *      itself and deduplicated against the shared segment;
 *   2b. fit (devices with a VMU): the results the fragment keeps must fit the Data
 *      segment's free bytes, or the fragment is refused before any node runs;
 *   3. plan (devices with a VMU): the intermediates (handles declared and freed by this
 *      message) get slab offsets from their lifetimes over the nodes (djn_plan); a plan
 *      cache hit reuses the cached fragment's plan when its slots are intermediates
 *      again; a plan that does not fit the slab refuses the fragment before any node runs
 *      (also for a nested run, which then runs unplanned: env->nested);
 *   4. nodes, in order, stopping at the first failure; between two nodes, when the
 *      worker says better-class work of another session waits (env->urgent_fn), that
 *      work runs nested (env->yield_fn) with this fragment paused: its session stays
 *      locked, its random state is saved first, and the nested fragments never plan into
 *      or reset the slab (env->nested), so the paused plan's region is untouched; and a
 *      fragment whose session's lease expired meanwhile (its client died) stops there;
 *   5. poison: the outputs of the failed node and of every node after it read as an
 *      error naming the cause, never as zeros or half-written bytes;
 *   6. copy-out: results the client still holds that sit in the slab move to Data;
 *   7. fetches: bytes of the requested handles, bounded by the real storage;
 *   8. frees, always (after a failure too, and after the fetches, so a message may read
 *      a handle it also lets go of);
 *   9. slab reset, once the device finished and nothing references the slab;
 *  10. a successful GRAPH with nodes is filed in the plan cache (before the reply leaves:
 *      the client may send GRAPH_CACHED right after), with its slab plan by slot.
 * Any failure of steps 1-4 stops the later ones except 5, 6, 8, 9. */
#include "djn_frag.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "djn_crash.h"
#include "djn_map.h"
#include "djn_mem.h"
#include "djn_plan.h"
#include "djn_sym.h"
#include "djn_vec.h"

static uint64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* What the executor's callbacks need: the session, and this fragment's placements. */
typedef struct {
    djn_session_t *s;
    djn_exec_t *x;
    const djn_map_t *place; /* handle -> planned slab offset + 1 */
} s_ctx_t;

static djn_status_t s_resolve_fn(void *ctx, uint64_t handle, int write, djn_stor_t **out, char *err,
                                 size_t errlen) {
    s_ctx_t *c = ctx;
    uint64_t off = 0;
    bool planned = c->place && djn_map_get(c->place, handle, &off);
    return djn_session_resolve(c->s, c->x, handle, write, planned ? off - 1 : UINT64_MAX, out, err,
                               errlen);
}

static int s_is_lazy_fn(void *ctx, uint64_t handle) {
    return djn_session_is_lazy(((s_ctx_t *)ctx)->s, handle);
}

static djn_status_t s_bind_fn(void *ctx, uint64_t handle, djn_stor_t *stor) {
    return djn_session_bind(((s_ctx_t *)ctx)->s, handle, stor);
}

static djn_status_t s_written_fn(void *ctx, uint64_t handle, char *err, size_t errlen) {
    return djn_session_recheck(((s_ctx_t *)ctx)->s, handle, err, errlen);
}

static djn_status_t s_new_handle_fn(void *ctx, uint64_t nbytes, uint64_t *out) {
    return djn_session_new_handle(((s_ctx_t *)ctx)->s, nbytes, out);
}

/* The plan cache's entries are charged to the session that filed them; each holds a
 * reference to it until it leaves the cache. */
static bool s_cache_charge_fn(void *ctx, uint64_t bytes) {
    return djn_session_charge_cache(ctx, bytes);
}

static bool s_cache_live_fn(void *ctx) {
    return djn_session_live(ctx);
}

static void s_cache_release_fn(void *ctx, uint64_t bytes) {
    djn_session_t *s = ctx;
    djn_session_uncharge_cache(s, bytes);
    djn_session_release(&s);
}

/* ------------------------------------------------------------------ step 3: plan */

typedef struct {
    djn_map_t index;        /* intermediate handle -> tensor index + 1 */
    djn_map_t eph;          /* handles declared and freed by this message */
    djn_vec_t handle;       /* uint64_t, by tensor index */
    djn_vec_t def;          /* uint32_t: first node naming the tensor */
    djn_vec_t use_t, use_n; /* uint32_t pairs: (tensor, node) */
    bool oom;
} s_walk_t;

static void s_walk_value(s_walk_t *w, const djn_graph_req_t *g, const djn_value_t *v, uint32_t node,
                         int depth) {
    if (depth > DJN_MAX_DEPTH)
        return;
    if (v->kind == DJN_V_LIST) {
        for (uint32_t k = 0; k < v->len; k++)
            s_walk_value(w, g, &v->u.items[k], node, depth + 1);
        return;
    }
    if (v->kind != DJN_V_TENSOR || v->u.t->handle >= g->nbinds)
        return;
    uint64_t h = g->binds[v->u.t->handle], t;
    if (!djn_map_get(&w->eph, h, NULL))
        return;
    if (!djn_map_get(&w->index, h, &t)) {
        t = w->handle.len + 1;
        w->oom |= !djn_map_put(&w->index, h, t) || !djn_vec_push(&w->handle, &h) ||
                  !djn_vec_push(&w->def, &node);
    }
    uint32_t ti = (uint32_t)(t - 1);
    w->oom |= !djn_vec_push(&w->use_t, &ti) || !djn_vec_push(&w->use_n, &node);
}

/* The meta-simulator's plan for this fragment: fills `place` (handle -> offset + 1),
 * returns the planned peak (0: nothing planned) and the bytes a plan that does not fit
 * would need in *too_big. */
static uint64_t s_plan(const djn_frag_env_t *env, const djn_graph_req_t *g, const djn_node_t *nodes,
                       uint32_t nnodes, djn_map_t *place, uint64_t *too_big) {
    if (!env->vmu || !g->nallocs || !g->nfrees || !nnodes)
        return 0;
    if ((uint64_t)g->nallocs * g->nfrees <= 64) { /* no intermediates, found without maps */
        bool any = false;
        for (uint32_t i = 0; !any && i < g->nallocs; i++)
            for (uint32_t k = 0; !any && k < g->nfrees; k++)
                any = g->allocs[i].handle == g->frees[k];
        if (!any)
            return 0;
    }
    s_walk_t w = {0};
    w.handle = DJN_VEC(uint64_t);
    w.def = w.use_t = w.use_n = DJN_VEC(uint32_t);
    djn_map_t freed = {0};
    bool ok = true;
    for (uint32_t i = 0; i < g->nfrees; i++)
        ok &= djn_map_put(&freed, g->frees[i], 1);
    djn_map_t size = {0};
    for (uint32_t i = 0; i < g->nallocs; i++)
        if (djn_map_get(&freed, g->allocs[i].handle, NULL))
            ok &= djn_map_put(&w.eph, g->allocs[i].handle, 1) &&
                  djn_map_put(&size, g->allocs[i].handle, g->allocs[i].nbytes);
    for (uint32_t i = 0; ok && i < nnodes; i++) {
        for (uint32_t a = 0; a < nodes[i].nargs; a++)
            s_walk_value(&w, g, &nodes[i].args[a], i, 0);
        for (uint32_t a = 0; a < nodes[i].nouts; a++)
            s_walk_value(&w, g, &nodes[i].outs[a], i, 0);
    }
    uint64_t peak = 0;
    uint32_t n = (uint32_t)w.handle.len;
    djn_plan_req_t *reqs = n ? djn_calloc(n, sizeof(djn_plan_req_t)) : NULL;
    djn_plan_t *plan = NULL;
    if (ok && !w.oom && n && reqs &&
        djn_plan_lifetimes(n, w.def.data, w.use_t.data, w.use_n.data, (uint32_t)w.use_t.len,
                           reqs) == DJN_OK) {
        uint64_t bump = 0;
        for (uint32_t t = 0; t < n; t++) {
            djn_map_get(&size, DJN_VEC_AT(&w.handle, uint64_t, t), &reqs[t].nbytes);
            bump += (reqs[t].nbytes + 255) & ~255ull;
        }
        if (djn_plan_build(reqs, n, 256, &plan) == DJN_OK) {
            if (plan->peak > djn_vmu_slab_capacity(env->vmu)) { /* refuse the fragment */
                *too_big = plan->peak;
            } else {
                for (uint32_t t = 0; t < n; t++)
                    djn_map_put(place, DJN_VEC_AT(&w.handle, uint64_t, t), plan->offsets[t] + 1);
                peak = plan->peak;
                if (!env->nested) /* the planner's figures: plans the slab runs */
                    djn_vmu_note_plan(env->vmu, plan->peak, plan->lower_bound, bump);
            }
            djn_plan_destroy(&plan);
        }
    }
    djn_free(reqs, n * sizeof(djn_plan_req_t));
    djn_map_release(&freed);
    djn_map_release(&size);
    djn_map_release(&w.index);
    djn_map_release(&w.eph);
    djn_vec_release(&w.handle);
    djn_vec_release(&w.def);
    djn_vec_release(&w.use_t);
    djn_vec_release(&w.use_n);
    return peak;
}

/* Step 2b: the results this fragment declares, writes and keeps (allocations a node
 * writes and the message does not also free, still without storage) end in the Data segment
 * whatever the slab plan does, so a fragment whose kept results cannot fit the segment's free bytes
 * now is refused before any node runs, rather than failing halfway with the earlier nodes' writes
 * done. Blocks are rounded as the heap rounds them. Free bytes are not one block: a fragmented
 * segment can still fail later, with the usual out-of-memory error. */
static void s_mark_written(const djn_graph_req_t *g, const djn_value_t *v, djn_map_t *w,
                           int depth) {
    if (depth > DJN_MAX_DEPTH)
        return;
    if (v->kind == DJN_V_TENSOR && v->u.t->handle < g->nbinds)
        djn_map_put(w, g->binds[v->u.t->handle], 1);
    else if (v->kind == DJN_V_LIST)
        for (uint32_t k = 0; k < v->len; k++)
            s_mark_written(g, &v->u.items[k], w, depth + 1);
}

static djn_status_t s_fits_data(const djn_frag_env_t *env, const djn_frag_in_t *in,
                                const djn_node_t *nodes, uint32_t nnodes, djn_frag_out_t *out) {
    const djn_graph_req_t *g = in->g;
    if (!g->nallocs || !nnodes)
        return DJN_OK;
    djn_map_t freed = {0}, written = {0};
    for (uint32_t i = 0; i < g->nfrees; i++)
        djn_map_put(&freed, g->frees[i], 1);
    /* only what a node writes takes memory: a declared, never-written handle reads as
     * zeros without storage (a map OOM only forgets handles: the check is then weaker) */
    for (uint32_t i = 0; i < nnodes; i++)
        for (uint32_t a = 0; a < nodes[i].nouts; a++)
            s_mark_written(g, &nodes[i].outs[a], &written, 0);
    uint64_t need = 0;
    for (uint32_t i = 0; i < g->nallocs; i++) {
        const djn_alloc_t *a = &g->allocs[i];
        if (djn_map_get(&freed, a->handle, NULL) || !djn_map_get(&written, a->handle, NULL) ||
            !djn_session_is_lazy(in->sess, a->handle))
            continue;
        uint64_t n = a->nbytes > UINT64_MAX - 255 ? UINT64_MAX - 255 : a->nbytes;
        n = (n + 255) & ~(uint64_t)255;
        need = need > UINT64_MAX - n ? UINT64_MAX : need + n;
    }
    djn_map_release(&freed);
    djn_map_release(&written);
    uint64_t cap = 0, free_bytes = djn_vmu_data_free(env->vmu, &cap);
    if (need <= free_bytes)
        return DJN_OK;
    snprintf(out->err, sizeof out->err,
             "out of memory: this fragment's results need %" PRIu64 " bytes of the Data "
             "segment but %" PRIu64 " of its %" PRIu64 " bytes are free; free tensors you no "
             "longer need, split the work, or start djinn-server with a larger --data-bytes",
             need, free_bytes, cap);
    return DJN_ERR_OOM;
}

/* A plan-cache hit reuses the fragment's slab plan when it still holds: every planned
 * slot is bound to a handle this message declares and frees (an intermediate again), no
 * larger than the bytes planned for that slot (a patched fragment's sizes may grow: then
 * it is planned again). */
static bool s_reuse_plan(const djn_graph_req_t *g, const djn_tlb_entry_t *e, djn_map_t *place,
                         uint64_t *peak) {
    const uint64_t *slots;
    uint32_t n;
    if (!djn_tlb_plan(e, &slots, &n, peak) || n > g->nbinds)
        return false;
    djn_map_t eph = {0}, declared = {0};
    bool ok = true;
    for (uint32_t i = 0; i < g->nfrees; i++)
        ok &= djn_map_put(&eph, g->frees[i], 1);
    for (uint32_t i = 0; i < g->nallocs; i++)
        if (djn_map_get(&eph, g->allocs[i].handle, NULL))
            ok &= djn_map_put(&declared, g->allocs[i].handle, g->allocs[i].nbytes + 1);
    const uint64_t *psize = djn_tlb_plan_sizes(e);
    uint64_t nb;
    for (uint32_t s = 0; ok && s < n; s++)
        if (slots[s]) /* no larger than what was planned there (sizes are bindings) */
            ok = psize && djn_map_get(&declared, g->binds[s], &nb) && nb - 1 <= psize[s] &&
                 djn_map_put(place, g->binds[s], slots[s]);
    djn_map_release(&eph);
    djn_map_release(&declared);
    if (!ok)
        djn_map_clear(place);
    return ok;
}

/* ------------------------------------------------------------------ step 5: poison */

static void s_poison_value(djn_session_t *s, const djn_graph_req_t *g, const djn_value_t *v,
                           const char *why, bool force, int depth) {
    if (depth > DJN_MAX_DEPTH)
        return;
    if (v->kind == DJN_V_TENSOR && v->u.t->handle < g->nbinds)
        djn_session_poison(s, g->binds[v->u.t->handle], why, force);
    else if (v->kind == DJN_V_LIST)
        for (uint32_t k = 0; k < v->len; k++)
            s_poison_value(s, g, &v->u.items[k], why, force, depth + 1);
}

/* The failed node's results (outs, which name in-place and out= targets too) may be
 * half-written: poisoned whatever they hold. Nodes after it never ran: whatever they
 * would have produced and has no value yet is poisoned. */
static void s_poison_node(djn_session_t *s, const djn_graph_req_t *g, const djn_node_t *n,
                          const char *why, bool failed_node) {
    for (uint32_t a = 0; a < n->nouts; a++)
        s_poison_value(s, g, &n->outs[a], why, failed_node, 0);
    for (uint32_t a = 0; a < n->nargs; a++)
        s_poison_value(s, g, &n->args[a], why, false, 0);
}

/* ------------------------------------------------------------------ the steps */

static djn_status_t s_declare(const djn_frag_env_t *env, const djn_frag_in_t *in,
                              djn_frag_out_t *out) {
    const djn_graph_req_t *g = in->g;
    for (uint32_t i = 0; i < g->nallocs; i++) {
        if (g->allocs[i].nbytes > env->max_tensor_bytes) {
            snprintf(out->err, sizeof out->err,
                     "allocation of %" PRIu64 " bytes exceeds the server's limit of %" PRIu64,
                     g->allocs[i].nbytes, env->max_tensor_bytes);
            return DJN_ERR_LIMIT;
        }
        djn_status_t st = djn_session_declare(in->sess, g->allocs[i].handle, g->allocs[i].nbytes);
        if (st == DJN_ERR_HANDLE) {
            snprintf(out->err, sizeof out->err, "handle 0x%" PRIx64 " declared twice",
                     g->allocs[i].handle);
            return st;
        }
        if (st != DJN_OK) {
            snprintf(out->err, sizeof out->err, "cannot declare handle 0x%" PRIx64 ": %s",
                     g->allocs[i].handle, djn_status_str(st));
            return st;
        }
    }
    return DJN_OK;
}

typedef struct {
    djn_exec_t *x;
    const djn_blob_t *f; /* the upload's bytes, or (NULL) */
    djn_stor_t *stor;    /* the storage its chunks were written to */
} s_same_t;

static bool s_same_fn(void *ctx, djn_stor_t *filed) {
    s_same_t *c = ctx;
    return c->stor ? djn_exec_equal(c->x, filed, c->stor)
                   : djn_exec_same(c->x, filed, c->f->data, c->f->len);
}

/* Bind handle to Text content of n bytes hashed to key/plain: the entry another upload
 * of identical content filed already, or a new one holding these bytes (`stor`, written
 * already, or else a storage made from f). */
static djn_status_t s_file_text(const djn_frag_env_t *env, const djn_frag_in_t *in, uint64_t handle,
                                djn_text_key_t *key, const uint64_t plain[2], const djn_blob_t *f,
                                djn_stor_t *stor, uint64_t n, djn_frag_out_t *out) {
    uint32_t tenant = djn_text_tenant(env->text, djn_session_peer(in->sess)->tenant);
    s_same_t same = {env->exec, f, stor};
    djn_stor_t *filed = djn_text_share(env->text, key, tenant, s_same_fn, &same);
    djn_status_t st = DJN_OK;
    if (!filed) {
        djn_stor_t *mine = stor ? djn_stor_retain(stor) : NULL;
        if (!stor && (st = djn_exec_upload(env->exec, f->data, f->len, &mine, out->err,
                                           sizeof out->err)) != DJN_OK)
            return st;
        filed =
            mine ? djn_text_insert(env->text, key, plain, tenant, mine, s_same_fn, &same) : NULL;
        djn_stor_release(mine);
        if (!filed) {
            snprintf(out->err, sizeof out->err, "out of host memory filing an upload");
            return DJN_ERR_NOMEM;
        }
    }
    st = djn_session_bind_text(in->sess, handle, key, filed);
    if (st != DJN_OK) {
        djn_text_release(env->text, key);
        snprintf(out->err, sizeof out->err,
                 st == DJN_ERR_QUOTA ? "session quota exceeded by an upload of %" PRIu64 " bytes "
                                       "(--session-quota-bytes)"
                                     : "cannot bind an upload of %" PRIu64 " bytes",
                 n);
    }
    return st;
}

/* A Text upload: the bytes another upload of identical content filed already, or these
 * bytes filed now, under the keyed hash the server computes itself. */
static djn_status_t s_upload_text(const djn_frag_env_t *env, const djn_frag_in_t *in,
                                  const djn_upload_t *u, const djn_blob_t *f, djn_frag_out_t *out) {
    djn_text_key_t key = {0, 0, env->device, 0};
    uint64_t plain[2];
    djn_text_hash(env->text, f->data, f->len, &key, plain);
    return s_file_text(env, in, u->handle, &key, plain, f, NULL, f->len, out);
}

/* An upload's storage (private), bound to its handle, replacing what the handle held. */
static djn_status_t s_bind_upload(const djn_frag_in_t *in, uint64_t handle, djn_stor_t *stor,
                                  uint64_t n, djn_frag_out_t *out) {
    djn_status_t st = djn_session_bind(in->sess, handle, stor);
    if (st == DJN_ERR_QUOTA)
        snprintf(out->err, sizeof out->err,
                 "session quota exceeded by an upload of %" PRIu64 " bytes (--session-quota-bytes)",
                 n);
    else if (st != DJN_OK)
        snprintf(out->err, sizeof out->err, "cannot bind the upload to handle 0x%" PRIx64 ": %s",
                 handle, djn_status_str(st));
    return st;
}

/* One chunk of an upload arriving in several messages (PROTOCOL.md 7.7), in these steps:
 *   1. check it against the upload of its handle: the first chunk (offset 0) opens one,
 *      of `total` bytes, on a handle with none open; every later chunk starts exactly
 *      where the previous one ended and repeats its total and text flag; no chunk is
 *      empty or reaches past total. A chunk that breaks a rule is refused (DJN_ERR_ARGS)
 *      and the handle's open upload, if any, is dropped: a refused sequence leaves
 *      nothing behind;
 *   2. write its bytes at its offset into the upload's storage (a fresh Data block, the
 *      whole size charged to the session from the first chunk), and hash them for Text;
 *   3. at the last byte, bind the handle to the storage (private) or file it as Text
 *      (deduplicated against identical content, as a one-frame Text upload is).
 * The storage is the destination: no staging buffer, and the worker writes a chunk
 * while the next one is still on the wire. */
static djn_status_t s_upload_chunk(const djn_frag_env_t *env, const djn_frag_in_t *in,
                                   const djn_upload_t *u, const djn_blob_t *f,
                                   djn_frag_out_t *out) {
    djn_session_t *s = in->sess;
    djn_chunked_t c, *open = djn_session_chunked(s, u->handle);
    djn_status_t st = DJN_OK;
    if (u->total > env->max_tensor_bytes) {
        snprintf(out->err, sizeof out->err,
                 "upload of %" PRIu64 " bytes exceeds the server's limit of %" PRIu64, u->total,
                 env->max_tensor_bytes);
        st = DJN_ERR_LIMIT;
    } else if (!f->len || u->offset >= u->total || f->len > u->total - u->offset) {
        snprintf(out->err, sizeof out->err,
                 "chunk of bytes [%" PRIu64 ", %" PRIu64 ") of an upload of %" PRIu64
                 " bytes to handle 0x%" PRIx64 ": %s",
                 u->offset, u->offset + f->len, u->total, u->handle,
                 f->len ? "beyond the upload" : "empty");
        st = DJN_ERR_ARGS;
    } else if (u->offset == 0 && open) {
        snprintf(out->err, sizeof out->err,
                 "chunk at byte 0 of handle 0x%" PRIx64 " while an upload to it is open at byte "
                 "%" PRIu64 " of %" PRIu64,
                 u->handle, open->next, open->total);
        st = DJN_ERR_ARGS;
    } else if (u->offset && (!open || open->next != u->offset || open->total != u->total ||
                             open->text != u->text)) {
        if (open)
            snprintf(out->err, sizeof out->err,
                     "chunk at byte %" PRIu64 " of an upload of %" PRIu64
                     " bytes to handle 0x%" PRIx64 " out of sequence: the upload open for it "
                     "expects byte %" PRIu64 " of %" PRIu64 "%s",
                     u->offset, u->total, u->handle, open->next, open->total,
                     open->text != u->text ? " (and the other text flag)" : "");
        else
            snprintf(out->err, sizeof out->err,
                     "chunk at byte %" PRIu64 " of handle 0x%" PRIx64
                     " but no upload to it is open (chunks start at byte 0)",
                     u->offset, u->handle);
        st = DJN_ERR_ARGS;
    }
    if (st != DJN_OK) { /* 1: nothing of a broken sequence stays */
        if (open && djn_session_chunked_take(s, u->handle, &c)) {
            djn_stor_release(c.stor);
            djn_text_hasher_destroy(&c.hasher);
        }
        return st;
    }
    if (!open) {
        c = (djn_chunked_t){u->handle, u->total, 0, u->text, NULL, NULL};
        if ((st = djn_exec_alloc(env->exec, u->total, UINT64_MAX, &c.stor, out->err,
                                 sizeof out->err)) != DJN_OK)
            return st;
        if (u->text && !(c.hasher = djn_text_hasher_new(env->text))) {
            djn_stor_release(c.stor);
            snprintf(out->err, sizeof out->err, "out of host memory");
            return DJN_ERR_NOMEM;
        }
        if ((st = djn_session_chunked_open(s, &c, out->err, sizeof out->err)) != DJN_OK) {
            djn_stor_release(c.stor);
            djn_text_hasher_destroy(&c.hasher);
            return st;
        }
        open = djn_session_chunked(s, u->handle);
    }
    if (open->hasher) /* 2 */
        djn_text_hasher_update(open->hasher, f->data, f->len);
    st = djn_exec_write(env->exec, open->stor, u->offset, f->data, f->len, out->err,
                        sizeof out->err);
    if (st == DJN_OK && (open->next += f->len) < open->total)
        return DJN_OK;
    djn_session_chunked_take(s, u->handle, &c); /* 3, or a failed write */
    if (st == DJN_OK && c.text) {
        djn_text_key_t key = {0, 0, env->device, 0};
        uint64_t plain[2];
        djn_text_hasher_final(c.hasher, &key, plain);
        st = s_file_text(env, in, u->handle, &key, plain, NULL, c.stor, c.total, out);
    } else if (st == DJN_OK) {
        st = s_bind_upload(in, u->handle, c.stor, c.total, out);
    }
    djn_stor_release(c.stor);
    djn_text_hasher_destroy(&c.hasher);
    return st;
}

static djn_status_t s_uploads(const djn_frag_env_t *env, const djn_frag_in_t *in,
                              djn_frag_out_t *out) {
    const djn_graph_req_t *g = in->g;
    for (uint32_t i = 0; i < g->nuploads; i++) {
        const djn_upload_t *u = &g->uploads[i];
        const djn_blob_t *f = &in->frames[u->frame - 1];
        djn_status_t st;
        if (u->chunk) {
            if ((st = s_upload_chunk(env, in, u, f, out)) != DJN_OK)
                return st;
            continue;
        }
        if (u->text) {
            if ((st = s_upload_text(env, in, u, f, out)) != DJN_OK)
                return st;
            continue;
        }
        djn_stor_t *stor = NULL;
        st = djn_exec_upload(env->exec, f->data, f->len, &stor, out->err, sizeof out->err);
        if (st != DJN_OK)
            return st;
        st = s_bind_upload(in, u->handle, stor, f->len, out);
        djn_stor_release(stor);
        if (st != DJN_OK)
            return st;
    }
    return DJN_OK;
}

/* Fetches from this size are lent (djn_exec_lend) rather than copied: below it a copy
 * costs less than making the storage copy-on-write (an allocation, and a storage that
 * stays copy-on-write for its life). */
#define S_LEND_MIN (64u << 10)

static djn_status_t s_fetches(const djn_frag_env_t *env, const djn_frag_in_t *in,
                              djn_frag_out_t *out) {
    const djn_graph_req_t *g = in->g;
    if (!g->nfetches)
        return DJN_OK;
    out->fetch_cap = g->nfetches;
    out->fetched = djn_calloc(g->nfetches, sizeof(uint8_t *));
    out->fetched_len = djn_calloc(g->nfetches, sizeof(uint64_t));
    out->fetched_hold = djn_calloc(g->nfetches, sizeof(void *));
    if (!out->fetched || !out->fetched_len || !out->fetched_hold) {
        snprintf(out->err, sizeof out->err, "out of host memory");
        return DJN_ERR_NOMEM;
    }
    for (uint32_t i = 0; i < g->nfetches; i++) {
        const djn_fetch_t *f = &g->fetches[i];
        if (f->nbytes > env->max_tensor_bytes) {
            snprintf(out->err, sizeof out->err, "fetch of %" PRIu64 " bytes exceeds the limit",
                     f->nbytes);
            return DJN_ERR_LIMIT;
        }
        uint64_t declared;
        bool lazy = djn_session_lazy_size(in->sess, f->handle, &declared);
        djn_stor_t *stor = NULL;
        djn_status_t st = DJN_OK;
        if (lazy && (f->offset > declared || f->nbytes > declared - f->offset)) {
            snprintf(out->err, sizeof out->err,
                     "fetch of bytes [%" PRIu64 ", %" PRIu64 ") beyond a storage of %" PRIu64
                     " bytes",
                     f->offset, f->offset + f->nbytes, declared);
            return DJN_ERR_ARGS;
        }
        /* a handle nothing wrote yet reads as zeros: no memory is taken to say so */
        if (!lazy && (st = djn_session_resolve(in->sess, env->exec, f->handle, 0, UINT64_MAX, &stor,
                                               out->err, sizeof out->err)) != DJN_OK)
            return st;
        if ((st = djn_session_charge_reply(in->sess, f->nbytes, out->err, sizeof out->err)) !=
            DJN_OK)
            return st; /* the bytes fetched so far and these would pass the session's quota */
        /* a private storage's bytes go out as they are (a snapshot: no copy, no fresh
         * pages); Text content, the slab, device memory and small reads are copied */
        const void *lent;
        void *hold;
        if (!lazy && f->nbytes >= S_LEND_MIN && !djn_session_shared(in->sess, f->handle) &&
            djn_exec_lend(env->exec, stor, f->offset, f->nbytes, &lent, &hold)) {
            if (!out->sess)
                out->sess = djn_session_retain(in->sess);
            out->fetched[i] = (uint8_t *)lent;
            out->fetched_len[i] = f->nbytes;
            out->fetched_hold[i] = hold;
            out->nfetched = i + 1;
            continue;
        }
        uint8_t *buf = lazy ? djn_calloc(1, f->nbytes) : djn_malloc(f->nbytes);
        if (!buf) {
            djn_session_uncharge_reply(in->sess, f->nbytes);
            snprintf(out->err, sizeof out->err,
                     "out of host memory for a fetch of %" PRIu64 " bytes", f->nbytes);
            return DJN_ERR_NOMEM;
        }
        if (!out->sess)
            out->sess = djn_session_retain(in->sess);
        out->fetched[i] = buf;
        out->fetched_len[i] = f->nbytes;
        out->nfetched = i + 1;
        if (!lazy && (st = djn_exec_read(env->exec, stor, f->offset, f->nbytes, buf, out->err,
                                         sizeof out->err)) != DJN_OK)
            return st;
    }
    return DJN_OK;
}

void djn_frag_run(const djn_frag_env_t *env, const djn_frag_in_t *in, djn_frag_out_t *out) {
    memset(out, 0, sizeof(*out));
    out->bad_node = -1;
    const djn_graph_req_t *g = in->g;
    const djn_graph_req_t *cg = in->cached ? djn_tlb_graph(in->cached) : NULL;
    const djn_node_t *nodes = in->nodes ? in->nodes : cg ? cg->nodes : g->nodes;
    uint32_t nnodes = cg ? cg->nnodes : g->nnodes;
    djn_session_t *s = in->sess;
    djn_map_t place = {0};
    s_ctx_t ctx = {s, env->exec, &place};
    djn_exec_env_t xe = {
        .ctx = &ctx,
        .resolve_fn = s_resolve_fn,
        .is_lazy_fn = s_is_lazy_fn,
        .bind_fn = s_bind_fn,
        .written_fn = s_written_fn,
        .new_handle_fn = s_new_handle_fn,
        .binds = g->binds,
        .nbinds = g->nbinds,
        .gen_slot = djn_session_gen_slot(s, env->device),
        .seed = g->seed,
        .slab = false,
    };
    if (g->seed >= 0)
        djn_exec_reseed(env->exec, &xe);
    djn_status_t st = s_declare(env, in, out); /* 1 */
    if (st == DJN_OK)
        st = s_uploads(env, in, out); /* 2 */
    if (st == DJN_OK && env->vmu)
        st = s_fits_data(env, in, nodes, nnodes, out); /* 2b */
    bool planned = false;
    uint64_t peak = 0;
    uint64_t t0 = s_now_ns();
    if (st == DJN_OK && env->vmu) { /* 3 (nested: only the limit, the slab is the worker's) */
        uint64_t too_big = 0;
        if (!(in->cached && s_reuse_plan(g, in->cached, &place, &peak)))
            peak = s_plan(env, g, nodes, nnodes, &place, &too_big);
        if (too_big) {
            st = DJN_ERR_OOM;
            snprintf(out->err, sizeof out->err,
                     "out of memory: this fragment's activations need %" PRIu64 " bytes of stack "
                     "slab (planned peak) but the slab holds %" PRIu64 " bytes; split the work "
                     "into smaller steps (torch.remote.synchronize()) or start djinn-server with "
                     "a larger --slab-bytes",
                     too_big, djn_vmu_slab_capacity(env->vmu));
        } else if (env->nested) {
            djn_map_clear(&place); /* its intermediates go to the Data segment */
        } else {
            if (djn_vmu_fragment_begin(env->vmu, peak) != DJN_OK)
                djn_map_clear(&place); /* the slab was not empty: run unplanned */
            planned = true;
            xe.slab = true;
        }
    }
    uint64_t t1 = s_now_ns();
    out->plan_ns = t1 - t0;
    for (uint32_t i = 0; st == DJN_OK && i < nnodes; i++) { /* 4 */
        const djn_node_t *n = &nodes[i];
        if (i && env->yield_fn && env->urgent_fn(env->yield_ctx)) { /* 4a: preemption */
            out->rng |= djn_exec_rng_exit(env->exec, &xe);          /* re-entered lazily after */
            env->yield_fn(env->yield_ctx);
        }
        if (i && djn_session_expired(s)) { /* 4b: its client is gone (djn_session.c) */
            st = DJN_ERR_SESSION;
            out->bad_node = i;
            snprintf(out->op, sizeof out->op, "%s%s%s", n->op, n->overload[0] ? "." : "",
                     n->overload);
            snprintf(out->err, sizeof out->err,
                     "the session's lease expired while this fragment ran (its client was "
                     "silent for a lease and its connection closed); stopped before node %u",
                     i);
            break;
        }
        bool dynamic = (n->flags & DJN_NODE_DYNAMIC) && i + 1 == nnodes;
        djn_crash_note(n->op, n->overload, djn_session_id(s), djn_session_peer(s)->tenant);
        st =
            djn_exec_node(env->exec, n, &xe, dynamic ? &out->dyn : NULL, out->err, sizeof out->err);
        if (st != DJN_OK) {
            out->bad_node = i;
            snprintf(out->op, sizeof out->op, "%s%s%s", n->op, n->overload[0] ? "." : "",
                     n->overload);
        } else {
            out->nodes_run++;
        }
    }
    djn_crash_note(NULL, NULL, 0, NULL);
    out->run_ns = s_now_ns() - t1;
    if (st != DJN_OK) { /* 5 */
        uint32_t from = out->bad_node >= 0 ? (uint32_t)out->bad_node : 0;
        for (uint32_t i = from; i < nnodes; i++)
            s_poison_node(s, g, &nodes[i], out->err, out->bad_node == (int64_t)i);
    }
    out->rng |= djn_exec_rng_exit(env->exec, &xe);
    if (planned) { /* 6: what the client still holds leaves the slab before it is reset */
        uint64_t moved = 0;
        djn_map_t freed = {0};
        for (uint32_t i = 0; i < g->nfrees; i++)
            djn_map_put(&freed, g->frees[i], 1);
        /* every kept result is moved (or poisoned); the first failure fails the fragment */
        char why[sizeof out->err];
        djn_status_t cst;
        for (uint32_t i = 0; i < g->nbinds + g->nallocs; i++) {
            uint64_t h = i < g->nbinds ? g->binds[i] : g->allocs[i - g->nbinds].handle;
            if (!djn_map_get(&freed, h, NULL) &&
                (cst = djn_session_copy_out(s, env->exec, h, &moved, why, sizeof why)) != DJN_OK &&
                st == DJN_OK) {
                st = cst;
                snprintf(out->err, sizeof out->err, "%s", why);
            }
        }
        djn_map_release(&freed);
        if (moved)
            djn_vmu_note_copy_out(env->vmu, moved);
    }
    if (st == DJN_OK && out->dyn.failed) {
        st = DJN_ERR_NOMEM;
        snprintf(out->err, sizeof out->err, "out of host memory encoding results");
    }
    if (st == DJN_OK)
        st = s_fetches(env, in, out);        /* 7 */
    for (uint32_t i = 0; i < g->nfrees; i++) /* 8 */
        djn_session_free(s, g->frees[i]);
    if (planned) {                /* 9 */
        djn_exec_sync(env->exec); /* the slab is reused only after the device finished */
        djn_vmu_fragment_end(env->vmu);
    }
    if (st == DJN_OK && !in->cached && in->type == DJN_MSG_GRAPH && nnodes) { /* 10 */
        uint64_t *slots = place.len && g->nbinds ? djn_calloc(2 * (size_t)g->nbinds, 8) : NULL;
        uint64_t *psize = slots ? slots + g->nbinds : NULL;
        djn_map_t size = {0};
        for (uint32_t i = 0; slots && i < g->nallocs; i++)
            djn_map_put(&size, g->allocs[i].handle, g->allocs[i].nbytes); /* OOM: size 0 */
        for (uint32_t i = 0; slots && i < g->nbinds; i++)
            if (djn_map_get(&place, g->binds[i], &slots[i]))
                djn_map_get(&size, g->binds[i], &psize[i]);
        djn_map_release(&size);
        djn_tlb_owner_t owner = {djn_session_retain(s), s_cache_charge_fn, s_cache_release_fn,
                                 s_cache_live_fn};
        djn_tlb_insert(env->tlb, djn_session_id(s), g, slots, psize, slots ? g->nbinds : 0, peak,
                       &owner);
        djn_free(slots, 2 * (size_t)g->nbinds * 8);
    }
    djn_map_release(&place);
    out->st = st;
    if (st != DJN_OK) {
        if (!out->err[0])
            snprintf(out->err, sizeof out->err, "%s", djn_status_str(st));
        for (uint32_t i = 0; i < out->nfetched; i++) {
            djn_frag_fetched_free(out->fetched[i], out->fetched_len[i], out->fetched_hold[i]);
            djn_session_uncharge_reply(s, out->fetched_len[i]);
            out->fetched[i] = NULL;
        }
        out->nfetched = 0;
    }
}

void djn_frag_fetched_free(void *data, uint64_t len, void *hold) {
    if (hold)
        djn_exec_unlend(hold);
    else
        djn_free(data, len);
}

void djn_frag_out_release(djn_frag_out_t *out) {
    for (uint32_t i = 0; i < out->nfetched; i++)
        if (out->fetched[i]) { /* NULL once taken */
            djn_frag_fetched_free(out->fetched[i], out->fetched_len[i], out->fetched_hold[i]);
            djn_session_uncharge_reply(out->sess, out->fetched_len[i]);
        }
    djn_session_release(&out->sess);
    djn_free(out->fetched, out->fetch_cap * sizeof(uint8_t *));
    djn_free(out->fetched_len, out->fetch_cap * sizeof(uint64_t));
    djn_free(out->fetched_hold, out->fetch_cap * sizeof(void *));
    out->fetched = NULL;
    out->fetched_len = NULL;
    out->fetched_hold = NULL;
    out->nfetched = out->fetch_cap = 0;
    djn_buf_release(&out->dyn);
}

djn_status_t djn_frag_have(const djn_frag_env_t *env, djn_session_t *s, const djn_have_req_t *h,
                           uint32_t **missing, uint32_t *nmissing) {
    *nmissing = 0;
    *missing = h->nitems ? djn_calloc(h->nitems, sizeof(uint32_t)) : NULL;
    if (h->nitems && !*missing)
        return DJN_ERR_NOMEM;
    /* only content this tenant uploaded before: HAVE must not tell who holds what */
    uint32_t tenant = djn_text_tenant(env->text, djn_session_peer(s)->tenant);
    djn_session_lock(s);
    for (uint32_t i = 0; i < h->nitems; i++) {
        const djn_have_item_t *it = &h->items[i];
        uint64_t plain[2] = {it->hi, it->lo};
        djn_text_key_t key;
        djn_stor_t *have = djn_text_acquire_owned(env->text, env->device, plain, tenant, &key);
        if (have && (djn_stor_nbytes(have) != it->nbytes ||
                     djn_session_bind_text(s, it->handle, &key, have) != DJN_OK)) {
            djn_text_release(env->text, &key);
            have = NULL;
        }
        if (!have)
            (*missing)[(*nmissing)++] = i;
    }
    djn_session_unlock(s);
    return DJN_OK;
}
