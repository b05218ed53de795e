/* test_slab.c: unit tests for the Stack slab (server/djn_slab.c).
 *
 * What is covered, in the order of main():
 *   1. Creation: bad align, destroy of NULL, a failed host allocation.
 *   2. Bumping: alignment of every offset, nbytes 0, stats.
 *   3. OOM: at capacity, in the alignment padding, with an unaligned capacity, with sizes
 *      that would overflow; nothing changes on failure.
 *   4. reserve_at: misaligned (DJN_ERR_ARGS), past capacity or overflowing (DJN_ERR_OOM),
 *      high-water accounting, bumps going above planned placements.
 *   5. Marks and resets: nested marks, reuse of offsets, high water kept, resets counted.
 *   6. A randomized trace (fixed-seed PRNG, 200k operations mixing alloc, reserve_at,
 *      mark and reset to a random earlier mark) against a reference model: live
 *      intervals tagged with the mark depth they were made at. Every offset is predicted
 *      exactly, no live intervals overlap, everything live lies below top, and all stats
 *      match after every operation. */
#include "djn_test.h"

#include "djn_mem.h"
#include "djn_slab.h"
#include "djn_status.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024ull)

static uint64_t rng_size(void) { /* 1 B .. 1 MiB, skewed small */
    uint64_t e = rng_below(21);
    return 1 + rng_below(1ull << e);
}

static int stats_equal(const djn_slab_stats_t *a, const djn_slab_stats_t *b) {
    return a->capacity == b->capacity && a->top == b->top && a->high_water == b->high_water &&
           a->resets == b->resets && a->allocs == b->allocs;
}

static uint64_t must_alloc(djn_slab_t *s, uint64_t n) {
    uint64_t off = UINT64_MAX;
    CHECK_EQ_INT(djn_slab_alloc(s, n, &off), DJN_OK);
    return off;
}

/* ------------------------------------------------------------------ 1. creation */

static void test_new_args(void) {
    CHECK(djn_slab_new(1 * MiB, 0) == NULL);
    CHECK(djn_slab_new(1 * MiB, 3) == NULL);
    CHECK(djn_slab_new(1 * MiB, 768) == NULL);
    djn_slab_destroy(NULL);
    djn_slab_t *s = NULL;
    djn_slab_destroy(&s);
    djn_mem_fail_after(0);
    CHECK(djn_slab_new(1 * MiB, 256) == NULL);
    djn_mem_fail_after(-1);
    s = djn_slab_new(1 * MiB, 256);
    CHECK(s != NULL);
    if (!s)
        return;
    djn_slab_stats_t st;
    djn_slab_stats(s, &st);
    CHECK_EQ_INT(st.capacity, 1 * MiB);
    CHECK_EQ_INT(st.top, 0);
    CHECK_EQ_INT(st.high_water, 0);
    CHECK_EQ_INT(st.resets, 0);
    CHECK_EQ_INT(st.allocs, 0);
    djn_slab_destroy(&s);
    CHECK(s == NULL);
}

/* ------------------------------------------------------------------ 2. bumping */

static void test_bump_alignment(void) {
    djn_slab_t *s = djn_slab_new(1 * MiB, 256);
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK_EQ_INT(must_alloc(s, 1), 0);
    CHECK_EQ_INT(djn_slab_mark(s), 1);
    CHECK_EQ_INT(must_alloc(s, 1), 256);
    CHECK_EQ_INT(must_alloc(s, 300), 512);
    CHECK_EQ_INT(djn_slab_mark(s), 812);
    CHECK_EQ_INT(must_alloc(s, 256), 1024);
    CHECK_EQ_INT(must_alloc(s, 0), 1280); /* counts as one byte: its own offset */
    CHECK_EQ_INT(must_alloc(s, 0), 1536);
    djn_slab_stats_t st;
    djn_slab_stats(s, &st);
    CHECK_EQ_INT(st.top, 1537);
    CHECK_EQ_INT(st.high_water, 1537);
    CHECK_EQ_INT(st.allocs, 6);
    djn_slab_destroy(&s);

    /* other alignments */
    const uint32_t aligns[] = {1, 8, 4096};
    for (size_t i = 0; i < 3; i++) {
        s = djn_slab_new(1 * MiB, aligns[i]);
        CHECK(s != NULL);
        if (!s)
            return;
        uint64_t prev_end = 0;
        for (int k = 0; k < 50; k++) {
            uint64_t n = 1 + (uint64_t)k * 37, off = must_alloc(s, n);
            CHECK_EQ_INT(off % aligns[i], 0);
            CHECK(off >= prev_end);
            CHECK(off - prev_end < aligns[i]);
            prev_end = off + n;
        }
        djn_slab_destroy(&s);
    }
}

