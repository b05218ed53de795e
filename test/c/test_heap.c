/* test_heap.c: unit tests for the Data segment allocator (server/djn_heap.c).
 *
 * What is covered, in the order of main():
 *   1. Creation: bad align, capacity rounding, destroy of NULL.
 *   2. Basics: rounding, nbytes 0, size_of, stats, filling the heap exactly.
 *   3. Refused frees: never-allocated, interior, misaligned, huge and double-freed offsets
 *      return DJN_ERR_ARGS and change nothing.
 *   4. Coalescing: A, B, C adjacent, free A and C then B gives one block; every order of
 *      freeing three blocks; freeing many blocks upwards, downwards and interleaved.
 *   5. Best fit: a request lands in the smallest hole that fits, lowest address among
 *      equals, even with a larger hole at a lower address; OOM when the free bytes add
 *      up but no single block fits.
 *   6. Randomized traces (fixed-seed PRNG, 200k operations, sizes 1 B .. 1 MiB, skewed
 *      small, capacity small enough that OOM happens) against a reference model, a
 *      sorted array of live [offset, size) intervals. Because the policy is exact
 *      best-fit with lowest-address ties, the model predicts the exact offset of every
 *      allocation and which requests must be OOM; the two agreeing on every call also
 *      proves no overlap, alignment and bounds. Stats are compared exactly after every
 *      operation and djn_heap_check walks every internal structure. Then everything is
 *      freed: one free block of the whole capacity.
 *   7. Fault injection: djn_mem_fail_after(n) for every n that hits an allocation of a
 *      trace that grows the block pool and the map several times; a call either fails
 *      with DJN_ERR_NOMEM leaving the heap exactly as it was, or succeeds as the model
 *      says.
 * The harness checks that counted host memory returns to its start after each test. */
#include "djn_test.h"

#include "djn_heap.h"
#include "djn_mem.h"
#include "djn_status.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024ull)

/* ------------------------------------------------------------------ helpers */

/* 1 B .. 1 MiB, log-uniform in the exponent: most requests small, some large. */
static uint64_t rng_size(void) {
    uint64_t e = rng_below(21);
    return 1 + rng_below(1ull << e);
}

static uint64_t round_up(uint64_t n, uint64_t a) {
    return (n + a - 1) / a * a;
}

static void stats_of(const djn_heap_t *h, djn_heap_stats_t *st) {
    djn_heap_stats(h, st);
}

static int stats_equal(const djn_heap_stats_t *a, const djn_heap_stats_t *b) {
    return a->capacity == b->capacity && a->used == b->used && a->peak == b->peak &&
           a->free_bytes == b->free_bytes && a->largest_free == b->largest_free &&
           a->free_blocks == b->free_blocks && a->allocs == b->allocs &&
           a->fragmentation == b->fragmentation;
}

static uint64_t must_alloc(djn_heap_t *h, uint64_t n) {
    uint64_t off = UINT64_MAX;
    djn_status_t st = djn_heap_alloc(h, n, &off);
    CHECK_EQ_INT(st, DJN_OK);
    return off;
}

/* ------------------------------------------------------------------ reference model */

#define MODEL_MAX (1u << 18)

/* Every this many operations a trace runs the O(n) checks; the rest compare the
 * counters, which are O(1) on both sides. 1: after every operation. */
static uint64_t s_full_every = 1, s_ops;

/* Live blocks sorted by offset. */
static struct {
    uint64_t off[MODEL_MAX], size[MODEL_MAX];
    uint32_t n;
    uint64_t capacity, used, peak;
} M;

static void model_init(uint64_t capacity) {
    s_ops = 0;
    M.n = 0;
    M.capacity = capacity;
    M.used = M.peak = 0;
}

