/* test_tlb.c: the plan cache (server/djn_tlb.c).
 *
 * Covers: hits and misses keyed by (fingerprint, device, session); LRU eviction; a
 * worker's reference outliving eviction and session drops; duplicates, fragments without
 * a fingerprint or without nodes, and a disabled cache; the entry's compact copy of the
 * nodes (the decoded message is freed right after insert and the entry still reads
 * them); the slab plan copied by slot; djn_tlb_drop_sessions and
 * djn_tlb_session_entries; the `bytes` statistic, which must return to 0 once entries
 * are evicted, dropped or destroyed; the owner that pays for an entry (charged once,
 * released exactly once, 0 released at once when nothing is filed); allocation failure
 * at every step of an insert; and counted memory returning to its start. Graphs are built with
 * djn_graph_req_encode and decoded with djn_msg_decode, as the server receives them. */
#define _GNU_SOURCE /* memmem */
#include "djn_test.h"

#include "djn_codec.h"
#include "djn_sym.h"
#include "djn_tlb.h"
#include "djn_tmsg.h"

#define SID 7

static djn_msg_t *s_graph_at(uint64_t fp_hi, uint64_t fp_lo, uint32_t dev, int64_t off) {
    return neg_graph(fp_hi, fp_lo, dev, off, SID);
}
static djn_msg_t *s_graph(uint64_t fp_hi, uint64_t fp_lo, uint32_t dev) {
    return s_graph_at(fp_hi, fp_lo, dev, 0);
}

/* Insert a fresh graph for (fp, fp) under sid and free the message at once. */
static void s_insert(djn_tlb_t *t, uint64_t sid, uint64_t fp, uint32_t dev) {
    djn_msg_t *m = s_graph(fp, fp, dev);
    if (m)
        djn_tlb_insert(t, sid, &m->u.graph, NULL, NULL, 0, 0, NULL);
    djn_msg_free(&m);
}

/* An owner that keeps account of what the cache charged and released. */
typedef struct {
    bool refuse;
    int charges, releases, zero_releases;
    uint64_t charged; /* bytes held now */
} account_t;

static bool s_charge_fn(void *ctx, uint64_t bytes) {
    account_t *a = ctx;
    a->charges++;
    if (a->refuse)
        return false;
    a->charged += bytes;
    return true;
}
static void s_release_fn(void *ctx, uint64_t bytes) {
    account_t *a = ctx;
    a->releases++;
    a->zero_releases += bytes == 0;
    CHECK(bytes <= a->charged);
    a->charged -= bytes;
}

/* Like s_insert, on behalf of the owner `a`. */
static void s_insert_owned(djn_tlb_t *t, uint64_t sid, uint64_t fp, uint32_t dev, account_t *a) {
    djn_tlb_owner_t owner = {a, s_charge_fn, s_release_fn};
    djn_msg_t *m = s_graph(fp, fp, dev);
    if (m)
        djn_tlb_insert(t, sid, &m->u.graph, NULL, NULL, 0, 0, &owner);
    djn_msg_free(&m);
}

static void s_drop(djn_tlb_t *t, uint64_t sid) {
    djn_tlb_drop_sessions(t, &sid, 1);
}

static bool s_has(djn_tlb_t *t, uint64_t sid, uint64_t fp, uint32_t dev) {
    uint64_t key[2] = {fp, fp};
    djn_tlb_entry_t *e = djn_tlb_lookup(t, key, dev, sid);
    bool hit = e != NULL;
    djn_tlb_release(t, &e);
    return hit;
}

static djn_tlb_stats_t s_stats(djn_tlb_t *t) {
    djn_tlb_stats_t st;
    djn_tlb_stats(t, &st);
    return st;
}

static void test_hit_and_miss(void) {
    djn_tlb_t *t = djn_tlb_new(8);
    djn_msg_t *m = s_graph(1, 2, 0);
    CHECK(m && m->u.graph.nslots == 1);
    if (m)
        djn_tlb_insert(t, SID, &m->u.graph, NULL, NULL, 0, 0, NULL);
    djn_msg_free(&m);
    uint64_t fp[2] = {1, 2}, other[2] = {1, 3};
    djn_tlb_entry_t *e = djn_tlb_lookup(t, fp, 0, SID);
    CHECK(e != NULL);
    if (e) {
        const djn_graph_req_t *g = djn_tlb_graph(e);
        CHECK_EQ_INT(g->nnodes, 1);
        CHECK_STR(g->nodes[0].op, "aten::neg");
        CHECK(g->fp[0] == 1 && g->fp[1] == 2);
        CHECK_EQ_INT(g->nslots, 1);
        CHECK_EQ_INT(g->device, 0);
    }
    djn_tlb_release(t, &e);
    CHECK(e == NULL);
    djn_tlb_release(t, &e); /* NULL: no-op */
    CHECK(djn_tlb_lookup(t, other, 0, SID) == NULL);
    CHECK(djn_tlb_lookup(t, fp, 1, SID) == NULL);     /* another device */
    CHECK(djn_tlb_lookup(t, fp, 0, SID + 1) == NULL); /* another session: never shared */
    djn_tlb_stats_t st = s_stats(t);
    CHECK_EQ_INT(st.hits, 1);
    CHECK_EQ_INT(st.misses, 3);
    CHECK_EQ_INT(st.entries, 1);
    CHECK_EQ_INT(st.inserts, 1);
    CHECK_EQ_INT(st.capacity, 8);
    djn_tlb_destroy(&t);
    CHECK(t == NULL);
    djn_tlb_destroy(&t);
    djn_tlb_destroy(NULL);
}

/* The same fingerprint and device under two sessions are two entries. */
static void test_session_in_key(void) {
    djn_tlb_t *t = djn_tlb_new(8);
    s_insert(t, SID, 5, 0);
    s_insert(t, SID + 1, 5, 0);
    s_insert(t, SID, 5, 1); /* and another device */
    CHECK_EQ_INT(s_stats(t).entries, 3);
    CHECK(s_has(t, SID, 5, 0) && s_has(t, SID + 1, 5, 0) && s_has(t, SID, 5, 1));
    CHECK(!s_has(t, SID + 1, 5, 1));
    djn_tlb_destroy(&t);
}

/* The entry keeps its own compact copy: the message can go right after insert. */
static void test_entry_outlives_message(void) {
    djn_tlb_t *t = djn_tlb_new(4);
    djn_msg_t *m = s_graph_at(11, 12, 2, 3);
    CHECK(m != NULL);
    if (!m) {
        djn_tlb_destroy(&t);
        return;
    }
    const djn_node_t *src = m->u.graph.nodes;
    djn_tlb_insert(t, SID, &m->u.graph, NULL, NULL, 0, 0, NULL);
    djn_msg_free(&m); /* ASan: any pointer into the message arena would now be fatal */
    uint64_t fp[2] = {11, 12};
    djn_tlb_entry_t *e = djn_tlb_lookup(t, fp, 2, SID);
    CHECK(e != NULL);
    if (e) {
        const djn_graph_req_t *g = djn_tlb_graph(e);
        CHECK(g->nodes != src);
        CHECK_EQ_INT(g->nnodes, 1);
        CHECK_EQ_INT(g->device, 2);
        CHECK_STR(g->nodes[0].op, "aten::neg");
        CHECK_STR(g->nodes[0].overload, "");
        CHECK_EQ_INT(g->nodes[0].nargs, 1);
        CHECK_EQ_INT(g->nodes[0].nouts, 1);
        const djn_value_t *a = &g->nodes[0].args[0];
        CHECK(a->kind == DJN_V_TENSOR);
        if (a->kind == DJN_V_TENSOR)
            CHECK(a->u.t->handle == 0 && a->u.t->offset == 3 && a->u.t->sizes[0] == 4 &&
                  a->u.t->dtype == DJN_DTYPE_F32);
        CHECK(g->nodes[0].outs[0].kind == DJN_V_NONE);
        /* Only what a hit needs: no binds, allocs, uploads, frees or fetches. */
        CHECK(g->nbinds == 0 && g->binds == NULL);
        CHECK(g->nallocs == 0 && g->nuploads == 0 && g->nfrees == 0 && g->nfetches == 0);
        CHECK_EQ_INT(g->seed, -1);
        const uint64_t *place;
        uint32_t nslots;
        uint64_t peak;
        CHECK(!djn_tlb_plan(e, &place, &nslots, &peak)); /* inserted without a plan */
    }
    djn_tlb_release(t, &e);
    djn_tlb_destroy(&t);
}