/* ------------------------------------------------------------------ 3. OOM */

static void test_oom(void) {
    djn_slab_t *s = djn_slab_new(1000, 256); /* an unaligned capacity */
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK_EQ_INT(must_alloc(s, 700), 0);
    CHECK_EQ_INT(must_alloc(s, 232), 768); /* ends exactly at capacity */
    djn_slab_stats_t before, after;
    djn_slab_stats(s, &before);
    uint64_t off = 42;
    CHECK_EQ_INT(djn_slab_alloc(s, 1, &off), DJN_ERR_OOM); /* top == capacity */
    CHECK_EQ_INT(djn_slab_alloc(s, 0, &off), DJN_ERR_OOM);
    CHECK_EQ_INT(off, 42);
    djn_slab_stats(s, &after);
    CHECK(stats_equal(&before, &after));

    djn_slab_reset(s, 0);
    CHECK_EQ_INT(must_alloc(s, 769), 0);
    /* the next offset would be 1024, past the capacity: the padding alone does not fit */
    CHECK_EQ_INT(djn_slab_alloc(s, 1, &off), DJN_ERR_OOM);
    djn_slab_reset(s, 0);
    CHECK_EQ_INT(must_alloc(s, 1), 0);
    CHECK_EQ_INT(djn_slab_alloc(s, 1000 - 256 + 1, &off), DJN_ERR_OOM);
    CHECK_EQ_INT(djn_slab_alloc(s, UINT64_MAX, &off), DJN_ERR_OOM); /* no overflow */
    CHECK_EQ_INT(djn_slab_alloc(s, UINT64_MAX - 255, &off), DJN_ERR_OOM);
    CHECK_EQ_INT(must_alloc(s, 1000 - 256), 256);
    djn_slab_destroy(&s);

    s = djn_slab_new(0, 256); /* an empty slab refuses everything */
    CHECK(s != NULL);
    if (s) {
        CHECK_EQ_INT(djn_slab_alloc(s, 0, &off), DJN_ERR_OOM);
        CHECK_EQ_INT(djn_slab_reserve_at(s, 0, 0), DJN_OK);
        CHECK_EQ_INT(djn_slab_reserve_at(s, 0, 1), DJN_ERR_OOM);
        djn_slab_destroy(&s);
    }
    s = djn_slab_new(UINT64_MAX, 256); /* the whole offset space */
    CHECK(s != NULL);
    if (s) {
        CHECK_EQ_INT(must_alloc(s, UINT64_MAX - 200), 0);
        /* round_up(top, 256) would be 2^64: refused without wrapping around */
        CHECK_EQ_INT(djn_slab_alloc(s, 1, &off), DJN_ERR_OOM);
        djn_slab_reset(s, 0);
        CHECK_EQ_INT(must_alloc(s, UINT64_MAX - 256), 0);
        CHECK_EQ_INT(must_alloc(s, 255), UINT64_MAX - 255); /* the last aligned block */
        CHECK_EQ_INT(djn_slab_mark(s), UINT64_MAX);
        djn_slab_destroy(&s);
    }
}

/* ------------------------------------------------------------------ 4. reserve_at */