static uint32_t model_find(uint64_t off) { /* first index with M.off[i] >= off */
    uint32_t lo = 0, hi = M.n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (M.off[mid] < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void model_insert(uint64_t off, uint64_t size) {
    uint32_t i = model_find(off);
    memmove(&M.off[i + 1], &M.off[i], (M.n - i) * sizeof(uint64_t));
    memmove(&M.size[i + 1], &M.size[i], (M.n - i) * sizeof(uint64_t));
    M.off[i] = off;
    M.size[i] = size;
    M.n++;
    M.used += size;
    if (M.used > M.peak)
        M.peak = M.used;
}

static void model_remove(uint32_t i) {
    M.used -= M.size[i];
    memmove(&M.off[i], &M.off[i + 1], (M.n - i - 1) * sizeof(uint64_t));
    memmove(&M.size[i], &M.size[i + 1], (M.n - i - 1) * sizeof(uint64_t));
    M.n--;
}

static int model_is_live(uint64_t off) {
    uint32_t i = model_find(off);
    return i < M.n && M.off[i] == off;
}

/* Walks the gaps between live blocks: best fit for `size` (UINT64_MAX: none fits) and
 * the stats the heap must report. */
static uint64_t model_gaps(uint64_t size, djn_heap_stats_t *st) {
    uint64_t best = UINT64_MAX, best_len = UINT64_MAX, end = 0;
    memset(st, 0, sizeof(*st));
    for (uint32_t i = 0; i <= M.n; i++) {
        uint64_t start = i < M.n ? M.off[i] : M.capacity;
        uint64_t len = start - end;
        if (len) {
            st->free_blocks++;
            st->free_bytes += len;
            if (len > st->largest_free)
                st->largest_free = len;
            if (len >= size && len < best_len) {
                best = end;
                best_len = len;
            }
        }
        if (i < M.n)
            end = M.off[i] + M.size[i];
    }
    st->capacity = M.capacity;
    st->used = M.used;
    st->peak = M.peak;
    st->allocs = M.n;
    st->fragmentation =
        st->free_bytes ? 1.0 - (double)st->largest_free / (double)st->free_bytes : 0.0;
    return best;
}

/* Heap and model agree on every stat and the heap's internal invariants hold. */
static int model_agrees(const djn_heap_t *h) {
    djn_heap_stats_t want, got;
    stats_of(h, &got);
    if (++s_ops % s_full_every != 0) {
        int ok = got.used == M.used && got.peak == M.peak && got.allocs == M.n &&
                 got.free_bytes == M.capacity - M.used && got.capacity == M.capacity;
        if (!ok)
            djn_t_fail(__FILE__, __LINE__, "heap counters differ from the model");
        return ok;
    }
    model_gaps(UINT64_MAX, &want);
    int ok = stats_equal(&want, &got) && djn_heap_check(h) == DJN_OK;
    if (!ok) {
        char m[512];
        snprintf(m, sizeof m,
                 "model: used %llu free %llu largest %llu blocks %llu allocs %llu; heap: used "
                 "%llu free %llu largest %llu blocks %llu allocs %llu; check %d",
                 (unsigned long long)want.used, (unsigned long long)want.free_bytes,
                 (unsigned long long)want.largest_free, (unsigned long long)want.free_blocks,
                 (unsigned long long)want.allocs, (unsigned long long)got.used,
                 (unsigned long long)got.free_bytes, (unsigned long long)got.largest_free,
                 (unsigned long long)got.free_blocks, (unsigned long long)got.allocs,
                 (int)djn_heap_check(h));
        djn_t_fail(__FILE__, __LINE__, m);
    }
    return ok;
}

/* One allocation checked against the model. Returns 0 on a mismatch (already reported).
 * *nomem_ok: a DJN_ERR_NOMEM is allowed (fault injection); set to 2 when it happened. */
static int model_alloc(djn_heap_t *h, uint64_t n, uint64_t align, int *nomem) {
    uint64_t size = round_up(n ? n : 1, align);
    djn_heap_stats_t want;
    uint64_t expect = n > M.capacity ? UINT64_MAX : model_gaps(size, &want);
    uint64_t off = 12345;
    djn_status_t st = djn_heap_alloc(h, n, &off);
    if (st == DJN_ERR_NOMEM && nomem && *nomem) {
        *nomem = 2;
        CHECK_EQ_INT(off, 12345);
        return model_agrees(h);
    }
    if (expect == UINT64_MAX) {
        CHECK_EQ_INT(st, DJN_ERR_OOM);
        CHECK_EQ_INT(off, 12345);
        return st == DJN_ERR_OOM && model_agrees(h);
    }
    CHECK_EQ_INT(st, DJN_OK);
    CHECK_EQ_INT(off, expect);
    if (st != DJN_OK || off != expect)
        return 0;
    /* redundant with the exact prediction, but these are the properties that matter */
    CHECK(off % align == 0);
    CHECK(off + size <= M.capacity);
    CHECK_EQ_INT(djn_heap_size_of(h, off), size);
    model_insert(off, size);
    uint32_t i = model_find(off);
    CHECK(i == 0 || M.off[i - 1] + M.size[i - 1] <= off);
    CHECK(i + 1 == M.n || off + size <= M.off[i + 1]);
    return model_agrees(h);
}

static int model_free(djn_heap_t *h, uint32_t i) {
    uint64_t off = M.off[i];
    CHECK_EQ_INT(djn_heap_size_of(h, off), M.size[i]);
    djn_status_t st = djn_heap_free(h, off);
    CHECK_EQ_INT(st, DJN_OK);
    if (st != DJN_OK)
        return 0;
    model_remove(i);
    CHECK_EQ_INT(djn_heap_size_of(h, off), 0);
    return model_agrees(h);
}

/* A free the heap must refuse without changing anything. */
static int model_bogus_free(djn_heap_t *h, uint64_t off) {
    if (model_is_live(off))
        return 1;
    djn_heap_stats_t before, after;
    stats_of(h, &before);
    CHECK_EQ_INT(djn_heap_size_of(h, off), 0);
    CHECK_EQ_INT(djn_heap_free(h, off), DJN_ERR_ARGS);
    stats_of(h, &after);
    CHECK(stats_equal(&before, &after));
    return model_agrees(h);
}

static void model_drain(djn_heap_t *h) {
    while (M.n) {
        if (!model_free(h, (uint32_t)rng_below(M.n)))
            return;
    }
    djn_heap_stats_t st;
    stats_of(h, &st);
    CHECK_EQ_INT(st.used, 0);
    CHECK_EQ_INT(st.allocs, 0);
    CHECK_EQ_INT(st.free_blocks, 1);
    CHECK_EQ_INT(st.largest_free, st.capacity);
    CHECK_EQ_INT(st.free_bytes, st.capacity);
    CHECK(st.fragmentation == 0.0);
}

/* ------------------------------------------------------------------ 1. creation */

static void test_new_args(void) {
    CHECK(djn_heap_new(1 * MiB, 0) == NULL);
    CHECK(djn_heap_new(1 * MiB, 3) == NULL);
    CHECK(djn_heap_new(1 * MiB, 384) == NULL);
    CHECK(djn_heap_new(0, 256) == NULL);
    CHECK(djn_heap_new(255, 256) == NULL);
    djn_heap_t *h = djn_heap_new(1000, 256); /* rounded down to 768 */
    CHECK(h != NULL);
    if (!h)
        return;
    djn_heap_stats_t st;
    stats_of(h, &st);
    CHECK_EQ_INT(st.capacity, 768);
    CHECK_EQ_INT(st.free_bytes, 768);
    CHECK_EQ_INT(st.largest_free, 768);
    CHECK_EQ_INT(st.free_blocks, 1);
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
    djn_heap_destroy(&h);
    CHECK(h == NULL);
    djn_heap_destroy(&h); /* NULL object */
    djn_heap_destroy(NULL);
    h = djn_heap_new(UINT64_MAX, 1); /* the whole offset space, align 1 */
    CHECK(h != NULL);
    if (h) {
        uint64_t off;
        CHECK_EQ_INT(djn_heap_alloc(h, UINT64_MAX, &off), DJN_OK);
        CHECK_EQ_INT(off, 0);
        CHECK_EQ_INT(djn_heap_alloc(h, 0, &off), DJN_ERR_OOM);
        CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
        CHECK_EQ_INT(djn_heap_free(h, 0), DJN_OK);
        CHECK_EQ_INT(djn_heap_free(h, UINT64_MAX), DJN_ERR_ARGS);
        CHECK_EQ_INT(djn_heap_size_of(h, UINT64_MAX), 0);
        djn_heap_destroy(&h);
    }
}

/* ------------------------------------------------------------------ 2. basics */

static void test_alloc_basic(void) {
    djn_heap_t *h = djn_heap_new(1 * MiB, 256);
    CHECK(h != NULL);
    if (!h)
        return;
    uint64_t a = must_alloc(h, 0), b = must_alloc(h, 1), c = must_alloc(h, 256),
             d = must_alloc(h, 257);
    CHECK_EQ_INT(a, 0);
    CHECK_EQ_INT(b, 256);
    CHECK_EQ_INT(c, 512);
    CHECK_EQ_INT(d, 768);
    CHECK_EQ_INT(djn_heap_size_of(h, a), 256);
    CHECK_EQ_INT(djn_heap_size_of(h, b), 256);
    CHECK_EQ_INT(djn_heap_size_of(h, c), 256);
    CHECK_EQ_INT(djn_heap_size_of(h, d), 512);
    CHECK_EQ_INT(djn_heap_size_of(h, 1280), 0);      /* free space */
    CHECK_EQ_INT(djn_heap_size_of(h, 768 + 256), 0); /* inside d */
    djn_heap_stats_t st;
    stats_of(h, &st);
    CHECK_EQ_INT(st.capacity, 1 * MiB);
    CHECK_EQ_INT(st.used, 1280);
    CHECK_EQ_INT(st.peak, 1280);
    CHECK_EQ_INT(st.free_bytes, 1 * MiB - 1280);
    CHECK_EQ_INT(st.largest_free, 1 * MiB - 1280);
    CHECK_EQ_INT(st.free_blocks, 1);
    CHECK_EQ_INT(st.allocs, 4);
    CHECK(st.fragmentation == 0.0);
    CHECK_EQ_INT(djn_heap_free(h, b), DJN_OK);
    CHECK_EQ_INT(djn_heap_free(h, d), DJN_OK);
    stats_of(h, &st);
    CHECK_EQ_INT(st.used, 512);
    CHECK_EQ_INT(st.peak, 1280);
    CHECK_EQ_INT(st.free_blocks, 2); /* b's hole, and d merged into the tail */
    CHECK_EQ_INT(st.largest_free, 1 * MiB - 768);
    CHECK(st.fragmentation > 0.0 && st.fragmentation < 0.001);
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
    djn_heap_destroy(&h);
}

static void test_fill_exactly(void) {
    djn_heap_t *h = djn_heap_new(64 * KiB, 256);
    CHECK(h != NULL);
    if (!h)
        return;
    uint64_t off = 1;
    CHECK_EQ_INT(djn_heap_alloc(h, 64 * KiB - 255, &off), DJN_OK); /* rounds to all of it */
    CHECK_EQ_INT(off, 0);
    djn_heap_stats_t st;
    stats_of(h, &st);
    CHECK_EQ_INT(st.used, 64 * KiB);
    CHECK_EQ_INT(st.free_bytes, 0);
    CHECK_EQ_INT(st.free_blocks, 0);
    CHECK_EQ_INT(st.largest_free, 0);
    CHECK(st.fragmentation == 0.0);
    CHECK_EQ_INT(djn_heap_alloc(h, 0, &off), DJN_ERR_OOM);
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
    CHECK_EQ_INT(djn_heap_free(h, 0), DJN_OK);
    stats_of(h, &st);
    CHECK_EQ_INT(st.free_blocks, 1);
    CHECK_EQ_INT(st.largest_free, 64 * KiB);
    CHECK_EQ_INT(djn_heap_alloc(h, 64 * KiB + 1, &off), DJN_ERR_OOM);
    CHECK_EQ_INT(djn_heap_alloc(h, UINT64_MAX, &off), DJN_ERR_OOM); /* no rounding overflow */
    CHECK_EQ_INT(djn_heap_alloc(h, UINT64_MAX - 255, &off), DJN_ERR_OOM);
    djn_heap_destroy(&h);
}

/* ------------------------------------------------------------------ 3. refused frees */

static void test_free_bogus(void) {
    djn_heap_t *h = djn_heap_new(1 * MiB, 256);
    CHECK(h != NULL);
    if (!h)
        return;
    uint64_t a = must_alloc(h, 1000), b = must_alloc(h, 5000), c = must_alloc(h, 10);
    djn_heap_stats_t before, after;
    stats_of(h, &before);
    const uint64_t bogus[] = {b + 256,    b + 1,          a + 1,     3 * MiB, 1 * MiB,
                              UINT64_MAX, UINT64_MAX - 1, 512 * KiB, c + 256};
    for (size_t i = 0; i < sizeof bogus / sizeof bogus[0]; i++) {
        CHECK_EQ_INT(djn_heap_free(h, bogus[i]), DJN_ERR_ARGS);
        CHECK_EQ_INT(djn_heap_size_of(h, bogus[i]), 0);
    }
    stats_of(h, &after);
    CHECK(stats_equal(&before, &after));
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);

    /* double free, with the space merged into a neighbour in between */
    CHECK_EQ_INT(djn_heap_free(h, b), DJN_OK);
    stats_of(h, &before);
    CHECK_EQ_INT(djn_heap_free(h, b), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_heap_free(h, c), DJN_OK); /* c merges with b's hole and the tail */
    CHECK_EQ_INT(djn_heap_free(h, c), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_heap_free(h, b), DJN_ERR_ARGS);
    stats_of(h, &after);
    CHECK_EQ_INT(after.allocs, 1);
    CHECK_EQ_INT(after.free_blocks, 1);
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
    /* still works: the next allocation reuses the merged space right after a */
    CHECK_EQ_INT(must_alloc(h, 1), 1024);
    djn_heap_destroy(&h);
}

/* ------------------------------------------------------------------ 4. coalescing */

static void test_coalesce_abc(void) {
    djn_heap_t *h = djn_heap_new(1 * MiB, 256);
    CHECK(h != NULL);
    if (!h)
        return;
    djn_heap_stats_t st;
    /* A, B, C fill the heap: freeing A and C then B must leave one block */
    uint64_t a = must_alloc(h, 256 * KiB), b = must_alloc(h, 512 * KiB),
             c = must_alloc(h, 256 * KiB);
    CHECK_EQ_INT(a, 0);
    CHECK_EQ_INT(b, 256 * KiB);
    CHECK_EQ_INT(c, 768 * KiB);
    CHECK_EQ_INT(djn_heap_free(h, a), DJN_OK);
    CHECK_EQ_INT(djn_heap_free(h, c), DJN_OK);
    stats_of(h, &st);
    CHECK_EQ_INT(st.free_blocks, 2);
    CHECK_EQ_INT(st.largest_free, 256 * KiB);
    CHECK(st.fragmentation == 0.5);
    CHECK_EQ_INT(djn_heap_free(h, b), DJN_OK);
    stats_of(h, &st);
    CHECK_EQ_INT(st.free_blocks, 1);
    CHECK_EQ_INT(st.largest_free, 1 * MiB);
    CHECK_EQ_INT(st.used, 0);
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);

    /* with D after C: A+B+C becomes one hole below D */
    a = must_alloc(h, 1000);
    b = must_alloc(h, 3000);
    c = must_alloc(h, 2000);
    uint64_t d = must_alloc(h, 1);
    CHECK_EQ_INT(djn_heap_free(h, a), DJN_OK);
    CHECK_EQ_INT(djn_heap_free(h, c), DJN_OK);
    stats_of(h, &st);
    CHECK_EQ_INT(st.free_blocks, 3);
    CHECK_EQ_INT(djn_heap_free(h, b), DJN_OK);
    stats_of(h, &st);
    CHECK_EQ_INT(st.free_blocks, 2);
    CHECK_EQ_INT(st.free_bytes, 1 * MiB - 256);
    CHECK_EQ_INT(djn_heap_size_of(h, d), 256);
    /* the merged hole is exactly 1024 + 3072 + 2048: an exact fit goes there */
    CHECK_EQ_INT(must_alloc(h, 6144), 0);
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
    djn_heap_destroy(&h);
}