/* The slab plan is copied by slot; the caller's array is its own again after insert. */
static void test_plan_copied(void) {
    djn_tlb_t *t = djn_tlb_new(4);
    djn_msg_t *m = s_graph(21, 22, 0);
    uint64_t place[3] = {1, 0, 4097};
    if (m)
        djn_tlb_insert(t, SID, &m->u.graph, place, NULL, 3, 8192, NULL);
    djn_msg_free(&m);
    place[0] = place[1] = place[2] = 99;
    uint64_t fp[2] = {21, 22};
    djn_tlb_entry_t *e = djn_tlb_lookup(t, fp, 0, SID);
    CHECK(e != NULL);
    if (e) {
        const uint64_t *p = NULL;
        uint32_t n = 0;
        uint64_t peak = 0;
        CHECK(djn_tlb_plan(e, &p, &n, &peak));
        CHECK_EQ_INT(n, 3);
        CHECK_EQ_INT(peak, 8192);
        if (p && n == 3)
            CHECK(p[0] == 1 && p[1] == 0 && p[2] == 4097);
    }
    djn_tlb_release(t, &e);
    /* A plan with zero slots is no plan. */
    m = s_graph(23, 23, 0);
    if (m)
        djn_tlb_insert(t, SID, &m->u.graph, place, NULL, 0, 100, NULL);
    djn_msg_free(&m);
    uint64_t fp2[2] = {23, 23};
    e = djn_tlb_lookup(t, fp2, 0, SID);
    CHECK(e != NULL);
    if (e) {
        const uint64_t *p;
        uint32_t n;
        uint64_t peak;
        CHECK(!djn_tlb_plan(e, &p, &n, &peak));
    }
    djn_tlb_release(t, &e);
    djn_tlb_destroy(&t);
}

static void test_lru_eviction(void) {
    djn_tlb_t *t = djn_tlb_new(3);
    for (uint64_t i = 1; i <= 3; i++)
        s_insert(t, SID, i, 0);
    CHECK(s_has(t, SID, 1, 0)); /* 1 becomes most recent */
    s_insert(t, SID, 4, 0);     /* evicts 2, the least recently used */
    CHECK(!s_has(t, SID, 2, 0));
    CHECK(s_has(t, SID, 1, 0));
    CHECK(s_has(t, SID, 3, 0));
    CHECK(s_has(t, SID, 4, 0));
    djn_tlb_stats_t st = s_stats(t);
    CHECK_EQ_INT(st.entries, 3);
    CHECK_EQ_INT(st.evictions, 1);
    CHECK_EQ_INT(st.inserts, 4);
    djn_tlb_destroy(&t);
}

static void test_reference_outlives_eviction(void) {
    djn_tlb_t *t = djn_tlb_new(1);
    s_insert(t, SID, 9, 0);
    uint64_t fp[2] = {9, 9};
    djn_tlb_entry_t *held = djn_tlb_lookup(t, fp, 0, SID);
    s_insert(t, SID, 10, 0); /* evicts 9 while a worker holds it */
    CHECK(djn_tlb_lookup(t, fp, 0, SID) == NULL);
    CHECK(held != NULL);
    if (held)
        CHECK_STR(djn_tlb_graph(held)->nodes[0].op, "aten::neg"); /* still readable */
    djn_tlb_stats_t st = s_stats(t);
    CHECK_EQ_INT(st.entries, 1);
    djn_tlb_release(t, &held);
    djn_tlb_destroy(&t);
}

static void test_duplicate_and_unfingerprinted(void) {
    djn_tlb_t *t = djn_tlb_new(4);
    s_insert(t, SID, 5, 0);
    djn_tlb_stats_t one = s_stats(t);
    s_insert(t, SID, 5, 0); /* already cached: not inserted again */
    s_insert(t, SID, 0, 0); /* no fingerprint: not cached */
    djn_msg_t *m = s_graph(6, 6, 0);
    if (m) { /* no nodes: nothing to cache */
        djn_graph_req_t g = m->u.graph;
        g.nnodes = 0;
        djn_tlb_insert(t, SID, &g, NULL, NULL, 0, 0, NULL);
    }
    djn_msg_free(&m);
    djn_tlb_stats_t st = s_stats(t);
    CHECK_EQ_INT(st.entries, 1);
    CHECK_EQ_INT(st.inserts, 1);
    CHECK_EQ_INT(st.bytes, one.bytes);
    CHECK(!s_has(t, SID, 0, 0));
    CHECK(!s_has(t, SID, 6, 0));
    djn_tlb_destroy(&t);
}

static void test_capacity_zero(void) {
    djn_tlb_t *t = djn_tlb_new(0);
    s_insert(t, SID, 3, 0);
    djn_tlb_stats_t st = s_stats(t);
    CHECK_EQ_INT(st.entries, 0); /* disabled: nothing kept */
    CHECK_EQ_INT(st.inserts, 0);
    CHECK_EQ_INT(st.bytes, 0);
    CHECK(!s_has(t, SID, 3, 0));
    djn_tlb_destroy(&t);
}

static void test_drop_session(void) {
    djn_tlb_t *t = djn_tlb_new(16);
    for (uint64_t i = 1; i <= 4; i++) {
        s_insert(t, SID, i, 0);
        s_insert(t, SID + 1, i, 0);
    }
    s_insert(t, SID, 9, 1); /* another device, same session */
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID), 5);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID + 1), 4);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID + 2), 0);
    djn_tlb_stats_t before = s_stats(t);
    CHECK_EQ_INT(before.entries, 9);
    /* A worker still runs one of the session's fragments when it closes. */
    uint64_t fp[2] = {2, 2};
    djn_tlb_entry_t *held = djn_tlb_lookup(t, fp, 0, SID);
    CHECK(held != NULL);
    s_drop(t, SID);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID), 0);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID + 1), 4);
    djn_tlb_stats_t after = s_stats(t);
    CHECK_EQ_INT(after.entries, 4);
    CHECK_EQ_INT(after.evictions, 0); /* a drop is not an eviction */
    CHECK(after.bytes < before.bytes);
    CHECK(!s_has(t, SID, 1, 0) && !s_has(t, SID, 9, 1));
    CHECK(s_has(t, SID + 1, 1, 0) && s_has(t, SID + 1, 4, 0));
    if (held)
        CHECK_STR(djn_tlb_graph(held)->nodes[0].op, "aten::neg");
    djn_tlb_release(t, &held);
    s_drop(t, SID); /* twice: nothing left to drop */
    s_drop(t, SID + 1);
    after = s_stats(t);
    CHECK_EQ_INT(after.entries, 0);
    CHECK_EQ_INT(after.bytes, 0);
    /* The session can file fragments again. */
    s_insert(t, SID, 1, 0);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID), 1);
    djn_tlb_destroy(&t);
}

/* `bytes` counts every entry's host bytes: equal entries count the same, and every way an
 * entry leaves (eviction, drop) takes its bytes with it. */
static void test_bytes_accounting(void) {
    djn_tlb_t *t = djn_tlb_new(3);
    CHECK_EQ_INT(s_stats(t).bytes, 0);
    s_insert(t, SID, 1, 0);
    uint64_t one = s_stats(t).bytes;
    CHECK(one >= 16384); /* at least the arena chunk the nodes were copied into */
    s_insert(t, SID, 2, 0);
    s_insert(t, SID + 1, 3, 0);
    CHECK_EQ_INT(s_stats(t).bytes, 3 * one);
    s_insert(t, SID, 4, 0); /* evicts 1 */
    CHECK_EQ_INT(s_stats(t).evictions, 1);
    CHECK_EQ_INT(s_stats(t).bytes, 3 * one);
    s_drop(t, SID);
    CHECK_EQ_INT(s_stats(t).bytes, one);
    s_drop(t, SID + 1);
    CHECK_EQ_INT(s_stats(t).bytes, 0);
    /* A plan adds its slots. */
    djn_msg_t *m = s_graph(5, 5, 0);
    uint64_t place[4] = {1, 2, 3, 4};
    if (m)
        djn_tlb_insert(t, SID, &m->u.graph, place, NULL, 4, 64, NULL);
    djn_msg_free(&m);
    CHECK_EQ_INT(s_stats(t).bytes, one + 4 * sizeof(uint64_t));
    djn_tlb_destroy(&t);
}

