/* test_plan.c: unit tests for the activation-memory planner (server/djn_plan.c).
 *
 * What is covered, in the order of main():
 *   1. Edge cases: the empty plan, one request, disjoint and all-overlapping lifetimes,
 *      zero-byte requests, argument errors (first > last, bad align, NULLs) and 64-bit
 *      size limits.
 *   2. djn_plan_lifetimes on a small hand-written graph, and its argument errors.
 *   3. Validity on thousands of random instances from a fixed-seed PRNG: every offset
 *      aligned, no two requests with intersecting lifetimes overlapping in memory,
 *      peak == max(offset + aligned size), lower_bound equal to a brute-force count and
 *      <= peak, the same offsets as the algorithm written the plain way (ref_plan), and
 *      the same input giving the same plan.
 *   4. Quality on traces shaped like real models, built from their operator wiring with
 *      float32 sizes and djn_plan_lifetimes: an MLP chain with skips, a Llama-style
 *      decoder stack (prefill at seq 32, decode at seq 1 with and without a KV cache), a
 *      VGG-16 and a ResNet-18, and beyond those a GPT-2 stack and a U-Net. Each prints
 *      peak / lower bound and must be <= 1.15. Random lifetimes print their mean ratio
 *      (no bound is asserted: greedy has none there).
 *   5. Planning time at n = 20k, in CPU time so a busy machine does not inflate it
 *      (printed, never asserted): a decoder trace, random lifetimes, and the degenerate
 *      case where all 20k are live at once.
 *   6. Fault injection (djn_mem_fail_after) over every allocation of a build.
 * Each test runs in its own child process (djn_test.h). Everything is deterministic. */
#include "djn_test.h"

#include <assert.h>
#include <time.h>

#include "djn_mem.h"
#include "djn_plan.h"
#include "djn_status.h"

#define SLAB_ALIGN 256 /* the stack slab's alignment (DESIGN.md) */
#define QUALITY_MAX 1.15

/* ------------------------------------------------------------------ helpers */

static uint64_t asize(uint64_t nbytes, uint32_t align) {
    return (nbytes + align - 1) & ~((uint64_t)align - 1);
}

static int intersects(const djn_plan_req_t *a, const djn_plan_req_t *b) {
    return a->first <= b->last && b->first <= a->last;
}

/* CPU time of this process, in ms. */
static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Brute-force lower bound: max over each request's first t of the bytes live at t. */
static uint64_t brute_lower_bound(const djn_plan_req_t *r, uint32_t n, uint32_t align) {
    uint64_t best = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t live = 0;
        for (uint32_t j = 0; j < n; j++)
            if (r[j].first <= r[i].first && r[i].first <= r[j].last)
                live += asize(r[j].nbytes, align);
        if (live > best)
            best = live;
    }
    return best;
}

static const djn_plan_req_t *s_sort_reqs;

static int by_first(const void *x, const void *y) {
    uint32_t a = s_sort_reqs[*(const uint32_t *)x].first;
    uint32_t b = s_sort_reqs[*(const uint32_t *)y].first;
    return (a > b) - (a < b);
}

/* Checks a plan against its requests; returns the number of violations (each printed).
 * Overlaps are checked over every pair for small n, and over the pairs found by walking
 * the requests in order of `first` for large n (the same pairs, found faster). */
static int check_plan(const djn_plan_req_t *r, uint32_t n, uint32_t align, const djn_plan_t *p) {
    int bad = 0;
    if (p->n != n) {
        printf("plan n %u, want %u\n", p->n, n);
        return 1;
    }
    uint64_t peak = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (p->offsets[i] % align) {
            printf("request %u: offset %llu not aligned to %u\n", i,
                   (unsigned long long)p->offsets[i], align);
            bad++;
        }
        uint64_t end = p->offsets[i] + asize(r[i].nbytes, align);
        if (end > peak)
            peak = end;
    }
    if (peak != p->peak) {
        printf("peak %llu, max(offset + size) %llu\n", (unsigned long long)p->peak,
               (unsigned long long)peak);
        bad++;
    }
    if (p->peak < p->lower_bound) {
        printf("peak %llu below lower bound %llu\n", (unsigned long long)p->peak,
               (unsigned long long)p->lower_bound);
        bad++;
    }
    uint32_t *idx = NULL;
    if (n > 3000) {
        idx = malloc(n * sizeof *idx);
        for (uint32_t i = 0; i < n; i++)
            idx[i] = i;
        s_sort_reqs = r;
        qsort(idx, n, sizeof *idx, by_first);
    }
    for (uint32_t a = 0; a < n && bad < 10; a++) {
        for (uint32_t b = a + 1; b < n; b++) {
            uint32_t i = idx ? idx[a] : a, j = idx ? idx[b] : b;
            if (idx && r[j].first > r[i].last)
                break;
            if (!intersects(&r[i], &r[j]))
                continue;
            uint64_t si = asize(r[i].nbytes, align), sj = asize(r[j].nbytes, align);
            if (!si || !sj)
                continue;
            if (p->offsets[i] < p->offsets[j] + sj && p->offsets[j] < p->offsets[i] + si) {
                printf("requests %u [%u,%u] @%llu+%llu and %u [%u,%u] @%llu+%llu overlap\n", i,
                       r[i].first, r[i].last, (unsigned long long)p->offsets[i],
                       (unsigned long long)si, j, r[j].first, r[j].last,
                       (unsigned long long)p->offsets[j], (unsigned long long)sj);
                bad++;
            }
        }
    }
    free(idx);
    if (n <= 3000) {
        uint64_t lb = brute_lower_bound(r, n, align);
        if (lb != p->lower_bound) {
            printf("lower bound %llu, brute force %llu\n", (unsigned long long)p->lower_bound,
                   (unsigned long long)lb);
            bad++;
        }
    }
    return bad;
}

