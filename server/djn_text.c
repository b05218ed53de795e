/* djn_text.c: Text segment index (see djn_text.h).
 *
 * Three djn_maps lead to the entries: a digest of (key, dev) to a chain of entries
 * sharing that digest (`next`), a digest of (plain hash, dev) to a chain (`pnext`), and
 * the storage's identity to its entry. A digest collision costs a comparison, never a
 * wrong answer; a collision of the keyed hash itself costs a byte comparison (the
 * caller's `same`), never a wrong share. One mutex guards the table: only uploads, HAVE,
 * binds of shared storages and frees take it, never op execution.
 *
 * Tenants are interned to small ids; an entry's owners are the ids that uploaded its
 * bytes (or were granted it by HAVE, which needs ownership already).
 *
 * The cache of unreferenced entries, in steps:
 *   1. the release of an entry's last reference links it at the tail of an LRU list
 *      (it stays in the three maps, so every lookup still finds it) when the budget is
 *      not 0 and the entry alone fits it;
 *   2. entries are unlinked from the head, and freed outside the lock, while the cached
 *      bytes exceed the budget;
 *   3. any lookup that hands out a reference (share, HAVE, by storage, by key) takes a
 *      cached entry off the list first: referenced entries are never evicted.
 * Invariant: an entry is on the list exactly when refs == 0, and cached_bytes is the sum
 * of the list's sizes. Eviction is per entry, not per model: a model's tensors are
 * released together, so they leave together too, oldest model first. */
#include "djn_text.h"

#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t by value: counted, aligned memory */
#include <xxhash.h>

#include "djn_map.h"
#include "djn_mem.h"
#include "djn_vec.h"

#define S_SECRET_BYTES 192

typedef struct s_entry {
    struct s_entry *next, *pnext;
    djn_text_key_t key;
    uint64_t plain[2];
    djn_stor_t *stor;
    uint64_t nbytes, refs;
    djn_vec_t owners;                    /* uint32_t tenant ids */
    struct s_entry *lru_prev, *lru_next; /* on the cache list while refs == 0 */
} s_entry_t;

struct djn_text {
    pthread_mutex_t mu;
    uint8_t secret[S_SECRET_BYTES];
    djn_map_t by_key, by_plain, by_stor; /* digest -> chain head; storage id -> entry */
    uint32_t serial;
    djn_vec_t tenants; /* char[64] names by id */
    djn_text_stats_t st;
    uint64_t cache_budget;
    djn_text_store_t store;         /* save_fn NULL: none */
    s_entry_t *lru_head, *lru_tail; /* unreferenced entries, least recently released first */
};

/* Take a cached entry off the list: it is about to get a reference. */
static void s_lru_unlink(djn_text_t *t, s_entry_t *e) {
    if (e->refs)
        return;
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        t->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        t->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
    t->st.cached_entries--;
    t->st.cached_bytes -= e->nbytes;
}

static void s_lru_push(djn_text_t *t, s_entry_t *e) {
    e->lru_next = NULL;
    e->lru_prev = t->lru_tail;
    if (t->lru_tail)
        t->lru_tail->lru_next = e;
    else
        t->lru_head = e;
    t->lru_tail = e;
    t->st.cached_entries++;
    t->st.cached_bytes += e->nbytes;
}

static uint64_t s_mix(uint64_t a, uint64_t b, uint32_t dev) {
    uint64_t d = a ^ (b * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)dev << 56);
    return d ? d : 1; /* 0 is the map's empty key */
}

static uint64_t s_kdigest(const djn_text_key_t *k) {
    return s_mix(k->hi, k->lo, k->dev);
}

djn_text_t *djn_text_new(void) {
    djn_text_t *t = djn_calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (getrandom(t->secret, sizeof t->secret, 0) != (ssize_t)sizeof t->secret) {
        djn_free(t, sizeof(*t));
        return NULL;
    }
    pthread_mutex_init(&t->mu, NULL);
    t->tenants = (djn_vec_t){NULL, 0, 0, 64};
    return t;
}

