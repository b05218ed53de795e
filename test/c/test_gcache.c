/* test_gcache.c: the graph cache (server/djn_gcache.c) over the fake device, and its
 * tie to the plan cache (djn_tlb_on_drop).
 *
 * Covered:
 *   1. shape keys: small integers exact, large ones bucketed to powers of two, exact keys
 *      distinguish every value, bucketed and exact keys never collide by construction;
 *   2. the capture policy: the first sighting of a key only counts, the second says
 *      capture; a refused key is never captured again; a key with a graph is not either;
 *   3. replay: a hit returns the graph and the slab base it was captured at; launching
 *      it through the seam runs the captured work (the fake counts launches);
 *   4. LRU: past capacity the least recently used entry goes, its graph destroyed; a hit
 *      refreshes; an entry a worker holds is destroyed only at its release;
 *   5. drops: by plan (every shape of one fingerprint, device, session) and by session;
 *      through the plan cache: an entry evicted from djn_tlb, or its session dropped,
 *      takes its graphs with it;
 *   6. a second insert for a key keeps the first graph and destroys the new one;
 *   7. host allocation failures; graphs and counted memory all given back. */
#include "djn_test.h"

#include "djn_codec.h"
#include "djn_dev.h"
#include "djn_gcache.h"
#include "djn_tlb.h"
#include "djn_tmsg.h"

static djn_gcache_key_t s_key(uint64_t fp, uint32_t dev, uint64_t sid, uint64_t shape) {
    djn_gcache_key_t k = {{fp, ~fp}, dev, sid, shape};
    return k;
}

