/* djn_tlb.c: plan cache (see djn_tlb.h).
 *
 * 1. A djn_map from a digest of (fingerprint, device, session) to the entry (collisions
 *    of the 64-bit digest are resolved by comparing the full key; a colliding newcomer is
 *    simply not cached).
 * 2. A doubly linked LRU list; lookup moves the entry to the front.
 * 3. Insert copies the nodes into the entry's own arena (djn_nodes_clone) with the
 *    fragment's template (djn_sym.h): the position of each node's first integer, the
 *    binds, allocs and frees, and their digest; the upload frames and unknown keys are
 *    not kept. A key filed again with another template replaces the entry (the client
 *    patches against what it sent last); with the same template it is left alone.
 * 4. Insert past capacity unlinks the tail; an unlinked entry is freed when its last
 *    reference (the table's or a worker's) is released.
 * 5. A session's entries are unlinked when it closes or expires (a linear walk: closes
 *    are rare next to lookups, and the table is bounded). */
#include "djn_tlb.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "djn_codec.h"
#include "djn_map.h"
#include "djn_mem.h"
#include "djn_sym.h"

struct djn_tlb_entry {
    djn_tlb_entry_t *prev, *next;
    uint64_t fp[2], sid;
    uint32_t dev;
    int refs; /* the table's (while linked) + workers' */
    djn_arena_t *arena;
    djn_graph_req_t g; /* nodes, nnodes, nslots, fp */
    uint64_t *place;   /* slot -> planned slab offset + 1, or NULL */
    uint64_t *psize;   /* slot -> bytes planned there, or NULL */
    uint32_t nplace;
    djn_tlb_tpl_t tpl;
    /* the pattern of the last GRAPH_CACHED that sent one ('pat'): written and read only
     * by djn_tlb_bind, which only the transport thread calls */
    djn_sym_patch_t *pat;
    uint32_t npat;
    uint64_t pat_hash;
    uint64_t peak;
    uint64_t bytes; /* host bytes held */
    djn_tlb_owner_t owner;
    /* the last timed run (djn_tlb_note_run, by workers; read by the transport thread) */
    pthread_mutex_t run_mu;
    uint64_t run_ns;
    int64_t *run_ints; /* the integers of its nodes, tpl.start[g.nnodes] of them */
};

struct djn_tlb {
    pthread_mutex_t mu;
    djn_map_t index;
    djn_tlb_entry_t *head, *tail;
    djn_tlb_stats_t st;
    djn_tlb_drop_fn drop_fn; /* what is derived from a plan leaves with it (djn_gcache) */
    void *drop_ctx;
};

static uint64_t s_digest(const uint64_t fp[2], uint32_t dev, uint64_t sid) {
    uint64_t d = fp[0] ^ (fp[1] * 0x9e3779b97f4a7c15ull) ^ dev ^ (sid * 0xff51afd7ed558ccdull);
    return d ? d : 1;
}

static void s_unlink(djn_tlb_t *t, djn_tlb_entry_t *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        t->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        t->tail = e->prev;
    e->prev = e->next = NULL;
}

static void s_push_front(djn_tlb_t *t, djn_tlb_entry_t *e) {
    e->next = t->head;
    e->prev = NULL;
    if (t->head)
        t->head->prev = e;
    else
        t->tail = e;
    t->head = e;
}

static void s_unref(djn_tlb_entry_t *e) {
    if (--e->refs == 0) {
        if (e->owner.release_fn)
            e->owner.release_fn(e->owner.ctx, e->bytes);
        djn_free(e->place, e->nplace * sizeof(uint64_t));
        djn_free(e->psize, e->nplace * sizeof(uint64_t));
        djn_free(e->pat, e->npat * sizeof(djn_sym_patch_t));
        djn_free(e->run_ints, sizeof(int64_t) * e->tpl.start[e->g.nnodes]);
        pthread_mutex_destroy(&e->run_mu);
        djn_arena_destroy(&e->arena);
        djn_free(e, sizeof(*e));
    }
}

