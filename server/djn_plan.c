/* djn_plan.c: greedy-by-size offset assignment over lifetime intervals (see djn_plan.h).
 *
 * Owns nothing past the call but the plan it returns (the offsets array).
 *
 * Algorithm (TFLite's "greedy by size", the family ggml-alloc's planner belongs to):
 *   1. Round every size up to `align`. Zero-byte requests occupy nothing: offset 0, and
 *      they take no part in steps 2-4.
 *   2. Order the rest by aligned size, largest first; ties by earlier `first`, then by
 *      index, so the result is deterministic (qsort on a total order).
 *   3. Place them one by one. For request q, take the already-placed requests whose
 *      lifetimes intersect q's (its "conflicts") in offset order, and walk the gaps
 *      between their merged extents from offset 0 upwards. Put q in the first gap that
 *      fits (first fit); if none does, just past the highest conflict. Offsets and ends
 *      are all multiples of `align`, so every gap start is aligned.
 *   4. peak = max(offset + aligned size); lower_bound = max over node indices t of the
 *      aligned bytes live at t (a sweep over starts and ends, both sorted).
 *
 * Invariants:
 *   - Two requests whose lifetimes intersect never overlap in [offset, offset + size):
 *     q is put in a gap of the merged extents of every placed conflict.
 *   - Every offset is 0 or the end of a placed block, hence a multiple of `align`, and
 *     offset + size <= the sum of all aligned sizes (the blocks under q form a chain of
 *     distinct requests), so checking that sum once rules out overflow everywhere.
 *   - lower_bound <= peak: the requests live at t intersect pairwise, so they occupy
 *     disjoint ranges below peak.
 *   - The result depends only on the input: both ways of finding conflicts below feed
 *     the same walk the same blocks in the same offset order.
 *
 * Finding the conflicts in offset order, two ways, chosen per request:
 *   - Scan path (TFLite's way): every placed request, kept sorted by offset, tested for
 *     a lifetime intersection. Theta(placed) per request, Theta(n^2) on every input:
 *     ~380 ms at n = 20k even for a real model, whose lifetimes are short.
 *   - Tree path: the requests are laid out once by `first`; a max-tree over that order
 *     holds last + 1 for the placed ones (0 for the rest). The placed requests that
 *     intersect [f, l] are those in the prefix with first <= l (a binary search) whose
 *     value is >= f + 1: a descent pruning subtrees whose max is smaller reports each of
 *     the k of them in O(log n). They are then sorted by offset: insertion sort when k
 *     is small, else an LSD radix sort over just the bytes in which offsets differ, O(k).
 *   The number of requests, placed or not, that intersect q is known in O(log n) from
 *   the sorted firsts and lasts; about placed/m of them are placed (sizes, hence the
 *   placement order, do not depend on lifetimes), so the tree path costs ~ that count
 *   * placed/m * log n, the scan path ~ placed. The tree path is taken when
 *   count * log2(m) < 2m, which also bounds it by O(n) per request. Requests placed by
 *   the tree path join the scan path's sorted array lazily: the next scan merges up to
 *   S_PENDING_MAX of them on the fly and folds more in first (one merge pass).
 *   Total: O(n^2) in the worst case, O(n log n + sum of k log n) on real fragments.
 *   At n = 20k (test_timing_20k, -O2, CPU time): a transformer trace 7.5 ms; random
 *   short lifetimes 19 ms; the degenerate cases, where most pairs intersect (20k
 *   tensors live at once), 240-390 ms, no worse than the scan alone.
 *
 * Gap choice: first fit, measured against best gap (the smallest gap that fits, lowest
 * among equal ones; TFLite's choice). Ratio peak / lower bound, align 256, first fit vs
 * best gap: every model trace in test/c/test_plan.c (MLP, Llama-style decoder at seq 32
 * and seq 1, VGG-16, ResNet-18, GPT-2 at seq 128 and 1, U-Net) 1.0000 vs 1.0000; random
 * lifetimes, mean of 200 instances of n = 500: uniform 1.028 vs 1.041, short-lived
 * 1.034 vs 1.037, chain with long skips 1.050 vs 1.106; at n = 20k: 1.007 vs 1.032,
 * 1.048 vs 1.048, 1.023 vs 1.121. First fit is never worse on the traces, better on
 * random lifetimes, and stops its walk at the first fit.
 *
 * Rejected: an interval tree over offsets (offsets and lifetimes are uncorrelated, so it
 * cannot prune by time); qsort for the conflicts (its comparator calls were half the
 * time on long-lived traces); trying both gap rules and keeping the lower peak (twice
 * the time, for nothing on the traces). */
