/* djn_gcache.c: the graph cache (see djn_gcache.h).
 *
 * One list in LRU order (most recent first), searched linearly: the cache holds few
 * entries (one per plan and shape bucket; 64 by default), and a walk of that many keys
 * costs less than one kernel launch. Rejected: a hash index (djn_map) whose O(1) does not
 * matter at this size and whose collisions would need handling of their own.
 *
 * lookup(k): walk; an entry with a graph moves to the front, gains a reference, counts a
 *   hit; otherwise a miss.
 * want_capture(k): the entry of k (created without a graph, at the front, evicting the
 *   tail past capacity) counts a sighting; true once seen >= capture_after and neither
 *   refused nor holding a graph.
 * insert(k, g, base): the entry of k (created if evicted meanwhile) takes g unless it
 *   holds one already or is refused; otherwise g is destroyed at once.
 * A removed entry loses the table's reference; the graph is destroyed through its device
 * when the last reference goes (never while a worker launches it). One cache serves every
 * device of a server, as the plan cache does (the device is part of the key).
 * Invariants: entries == list length <= capacity; graphs == entries holding a graph; a
 * key appears at most once in the list. */
#include "djn_gcache.h"

#include <assert.h>
#include <pthread.h>
#include <string.h>

#include "djn_mem.h"

struct djn_gcache_entry {
    djn_gcache_entry_t *prev, *next;
    djn_gcache_key_t key;
    uint32_t seen;
    bool refused, linked;
    int refs; /* the table's (while linked) + workers' */
    djn_dev_graph_t *graph;
    djn_dev_t *dev; /* the graph's device: it is destroyed through it */
    uint64_t base;
};

struct djn_gcache {
    pthread_mutex_t mu;
    uint32_t capture_after;
    djn_gcache_entry_t *head, *tail;
    djn_gcache_stats_t st;
};

int64_t djn_gcache_bucket(int64_t n) {
    if (n <= 64)
        return n;
    if (n > INT64_MAX / 2)
        return n;
    int64_t b = 128;
    while (b < n)
        b *= 2;
    return b;
}