static void test_reserve_at(void) {
    djn_slab_t *s = djn_slab_new(1 * MiB, 256);
    CHECK(s != NULL);
    if (!s)
        return;
    djn_slab_stats_t st, st2;
    djn_slab_stats(s, &st);
    CHECK_EQ_INT(djn_slab_reserve_at(s, 1, 10), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_slab_reserve_at(s, 255, 10), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_slab_reserve_at(s, 1 * MiB - 256, 257), DJN_ERR_OOM);
    CHECK_EQ_INT(djn_slab_reserve_at(s, 1 * MiB + 256, 0), DJN_ERR_OOM);
    CHECK_EQ_INT(djn_slab_reserve_at(s, 256, UINT64_MAX), DJN_ERR_OOM);
    CHECK_EQ_INT(djn_slab_reserve_at(s, UINT64_MAX - 255, 256), DJN_ERR_OOM); /* overflow */
    CHECK_EQ_INT(djn_slab_reserve_at(s, UINT64_MAX - 255, 1), DJN_ERR_OOM);
    djn_slab_stats(s, &st2);
    CHECK(stats_equal(&st, &st2));

    /* a planned placement at 64 KiB: top and high water follow it */
    CHECK_EQ_INT(djn_slab_reserve_at(s, 64 * KiB, 1000), DJN_OK);
    djn_slab_stats(s, &st);
    CHECK_EQ_INT(st.top, 64 * KiB + 1000);
    CHECK_EQ_INT(st.high_water, 64 * KiB + 1000);
    CHECK_EQ_INT(st.allocs, 0); /* reserve_at is not a bump allocation */
    /* below top: accounted, top unchanged */
    CHECK_EQ_INT(djn_slab_reserve_at(s, 0, 4096), DJN_OK);
    CHECK_EQ_INT(djn_slab_mark(s), 64 * KiB + 1000);
    /* bumps go above the placements */
    CHECK_EQ_INT(must_alloc(s, 1), 64 * KiB + 1024);
    /* the full range up to capacity */
    CHECK_EQ_INT(djn_slab_reserve_at(s, 0, 1 * MiB), DJN_OK);
    djn_slab_stats(s, &st);
    CHECK_EQ_INT(st.top, 1 * MiB);
    CHECK_EQ_INT(st.high_water, 1 * MiB);
    uint64_t off;
    CHECK_EQ_INT(djn_slab_alloc(s, 1, &off), DJN_ERR_OOM);
    /* high water survives a reset */
    djn_slab_reset(s, 0);
    CHECK_EQ_INT(djn_slab_reserve_at(s, 512, 512), DJN_OK);
    djn_slab_stats(s, &st);
    CHECK_EQ_INT(st.top, 1024);
    CHECK_EQ_INT(st.high_water, 1 * MiB);
    CHECK_EQ_INT(st.resets, 1);
    djn_slab_destroy(&s);
}

/* ------------------------------------------------------------------ 5. marks and resets */

static void test_mark_reset(void) {
    djn_slab_t *s = djn_slab_new(1 * MiB, 256);
    CHECK(s != NULL);
    if (!s)
        return;
    uint64_t base = must_alloc(s, 1000); /* weights of a whole run, say */
    uint64_t m0 = djn_slab_mark(s);
    CHECK_EQ_INT(m0, 1000);
    uint64_t a = must_alloc(s, 5000);
    CHECK_EQ_INT(a, 1024);
    uint64_t m1 = djn_slab_mark(s);
    uint64_t b = must_alloc(s, 100 * KiB);
    djn_slab_reset(s, m1);
    CHECK_EQ_INT(djn_slab_mark(s), m1);
    CHECK_EQ_INT(must_alloc(s, 10), b); /* b's offset is reused */
    djn_slab_reset(s, m0);
    CHECK_EQ_INT(must_alloc(s, 1), a);
    djn_slab_reset(s, m0); /* resetting to where we are is fine */
    djn_slab_reset(s, m0);
    djn_slab_stats_t st;
    djn_slab_stats(s, &st);
    CHECK_EQ_INT(st.top, m0);
    CHECK_EQ_INT(st.high_water, b + 100 * KiB);
    CHECK_EQ_INT(st.resets, 4);
    CHECK_EQ_INT(st.allocs, 5);
    djn_slab_reset(s, 0);
    CHECK_EQ_INT(must_alloc(s, 1), base);
    djn_slab_destroy(&s);
}

/* ------------------------------------------------------------------ 6. random trace */

#define T_MAX 4096
#define MARKS_MAX 64

/* Live intervals in creation order; depth = number of marks on the stack when made. */
static struct {
    uint64_t off[T_MAX], size[T_MAX];
    uint32_t depth[T_MAX], n;
    uint64_t mark_val[MARKS_MAX], mark_n[MARKS_MAX]; /* value, live intervals at the time */
    uint32_t nmarks;
    djn_slab_stats_t st;
} T;

static int overlaps_live(uint64_t off, uint64_t size) {
    for (uint32_t i = 0; i < T.n; i++)
        if (off < T.off[i] + T.size[i] && T.off[i] < off + size)
            return 1;
    return 0;
}

static void t_add(uint64_t off, uint64_t size) {
    if (T.n == T_MAX) { /* keep the model bounded: forget the oldest checks-wise */
        memmove(&T.off[0], &T.off[1], (T_MAX - 1) * sizeof(uint64_t));
        memmove(&T.size[0], &T.size[1], (T_MAX - 1) * sizeof(uint64_t));
        T.n--;
        for (uint32_t k = 0; k < T.nmarks; k++)
            if (T.mark_n[k])
                T.mark_n[k]--;
    }
    T.off[T.n] = off;
    T.size[T.n] = size;
    T.n++;
    uint64_t end = off + size;
    if (end > T.st.top)
        T.st.top = end;
    if (T.st.top > T.st.high_water)
        T.st.high_water = T.st.top;
}

