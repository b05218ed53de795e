/* djn_tlb.c: plan cache (see djn_tlb.h).
 *
 * 1. A djn_map from a digest of (fingerprint, device) to the entry (collisions of the
 *    64-bit digest are resolved by comparing the full key; a colliding newcomer is
 *    simply not cached).
 * 2. A doubly linked LRU list; lookup moves the entry to the front.
 * 3. Insert past capacity unlinks the tail; an unlinked entry is freed when its last
 *    reference (the table's or a worker's) is released. */
#include "djn_tlb.h"

#include <pthread.h>
#include <string.h>

#include "djn_codec.h"
#include "djn_map.h"
#include "djn_mem.h"

struct djn_tlb_entry {
    djn_tlb_entry_t *prev, *next;
    uint64_t fp[2], sid;
    uint32_t dev;
    int refs; /* the table's (while linked) + workers' */
    djn_msg_t *msg;
    uint64_t *place; /* slot -> planned slab offset + 1, or NULL */
    uint32_t nplace;
    uint64_t peak;
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
    if (e->prev) e->prev->next = e->next; else t->head = e->next;
    if (e->next) e->next->prev = e->prev; else t->tail = e->prev;
    e->prev = e->next = NULL;
}

static void s_push_front(djn_tlb_t *t, djn_tlb_entry_t *e) {
    e->next = t->head;
    e->prev = NULL;
    if (t->head) t->head->prev = e; else t->tail = e;
    t->head = e;
}

static void s_unref(djn_tlb_entry_t *e) {
    if (--e->refs == 0) {
        djn_free(e->place, e->nplace * sizeof(uint64_t));
        djn_msg_free(&e->msg);
        djn_free(e, sizeof(*e));
    }
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
    while (t->head) {
        djn_tlb_entry_t *e = t->head;
        s_unlink(t, e);
        s_unref(e);
    }
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

void djn_tlb_insert(djn_tlb_t *t, djn_msg_t **msg_p) { djn_tlb_insert_planned(t, msg_p, NULL, 0, 0); }

void djn_tlb_insert_planned(djn_tlb_t *t, djn_msg_t **msg_p, const uint64_t *place, uint32_t nslots,
                            uint64_t peak) {
    djn_msg_t *m = *msg_p;
    const djn_graph_req_t *g = &m->u.graph;
    if (!t->st.capacity || (!g->fp[0] && !g->fp[1]) || !g->nnodes)
        return;
    pthread_mutex_lock(&t->mu);
    uint64_t d = s_digest(g->fp, g->device, m->sid);
    if (djn_map_get(&t->index, d, NULL)) {
        pthread_mutex_unlock(&t->mu);
        return;
    }
    djn_tlb_entry_t *e = djn_calloc(1, sizeof(*e));
    if (!e || !djn_map_put(&t->index, d, (uint64_t)(uintptr_t)e)) {
        djn_free(e, sizeof(*e));
        pthread_mutex_unlock(&t->mu);
        return;
    }
    e->fp[0] = g->fp[0];
    e->fp[1] = g->fp[1];
    e->dev = g->device;
    e->sid = m->sid;
    e->refs = 1;
    e->msg = m;
    *msg_p = NULL;
    if (place && nslots && (e->place = djn_malloc(nslots * sizeof(uint64_t))) != NULL) {
        memcpy(e->place, place, nslots * sizeof(uint64_t));
        e->nplace = nslots;
        e->peak = peak;
    }
    s_push_front(t, e);
    t->st.entries++;
    t->st.inserts++;
    while (t->st.entries > t->st.capacity && t->tail) {
        djn_tlb_entry_t *old = t->tail;
        s_unlink(t, old);
        djn_map_del(&t->index, s_digest(old->fp, old->dev, old->sid), NULL);
        t->st.entries--;
        t->st.evictions++;
        s_unref(old);
    }
    pthread_mutex_unlock(&t->mu);
}

void djn_tlb_release(djn_tlb_t *t, djn_tlb_entry_t **e_p) {
    if (!e_p || !*e_p)
        return;
    pthread_mutex_lock(&t->mu);
    s_unref(*e_p);
    pthread_mutex_unlock(&t->mu);
    *e_p = NULL;
}

const djn_graph_req_t *djn_tlb_graph(const djn_tlb_entry_t *e) { return &e->msg->u.graph; }

bool djn_tlb_plan(const djn_tlb_entry_t *e, const uint64_t **place, uint32_t *nslots, uint64_t *peak) {
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
