/* djn_text.c: Text segment index (see djn_text.h).
 *
 * A djn_map keyed by a 64-bit digest of (hash, device) holds the head of a short chain
 * of entries, so a digest collision costs a comparison, never a wrong answer. One mutex
 * guards the table: acquire/insert/release are a handful of instructions, and only
 * uploads and frees of Text tensors take it, never op execution. */
#include "djn_text.h"

#include <pthread.h>
#include <xxhash.h>

#include "djn_map.h"
#include "djn_mem.h"

typedef struct s_entry {
    struct s_entry *next;
    djn_text_key_t key;
    djn_stor_t *stor;
    uint64_t nbytes, refs;
} s_entry_t;

struct djn_text {
    pthread_mutex_t mu;
    djn_map_t heads; /* digest -> s_entry_t* */
    djn_text_stats_t st;
};

static uint64_t s_digest(const djn_text_key_t *k) {
    uint64_t d = k->hi ^ (k->lo * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)k->dev << 56);
    return d ? d : 1; /* 0 is the map's empty key */
}

static s_entry_t *s_find(djn_text_t *t, const djn_text_key_t *k, s_entry_t ***link) {
    uint64_t head = 0;
    djn_map_get(&t->heads, s_digest(k), &head);
    s_entry_t *e = (s_entry_t *)(uintptr_t)head;
    if (link)
        *link = NULL;
    for (; e; e = e->next)
        if (e->key.hi == k->hi && e->key.lo == k->lo && e->key.dev == k->dev)
            return e;
    return NULL;
}

djn_text_t *djn_text_new(void) {
    djn_text_t *t = djn_calloc(1, sizeof(*t));
    if (t)
        pthread_mutex_init(&t->mu, NULL);
    return t;
}

void djn_text_destroy(djn_text_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_text_t *t = *self_p;
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&t->heads, &it, &k, &v);) {
        s_entry_t *e = (s_entry_t *)(uintptr_t)v;
        while (e) {
            s_entry_t *n = e->next;
            djn_stor_release(e->stor);
            djn_free(e, sizeof(*e));
            e = n;
        }
    }
    djn_map_release(&t->heads);
    pthread_mutex_destroy(&t->mu);
    djn_free(t, sizeof(*t));
    *self_p = NULL;
}

djn_stor_t *djn_text_acquire(djn_text_t *t, const djn_text_key_t *k) {
    pthread_mutex_lock(&t->mu);
    s_entry_t *e = s_find(t, k, NULL);
    if (e) {
        e->refs++;
        t->st.refs++;
        t->st.hits++;
    }
    pthread_mutex_unlock(&t->mu);
    return e ? e->stor : NULL;
}

djn_stor_t *djn_text_insert(djn_text_t *t, const djn_text_key_t *k, djn_stor_t *stor) {
    pthread_mutex_lock(&t->mu);
    s_entry_t *e = s_find(t, k, NULL);
    if (e) {
        e->refs++;
        t->st.refs++;
        t->st.hits++;
        pthread_mutex_unlock(&t->mu);
        return e->stor;
    }
    e = djn_calloc(1, sizeof(*e));
    djn_stor_t *r = e ? djn_stor_retain(stor) : NULL;
    uint64_t d = s_digest(k), head = 0;
    djn_map_get(&t->heads, d, &head);
    if (!e || !r || !djn_map_put(&t->heads, d, (uint64_t)(uintptr_t)e)) {
        if (r)
            djn_stor_release(r);
        djn_free(e, sizeof(*e));
        pthread_mutex_unlock(&t->mu);
        return NULL;
    }
    e->next = (s_entry_t *)(uintptr_t)head;
    e->key = *k;
    e->stor = r;
    e->nbytes = djn_stor_nbytes(r);
    e->refs = 1;
    t->st.entries++;
    t->st.bytes += e->nbytes;
    t->st.refs++;
    t->st.inserts++;
    pthread_mutex_unlock(&t->mu);
    return r;
}

void djn_text_release(djn_text_t *t, const djn_text_key_t *k) {
    pthread_mutex_lock(&t->mu);
    uint64_t d = s_digest(k), head = 0;
    djn_map_get(&t->heads, d, &head);
    s_entry_t **pp = (s_entry_t **)&head, *e = *pp;
    s_entry_t *prev = NULL;
    for (e = (s_entry_t *)(uintptr_t)head; e; prev = e, e = e->next)
        if (e->key.hi == k->hi && e->key.lo == k->lo && e->key.dev == k->dev)
            break;
    (void)pp;
    if (e && --e->refs == 0) {
        if (prev)
            prev->next = e->next;
        else if (e->next)
            djn_map_put(&t->heads, d, (uint64_t)(uintptr_t)e->next);
        else
            djn_map_del(&t->heads, d, NULL);
        t->st.entries--;
        t->st.bytes -= e->nbytes;
        djn_stor_release(e->stor);
        djn_free(e, sizeof(*e));
    }
    if (e)
        t->st.refs--;
    pthread_mutex_unlock(&t->mu);
}

void djn_text_stats(djn_text_t *t, djn_text_stats_t *out) {
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    pthread_mutex_unlock(&t->mu);
}

void djn_text_hash(const void *bytes, uint64_t n, uint64_t *hi, uint64_t *lo) {
    XXH128_hash_t h = XXH3_128bits(bytes, (size_t)n);
    *hi = h.high64;
    *lo = h.low64;
}