/* Builds, checks and returns the plan (NULL after a failed check). */
static djn_plan_t *plan_checked(const djn_plan_req_t *r, uint32_t n, uint32_t align) {
    djn_plan_t *p = NULL;
    djn_status_t st = djn_plan_build(r, n, align, &p);
    CHECK_EQ_INT(st, DJN_OK);
    if (st != DJN_OK)
        return NULL;
    int bad = check_plan(r, n, align, p);
    CHECK_EQ_INT(bad, 0);
    return p;
}

/* ------------------------------------------------------------------ 1. edge cases */

static void test_empty(void) {
    djn_plan_t *p = NULL;
    CHECK_EQ_INT(djn_plan_build(NULL, 0, 256, &p), DJN_OK);
    CHECK(p != NULL);
    if (p) {
        CHECK_EQ_INT(p->n, 0);
        CHECK(p->offsets == NULL);
        CHECK_EQ_INT(p->peak, 0);
        CHECK_EQ_INT(p->lower_bound, 0);
    }
    djn_plan_destroy(&p);
    CHECK(p == NULL);
    djn_plan_destroy(&p); /* NULL object */
    djn_plan_destroy(NULL);
}

static void test_one(void) {
    djn_plan_req_t r = {1000, 3, 7};
    djn_plan_t *p = plan_checked(&r, 1, 256);
    if (p) {
        CHECK_EQ_INT(p->offsets[0], 0);
        CHECK_EQ_INT(p->peak, 1024);
        CHECK_EQ_INT(p->lower_bound, 1024);
    }
    djn_plan_destroy(&p);
}

static void test_disjoint(void) {
    djn_plan_req_t r[6] = {{100, 0, 0},  {5000, 1, 1}, {300, 2, 3},
                           {4096, 4, 4}, {7, 5, 9},    {4000, 10, 10}};
    djn_plan_t *p = plan_checked(r, 6, 64);
    if (p) {
        CHECK_EQ_INT(p->peak, 5056); /* the largest, aligned */
        CHECK_EQ_INT(p->lower_bound, 5056);
        for (int i = 0; i < 6; i++)
            CHECK_EQ_INT(p->offsets[i], 0);
    }
    djn_plan_destroy(&p);
}

static void test_all_overlapping(void) {
    djn_plan_req_t r[5] = {{100, 0, 4}, {200, 1, 5}, {300, 2, 6}, {1, 3, 3}, {999, 0, 9}};
    djn_plan_t *p = plan_checked(r, 5, 8);
    if (p) {
        uint64_t sum = 104 + 200 + 304 + 8 + 1000;
        CHECK_EQ_INT(p->peak, sum);
        CHECK_EQ_INT(p->lower_bound, sum);
        /* largest first: 999 at 0, then 300, 200, 100, 1 stacked above it */
        CHECK_EQ_INT(p->offsets[4], 0);
        CHECK_EQ_INT(p->offsets[2], 1000);
        CHECK_EQ_INT(p->offsets[1], 1304);
        CHECK_EQ_INT(p->offsets[0], 1504);
        CHECK_EQ_INT(p->offsets[3], 1608);
    }
    djn_plan_destroy(&p);
}

/* A hole left by a dead tensor is reused. */
static void test_gap_reuse(void) {
    /* a chain: B reads A, C reads B; C takes A's place */
    djn_plan_req_t r[3] = {{1000, 0, 1}, {1000, 1, 2}, {1000, 2, 3}};
    djn_plan_t *p = plan_checked(r, 3, 256);
    if (p) {
        CHECK_EQ_INT(p->offsets[0], 0);
        CHECK_EQ_INT(p->offsets[1], 1024);
        CHECK_EQ_INT(p->offsets[2], 0);
        CHECK_EQ_INT(p->peak, 2048);
        CHECK_EQ_INT(p->lower_bound, 2048);
    }
    djn_plan_destroy(&p);

    /* Placement order 1, 0, 2, 3, 4, 5 (largest first, then by first, then index):
     *   1: 3072 [0,1] at 0            0: 1024 [0,9] at 3072
     *   2: 1024 [0,9] at 4096         3: 1024 [0,1] at 5120
     *   4: 1024 [0,9] at 6144
     *   5: 1024 [2,9] conflicts 0, 2, 4: holes [0, 3072) and [5120, 6144) */
    djn_plan_req_t h[6] = {{1024, 0, 9}, {3072, 0, 1}, {1024, 0, 9},
                           {1024, 0, 1}, {1024, 0, 9}, {1024, 2, 9}};
    p = plan_checked(h, 6, 1024);
    if (p) {
        CHECK_EQ_INT(p->offsets[1], 0);
        CHECK_EQ_INT(p->offsets[0], 3072);
        CHECK_EQ_INT(p->offsets[2], 4096);
        CHECK_EQ_INT(p->offsets[3], 5120);
        CHECK_EQ_INT(p->offsets[4], 6144);
        CHECK_EQ_INT(p->peak, 7168);
    }
    djn_plan_destroy(&p);
}

/* The lowest gap that fits wins (first fit), not the smallest sufficient one: in the
 * second case above, request 5 goes to the 3 KiB hole at 0, not the exact 1 KiB hole at
 * 5120 (djn_plan.c explains the choice). */