/* Every allocation of an insert may fail: the insert is then a no-op, the table stays
 * consistent and nothing leaks. */
static void test_insert_fault_injection(void) {
    int64_t mem0 = djn_mem_in_use();
    int failed = 0, kept = 0;
    for (int64_t n = 0; n < 16; n++) {
        djn_tlb_t *t = djn_tlb_new(4);
        s_insert(t, SID, 1, 0); /* the index exists already */
        djn_msg_t *m = s_graph(2, 2, 0);
        uint64_t place[2] = {1, 9};
        djn_mem_fail_after(n);
        if (m)
            djn_tlb_insert(t, SID, &m->u.graph, place, NULL, 2, 16, NULL);
        djn_mem_fail_after(-1);
        djn_msg_free(&m);
        djn_tlb_stats_t st = s_stats(t);
        bool hit = s_has(t, SID, 2, 0);
        CHECK_EQ_INT(st.entries, hit ? 2 : 1);
        CHECK_EQ_INT(st.inserts, hit ? 2 : 1);
        CHECK(s_has(t, SID, 1, 0));
        if (hit)
            kept++;
        else
            failed++;
        s_drop(t, SID);
        CHECK_EQ_INT(s_stats(t).bytes, 0);
        djn_tlb_destroy(&t);
        CHECK_EQ_INT(djn_mem_in_use(), mem0);
    }
    CHECK(failed >= 3); /* entry, arena, chunk, plan */
    CHECK(kept > 0);
    /* djn_tlb_new itself. */
    djn_mem_fail_after(0);
    djn_tlb_t *t = djn_tlb_new(4);
    djn_mem_fail_after(-1);
    CHECK(t == NULL);
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
}

/* The owner pays for what is filed: charged once per entry, released exactly once when
 * the entry is gone (eviction, drop, destroy, the last worker's release), and an insert
 * that files nothing releases 0 at once. */
static void test_owner_accounting(void) {
    djn_tlb_t *t = djn_tlb_new(2);
    account_t a = {0}, b = {0};
    s_insert_owned(t, SID, 1, 0, &a);
    djn_tlb_stats_t st = s_stats(t);
    CHECK_EQ_INT(a.charges, 1);
    CHECK_EQ_INT(a.releases, 0);
    CHECK_EQ_INT(a.charged, st.bytes); /* exactly the bytes the cache counts */
    uint64_t one = a.charged;
    CHECK(one > 0);
    /* Filing nothing: a duplicate, no fingerprint, no nodes. Each releases 0 at once. */
    s_insert_owned(t, SID, 1, 0, &a);
    s_insert_owned(t, SID, 0, 0, &a);
    CHECK_EQ_INT(a.releases, 2);
    CHECK_EQ_INT(a.zero_releases, 2);
    CHECK_EQ_INT(a.charged, one);
    djn_msg_t *m = s_graph(3, 3, 0);
    if (m) {
        djn_tlb_owner_t owner = {&a, s_charge_fn, s_release_fn};
        djn_graph_req_t g = m->u.graph;
        g.nnodes = 0;
        djn_tlb_insert(t, SID, &g, NULL, NULL, 0, 0, &owner);
    }
    djn_msg_free(&m);
    CHECK_EQ_INT(a.releases, 3);
    CHECK_EQ_INT(a.zero_releases, 3);
    /* A refusing owner: asked, refuses, nothing filed, 0 released once. */
    b.refuse = true;
    s_insert_owned(t, SID + 1, 4, 0, &b);
    CHECK_EQ_INT(b.charges, 1);
    CHECK_EQ_INT(b.releases, 1);
    CHECK_EQ_INT(b.zero_releases, 1);
    CHECK_EQ_INT(s_stats(t).entries, 1);
    CHECK(!s_has(t, SID + 1, 4, 0));
    b.refuse = false;
    /* Eviction releases the victim's bytes to its own owner. */
    s_insert_owned(t, SID + 1, 5, 0, &b);
    CHECK_EQ_INT(b.charged, one);
    CHECK(s_has(t, SID + 1, 5, 0)); /* 5 most recent: 1 is the LRU */
    s_insert_owned(t, SID + 1, 6, 0, &b);
    CHECK_EQ_INT(s_stats(t).evictions, 1);
    CHECK_EQ_INT(a.charged, 0);
    CHECK_EQ_INT(a.releases, 4);
    CHECK_EQ_INT(b.charged, 2 * one);
    /* A drop while a worker holds an entry: released when the worker lets go. */
    uint64_t fp5[2] = {5, 5};
    djn_tlb_entry_t *held = djn_tlb_lookup(t, fp5, 0, SID + 1);
    CHECK(held != NULL);
    int rel = b.releases;
    s_drop(t, SID + 1);
    CHECK_EQ_INT(b.releases, rel + 1); /* 6 went at once */
    CHECK_EQ_INT(b.charged, one);      /* 5 is still held */
    djn_tlb_release(t, &held);
    CHECK_EQ_INT(b.releases, rel + 2);
    CHECK_EQ_INT(b.charged, 0);
    /* Destroy releases what is left; the cache off releases 0. */
    s_insert_owned(t, SID, 7, 0, &a);
    CHECK_EQ_INT(a.charged, one);
    djn_tlb_destroy(&t);
    CHECK_EQ_INT(a.charged, 0);
    t = djn_tlb_new(0);
    s_insert_owned(t, SID, 8, 0, &a);
    CHECK_EQ_INT(a.zero_releases, 4);
    djn_tlb_destroy(&t);
    /* Every insert with an owner ended in exactly one release (a: 6 inserts, b: 3); only
     * the inserts that built an entry asked for a charge. */
    CHECK_EQ_INT(a.releases, 6);
    CHECK_EQ_INT(b.releases, 3);
    CHECK_EQ_INT(a.charges, 2);
    CHECK_EQ_INT(b.charges, 3);
    /* An owner without a charge_fn: nothing is asked, release still comes once. */
    t = djn_tlb_new(2);
    account_t c = {0};
    djn_tlb_owner_t release_only = {&c, NULL, s_release_fn};
    m = s_graph(9, 9, 0);
    c.charged = 1 << 20; /* so the release has something to take back */
    if (m)
        djn_tlb_insert(t, SID, &m->u.graph, NULL, NULL, 0, 0, &release_only);
    djn_msg_free(&m);
    CHECK_EQ_INT(c.charges, 0);
    CHECK_EQ_INT(s_stats(t).entries, 1);
    djn_tlb_destroy(&t);
    CHECK_EQ_INT(c.releases, 1);
    CHECK_EQ_INT(c.charged, (1 << 20) - one);
}

/* Under allocation failure an owned insert still ends in exactly one release, and what
 * was charged comes back. With an empty table the index grows after the charge, so a
 * failure there must release the charge too. */
static void test_owner_fault_injection(void) {
    int late = 0; /* failures after the charge */
    for (int64_t n = 0; n < 32; n++) {
        bool prior = n % 2;
        djn_tlb_t *t = djn_tlb_new(4);
        if (prior)
            s_insert(t, SID, 1, 0);
        account_t a = {0};
        djn_tlb_owner_t owner = {&a, s_charge_fn, s_release_fn};
        djn_msg_t *m = s_graph(2, 2, 0);
        djn_mem_fail_after(n);
        if (m)
            djn_tlb_insert(t, SID, &m->u.graph, NULL, NULL, 0, 0, &owner);
        djn_mem_fail_after(-1);
        djn_msg_free(&m);
        bool filed = s_has(t, SID, 2, 0);
        CHECK_EQ_INT(a.releases, filed ? 0 : 1);
        CHECK_EQ_INT(a.charged, filed ? s_stats(t).bytes / (prior ? 2 : 1) : 0);
        late += !filed && a.charges == 1;
        djn_tlb_destroy(&t);
        CHECK_EQ_INT(a.releases, 1);
        CHECK_EQ_INT(a.charged, 0);
    }
    CHECK(late > 0);
}

/* Many sessions leave in one walk; an owner that left before the entry is filed (a GRAPH
 * still running when its session closed) gets nothing filed and its charge back. */