/* Unlink a linked entry and drop the table's reference (caller holds the lock). */
static void s_remove(djn_tlb_t *t, djn_tlb_entry_t *e) {
    s_unlink(t, e);
    djn_map_del(&t->index, s_digest(e->fp, e->dev, e->sid), NULL);
    t->st.entries--;
    t->st.bytes -= e->bytes;
    if (t->drop_fn)
        t->drop_fn(t->drop_ctx, e->fp, e->dev, e->sid);
    s_unref(e);
}

void djn_tlb_on_drop(djn_tlb_t *t, djn_tlb_drop_fn fn, void *ctx) {
    pthread_mutex_lock(&t->mu);
    t->drop_fn = fn;
    t->drop_ctx = ctx;
    pthread_mutex_unlock(&t->mu);
}

djn_tlb_t *djn_tlb_new(uint32_t capacity) {
    djn_tlb_t *t = djn_calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    pthread_mutex_init(&t->mu, NULL);
    t->st.capacity = capacity;
    return t;
}

void djn_tlb_destroy(djn_tlb_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_tlb_t *t = *self_p;
    while (t->head)
        s_remove(t, t->head);
    djn_map_release(&t->index);
    pthread_mutex_destroy(&t->mu);
    djn_free(t, sizeof(*t));
    *self_p = NULL;
}

/* The entry filed under this key (caller holds the lock), or NULL. */
static djn_tlb_entry_t *s_find(djn_tlb_t *t, uint64_t d, const uint64_t fp[2], uint32_t dev,
                               uint64_t sid) {
    uint64_t v = 0;
    if (!djn_map_get(&t->index, d, &v))
        return NULL;
    djn_tlb_entry_t *e = (djn_tlb_entry_t *)(uintptr_t)v;
    return e->fp[0] == fp[0] && e->fp[1] == fp[1] && e->dev == dev && e->sid == sid ? e : NULL;
}

static void s_not_filed(const djn_tlb_owner_t *owner) {
    if (owner && owner->release_fn)
        owner->release_fn(owner->ctx, 0);
}

djn_tlb_entry_t *djn_tlb_lookup(djn_tlb_t *t, const uint64_t fp[2], uint32_t dev, uint64_t sid) {
    pthread_mutex_lock(&t->mu);
    djn_tlb_entry_t *e = s_find(t, s_digest(fp, dev, sid), fp, dev, sid);
    if (e) {
        s_unlink(t, e);
        s_push_front(t, e);
        e->refs++;
        t->st.hits++;
    } else {
        t->st.misses++;
    }
    pthread_mutex_unlock(&t->mu);
    return e;
}

/* The template digest of a fragment (djn_sym_digest; 0 on OOM). */
static uint64_t s_tpl_digest(const djn_graph_req_t *g) {
    uint64_t total = 0;
    for (uint32_t i = 0; i < g->nnodes && total <= UINT32_MAX; i++)
        total += djn_sym_node_ints(&g->nodes[i], NULL);
    int64_t *ints = total && total <= UINT32_MAX ? djn_malloc(total * sizeof(int64_t)) : NULL;
    if (total && !ints)
        return 0;
    for (uint64_t i = 0, k = 0; i < g->nnodes; i++)
        k += djn_sym_node_ints(&g->nodes[i], ints + k);
    uint64_t d = djn_sym_digest(ints, (uint32_t)total, g->binds, g->nbinds, g->allocs, g->nallocs,
                                g->frees, g->nfrees);
    djn_free(ints, total * sizeof(int64_t));
    return d;
}

/* The template of a fragment, in the entry's arena (false on OOM). */
static bool s_template(djn_tlb_entry_t *e, const djn_graph_req_t *g, uint64_t digest) {
    uint32_t *start = djn_arena_alloc(e->arena, sizeof(uint32_t) * ((size_t)g->nnodes + 1));
    uint64_t *binds = djn_arena_alloc(e->arena, sizeof(uint64_t) * ((size_t)g->nbinds + 1));
    djn_alloc_t *allocs = djn_arena_alloc(e->arena, sizeof(djn_alloc_t) * ((size_t)g->nallocs + 1));
    uint64_t *frees = djn_arena_alloc(e->arena, sizeof(uint64_t) * ((size_t)g->nfrees + 1));
    if (!start || !binds || !allocs || !frees)
        return false;
    uint32_t total = 0;
    for (uint32_t i = 0; i < g->nnodes; i++) {
        start[i] = total;
        total += djn_sym_node_ints(&g->nodes[i], NULL);
    }
    start[g->nnodes] = total;
    if (g->nbinds)
        memcpy(binds, g->binds, sizeof(uint64_t) * g->nbinds);
    if (g->nallocs)
        memcpy(allocs, g->allocs, sizeof(djn_alloc_t) * g->nallocs);
    if (g->nfrees)
        memcpy(frees, g->frees, sizeof(uint64_t) * g->nfrees);
    e->tpl = (djn_tlb_tpl_t){digest, start, binds, allocs, frees, g->nbinds, g->nallocs, g->nfrees};
    return true;
}