static void test_first_fit(void) {
    djn_plan_req_t h[6] = {{1024, 0, 9}, {3072, 0, 1}, {1024, 0, 9},
                           {1024, 0, 1}, {1024, 0, 9}, {1024, 2, 9}};
    djn_plan_t *p = plan_checked(h, 6, 1024);
    if (p)
        CHECK_EQ_INT(p->offsets[5], 0);
    djn_plan_destroy(&p);
}

static void test_zero_sizes(void) {
    djn_plan_req_t r[5] = {{0, 0, 9}, {512, 0, 3}, {0, 2, 2}, {512, 1, 4}, {0, 4, 4}};
    djn_plan_t *p = plan_checked(r, 5, 256);
    if (p) {
        CHECK_EQ_INT(p->peak, 1024);
        CHECK_EQ_INT(p->lower_bound, 1024);
    }
    djn_plan_destroy(&p);

    djn_plan_req_t z[3] = {{0, 0, 1}, {0, 0, 1}, {0, 5, 6}};
    p = plan_checked(z, 3, 1);
    if (p) {
        CHECK_EQ_INT(p->peak, 0);
        CHECK_EQ_INT(p->lower_bound, 0);
    }
    djn_plan_destroy(&p);
}

static void test_args(void) {
    djn_plan_req_t r[2] = {{64, 0, 1}, {64, 3, 2}};
    djn_plan_t *p = (djn_plan_t *)(uintptr_t)1;               /* must be overwritten with NULL */
    CHECK_EQ_INT(djn_plan_build(r, 2, 64, &p), DJN_ERR_ARGS); /* first > last */
    CHECK(p == NULL);
    r[1].first = 2;
    const uint32_t bad_align[] = {0, 3, 6, 100, 0x80000001u, 0xffffffffu};
    for (size_t i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++) {
        p = (djn_plan_t *)(uintptr_t)1;
        CHECK_EQ_INT(djn_plan_build(r, 2, bad_align[i], &p), DJN_ERR_ARGS);
        CHECK(p == NULL);
    }
    CHECK_EQ_INT(djn_plan_build(NULL, 2, 64, &p), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_plan_build(r, 2, 64, NULL), DJN_ERR_ARGS);
    /* every power of two works, up to 2^31 */
    for (unsigned s = 0; s < 32; s++) {
        p = plan_checked(r, 2, 1u << s);
        if (p)
            CHECK_EQ_INT(p->peak, (uint64_t)1 << (s > 6 ? s : 6));
        djn_plan_destroy(&p);
    }
}

static void test_limits(void) {
    djn_plan_t *p = NULL;
    djn_plan_req_t big = {UINT64_MAX, 0, 0};
    CHECK_EQ_INT(djn_plan_build(&big, 1, 2, &p), DJN_ERR_LIMIT); /* rounding overflows */
    CHECK(p == NULL);
    p = plan_checked(&big, 1, 1); /* fits exactly */
    if (p)
        CHECK(p->peak == UINT64_MAX);
    djn_plan_destroy(&p);
    djn_plan_req_t two[2] = {{1ull << 63, 0, 0}, {1ull << 63, 5, 5}};
    CHECK_EQ_INT(djn_plan_build(two, 2, 1, &p), DJN_ERR_LIMIT); /* the sum overflows */
    CHECK(p == NULL);
    /* lifetimes at the top of the u32 range (last + 1 must not wrap) */
    djn_plan_req_t top[3] = {
        {100, UINT32_MAX, UINT32_MAX}, {100, UINT32_MAX - 1, UINT32_MAX}, {100, 0, UINT32_MAX - 1}};
    p = plan_checked(top, 3, 4);
    if (p) { /* 2 at 0, 1 above it, 0 (dead to 2) back at 0 */
        CHECK_EQ_INT(p->offsets[2], 0);
        CHECK_EQ_INT(p->offsets[1], 100);
        CHECK_EQ_INT(p->offsets[0], 0);
        CHECK_EQ_INT(p->peak, 200);
        CHECK_EQ_INT(p->lower_bound, 200);
    }
    djn_plan_destroy(&p);
}

/* ------------------------------------------------------------------ 2. lifetimes */

static void test_lifetimes(void) {
    /* node 0: t0 = input op         node 1: t1 = f(t0)
     * node 2: t2 = g(t1)            node 3: t3 = h(t0, t2)
     * node 4: (no output) k(t1)     node 5: t4 = m(t3); t5 = dead output of node 5 */
    const uint32_t def[6] = {0, 1, 2, 3, 5, 5};
    const uint32_t ut[6] = {0, 1, 0, 2, 1, 3};
    const uint32_t un[6] = {1, 2, 3, 3, 4, 5};
    djn_plan_req_t r[6];
    for (int i = 0; i < 6; i++)
        r[i].nbytes = 1000 + (uint64_t)i;
    CHECK_EQ_INT(djn_plan_lifetimes(6, def, ut, un, 6, r), DJN_OK);
    const uint32_t want_first[6] = {0, 1, 2, 3, 5, 5}, want_last[6] = {3, 4, 3, 5, 5, 5};
    for (int i = 0; i < 6; i++) {
        CHECK_EQ_INT(r[i].first, want_first[i]);
        CHECK_EQ_INT(r[i].last, want_last[i]);
        CHECK_EQ_INT(r[i].nbytes, 1000 + (uint64_t)i); /* untouched */
    }
    djn_plan_t *p = plan_checked(r, 6, 256);
    djn_plan_destroy(&p);

    CHECK_EQ_INT(djn_plan_lifetimes(0, NULL, NULL, NULL, 0, NULL), DJN_OK);
    /* errors leave out_reqs untouched */
    djn_plan_req_t s[6];
    memcpy(s, r, sizeof s);
    const uint32_t ut_bad[1] = {6}, un_ok[1] = {5};
    CHECK_EQ_INT(djn_plan_lifetimes(6, def, ut_bad, un_ok, 1, s), DJN_ERR_ARGS);
    const uint32_t ut_ok[1] = {3}, un_early[1] = {2}; /* t3 is defined at node 3 */
    CHECK_EQ_INT(djn_plan_lifetimes(6, def, ut_ok, un_early, 1, s), DJN_ERR_ARGS);
    CHECK(memcmp(s, r, sizeof s) == 0);
    CHECK_EQ_INT(djn_plan_lifetimes(6, NULL, ut, un, 6, s), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_plan_lifetimes(6, def, NULL, un, 6, s), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_plan_lifetimes(6, def, ut, NULL, 6, s), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_plan_lifetimes(6, def, ut, un, 6, NULL), DJN_ERR_ARGS);
    CHECK_EQ_INT(djn_plan_lifetimes(6, def, NULL, NULL, 0, s), DJN_OK); /* no uses */
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(s[i].last, def[i]);
}