static bool s_live = true;
static bool s_live_fn(void *ctx) {
    (void)ctx;
    return s_live;
}

static void test_drop_many_and_late_insert(void) {
    djn_tlb_t *t = djn_tlb_new(64);
    for (uint64_t k = 0; k < 10; k++)
        s_insert(t, SID + k, 100 + k, 0);
    uint64_t sids[4] = {SID, SID + 3, SID + 9, SID + 50};
    djn_tlb_drop_sessions(t, sids, 4);
    CHECK_EQ_INT(s_stats(t).entries, 7);
    CHECK(!s_has(t, SID + 3, 103, 0) && s_has(t, SID + 4, 104, 0));
    djn_tlb_drop_sessions(t, sids, 0);
    CHECK_EQ_INT(s_stats(t).entries, 7);
    account_t a = {0};
    djn_tlb_owner_t owner = {&a, s_charge_fn, s_release_fn, s_live_fn};
    djn_msg_t *m = s_graph(200, 200, 0);
    s_live = false;
    if (m)
        djn_tlb_insert(t, SID + 20, &m->u.graph, NULL, NULL, 0, 0, &owner);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID + 20), 0);
    CHECK_EQ_INT(a.charged, 0);
    CHECK_EQ_INT(a.releases, 1);
    s_live = true;
    if (m)
        djn_tlb_insert(t, SID + 20, &m->u.graph, NULL, NULL, 0, 0, &owner);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID + 20), 1);
    djn_msg_free(&m);
    djn_tlb_destroy(&t);
    CHECK_EQ_INT(a.charged, 0);
}

/* ------------------------------------------------------------------ templates (djn_sym.h)
 *
 * A fragment's integers as bindings (csrc/common/djn_sym.c) and the application of a
 * GRAPH_CACHED's template fields (djn_tlb_bind over an entry). Covers: the client's scan of encoded
 * bytes and the server's walk of the decoded nodes give the same integers in the same order (on
 * nodes with lists, maps, scalars of every msgpack width and tensor references of several ranks);
 * the skeleton fingerprint is the same for fragments that differ only in integers and differs when
 * a dtype, a rank, a slot, a float or an operator differs; a patch applied to a copy of cached
 * nodes gives the integers of the new fragment and leaves the cached nodes alone, sharing the nodes
 * it does not touch; hostile patches (a position past the template, a negative stride, a
 * size that overflows the extent, a stride that makes the extent overflow) are refused
 * with the decoder's words; the decoder's checks on the new fields; runs of handle deltas
 * (nil repeats the delta two runs before) expanded against the template and refused when
 * they do not cover it exactly; and a template that is not the cached one is a miss
 * (code 14). */

/* One node, aten::op(tensor slot 0 of rank nd, sizes n.., an int list [a, b], a float,
 * an int of every width) -> [tensor slot 1]. */
static void s_node(djn_buf_t *b, const char *op, uint8_t dtype, uint8_t nd, int64_t n, int64_t a,
                   double f, int64_t big) {
    djn_node_enc_begin(b, op, "", 5);
    djn_tref_t t;
    memset(&t, 0, sizeof t);
    t.handle = 0;
    t.offset = n;
    t.dtype = dtype;
    t.ndim = nd;
    for (uint8_t d = 0; d < nd; d++) {
        t.sizes[d] = n + d;
        t.strides[d] = d + 1 == nd ? 1 : n * 2;
    }
    djn_enc_tref(b, &t);
    djn_enc_array(b, 2);
    djn_enc_int(b, a);
    djn_enc_int(b, -a);
    djn_enc_float(b, f);
    djn_enc_map(b, 1);
    djn_enc_cstr(b, "k");
    djn_enc_int(b, big);
    djn_enc_bool(b, true);
    djn_node_enc_outs(b, 1);
    t.handle = 1;
    t.offset = 0;
    djn_enc_tref(b, &t);
    djn_node_enc_end(b, 0);
}

/* Two nodes; n is the "KV length", the rest structure. */
static void s_frag(djn_buf_t *b, int64_t n, uint8_t dtype, uint8_t nd, double f, const char *op) {
    djn_buf_reset(b);
    s_node(b, "aten::cat", DJN_DTYPE_F32, 2, n, 3, 0.5, 1);
    s_node(b, op, dtype, nd, n + 1, n * 1000, f, (int64_t)1 << 40);
}

/* Decode the fragment as the server does: a GRAPH with binds [0x100, 0x200]. */
static djn_msg_t *s_decode(const djn_buf_t *nodes, uint32_t nnodes, const uint64_t fp[2]) {
    static const uint64_t binds[2] = {0x100, 0x200};
    djn_graph_req_t g;
    memset(&g, 0, sizeof g);
    g.seed = -1;
    g.nbinds = 2;
    g.binds = binds;
    g.nnodes = nnodes;
    g.nodes_raw = nodes->data;
    g.nodes_raw_len = nodes->len;
    g.fp[0] = fp[0];
    g.fp[1] = fp[1];
    return graph_roundtrip(&g, 1);
}

static void test_scan_matches_walk(void) {
    djn_buf_t b = {0}, skel = {0};
    djn_vec_t ints = DJN_VEC(int64_t);
    uint64_t fp[2];
    s_frag(&b, 300, DJN_DTYPE_F16, 3, 0.25, "aten::mul");
    CHECK(DJN_OK == djn_sym_scan(b.data, b.len, 2, &skel, &ints, fp));
    djn_msg_t *m = s_decode(&b, 2, fp);
    if (m) {
        uint32_t n0 = djn_sym_node_ints(&m->u.graph.nodes[0], NULL);
        uint32_t n1 = djn_sym_node_ints(&m->u.graph.nodes[1], NULL);
        /* tref 1 + 2*2, list 2, map 1 (the key is a str), out tref 1 + 2*2; then rank 3 */
        CHECK_EQ_INT(n0, 5 + 2 + 1 + 5);
        CHECK_EQ_INT(n1, 7 + 2 + 1 + 7);
        CHECK_EQ_INT(ints.len, n0 + n1);
        int64_t w[64];
        djn_sym_node_ints(&m->u.graph.nodes[0], w);
        djn_sym_node_ints(&m->u.graph.nodes[1], w + n0);
        for (uint32_t i = 0; i < n0 + n1 && i < ints.len; i++)
            CHECK_EQ_INT(w[i], DJN_VEC_AT(&ints, int64_t, i));
        CHECK_EQ_INT(w[n0 + 7], 300000);  /* the list's first int, 4-byte width */
        CHECK_EQ_INT(w[n0 + 8], -300000); /* negative */
        CHECK_EQ_INT(w[n0 + 9], (int64_t)1 << 40);
    }
    djn_msg_free(&m);
    djn_buf_release(&b);
    djn_buf_release(&skel);
    djn_vec_release(&ints);
}

static void test_skeleton_fingerprint(void) {
    djn_buf_t b = {0}, skel = {0};
    djn_vec_t ints = DJN_VEC(int64_t);
    uint64_t base[2], fp[2];
    s_frag(&b, 5, DJN_DTYPE_F32, 2, 0.5, "aten::mul");
    CHECK(DJN_OK == djn_sym_scan(b.data, b.len, 2, &skel, &ints, base));
    size_t nints = ints.len;
    /* other integers of every width (5 -> 70000 crosses fixint, uint16, uint32): same */
    int64_t lens[] = {6, 127, 128, 70000, 5000000000ll};
    for (int i = 0; i < 5; i++) {
        s_frag(&b, lens[i], DJN_DTYPE_F32, 2, 0.5, "aten::mul");
        ints.len = 0;
        CHECK(DJN_OK == djn_sym_scan(b.data, b.len, 2, &skel, &ints, fp));
        CHECK(fp[0] == base[0] && fp[1] == base[1]);
        CHECK_EQ_INT(ints.len, nints);
    }
    /* structure: dtype, rank, float, operator */
    s_frag(&b, 5, DJN_DTYPE_F16, 2, 0.5, "aten::mul");
    ints.len = 0;
    CHECK(djn_sym_scan(b.data, b.len, 2, &skel, &ints, fp) == DJN_OK &&
          (fp[0] != base[0] || fp[1] != base[1]));
    s_frag(&b, 5, DJN_DTYPE_F32, 3, 0.5, "aten::mul");
    ints.len = 0;
    CHECK(djn_sym_scan(b.data, b.len, 2, &skel, &ints, fp) == DJN_OK &&
          (fp[0] != base[0] || fp[1] != base[1]));
    s_frag(&b, 5, DJN_DTYPE_F32, 2, 0.75, "aten::mul");
    ints.len = 0;
    CHECK(djn_sym_scan(b.data, b.len, 2, &skel, &ints, fp) == DJN_OK &&
          (fp[0] != base[0] || fp[1] != base[1]));
    s_frag(&b, 5, DJN_DTYPE_F32, 2, 0.5, "aten::add");
    ints.len = 0;
    CHECK(djn_sym_scan(b.data, b.len, 2, &skel, &ints, fp) == DJN_OK &&
          (fp[0] != base[0] || fp[1] != base[1]));
    /* malformed bytes: the scan fails (the client then sends the bytes' hash) */
    ints.len = 0;
    CHECK(djn_sym_scan(b.data, b.len - 1, 2, &skel, &ints, fp) == DJN_ERR_PROTO);
    CHECK(djn_sym_scan(b.data, b.len, 3, &skel, &ints, fp) == DJN_ERR_PROTO);
    djn_buf_release(&b);
    djn_buf_release(&skel);
    djn_vec_release(&ints);
}