/* A new entry holding a compact copy of the fragment, built outside the lock. */
static djn_tlb_entry_t *s_entry_new(uint64_t sid, const djn_graph_req_t *g, const uint64_t *place,
                                    const uint64_t *psize, uint32_t nslots, uint64_t peak,
                                    uint64_t digest) {
    djn_tlb_entry_t *e = djn_calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    pthread_mutex_init(&e->run_mu, NULL);
    e->arena = djn_arena_new();
    djn_node_t *nodes = e->arena ? djn_nodes_clone(e->arena, g->nodes, g->nnodes) : NULL;
    bool ok = nodes && s_template(e, g, digest);
    if (ok && place && nslots) {
        e->nplace = nslots;
        e->place = djn_malloc(nslots * sizeof(uint64_t));
        e->psize = psize ? djn_malloc(nslots * sizeof(uint64_t)) : NULL;
        ok = e->place && (!psize || e->psize);
        if (ok) {
            memcpy(e->place, place, nslots * sizeof(uint64_t));
            if (psize)
                memcpy(e->psize, psize, nslots * sizeof(uint64_t));
            e->peak = peak;
        }
    }
    if (!ok) {
        djn_free(e->place, e->nplace * sizeof(uint64_t));
        djn_free(e->psize, e->nplace * sizeof(uint64_t));
        pthread_mutex_destroy(&e->run_mu);
        djn_arena_destroy(&e->arena);
        djn_free(e, sizeof(*e));
        return NULL;
    }
    e->fp[0] = g->fp[0];
    e->fp[1] = g->fp[1];
    e->dev = g->device;
    e->sid = sid;
    e->refs = 1;
    e->g.nodes = nodes;
    e->g.nnodes = g->nnodes;
    e->g.nslots = g->nslots;
    e->g.device = g->device;
    e->g.fp[0] = g->fp[0];
    e->g.fp[1] = g->fp[1];
    e->g.seed = -1;
    e->g.qos = g->qos; /* a GRAPH_CACHED without semantics takes these (7.4) */
    e->g.phase = g->phase;
    e->g.life_kept = g->life_kept;
    e->g.life_transient = g->life_transient;
    /* charged up front for what the entry may hold later: the integers of its last timed
     * run (djn_tlb_note_run) and the largest pattern it may keep (positions ascend, so a
     * pattern has at most one per value of the template: ints, alloc sizes, binds, alloc
     * handles, frees) */
    uint64_t nints = e->tpl.start[g->nnodes];
    uint64_t npos = nints + 2ull * g->nallocs + g->nbinds + g->nfrees;
    e->bytes = sizeof(*e) + djn_arena_bytes(e->arena) +
               e->nplace * sizeof(uint64_t) * (e->psize ? 2 : 1) + nints * sizeof(int64_t) +
               npos * sizeof(djn_sym_patch_t);
    return e;
}

