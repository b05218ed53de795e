/* test_tlb.c: the plan cache: hits, misses, LRU eviction, references that outlive
 * eviction, and counted memory returning to zero. */
#include "djn_test.h"

#include "djn_codec.h"
#include "djn_tlb.h"

/* A decoded GRAPH with one node and the given fingerprint. */
static djn_msg_t *s_graph(uint64_t fp_hi, uint64_t fp_lo, uint32_t dev) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_GRAPH, 7, 1);
    djn_enc_map(&b, 4);
    djn_enc_cstr(&b, "dev");
    djn_enc_uint(&b, dev);
    djn_enc_cstr(&b, "binds");
    djn_enc_array(&b, 1);
    djn_enc_uint(&b, 0x1000);
    djn_enc_cstr(&b, "nodes");
    djn_enc_array(&b, 1);
    djn_enc_array(&b, 5);
    djn_enc_cstr(&b, "aten::neg");
    djn_enc_cstr(&b, "");
    djn_enc_array(&b, 1);
    djn_tref_t r = {0};
    r.handle = 0; /* slot 0 */
    r.dtype = DJN_DTYPE_F32;
    r.ndim = 1;
    r.sizes[0] = 4;
    r.strides[0] = 1;
    djn_enc_tref(&b, &r);
    djn_enc_array(&b, 1);
    djn_enc_nil(&b);
    djn_enc_uint(&b, 0);
    djn_enc_cstr(&b, "fp");
    djn_enc_array(&b, 2);
    djn_enc_uint(&b, fp_hi);
    djn_enc_uint(&b, fp_lo);
    djn_msg_t *m = NULL;
    char err[256];
    djn_status_t st = djn_msg_decode(b.data, b.len, 0, &m, NULL, err, sizeof err);
    djn_buf_release(&b);
    CHECK(st == DJN_OK);
    return m;
}

static void test_hit_and_miss(void) {
    djn_tlb_t *t = djn_tlb_new(8);
    djn_msg_t *m = s_graph(1, 2, 0);
    CHECK_EQ_INT(m->u.graph.nslots, 1);
    djn_tlb_insert(t, &m);
    CHECK(m == NULL);
    uint64_t fp[2] = {1, 2}, other[2] = {1, 3};
    djn_tlb_entry_t *e = djn_tlb_lookup(t, fp, 0, 7);
    CHECK(e != NULL);
    if (e) {
        CHECK_EQ_INT(djn_tlb_graph(e)->nnodes, 1);
        CHECK_STR(djn_tlb_graph(e)->nodes[0].op, "aten::neg");
    }
    djn_tlb_release(t, &e);
    CHECK(e == NULL);
    CHECK(djn_tlb_lookup(t, other, 0, 7) == NULL);
    CHECK(djn_tlb_lookup(t, fp, 1, 7) == NULL); /* another device */
    CHECK(djn_tlb_lookup(t, fp, 0, 8) == NULL); /* another session: never shared */
    djn_tlb_stats_t st;
    djn_tlb_stats(t, &st);
    CHECK_EQ_INT(st.hits, 1);
    CHECK_EQ_INT(st.misses, 3);
    CHECK_EQ_INT(st.entries, 1);
    djn_tlb_destroy(&t);
    CHECK(t == NULL);
}

static void test_lru_eviction(void) {
    djn_tlb_t *t = djn_tlb_new(3);
    for (uint64_t i = 1; i <= 3; i++) {
        djn_msg_t *m = s_graph(i, i, 0);
        djn_tlb_insert(t, &m);
    }
    uint64_t one[2] = {1, 1};
    djn_tlb_entry_t *e = djn_tlb_lookup(t, one, 0, 7); /* 1 becomes most recent */
    djn_tlb_release(t, &e);
    djn_msg_t *m = s_graph(4, 4, 0);
    djn_tlb_insert(t, &m); /* evicts 2, the least recently used */
    uint64_t two[2] = {2, 2}, four[2] = {4, 4};
    CHECK(djn_tlb_lookup(t, two, 0, 7) == NULL);
    e = djn_tlb_lookup(t, one, 0, 7);
    CHECK(e != NULL);
    djn_tlb_release(t, &e);
    e = djn_tlb_lookup(t, four, 0, 7);
    CHECK(e != NULL);
    djn_tlb_release(t, &e);
    djn_tlb_stats_t st;
    djn_tlb_stats(t, &st);
    CHECK_EQ_INT(st.entries, 3);
    CHECK_EQ_INT(st.evictions, 1);
    djn_tlb_destroy(&t);
}

static void test_reference_outlives_eviction(void) {
    djn_tlb_t *t = djn_tlb_new(1);
    djn_msg_t *m = s_graph(9, 9, 0);
    djn_tlb_insert(t, &m);
    uint64_t fp[2] = {9, 9};
    djn_tlb_entry_t *held = djn_tlb_lookup(t, fp, 0, 7);
    m = s_graph(10, 10, 0);
    djn_tlb_insert(t, &m); /* evicts 9 while a worker holds it */
    CHECK(djn_tlb_lookup(t, fp, 0, 7) == NULL);
    CHECK(held != NULL);
    if (held)
        CHECK_STR(djn_tlb_graph(held)->nodes[0].op, "aten::neg"); /* still readable */
    djn_tlb_release(t, &held);
    djn_tlb_destroy(&t);
}

static void test_duplicate_and_unfingerprinted(void) {
    djn_tlb_t *t = djn_tlb_new(4);
    djn_msg_t *a = s_graph(5, 5, 0), *b = s_graph(5, 5, 0), *c = s_graph(0, 0, 0);
    djn_tlb_insert(t, &a);
    djn_tlb_insert(t, &b); /* already cached: not taken */
    CHECK(b != NULL);
    djn_tlb_insert(t, &c); /* no fingerprint: not cached */
    CHECK(c != NULL);
    djn_msg_free(&b);
    djn_msg_free(&c);
    djn_tlb_stats_t st;
    djn_tlb_stats(t, &st);
    CHECK_EQ_INT(st.entries, 1);
    djn_tlb_destroy(&t);
}

static void test_capacity_zero(void) {
    djn_tlb_t *t = djn_tlb_new(0);
    djn_msg_t *m = s_graph(3, 3, 0);
    djn_tlb_insert(t, &m);
    CHECK(m != NULL); /* disabled: nothing kept */
    djn_msg_free(&m);
    djn_tlb_destroy(&t);
}

int main(void) {
    RUN(test_hit_and_miss);
    RUN(test_lru_eviction);
    RUN(test_reference_outlives_eviction);
    RUN(test_duplicate_and_unfingerprinted);
    RUN(test_capacity_zero);
    return djn_test_report();
}