/* A plan cache holding the fragment of length n0 for session 1, and the scanned
 * integers of fragments n0 and n1. */
typedef struct {
    djn_tlb_t *t;
    djn_tlb_entry_t *e;
    djn_vec_t i0, i1;
    uint64_t fp[2];
} s_fix_t;

static void s_fix(s_fix_t *x, int64_t n0, int64_t n1) {
    djn_buf_t b = {0}, skel = {0};
    x->i0 = DJN_VEC(int64_t);
    x->i1 = DJN_VEC(int64_t);
    s_frag(&b, n1, DJN_DTYPE_F32, 2, 0.5, "aten::mul");
    CHECK(DJN_OK == djn_sym_scan(b.data, b.len, 2, &skel, &x->i1, x->fp));
    s_frag(&b, n0, DJN_DTYPE_F32, 2, 0.5, "aten::mul");
    CHECK(DJN_OK == djn_sym_scan(b.data, b.len, 2, &skel, &x->i0, x->fp));
    x->t = djn_tlb_new(4);
    djn_msg_t *m = s_decode(&b, 2, x->fp);
    if (m)
        djn_tlb_insert(x->t, 1, &m->u.graph, NULL, NULL, 0, 0, NULL);
    djn_msg_free(&m);
    x->e = djn_tlb_lookup(x->t, x->fp, 0, 1);
    CHECK(x->e != NULL);
    djn_buf_release(&b);
    djn_buf_release(&skel);
}

static void s_fix_free(s_fix_t *x) {
    djn_tlb_release(x->t, &x->e);
    djn_tlb_destroy(&x->t);
    djn_vec_release(&x->i0);
    djn_vec_release(&x->i1);
}

/* The patch that turns i0 into i1 (deltas). */
static uint32_t s_diff(const s_fix_t *x, djn_sym_patch_t *p) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < x->i0.len; i++) {
        int64_t a = DJN_VEC_AT(&x->i0, int64_t, i), b = DJN_VEC_AT(&x->i1, int64_t, i);
        if (a != b)
            p[n++] = (djn_sym_patch_t){i, b - a};
    }
    return n;
}

static void test_patch_applies(void) {
    s_fix_t x;
    s_fix(&x, 5, 9);
    if (!x.e) {
        s_fix_free(&x);
        return;
    }
    const djn_tlb_tpl_t *tp = djn_tlb_template(x.e);
    const djn_graph_req_t *cg = djn_tlb_graph(x.e);
    djn_sym_patch_t p[64];
    uint32_t np = s_diff(&x, p);
    CHECK(np > 0 && np < x.i0.len);
    djn_arena_t *a = djn_arena_new();
    const djn_node_t *out = NULL;
    char err[256] = {0};
    CHECK(djn_sym_patch(a, cg->nodes, cg->nnodes, tp->start, p, np, 2, &out, err, sizeof err) ==
          DJN_OK);
    int64_t w[64];
    if (out) {
        uint32_t n0 = djn_sym_node_ints(&out[0], w);
        djn_sym_node_ints(&out[1], w + n0);
        for (uint32_t i = 0; i < x.i1.len; i++)
            CHECK_EQ_INT(w[i], DJN_VEC_AT(&x.i1, int64_t, i));
        /* the cached nodes are untouched */
        n0 = djn_sym_node_ints(&cg->nodes[0], w);
        djn_sym_node_ints(&cg->nodes[1], w + n0);
        for (uint32_t i = 0; i < x.i0.len; i++)
            CHECK_EQ_INT(w[i], DJN_VEC_AT(&x.i0, int64_t, i));
    }
    /* a patch of node 1 only shares node 0 */
    djn_sym_patch_t last = {tp->start[2] - 1, 1};
    CHECK(djn_sym_patch(a, cg->nodes, cg->nnodes, tp->start, &last, 1, 2, &out, err, sizeof err) ==
          DJN_OK);
    CHECK(out && out[0].args == cg->nodes[0].args && out[1].args != cg->nodes[1].args);
    /* no patch: the cached nodes themselves */
    CHECK(djn_sym_patch(a, cg->nodes, cg->nnodes, tp->start, NULL, 0, 2, &out, err, sizeof err) ==
          DJN_OK);
    CHECK(out == cg->nodes);
    djn_arena_destroy(&a);
    s_fix_free(&x);
}