/* ------------------------------------------------------------------ 3. random */

static const uint32_t s_aligns[] = {1, 2, 4, 8, 16, 64, 256, 512, 4096};

/* Fills r[0..n) with one of several lifetime shapes; sizes 1..1 MiB (some 0 if zeros). */
static void random_instance(djn_plan_req_t *r, uint32_t n, unsigned shape, int zeros) {
    uint32_t horizon = 1 + rng_below(2 * n);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t a, b;
        switch (shape) {
        case 0: /* uniform over the horizon: heavy overlap */
            a = rng_below(horizon);
            b = rng_below(horizon);
            if (a > b) {
                uint32_t t = a;
                a = b;
                b = t;
            }
            break;
        case 1: /* short lifetimes, random starts */
            a = rng_below(horizon);
            b = a + rng_below(8);
            break;
        case 2: /* a chain: one tensor per node, most die soon, a few live long */
            a = i;
            b = i + (rng_below(8) ? rng_below(3) : rng_below(n));
            break;
        default: /* near the top of the u32 range */
            a = UINT32_MAX - rng_below(n + 1);
            b = a + rng_below(UINT32_MAX - a + 1);
            break;
        }
        r[i].first = a;
        r[i].last = b;
        r[i].nbytes = 1 + rng_below(1u << 20);
        if (zeros && rng_below(5) == 0)
            r[i].nbytes = 0;
    }
}

/* The algorithm of djn_plan.c written the plain way (every placed request tested, the
 * conflicts qsorted), to check that its faster search finds the very same offsets. */
static const djn_plan_req_t *s_ref_reqs;
static uint32_t s_ref_align;

static int ref_by_size(const void *x, const void *y) {
    uint32_t i = *(const uint32_t *)x, j = *(const uint32_t *)y;
    uint64_t si = asize(s_ref_reqs[i].nbytes, s_ref_align);
    uint64_t sj = asize(s_ref_reqs[j].nbytes, s_ref_align);
    if (si != sj)
        return si > sj ? -1 : 1;
    if (s_ref_reqs[i].first != s_ref_reqs[j].first)
        return s_ref_reqs[i].first < s_ref_reqs[j].first ? -1 : 1;
    return (i > j) - (i < j);
}

static int ref_by_u64(const void *x, const void *y) {
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return (a > b) - (a < b);
}

static void ref_plan(const djn_plan_req_t *r, uint32_t n, uint32_t align, uint64_t *off) {
    uint32_t *order = malloc((n + 1) * sizeof *order);
    uint64_t(*ext)[2] = malloc((n + 1) * sizeof *ext);
    for (uint32_t i = 0; i < n; i++)
        order[i] = i;
    s_ref_reqs = r;
    s_ref_align = align;
    qsort(order, n, sizeof *order, ref_by_size);
    for (uint32_t p = 0; p < n; p++) {
        uint32_t q = order[p];
        uint64_t size = asize(r[q].nbytes, align);
        off[q] = 0;
        if (!size)
            continue;
        uint32_t k = 0;
        for (uint32_t j = 0; j < p; j++) {
            uint32_t o = order[j];
            if (intersects(&r[q], &r[o]) && asize(r[o].nbytes, align)) {
                ext[k][0] = off[o];
                ext[k++][1] = off[o] + asize(r[o].nbytes, align);
            }
        }
        qsort(ext, k, sizeof *ext, ref_by_u64); /* by offset */
        uint64_t cur = 0;
        uint32_t i = 0;
        for (; i < k && !(ext[i][0] > cur && ext[i][0] - cur >= size); i++)
            cur = ext[i][1] > cur ? ext[i][1] : cur;
        off[q] = cur;
    }
    free(order);
    free(ext);
}