#include "djn_plan.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "djn_mem.h"

#define S_INSERTION_MAX 32 /* sort this few conflicts by insertion, more by radix */
#define S_PENDING_MAX 16   /* the scan path merges more pending requests into base first */

/* Two u64s: a sort key (a major, b minor), or a conflict's extent [a = offset, b = end). */
typedef struct {
    uint64_t a, b;
} s_pair_t;

/* The gap walk of step 3 over conflicts fed in offset order: cur is the top of the
 * merged extents so far; best the first fitting gap's start, UINT64_MAX until one. */
typedef struct {
    uint64_t size, cur, best;
} s_gap_t;

typedef struct {
    const djn_plan_req_t *reqs;
    uint64_t mask;     /* align - 1 */
    uint64_t *offsets; /* the plan's, per request */
    uint32_t m;        /* requests of non-zero size */
    uint32_t *order;   /* [m] placement order (step 2) */
    uint32_t *byfirst; /* [m] request ids by first, then index */
    uint32_t *lasts;   /* [m] every `last`, ascending */
    uint32_t *rank;    /* [n] request id -> position in byfirst (non-zero sizes only) */
    uint64_t *tree;    /* [2 * cap] max-tree over byfirst positions: last + 1 if placed */
    size_t cap;        /* leaves: a power of two >= m */
    unsigned lg;       /* log2(cap) + 1: the tree path's cost per conflict, roughly */
    s_pair_t *hits;    /* [m] conflicts (tree path); sort keys (setup, scan path) */
    s_pair_t *spare;   /* [m] radix sort scratch; swaps roles with hits */
    /* Scan path: order[0..nbase) as placed, sorted by offset, one array per field so the
     * lifetime test reads 8 bytes per block; order[nbase..placed) are "pending". */
    uint64_t *boff, *bend;
    uint32_t *bfirst, *blast;
    uint32_t nbase;
} s_ctx_t;

static inline uint64_t s_asize(const s_ctx_t *c, uint32_t i) {
    return (c->reqs[i].nbytes + c->mask) & ~c->mask;
}

static int s_pair_cmp(const void *x, const void *y) {
    const s_pair_t *p = x, *q = y;
    if (p->a != q->a)
        return p->a < q->a ? -1 : 1;
    return (p->b > q->b) - (p->b < q->b);
}

/* Sorts v[0..k) by a: insertion when short, else an LSD radix sort (stable) over only the
 * bytes in which the keys differ, through scratch[0..k); O(k) either way. Returns the
 * array holding the result (v or scratch). */
static s_pair_t *s_pair_sort(s_pair_t *v, s_pair_t *scratch, uint32_t k) {
    if (k <= S_INSERTION_MAX) {
        for (uint32_t i = 1; i < k; i++) {
            s_pair_t x = v[i];
            uint32_t j = i;
            for (; j > 0 && v[j - 1].a > x.a; j--)
                v[j] = v[j - 1];
            v[j] = x;
        }
        return v;
    }
    uint64_t all_or = 0, all_and = ~(uint64_t)0;
    for (uint32_t i = 0; i < k; i++) {
        all_or |= v[i].a;
        all_and &= v[i].a;
    }
    uint64_t differ = all_or ^ all_and;
    s_pair_t *src = v, *dst = scratch;
    for (unsigned shift = 0; shift < 64; shift += 8) {
        if (!((differ >> shift) & 0xff))
            continue;
        uint32_t count[256] = {0};
        for (uint32_t i = 0; i < k; i++)
            count[(src[i].a >> shift) & 0xff]++;
        for (uint32_t d = 0, sum = 0; d < 256; d++) {
            uint32_t t = count[d];
            count[d] = sum;
            sum += t;
        }
        for (uint32_t i = 0; i < k; i++)
            dst[count[(src[i].a >> shift) & 0xff]++] = src[i];
        s_pair_t *t = src;
        src = dst;
        dst = t;
    }
    return src;
}

/* Sorts hits[0..k) by offset, leaving the result in hits. */
static void s_sort_hits(s_ctx_t *c, uint32_t k) {
    s_pair_t *r = s_pair_sort(c->hits, c->spare, k);
    if (r != c->hits) {
        c->spare = c->hits;
        c->hits = r;
    }
}

static void *s_alloc(size_t count, size_t size) {
    return djn_calloc(count ? count : 1, size);
}

static void s_free(void *p, size_t count, size_t size) {
    djn_free(p, (count ? count : 1) * size);
}