static void test_hostile_patches(void) {
    s_fix_t x;
    s_fix(&x, 5, 5);
    if (!x.e) {
        s_fix_free(&x);
        return;
    }
    const djn_tlb_tpl_t *tp = djn_tlb_template(x.e);
    const djn_graph_req_t *cg = djn_tlb_graph(x.e);
    djn_arena_t *a = djn_arena_new();
    const djn_node_t *out = NULL;
    char err[256];
    /* node 0: offset at 0, sizes at 1..2, strides at 3..4 */
    struct {
        djn_sym_patch_t p;
        const char *words;
    } bad[] = {
        {{tp->start[2], 1}, "GRAPH_CACHED patch names integer 26 but the cached fragment has 26"},
        {{3, -100}, "GRAPH: node 0 (aten::cat) has a malformed tensor reference or unbound slot"},
        {{1, -6}, "GRAPH: node 0 (aten::cat) has a malformed tensor reference or unbound slot"},
        {{1, INT64_MAX},
         "GRAPH: node 0 (aten::cat) has a malformed tensor reference or unbound slot"},
        {{3, (int64_t)1 << 61},
         "GRAPH: node 0 (aten::cat) has a malformed tensor reference or unbound slot"},
        {{0, -6}, "GRAPH: node 0 (aten::cat) has a malformed tensor reference or unbound slot"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        CHECK(djn_sym_patch(a, cg->nodes, cg->nnodes, tp->start, &bad[i].p, 1, 2, &out, err,
                            sizeof err) == DJN_ERR_PROTO);
        CHECK_STR(err, bad[i].words);
    }
    /* a slot the message's binds do not cover */
    djn_sym_patch_t ok = {1, 1};
    CHECK(djn_sym_patch(a, cg->nodes, cg->nnodes, tp->start, &ok, 1, 0, &out, err, sizeof err) ==
          DJN_ERR_PROTO);
    djn_arena_destroy(&a);
    s_fix_free(&x);
}

/* Encode a GRAPH_CACHED with the template fields and decode it as the server does. */
static djn_status_t s_cached(const djn_graph_req_t *g, djn_msg_t **m, char *err, size_t errlen) {
    djn_msg_hdr_t h = {DJN_MSG_GRAPH_CACHED, 1, 2};
    djn_buf_t b = {0};
    djn_graph_req_encode(&b, &h, g);
    djn_status_t st = djn_msg_decode(b.data, b.len, 0, m, NULL, err, errlen);
    djn_buf_release(&b);
    return st;
}

static void test_bind_template(void) {
    s_fix_t x;
    s_fix(&x, 5, 9);
    if (!x.e) {
        s_fix_free(&x);
        return;
    }
    const djn_tlb_tpl_t *tp = djn_tlb_template(x.e);
    djn_sym_patch_t p[64];
    uint32_t np = s_diff(&x, p);
    djn_sym_run_t runs[3] = {{1, 0x50}, {1, -0x10}};
    djn_graph_req_t g;
    memset(&g, 0, sizeof g);
    g.seed = -1;
    g.fp[0] = x.fp[0];
    g.fp[1] = x.fp[1];
    g.tpl = tp->digest;
    g.patch = p;
    g.npatch = np;
    g.has_binds_d = true;
    g.binds_d = runs;
    g.nbinds_d = 2;
    djn_msg_t *m = NULL;
    char err[256] = {0};
    CHECK(s_cached(&g, &m, err, sizeof err) == DJN_OK);
    if (m) {
        const djn_node_t *nodes = NULL;
        CHECK(djn_tlb_bind(m->arena, &m->u.graph, x.e, &nodes, err, sizeof err) == DJN_OK);
        CHECK_EQ_INT(m->u.graph.nbinds, 2);
        if (m->u.graph.nbinds == 2) {
            CHECK_EQ_INT(m->u.graph.binds[0], 0x150);
            CHECK_EQ_INT(m->u.graph.binds[1], 0x1f0);
        }
        int64_t w[64];
        if (nodes) {
            uint32_t n0 = djn_sym_node_ints(&nodes[0], w);
            djn_sym_node_ints(&nodes[1], w + n0);
            for (uint32_t i = 0; i < x.i1.len; i++)
                CHECK_EQ_INT(w[i], DJN_VEC_AT(&x.i1, int64_t, i));
        }
    }
    djn_msg_free(&m);
    /* binds that would be 0, runs that do not cover the template */
    runs[0] = (djn_sym_run_t){2, -0x100};
    g.nbinds_d = 1;
    CHECK(s_cached(&g, &m, err, sizeof err) == DJN_OK);
    const djn_node_t *nodes;
    if (m)
        CHECK(djn_tlb_bind(m->arena, &m->u.graph, x.e, &nodes, err, sizeof err) == DJN_ERR_PROTO);
    CHECK_STR(err, "GRAPH: 'binds' must hold non-zero handles");
    djn_msg_free(&m);
    runs[0] = (djn_sym_run_t){3, 0};
    CHECK(s_cached(&g, &m, err, sizeof err) == DJN_OK);
    if (m)
        CHECK(djn_tlb_bind(m->arena, &m->u.graph, x.e, &nodes, err, sizeof err) == DJN_ERR_PROTO);
    CHECK_STR(err, "GRAPH_CACHED: 'binds_d' must cover the template's 2 binds");
    djn_msg_free(&m);
    /* another template: a miss */
    runs[0] = (djn_sym_run_t){2, 0};
    g.tpl = tp->digest ^ 1;
    CHECK(s_cached(&g, &m, err, sizeof err) == DJN_OK);
    if (m)
        CHECK(djn_tlb_bind(m->arena, &m->u.graph, x.e, &nodes, err, sizeof err) == DJN_ERR_EVICTED);
    CHECK_HAS(err, "plan cache miss");
    djn_msg_free(&m);
    s_fix_free(&x);
}

/* The decoder's checks on the new fields, and the nil run. */
static djn_status_t s_body(int which, char *err, size_t errlen) {
    djn_buf_t b = {0};
    djn_enc_map(&b, 4);
    djn_enc_cstr(&b, "type");
    djn_enc_uint(&b, DJN_MSG_GRAPH_CACHED);
    djn_enc_cstr(&b, "sid");
    djn_enc_uint(&b, 1);
    djn_enc_cstr(&b, "seq");
    djn_enc_uint(&b, 1);
    djn_enc_cstr(&b, "body");
    bool tpl = which != 0 && which != 4;
    djn_enc_map(&b, which == 7 ? 3 : tpl || which == 0 ? 2 : 1);
    if (tpl) {
        djn_enc_cstr(&b, "tpl");
        djn_enc_uint(&b, 1);
    }
    switch (which) {
    case 0: /* tpl 0 */
        djn_enc_cstr(&b, "tpl");
        djn_enc_uint(&b, 0);
        djn_enc_cstr(&b, "patch");
        djn_enc_array(&b, 0);
        break;
    case 1: /* odd length */
        djn_enc_cstr(&b, "patch");
        djn_enc_array(&b, 1);
        djn_enc_uint(&b, 1);
        break;
    case 2: /* a gap of 0 */
        djn_enc_cstr(&b, "patch");
        djn_enc_array(&b, 2);
        djn_enc_uint(&b, 0);
        djn_enc_int(&b, 1);
        break;
    case 3: /* a negative gap */
        djn_enc_cstr(&b, "patch");
        djn_enc_array(&b, 4);
        djn_enc_uint(&b, 1);
        djn_enc_int(&b, 1);
        djn_enc_int(&b, -1);
        djn_enc_int(&b, 1);
        break;
    case 4: /* no tpl */
        djn_enc_cstr(&b, "patch");
        djn_enc_array(&b, 2);
        djn_enc_uint(&b, 1);
        djn_enc_int(&b, 1);
        break;
    case 5: /* nil in the first run */
        djn_enc_cstr(&b, "binds_d");
        djn_enc_array(&b, 2);
        djn_enc_uint(&b, 1);
        djn_enc_nil(&b);
        break;
    case 6: /* a count of 0 */
        djn_enc_cstr(&b, "frees_d");
        djn_enc_array(&b, 2);
        djn_enc_uint(&b, 0);
        djn_enc_int(&b, 0);
        break;
    case 7: /* both */
        djn_enc_cstr(&b, "binds_d");
        djn_enc_array(&b, 2);
        djn_enc_uint(&b, 1);
        djn_enc_int(&b, 0);
        djn_enc_cstr(&b, "binds");
        djn_enc_array(&b, 0);
        break;
    case 8: /* sizes without handles */
        djn_enc_cstr(&b, "allocs_n");
        djn_enc_array(&b, 2);
        djn_enc_uint(&b, 1);
        djn_enc_int(&b, 1);
        break;
    case 9: /* a position past 2^32 - 1 */
        djn_enc_cstr(&b, "patch");
        djn_enc_array(&b, 2);
        djn_enc_uint(&b, (1ull << 32) + 1);
        djn_enc_int(&b, 1);
        break;
    }
    djn_msg_t *m = NULL;
    djn_status_t st = djn_msg_decode(b.data, b.len, 0, &m, NULL, err, errlen);
    djn_msg_free(&m);
    djn_buf_release(&b);
    return st;
}

static void test_decode_fields(void) {
    const char *words[] = {
        "GRAPH: 'tpl' must be a non-zero integer",
        "GRAPH: 'patch' must be [gap, value] integer pairs with gaps >= 1",
        "GRAPH: 'patch' must be [gap, value] integer pairs with gaps >= 1",
        "GRAPH: 'patch' must be [gap, value] integer pairs with gaps >= 1",
        "GRAPH: 'patch', 'allocs_n', 'pat' and the '_d' fields need 'tpl'",
        "GRAPH: 'binds_d' must be [count, delta] integer pairs with counts >= 1",
        "GRAPH: 'frees_d' must be [count, delta] integer pairs with counts >= 1",
        "GRAPH: 'binds' and 'binds_d' exclude each other",
        "GRAPH: 'allocs_n' needs 'allocs_d'",
        "GRAPH: 'patch' must be [gap, value] integer pairs with gaps >= 1",
    };
    for (int i = 0; i < (int)(sizeof words / sizeof words[0]); i++) {
        char err[256] = {0};
        CHECK(s_body(i, err, sizeof err) == DJN_ERR_PROTO);
        CHECK_STR(err, words[i]);
    }
    /* the nil run: decoded as the delta two runs before */
    djn_sym_run_t runs[4] = {{1, 0}, {2, 1000}, {3, 0}, {4, 1000}};
    djn_graph_req_t g;
    memset(&g, 0, sizeof g);
    g.seed = -1;
    g.tpl = 7;
    g.has_frees_d = true;
    g.frees_d = runs;
    g.nfrees_d = 4;
    djn_msg_t *m = NULL;
    char err[256];
    CHECK(s_cached(&g, &m, err, sizeof err) == DJN_OK);
    if (m) {
        CHECK_EQ_INT(m->u.graph.nfrees_d, 4);
        CHECK_EQ_INT(m->u.graph.frees_d[3].delta, 1000);
        CHECK_EQ_INT(m->u.graph.frees_d[2].delta, 0);
        CHECK_EQ_INT(m->u.graph.frees_d[3].count, 4);
    }
    djn_msg_free(&m);
}

/* 'pal' + 'pat' / 'pid': the pattern is kept by the entry and named by its hash. */
static void test_bind_by_pattern(void) {
    s_fix_t x;
    s_fix(&x, 5, 9);
    if (!x.e) {
        s_fix_free(&x);
        return;
    }
    const djn_tlb_tpl_t *tp = djn_tlb_template(x.e);
    /* the integer deltas as classes, then bind 1 (position nints + 0 allocs + 1) */
    djn_sym_patch_t pat[64];
    int64_t pal[64];
    uint32_t np = 0, ncls = 0;
    for (uint32_t i = 0; i < x.i0.len; i++) {
        int64_t d = DJN_VEC_AT(&x.i1, int64_t, i) - DJN_VEC_AT(&x.i0, int64_t, i);
        if (!d)
            continue;
        uint32_t k = 0;
        while (k < ncls && pal[k] != d)
            k++;
        if (k == ncls)
            pal[ncls++] = d;
        pat[np++] = (djn_sym_patch_t){i, k};
    }
    pal[ncls] = 0x40;
    pat[np++] = (djn_sym_patch_t){(uint32_t)x.i0.len + 1, ncls++};
    djn_graph_req_t g;
    memset(&g, 0, sizeof g);
    g.seed = -1;
    g.fp[0] = x.fp[0];
    g.fp[1] = x.fp[1];
    g.tpl = tp->digest;
    g.pal = pal;
    g.npal = ncls;
    g.has_pat = true;
    g.pat = pat;
    g.npat = np;
    uint64_t pid = djn_sym_pattern_hash(pat, np);
    char err[256] = {0};
    const djn_node_t *nodes = NULL;
    for (int round = 0; round < 3; round++) {
        djn_msg_t *m = NULL;
        if (round == 1) { /* the kept pattern, named */
            g.has_pat = false;
            g.pid = pid;
        }
        if (round == 2)
            g.pid = pid ^ 1; /* not the kept one: a miss */
        CHECK(s_cached(&g, &m, err, sizeof err) == DJN_OK);
        if (!m)
            continue;
        djn_status_t st = djn_tlb_bind(m->arena, &m->u.graph, x.e, &nodes, err, sizeof err);
        if (round == 2) {
            CHECK(st == DJN_ERR_EVICTED);
            CHECK_HAS(err, "holds no pattern");
        } else {
            CHECK(st == DJN_OK);
            CHECK_EQ_INT(m->u.graph.nbinds, 2);
            if (m->u.graph.nbinds == 2) {
                CHECK_EQ_INT(m->u.graph.binds[0], 0x100);
                CHECK_EQ_INT(m->u.graph.binds[1], 0x240);
            }
            int64_t w[64];
            if (nodes && st == DJN_OK) {
                uint32_t n0 = djn_sym_node_ints(&nodes[0], w);
                djn_sym_node_ints(&nodes[1], w + n0);
                for (uint32_t i = 0; i < x.i1.len; i++)
                    CHECK_EQ_INT(w[i], DJN_VEC_AT(&x.i1, int64_t, i));
            }
        }
        djn_msg_free(&m);
    }
    /* a pattern past the template's values, and classes the palette does not have */
    g.has_pat = true;
    pat[np - 1].pos = (uint32_t)x.i0.len + 2;
    djn_msg_t *m = NULL;
    CHECK(s_cached(&g, &m, err, sizeof err) == DJN_OK);
    if (m)
        CHECK(djn_tlb_bind(m->arena, &m->u.graph, x.e, &nodes, err, sizeof err) == DJN_ERR_PROTO);
    CHECK_HAS(err, "'pat' names value 28 but the template has 28");
    djn_msg_free(&m);
    pat[np - 1].pos = (uint32_t)x.i0.len + 1;
    g.npal = ncls - 1;
    err[0] = 0;
    CHECK(s_cached(&g, &m, err, sizeof err) == DJN_ERR_PROTO);
    CHECK_STR(err, "GRAPH: 'pat' names a class 'pal' does not have");
    djn_msg_free(&m);
    s_fix_free(&x);
}

/* g, encoded and decoded as the server does, is refused by djn_tlb_bind with `want`. */
static void s_bind_refused(const djn_graph_req_t *g, djn_tlb_entry_t *e, const char *want) {
    djn_msg_t *m = NULL;
    char err[256] = {0};
    const djn_node_t *nodes = NULL;
    CHECK(s_cached(g, &m, err, sizeof err) == DJN_OK);
    if (m)
        CHECK(djn_tlb_bind(m->arena, &m->u.graph, e, &nodes, err, sizeof err) == DJN_ERR_PROTO);
    CHECK_STR(err, want);
    djn_msg_free(&m);
}

/* By pattern, the allocation handles and frees are positions of the pattern too (after
 * the binds), so a decode step sends neither 'allocs_d' nor 'frees_d'; with 'pid' the
 * template is implied ('tpl' left out), and without semantics the entry's apply. */
static void test_pattern_moves_handles_and_frees(void) {
    s_fix_t x;
    s_fix(&x, 5, 5);
    djn_buf_t b = {0}, skel = {0};
    s_frag(&b, 5, DJN_DTYPE_F32, 2, 0.5, "aten::mul");
    static const uint64_t binds[2] = {0x100, 0x200}, frees[2] = {0x200, 0x7000};
    static const djn_alloc_t allocs[2] = {{0x7000, 64}, {0x8000, 128}};
    djn_graph_req_t f;
    memset(&f, 0, sizeof f);
    f.seed = -1;
    f.nbinds = 2;
    f.binds = binds;
    f.nallocs = 2;
    f.allocs = allocs;
    f.nfrees = 2;
    f.frees = frees;
    f.nnodes = 2;
    f.nodes_raw = b.data;
    f.nodes_raw_len = b.len;
    f.fp[0] = x.fp[0] ^ 7; /* an entry of its own */
    f.fp[1] = x.fp[1];
    f.phase = DJN_PHASE_DECODE;
    f.life_kept = 3;
    f.life_transient = 4;
    djn_msg_t *fm = graph_roundtrip(&f, 1);
    CHECK(fm != NULL);
    if (fm)
        djn_tlb_insert(x.t, 1, &fm->u.graph, NULL, NULL, 0, 0, NULL);
    djn_msg_free(&fm);
    djn_tlb_entry_t *e = djn_tlb_lookup(x.t, f.fp, 0, 1);
    CHECK(e != NULL);
    if (!e) {
        djn_buf_release(&b);
        s_fix_free(&x);
        return;
    }
    const djn_tlb_tpl_t *tp = djn_tlb_template(e);
    uint32_t nints = tp->start[2];
    /* positions: ints, 2 alloc sizes, 2 binds, 2 alloc handles, 2 frees */
    uint32_t h0 = nints + 2 + 2, f0 = h0 + 2;
    djn_sym_patch_t pat[3] = {{h0, 0}, {h0 + 1, 0}, {f0 + 1, 0}};
    int64_t pal[1] = {0x10000};
    djn_graph_req_t g;
    memset(&g, 0, sizeof g);
    g.seed = -1;
    g.fp[0] = f.fp[0];
    g.fp[1] = f.fp[1];
    g.tpl = tp->digest;
    g.pal = pal;
    g.npal = 1;
    g.has_pat = true;
    g.pat = pat;
    g.npat = 3;
    g.sem_tpl = true;
    char err[256] = {0};
    const djn_node_t *nodes = NULL;
    for (int round = 0; round < 2; round++) {
        if (round == 1) { /* the kept pattern by its hash, and no 'tpl' on the wire */
            g.has_pat = false;
            g.pid = djn_sym_pattern_hash(pat, 3);
        }
        djn_buf_t mb = {0};
        djn_msg_hdr_t h = {DJN_MSG_GRAPH_CACHED, 1, 2};
        djn_graph_req_encode(&mb, &h, &g);
        djn_msg_t *m = NULL;
        CHECK(djn_msg_decode(mb.data, mb.len, 0, &m, NULL, err, sizeof err) == DJN_OK);
        if (m) {
            const djn_graph_req_t *d = &m->u.graph;
            CHECK(round == 0 ? d->tpl == tp->digest : d->tpl == 0);
            CHECK(!d->has_allocs_d && !d->has_frees_d && d->nallocs == 0 && d->nfrees == 0);
            CHECK(djn_tlb_bind(m->arena, &m->u.graph, e, &nodes, err, sizeof err) == DJN_OK);
            CHECK_EQ_INT(d->nallocs, 2);
            CHECK_EQ_INT(d->nfrees, 2);
            if (d->nallocs == 2 && d->nfrees == 2) {
                CHECK_EQ_INT(d->allocs[0].handle, 0x17000);
                CHECK_EQ_INT(d->allocs[1].handle, 0x18000);
                CHECK_EQ_INT(d->allocs[1].nbytes, 128);
                CHECK_EQ_INT(d->frees[0], 0x200);
                CHECK_EQ_INT(d->frees[1], 0x17000);
            }
            CHECK_EQ_INT(d->phase, DJN_PHASE_DECODE);
            CHECK_EQ_INT(d->life_kept, 3);
            CHECK_EQ_INT(d->life_transient, 4);
        }
        /* the encoding left out 'tpl' (round 1) and the semantics */
        CHECK(!memmem(mb.data, mb.len, "phase", 5));
        CHECK(round == 0 ? memmem(mb.data, mb.len, "tpl", 3) != NULL
                         : memmem(mb.data, mb.len, "tpl", 3) == NULL);
        djn_msg_free(&m);
        djn_buf_release(&mb);
    }
    /* semantics sent explicitly win, zeros included */
    g.sem_tpl = false;
    djn_msg_t *m = NULL;
    CHECK(s_cached(&g, &m, err, sizeof err) == DJN_OK);
    if (m) {
        CHECK(djn_tlb_bind(m->arena, &m->u.graph, e, &nodes, err, sizeof err) == DJN_OK);
        CHECK_EQ_INT(m->u.graph.phase, 0);
        CHECK_EQ_INT(m->u.graph.life_kept, 0);
    }
    djn_msg_free(&m);
    /* a plain 'frees' list is taken as it is: the pattern may not move the template's */
    g.nfrees = 1;
    g.frees = frees;
    s_bind_refused(&g, e,
                   "GRAPH_CACHED: the pattern moves the template's frees, so 'frees' must be "
                   "left out");
    /* a moved handle must stay a client handle */
    g.nfrees = 0;
    pal[0] = -0x7000;
    s_bind_refused(&g, e, "GRAPH: client handles must be in [1, 2^62)");
    /* a pattern past the frees */
    g.has_pat = true;
    pat[2].pos = f0 + 2;
    char want[128];
    snprintf(want, sizeof want, "GRAPH_CACHED: 'pat' names value %u but the template has %u",
             f0 + 2, f0 + 2);
    s_bind_refused(&g, e, want);
    djn_tlb_release(x.t, &e);
    djn_buf_release(&b);
    djn_buf_release(&skel);
    s_fix_free(&x);
}

static void test_runs_roundtrip(void) {
    uint64_t tpl[6] = {10, 20, 30, 40, 50, 60}, cur[6] = {10, 120, 130, 40, 150, 61}, out[6];
    djn_vec_t runs = DJN_VEC(djn_sym_run_t);
    CHECK(djn_sym_runs(tpl, cur, 6, &runs));
    CHECK_EQ_INT(runs.len, 5);
    CHECK(djn_sym_expand(tpl, 6, runs.data, (uint32_t)runs.len, out));
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(out[i], cur[i]);
    djn_sym_run_t shortr = {5, 0}, longr[2] = {{5, 0}, {2, 0}};
    CHECK(!djn_sym_expand(tpl, 6, &shortr, 1, out));
    CHECK(!djn_sym_expand(tpl, 6, longr, 2, out));
    djn_sym_run_t huge = {UINT64_MAX, 0};
    CHECK(!djn_sym_expand(tpl, 6, &huge, 1, out));
    djn_vec_release(&runs);
}

/* A kept pattern and the integers of the last timed run are charged with the entry, from
 * its filing: the longest pattern the template allows (one position per value) and a
 * note_run add host memory, and all of it stays within what the owner was charged. */
static void test_kept_pattern_is_charged(void) {
    djn_buf_t b = {0}, skel = {0};
    djn_vec_t ints = DJN_VEC(int64_t);
    uint64_t fp[2];
    s_frag(&b, 5, DJN_DTYPE_F32, 2, 0.5, "aten::mul");
    CHECK(DJN_OK == djn_sym_scan(b.data, b.len, 2, &skel, &ints, fp));
    djn_tlb_t *t = djn_tlb_new(4);
    account_t a = {0}, other = {0};
    s_insert_owned(t, 2, 77, 0, &other); /* the table's own index is allocated by now */
    djn_tlb_owner_t owner = {&a, s_charge_fn, s_release_fn};
    djn_msg_t *m = s_decode(&b, 2, fp);
    int64_t base = djn_mem_in_use();
    if (m)
        djn_tlb_insert(t, 1, &m->u.graph, NULL, NULL, 0, 0, &owner);
    int64_t filed = djn_mem_in_use() - base; /* what the entry holds when filed */
    djn_msg_free(&m);
    djn_tlb_entry_t *e = djn_tlb_lookup(t, fp, 0, 1);
    CHECK(e != NULL);
    if (e) {
        const djn_tlb_tpl_t *tp = djn_tlb_template(e);
        uint32_t n = (uint32_t)ints.len + 2 * tp->nallocs + tp->nbinds + tp->nfrees;
        djn_sym_patch_t *pat = calloc(n, sizeof *pat);
        int64_t pal[1] = {0};
        for (uint32_t i = 0; pat && i < n; i++)
            pat[i] = (djn_sym_patch_t){i, 0};
        djn_graph_req_t g;
        memset(&g, 0, sizeof g);
        g.seed = -1;
        g.fp[0] = fp[0];
        g.fp[1] = fp[1];
        g.tpl = tp->digest;
        g.pal = pal;
        g.npal = 1;
        g.has_pat = true;
        g.pat = pat;
        g.npat = n;
        char err[256] = {0};
        const djn_node_t *nodes = NULL;
        base = djn_mem_in_use();
        CHECK(pat && s_cached(&g, &m, err, sizeof err) == DJN_OK);
        if (m && djn_tlb_bind(m->arena, &m->u.graph, e, &nodes, err, sizeof err) == DJN_OK)
            djn_tlb_note_run(e, 50, nodes);
        else
            CHECK_STR(err, "");
        djn_msg_free(&m);
        int64_t kept = djn_mem_in_use() - base; /* the pattern and the run's integers */
        CHECK(kept >= (int64_t)(n * sizeof(djn_sym_patch_t) + ints.len * sizeof(int64_t)));
        CHECK(filed > 0);
        CHECK((uint64_t)(filed + kept) <= a.charged);
        CHECK_EQ_INT(a.charged + other.charged, s_stats(t).bytes);
        free(pat);
        djn_tlb_release(t, &e);
    }
    djn_tlb_destroy(&t);
    CHECK_EQ_INT(a.charged, 0);
    CHECK_EQ_INT(a.releases, 1);
    djn_buf_release(&b);
    djn_buf_release(&skel);
    djn_vec_release(&ints);
}

int main(void) {
    RUN(test_hit_and_miss);
    RUN(test_session_in_key);
    RUN(test_entry_outlives_message);
    RUN(test_plan_copied);
    RUN(test_lru_eviction);
    RUN(test_reference_outlives_eviction);
    RUN(test_duplicate_and_unfingerprinted);
    RUN(test_capacity_zero);
    RUN(test_drop_session);
    RUN(test_drop_many_and_late_insert);
    RUN(test_bytes_accounting);
    RUN(test_insert_fault_injection);
    RUN(test_owner_accounting);
    RUN(test_owner_fault_injection);
    RUN(test_scan_matches_walk);
    RUN(test_skeleton_fingerprint);
    RUN(test_patch_applies);
    RUN(test_hostile_patches);
    RUN(test_bind_template);
    RUN(test_decode_fields);
    RUN(test_bind_by_pattern);
    RUN(test_pattern_moves_handles_and_frees);
    RUN(test_runs_roundtrip);
    RUN(test_kept_pattern_is_charged);
    return djn_test_report();
}