static void test_random_validity(void) {
    enum { INSTANCES = 3000, NMAX = 500 };
    static djn_plan_req_t r[NMAX];
    static uint64_t ref[NMAX];
    rng_seed(42);
    int failed = 0;
    for (int it = 0; it < INSTANCES && failed < 5; it++) {
        uint32_t n = 1 + rng_below(NMAX);
        uint32_t align = s_aligns[rng_below(sizeof s_aligns / sizeof s_aligns[0])];
        random_instance(r, n, (unsigned)it % 4, it % 8 == 7);
        djn_plan_t *p = NULL, *q = NULL;
        djn_status_t st = djn_plan_build(r, n, align, &p);
        CHECK_EQ_INT(st, DJN_OK);
        if (st == DJN_OK && check_plan(r, n, align, p)) {
            printf("instance %d (n %u, align %u, shape %d) is invalid\n", it, n, align, it % 4);
            failed++;
        }
        /* the plain algorithm gives the same offsets */
        if (st == DJN_OK) {
            ref_plan(r, n, align, ref);
            if (memcmp(ref, p->offsets, n * sizeof(uint64_t)) != 0) {
                printf("instance %d: offsets differ from the plain algorithm's\n", it);
                failed++;
            }
        }
        /* determinism */
        if (st == DJN_OK && djn_plan_build(r, n, align, &q) == DJN_OK) {
            CHECK(q->peak == p->peak);
            CHECK(memcmp(q->offsets, p->offsets, n * sizeof(uint64_t)) == 0);
        }
        djn_plan_destroy(&p);
        djn_plan_destroy(&q);
    }
    CHECK_EQ_INT(failed, 0);
}

/* ------------------------------------------------------------------ 4. model traces */

/* A fragment under construction: each node produces at most one tensor; inputs that
 * come from outside the fragment (the model input, weights, caches) are not tensors here,
 * and views take no memory (a view's consumers read its base, so they extend the base's
 * lifetime, as they do in the executor). */
#define G_MAXT 40000
#define G_MAXU 100000
#define IN UINT32_MAX /* an input from outside the fragment */

static struct {
    uint32_t nnodes, ntensors, nuses;
    uint32_t def[G_MAXT];
    uint64_t nbytes[G_MAXT];
    uint8_t external[G_MAXT]; /* needed after the fragment: not an intermediate */
    uint32_t use_tensor[G_MAXU], use_node[G_MAXU];
} g;

static void g_reset(void) {
    memset(&g, 0, sizeof g);
}

static uint32_t g_op(uint64_t nbytes, const uint32_t *ins, size_t nin) {
    uint32_t node = g.nnodes++;
    for (size_t i = 0; i < nin; i++) {
        if (ins[i] == IN)
            continue;
        assert(g.nuses < G_MAXU);
        g.use_tensor[g.nuses] = ins[i];
        g.use_node[g.nuses++] = node;
    }
    assert(g.ntensors < G_MAXT);
    uint32_t t = g.ntensors++;
    g.def[t] = node;
    g.nbytes[t] = nbytes;
    return t;
}

/* A second output of the node just added (e.g. layer norm's saved mean and rstd). */
static uint32_t g_extra(uint64_t nbytes) {
    assert(g.ntensors < G_MAXT && g.nnodes > 0);
    uint32_t t = g.ntensors++;
    g.def[t] = g.nnodes - 1;
    g.nbytes[t] = nbytes;
    return t;
}

#define OP(nbytes, ...)                                                                            \
    g_op((nbytes), (const uint32_t[]){__VA_ARGS__},                                                \
         sizeof((const uint32_t[]){__VA_ARGS__}) / sizeof(uint32_t))
#define F32(elems) ((uint64_t)(elems)*4)

/* The intermediates of g as requests (lifetimes from djn_plan_lifetimes); returns a
 * malloc'd array of *n requests. */
static djn_plan_req_t *g_requests(uint32_t *n) {
    djn_plan_req_t *all = malloc(g.ntensors * sizeof *all);
    CHECK_EQ_INT(djn_plan_lifetimes(g.ntensors, g.def, g.use_tensor, g.use_node, g.nuses, all),
                 DJN_OK);
    uint32_t k = 0;
    for (uint32_t t = 0; t < g.ntensors; t++) {
        if (g.external[t])
            continue;
        all[k] = all[t];
        all[k++].nbytes = g.nbytes[t];
    }
    *n = k;
    return all;
}

/* Plans the intermediates of g, checks the plan, prints and returns peak / lower bound. */
static double g_plan_ratio(const char *name) {
    uint32_t n = 0;
    djn_plan_req_t *r = g_requests(&n);
    djn_plan_t *p = plan_checked(r, n, SLAB_ALIGN);
    double ratio = 0;
    if (p) {
        ratio = p->lower_bound ? (double)p->peak / (double)p->lower_bound : 1.0;
        printf("    %-34s nodes %5u  intermediates %5u  peak %11llu  lower bound %11llu  "
               "ratio %.4f\n",
               name, g.nnodes, n, (unsigned long long)p->peak, (unsigned long long)p->lower_bound,
               ratio);
    }
    djn_plan_destroy(&p);
    free(r);
    return ratio;
}

/* (a) MLP: linear -> relu per layer, batch 32, widths 512..2048; where a layer keeps its
 * width, a residual add reads the layer's input too (a skip living 3 nodes). */
static void build_mlp(void) {
    enum { B = 32 };
    static const uint32_t width[8] = {1024, 2048, 2048, 2048, 1024, 1024, 512, 512};
    uint32_t x = IN, din = 512;
    for (int l = 0; l < 8; l++) {
        uint32_t d = width[l];
        uint32_t lin = OP(F32(B * d), x);   /* addmm(b, x, W^T) */
        uint32_t act = OP(F32(B * d), lin); /* relu */
        x = d == din ? OP(F32(B * d), act, x) : act;
        din = d;
    }
    g.external[x] = 1;
}

/* rmsnorm(x) * w: pow, mean, add eps, rsqrt, mul, mul. */
static uint32_t rmsnorm(uint32_t x, uint32_t s, uint32_t h) {
    uint32_t sq = OP(F32(s * h), x);
    uint32_t ms = OP(F32(s), sq);
    uint32_t eps = OP(F32(s), ms);
    uint32_t rs = OP(F32(s), eps);
    uint32_t xn = OP(F32(s * h), x, rs);
    return OP(F32(s * h), xn, IN);
}