/* Feeds one placed block to the walk; `hit` says whether it conflicts (0: ignored). Written
 * without branches: on the scan path whether a block conflicts is a coin toss for the
 * branch predictor. A gap of 0 never fits, as size > 0. */
static inline void s_gap_step(s_gap_t *g, int hit, uint64_t off, uint64_t end) {
    uint64_t keep = (uint64_t)0 - (uint64_t)hit; /* a mask, not a branch */
    off &= keep;
    end &= keep;
    uint64_t gap = off > g->cur ? off - g->cur : 0;
    uint64_t at = gap >= g->size ? g->cur : UINT64_MAX;
    g->best = at < g->best ? at : g->best; /* cur only grows: the lowest fit is the first */
    g->cur = end > g->cur ? end : g->cur;
}

/* Appends to hits every placed request under tree node `node` (covering byfirst positions
 * [lo, lo + width)) that lies before position `hi` and has last + 1 >= need. */
static void s_collect(s_ctx_t *c, uint32_t *nhits, size_t node, size_t lo, size_t width, size_t hi,
                      uint64_t need) {
    if (lo >= hi || c->tree[node] < need)
        return;
    if (width == 1) {
        uint32_t id = c->byfirst[lo];
        uint64_t off = c->offsets[id];
        c->hits[(*nhits)++] = (s_pair_t){off, off + s_asize(c, id)};
        return;
    }
    size_t half = width / 2;
    s_collect(c, nhits, 2 * node, lo, half, hi, need);
    s_collect(c, nhits, 2 * node + 1, lo + half, half, hi, need);
}

/* Sorts the pending requests by offset into hits[0..k), k = placed - nbase. */
static uint32_t s_pending(s_ctx_t *c, uint32_t placed) {
    uint32_t k = placed - c->nbase;
    for (uint32_t i = 0; i < k; i++) {
        uint32_t id = c->order[c->nbase + i];
        c->hits[i] = (s_pair_t){c->offsets[id], id};
    }
    s_sort_hits(c, k);
    return k;
}

/* Merges the k sorted pending requests in hits into base, from the top down in place. */
static void s_fold(s_ctx_t *c, uint32_t k) {
    uint32_t a = c->nbase, b = k, o = c->nbase + k;
    while (b > 0) {
        if (a > 0 && c->boff[a - 1] > c->hits[b - 1].a) {
            a--;
            o--;
            c->boff[o] = c->boff[a];
            c->bend[o] = c->bend[a];
            c->bfirst[o] = c->bfirst[a];
            c->blast[o] = c->blast[a];
        } else {
            uint32_t id = (uint32_t)c->hits[--b].b;
            o--;
            c->boff[o] = c->offsets[id];
            c->bend[o] = c->offsets[id] + s_asize(c, id);
            c->bfirst[o] = c->reqs[id].first;
            c->blast[o] = c->reqs[id].last;
        }
    }
    c->nbase += k;
}

/* Feeds pending request hits[b] to the walk. */
static inline void s_gap_pending(const s_ctx_t *c, s_gap_t *g, uint32_t b, uint32_t f, uint32_t l) {
    uint32_t id = (uint32_t)c->hits[b].b;
    const djn_plan_req_t *r = &c->reqs[id];
    s_gap_step(g, (r->first <= l) & (r->last >= f), c->hits[b].a, c->hits[b].a + s_asize(c, id));
}

/* The scan path's walk: every placed block in offset order, base merged with pending,
 * up to the first fitting gap. This loop is where a plan with heavy overlap spends its
 * time: locals only, and no short-circuit in the lifetime test. */
static void s_scan(s_ctx_t *c, uint32_t placed, uint32_t f, uint32_t l, s_gap_t *gp) {
    uint32_t k = s_pending(c, placed);
    if (k > S_PENDING_MAX) {
        s_fold(c, k);
        k = 0;
    }
    const uint64_t *boff = c->boff, *bend = c->bend;
    const uint32_t *bfirst = c->bfirst, *blast = c->blast;
    uint32_t nbase = c->nbase, b = 0;
    uint64_t next = k ? c->hits[0].a : UINT64_MAX; /* offset of the next pending block */
    s_gap_t g = *gp;
    for (uint32_t i = 0; i < nbase && g.best == UINT64_MAX; i++) {
        if (boff[i] >= next) {
            for (; b < k && c->hits[b].a <= boff[i]; b++)
                s_gap_pending(c, &g, b, f, l);
            next = b < k ? c->hits[b].a : UINT64_MAX;
        }
        s_gap_step(&g, (bfirst[i] <= l) & (blast[i] >= f), boff[i], bend[i]);
    }
    for (; b < k && g.best == UINT64_MAX; b++)
        s_gap_pending(c, &g, b, f, l);
    *gp = g;
}