void djn_tlb_insert(djn_tlb_t *t, uint64_t sid, const djn_graph_req_t *g, const uint64_t *place,
                    const uint64_t *psize, uint32_t nslots, uint64_t peak,
                    const djn_tlb_owner_t *owner) {
    djn_tlb_entry_t *e = NULL, *old;
    uint64_t d = s_digest(g->fp, g->device, sid), digest = 0;
    bool skip =
        !t->st.capacity || (!g->fp[0] && !g->fp[1]) || !g->nnodes || !(digest = s_tpl_digest(g));
    if (!skip) {
        pthread_mutex_lock(&t->mu);
        old = s_find(t, d, g->fp, g->device, sid);
        skip = old ? old->tpl.digest == digest        /* filed with this template */
                   : djn_map_get(&t->index, d, NULL); /* a colliding digest */
        pthread_mutex_unlock(&t->mu);
    }
    if (skip || !(e = s_entry_new(sid, g, place, psize, nslots, peak, digest)) ||
        (owner && owner->charge_fn && !owner->charge_fn(owner->ctx, e->bytes))) {
        if (e)
            s_unref(e);
        s_not_filed(owner);
        return;
    }
    if (owner)
        e->owner = *owner; /* from here on the entry calls release_fn */
    pthread_mutex_lock(&t->mu);
    if ((old = s_find(t, d, g->fp, g->device, sid)) != NULL) /* another template: replace */
        s_remove(t, old);
    if ((owner && owner->live_fn && !owner->live_fn(owner->ctx)) ||
        djn_map_get(&t->index, d, NULL) || !djn_map_put(&t->index, d, (uint64_t)(uintptr_t)e)) {
        pthread_mutex_unlock(&t->mu);
        s_unref(e); /* releases what was charged */
        return;
    }
    s_push_front(t, e);
    t->st.entries++;
    t->st.inserts++;
    t->st.bytes += e->bytes;
    while (t->st.entries > t->st.capacity && t->tail) {
        s_remove(t, t->tail);
        t->st.evictions++;
    }
    pthread_mutex_unlock(&t->mu);
}

void djn_tlb_drop_sessions(djn_tlb_t *t, const uint64_t *sids, uint32_t n) {
    if (!n)
        return;
    djn_map_t gone = {0};
    for (uint32_t i = 0; i < n; i++)
        djn_map_put(&gone, sids[i] ? sids[i] : 1, 1);
    pthread_mutex_lock(&t->mu);
    for (djn_tlb_entry_t *e = t->head, *nx; e; e = nx) {
        nx = e->next;
        if (djn_map_get(&gone, e->sid ? e->sid : 1, NULL))
            s_remove(t, e);
    }
    pthread_mutex_unlock(&t->mu);
    djn_map_release(&gone);
}

uint32_t djn_tlb_session_entries(djn_tlb_t *t, uint64_t sid) {
    uint32_t n = 0;
    pthread_mutex_lock(&t->mu);
    for (djn_tlb_entry_t *e = t->head; e; e = e->next)
        n += e->sid == sid;
    pthread_mutex_unlock(&t->mu);
    return n;
}

void djn_tlb_release(djn_tlb_t *t, djn_tlb_entry_t **e_p) {
    if (!e_p || !*e_p)
        return;
    pthread_mutex_lock(&t->mu);
    s_unref(*e_p);
    pthread_mutex_unlock(&t->mu);
    *e_p = NULL;
}

const djn_graph_req_t *djn_tlb_graph(const djn_tlb_entry_t *e) {
    return &e->g;
}

const djn_tlb_tpl_t *djn_tlb_template(const djn_tlb_entry_t *e) {
    return &e->tpl;
}

const uint64_t *djn_tlb_plan_sizes(const djn_tlb_entry_t *e) {
    return e->psize;
}

bool djn_tlb_plan(const djn_tlb_entry_t *e, const uint64_t **place, uint32_t *nslots,
                  uint64_t *peak) {
    if (!e->place)
        return false;
    *place = e->place;
    *nslots = e->nplace;
    *peak = e->peak;
    return true;
}

void djn_tlb_stats(djn_tlb_t *t, djn_tlb_stats_t *out) {
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    pthread_mutex_unlock(&t->mu);
}

/* The integers of a bound copy of e's nodes, in canonical order, into out. */
static void s_run_ints(const djn_tlb_entry_t *e, const djn_node_t *nodes, int64_t *out) {
    for (uint32_t i = 0; i < e->g.nnodes; i++)
        djn_sym_node_ints(&nodes[i], out + e->tpl.start[i]);
}

void djn_tlb_note_run(djn_tlb_entry_t *e, uint64_t ns, const djn_node_t *nodes) {
    uint32_t n = e->tpl.start[e->g.nnodes];
    pthread_mutex_lock(&e->run_mu);
    if (!e->run_ints && n && !(e->run_ints = djn_malloc(sizeof(int64_t) * n)))
        ns = UINT64_MAX; /* OOM: cannot be compared, so never inline */
    if (e->run_ints)
        s_run_ints(e, nodes, e->run_ints);
    e->run_ns = ns;
    pthread_mutex_unlock(&e->run_mu);
}

