/* djn_tlb.c: plan cache (see djn_tlb.h).
 *
 * 1. A djn_map from a digest of (fingerprint, device, session) to the entry (collisions
 *    of the 64-bit digest are resolved by comparing the full key; a colliding newcomer is
 *    simply not cached).
 * 2. A doubly linked LRU list; lookup moves the entry to the front.
 * 3. Insert copies the nodes into the entry's own arena (djn_nodes_clone): whatever else
 *    the message carried (upload frames, unknown keys, the binds) is not kept.
 * 4. Insert past capacity unlinks the tail; an unlinked entry is freed when its last
 *    reference (the table's or a worker's) is released.
 * 5. A session's entries are unlinked when it closes or expires (a linear walk: closes
 *    are rare next to lookups, and the table is bounded). */
#include "djn_tlb.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "djn_codec.h"
#include "djn_map.h"
#include "djn_mem.h"

struct djn_tlb_entry {
    djn_tlb_entry_t *prev, *next;
    uint64_t fp[2], sid;
    uint32_t dev;
    int refs; /* the table's (while linked) + workers' */
    djn_arena_t *arena;
    djn_graph_req_t g; /* nodes, nnodes, nslots, fp */
    uint64_t *place;   /* slot -> planned slab offset + 1, or NULL */
    uint32_t nplace;
    uint64_t peak;
    uint64_t bytes; /* host bytes held */
    djn_tlb_owner_t owner;
    _Atomic uint64_t run_ns;
};

struct djn_tlb {
    pthread_mutex_t mu;
    djn_map_t index;
    djn_tlb_entry_t *head, *tail;
    djn_tlb_stats_t st;
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
    s_unref(e);
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

djn_tlb_entry_t *djn_tlb_lookup(djn_tlb_t *t, const uint64_t fp[2], uint32_t dev, uint64_t sid) {
    pthread_mutex_lock(&t->mu);
    uint64_t v = 0;
    djn_tlb_entry_t *e = NULL;
    if (djn_map_get(&t->index, s_digest(fp, dev, sid), &v)) {
        e = (djn_tlb_entry_t *)(uintptr_t)v;
        if (e->fp[0] != fp[0] || e->fp[1] != fp[1] || e->dev != dev || e->sid != sid)
            e = NULL;
    }
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

/* A new entry holding a compact copy of the fragment, built outside the lock. */
static djn_tlb_entry_t *s_entry_new(uint64_t sid, const djn_graph_req_t *g, const uint64_t *place,
                                    uint32_t nslots, uint64_t peak) {
    djn_tlb_entry_t *e = djn_calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->arena = djn_arena_new();
    djn_node_t *nodes = e->arena ? djn_nodes_clone(e->arena, g->nodes, g->nnodes) : NULL;
    if (place && nslots && (e->place = djn_malloc(nslots * sizeof(uint64_t))) != NULL) {
        memcpy(e->place, place, nslots * sizeof(uint64_t));
        e->nplace = nslots;
        e->peak = peak;
    }
    if (!nodes || (place && nslots && !e->place)) {
        djn_free(e->place, e->nplace * sizeof(uint64_t));
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
    e->bytes = sizeof(*e) + djn_arena_bytes(e->arena) + e->nplace * sizeof(uint64_t);
    return e;
}

static void s_not_filed(const djn_tlb_owner_t *owner) {
    if (owner && owner->release_fn)
        owner->release_fn(owner->ctx, 0);
}

void djn_tlb_insert(djn_tlb_t *t, uint64_t sid, const djn_graph_req_t *g, const uint64_t *place,
                    uint32_t nslots, uint64_t peak, const djn_tlb_owner_t *owner) {
    uint64_t d = s_digest(g->fp, g->device, sid);
    pthread_mutex_lock(&t->mu);
    bool present = djn_map_get(&t->index, d, NULL);
    pthread_mutex_unlock(&t->mu);
    djn_tlb_entry_t *e = NULL;
    if (!t->st.capacity || (!g->fp[0] && !g->fp[1]) || !g->nnodes || present ||
        !(e = s_entry_new(sid, g, place, nslots, peak)) ||
        (owner && owner->charge_fn && !owner->charge_fn(owner->ctx, e->bytes))) {
        if (e)
            s_unref(e);
        s_not_filed(owner);
        return;
    }
    if (owner)
        e->owner = *owner; /* from here on the entry calls release_fn */
    pthread_mutex_lock(&t->mu);
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

uint64_t djn_tlb_run_ns(const djn_tlb_entry_t *e) {
    return atomic_load(&e->run_ns);
}
void djn_tlb_note_run(djn_tlb_entry_t *e, uint64_t ns) {
    atomic_store(&e->run_ns, ns);
}
