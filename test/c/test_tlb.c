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
#include "djn_test.h"

#include "djn_codec.h"
#include "djn_tlb.h"

#define SID 7

/* A decoded GRAPH: aten::neg(slot 0: float32 [4] at offset off) -> [nil], binds [0x1000],
 * on device dev, with the given fingerprint. */
static djn_msg_t *s_graph_at(uint64_t fp_hi, uint64_t fp_lo, uint32_t dev, int64_t off) {
    djn_tref_t r;
    memset(&r, 0, sizeof r);
    r.handle = 0; /* slot 0 */
    r.offset = off;
    r.dtype = DJN_DTYPE_F32;
    r.ndim = 1;
    r.sizes[0] = 4;
    r.strides[0] = 1;
    djn_value_t arg, out;
    memset(&arg, 0, sizeof arg);
    memset(&out, 0, sizeof out);
    arg.kind = DJN_V_TENSOR;
    arg.u.t = &r;
    out.kind = DJN_V_NONE;
    djn_node_t n = {"aten::neg", "", 1, 1, &arg, &out, 0};
    static const uint64_t binds[1] = {0x1000};
    djn_graph_req_t g;
    memset(&g, 0, sizeof g);
    g.device = dev;
    g.seed = -1;
    g.nbinds = 1;
    g.binds = binds;
    g.fp[0] = fp_hi;
    g.fp[1] = fp_lo;
    g.nnodes = 1;
    g.nodes = &n;
    djn_msg_hdr_t h = {DJN_MSG_GRAPH, SID, 1};
    djn_buf_t b = {0};
    djn_graph_req_encode(&b, &h, &g);
    djn_msg_t *m = NULL;
    char err[256];
    djn_status_t st = djn_msg_decode(b.data, b.len, 0, &m, NULL, err, sizeof err);
    djn_buf_release(&b);
    CHECK(st == DJN_OK);
    return m;
}
static djn_msg_t *s_graph(uint64_t fp_hi, uint64_t fp_lo, uint32_t dev) {
    return s_graph_at(fp_hi, fp_lo, dev, 0);
}

/* Insert a fresh graph for (fp, fp) under sid and free the message at once. */
static void s_insert(djn_tlb_t *t, uint64_t sid, uint64_t fp, uint32_t dev) {
    djn_msg_t *m = s_graph(fp, fp, dev);
    if (m)
        djn_tlb_insert(t, sid, &m->u.graph, NULL, 0, 0, NULL);
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
        djn_tlb_insert(t, sid, &m->u.graph, NULL, 0, 0, &owner);
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
        djn_tlb_insert(t, SID, &m->u.graph, NULL, 0, 0, NULL);
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
    djn_tlb_insert(t, SID, &m->u.graph, NULL, 0, 0, NULL);
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
        djn_tlb_insert(t, SID, &m->u.graph, place, 3, 8192, NULL);
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
        djn_tlb_insert(t, SID, &m->u.graph, place, 0, 100, NULL);
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
        djn_tlb_insert(t, SID, &g, NULL, 0, 0, NULL);
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
        djn_tlb_insert(t, SID, &m->u.graph, place, 4, 64, NULL);
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
            djn_tlb_insert(t, SID, &m->u.graph, place, 2, 16, NULL);
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
        djn_tlb_insert(t, SID, &g, NULL, 0, 0, &owner);
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
        djn_tlb_insert(t, SID, &m->u.graph, NULL, 0, 0, &release_only);
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
            djn_tlb_insert(t, SID, &m->u.graph, NULL, 0, 0, &owner);
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
        djn_tlb_insert(t, SID + 20, &m->u.graph, NULL, 0, 0, &owner);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID + 20), 0);
    CHECK_EQ_INT(a.charged, 0);
    CHECK_EQ_INT(a.releases, 1);
    s_live = true;
    if (m)
        djn_tlb_insert(t, SID + 20, &m->u.graph, NULL, 0, 0, &owner);
    CHECK_EQ_INT(djn_tlb_session_entries(t, SID + 20), 1);
    djn_msg_free(&m);
    djn_tlb_destroy(&t);
    CHECK_EQ_INT(a.charged, 0);
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
    return djn_test_report();
}
