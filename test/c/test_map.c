/* test_map.c: the open-addressing u64 map (handle tables, slot tables, caches): a long
 * random trace of put/get/del checked against a direct-mapped reference, iteration, and
 * backward-shift deletion keeping every probe chain intact. */
#include "djn_test.h"

#include "djn_map.h"

#define S_KEYS 4096

static uint64_t s_rng = 88172645463325252ull;
static uint64_t s_next(void) {
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return s_rng;
}

static void test_random_trace(void) {
    static uint64_t ref[S_KEYS];
    static bool has[S_KEYS];
    memset(has, 0, sizeof has);
    djn_map_t m = {0};
    uint32_t live = 0;
    for (int i = 0; i < 300000; i++) {
        uint32_t k = (uint32_t)(s_next() % S_KEYS);
        uint64_t key = (uint64_t)k * 0x100 + 0x1000; /* handle-like, never 0 */
        uint64_t v;
        switch (s_next() % 3) {
        case 0:
            CHECK(djn_map_put(&m, key, (uint64_t)i));
            if (!has[k])
                live++;
            has[k] = true;
            ref[k] = (uint64_t)i;
            break;
        case 1:
            CHECK(djn_map_get(&m, key, &v) == has[k]);
            if (has[k])
                CHECK_EQ_INT(v, ref[k]);
            break;
        default:
            CHECK(djn_map_del(&m, key, &v) == has[k]);
            if (has[k]) {
                CHECK_EQ_INT(v, ref[k]);
                live--;
            }
            has[k] = false;
        }
        CHECK_EQ_INT(m.len, live);
    }
    /* every live key is still reachable after all the deletions (no broken chains) */
    for (uint32_t k = 0; k < S_KEYS; k++) {
        uint64_t v;
        CHECK(djn_map_get(&m, (uint64_t)k * 0x100 + 0x1000, &v) == has[k]);
    }
    uint32_t seen = 0;
    uint64_t key, val;
    for (uint32_t it = 0; djn_map_next(&m, &it, &key, &val);)
        seen++;
    CHECK_EQ_INT(seen, live);
    djn_map_clear(&m);
    CHECK_EQ_INT(m.len, 0);
    CHECK(!djn_map_get(&m, 0x1000, NULL));
    djn_map_release(&m);
}

static void test_zero_key_and_empty(void) {
    djn_map_t m = {0};
    CHECK(!djn_map_get(&m, 5, NULL));
    CHECK(!djn_map_del(&m, 5, NULL));
    CHECK(!djn_map_put(&m, 0, 1)); /* key 0 is reserved */
    CHECK_EQ_INT(m.len, 0);
    djn_map_release(&m);
}

static void test_colliding_keys(void) {
    /* keys that share low bits stress linear probing and backward shift */
    djn_map_t m = {0};
    for (uint64_t i = 1; i <= 1000; i++)
        CHECK(djn_map_put(&m, i << 32, i));
    for (uint64_t i = 1; i <= 1000; i += 2)
        CHECK(djn_map_del(&m, i << 32, NULL));
    for (uint64_t i = 1; i <= 1000; i++) {
        uint64_t v = 0;
        bool present = djn_map_get(&m, i << 32, &v);
        CHECK(present == (i % 2 == 0));
        if (present)
            CHECK_EQ_INT(v, i);
    }
    djn_map_release(&m);
}

static void test_out_of_memory(void) {
    djn_map_t m = {0};
    djn_mem_fail_after(0);
    CHECK(!djn_map_put(&m, 7, 7)); /* the first growth fails cleanly */
    CHECK_EQ_INT(m.len, 0);
    CHECK(djn_map_put(&m, 7, 7));
    djn_map_release(&m);
}

int main(void) {
    RUN(test_random_trace);
    RUN(test_zero_key_and_empty);
    RUN(test_colliding_keys);
    RUN(test_out_of_memory);
    return djn_test_report();
}