/* Rotary embedding of a [s, h] projection: x*cos + rotate_half(x)*sin. */
static uint32_t rope(uint32_t x, uint32_t s, uint32_t h) {
    uint32_t c = OP(F32(s * h), x, IN);
    uint32_t neg = OP(F32(s * h / 2), x);  /* -x[..., h/2:] (the slice is a view) */
    uint32_t rot = OP(F32(s * h), neg, x); /* cat(-x2, x1) */
    uint32_t sn = OP(F32(s * h), rot, IN);
    return OP(F32(s * h), c, sn);
}

/* (b) A Llama-style decoder stack. seq > 1: prefill with a causal mask. seq == 1: decode
 * with a KV cache of `past` positions (the concatenated caches are outputs the client keeps,
 * so they are not intermediates). Views (head split, transposes) take no memory; the
 * head merge after attn@v copies when seq > 1, as reshape does on a transposed tensor. */
static void build_decoder(uint32_t layers, uint32_t s, uint32_t h, uint32_t past) {
    const uint32_t heads = 4, inter = 688; /* ~ 8/3 h, as Llama */
    uint32_t ctx = s + past;
    uint32_t x = IN;
    for (uint32_t l = 0; l < layers; l++) {
        uint32_t hn = rmsnorm(x, s, h);
        uint32_t q = OP(F32(s * h), hn, IN);
        uint32_t k = OP(F32(s * h), hn, IN);
        uint32_t v = OP(F32(s * h), hn, IN);
        q = rope(q, s, h);
        k = rope(k, s, h);
        if (past) {
            k = OP(F32(ctx * h), IN, k); /* cat(cache_k, k): kept by the client */
            g.external[k] = 1;
            v = OP(F32(ctx * h), IN, v);
            g.external[v] = 1;
        }
        uint32_t sc = OP(F32(heads * s * ctx), q, k); /* q @ k^T */
        uint32_t scaled = OP(F32(heads * s * ctx), sc);
        if (s > 1)
            scaled = OP(F32(heads * s * ctx), scaled, IN); /* + causal mask */
        uint32_t pr = OP(F32(heads * s * ctx), scaled);    /* softmax */
        uint32_t at = OP(F32(s * h), pr, v);               /* @ v */
        if (s > 1)
            at = OP(F32(s * h), at); /* transpose(1, 2).reshape copies */
        uint32_t o = OP(F32(s * h), at, IN);
        uint32_t x1 = OP(F32(s * h), x, o); /* residual */
        uint32_t hn2 = rmsnorm(x1, s, h);
        uint32_t gt = OP(F32(s * inter), hn2, IN);
        uint32_t up = OP(F32(s * inter), hn2, IN);
        uint32_t sg = OP(F32(s * inter), gt); /* silu */
        uint32_t gu = OP(F32(s * inter), sg, up);
        uint32_t dn = OP(F32(s * h), gu, IN);
        x = OP(F32(s * h), x1, dn); /* residual */
    }
    x = rmsnorm(x, s, h);
    g.external[x] = 1;
}

/* (c) VGG-style CNN, batch 8, 224x224: conv -> relu blocks, max-pool between stages. */
static void build_vgg(void) {
    enum { B = 8 };
    static const uint32_t ch[5] = {64, 128, 256, 512, 512}, convs[5] = {2, 2, 3, 3, 3};
    uint32_t x = IN, hw = 224;
    for (int st = 0; st < 5; st++) {
        for (uint32_t c = 0; c < convs[st]; c++) {
            uint32_t y = OP(F32((uint64_t)B * ch[st] * hw * hw), x, IN, IN); /* conv */
            x = OP(F32((uint64_t)B * ch[st] * hw * hw), y);                  /* relu */
        }
        hw /= 2;
        x = OP(F32((uint64_t)B * ch[st] * hw * hw), x); /* max-pool */
    }
    uint32_t f1 = OP(F32(B * 4096), x, IN, IN); /* flatten is a view; linear */
    uint32_t r1 = OP(F32(B * 4096), f1);
    uint32_t f2 = OP(F32(B * 4096), r1, IN, IN);
    uint32_t r2 = OP(F32(B * 4096), f2);
    uint32_t out = OP(F32(B * 1000), r2, IN, IN);
    g.external[out] = 1;
}

/* ResNet-18, batch 8, 224x224: conv-bn-relu stem, max-pool, four stages of two basic
 * blocks (conv-bn-relu-conv-bn, + identity or a 1x1 conv-bn downsample, relu). */
static void build_resnet18(void) {
    enum { B = 8 };
#define ACT(c, hw) F32((uint64_t)B *(c) * (hw) * (hw))
    uint32_t x = OP(ACT(64, 112), IN, IN); /* conv 7x7 s2 */
    x = OP(ACT(64, 112), x, IN, IN);       /* bn */
    x = OP(ACT(64, 112), x);               /* relu */
    x = OP(ACT(64, 56), x);                /* max-pool */
    uint32_t c = 64, hw = 56;
    static const uint32_t ch[4] = {64, 128, 256, 512};
    for (int st = 0; st < 4; st++) {
        for (int blk = 0; blk < 2; blk++) {
            uint32_t co = ch[st], ho = (st > 0 && blk == 0) ? hw / 2 : hw;
            uint32_t y = OP(ACT(co, ho), x, IN);
            y = OP(ACT(co, ho), y, IN, IN);
            y = OP(ACT(co, ho), y);
            y = OP(ACT(co, ho), y, IN);
            y = OP(ACT(co, ho), y, IN, IN);
            uint32_t sk = x;
            if (co != c || ho != hw) {
                sk = OP(ACT(co, ho), x, IN); /* 1x1 conv s2 */
                sk = OP(ACT(co, ho), sk, IN, IN);
            }
            uint32_t a = OP(ACT(co, ho), y, sk);
            x = OP(ACT(co, ho), a); /* relu */
            c = co;
            hw = ho;
        }
    }
    x = OP(F32(B * 512), x); /* global average pool */
    uint32_t out = OP(F32(B * 1000), x, IN, IN);
    g.external[out] = 1;
#undef ACT
}

