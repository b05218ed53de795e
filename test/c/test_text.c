/* test_text.c: the Text segment's index and its cache of unreferenced entries
 * (server/djn_text.c), with the device storages stubbed by counted host buffers.
 *
 *   1. Budget 0: an entry dies with its last reference (the behaviour before the cache).
 *   2. Budget B: the last release keeps the entry; every lookup that hands out a
 *      reference (by key, by content and tenant, by storage, by sharing) revives it.
 *   3. LRU: past the budget the least recently released entries go first; an entry
 *      larger than the whole budget is not kept; shrinking the budget evicts.
 *   4. The store: uploads are saved with their tenant's name (model content, with no
 *      owner, never); a HAVE miss asks the store and files what it returns. */
#include "djn_test.h"

#include <xxhash.h>

#include "djn_exec.h"
#include "djn_text.h"

/* ---- a storage stub: a counted buffer with a reference count ---- */
struct djn_stor {
    uint64_t n;
    int refs;
    uint8_t *bytes;
};
static int s_live;

static djn_stor_t *s_new(uint64_t n, uint8_t fill) {
    djn_stor_t *s = djn_calloc(1, sizeof(*s));
    s->n = n;
    s->refs = 1;
    s->bytes = djn_malloc(n);
    memset(s->bytes, fill, n);
    s_live++;
    return s;
}
djn_stor_t *djn_stor_retain(djn_stor_t *s) {
    s->refs++;
    return s;
}
void djn_stor_release(djn_stor_t *s) {
    if (s && --s->refs == 0) {
        djn_free(s->bytes, s->n);
        djn_free(s, sizeof(*s));
        s_live--;
    }
}
uint64_t djn_stor_nbytes(const djn_stor_t *s) {
    return s->n;
}
uint64_t djn_stor_id(const djn_stor_t *s) {
    return (uint64_t)(uintptr_t)s;
}

/* File fresh content of n bytes (fill) for tenant; the caller holds one reference. */
static djn_stor_t *s_file(djn_text_t *t, uint64_t n, uint8_t fill, uint32_t tenant,
                          djn_text_key_t *key, uint64_t plain[2]) {
    djn_stor_t *s = s_new(n, fill);
    *key = (djn_text_key_t){0, 0, 0, 0};
    djn_text_hash(t, s->bytes, n, key, plain);
    djn_stor_t *filed = djn_text_insert(t, key, plain, tenant, s, NULL, NULL);
    djn_stor_release(s);
    return filed;
}

static bool s_same_fn(void *ctx, djn_stor_t *filed) {
    djn_stor_t *mine = ctx;
    return filed->n == mine->n && !memcmp(filed->bytes, mine->bytes, mine->n);
}

static void test_budget_zero(void) {
    djn_text_t *t = djn_text_new();
    djn_text_key_t k;
    uint64_t p[2];
    CHECK(s_file(t, 100, 1, 0, &k, p) != NULL);
    djn_text_release(t, &k);
    djn_text_stats_t st;
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.cached_entries, 0);
    CHECK_EQ_INT(s_live, 0);
    CHECK(djn_text_acquire_key(t, &k) == NULL);
    djn_text_destroy(&t);
}

static void test_cached_and_revived(void) {
    djn_text_t *t = djn_text_new();
    djn_text_set_cache(t, 1000);
    uint32_t alice = djn_text_tenant(t, "alice");
    djn_text_key_t k, k2;
    uint64_t p[2];
    djn_stor_t *s = s_file(t, 100, 1, alice, &k, p);
    djn_text_release(t, &k);
    djn_text_stats_t st;
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.entries, 1);
    CHECK_EQ_INT(st.cached_entries, 1);
    CHECK_EQ_INT(st.cached_bytes, 100);
    CHECK_EQ_INT(st.refs, 0);
    /* by key */
    CHECK(djn_text_acquire_key(t, &k) == s);
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.cached_entries, 0);
    djn_text_release(t, &k);
    /* by content, for its owner only */
    CHECK(djn_text_acquire_owned(t, 0, p, djn_text_tenant(t, "bob"), &k2) == NULL);
    CHECK(djn_text_acquire_owned(t, 0, p, alice, &k2) == s);
    djn_text_release(t, &k2);
    /* by storage */
    CHECK(djn_text_acquire_storage(t, s, &k2) == s);
    djn_text_release(t, &k2);
    /* by sharing an identical upload */
    djn_stor_t *mine = s_new(100, 1);
    djn_text_key_t k3 = {0, 0, 0, 0};
    uint64_t p3[2];
    djn_text_hash(t, mine->bytes, 100, &k3, p3);
    CHECK(djn_text_share(t, &k3, alice, s_same_fn, mine) == s);
    djn_stor_release(mine);
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.cached_entries, 0);
    CHECK_EQ_INT(st.refs, 1);
    djn_text_release(t, &k3);
    djn_text_destroy(&t); /* frees cached entries too */
    CHECK_EQ_INT(s_live, 0);
}