static void test_random_trace(void) {
    const uint64_t cap = 8 * MiB + 12345, align = 256;
    rng_seed(11);
    memset(&T, 0, sizeof T);
    T.st.capacity = cap;
    djn_slab_t *s = djn_slab_new(cap, (uint32_t)align);
    CHECK(s != NULL);
    if (!s)
        return;
    uint64_t n_alloc = 0, n_oom = 0, n_res = 0, n_res_bad = 0, n_reset = 0;
    for (uint64_t op = 0; op < 200000 && !djn_t_checks_failed; op++) {
        uint64_t r = rng_below(100);
        djn_slab_stats_t st;
        if (r < 55) {
            uint64_t n = rng_size(), off = 7;
            uint64_t want = (T.st.top + align - 1) / align * align;
            djn_status_t rc = djn_slab_alloc(s, n, &off);
            if (want <= cap && n <= cap - want) {
                CHECK_EQ_INT(rc, DJN_OK);
                CHECK_EQ_INT(off, want);
                CHECK(!overlaps_live(off, n));
                t_add(off, n);
                T.st.allocs++;
                n_alloc++;
            } else {
                CHECK_EQ_INT(rc, DJN_ERR_OOM);
                CHECK_EQ_INT(off, 7);
                n_oom++;
            }
        } else if (r < 70) {
            /* a placement: usually aligned and in range, sometimes neither */
            uint64_t off = rng_below(cap / align + 4) * align, n = rng_size();
            if (rng_below(10) == 0)
                off += 1 + rng_below(align - 1);
            djn_status_t rc = djn_slab_reserve_at(s, off, n);
            if (off % align) {
                CHECK_EQ_INT(rc, DJN_ERR_ARGS);
                n_res_bad++;
            } else if (off + n > cap) {
                CHECK_EQ_INT(rc, DJN_ERR_OOM);
                n_res_bad++;
            } else {
                CHECK_EQ_INT(rc, DJN_OK);
                t_add(off, n); /* planned placements may overlap each other: the planner's */
                n_res++;
            }
        } else if (r < 85) {
            if (T.nmarks < MARKS_MAX) {
                T.mark_val[T.nmarks] = djn_slab_mark(s);
                CHECK_EQ_INT(T.mark_val[T.nmarks], T.st.top);
                T.mark_n[T.nmarks++] = T.n;
            }
        } else {
            /* reset to a random mark on the stack (or 0); marks above it are gone */
            uint32_t k = (uint32_t)rng_below(T.nmarks + 1);
            uint64_t mark = k < T.nmarks ? T.mark_val[k] : 0;
            uint32_t keep = k < T.nmarks ? (uint32_t)T.mark_n[k] : 0;
            djn_slab_reset(s, mark);
            T.nmarks = k < T.nmarks ? k : 0;
            T.n = keep;
            T.st.top = mark;
            T.st.resets++;
            n_reset++;
            for (uint32_t i = 0; i < T.n; i++) /* everything still live is below top */
                CHECK(T.off[i] + T.size[i] <= mark);
        }
        djn_slab_stats(s, &st);
        CHECK(stats_equal(&st, &T.st));
        CHECK(st.top <= st.high_water && st.high_water <= cap);
    }
    printf("    slab trace: %llu allocs, %llu OOM, %llu placements, %llu refused, %llu resets, "
           "high water %llu of %llu\n",
           (unsigned long long)n_alloc, (unsigned long long)n_oom, (unsigned long long)n_res,
           (unsigned long long)n_res_bad, (unsigned long long)n_reset,
           (unsigned long long)T.st.high_water, (unsigned long long)cap);
    CHECK(n_oom > 0 && n_alloc > n_oom && n_res_bad > 0 && n_reset > 0);
    djn_slab_destroy(&s);
}

int main(void) {
    /* 1. creation */
    RUN(test_new_args);
    /* 2. bumping */
    RUN(test_bump_alignment);
    /* 3. OOM */
    RUN(test_oom);
    /* 4. reserve_at */
    RUN(test_reserve_at);
    /* 5. marks and resets */
    RUN(test_mark_reset);
    /* 6. random trace */
    RUN(test_random_trace);
    return djn_test_report();
}