/* GPT-2 style blocks (post-2019 pre-norm), seq 128, hidden 768, 12 heads: layer norm
 * (aten::native_layer_norm: output, plus mean and rstd that inference never reads), fused
 * qkv projection split by views, scaled scores with a causal mask, softmax, @v, head merge
 * copy, output projection, residual, then layer norm, 4h MLP with GELU, residual. */
static void build_gpt2(uint32_t layers, uint32_t s, uint32_t h) {
    const uint32_t heads = 12;
    uint32_t x = IN;
    for (uint32_t l = 0; l < layers; l++) {
        uint32_t ln = OP(F32(s * h), x, IN, IN);
        g_extra(F32(s));
        g_extra(F32(s));
        uint32_t qkv = OP(F32(s * 3 * h), ln, IN, IN); /* q, k, v are views of it */
        uint32_t sc = OP(F32(heads * s * s), qkv, qkv);
        uint32_t sd = OP(F32(heads * s * s), sc);
        uint32_t mk = OP(F32(heads * s * s), sd, IN);
        uint32_t pr = OP(F32(heads * s * s), mk);
        uint32_t at = OP(F32(s * h), pr, qkv);
        uint32_t mg = OP(F32(s * h), at);
        uint32_t o = OP(F32(s * h), mg, IN, IN);
        uint32_t x1 = OP(F32(s * h), x, o);
        uint32_t ln2 = OP(F32(s * h), x1, IN, IN);
        g_extra(F32(s));
        g_extra(F32(s));
        uint32_t fc = OP(F32(s * 4 * h), ln2, IN, IN);
        uint32_t ge = OP(F32(s * 4 * h), fc);
        uint32_t pj = OP(F32(s * h), ge, IN, IN);
        x = OP(F32(s * h), x1, pj);
    }
    g.external[x] = 1;
}

/* A small U-Net, batch 4, 128x128: four levels of conv-relu-conv-relu whose outputs live
 * until the decoder concatenates them back (long skips of very different sizes). */
static void build_unet(void) {
    enum { B = 4, LV = 4 };
    static const uint32_t ch[LV + 1] = {32, 64, 128, 256, 512};
    uint32_t skip[LV], x = IN, hw = 128;
#define ACT(c, hw) F32((uint64_t)B *(c) * (hw) * (hw))
    for (int lv = 0; lv < LV; lv++) {
        x = OP(ACT(ch[lv], hw), x, IN, IN);
        x = OP(ACT(ch[lv], hw), x);
        x = OP(ACT(ch[lv], hw), x, IN, IN);
        skip[lv] = x = OP(ACT(ch[lv], hw), x);
        hw /= 2;
        x = OP(ACT(ch[lv], hw), x); /* max-pool */
    }
    x = OP(ACT(ch[LV], hw), x, IN, IN);
    x = OP(ACT(ch[LV], hw), x);
    for (int lv = LV - 1; lv >= 0; lv--) {
        hw *= 2;
        uint32_t up = OP(ACT(ch[lv], hw), x, IN, IN); /* transposed conv */
        x = OP(ACT(2 * ch[lv], hw), skip[lv], up);    /* cat */
        x = OP(ACT(ch[lv], hw), x, IN, IN);
        x = OP(ACT(ch[lv], hw), x);
        x = OP(ACT(ch[lv], hw), x, IN, IN);
        x = OP(ACT(ch[lv], hw), x);
    }
    x = OP(ACT(1, hw), x, IN, IN);
    g.external[x] = 1;
#undef ACT
}

static void test_quality_mlp(void) {
    g_reset();
    build_mlp();
    CHECK(g_plan_ratio("(a) MLP, 8 layers, batch 32") <= QUALITY_MAX);
}

static void test_quality_decoder_prefill(void) {
    g_reset();
    build_decoder(4, 32, 256, 0);
    CHECK(g_plan_ratio("(b) decoder x4, h 256, seq 32") <= QUALITY_MAX);
}

static void test_quality_decoder_decode(void) {
    g_reset();
    build_decoder(4, 1, 256, 31);
    CHECK(g_plan_ratio("(b) decoder x4, h 256, seq 1, kv 31") <= QUALITY_MAX);
    g_reset();
    build_decoder(4, 1, 256, 0);
    CHECK(g_plan_ratio("(b) decoder x4, h 256, seq 1, no kv") <= QUALITY_MAX);
}

static void test_quality_cnn(void) {
    g_reset();
    build_vgg();
    CHECK(g_plan_ratio("(c) VGG-16 CNN, batch 8, 224^2") <= QUALITY_MAX);
    g_reset();
    build_resnet18();
    CHECK(g_plan_ratio("(c) ResNet-18, batch 8, 224^2") <= QUALITY_MAX);
}