uint64_t djn_gcache_shape_key(const int64_t *ints, uint32_t n, bool bucketed) {
    uint64_t h = 0xcbf29ce484222325ull ^ n; /* FNV-1a over 64-bit words, then mixed */
    for (uint32_t i = 0; i < n; i++) {
        uint64_t x = (uint64_t)(bucketed ? djn_gcache_bucket(ints[i]) : ints[i]);
        h = (h ^ x) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    h ^= bucketed ? 0x5bd1e995ull : 0;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static bool s_same(const djn_gcache_key_t *a, const djn_gcache_key_t *b) {
    return a->fp[0] == b->fp[0] && a->fp[1] == b->fp[1] && a->device == b->device &&
           a->sid == b->sid && a->shape == b->shape;
}

static void s_unlink(djn_gcache_t *c, djn_gcache_entry_t *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void s_push_front(djn_gcache_t *c, djn_gcache_entry_t *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    else
        c->tail = e;
    c->head = e;
}

static void s_unref(djn_gcache_entry_t *e) {
    assert(e->refs > 0);
    if (--e->refs)
        return;
    if (e->graph)
        djn_dev_graph_destroy(e->dev, e->graph);
    djn_free(e, sizeof(*e));
}

/* Unlink and drop the table's reference (caller holds the lock). */
static void s_remove(djn_gcache_t *c, djn_gcache_entry_t *e) {
    s_unlink(c, e);
    e->linked = false;
    c->st.entries--;
    if (e->graph)
        c->st.graphs--;
    s_unref(e);
}

static djn_gcache_entry_t *s_find(djn_gcache_t *c, const djn_gcache_key_t *k) {
    for (djn_gcache_entry_t *e = c->head; e; e = e->next)
        if (s_same(&e->key, k))
            return e;
    return NULL;
}

/* The entry of k at the front, created if absent (NULL on host OOM). */
static djn_gcache_entry_t *s_touch(djn_gcache_t *c, const djn_gcache_key_t *k) {
    djn_gcache_entry_t *e = s_find(c, k);
    if (e) {
        s_unlink(c, e);
        s_push_front(c, e);
        return e;
    }
    if (!(e = djn_calloc(1, sizeof(*e))))
        return NULL;
    e->key = *k;
    e->refs = 1;
    e->linked = true;
    s_push_front(c, e);
    c->st.entries++;
    while (c->st.entries > c->st.capacity) {
        s_remove(c, c->tail);
        c->st.evictions++;
    }
    return e;
}

djn_gcache_t *djn_gcache_new(uint32_t capacity, uint32_t capture_after) {
    if (!capacity)
        return NULL;
    djn_gcache_t *c = djn_calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    pthread_mutex_init(&c->mu, NULL);
    c->capture_after = capture_after ? capture_after : 1;
    c->st.capacity = capacity;
    return c;
}

void djn_gcache_destroy(djn_gcache_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_gcache_t *c = *self_p;
    while (c->head)
        s_remove(c, c->head);
    pthread_mutex_destroy(&c->mu);
    djn_free(c, sizeof(*c));
    *self_p = NULL;
}

djn_gcache_entry_t *djn_gcache_lookup(djn_gcache_t *c, const djn_gcache_key_t *k) {
    pthread_mutex_lock(&c->mu);
    djn_gcache_entry_t *e = s_find(c, k);
    if (e && e->graph) {
        s_unlink(c, e);
        s_push_front(c, e);
        e->refs++;
        c->st.hits++;
    } else {
        e = NULL;
        c->st.misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return e;
}

djn_dev_graph_t *djn_gcache_graph(const djn_gcache_entry_t *e) {
    return e->graph;
}

uint64_t djn_gcache_slab_base(const djn_gcache_entry_t *e) {
    return e->base;
}

void djn_gcache_release(djn_gcache_t *c, djn_gcache_entry_t **e_p) {
    if (!e_p || !*e_p)
        return;
    pthread_mutex_lock(&c->mu);
    s_unref(*e_p);
    pthread_mutex_unlock(&c->mu);
    *e_p = NULL;
}

bool djn_gcache_want_capture(djn_gcache_t *c, const djn_gcache_key_t *k) {
    pthread_mutex_lock(&c->mu);
    djn_gcache_entry_t *e = s_touch(c, k);
    bool want = false;
    if (e) {
        if (e->seen < UINT32_MAX)
            e->seen++;
        want = !e->graph && !e->refused && e->seen >= c->capture_after;
    }
    pthread_mutex_unlock(&c->mu);
    return want;
}

djn_status_t djn_gcache_insert(djn_gcache_t *c, const djn_gcache_key_t *k, djn_dev_t *dev,
                               djn_dev_graph_t *g, uint64_t slab_base) {
    pthread_mutex_lock(&c->mu);
    djn_gcache_entry_t *e = s_touch(c, k);
    djn_status_t st = DJN_OK;
    if (!e) {
        st = DJN_ERR_NOMEM;
    } else if (e->graph || e->refused) {
        st = DJN_ERR_ARGS; /* another worker filed one first, or the key is refused */
    } else {
        e->graph = g;
        e->dev = dev;
        e->base = slab_base;
        c->st.graphs++;
        c->st.captures++;
        g = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    if (g)
        djn_dev_graph_destroy(dev, g); /* not filed */
    return st;
}

void djn_gcache_refuse(djn_gcache_t *c, const djn_gcache_key_t *k) {
    pthread_mutex_lock(&c->mu);
    djn_gcache_entry_t *e = s_touch(c, k);
    if (e && !e->refused) {
        e->refused = true;
        c->st.refused++;
    }
    pthread_mutex_unlock(&c->mu);
}

void djn_gcache_drop_plan(djn_gcache_t *c, const uint64_t fp[2], uint32_t device, uint64_t sid) {
    pthread_mutex_lock(&c->mu);
    for (djn_gcache_entry_t *e = c->head, *nx; e; e = nx) {
        nx = e->next;
        if (e->key.fp[0] == fp[0] && e->key.fp[1] == fp[1] && e->key.device == device &&
            e->key.sid == sid) {
            s_remove(c, e);
            c->st.dropped++;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

void djn_gcache_drop_sessions(djn_gcache_t *c, const uint64_t *sids, uint32_t n) {
    pthread_mutex_lock(&c->mu);
    for (djn_gcache_entry_t *e = c->head, *nx; e; e = nx) {
        nx = e->next;
        for (uint32_t i = 0; i < n; i++)
            if (e->key.sid == sids[i]) {
                s_remove(c, e);
                c->st.dropped++;
                break;
            }
    }
    pthread_mutex_unlock(&c->mu);
}

void djn_gcache_tlb_drop_fn(void *ctx, const uint64_t fp[2], uint32_t dev, uint64_t sid) {
    djn_gcache_drop_plan(ctx, fp, dev, sid);
}

void djn_gcache_stats(djn_gcache_t *c, djn_gcache_stats_t *out) {
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    pthread_mutex_unlock(&c->mu);
}