static void test_coalesce_all_orders(void) {
    static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                     {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    for (int spacer = 0; spacer < 2; spacer++) {
        for (int o = 0; o < 6; o++) {
            djn_heap_t *h = djn_heap_new(64 * KiB, 256);
            CHECK(h != NULL);
            if (!h)
                return;
            uint64_t pre = spacer ? must_alloc(h, 100) : 0, blk[3], post = 0;
            for (int i = 0; i < 3; i++)
                blk[i] = must_alloc(h, 256u * (unsigned)(i + 1));
            if (spacer)
                post = must_alloc(h, 100);
            for (int i = 0; i < 3; i++) {
                CHECK_EQ_INT(djn_heap_free(h, blk[orders[o][i]]), DJN_OK);
                CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
            }
            djn_heap_stats_t st;
            stats_of(h, &st);
            CHECK_EQ_INT(st.free_blocks, spacer ? 2 : 1);
            if (spacer) {
                CHECK_EQ_INT(must_alloc(h, 1536), 256); /* the merged hole, exact fit */
                CHECK_EQ_INT(djn_heap_free(h, pre), DJN_OK);
                CHECK_EQ_INT(djn_heap_free(h, post), DJN_OK);
                CHECK_EQ_INT(djn_heap_free(h, 256), DJN_OK);
                stats_of(h, &st);
                CHECK_EQ_INT(st.free_blocks, 1);
            }
            CHECK_EQ_INT(st.largest_free, 64 * KiB);
            djn_heap_destroy(&h);
        }
    }
}

static void test_coalesce_many(void) {
    enum { N = 256 };
    for (int pattern = 0; pattern < 3; pattern++) {
        djn_heap_t *h = djn_heap_new(N * 256, 256);
        CHECK(h != NULL);
        if (!h)
            return;
        for (int i = 0; i < N; i++)
            CHECK_EQ_INT(must_alloc(h, 1), (uint64_t)i * 256);
        for (int k = 0; k < N; k++) {
            int i = k;        /* pattern 0: upwards */
            if (pattern == 1) /* downwards */
                i = N - 1 - k;
            else if (pattern == 2) /* evens, then the odds between them */
                i = k < N / 2 ? 2 * k : 2 * (k - N / 2) + 1;
            CHECK_EQ_INT(djn_heap_free(h, (uint64_t)i * 256), DJN_OK);
        }
        djn_heap_stats_t st;
        stats_of(h, &st);
        CHECK_EQ_INT(st.free_blocks, 1);
        CHECK_EQ_INT(st.largest_free, N * 256);
        CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
        djn_heap_destroy(&h);
    }
}

/* ------------------------------------------------------------------ 5. best fit, OOM */

static void test_best_fit(void) {
    djn_heap_t *h = djn_heap_new(1 * MiB, 256);
    CHECK(h != NULL);
    if (!h)
        return;
    /* holes (after the frees): 4096 @0, 1024, 2048, 2048, separated by 256-byte spacers,
     * then the tail */
    const uint64_t hole[4] = {4096, 1024, 2048, 2048};
    uint64_t at[4];
    for (int i = 0; i < 4; i++) {
        at[i] = must_alloc(h, hole[i]);
        must_alloc(h, 1);
    }
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(djn_heap_free(h, at[i]), DJN_OK);
    djn_heap_stats_t st;
    stats_of(h, &st);
    CHECK_EQ_INT(st.free_blocks, 5);

    /* 1536: the first 2048 hole, not the lower 4096 one nor the tail */
    CHECK_EQ_INT(must_alloc(h, 1500), at[2]);
    /* 1024: the exact 1024 hole */
    CHECK_EQ_INT(must_alloc(h, 1024), at[1]);
    /* 2048: the remaining exact 2048 hole (at[3]), not the 4096 hole */
    CHECK_EQ_INT(must_alloc(h, 2048), at[3]);
    /* 512: the 512 left of at[2]'s hole (2048 - 1536), smaller than 4096 */
    CHECK_EQ_INT(must_alloc(h, 300), at[2] + 1536);
    /* 3072: the 4096 hole, front part */
    CHECK_EQ_INT(must_alloc(h, 3072), at[0]);
    /* 4096: nothing but the tail fits */
    uint64_t t = must_alloc(h, 4096);
    CHECK(t > at[3]);
    /* equal sizes: the lowest address wins */
    djn_heap_t *g = djn_heap_new(64 * KiB, 256);
    CHECK(g != NULL);
    if (g) {
        uint64_t x[6];
        for (int i = 0; i < 6; i++)
            x[i] = must_alloc(g, 512);
        must_alloc(g, 64 * KiB - 6 * 512); /* no tail */
        CHECK_EQ_INT(djn_heap_free(g, x[4]), DJN_OK);
        CHECK_EQ_INT(djn_heap_free(g, x[2]), DJN_OK);
        CHECK_EQ_INT(djn_heap_free(g, x[0]), DJN_OK);
        CHECK_EQ_INT(must_alloc(g, 1), x[0]);
        CHECK_EQ_INT(must_alloc(g, 512), x[2]); /* exact beats x[0]'s 256 remainder */
        CHECK_EQ_INT(must_alloc(g, 1), x[0] + 256);
        CHECK_EQ_INT(djn_heap_check(g), DJN_OK);
        djn_heap_destroy(&g);
    }
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
    djn_heap_destroy(&h);
}

static void test_oom_fragmented(void) {
    const uint64_t X = 64 * KiB;
    djn_heap_t *h = djn_heap_new(4 * X, 256);
    CHECK(h != NULL);
    if (!h)
        return;
    uint64_t b[4];
    for (int i = 0; i < 4; i++)
        b[i] = must_alloc(h, X);
    CHECK_EQ_INT(djn_heap_free(h, b[0]), DJN_OK);
    CHECK_EQ_INT(djn_heap_free(h, b[2]), DJN_OK);
    djn_heap_stats_t before, after;
    stats_of(h, &before);
    CHECK_EQ_INT(before.free_bytes, 2 * X);
    CHECK_EQ_INT(before.largest_free, X);
    CHECK(before.fragmentation == 0.5);
    uint64_t off = 7;
    CHECK_EQ_INT(djn_heap_alloc(h, X + 1, &off), DJN_ERR_OOM); /* 2X free, no block fits */
    CHECK_EQ_INT(djn_heap_alloc(h, 2 * X, &off), DJN_ERR_OOM);
    CHECK_EQ_INT(off, 7);
    stats_of(h, &after);
    CHECK(stats_equal(&before, &after));
    CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
    CHECK_EQ_INT(must_alloc(h, X), b[0]);
    CHECK_EQ_INT(djn_heap_free(h, b[1]), DJN_OK); /* b[1] and b[2] merge */
    CHECK_EQ_INT(must_alloc(h, 2 * X), b[1]);
    djn_heap_destroy(&h);
}

/* ------------------------------------------------------------------ 6. random traces */

typedef struct {
    uint64_t seed, capacity, ops;
    uint32_t align;
} trace_cfg_t;

/* Alternates growing (65% allocs) and shrinking (35%) phases so the heap swings between
 * nearly empty and full (OOM); 1% of operations are refused frees. Every allocation's
 * offset or OOM is predicted exactly; the O(n) comparison of all stats and
 * djn_heap_check run every 8th operation (and on the final drain, every one). */
static void run_trace(const trace_cfg_t *cfg) {
    rng_seed(cfg->seed);
    model_init(cfg->capacity);
    s_full_every = 8;
    djn_heap_t *h = djn_heap_new(cfg->capacity, cfg->align);
    CHECK(h != NULL);
    if (!h)
        return;
    uint64_t ok = 0, oom = 0, frees = 0, bogus = 0, last_freed = 0, max_live = 0;
    double max_frag = 0;
    for (uint64_t op = 0; op < cfg->ops; op++) {
        int grow = (op / 20000) % 2 == 0;
        uint64_t r = rng_below(100);
        int fine;
        if (r == 0) {
            uint64_t off;
            switch (rng_below(5)) {
            case 0:
                off = last_freed;
                break; /* double free */
            case 1:
                off = M.n ? M.off[rng_below(M.n)] + cfg->align : 0;
                break; /* interior */
            case 2:
                off = M.n ? M.off[rng_below(M.n)] + 1 : 1;
                break; /* misaligned */
            case 3:
                off = cfg->capacity + rng_below(1000) * cfg->align;
                break;
            default:
                off = rng() & ~(uint64_t)(cfg->align - 1);
                break;
            }
            fine = model_bogus_free(h, off);
            bogus++;
        } else if (M.n == 0 || r < (grow ? 65u : 35u)) {
            uint64_t before = M.n;
            fine = model_alloc(h, rng_size(), cfg->align, NULL);
            if (M.n > before)
                ok++;
            else
                oom++;
        } else {
            uint32_t i = (uint32_t)rng_below(M.n);
            last_freed = M.off[i];
            fine = model_free(h, i);
            frees++;
        }
        if (!fine) {
            printf("trace seed %llu diverged at op %llu\n", (unsigned long long)cfg->seed,
                   (unsigned long long)op);
            break;
        }
        if (M.n > max_live)
            max_live = M.n;
        if (op % 1000 == 0) {
            djn_heap_stats_t st;
            stats_of(h, &st);
            if (st.fragmentation > max_frag)
                max_frag = st.fragmentation;
        }
    }
    printf("    trace seed %llu: %llu allocs, %llu OOM, %llu frees, %llu refused frees, "
           "max %llu live, max fragmentation %.3f\n",
           (unsigned long long)cfg->seed, (unsigned long long)ok, (unsigned long long)oom,
           (unsigned long long)frees, (unsigned long long)bogus, (unsigned long long)max_live,
           max_frag);
    CHECK(ok > cfg->ops / 4);
    CHECK(oom > 0);
    CHECK(oom < ok);
    s_full_every = 1;
    model_drain(h);
    djn_heap_destroy(&h);
}

static void test_trace_200k(void) {
    trace_cfg_t cfg = {.seed = 1, .capacity = 48 * MiB, .ops = 200000, .align = 256};
    run_trace(&cfg);
}

static void test_trace_seeds(void) {
    for (uint64_t seed = 2; seed < 6; seed++) {
        trace_cfg_t cfg = {
            .seed = seed, .capacity = 16 * MiB + 4096 * seed, .ops = 40000, .align = 256};
        run_trace(&cfg);
    }
}

static void test_trace_align_4k(void) {
    trace_cfg_t cfg = {.seed = 99, .capacity = 24 * MiB, .ops = 60000, .align = 4096};
    run_trace(&cfg);
}

/* ------------------------------------------------------------------ 7. fault injection */

static void test_fault_injection_new(void) {
    int got_null = 0, got_heap = 0;
    for (int64_t n = 0; n < 8; n++) {
        djn_mem_fail_after(n);
        djn_heap_t *h = djn_heap_new(1 * MiB, 256);
        djn_mem_fail_after(-1);
        if (!h) {
            got_null++;
            continue;
        }
        got_heap++;
        CHECK_EQ_INT(djn_heap_check(h), DJN_OK);
        djn_heap_destroy(&h);
    }
    CHECK(got_null > 0);
    CHECK(got_heap > 0);
}

/* A trace that grows to ~600 live blocks, so the record pool and the map grow several
 * times; fault n fails the n-th host allocation made during it. */
static void test_fault_injection_trace(void) {
    int64_t n;
    uint64_t nomem_total = 0;
    for (n = 0; n < 200; n++) {
        rng_seed(7);
        model_init(64 * MiB);
        djn_heap_t *h = djn_heap_new(64 * MiB, 256);
        CHECK(h != NULL);
        if (!h)
            return;
        djn_mem_fail_after(n);
        int nomem_seen = 0, fine = 1;
        for (int op = 0; op < 1500 && fine; op++) {
            if (M.n == 0 || rng_below(100) < 70) {
                int nomem = 1;
                uint64_t before = M.n;
                fine = model_alloc(h, 1 + rng_below(64 * KiB), 256, &nomem);
                if (nomem == 2) {
                    nomem_seen++;
                    CHECK_EQ_INT(M.n, before);
                }
            } else {
                fine = model_free(h, (uint32_t)rng_below(M.n)); /* never allocates */
            }
        }
        djn_mem_fail_after(-1);
        CHECK(nomem_seen <= 1);
        nomem_total += (uint64_t)nomem_seen;
        if (fine)
            model_drain(h);
        djn_heap_destroy(&h);
        if (!fine || djn_t_checks_failed)
            break;
        if (!nomem_seen) /* n is past every allocation the trace makes */
            break;
    }
    printf("    fault injection: %llu injected failures, all recovered, n up to %lld\n",
           (unsigned long long)nomem_total, (long long)n);
    CHECK(nomem_total >= 10);
    CHECK(n < 200);
}

int main(void) {
    /* 1. creation */
    RUN(test_new_args);
    /* 2. basics */
    RUN(test_alloc_basic);
    RUN(test_fill_exactly);
    /* 3. refused frees */
    RUN(test_free_bogus);
    /* 4. coalescing */
    RUN(test_coalesce_abc);
    RUN(test_coalesce_all_orders);
    RUN(test_coalesce_many);
    /* 5. best fit, OOM */
    RUN(test_best_fit);
    RUN(test_oom_fragmented);
    /* 6. random traces */
    RUN(test_trace_200k);
    RUN(test_trace_seeds);
    RUN(test_trace_align_4k);
    /* 7. fault injection */
    RUN(test_fault_injection_new);
    RUN(test_fault_injection_trace);
    return djn_test_report();
}