static void s_entry_free(s_entry_t *e) {
    djn_stor_release(e->stor);
    djn_vec_release(&e->owners);
    djn_free(e, sizeof(*e));
}

void djn_text_destroy(djn_text_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_text_t *t = *self_p;
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&t->by_stor, &it, &k, &v);)
        s_entry_free((s_entry_t *)(uintptr_t)v);
    djn_map_release(&t->by_key);
    djn_map_release(&t->by_plain);
    djn_map_release(&t->by_stor);
    djn_vec_release(&t->tenants);
    pthread_mutex_destroy(&t->mu);
    memset(t->secret, 0, sizeof t->secret);
    djn_free(t, sizeof(*t));
    *self_p = NULL;
}

/* Both hashes in one pass over memory: each block of S_HASH_BLOCK bytes is hashed twice
 * while it sits in the core's L2 cache, instead of the whole buffer twice (64 MiB on the
 * loaded 2-core VM: two passes 21-26 ms, fused 10-25 ms). An upload in chunks hashes each
 * chunk just after the kernel wrote it, when it is in cache anyway. Below
 * S_HASH_STREAM_MIN the one-shot calls are cheaper than the streaming state. */
#define S_HASH_BLOCK (256u << 10)
#define S_HASH_STREAM_MIN (1u << 20)

struct djn_text_hasher {
    XXH3_state_t keyed, plain; /* 64-byte aligned members (XXH3_state_t asks for it) */
    void *mem;                 /* the counted allocation this struct sits in */
};