/* Two uploads of the same bytes at once (a device's worker and its lane): both shares
 * missed, both insert; the second insert finds the first's entry and shares it, so one
 * copy is filed. A forged key over other bytes is never shared (the bytes decide). */
static void test_insert_shares_what_was_filed_meanwhile(void) {
    djn_text_t *t = djn_text_new();
    uint32_t alice = djn_text_tenant(t, "alice"), bob = djn_text_tenant(t, "bob");
    djn_stor_t *a = s_new(64, 7), *b = s_new(64, 7), *c = s_new(64, 8);
    djn_text_key_t ka = {0, 0, 0, 0}, kb = {0, 0, 0, 0};
    uint64_t pa[2], pb[2];
    djn_text_hash(t, a->bytes, 64, &ka, pa);
    djn_text_hash(t, b->bytes, 64, &kb, pb);
    CHECK(djn_text_share(t, &ka, alice, s_same_fn, a) == NULL);
    CHECK(djn_text_share(t, &kb, bob, s_same_fn, b) == NULL);
    CHECK(djn_text_insert(t, &ka, pa, alice, a, s_same_fn, a) == a);
    CHECK(djn_text_insert(t, &kb, pb, bob, b, s_same_fn, b) == a); /* shared, not filed */
    CHECK(kb.serial == ka.serial);
    djn_text_stats_t st;
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.entries, 1);
    CHECK_EQ_INT(st.bytes, 64);
    CHECK_EQ_INT(st.refs, 2);
    djn_text_key_t kc = ka; /* other bytes under a's key */
    kc.serial = 0;
    CHECK(djn_text_insert(t, &kc, pa, bob, c, s_same_fn, c) == c);
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.entries, 2);
    djn_text_release(t, &ka);
    djn_text_release(t, &kb);
    djn_text_release(t, &kc);
    djn_stor_release(a);
    djn_stor_release(b);
    djn_stor_release(c);
    djn_text_destroy(&t);
    CHECK_EQ_INT(s_live, 0);
}

static void test_lru_eviction(void) {
    djn_text_t *t = djn_text_new();
    djn_text_set_cache(t, 250);
    djn_text_key_t k[4];
    uint64_t p[4][2];
    for (int i = 0; i < 3; i++)
        s_file(t, 100, (uint8_t)(10 + i), 0, &k[i], p[i]);
    for (int i = 0; i < 3; i++)
        djn_text_release(t, &k[i]);
    djn_text_stats_t st;
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.cached_entries, 2);
    CHECK_EQ_INT(st.evictions, 1);
    CHECK(djn_text_acquire_key(t, &k[0]) == NULL); /* the oldest went */
    djn_stor_t *b = djn_text_acquire_key(t, &k[1]);
    CHECK(b != NULL);
    djn_text_release(t, &k[1]); /* now the most recent: C is the oldest */
    s_file(t, 100, 20, 0, &k[3], p[3]);
    djn_text_release(t, &k[3]);
    CHECK(djn_text_acquire_key(t, &k[2]) == NULL);
    CHECK(djn_text_acquire_key(t, &k[1]) != NULL);
    djn_text_release(t, &k[1]);
    /* larger than the budget: not kept */
    djn_text_key_t big;
    uint64_t pb[2];
    s_file(t, 300, 30, 0, &big, pb);
    djn_text_release(t, &big);
    CHECK(djn_text_acquire_key(t, &big) == NULL);
    /* shrinking the budget evicts */
    djn_text_set_cache(t, 0);
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.cached_bytes, 0);
    CHECK_EQ_INT(s_live, 0);
    djn_text_destroy(&t);
}

/* ---- the store ---- */
static int s_saved;
static char s_saved_tenant[64];
static djn_stor_t *s_disk; /* what "the disk" holds */

static void s_save_fn(void *ctx, const djn_text_key_t *key, const uint64_t plain[2],
                      const char *tenant, djn_stor_t *stor) {
    (void)ctx, (void)key, (void)plain, (void)stor;
    s_saved++;
    snprintf(s_saved_tenant, sizeof s_saved_tenant, "%s", tenant);
}