/* A graph of one memset into x, captured through the seam. */
static djn_dev_graph_t *s_graph(djn_dev_t *d, djn_dev_stream_t *s, uint8_t *x, int byte) {
    djn_dev_graph_t *g = NULL;
    CHECK_EQ_INT(djn_dev_capture_begin(d, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_memset(d, x, byte, 1, s), DJN_OK);
    CHECK_EQ_INT(djn_dev_capture_end(d, s, &g), DJN_OK);
    return g;
}

static uint64_t s_graphs(djn_dev_t *d) {
    djn_dev_fake_stats_t fs;
    djn_dev_fake_stats(d, &fs);
    return fs.graphs;
}

static void test_shape_keys(void) {
    CHECK_EQ_INT(djn_gcache_bucket(0), 0);
    CHECK_EQ_INT(djn_gcache_bucket(-1), -1);
    CHECK_EQ_INT(djn_gcache_bucket(64), 64);
    CHECK_EQ_INT(djn_gcache_bucket(65), 128);
    CHECK_EQ_INT(djn_gcache_bucket(128), 128);
    CHECK_EQ_INT(djn_gcache_bucket(129), 256);
    CHECK_EQ_INT(djn_gcache_bucket(4096), 4096);
    CHECK_EQ_INT(djn_gcache_bucket(INT64_MAX), INT64_MAX);
    int64_t a[3] = {1, 64, 100}, b[3] = {1, 64, 120}, c[3] = {1, 63, 100}, e[2] = {1, 64};
    CHECK(djn_gcache_shape_key(a, 3, false) != djn_gcache_shape_key(b, 3, false));
    CHECK(djn_gcache_shape_key(a, 3, true) == djn_gcache_shape_key(b, 3, true)); /* 128 */
    CHECK(djn_gcache_shape_key(a, 3, true) != djn_gcache_shape_key(c, 3, true));
    CHECK(djn_gcache_shape_key(a, 3, true) != djn_gcache_shape_key(a, 3, false));
    CHECK(djn_gcache_shape_key(a, 2, false) == djn_gcache_shape_key(e, 2, false));
    CHECK(djn_gcache_shape_key(a, 2, false) != djn_gcache_shape_key(a, 3, false));
    CHECK(djn_gcache_shape_key(NULL, 0, false) != djn_gcache_shape_key(NULL, 0, true));
    /* a decode loop's growing length: one bucket key per power of two */
    uint64_t keys = 0, prev = 0;
    for (int64_t len = 65; len <= 1024; len++) {
        int64_t ints[2] = {4096, len};
        uint64_t k = djn_gcache_shape_key(ints, 2, true);
        keys += k != prev;
        prev = k;
    }
    CHECK_EQ_INT(keys, 4); /* 128, 256, 512, 1024 */
}

static void test_capture_policy_and_replay(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dev_stream_t *s = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    djn_gcache_t *c = djn_gcache_new(8, 2);
    djn_gcache_key_t k = s_key(1, 0, 7, 42);
    CHECK(djn_gcache_lookup(c, &k) == NULL);
    CHECK(!djn_gcache_want_capture(c, &k)); /* first run: lazy initialisation, no capture */
    CHECK(djn_gcache_lookup(c, &k) == NULL);
    CHECK(djn_gcache_want_capture(c, &k)); /* second run: capture it */
    uint8_t x = 0;
    CHECK_EQ_INT(djn_gcache_insert(c, &k, d, s_graph(d, s, &x, 9), 4096), DJN_OK);
    CHECK(!djn_gcache_want_capture(c, &k)); /* it has a graph */
    djn_gcache_entry_t *e = djn_gcache_lookup(c, &k);
    CHECK(e != NULL);
    CHECK_EQ_INT(djn_gcache_slab_base(e), 4096);
    CHECK_EQ_INT(djn_dev_graph_launch(d, djn_gcache_graph(e), s), DJN_OK); /* one launch */
    CHECK_EQ_INT(x, 9);
    CHECK_EQ_INT(djn_dev_fake_graph_launches(djn_gcache_graph(e)), 1);
    djn_gcache_release(c, &e);
    CHECK(e == NULL);
    djn_gcache_release(c, &e); /* NULL is fine */
    /* another shape of the same plan is another key */
    djn_gcache_key_t k2 = s_key(1, 0, 7, 43);
    CHECK(djn_gcache_lookup(c, &k2) == NULL);
    /* a refused key is never captured */
    djn_gcache_key_t r = s_key(2, 0, 7, 42);
    djn_gcache_refuse(c, &r);
    for (int i = 0; i < 4; i++)
        CHECK(!djn_gcache_want_capture(c, &r));
    CHECK_EQ_INT(djn_gcache_insert(c, &r, d, s_graph(d, s, &x, 1), 0), DJN_ERR_ARGS);
    /* a second graph for a key that has one is destroyed, the first kept */
    CHECK_EQ_INT(djn_gcache_insert(c, &k, d, s_graph(d, s, &x, 2), 0), DJN_ERR_ARGS);
    e = djn_gcache_lookup(c, &k);
    CHECK_EQ_INT(djn_gcache_slab_base(e), 4096);
    djn_gcache_release(c, &e);
    CHECK_EQ_INT(s_graphs(d), 1);
    djn_gcache_stats_t st;
    djn_gcache_stats(c, &st);
    CHECK_EQ_INT(st.hits, 2);
    CHECK_EQ_INT(st.misses, 3);
    CHECK_EQ_INT(st.captures, 1);
    CHECK_EQ_INT(st.refused, 1);
    CHECK_EQ_INT(st.graphs, 1);
    CHECK_EQ_INT(st.entries, 2); /* k (graph) and r (refused) */
    djn_gcache_destroy(&c);
    CHECK(c == NULL);
    djn_gcache_destroy(&c);
    CHECK_EQ_INT(s_graphs(d), 0);
    CHECK(djn_gcache_new(0, 2) == NULL);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_lru(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dev_stream_t *s = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    djn_gcache_t *c = djn_gcache_new(3, 1);
    uint8_t x = 0;
    for (uint64_t i = 0; i < 3; i++) {
        djn_gcache_key_t k = s_key(10 + i, 0, 1, 0);
        CHECK(djn_gcache_want_capture(c, &k)); /* capture_after 1 */
        CHECK_EQ_INT(djn_gcache_insert(c, &k, d, s_graph(d, s, &x, 1), 0), DJN_OK);
    }
    djn_gcache_key_t k10 = s_key(10, 0, 1, 0), k11 = s_key(11, 0, 1, 0), k13 = s_key(13, 0, 1, 0);
    djn_gcache_entry_t *held = djn_gcache_lookup(c, &k10); /* refreshed, and held */
    CHECK(held != NULL);
    CHECK(djn_gcache_want_capture(c, &k13)); /* a 4th key evicts the LRU: 11 */
    CHECK(djn_gcache_lookup(c, &k11) == NULL);
    CHECK_EQ_INT(s_graphs(d), 2);
    djn_gcache_key_t k14 = s_key(14, 0, 1, 0), k15 = s_key(15, 0, 1, 0);
    djn_gcache_want_capture(c, &k14);
    djn_gcache_want_capture(c, &k15); /* evicts 12, then 10 (held: its graph stays) */
    CHECK(djn_gcache_lookup(c, &k10) == NULL);
    CHECK_EQ_INT(s_graphs(d), 1);
    CHECK_EQ_INT(djn_dev_graph_launch(d, djn_gcache_graph(held), s), DJN_OK); /* still valid */
    djn_gcache_release(c, &held);
    CHECK_EQ_INT(s_graphs(d), 0);
    djn_gcache_stats_t st;
    djn_gcache_stats(c, &st);
    CHECK_EQ_INT(st.entries, 3);
    CHECK_EQ_INT(st.evictions, 3);
    CHECK_EQ_INT(st.graphs, 0);
    djn_gcache_destroy(&c);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_drops(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dev_stream_t *s = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    djn_gcache_t *c = djn_gcache_new(16, 1);
    uint8_t x = 0;
    /* plan 1 with three shapes on session 7, plan 1 on device 1, plan 2, session 8 */
    djn_gcache_key_t keys[6] = {s_key(1, 0, 7, 100), s_key(1, 0, 7, 200), s_key(1, 0, 7, 300),
                                s_key(1, 1, 7, 100), s_key(2, 0, 7, 100), s_key(1, 0, 8, 100)};
    for (int i = 0; i < 6; i++) {
        djn_gcache_want_capture(c, &keys[i]);
        CHECK_EQ_INT(djn_gcache_insert(c, &keys[i], d, s_graph(d, s, &x, 1), 0), DJN_OK);
    }
    djn_gcache_drop_plan(c, keys[0].fp, 0, 7);
    for (int i = 0; i < 6; i++) {
        djn_gcache_entry_t *e = djn_gcache_lookup(c, &keys[i]);
        CHECK((e != NULL) == (i >= 3));
        djn_gcache_release(c, &e);
    }
    CHECK_EQ_INT(s_graphs(d), 3);
    uint64_t sids[2] = {7, 99};
    djn_gcache_drop_sessions(c, sids, 2);
    djn_gcache_stats_t st;
    djn_gcache_stats(c, &st);
    CHECK_EQ_INT(st.entries, 1); /* session 8's */
    CHECK_EQ_INT(st.dropped, 5);
    CHECK_EQ_INT(s_graphs(d), 1);
    djn_gcache_destroy(&c);
    CHECK_EQ_INT(s_graphs(d), 0);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

/* A decoded GRAPH of session 7: aten::neg on slot 0, with fingerprint (fp, fp). */
static djn_msg_t *s_tlb_graph(uint64_t fp, uint32_t dev) {
    return neg_graph(fp, fp, dev, 0, 7);
}

static void test_dropped_with_the_plan_cache(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dev_stream_t *s = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    djn_gcache_t *c = djn_gcache_new(16, 1);
    djn_tlb_t *t = djn_tlb_new(2);
    djn_tlb_on_drop(t, djn_gcache_tlb_drop_fn, c);
    uint8_t x = 0;
    for (uint64_t fp = 1; fp <= 2; fp++) { /* two plans of session 7, a graph each */
        djn_msg_t *m = s_tlb_graph(fp, 0);
        if (m)
            djn_tlb_insert(t, 7, &m->u.graph, NULL, NULL, 0, 0, NULL);
        djn_msg_free(&m);
        djn_gcache_key_t k = {{fp, fp}, 0, 7, 5};
        djn_gcache_want_capture(c, &k);
        CHECK_EQ_INT(djn_gcache_insert(c, &k, d, s_graph(d, s, &x, 1), 0), DJN_OK);
    }
    CHECK_EQ_INT(s_graphs(d), 2);
    djn_msg_t *m = s_tlb_graph(3, 0); /* a third plan evicts plan 1 and its graph */
    if (m)
        djn_tlb_insert(t, 7, &m->u.graph, NULL, NULL, 0, 0, NULL);
    djn_msg_free(&m);
    djn_gcache_key_t k1 = {{1, 1}, 0, 7, 5}, k2 = {{2, 2}, 0, 7, 5};
    CHECK(djn_gcache_lookup(c, &k1) == NULL);
    djn_gcache_entry_t *e = djn_gcache_lookup(c, &k2);
    CHECK(e != NULL);
    djn_gcache_release(c, &e);
    CHECK_EQ_INT(s_graphs(d), 1);
    uint64_t sid = 7; /* the session goes: its plans and their graphs */
    djn_tlb_drop_sessions(t, &sid, 1);
    CHECK(djn_gcache_lookup(c, &k2) == NULL);
    CHECK_EQ_INT(s_graphs(d), 0);
    djn_tlb_on_drop(t, NULL, NULL);
    djn_tlb_destroy(&t);
    djn_gcache_destroy(&c);
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

static void test_host_oom(void) {
    djn_dev_t *d = djn_dev_fake_new();
    djn_dev_stream_t *s = NULL;
    CHECK_EQ_INT(djn_dev_stream_new(d, 0, &s), DJN_OK);
    uint8_t x = 0;
    for (int64_t n = 0; n < 6; n++) {
        djn_dev_graph_t *g = s_graph(d, s, &x, 1); /* before the countdown */
        djn_mem_fail_after(n);
        djn_gcache_t *c = djn_gcache_new(4, 1);
        djn_gcache_key_t k = s_key(1, 0, 1, 0);
        if (c) {
            djn_gcache_want_capture(c, &k);
            djn_status_t st = djn_gcache_insert(c, &k, d, g, 0); /* takes g either way */
            CHECK(st == DJN_OK || st == DJN_ERR_NOMEM);
            djn_gcache_destroy(&c);
        } else {
            djn_dev_graph_destroy(d, g);
        }
        djn_mem_fail_after(-1);
        CHECK_EQ_INT(s_graphs(d), 0);
    }
    djn_dev_stream_destroy(d, s);
    djn_dev_destroy(&d);
}

int main(void) {
    RUN(test_shape_keys);
    RUN(test_capture_policy_and_replay);
    RUN(test_lru);
    RUN(test_drops);
    RUN(test_dropped_with_the_plan_cache);
    RUN(test_host_oom);
    return djn_test_report();
}