djn_text_hasher_t *djn_text_hasher_new(const djn_text_t *t) {
    size_t sz = sizeof(djn_text_hasher_t) + 64;
    void *mem = djn_malloc(sz);
    if (!mem)
        return NULL;
    djn_text_hasher_t *h = (djn_text_hasher_t *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    h->mem = mem;
    XXH3_128bits_reset_withSecret(&h->keyed, t->secret, sizeof t->secret);
    XXH3_128bits_reset(&h->plain);
    return h;
}

void djn_text_hasher_update(djn_text_hasher_t *h, const void *bytes, uint64_t n) {
    const uint8_t *p = bytes;
    while (n) {
        size_t k = n < S_HASH_BLOCK ? (size_t)n : S_HASH_BLOCK;
        XXH3_128bits_update(&h->keyed, p, k);
        XXH3_128bits_update(&h->plain, p, k);
        p += k;
        n -= k;
    }
}

void djn_text_hasher_final(djn_text_hasher_t *h, djn_text_key_t *key, uint64_t plain[2]) {
    XXH128_hash_t k = XXH3_128bits_digest(&h->keyed), p = XXH3_128bits_digest(&h->plain);
    key->hi = k.high64;
    key->lo = k.low64;
    key->serial = 0;
    plain[0] = p.high64;
    plain[1] = p.low64;
}

void djn_text_hasher_destroy(djn_text_hasher_t **h_p) {
    if (!h_p || !*h_p)
        return;
    djn_free((*h_p)->mem, sizeof(djn_text_hasher_t) + 64);
    *h_p = NULL;
}

void djn_text_hash(const djn_text_t *t, const void *bytes, uint64_t n, djn_text_key_t *key,
                   uint64_t plain[2]) {
    if (n >= S_HASH_STREAM_MIN) {
        djn_text_hasher_t *h = djn_text_hasher_new(t);
        if (h) {
            djn_text_hasher_update(h, bytes, n);
            djn_text_hasher_final(h, key, plain);
            djn_text_hasher_destroy(&h);
            return;
        }
    }
    XXH128_hash_t h = XXH3_128bits_withSecret(bytes, (size_t)n, t->secret, sizeof t->secret);
    key->hi = h.high64;
    key->lo = h.low64;
    key->serial = 0;
    XXH128_hash_t p = XXH3_128bits(bytes, (size_t)n);
    plain[0] = p.high64;
    plain[1] = p.low64;
}

uint32_t djn_text_tenant(djn_text_t *t, const char *name) {
    pthread_mutex_lock(&t->mu);
    uint32_t id;
    for (id = 0; id < t->tenants.len; id++)
        if (!strncmp((const char *)t->tenants.data + 64 * id, name, 63))
            break;
    if (id == t->tenants.len) {
        char n[64] = {0};
        strncpy(n, name, 63);
        if (!djn_vec_push(&t->tenants, n))
            id = UINT32_MAX; /* out of memory: an id that owns nothing */
    }
    pthread_mutex_unlock(&t->mu);
    return id;
}

/* The name of a tenant id into out[64] (lock held). */
static void s_tenant_name(const djn_text_t *t, uint32_t id, char out[64]) {
    out[0] = 0;
    if (id < t->tenants.len)
        memcpy(out, (const char *)t->tenants.data + 64 * id, 64);
    out[63] = 0;
}

static bool s_owned(const s_entry_t *e, uint32_t tenant) {
    for (size_t i = 0; i < e->owners.len; i++)
        if (DJN_VEC_AT(&e->owners, uint32_t, i) == tenant)
            return true;
    return false;
}

static void s_add_owner(s_entry_t *e, uint32_t tenant) {
    if (tenant != UINT32_MAX && !s_owned(e, tenant))
        djn_vec_push(&e->owners, &tenant); /* OOM: the tenant just re-uploads next time */
}

static s_entry_t *s_chain(djn_map_t *m, uint64_t digest) {
    uint64_t head = 0;
    djn_map_get(m, digest, &head);
    return (s_entry_t *)(uintptr_t)head;
}

/* The entry under key whose content `same` confirms, now referenced once more and
 * owned by tenant too, with *key its key; NULL if none (lock held). */
static s_entry_t *s_share(djn_text_t *t, djn_text_key_t *key, uint32_t tenant,
                          djn_text_same_fn same, void *ctx) {
    s_entry_t *e = s_chain(&t->by_key, s_kdigest(key));
    for (; e; e = e->next) {
        if (e->key.hi != key->hi || e->key.lo != key->lo || e->key.dev != key->dev)
            continue;
        if (same(ctx, e->stor)) /* the bytes themselves, not only their hash */
            break;
    }
    if (e) {
        s_lru_unlink(t, e);
        e->refs++;
        t->st.refs++;
        t->st.hits++;
        t->st.verified_bytes += e->nbytes;
        s_add_owner(e, tenant);
        *key = e->key;
    }
    return e;
}

djn_stor_t *djn_text_share(djn_text_t *t, djn_text_key_t *key, uint32_t tenant,
                           djn_text_same_fn same, void *ctx) {
    pthread_mutex_lock(&t->mu);
    s_entry_t *e = s_share(t, key, tenant, same, ctx);
    pthread_mutex_unlock(&t->mu);
    return e ? e->stor : NULL;
}

djn_stor_t *djn_text_insert(djn_text_t *t, djn_text_key_t *key, const uint64_t plain[2],
                            uint32_t tenant, djn_stor_t *stor, djn_text_same_fn same, void *ctx) {
    s_entry_t *e = djn_calloc(1, sizeof(*e));
    djn_stor_t *r = e ? djn_stor_retain(stor) : NULL;
    if (!r) {
        djn_free(e, sizeof(*e));
        return NULL;
    }
    e->owners = DJN_VEC(uint32_t);
    e->stor = r;
    e->nbytes = djn_stor_nbytes(r);
    e->refs = 1;
    e->plain[0] = plain[0];
    e->plain[1] = plain[1];
    pthread_mutex_lock(&t->mu);
    s_entry_t *had = same ? s_share(t, key, tenant, same, ctx) : NULL;
    if (had) { /* filed meanwhile by another thread's upload of the same bytes */
        pthread_mutex_unlock(&t->mu);
        s_entry_free(e);
        return had->stor;
    }
    key->serial = ++t->serial;
    e->key = *key;
    uint64_t kd = s_kdigest(key), pd = s_mix(plain[0], plain[1], key->dev);
    s_entry_t *kh = s_chain(&t->by_key, kd), *ph = s_chain(&t->by_plain, pd);
    bool ok = djn_map_put(&t->by_key, kd, (uint64_t)(uintptr_t)e);
    ok = ok && djn_map_put(&t->by_plain, pd, (uint64_t)(uintptr_t)e);
    ok = ok && djn_map_put(&t->by_stor, djn_stor_id(r), (uint64_t)(uintptr_t)e);
    if (!ok) { /* put every chain head back as it was */
        if (kh)
            djn_map_put(&t->by_key, kd, (uint64_t)(uintptr_t)kh);
        else
            djn_map_del(&t->by_key, kd, NULL);
        if (ph)
            djn_map_put(&t->by_plain, pd, (uint64_t)(uintptr_t)ph);
        else
            djn_map_del(&t->by_plain, pd, NULL);
        djn_map_del(&t->by_stor, djn_stor_id(r), NULL);
        pthread_mutex_unlock(&t->mu);
        s_entry_free(e);
        return NULL;
    }
    e->next = kh;
    e->pnext = ph;
    s_add_owner(e, tenant);
    t->st.entries++;
    t->st.bytes += e->nbytes;
    t->st.refs++;
    t->st.inserts++;
    djn_text_store_t store = t->store;
    char name[64];
    s_tenant_name(t, tenant, name);
    pthread_mutex_unlock(&t->mu);
    if (store.save_fn && tenant != UINT32_MAX) /* the entry holds a reference: r stays */
        store.save_fn(store.ctx, key, plain, name, r);
    return r;
}

djn_stor_t *djn_text_acquire_owned(djn_text_t *t, uint32_t dev, const uint64_t plain[2],
                                   uint32_t tenant, djn_text_key_t *key_out) {
    pthread_mutex_lock(&t->mu);
    s_entry_t *e = s_chain(&t->by_plain, s_mix(plain[0], plain[1], dev));
    for (; e; e = e->pnext)
        if (e->plain[0] == plain[0] && e->plain[1] == plain[1] && e->key.dev == dev &&
            s_owned(e, tenant))
            break;
    if (e) {
        s_lru_unlink(t, e);
        e->refs++;
        t->st.refs++;
        t->st.hits++;
        *key_out = e->key;
    }
    djn_text_store_t store = t->store;
    char name[64];
    s_tenant_name(t, tenant, name);
    pthread_mutex_unlock(&t->mu);
    if (e || !store.load_fn || tenant == UINT32_MAX)
        return e ? e->stor : NULL;
    /* not in memory: content this tenant saved before the server restarted? */
    djn_text_key_t key = {0, 0, dev, 0};
    djn_stor_t *stor = store.load_fn(store.ctx, t, dev, plain, name, &key);
    if (!stor)
        return NULL;
    key.dev = dev;
    djn_stor_t *filed = djn_text_insert(t, &key, plain, tenant, stor, NULL, NULL);
    djn_stor_release(stor);
    if (filed)
        *key_out = key;
    return filed;
}

uint64_t djn_text_held(djn_text_t *t, uint32_t dev, const uint64_t plain[2], uint64_t nbytes,
                       uint32_t tenant) {
    uint64_t held = 0;
    pthread_mutex_lock(&t->mu);
    for (s_entry_t *e = s_chain(&t->by_plain, s_mix(plain[0], plain[1], dev)); e; e = e->pnext)
        if (e->plain[0] == plain[0] && e->plain[1] == plain[1] && e->key.dev == dev &&
            e->nbytes == nbytes && s_owned(e, tenant)) {
            held = e->nbytes;
            break;
        }
    pthread_mutex_unlock(&t->mu);
    return held;
}

djn_stor_t *djn_text_acquire_storage(djn_text_t *t, const djn_stor_t *stor,
                                     djn_text_key_t *key_out) {
    uint64_t v;
    pthread_mutex_lock(&t->mu);
    s_entry_t *e =
        djn_map_get(&t->by_stor, djn_stor_id(stor), &v) ? (s_entry_t *)(uintptr_t)v : NULL;
    if (e) {
        s_lru_unlink(t, e);
        e->refs++;
        t->st.refs++;
        *key_out = e->key;
    }
    pthread_mutex_unlock(&t->mu);
    return e ? e->stor : NULL;
}

/* Unlink e from the chain that `link_of` follows in map m under digest d. */
static void s_unchain(djn_map_t *m, uint64_t d, s_entry_t *e, bool plain_chain) {
    s_entry_t *head = s_chain(m, d), *prev = NULL;
    for (s_entry_t *x = head; x; prev = x, x = plain_chain ? x->pnext : x->next) {
        if (x != e)
            continue;
        s_entry_t *after = plain_chain ? e->pnext : e->next;
        if (prev) {
            if (plain_chain)
                prev->pnext = after;
            else
                prev->next = after;
        } else if (after) {
            djn_map_put(m, d, (uint64_t)(uintptr_t)after); /* replaces: never allocates */
        } else {
            djn_map_del(m, d, NULL);
        }
        return;
    }
}

static s_entry_t *s_find_key(djn_text_t *t, const djn_text_key_t *key) {
    s_entry_t *e = s_chain(&t->by_key, s_kdigest(key));
    while (e && (e->key.hi != key->hi || e->key.lo != key->lo || e->key.dev != key->dev ||
                 e->key.serial != key->serial))
        e = e->next;
    return e;
}

/* Remove an entry from the maps (caller holds the lock; it frees e outside). */
static void s_unfile(djn_text_t *t, s_entry_t *e) {
    s_unchain(&t->by_key, s_kdigest(&e->key), e, false);
    s_unchain(&t->by_plain, s_mix(e->plain[0], e->plain[1], e->key.dev), e, true);
    djn_map_del(&t->by_stor, djn_stor_id(e->stor), NULL);
    t->st.entries--;
    t->st.bytes -= e->nbytes;
}

/* Step 2: the cache's oldest entries out while it is over budget; returns them linked
 * through lru_next, to be freed outside the lock. */
static s_entry_t *s_evict(djn_text_t *t) {
    s_entry_t *out = NULL;
    while (t->lru_head && t->st.cached_bytes > t->cache_budget) {
        s_entry_t *e = t->lru_head;
        s_lru_unlink(t, e);
        s_unfile(t, e);
        t->st.evictions++;
        e->lru_next = out;
        out = e;
    }
    return out;
}

static void s_free_list(s_entry_t *e) {
    while (e) {
        s_entry_t *next = e->lru_next;
        s_entry_free(e); /* outside the lock: freeing device memory scrubs it */
        e = next;
    }
}

void djn_text_release(djn_text_t *t, const djn_text_key_t *key) {
    pthread_mutex_lock(&t->mu);
    s_entry_t *e = s_find_key(t, key), *dead = NULL;
    if (e && e->refs) {
        t->st.refs--;
        if (--e->refs == 0) {
            if (t->cache_budget && e->nbytes <= t->cache_budget) { /* step 1 */
                s_lru_push(t, e);
                dead = s_evict(t);
            } else {
                s_unfile(t, e);
                e->lru_next = NULL;
                dead = e;
            }
        }
    }
    pthread_mutex_unlock(&t->mu);
    s_free_list(dead);
}

djn_stor_t *djn_text_acquire_key(djn_text_t *t, const djn_text_key_t *key) {
    pthread_mutex_lock(&t->mu);
    s_entry_t *e = s_find_key(t, key);
    if (e) {
        s_lru_unlink(t, e);
        e->refs++;
        t->st.refs++;
        t->st.hits++;
    }
    pthread_mutex_unlock(&t->mu);
    return e ? e->stor : NULL;
}

void djn_text_set_store(djn_text_t *t, const djn_text_store_t *store) {
    pthread_mutex_lock(&t->mu);
    t->store = store ? *store : (djn_text_store_t){0};
    pthread_mutex_unlock(&t->mu);
}

void djn_text_set_cache(djn_text_t *t, uint64_t bytes) {
    pthread_mutex_lock(&t->mu);
    t->cache_budget = bytes;
    s_entry_t *dead = s_evict(t);
    pthread_mutex_unlock(&t->mu);
    s_free_list(dead);
}

void djn_text_stats(djn_text_t *t, djn_text_stats_t *out) {
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    pthread_mutex_unlock(&t->mu);
}