/* Step 3 for q = order[placed], with order[0..placed) already placed. */
static void s_place(s_ctx_t *c, uint32_t placed) {
    uint32_t q = c->order[placed];
    uint32_t f = c->reqs[q].first, l = c->reqs[q].last;
    /* hi: requests with first <= l; below: requests with last < f. Those that intersect
     * q, placed or not, number hi - below. */
    size_t lo = 0, hi = c->m;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->reqs[c->byfirst[mid]].first <= l)
            lo = mid + 1;
        else
            hi = mid;
    }
    hi = lo;
    size_t below = 0, top = c->m;
    while (below < top) {
        size_t mid = below + (top - below) / 2;
        if (c->lasts[mid] < f)
            below = mid + 1;
        else
            top = mid;
    }

    s_gap_t g = {s_asize(c, q), 0, UINT64_MAX};
    if ((uint64_t)(hi - below) * c->lg < 2 * (uint64_t)c->m) {
        /* tree path: few conflicts among many placed */
        uint32_t k = 0;
        s_collect(c, &k, 1, 0, c->cap, hi, (uint64_t)f + 1);
        s_sort_hits(c, k);
        for (uint32_t i = 0; i < k && g.best == UINT64_MAX; i++)
            s_gap_step(&g, 1, c->hits[i].a, c->hits[i].b);
    } else {
        /* scan path: conflicts are a good part of what is placed */
        s_scan(c, placed, f, l, &g);
    }
    c->offsets[q] = g.best != UINT64_MAX ? g.best : g.cur;

    uint64_t v = (uint64_t)l + 1;
    for (size_t node = c->cap + c->rank[q]; node >= 1 && c->tree[node] < v; node /= 2)
        c->tree[node] = v;
}

/* Setup: the placement order, the by-first layout with ranks, the sorted lasts, and the
 * lower bound (a sweep over starts and ends, both sorted). hits is the sort scratch. */
static uint64_t s_setup(s_ctx_t *c, uint32_t n) {
    const djn_plan_req_t *reqs = c->reqs;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        if (s_asize(c, i))
            c->hits[k++] = (s_pair_t){~s_asize(c, i), ((uint64_t)reqs[i].first << 32) | i};
    assert(k == c->m);
    qsort(c->hits, c->m, sizeof(s_pair_t), s_pair_cmp);
    for (uint32_t i = 0; i < c->m; i++)
        c->order[i] = (uint32_t)c->hits[i].b;

    for (uint32_t i = 0; i < c->m; i++)
        c->hits[i] = (s_pair_t){reqs[c->order[i]].first, c->order[i]};
    qsort(c->hits, c->m, sizeof(s_pair_t), s_pair_cmp);
    for (uint32_t i = 0; i < c->m; i++) {
        c->byfirst[i] = (uint32_t)c->hits[i].b;
        c->rank[c->byfirst[i]] = i;
    }

    for (uint32_t i = 0; i < c->m; i++)
        c->hits[i] = (s_pair_t){reqs[c->order[i]].last, c->order[i]};
    qsort(c->hits, c->m, sizeof(s_pair_t), s_pair_cmp);
    uint64_t live = 0, best = 0;
    uint32_t e = 0;
    for (uint32_t i = 0; i < c->m;) {
        uint32_t t = reqs[c->byfirst[i]].first;
        for (; e < c->m && c->hits[e].a < t; e++)
            live -= s_asize(c, (uint32_t)c->hits[e].b);
        for (; i < c->m && reqs[c->byfirst[i]].first == t; i++)
            live += s_asize(c, c->byfirst[i]);
        if (live > best)
            best = live;
    }
    for (uint32_t i = 0; i < c->m; i++)
        c->lasts[i] = (uint32_t)c->hits[i].a;
    return best;
}