/* Random lifetimes: no bound is asserted (greedy has no guarantee), the mean is printed. */
/* Beyond the three required shapes: a GPT-2 stack and a U-Net. */
static void test_quality_more(void) {
    g_reset();
    build_gpt2(4, 128, 768);
    CHECK(g_plan_ratio("GPT-2 x4, h 768, seq 128") <= QUALITY_MAX);
    g_reset();
    build_gpt2(4, 1, 768);
    CHECK(g_plan_ratio("GPT-2 x4, h 768, seq 1") <= QUALITY_MAX);
    g_reset();
    build_unet();
    CHECK(g_plan_ratio("U-Net, batch 4, 128^2") <= QUALITY_MAX);
}

static void test_quality_random_report(void) {
    enum { INSTANCES = 200, N = 500 };
    static djn_plan_req_t r[N];
    static const char *names[3] = {"uniform", "short", "chain"};
    for (unsigned shape = 0; shape < 3; shape++) {
        rng_seed(7 + shape);
        double sum = 0, worst = 0;
        for (int it = 0; it < INSTANCES; it++) {
            random_instance(r, N, shape, 0);
            djn_plan_t *p = NULL;
            CHECK_EQ_INT(djn_plan_build(r, N, SLAB_ALIGN, &p), DJN_OK);
            if (!p)
                continue;
            double ratio = (double)p->peak / (double)p->lower_bound;
            sum += ratio;
            if (ratio > worst)
                worst = ratio;
            djn_plan_destroy(&p);
        }
        printf("    random %-8s n %u x %d: mean ratio %.4f, worst %.4f\n", names[shape], N,
               INSTANCES, sum / INSTANCES, worst);
    }
}

/* ------------------------------------------------------------------ 5. timing */

/* Prints the best CPU time of `reps` builds. */
static void time_one(const char *name, const djn_plan_req_t *r, uint32_t n, int reps) {
    djn_plan_t *p = NULL;
    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        djn_plan_destroy(&p);
        double t0 = cpu_ms();
        djn_status_t st = djn_plan_build(r, n, SLAB_ALIGN, &p);
        double t1 = cpu_ms();
        CHECK_EQ_INT(st, DJN_OK);
        if (t1 - t0 < best)
            best = t1 - t0;
    }
    if (p)
        printf("    %-36s n %5u: %8.2f ms CPU  (ratio %.4f)\n", name, n, best,
               (double)p->peak / (double)p->lower_bound);
    djn_plan_destroy(&p);
}

static void test_timing_20k(void) {
    enum { N = 20000 };
    g_reset();
    build_decoder(513, 32, 256, 0); /* 39 intermediates per layer */
    uint32_t n = 0;
    djn_plan_req_t *r = g_requests(&n);
    time_one("decoder x513, h 256, seq 32", r, n, 3);
    djn_plan_t *p = plan_checked(r, n, SLAB_ALIGN);
    djn_plan_destroy(&p);
    free(r);

    r = malloc(N * sizeof *r);
    static const char *names[3] = {"random uniform lifetimes", "random short lifetimes",
                                   "random chain"};
    for (unsigned shape = 0; shape < 3; shape++) {
        rng_seed(99);
        random_instance(r, N, shape, 0);
        time_one(names[shape], r, N, shape == 1 ? 3 : 1);
    }
    for (uint32_t i = 0; i < N; i++)
        r[i] = (djn_plan_req_t){1 + rng_below(1u << 20), 0, 0};
    time_one("all live at once", r, N, 1);
    free(r);
}

/* ------------------------------------------------------------------ 6. faults */

static void fault_sweep(const djn_plan_req_t *r, uint32_t n, int min_allocs) {
    int64_t mem0 = djn_mem_in_use();
    int k = 0;
    for (;; k++) {
        djn_plan_t *p = (djn_plan_t *)(uintptr_t)1;
        djn_mem_fail_after(k);
        djn_status_t st = djn_plan_build(r, n, 64, &p);
        djn_mem_fail_after(-1);
        if (st == DJN_OK) {
            CHECK(check_plan(r, n, 64, p) == 0);
            djn_plan_destroy(&p);
            break;
        }
        CHECK_EQ_INT(st, DJN_ERR_NOMEM);
        CHECK(p == NULL);
        CHECK_EQ_INT(djn_mem_in_use(), mem0);
        if (k > 100)
            break;
    }
    CHECK(k >= min_allocs);
    CHECK(k <= 100);
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
}

static void test_fault_injection(void) {
    djn_plan_req_t r[64];
    rng_seed(5);
    random_instance(r, 64, 1, 1);
    fault_sweep(r, 64, 8);
    fault_sweep(NULL, 0, 1);
    djn_plan_req_t z[2] = {{0, 0, 1}, {0, 1, 2}};
    fault_sweep(z, 2, 2);
}

int main(void) {
    /* 1. edge cases */
    RUN(test_empty);
    RUN(test_one);
    RUN(test_disjoint);
    RUN(test_all_overlapping);
    RUN(test_gap_reuse);
    RUN(test_first_fit);
    RUN(test_zero_sizes);
    RUN(test_args);
    RUN(test_limits);
    /* 2. lifetimes */
    RUN(test_lifetimes);
    /* 3. random validity */
    RUN(test_random_validity);
    /* 4. quality */
    RUN(test_quality_mlp);
    RUN(test_quality_decoder_prefill);
    RUN(test_quality_decoder_decode);
    RUN(test_quality_cnn);
    RUN(test_quality_more);
    RUN(test_quality_random_report);
    /* 5. timing */
    RUN(test_timing_20k);
    /* 6. faults */
    RUN(test_fault_injection);
    return djn_test_report();
}