bool djn_tlb_inline_ok(djn_tlb_entry_t *e, const djn_node_t *nodes, uint64_t max_ns) {
    uint32_t n = e->tpl.start[e->g.nnodes];
    int64_t *now = n ? djn_malloc(sizeof(int64_t) * n) : NULL;
    if (n && !now)
        return false;
    if (n)
        s_run_ints(e, nodes, now);
    pthread_mutex_lock(&e->run_mu);
    bool ok = e->run_ns && e->run_ns <= max_ns && (!n || e->run_ints);
    for (uint32_t i = 0; ok && i < n; i++) {
        /* magnitudes: no integer (a size, stride, offset or argument) beyond the timed
         * run's by more than an eighth plus one, so that the run's cost stays within a
         * small factor of the timed one's for any operator polynomial in its sizes */
        uint64_t was = e->run_ints[i] < 0 ? 0 - (uint64_t)e->run_ints[i] : (uint64_t)e->run_ints[i];
        uint64_t is = now[i] < 0 ? 0 - (uint64_t)now[i] : (uint64_t)now[i];
        ok = is <= was + was / 8 + 1;
    }
    pthread_mutex_unlock(&e->run_mu);
    djn_free(now, sizeof(int64_t) * n);
    return ok;
}

/* ------------------------------------------------------------------ templates */

static bool s_client_handle(uint64_t h) {
    return h >= 1 && h < (1ull << 62);
}

/* 'pal' + 'pat'/'pid': the pattern's deltas become g's integer patch, allocation size
 * deltas and binds (the rest of djn_tlb_bind then applies them like 'patch',
 * 'allocs_n' and 'binds_d'), and the deltas of the allocation handles and frees, in
 * *hd / *fd (NULL when the pattern moves none), added to whichever list djn_tlb_bind
 * makes of them. */
static djn_status_t s_by_pattern(djn_arena_t *a, djn_graph_req_t *g, djn_tlb_entry_t *e,
                                 int64_t **hd, int64_t **fd, char *err, size_t errlen) {
    const djn_tlb_tpl_t *tp = &e->tpl;
    uint64_t nints = tp->start[e->g.nnodes], nal = tp->nallocs, nb = tp->nbinds;
    uint64_t n = nints + nal + nb + nal + tp->nfrees;
    if (g->has_pat) {
        if (g->npat && g->pat[g->npat - 1].pos >= n) {
            snprintf(err, errlen,
                     "GRAPH_CACHED: 'pat' names value %u but the template has %" PRIu64,
                     g->pat[g->npat - 1].pos, n);
            return DJN_ERR_PROTO;
        }
        djn_sym_patch_t *keep = g->npat ? djn_malloc(g->npat * sizeof(djn_sym_patch_t)) : NULL;
        if (g->npat && !keep)
            goto oom;
        if (g->npat)
            memcpy(keep, g->pat, g->npat * sizeof(djn_sym_patch_t));
        djn_free(e->pat, e->npat * sizeof(djn_sym_patch_t));
        e->pat = keep;
        e->npat = g->npat;
        e->pat_hash = djn_sym_pattern_hash(keep, g->npat);
    } else if (!e->pat_hash || g->pid != e->pat_hash) {
        snprintf(err, errlen,
                 "plan cache miss: fragment %016" PRIx64 "%016" PRIx64
                 " holds no pattern %016" PRIx64 "; send the full GRAPH",
                 g->fp[0], g->fp[1], g->pid);
        return DJN_ERR_EVICTED;
    }
    djn_sym_patch_t *ip = djn_arena_alloc(a, sizeof(djn_sym_patch_t) * ((size_t)e->npat + 1));
    djn_sym_patch_t *ap = djn_arena_alloc(a, sizeof(djn_sym_patch_t) * ((size_t)e->npat + 1));
    uint64_t *b = djn_arena_alloc(a, sizeof(uint64_t) * ((size_t)nb + 1));
    if (!ip || !ap || !b)
        goto oom;
    if (nb)
        memcpy(b, tp->binds, nb * sizeof(uint64_t));
    uint32_t ni = 0, na = 0;
    for (uint32_t i = 0; i < e->npat; i++) {
        uint64_t pos = e->pat[i].pos;
        if (e->pat[i].val >= (int64_t)g->npal) {
            snprintf(err, errlen,
                     "GRAPH_CACHED: 'pal' has %u classes but the pattern names %" PRId64, g->npal,
                     e->pat[i].val);
            return DJN_ERR_PROTO;
        }
        int64_t d = g->pal[e->pat[i].val];
        if (pos < nints) {
            ip[ni++] = (djn_sym_patch_t){(uint32_t)pos, d};
        } else if ((pos -= nints) < nal) {
            ap[na++] = (djn_sym_patch_t){(uint32_t)pos, d};
        } else if ((pos -= nal) < nb) {
            b[pos] += (uint64_t)d;
        } else {
            pos -= nb; /* allocation handles, then frees */
            int64_t **dst = pos < nal ? hd : fd;
            uint64_t len = pos < nal ? nal : tp->nfrees;
            pos = pos < nal ? pos : pos - nal;
            if (!*dst && !(*dst = djn_arena_alloc(a, sizeof(int64_t) * len)))
                goto oom;
            (*dst)[pos] = d;
        }
    }
    for (uint32_t i = 0; i < nb; i++)
        if (!b[i]) {
            snprintf(err, errlen, "GRAPH: 'binds' must hold non-zero handles");
            return DJN_ERR_PROTO;
        }
    g->binds = b;
    g->nbinds = (uint32_t)nb;
    g->patch = ip;
    g->npatch = ni;
    g->allocs_n = ap;
    g->nallocs_n = na;
    return DJN_OK;
oom:
    snprintf(err, errlen, "out of host memory");
    return DJN_ERR_NOMEM;
}