static djn_stor_t *s_load_fn(void *ctx, djn_text_t *t, uint32_t dev, const uint64_t plain[2],
                             const char *tenant, djn_text_key_t *key) {
    (void)ctx, (void)dev;
    if (!s_disk || strcmp(tenant, "alice"))
        return NULL;
    uint64_t p2[2];
    djn_text_hash(t, s_disk->bytes, s_disk->n, key, p2);
    if (p2[0] != plain[0] || p2[1] != plain[1])
        return NULL;
    return djn_stor_retain(s_disk);
}

static void test_store(void) {
    djn_text_t *t = djn_text_new();
    djn_text_store_t store = {NULL, s_save_fn, s_load_fn};
    djn_text_set_store(t, &store);
    uint32_t alice = djn_text_tenant(t, "alice"), bob = djn_text_tenant(t, "bob");
    djn_text_key_t k;
    uint64_t p[2];
    s_file(t, 64, 7, alice, &k, p);
    CHECK_EQ_INT(s_saved, 1);
    CHECK_STR(s_saved_tenant, "alice");
    djn_text_release(t, &k);
    s_file(t, 64, 8, UINT32_MAX, &k, p); /* model content: no owner, never saved */
    CHECK_EQ_INT(s_saved, 1);
    djn_text_release(t, &k);
    /* a HAVE for content only "the disk" holds */
    s_disk = s_new(64, 9);
    djn_text_key_t kd = {0, 0, 0, 0};
    uint64_t pd[2];
    djn_text_hash(t, s_disk->bytes, 64, &kd, pd);
    CHECK(djn_text_acquire_owned(t, 0, pd, bob, &kd) == NULL);
    djn_stor_t *got = djn_text_acquire_owned(t, 0, pd, alice, &kd);
    CHECK(got == s_disk);
    djn_text_stats_t st;
    djn_text_stats(t, &st);
    CHECK_EQ_INT(st.entries, 1);
    djn_text_release(t, &kd);
    djn_stor_release(s_disk);
    s_disk = NULL;
    djn_text_destroy(&t);
    CHECK_EQ_INT(s_live, 0);
}

/* 5. The streaming hasher (uploads in chunks): any split of the bytes gives the keyed
 *    and plain hashes of djn_text_hash over the whole, below and above the size from
 *    which djn_text_hash streams itself; the plain one is XXH3-128, what HAVE offers. */
static void test_hasher_matches_one_shot(void) {
    djn_text_t *t = djn_text_new();
    static const uint64_t sizes[] = {1, 4095, 65536, (1u << 20) + 3, (3u << 20) + 17};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        uint64_t n = sizes[k];
        uint8_t *p = djn_malloc(n);
        for (uint64_t i = 0; i < n; i++)
            p[i] = (uint8_t)(i * 2654435761u >> 13);
        djn_text_key_t whole = {0, 0, 0, 0};
        uint64_t plain[2];
        djn_text_hash(t, p, n, &whole, plain);
        XXH128_hash_t x = XXH3_128bits(p, n);
        CHECK(plain[0] == x.high64 && plain[1] == x.low64);
        static const uint64_t splits[] = {1, 4096, 1u << 20, 333333};
        for (size_t s = 0; s < sizeof splits / sizeof splits[0]; s++) {
            djn_text_hasher_t *h = djn_text_hasher_new(t);
            CHECK(h != NULL);
            for (uint64_t off = 0; h && off < n; off += splits[s])
                djn_text_hasher_update(h, p + off, n - off < splits[s] ? n - off : splits[s]);
            djn_text_key_t key = {0, 0, 0, 0};
            uint64_t pl[2] = {0, 0};
            if (h)
                djn_text_hasher_final(h, &key, pl);
            djn_text_hasher_destroy(&h);
            CHECK(h == NULL);
            CHECK(key.hi == whole.hi && key.lo == whole.lo && key.serial == 0);
            CHECK(pl[0] == plain[0] && pl[1] == plain[1]);
            CHECK(key.hi != pl[0] || key.lo != pl[1]); /* keyed: not the plain hash */
        }
        djn_free(p, n);
    }
    djn_text_destroy(&t);
}

int main(void) {
    RUN(test_hasher_matches_one_shot);
    RUN(test_budget_zero);
    RUN(test_cached_and_revived);
    RUN(test_insert_shares_what_was_filed_meanwhile);
    RUN(test_lru_eviction);
    RUN(test_store);
    return djn_test_report();
}