djn_status_t djn_plan_build(const djn_plan_req_t *reqs, uint32_t n, uint32_t align,
                            djn_plan_t **out) {
    if (!out)
        return DJN_ERR_ARGS;
    *out = NULL;
    if ((!reqs && n) || align == 0 || (align & (align - 1)))
        return DJN_ERR_ARGS;
    s_ctx_t c;
    memset(&c, 0, sizeof c);
    c.reqs = reqs;
    c.mask = (uint64_t)align - 1;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (reqs[i].first > reqs[i].last)
            return DJN_ERR_ARGS;
        if (reqs[i].nbytes > UINT64_MAX - c.mask)
            return DJN_ERR_LIMIT;
        uint64_t s = s_asize(&c, i);
        if (s > UINT64_MAX - total)
            return DJN_ERR_LIMIT;
        total += s;
        c.m += s != 0;
    }

    djn_status_t st = DJN_ERR_NOMEM;
    djn_plan_t *p = djn_calloc(1, sizeof *p);
    if (!p)
        goto fail;
    p->n = n;
    if (n) {
        p->offsets = s_alloc(n, sizeof(uint64_t)); /* zero: the zero-byte requests' offset */
        if (!p->offsets)
            goto fail;
    }
    if (c.m == 0) {
        *out = p;
        return DJN_OK;
    }
    c.offsets = p->offsets;
    for (c.cap = 1, c.lg = 1; c.cap < c.m; c.cap *= 2)
        c.lg++;
    c.order = s_alloc(c.m, sizeof(uint32_t));
    c.byfirst = s_alloc(c.m, sizeof(uint32_t));
    c.lasts = s_alloc(c.m, sizeof(uint32_t));
    c.rank = s_alloc(n, sizeof(uint32_t));
    c.tree = s_alloc(2 * c.cap, sizeof(uint64_t));
    c.hits = s_alloc(c.m, sizeof(s_pair_t));
    c.spare = s_alloc(c.m, sizeof(s_pair_t));
    c.boff = s_alloc(c.m, sizeof(uint64_t));
    c.bend = s_alloc(c.m, sizeof(uint64_t));
    c.bfirst = s_alloc(c.m, sizeof(uint32_t));
    c.blast = s_alloc(c.m, sizeof(uint32_t));
    if (!c.order || !c.byfirst || !c.lasts || !c.rank || !c.tree || !c.hits || !c.spare ||
        !c.boff || !c.bend || !c.bfirst || !c.blast)
        goto fail;

    p->lower_bound = s_setup(&c, n);   /* steps 1, 2 and 4's lower bound */
    for (uint32_t i = 0; i < c.m; i++) /* step 3 */
        s_place(&c, i);
    for (uint32_t i = 0; i < n; i++) { /* step 4 */
        uint64_t end = p->offsets[i] + s_asize(&c, i);
        assert(end <= total);
        if (end > p->peak)
            p->peak = end;
    }
    assert(p->lower_bound <= p->peak);
    *out = p;
    p = NULL;
    st = DJN_OK;

fail:
    s_free(c.order, c.m, sizeof(uint32_t));
    s_free(c.byfirst, c.m, sizeof(uint32_t));
    s_free(c.lasts, c.m, sizeof(uint32_t));
    s_free(c.rank, n, sizeof(uint32_t));
    s_free(c.tree, 2 * c.cap, sizeof(uint64_t));
    s_free(c.hits, c.m, sizeof(s_pair_t));
    s_free(c.spare, c.m, sizeof(s_pair_t));
    s_free(c.boff, c.m, sizeof(uint64_t));
    s_free(c.bend, c.m, sizeof(uint64_t));
    s_free(c.bfirst, c.m, sizeof(uint32_t));
    s_free(c.blast, c.m, sizeof(uint32_t));
    djn_plan_destroy(&p);
    return st;
}

void djn_plan_destroy(djn_plan_t **plan_p) {
    if (!plan_p || !*plan_p)
        return;
    djn_plan_t *p = *plan_p;
    if (p->offsets)
        s_free(p->offsets, p->n, sizeof(uint64_t));
    djn_free(p, sizeof *p);
    *plan_p = NULL;
}

djn_status_t djn_plan_lifetimes(uint32_t ntensors, const uint32_t *def, const uint32_t *use_tensor,
                                const uint32_t *use_node, uint32_t nuses,
                                djn_plan_req_t *out_reqs) {
    if (ntensors && (!def || !out_reqs))
        return DJN_ERR_ARGS;
    if (nuses && (!use_tensor || !use_node))
        return DJN_ERR_ARGS;
    for (uint32_t i = 0; i < nuses; i++)
        if (use_tensor[i] >= ntensors || use_node[i] < def[use_tensor[i]])
            return DJN_ERR_ARGS;
    for (uint32_t t = 0; t < ntensors; t++)
        out_reqs[t].first = out_reqs[t].last = def[t];
    for (uint32_t i = 0; i < nuses; i++)
        if (use_node[i] > out_reqs[use_tensor[i]].last)
            out_reqs[use_tensor[i]].last = use_node[i];
    return DJN_OK;
}