/* A template's handle list moved by a message's runs (`<field>_d`), in the arena. */
static djn_status_t s_expand(djn_arena_t *a, const uint64_t *tpl, uint32_t n,
                             const djn_sym_run_t *runs, uint32_t nruns, const char *field,
                             uint64_t **out, char *err, size_t errlen) {
    uint64_t *v = djn_arena_alloc(a, sizeof(uint64_t) * ((size_t)n + 1));
    if (!v) {
        snprintf(err, errlen, "out of host memory");
        return DJN_ERR_NOMEM;
    }
    if (!djn_sym_expand(tpl, n, runs, nruns, v)) {
        snprintf(err, errlen, "GRAPH_CACHED: '%s_d' must cover the template's %u %s", field, n,
                 field);
        return DJN_ERR_PROTO;
    }
    *out = v;
    return DJN_OK;
}

djn_status_t djn_tlb_bind(djn_arena_t *a, djn_graph_req_t *g, djn_tlb_entry_t *e,
                          const djn_node_t **nodes, char *err, size_t errlen) {
    const djn_graph_req_t *cg = djn_tlb_graph(e);
    const djn_tlb_tpl_t *tp = djn_tlb_template(e);
    *nodes = cg->nodes;
    if (g->tpl && g->tpl != tp->digest) {
        snprintf(err, errlen,
                 "plan cache miss: fragment %016" PRIx64 "%016" PRIx64
                 " is cached with another template than %016" PRIx64 "; send the full GRAPH",
                 g->fp[0], g->fp[1], g->tpl);
        return DJN_ERR_EVICTED;
    }
    if (g->sem_tpl && (g->tpl || g->pal)) { /* the semantics of the GRAPH that filed it */
        g->qos = cg->qos;
        g->phase = cg->phase;
        g->life_kept = cg->life_kept;
        g->life_transient = cg->life_transient;
    }
    djn_status_t st;
    int64_t *hd = NULL, *fd = NULL; /* the pattern's deltas of alloc handles and frees */
    if (g->pal && (st = s_by_pattern(a, g, e, &hd, &fd, err, errlen)) != DJN_OK)
        return st;
    if (g->has_binds_d) {
        uint64_t *b;
        if ((st = s_expand(a, tp->binds, tp->nbinds, g->binds_d, g->nbinds_d, "binds", &b, err,
                           errlen)) != DJN_OK)
            return st;
        for (uint32_t i = 0; i < tp->nbinds; i++)
            if (!b[i]) {
                snprintf(err, errlen, "GRAPH: 'binds' must hold non-zero handles");
                return DJN_ERR_PROTO;
            }
        g->binds = b;
        g->nbinds = tp->nbinds;
    }
    /* by pattern, the allocs are the template's unless 'allocs_d' moves them */
    if (g->has_allocs_d || (g->pal && tp->nallocs)) {
        uint64_t *h = djn_arena_alloc(a, sizeof(uint64_t) * ((size_t)tp->nallocs * 2 + 1));
        djn_alloc_t *al = djn_arena_alloc(a, sizeof(djn_alloc_t) * ((size_t)tp->nallocs + 1));
        if (!h || !al)
            goto oom;
        uint64_t *th = h + tp->nallocs;
        for (uint32_t i = 0; i < tp->nallocs; i++)
            th[i] = tp->allocs[i].handle;
        if (!g->has_allocs_d) {
            memcpy(h, th, tp->nallocs * sizeof(uint64_t));
        } else if (!djn_sym_expand(th, tp->nallocs, g->allocs_d, g->nallocs_d, h)) {
            snprintf(err, errlen, "GRAPH_CACHED: 'allocs_d' must cover the template's %u allocs",
                     tp->nallocs);
            return DJN_ERR_PROTO;
        }
        for (uint32_t i = 0; i < tp->nallocs; i++) {
            if (hd)
                h[i] += (uint64_t)hd[i];
            if (!s_client_handle(h[i])) {
                snprintf(err, errlen, "GRAPH: client handles must be in [1, 2^62)");
                return DJN_ERR_PROTO;
            }
            al[i] = (djn_alloc_t){h[i], tp->allocs[i].nbytes};
        }
        for (uint32_t i = 0; i < g->nallocs_n; i++) {
            if (g->allocs_n[i].pos >= tp->nallocs) {
                snprintf(err, errlen,
                         "GRAPH_CACHED: 'allocs_n' names alloc %u but the template has %u",
                         g->allocs_n[i].pos, tp->nallocs);
                return DJN_ERR_PROTO;
            }
            al[g->allocs_n[i].pos].nbytes += (uint64_t)g->allocs_n[i].val; /* a delta */
        }
        g->allocs = al;
        g->nallocs = tp->nallocs;
    }
    /* by pattern, with neither 'frees_d' nor a 'frees' list, the frees are the
     * template's; a 'frees' list is taken as it is, and the pattern may not move it */
    if (g->has_frees_d || (g->pal && !g->nfrees && tp->nfrees)) {
        uint64_t *f;
        if (g->has_frees_d) {
            if ((st = s_expand(a, tp->frees, tp->nfrees, g->frees_d, g->nfrees_d, "frees", &f, err,
                               errlen)) != DJN_OK)
                return st;
        } else {
            if (!(f = djn_arena_alloc(a, sizeof(uint64_t) * tp->nfrees)))
                goto oom;
            memcpy(f, tp->frees, tp->nfrees * sizeof(uint64_t));
        }
        for (uint32_t i = 0; fd && i < tp->nfrees; i++)
            f[i] += (uint64_t)fd[i];
        g->frees = f;
        g->nfrees = tp->nfrees;
    } else if (fd) {
        snprintf(err, errlen,
                 "GRAPH_CACHED: the pattern moves the template's frees, so "
                 "'frees' must be left out");
        return DJN_ERR_PROTO;
    }
    if (cg->nslots > g->nbinds) {
        snprintf(err, errlen, "GRAPH_CACHED binds fewer slots than the cached fragment names");
        return DJN_ERR_PROTO;
    }
    if (g->npatch && !g->tpl && !g->pal) {
        snprintf(err, errlen, "GRAPH: 'patch' needs 'tpl'");
        return DJN_ERR_PROTO;
    }
    return djn_sym_patch(a, cg->nodes, cg->nnodes, tp->start, g->patch, g->npatch, g->nbinds, nodes,
                         err, errlen);
oom:
    snprintf(err, errlen, "out of host memory");
    return DJN_ERR_NOMEM;
}
